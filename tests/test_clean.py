"""Disk (issue 12, point 7): --keep-checkpoints for finished runs and `rotsweep clean`, on real
local sweeps (zero-shot gpt2 tiny: two short runs each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from rotsweep import store

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["--set", "steps=6", "--set", "eval_interval=3", "--set", "eval_batches=1", "--set", "warmup_steps=2",
         "--set", "checkpoint_interval=1000", "--set", "dynamics_interval=3"]
STOPPED = ("done", "diverged", "failed")


def rotsweep(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rotsweep.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def as_json(*args) -> dict:
    result = rotsweep(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def launch(sweep: Path, *extra) -> dict:
    return as_json("launch", "zero-shot", "--model", "gpt2", "--scale", "tiny", "--executor", "local", "--out", sweep,
                   "--seeds", "0", "--max-parallel", "2", *SHORT, *extra)


def states(sweep: Path) -> list[str]:
    return [run["state"] for run in as_json("status", sweep)["runs"]]


def wait_for(predicate, timeout: float = 900.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(2)
    return value


def run_dirs(sweep: Path) -> list[Path]:
    return sorted(path for path in store.runs_dir(sweep).iterdir() if path.is_dir())


def disk_bytes(sweep: Path) -> int:
    return sum(path.stat().st_size for path in sweep.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    kept, default = root / "kept", root / "default"
    launch(kept, "--keep-checkpoints", "all")
    launch(default)
    for sweep in (kept, default):
        wait_for(lambda sweep=sweep: all(state in STOPPED for state in states(sweep)), what=f"{sweep} to finish")
    return {"kept": kept, "default": default}


def test_finished_runs_keep_their_final_weights_by_default(sweeps):
    sweep = sweeps["default"]
    assert states(sweep) == ["done", "done"]
    for run_dir in run_dirs(sweep):
        assert not (run_dir / store.CHECKPOINT_FILE).exists()
        weights = torch.load(run_dir / store.WEIGHTS_FILE, map_location="cpu", weights_only=True)
        assert weights["step"] == 6 and set(weights) == {"step", "model"}
        assert all(isinstance(tensor, torch.Tensor) for tensor in weights["model"].values())
    assert [entry["keep_checkpoints"] for entry in store.read_manifest(sweep)["launches"]] == ["last"]


def test_clean_frees_finished_runs_and_a_relaunch_submits_nothing(sweeps):
    sweep = sweeps["kept"]
    assert store.read_manifest(sweep)["launches"][0]["keep_checkpoints"] == "all"
    assert rotsweep("gather", sweep).returncode == 0
    before_runs = pd.read_parquet(sweep / "results" / "runs.parquet").sort_values("run_id").reset_index(drop=True)
    models = {}
    for run_dir in run_dirs(sweep):
        state = torch.load(run_dir / store.CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        assert state["optimizer"]["state"], "a full checkpoint holds the optimizer state"
        models[run_dir.name] = state["model"]
    sizes = {path: path.stat().st_size for path in sweep.rglob("*") if path.is_file()}

    dry = as_json("clean", sweep, "--dry-run")
    assert dry["dry_run"] and set(dry["freed"]) == set(models) and dry["bytes_freed"] > 0
    assert {path: path.stat().st_size for path in sweep.rglob("*") if path.is_file()} == sizes  # nothing touched

    before = disk_bytes(sweep)
    done = as_json("clean", sweep)
    manifest_growth = (sweep / store.MANIFEST_FILE).stat().st_size - sizes[sweep / store.MANIFEST_FILE]
    assert done["bytes_freed"] == before - disk_bytes(sweep) + manifest_growth  # what it says it freed, is freed
    assert abs(dry["bytes_freed"] - done["bytes_freed"]) <= 0.05 * done["bytes_freed"]
    for run_dir in run_dirs(sweep):
        assert not (run_dir / store.CHECKPOINT_FILE).exists()
        weights = torch.load(run_dir / store.WEIGHTS_FILE, map_location="cpu", weights_only=True)
        assert weights["model"].keys() == models[run_dir.name].keys()
        for name, tensor in weights["model"].items():
            assert torch.equal(tensor, models[run_dir.name][name])
    assert store.read_manifest(sweep)["cleanings"][-1]["keep"] == "last"

    # Still finished for launch, status and gather.
    relaunch = launch(sweep)
    assert relaunch["submitted_runs"] == 0 and relaunch["already_done"] == 2
    assert states(sweep) == ["done", "done"]
    rotsweep("gather", sweep, "--full")
    after_runs = pd.read_parquet(sweep / "results" / "runs.parquet").sort_values("run_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(before_runs.drop(columns="wall_s"), after_runs.drop(columns="wall_s"))

    again = as_json("clean", sweep)
    assert again["bytes_freed"] == 0  # idempotent
    none = as_json("clean", sweep, "--keep-checkpoints", "none")
    assert none["bytes_freed"] > 0
    for run_dir in run_dirs(sweep):
        assert not (run_dir / store.WEIGHTS_FILE).exists() and (run_dir / store.STATUS_FILE).exists()


def test_clean_never_touches_a_running_run(tmp_path):
    sweep = tmp_path / "running"
    launch(sweep, "--set", "steps=100000", "--set", "checkpoint_interval=2", "--keep-checkpoints", "all")
    try:
        running = wait_for(lambda: [d for d in run_dirs(sweep) if (d / store.CHECKPOINT_FILE).exists()
                                    and store.read_status(d).get("status") == "running"], what="a checkpoint")
        report = as_json("clean", sweep, "--keep-checkpoints", "none")
        assert report["freed"] == {} and set(report["skipped"]) == {d.name for d in run_dirs(sweep)}
        for run_dir in running:
            assert (run_dir / store.CHECKPOINT_FILE).exists()
            assert store.read_status(run_dir)["status"] == "running"
    finally:
        rotsweep("cancel", sweep)


def test_cli_choices_are_the_librarys():
    from rotsweep import cli, clean

    assert [choice.value for choice in cli.KeepCheckpoints] == list(clean.KEEP_CHOICES)
    assert cli.KeepCheckpoints(clean.DEFAULT_KEEP) is cli.KeepCheckpoints.last
