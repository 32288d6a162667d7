"""RunConfig identity and validation, and the learning-rate schedules."""

import hashlib
import json
import math

import pytest
import torch

from rotsweep.config import FIRST_RELEASE_FIELDS, RunConfig, parse_assignments
from rotsweep.errors import UserError
from rotsweep.schedule import learning_rate, learning_rates


def test_run_id_is_sha256_of_canonical_json():
    config = RunConfig(steps=10, lr=0.1)
    # Fields added after the first release are left out at their default (see FIRST_RELEASE_FIELDS).
    first_release = {name: value for name, value in config.to_dict().items() if name in FIRST_RELEASE_FIELDS}
    canonical = json.dumps(first_release, sort_keys=True, separators=(",", ":"))
    assert config.run_id == hashlib.sha256(canonical.encode()).hexdigest()[:12]
    assert RunConfig(steps=10, lr=0.1).run_id == config.run_id  # same config, same id
    assert RunConfig(steps=10, lr=0.1 + 1e-12).run_id != config.run_id  # floats written with repr


def test_int_and_float_spellings_of_a_float_field_share_the_id():
    assert RunConfig.from_dict({"steps": 5, "lr": 1}).run_id == RunConfig(steps=5, lr=1.0).run_id


def test_json_round_trip(tmp_path):
    config = RunConfig(steps=7, model="gpt2", model_options={"dropout": 0.1}, rotational=True)
    path = tmp_path / "config.json"
    path.write_text(config.canonical_json())
    assert RunConfig.load(path) == config


def test_unknown_field_is_named():
    with pytest.raises(UserError, match="unknown RunConfig field.*lerning_rate"):
        RunConfig.from_dict({"steps": 1, "lerning_rate": 0.1})


def test_mistyped_field_is_named():
    with pytest.raises(UserError, match="'batch_size' expects int"):
        RunConfig.from_dict({"steps": 1, "batch_size": "big"})


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": None}, "exactly one of `steps` or `epochs`"),
        ({"epochs": 3.0}, "exactly one of `steps` or `epochs`"),
        ({"lr": -1.0}, "lr=-1.0 must be a positive"),
        ({"optimizer": "adagrad"}, "optimizer='adagrad' is not one of"),
        ({"weight_decay": -0.1}, "must not be negative"),
    ],
)
def test_invalid_values(changes, message):
    with pytest.raises(UserError, match=message):
        RunConfig.from_dict({"steps": 10, **changes})


def test_overrides_parse_values():
    assert parse_assignments(["lr=0.5", "tiny=true", "model=resnet18", "steps=3", "rv_eta_r_from=none"]) == {
        "lr": 0.5, "tiny": True, "model": "resnet18", "steps": 3, "rv_eta_r_from": None,
    }
    config = RunConfig(steps=10).with_overrides(["model_options={\"pre_activation\": false}"])
    assert config.model_options == {"pre_activation": False}


def test_malformed_override():
    with pytest.raises(UserError, match="malformed --set 'lr'"):
        parse_assignments(["lr"])


def test_cosine_schedule_with_power_and_min_lr():
    config = RunConfig(steps=100, lr=1.0, min_lr=0.1, lr_power=2.0)
    for step in (0, 25, 50, 99):
        cosine = (1 + math.cos(math.pi * step / 100)) / 2
        assert learning_rate(config, step, 100, 0) == pytest.approx(0.1 + 0.9 * cosine**2)


def test_warmup_is_linear_from_start_lr_towards_peak_and_overlaps():
    config = RunConfig(steps=100, lr=1.0, warmup_steps=10)
    assert learning_rate(config, 0, 100, 10) == pytest.approx(1e-6)
    assert learning_rate(config, 5, 100, 10) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)
    # After warmup the cosine continues as if measured from step 0 (timm's overlapping warmup).
    assert learning_rate(config, 10, 100, 10) == pytest.approx((1 + math.cos(math.pi * 0.1)) / 2)


def test_constant_schedule():
    config = RunConfig(steps=10, lr=0.3, schedule="constant")
    assert set(learning_rates(config, 10, 0)) == {0.3}


def test_onecycle_matches_torch():
    total, peak = 200, 5e-3
    config = RunConfig(steps=total, lr=peak, schedule="onecycle", onecycle_pct_start=0.1)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=peak)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=peak, total_steps=total, pct_start=0.1, anneal_strategy="cos",
        div_factor=1e2, final_div_factor=1e4, cycle_momentum=False,
    )
    torch_lrs = []
    for _ in range(total):
        torch_lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert learning_rates(config, total, 0) == pytest.approx(torch_lrs, rel=1e-9)
