"""Live metrics: each eval's rows reach the disk between checkpoints, and a resume drops them.

A run writes its rows since the last write as metrics.live/part-<step>.parquet at every eval and
folds them into metrics.parquet at each checkpoint (rotsweep.store). status, gather and the
figures read both through store.read_metrics.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pandas as pd
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from rotsweep import launch, store, train
from rotsweep.launch.status import last_metric
from rotsweep.analysis import gather
from rotsweep.cli import app
from rotsweep.presets import preset
from helpers import wait_until_stopped
from test_launch import needs_slurm, wait_for

# A run that SIGKILLs itself right after the live write of its eval at step 70: the kill lands
# at the same point however loaded the machine is (polling status.json from outside raced past
# the checkpoint at 80 on a busy machine).
WORKER = textwrap.dedent(
    """
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from rotsweep import train
    from rotsweep.config import RunConfig

    write_live_metrics = train.Trainer.write_live_metrics
    def write_then_die_at_70(self):
        write_live_metrics(self)
        if self.step >= 70:
            os.kill(os.getpid(), signal.SIGKILL)
    train.Trainer.write_live_metrics = write_then_die_at_70
    train.run(RunConfig.load(sys.argv[1]), sys.argv[2])
    """
)


def rows(step, split, metric, value):
    return {"step": step, "epoch": step / 10, "split": split, "metric": metric, "value": value}


def running_run(sweep, step):
    """(config, run directory) of a 100-step run of `sweep` whose status.json says running at `step`."""
    config = preset("tiny-resnet20-adamw", steps=100)
    run_dir = store.run_dir(sweep, config.run_id)
    store.prepare_run_dir(config, run_dir)
    store.write_status(run_dir, "running", step=step, total_steps=100)
    return config, run_dir


def live_steps(run_dir):
    return [int(path.stem.split("-")[1]) for path in store.live_metric_parts(run_dir)]


def test_read_metrics_takes_from_the_parts_only_rows_past_the_checkpoint(tmp_path):
    # As a kill leaves it between writing metrics.parquet at the checkpoint (step 40) and
    # deleting the parts it folded in: the part of step 30 is stale, that of step 50 is live.
    saved = [rows(step, "val", "loss", 10.0 - step / 10) for step in (10, 20, 30, 40)]
    store.write_parquet(tmp_path / store.METRICS_FILE, store.metrics_table(saved))
    store.append_live_metrics(tmp_path, [rows(30, "val", "loss", 99.0)], 30)
    store.append_live_metrics(tmp_path, [rows(45, "train", "loss", 4.5), rows(50, "val", "loss", 5.0)], 50)
    table = store.read_metrics(tmp_path).to_pylist()
    assert table == saved + [rows(45, "train", "loss", 4.5), rows(50, "val", "loss", 5.0)]
    assert last_metric(tmp_path) == ("val_loss", 5.0)
    # Without a checkpoint yet, the parts are all there is.
    store.clear_live_metrics(tmp_path)
    assert store.live_metric_parts(tmp_path) == []
    (tmp_path / store.METRICS_FILE).unlink()
    store.append_live_metrics(tmp_path, [rows(10, "val", "loss", 9.0)], 10)
    assert store.read_metrics(tmp_path).to_pylist() == [rows(10, "val", "loss", 9.0)]


def test_read_metrics_while_the_run_replaces_metrics_parquet_reads_whole_files(tmp_path):
    # A checkpoint renames a new metrics.parquet over the old one while status, gather or export
    # read it: every read must see one whole file (the old or the new), never a mix of the two.
    def saved(rows_count: int) -> pa.Table:
        return store.metrics_table([rows(step, "val", "loss", float(rows_count)) for step in range(rows_count)])

    store.write_parquet(tmp_path / store.METRICS_FILE, saved(10))
    stop = threading.Event()

    def checkpoints():
        count = 10
        while not stop.is_set():
            count = 10 + (count - 9) % 40  # files of 10 to 49 rows, one after the other
            store.write_parquet(tmp_path / store.METRICS_FILE, saved(count))

    writer = threading.Thread(target=checkpoints)
    writer.start()
    try:
        for _ in range(300):
            table = store.read_metrics(tmp_path)
            assert set(table["value"].to_pylist()) == {float(table.num_rows)}  # one file, whole
    finally:
        stop.set()
        writer.join()


def test_an_unreadable_part_is_named_by_readers(tmp_path):
    part = tmp_path / store.LIVE_METRICS_DIR / store.live_part_name(10)
    store.write_parquet(part, pd.DataFrame({"step": [10]}))
    with pytest.raises(ValueError, match=r"metrics.live/part-000000000010.parquet: missing column\(s\) epoch"):
        store.read_metrics(tmp_path)
    store.append_live_metrics(tmp_path, [rows(10, "val", "loss", 1.0)], 10)
    part.write_bytes(part.read_bytes()[:-20])  # truncated
    with pytest.raises(ValueError, match="metrics.live/part-000000000010.parquet: "):
        store.read_metrics(tmp_path)
    # gather reports the file and keeps the run.
    sweep = tmp_path / "sweep"
    config, run_dir = running_run(sweep, step=10)
    (run_dir / store.LIVE_METRICS_DIR).mkdir()
    part.rename(run_dir / store.LIVE_METRICS_DIR / part.name)
    problems = gather.gather(sweep).problems
    assert [problem.run_id for problem in problems] == [config.run_id]
    assert "metrics.live/part-000000000010.parquet" in problems[0].reason


def test_sigkill_between_checkpoints_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    config = preset("tiny-gpt2-adamw", steps=100, checkpoint_interval=40, eval_interval=10, dynamics_interval=5)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert train.run(config, straight) == "done"
    expected = store.read_metrics(straight).to_pandas()
    assert live_steps(straight) == []  # the last checkpoint folded every part in
    pd.testing.assert_frame_equal(expected, pd.read_parquet(straight / store.METRICS_FILE).astype(expected.dtypes))

    config_path = tmp_path / "config.json"
    config_path.write_text(config.canonical_json())
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(config_path), str(interrupted)],
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    # Killed past its checkpoint at step 40, with evals at 50, 60, 70 only in live parts.
    assert worker.wait(timeout=300) == -signal.SIGKILL
    status = store.read_status(interrupted)
    assert torch.load(interrupted / store.CHECKPOINT_FILE, weights_only=False)["step"] == 40
    assert status["status"] == "running" and 70 <= status["step"] < 80
    assert live_steps(interrupted) == [50, 60, 70]
    # Between checkpoints, the rows read are exactly the uninterrupted run's up to the last eval,
    # and status.json carries its step and latest values.
    seen = store.read_metrics(interrupted).to_pandas()
    pd.testing.assert_frame_equal(seen, expected[expected["step"] <= 70].reset_index(drop=True))
    last_val = seen[(seen["split"] == "val") & (seen["metric"] == "loss")].iloc[-1]
    assert status["latest"]["val_loss"] == last_val["value"] and last_val["step"] == 70

    assert train.run(config, interrupted) == "done"
    assert "resumed at step 40" in (interrupted / store.LOG_FILE).read_text()
    assert live_steps(interrupted) == []
    pd.testing.assert_frame_equal(store.read_metrics(interrupted).to_pandas(), expected)


def test_gather_reads_the_live_rows(tmp_path):
    sweep = tmp_path / "sweep"
    config, run_dir = running_run(sweep, step=20)
    store.write_parquet(run_dir / store.METRICS_FILE, store.metrics_table([rows(10, "val", "top1", 20.0)]))
    store.append_live_metrics(run_dir, [rows(20, "val", "top1", 30.0)], 20)
    assert not gather.gather(sweep).problems
    curves = pd.read_parquet(sweep / "results" / "curves.parquet")
    assert curves["step"].tolist() == [10, 20] and curves["value"].tolist() == [20.0, 30.0]
    # The next eval's part is a change gather sees.
    store.append_live_metrics(run_dir, [rows(30, "val", "top1", 40.0)], 30)
    gather.gather(sweep)
    assert pd.read_parquet(sweep / "results" / "curves.parquet")["value"].tolist() == [20.0, 30.0, 40.0]


@needs_slurm
@pytest.mark.slurm
def test_slurm_status_advances_between_checkpoints(tmp_path):
    """The issue's done-when: `status --json` shows step and metric advancing before any checkpoint."""
    sweep = tmp_path / "sweep"
    result = CliRunner().invoke(app, [
        "launch", "dynamics", "--model", "gpt2", "--scale", "tiny", "--executor", "slurm", "--profile", "local",
        "--out", str(sweep), "--set", "steps=2000", "--set", "eval_interval=20", "--set", "checkpoint_interval=1000",
        "--grid", "weight_standardization=false", "--json"])
    assert result.exit_code == 0, result.output
    run_id = store.read_manifest(sweep)["runs"][0]
    run_dir = store.run_dir(sweep, run_id)
    seen: dict[int, float] = {}

    def two_evals_seen():
        status = CliRunner().invoke(app, ["status", str(sweep), "--json"])
        assert status.exit_code == 0, status.output
        run = next(run for run in json.loads(status.output)["runs"] if run["run_id"] == run_id)
        if run["step"] and run["value"] is not None and not (run_dir / store.CHECKPOINT_FILE).exists():
            seen[run["step"]] = run["value"]
        return len(seen) >= 3

    try:
        wait_for(two_evals_seen, timeout=300, what="three evals before the first checkpoint")
    finally:
        launch.cancel(sweep)
        wait_until_stopped(sweep, timeout=120)
    steps = sorted(seen)
    assert steps[-1] > steps[0] and steps[-1] < 1000
    assert len(set(seen.values())) > 1  # the metric moved too
    # Each value shown is the val loss that the run's live parts hold at that step.
    metrics = store.read_metrics(run_dir).to_pandas()
    val = metrics[(metrics["split"] == "val") & (metrics["metric"] == "loss")].set_index("step")["value"]
    for step, value in seen.items():
        assert val[val.index <= step].iloc[-1] == pytest.approx(value)


def test_a_live_directory_linking_out_of_the_sweep_is_reported_not_read(tmp_path):
    sweep = tmp_path / "sweep"
    config, run_dir = running_run(sweep, step=20)
    elsewhere = tmp_path / "elsewhere"
    store.append_live_metrics(elsewhere, [rows(20, "val", "top1", 99.0)], 20)
    (run_dir / store.LIVE_METRICS_DIR).symlink_to(elsewhere / store.LIVE_METRICS_DIR)
    problems = gather.gather(sweep).problems
    assert [(p.file, "outside the sweep" in p.reason) for p in problems] == [(store.LIVE_METRICS_DIR, True)]
    assert pd.read_parquet(sweep / "results" / "curves.parquet").empty
