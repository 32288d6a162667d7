"""rotsweep.experiments: the paper's grids value for value, tiny grids, the registry and its errors."""

import json
import math
from collections import Counter

import pytest
import torch

from rotsweep.config import RunConfig
from rotsweep.data import DATASET_NAMES
from rotsweep.errors import UserError
from rotsweep.experiments import (
    EXPERIMENTS,
    SCALES,
    Point,
    Sweep,
    describe_experiments,
    get_experiment,
)
from rotsweep.models import MODEL_NAMES, build_model

ALL_GRIDS = [(name, model, scale) for name, exp in EXPERIMENTS.items() for model in exp.models for scale in SCALES]


def close_set(values):
    """Floats as a set, robust to the last bit (6e-4 * 8 vs 4.8e-3)."""
    return {float(f"{v:.12g}") for v in values}


# --- the paper grids (epfml/REQ, experiments/) -------------------------------------------------


def test_warmup_gpt2_is_the_28_runs_of_figure_5():
    runs = get_experiment("warmup").runs("gpt2")
    assert len(runs) == 28
    lrs = [6e-4 * 2**i for i in range(-1, 6)]
    assert close_set(r.lr for r in runs) == close_set(lrs)
    cells = Counter((r.rotational, r.warmup_steps, round(r.lr, 12)) for r in runs)
    assert set(cells.values()) == {1} and len(cells) == 2 * 2 * 7
    assert {r.warmup_steps for r in runs} == {250, 0}
    for r in runs:
        assert (r.dataset, r.optimizer, r.steps, r.weight_decay, r.seed) == ("openwebtext", "adamw", 5000, 0.1, 1337)
        assert r.gain == r.rotational  # RV-AdamW gets per-neuron gains, the baseline does not


def test_warmup_resnet50_short_sweep_and_figure_15_runs():
    runs = get_experiment("warmup").runs("resnet50")
    short = [r for r in runs if r.epochs == 10.0]
    assert len(short) == 10 * 2 * 2
    assert close_set(r.lr for r in short) == close_set(0.1 * 2**i for i in range(10))
    assert {(r.rotational, r.warmup_epochs) for r in short} == {(False, 1.0), (False, 0.0), (True, 1.0), (True, 0.0)}
    for r in runs:
        assert (r.optimizer, r.batch_size * r.accumulation, r.weight_decay) == ("sgdm", 8192, 1e-4)
    long = {(r.rotational, r.warmup_epochs, r.lr) for r in runs if r.epochs == 90.0}
    assert long == {(False, 1.0, 3.2), (False, 0.0, 0.2), (True, 1.0, 6.4), (True, 0.0, 6.4)}


def test_adam_vs_adamw_is_121_plus_143_runs_per_seed():
    exp = get_experiment("adam-vs-adamw")
    runs = exp.runs("resnet18")
    by_optimizer = Counter(r.optimizer for r in runs)
    assert by_optimizer == {"adam-l2": 121, "adamw": 143}
    lrs = close_set(0.2 * 2**i for i in range(-10, 1))
    adam_wd = close_set([0.0] + [1e-3 * 2**i for i in range(-5, 5)])
    adamw_wd = close_set([0.0] + [1e-2 * 2**i for i in range(-2, 10)])
    for optimizer, wds in (("adam-l2", adam_wd), ("adamw", adamw_wd)):
        grid = {(r.lr, r.weight_decay) for r in runs if r.optimizer == optimizer}
        assert close_set(lr for lr, _ in grid) == lrs and close_set(wd for _, wd in grid) == wds
        assert len(grid) == len(lrs) * len(wds)  # the full product
    for r in runs:
        assert r.model_options == {"pre_activation": False} and r.val_split and r.dataset == "cifar10"
        assert (r.warmup_epochs, r.warmup_steps, r.batch_size, r.epochs) == (0.0, 0, 256, 200.0)
    assert len(exp.runs("resnet18", seeds=[0, 1])) == 2 * 264


@pytest.mark.parametrize("model, eta_lambda, n_adamw, n_rv", [("resnet20", 5e-4, 14, 14), ("gpt2", 2.5e-3, 7, 11)])
def test_eta_lambda_keeps_the_product_constant(model, eta_lambda, n_adamw, n_rv):
    runs = get_experiment("eta-lambda").runs(model)
    for r in runs:
        assert r.lr * r.weight_decay == pytest.approx(eta_lambda, rel=1e-12)
        assert r.optimizer == "adamw"
    assert Counter(r.rotational for r in runs) == {False: 3 * n_adamw, True: 3 * n_rv}  # seeds 0, 1, 2
    assert {r.seed for r in runs} == {0, 1, 2}
    if model == "resnet20":
        assert close_set(r.lr for r in runs) == close_set(
            [1e-6, 1e-5, 1e-4, 3e-4, 9e-4, 2.7e-3, 8.3e-3, 2.5e-2, 5e-2, 0.1, 0.3, 0.9, 2.7, 8.1])
        assert all(r.val_split and r.min_lr == 0.0 and r.warmup_start_lr == 0.0 for r in runs)
    else:
        assert all(r.gain == r.rotational and r.dataset == "wikitext" for r in runs)
        assert close_set(r.lr for r in runs if r.rotational) == close_set(
            [5e-3, 2.5e-3, 1e-2, 9e-5, 3e-5, 2.7e-4, 8.3e-4, 3e-2, 9e-2, 0.27, 0.81])


def test_eta_lambda_tiny_keeps_one_product_too():
    for model in get_experiment("eta-lambda").models:
        products = {round(r.lr * r.weight_decay, 12) for r in get_experiment("eta-lambda").runs(model, "tiny")}
        assert len(products) == 1


def test_weight_std_has_the_three_variants_at_every_lr():
    runs = get_experiment("weight-std").runs("resnet18-ln")
    lrs = [0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0]
    assert len(runs) == 3 * len(lrs) * 3
    variants = Counter((r.weight_standardization, r.rotational, r.lr, r.seed) for r in runs)
    assert set(variants.values()) == {1}
    for lr in lrs:
        at_lr = [r for r in runs if r.lr == lr and r.seed == 42]
        assert sorted((r.weight_standardization, r.rotational) for r in at_lr) == [(False, False), (False, True), (True, False)]
    for r in runs:
        assert (r.model, r.dataset, r.optimizer, r.weight_decay, r.batch_size) == ("resnet18-ln", "cifar100", "sgdm", 5e-4, 256)
        assert not r.gain and r.val_split and r.seed in (42, 43, 44)
        assert r.rv_beta == (0.99 if r.rotational else 0.9)
        assert r.dynamics_interval > 0 and r.dynamics_sample_neurons > 0  # Figure 7 Right


def test_imbalance_grids_as_in_the_official_scripts():
    runs = get_experiment("imbalance").runs("resnet18", seeds=[0])
    wd13 = close_set(0.01 * 2**k for k in range(-5, 8))
    wd7 = close_set(0.01 * 2**k for k in range(-3, 4))

    def weight_decays(mode, portion, factor):
        return close_set(r.weight_decay for r in runs if not r.model_options and
                         (r.imbalance_mode, r.imbalance_portion, r.imbalance_factor) == (mode, portion, factor))

    for portion in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5):
        assert weight_decays("slow", portion, 10.0) == wd13
    for portion in (0.1, 0.2, 0.3, 0.4, 0.5):
        assert weight_decays("split", portion, 10.0) == wd13
    for mode in ("slow", "split"):
        for factor in (2.0, 3.0, 5.0, 8.0, 10.0):
            assert weight_decays(mode, 0.5, factor) == wd13
    widths = {}
    for r in runs:
        if r.model_options:
            widths.setdefault(r.model_options["width"], set()).add(r.weight_decay)
            assert (r.imbalance_portion, r.imbalance_factor) == (0.0, 1.0)  # balanced
    assert set(widths) == {57, 51, 44, 38, 32} and all(close_set(w) == wd7 for w in widths.values())
    # 6 + 5 slow/split portions, 4 + 4 more factors (factor 10 at 0.5 is already there), all × 13; widths 5 × 7.
    assert len(runs) == (6 + 5 + 4 + 4) * 13 + 5 * 7
    for r in runs:
        assert (r.model, r.optimizer, r.rotational, r.lr, r.batch_size, r.val_split) == ("resnet18", "adamw", True, 0.1, 256, True)


def test_zero_shot_pairs_every_baseline_with_its_rv():
    exp = get_experiment("zero-shot")
    for model in exp.models:
        runs = exp.runs(model)
        baselines = [r for r in runs if not r.rotational]
        for base in baselines:
            rv = base.replace(rotational=True, gain=base.model == "gpt2")
            assert rv.run_id in {r.run_id for r in runs}, f"no zero-shot RV for {base}"
        assert {r.seed for r in runs} == ({0} if model == "resnet50" else {0, 1, 2})
    few_shot = {(r.optimizer, r.batch_size, r.weight_decay) for r in exp.runs("resnet20", seeds=[0])
                if r.rotational and r.weight_decay not in (1e-4, 1e-2, 1.0)}
    assert few_shot == {("adamw", 2048, 0.08), ("lion", 2048, 2.0)}  # Tables 2 and 3


def test_dynamics_runs_are_constant_lr_and_densely_recorded():
    exp = get_experiment("dynamics")
    gpt2 = exp.runs("gpt2")
    assert {(r.weight_standardization, r.gain) for r in gpt2} == {(True, True), (False, False)}
    for r in gpt2 + exp.runs("resnet50"):
        assert (r.schedule, r.warmup_steps, r.warmup_epochs, r.steps, r.dynamics_interval) == ("constant", 0, 0.0, 100_000, 10)
    assert {(r.lr, r.weight_decay) for r in gpt2} == {(6e-4, 0.1)}


# --- every grid -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, model, scale", ALL_GRIDS)
def test_every_run_is_a_valid_distinct_config(name, model, scale):
    runs = get_experiment(name).runs(model, scale)
    assert runs
    assert len({r.run_id for r in runs}) == len(runs)
    for r in runs:
        assert RunConfig.from_dict(json.loads(r.canonical_json())) == r  # survives config.json
        assert r.model == model and r.model in MODEL_NAMES and r.dataset in DATASET_NAMES
    # Every distinct architecture builds (on the meta device: shapes only, no memory).
    architectures = {(r.model, r.tiny, r.weight_standardization, r.gain, json.dumps(r.model_options)) for r in runs}
    for arch, tiny, ws, gain, options in architectures:
        with torch.device("meta"):
            build_model(arch, tiny=tiny, weight_standardization=ws, gain=gain, **json.loads(options))


@pytest.mark.parametrize("name, model", [(n, m) for n, m, s in ALL_GRIDS if s == "tiny"])
def test_tiny_runs_are_small_synthetic_and_record_dynamics(name, model):
    exp = get_experiment(name)
    runs = exp.runs(model, "tiny")
    for r in runs:
        assert r.tiny and r.dataset.startswith("synthetic-")
        assert r.steps is not None and r.steps <= 600 and r.accumulation == 1 and r.precision == "fp32"
        assert 0 < r.dynamics_interval <= 5
    assert {r.seed for r in runs} == {0}
    # Same axes as the paper, and the same named settings being compared (optimizer vs its RV, ...).
    tiny_axes, paper_axes = exp.axes(model, "tiny"), exp.axes(model, "paper")
    assert set(tiny_axes) <= set(paper_axes)
    for axis in ("optimizer", "variant", "weight_standardization", "method"):
        if axis in paper_axes and name != "zero-shot":
            assert tiny_axes[axis] == paper_axes[axis]
    assert len(runs) <= 20  # minutes on two cores


def test_sweep_removes_duplicates_keeping_order_and_puts_seeds_outermost():
    sweep = Sweep(base={"steps": 10}, seeds=(3, 4), points=[
        Point({"lr": 0.1}, {"lr": 0.1}), Point({"lr": 0.2}, {"lr": 0.2}), Point({"again": 0.1}, {"lr": 0.1}),
    ])
    runs = sweep.runs()
    assert [(r.seed, r.lr) for r in runs] == [(3, 0.1), (3, 0.2), (4, 0.1), (4, 0.2)]
    assert [(r.seed, r.lr) for r in sweep.runs(seeds=[7])] == [(7, 0.1), (7, 0.2)]


def test_axes_list_numbers_ascending_and_settings_in_order():
    axes = get_experiment("eta-lambda").axes("gpt2", "paper")
    assert axes["optimizer"] == ["AdamW", "RV-AdamW"]
    # The 7 AdamW lrs are among the 11 RV lrs; the union is listed ascending.
    assert axes["lr"] == [3e-5, 9e-5, 2.7e-4, 8.3e-4, 2.5e-3, 5e-3, 1e-2, 3e-2, 9e-2, 0.27, 0.81]
    assert get_experiment("warmup").axes("gpt2") == {
        "optimizer": ["AdamW", "RV-AdamW"], "warmup": ["250 steps", "none"],
        "lr": [0.0003, 0.0006, 0.0012, 0.0024, 0.0048, 0.0096, 0.0192],
    }


def test_describe_experiments_matches_runs_and_is_json():
    described = describe_experiments()
    assert [d["name"] for d in described] == list(EXPERIMENTS)
    json.dumps(described)
    for entry in described:
        exp = get_experiment(entry["name"])
        assert entry["models"] == list(exp.models) and entry["figures"] == exp.figures
        for model in exp.models:
            for scale in SCALES:
                grid = entry["per_model"][model][scale]
                assert grid["runs"] == len(exp.runs(model, scale))
                assert grid["axes"] == exp.axes(model, scale)
                assert grid["runs"] == len(exp.runs(model, scale, seeds=grid["seeds"]))


# --- bad input ------------------------------------------------------------------------------


def test_unknown_experiment_names_the_choices():
    with pytest.raises(UserError, match="unknown experiment 'warmpu'; choose one of: eta-lambda, warmup, adam-vs-adamw"):
        get_experiment("warmpu")


def test_model_not_accepted_names_the_accepted_ones():
    with pytest.raises(UserError, match="experiment warmup does not accept model 'resnet20'; choose one of: gpt2, resnet50"):
        get_experiment("warmup").runs("resnet20")
    with pytest.raises(UserError, match="does not accept model"):
        get_experiment("weight-std").axes("resnet18", "paper")


def test_unknown_scale_names_the_scales():
    with pytest.raises(UserError, match="unknown scale 'huge'; choose one of: paper, tiny"):
        get_experiment("warmup").runs("gpt2", scale="huge")


def test_empty_seeds_is_an_error_not_an_empty_sweep():
    with pytest.raises(UserError, match="no seeds"):
        get_experiment("warmup").runs("gpt2", seeds=[])


def test_paper_lrs_have_exact_short_reprs():
    """Grid values print as the paper writes them (0.0048, not 0.0048000000000000004)."""
    runs = get_experiment("warmup").runs("gpt2") + get_experiment("adam-vs-adamw").runs("resnet18")
    assert all(len(repr(r.lr)) <= 12 and not math.isnan(r.lr) for r in runs)
