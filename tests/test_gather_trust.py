"""gather and the run files it trusts (issue 10): a deleted dynamics part is a reported gap (A4),
and symbolic links never lead gather out of the sweep, for reading or writing (A8)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from rotsweep import dynamics, store, train
from rotsweep.analysis.gather import gather, output_paths, read_results
from rotsweep.config import RunConfig
from rotsweep.errors import UserError

# --- A4: the parts a run wrote are recorded; a deleted one is a gap ------------------------------

TINY = RunConfig(model="resnet20", tiny=True, dataset="synthetic-images", dataset_options={"image_size": 16},
                 lr=0.01, weight_decay=0.5, steps=30, warmup_steps=3, batch_size=16, dynamics_interval=2,
                 eval_interval=30, eval_batches=1, checkpoint_interval=10, train_log_interval=5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real finished run with three dynamics parts (a checkpoint every 10 steps), in a sweep."""
    sweep = tmp_path_factory.mktemp("trust") / "sweep"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.run(TINY, store.run_dir(sweep, TINY.run_id))
    finally:
        torch.set_num_threads(threads)
    store.write_manifest(sweep, {"experiment": "eta-lambda", "runs": [TINY.run_id]})
    return sweep


def parts_of(run_dir):
    return sorted(path.name for path in (run_dir / store.DYNAMICS_DIR).glob("part-*.parquet"))


def test_a_run_records_every_part_it_wrote(trained):
    run_dir = store.run_dir(trained, TINY.run_id)
    record = json.loads((run_dir / store.DYNAMICS_DIR / dynamics.PARTS_RECORD).read_text())["parts"]
    assert sorted(record) == parts_of(run_dir) == [
        "part-000000000-000000008.parquet", "part-000000010-000000018.parquet", "part-000000020-000000028.parquet"]
    for name, entry in record.items():
        rows = pd.read_parquet(run_dir / store.DYNAMICS_DIR / name)
        assert (entry["first_step"], entry["last_step"], entry["rows"]) == (rows.step.min(), rows.step.max(), len(rows))
    # The record is not data: Parquet readers of the directory skip it.
    assert len(pd.read_parquet(run_dir / store.DYNAMICS_DIR)) == sum(entry["rows"] for entry in record.values())


def test_a_deleted_part_is_reported_as_a_gap(trained, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(trained, sweep)
    assert gather(sweep).problems == []
    before = read_results(sweep, "runs").set_index("run_id").loc[TINY.run_id, "eta_r_measured"]

    middle = store.run_dir(sweep, TINY.run_id) / store.DYNAMICS_DIR / "part-000000010-000000018.parquet"
    middle.unlink()
    report = gather(sweep)
    assert [(p.run_id, p.file) for p in report.problems] == [(TINY.run_id, f"{store.DYNAMICS_DIR}/{middle.name}")]
    assert "missing" in report.problems[0].reason and "steps 10-18" in report.problems[0].reason
    assert report.skipped == 1 and middle.name in report.format()
    # The window [8, 22] lost steps 10-18: the measurement changed, and the report says why.
    after = read_results(sweep, "runs").set_index("run_id").loc[TINY.run_id, "eta_r_measured"]
    assert after != before
    assert gather(sweep).problems == report.problems  # reported again from the cache


def test_a_resumed_run_discards_parts_and_their_records_together(tmp_path):
    directory = tmp_path / store.DYNAMICS_DIR
    frame = pd.DataFrame({"step": [0], "param": ["w"], "stat": ["norm"], "reduction": ["mean"], "neuron": [-1],
                          "value": [1.0]})
    for first in (0, 10, 20):
        dynamics.write_part(directory, frame.assign(step=[first]).iloc[[0, 0]].assign(step=[first, first + 8]))
    dynamics.discard_parts_from(directory, 10)  # resume from the checkpoint at step 10
    record = json.loads((directory / dynamics.PARTS_RECORD).read_text())["parts"]
    assert sorted(record) == parts_of(tmp_path) == ["part-000000000-000000008.parquet"]
    dynamics.write_part(directory, frame.assign(step=[10]))
    assert sorted(json.loads((directory / dynamics.PARTS_RECORD).read_text())["parts"]) == parts_of(tmp_path)
    # A recorded part deleted by hand past the checkpoint is recorded again by the resumed run, not a gap.
    dynamics.write_part(directory, frame.assign(step=[20]))
    (directory / "part-000000020-000000020.parquet").unlink()
    dynamics.discard_parts_from(directory, 20)
    assert sorted(json.loads((directory / dynamics.PARTS_RECORD).read_text())["parts"]) == parts_of(tmp_path) == [
        "part-000000000-000000008.parquet", "part-000000010-000000010.parquet"]


def test_parts_of_runs_without_a_record_are_read_unchecked(trained, tmp_path):
    """Runs written before the record existed: no gap can be known, none is invented."""
    sweep = tmp_path / "sweep"
    shutil.copytree(trained, sweep)
    run_dir = store.run_dir(sweep, TINY.run_id)
    (run_dir / store.DYNAMICS_DIR / dynamics.PARTS_RECORD).unlink()
    (run_dir / store.DYNAMICS_DIR / "part-000000010-000000018.parquet").unlink()
    assert gather(sweep).problems == []


# --- A8: symbolic links out of the sweep ----------------------------------------------------------

CONFIG = RunConfig(optimizer="adamw", steps=100, lr=0.01, weight_decay=0.1, schedule="constant")


def write_run(sweep, config):
    run_dir = store.run_dir(sweep, config.run_id)
    store.write_text(run_dir / store.CONFIG_FILE, config.canonical_json() + "\n")
    store.write_status(run_dir, "done", step=100, total_steps=100)
    steps = np.arange(0, 100, 10)
    store.write_parquet(run_dir / store.METRICS_FILE, pd.DataFrame(
        {"step": steps, "epoch": steps / 100, "split": "train", "metric": "loss", "value": 1.0}))
    dynamics.write_part(run_dir / store.DYNAMICS_DIR, pd.DataFrame(
        {"step": steps, "param": "w", "stat": "angular_update", "reduction": "mean", "neuron": -1, "value": 0.01}))
    return run_dir


@pytest.fixture
def sweep(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep, CONFIG)
    store.write_manifest(sweep, {"experiment": "test", "runs": [CONFIG.run_id]})
    return sweep


def snapshot(directory):
    return {str(path.relative_to(directory)): path.read_bytes() if path.is_file() else None
            for path in sorted(directory.rglob("*"))}


def test_a_run_directory_linking_out_of_the_sweep_is_reported_not_read(sweep, tmp_path):
    os.symlink("/etc", store.runs_dir(sweep) / "etc")
    outside = write_run(tmp_path / "elsewhere", CONFIG.replace(seed=1))
    os.symlink(outside, store.runs_dir(sweep) / outside.name)
    report = gather(sweep)
    problems = {(p.run_id, p.file): p.reason for p in report.problems}
    assert set(problems) == {(None, "runs/etc"), (None, f"runs/{outside.name}")}
    assert all("outside the sweep" in reason for reason in problems.values())
    assert list(read_results(sweep, "runs")["run_id"]) == [CONFIG.run_id]
    assert not (output_paths(sweep)["dynamics"] / f"{outside.name}.parquet").exists()


def test_a_manifest_run_whose_directory_links_out_is_not_read(sweep, tmp_path):
    outside = write_run(tmp_path / "elsewhere", CONFIG.replace(seed=1))
    os.symlink(outside, store.runs_dir(sweep) / outside.name)
    store.write_manifest(sweep, {"experiment": "test", "runs": [CONFIG.run_id, outside.name]})
    report = gather(sweep)
    assert [(p.run_id, p.file) for p in report.problems] == [(None, f"runs/{outside.name}")]
    runs = read_results(sweep, "runs").set_index("run_id")
    assert runs.loc[outside.name, "status"] == "pending" and pd.isna(runs.loc[outside.name, "lr"])
    assert outside.name not in set(read_results(sweep, "dynamics")["run_id"])


def test_files_linking_out_of_the_sweep_are_reported_not_read(sweep, tmp_path):
    run_dir = store.run_dir(sweep, CONFIG.run_id)
    secret = tmp_path / "secret.json"
    secret.write_text(CONFIG.replace(lr=0.5).canonical_json())
    (run_dir / store.CONFIG_FILE).unlink()
    os.symlink(secret, run_dir / store.CONFIG_FILE)
    part = next((run_dir / store.DYNAMICS_DIR).glob("part-*.parquet"))
    shutil.move(part, tmp_path / part.name)
    os.symlink(tmp_path / part.name, part)
    report = gather(sweep)
    assert {(p.run_id, p.file) for p in report.problems} == {
        (CONFIG.run_id, store.CONFIG_FILE), (CONFIG.run_id, f"{store.DYNAMICS_DIR}/{part.name}")}
    assert all("outside the sweep" in p.reason for p in report.problems)
    runs = read_results(sweep, "runs").set_index("run_id")
    assert pd.isna(runs.loc[CONFIG.run_id, "lr"])  # the linked config was not read
    assert read_results(sweep, "dynamics").empty


def test_a_link_inside_the_sweep_is_followed(sweep):
    run_dir = store.run_dir(sweep, CONFIG.run_id)
    (sweep / "kept").mkdir()
    shutil.move(run_dir / store.METRICS_FILE, sweep / "kept" / store.METRICS_FILE)
    os.symlink(sweep / "kept" / store.METRICS_FILE, run_dir / store.METRICS_FILE)
    report = gather(sweep)
    assert report.problems == []
    assert len(read_results(sweep, "curves")) == 10


@pytest.mark.parametrize("linked", ["results", "results/dynamics.parquet", "results/runs.parquet"])
def test_results_linking_out_of_the_sweep_are_refused_and_nothing_is_written(sweep, tmp_path, linked):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    link = sweep / linked
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, link)
    before, sweep_before = snapshot(outside), snapshot(sweep)
    with pytest.raises(UserError, match="leads out of the sweep.*remove the symbolic link") as error:
        gather(sweep)
    assert "\n" not in str(error.value)
    assert snapshot(outside) == before and snapshot(sweep) == sweep_before
