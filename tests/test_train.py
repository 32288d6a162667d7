"""One training run: it learns, writes its files, resumes exactly after SIGKILL, reports failure."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import torch

from rotsweep import store, train
from rotsweep.config import RunConfig
from rotsweep.errors import UserError
from rotsweep.presets import preset


def losses(run_dir, split="train"):
    metrics = pd.read_parquet(run_dir / store.METRICS_FILE)
    return metrics[(metrics["split"] == split) & (metrics["metric"] == "loss")]["value"].to_numpy()


@pytest.mark.parametrize(
    "name, steps",
    [("tiny-resnet20-adamw", 200), ("tiny-gpt2-adamw", 200)],
)
def test_tiny_runs_learn_and_write_their_files(tmp_path, name, steps):
    config = preset(name, steps=steps)
    status = train.run(config, tmp_path)
    assert status == "done"
    for file in (store.CONFIG_FILE, store.STATUS_FILE, store.METRICS_FILE, store.CHECKPOINT_FILE, store.LOG_FILE):
        assert (tmp_path / file).exists(), file
    assert RunConfig.load(tmp_path / store.CONFIG_FILE).run_id == config.run_id
    recorded = store.read_status(tmp_path)
    assert (recorded["status"], recorded["step"], recorded["total_steps"]) == ("done", steps, steps)
    train_loss = losses(tmp_path)
    assert train_loss[-1] < 0.8 * train_loss[0], train_loss  # it learned
    dynamics = pd.read_parquet(tmp_path / store.DYNAMICS_DIR)
    assert set(dynamics["stat"]) >= {"norm", "angular_update", "rms_update", "grad_norm"}
    assert sorted(dynamics["step"].unique())[:2] == [0, config.dynamics_interval]


def test_rotational_run_keeps_neuron_norms(tmp_path):
    config = preset("tiny-resnet20-adamw", steps=40, rotational=True)
    assert train.run(config, tmp_path) == "done"
    dynamics = pd.read_parquet(tmp_path / store.DYNAMICS_DIR)
    norms = dynamics[(dynamics["stat"] == "norm") & (dynamics["reduction"] == "sample")]
    # Algorithm 1 renormalises every rotational neuron to its initial (centred) norm.
    conv = norms[norms["param"].str.contains("conv")]
    spread = conv.groupby(["param", "neuron"])["value"].agg(lambda v: v.max() / v.min() - 1)
    assert spread.max() < 1e-5


RESUME_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from rotsweep import train
    from rotsweep.config import RunConfig
    train.run(RunConfig.load(sys.argv[1]), sys.argv[2])
    """
)


def test_sigkill_and_resume_ends_with_identical_metrics(tmp_path):
    config = preset("tiny-gpt2-adamw", steps=120, checkpoint_interval=30, eval_interval=20, dynamics_interval=5)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert train.run(config, straight) == "done"

    config_path = tmp_path / "config.json"
    config_path.write_text(config.canonical_json())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    worker = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, str(config_path), str(interrupted)], env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # kill it once it has checkpointed and gone past the checkpoint
            status = store.read_status(interrupted)
            if status.get("step", 0) >= 60 and status["status"] == "running":
                break
            time.sleep(0.05)
        else:
            pytest.fail("the worker never reached step 60")
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.wait()
    assert store.read_status(interrupted)["status"] == "running"  # killed: nothing could be written
    killed_at = torch.load(interrupted / store.CHECKPOINT_FILE, weights_only=False)["step"]
    assert 0 < killed_at < config.steps

    assert train.run(config, interrupted) == "done"
    pd.testing.assert_frame_equal(
        pd.read_parquet(straight / store.METRICS_FILE), pd.read_parquet(interrupted / store.METRICS_FILE)
    )
    dynamics = [pd.read_parquet(d / store.DYNAMICS_DIR).sort_values(["step", "param", "stat", "reduction", "neuron"])
                .reset_index(drop=True) for d in (straight, interrupted)]
    pd.testing.assert_frame_equal(*dynamics)
    weights = [torch.load(d / store.CHECKPOINT_FILE, weights_only=False)["model"] for d in (straight, interrupted)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert "resumed at step" in (interrupted / store.LOG_FILE).read_text()


def test_divergence_stops_the_run_and_keeps_measurements(tmp_path):
    config = preset("tiny-resnet20-sgdm", steps=100, lr=1e4, warmup_steps=0, weight_decay=0.0)
    assert train.run(config, tmp_path) == "diverged"
    status = store.read_status(tmp_path)
    assert status["status"] == "diverged" and status["step"] < 100
    assert not pd.Series(losses(tmp_path)).apply(lambda v: v == v and abs(v) != float("inf")).all()
    assert "diverged at step" in (tmp_path / store.LOG_FILE).read_text()
    # A finished (diverged) run is not run again.
    assert train.run(config, tmp_path) == "diverged"


def test_exception_marks_the_run_failed_with_the_traceback(tmp_path):
    config = RunConfig(dataset="cifar10", model="resnet20", tiny=True, steps=5)
    with pytest.raises(UserError, match="CIFAR-10 not found"):
        train.run(config, tmp_path / "run", data_dir=tmp_path / "nowhere")
    status = store.read_status(tmp_path / "run")
    assert status["status"] == "failed"
    assert "CIFAR-10 not found" in status["error"]
    assert "Traceback" in (tmp_path / "run" / store.LOG_FILE).read_text()


def test_a_run_directory_belongs_to_one_config(tmp_path):
    train.prepare_run_dir(RunConfig(steps=5), tmp_path)
    with pytest.raises(UserError, match="choose another --out"):
        train.prepare_run_dir(RunConfig(steps=6), tmp_path)
    assert json.loads((tmp_path / store.CONFIG_FILE).read_text())["steps"] == 5  # untouched


def test_cli_train_with_preset_and_overrides(tmp_path):
    from typer.testing import CliRunner

    from rotsweep.cli import app

    result = CliRunner().invoke(
        app, ["train", "--preset", "tiny-gpt2-adamw", "--set", "steps=10", "--set", "eval_interval=5",
              "--out", str(tmp_path), "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert "done at step 10" in result.output
    bad = CliRunner().invoke(app, ["train", "--preset", "tiny-gpt2-adamw", "--set", "stepz=10", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2
    assert "unknown RunConfig field(s): stepz" in bad.output
