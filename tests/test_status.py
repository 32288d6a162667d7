"""`rotsweep status` a person can read (issue 12 point 2): variant and swept values, state, step/total,
last metric, elapsed/ETA, filters and sorts, the best run, and one screen at 846 runs.

The large sweep is written directly in the real formats (manifest.json, config.json, status.json,
metrics.parquet) that launches and runs write; the small one is a real local sweep.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from rotsweep import store
from rotsweep.cli import app
from rotsweep.config import RunConfig
from rotsweep.launch.local import process_start
from rotsweep.launch.status import ATTENTION_ROWS, SCREEN_RUNS
from helpers import wait_until_stopped

runner = CliRunner()

LARGE = 846
FAILED, DIVERGED, RUNNING = 12, 3, 5
TOTAL_STEPS = 1000
SCREEN_LINES = 50  # a terminal of 50 lines
PAPER_NAMES = {"adamw": "AdamW", "sgdm": "SGDM"}  # the optimizers as the paper writes them


def cli(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def large_sweep(root: Path) -> tuple[Path, dict]:
    """846 runs over 4 variants × 71 learning rates × 3 seeds, in every state a sweep goes through.

    The files are those a launch and its runs write, in their formats, written plainly (without
    the fsync of atomic writes, which would make this fixture take a minute on a busy disk).

    Returns the sweep and what was written for each run: {run_id: {"state", "lr", "top1", "wall_s", "step"}}.
    """
    sweep = root / "large"
    configs = [RunConfig(model="resnet20", dataset="synthetic-images", steps=TOTAL_STEPS, optimizer=optimizer,
                         rotational=rotational, lr=round(1e-3 * (1 + k), 6), seed=seed)
               for optimizer in ("adamw", "sgdm") for rotational in (False, True)
               for k in range(71) for seed in range(3)][:LARGE]
    me = {"job_id": str(os.getpid()), "executor": "local", "submitted": time.time(),
          "process": process_start(os.getpid())}  # a live local job: its runs may be running
    written, jobs = {}, {}
    now = time.time()
    for index, config in enumerate(configs):
        run_dir = store.run_dir(sweep, config.run_id)
        run_dir.mkdir(parents=True)
        (run_dir / store.CONFIG_FILE).write_text(config.canonical_json() + "\n")

        def write_status(status: str, **fields) -> None:
            (run_dir / store.STATUS_FILE).write_text(json.dumps({"status": status, "updated": now, **fields}))
        top1 = 0.2 + 0.7 * ((index * 37) % LARGE) / LARGE  # distinct values, the best one known
        if index < FAILED:
            state, step = "failed", 400
            write_status("failed", step=step, total_steps=TOTAL_STEPS, wall_s=40.0,
                               error="RuntimeError: CUDA error")
            jobs[config.run_id] = {**me, "job_id": "1", "process": "gone"}  # a job that ended
        elif index < FAILED + DIVERGED:
            state, step = "diverged", 50
            write_status("diverged", step=step, total_steps=TOTAL_STEPS, wall_s=5.0)
        elif index < FAILED + DIVERGED + RUNNING:
            state, step = "running", 250
            write_status("running", step=step, total_steps=TOTAL_STEPS, wall_s=100.0)
            jobs[config.run_id] = me
        else:
            state, step = "done", TOTAL_STEPS
            write_status("done", step=step, total_steps=TOTAL_STEPS, wall_s=300.0 + index)
        if state != "diverged":
            pd.DataFrame({"step": [step // 2, step], "epoch": [0.0, 1.0], "split": ["val", "val"],
                          "metric": ["top1", "top1"], "value": [top1 / 2, top1]}).to_parquet(
                run_dir / store.METRICS_FILE, index=False)
        written[config.run_id] = {"state": state, "lr": config.lr, "top1": None if state == "diverged" else top1,
                                  "step": step, "optimizer": config.optimizer, "rotational": config.rotational}
    store.write_manifest(sweep, {"experiment": "eta-lambda", "model": "resnet20", "scale": "tiny", "seeds": None,
                                 "overrides": [], "created": now, "runs": [c.run_id for c in configs],
                                 "jobs": jobs, "launches": []})
    return sweep, written


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    return large_sweep(tmp_path_factory.mktemp("status"))


def test_846_runs_fit_one_screen_with_counts_groups_best_and_the_runs_that_need_attention(large):
    sweep, written = large
    text = cli("status", sweep)
    lines = text.splitlines()
    assert len(lines) <= SCREEN_LINES and max(map(len, lines)) <= 250, text
    done = LARGE - FAILED - DIVERGED - RUNNING
    assert f"{LARGE} runs: {FAILED} failed, {DIVERGED} diverged, {RUNNING} running, {done} done" in lines[0]
    best = max((run for run in written.items() if run[1]["top1"] is not None), key=lambda run: run[1]["top1"])
    assert f"best val_top1 {best[1]['top1']:.4g}: {best[0]}" in lines[0]
    # Counts per variant: one row each, adding up to the sweep.
    rows = {line.split()[0]: [int(n) for n in line.split()[1:]] for line in lines
            if line.split() and line.split()[0] in ("AdamW", "RV-AdamW", "SGDM", "RV-SGDM")}
    assert set(rows) == {"AdamW", "RV-AdamW", "SGDM", "RV-SGDM"}
    assert sum(map(sum, rows.values())) == LARGE
    # The runs that need attention, worst first: every failed and diverged run fits in the rows shown.
    shown = {line.split()[0]: line.split()[1] for line in lines if line.split() and line.split()[0] in written}
    attention = FAILED + DIVERGED + RUNNING
    assert len(shown) == ATTENTION_ROWS < attention
    assert {run_id for run_id, info in written.items() if info["state"] in ("failed", "diverged")} <= set(shown)
    assert f"{attention - ATTENTION_ROWS} more" in text


def test_all_lists_every_run_and_state_filters_keep_the_counts(large):
    sweep, written = large
    every = cli("status", sweep, "--all").splitlines()
    assert sum(1 for line in every if line.split() and line.split()[0] in written) == LARGE
    some = cli("status", sweep, "--state", "failed,running").splitlines()
    listed = {line.split()[0]: line.split()[1] for line in some if line.split() and line.split()[0] in written}
    assert sorted(listed.values()) == sorted(["failed"] * FAILED + ["running"] * RUNNING)
    assert f"{LARGE} runs:" in some[0]  # the summary still counts the whole sweep
    failed_row = next(line for line in some if " failed " in line)
    assert "RuntimeError: CUDA error" in failed_row and "log:" in failed_row


def test_json_carries_the_same_fields_sorted_by_metric(large):
    sweep, written = large
    report = json.loads(cli("status", sweep, "--json", "--state", "done,running", "--sort", "metric"))
    assert report["total"] == LARGE and len(report["runs"]) == LARGE - FAILED - DIVERGED
    values = [run["value"] for run in report["runs"]]
    assert values == sorted(values, reverse=True)  # accuracy: best first
    for run in report["runs"]:
        info = written[run["run_id"]]
        assert run["variant"] == ("RV-" if info["rotational"] else "") + PAPER_NAMES[info["optimizer"]]
        assert run["swept"] == {"lr": info["lr"], "seed": run["swept"]["seed"]}  # optimizer/rotational: the variant
        assert (run["state"], run["step"], run["total_steps"]) == (info["state"], info["step"], TOTAL_STEPS)
        assert run["value"] == pytest.approx(info["top1"]) and run["metric"] == "val_top1"
        if run["state"] == "running":
            # ETA: the mean time per step so far times the steps left (status.json was just written).
            assert run["eta_s"] == pytest.approx(run["elapsed_s"] / info["step"] * (TOTAL_STEPS - info["step"]))
            assert 100.0 <= run["elapsed_s"] < 100.0 + 600
        else:
            assert run["eta_s"] is None and run["elapsed_s"] >= 300.0
    assert report["best"]["run_id"] == report["runs"][0]["run_id"]
    assert sum(sum(counts.values()) for counts in report["groups"].values()) == len(report["runs"])


@pytest.mark.parametrize("args, message", [
    (["--state", "faild"], "unknown state 'faild'; choose from: failed"),
    (["--sort", "speed"], "unknown sort 'speed'; choose one of: run, state"),
])
def test_unknown_states_and_sorts_are_one_line_errors(large, args, message):
    sweep, _ = large
    result = runner.invoke(app, ["status", str(sweep), *args])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_a_real_local_sweep_shows_variants_swept_values_and_times(tmp_path):
    sweep = tmp_path / "sweep"
    result = runner.invoke(app, ["launch", "eta-lambda", "--model", "resnet20", "--scale", "tiny", "--executor",
                                 "local", "--out", str(sweep), "--max-parallel", "2", "--set", "steps=24",
                                 "--set", "eval_interval=12", "--set", "checkpoint_interval=12", "--json"])
    assert result.exit_code == 0, result.output
    wait_until_stopped(sweep)
    report = json.loads(cli("status", sweep, "--json", "--sort", "metric"))
    assert len(report["runs"]) <= SCREEN_RUNS  # a small sweep lists every run by default
    text = cli("status", sweep)
    for run in report["runs"]:
        config = json.loads((store.run_dir(sweep, run["run_id"]) / store.CONFIG_FILE).read_text())
        status = store.read_status(store.run_dir(sweep, run["run_id"]))
        assert run["state"] == "done" and run["step"] == run["total_steps"] == 24
        assert run["variant"] == ("RV-" if config["rotational"] else "") + PAPER_NAMES[config["optimizer"]]
        assert run["swept"] and all(config[name] == value for name, value in run["swept"].items())
        assert run["elapsed_s"] == status["wall_s"] and run["eta_s"] is None
        row = next(line for line in text.splitlines() if line.strip().startswith(run["run_id"]))
        assert run["variant"] in row and "24/24" in row
    # The sweep varies lr and weight decay (along η·λ) and the optimizer variant.
    assert {"lr", "weight_decay"} <= set(report["runs"][0]["swept"])
    assert {run["variant"] for run in report["runs"]} == {"AdamW", "RV-AdamW"}
    values = [run["value"] for run in report["runs"]]
    best = report["best"]
    higher = "top1" in best["metric"]
    assert best["value"] == (max(values) if higher else min(values))
    assert values == sorted(values, reverse=higher)
    assert f"best {best['metric']} {best['value']:.4g}: {best['run_id']}" in text.splitlines()[0]
