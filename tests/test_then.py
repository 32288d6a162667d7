"""A sweep that finishes itself (issue 12 point 6): `launch --then report|plot` gathers and writes the
report (or draws the figures) once the sweep's last job has ended, with no command run after the launch, on the real SLURM
cluster (a job held by --dependency=afterany) and with the local executor (a detached process).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from rotsweep import store
from rotsweep.cli import app
from rotsweep.launch import slurm
from rotsweep.launch.local import is_job_process
from helpers import needs_slurm, wait_until_stopped

runner = CliRunner()

# Longer than a local finisher's poll (rotsweep.launch.finish.POLL_SECONDS) and a gather's start.
POLL_GRACE_S = 5

# Two runs (AdamW, RV-AdamW at one lr) of the tiny eta-lambda sweep, 24 steps each.
TWO_RUNS = ["eta-lambda", "--model", "resnet20", "--scale", "tiny", "--grid", "lr=1e-3", "--grid", "eta_lambda=0",
            "--set", "steps=24", "--set", "eval_interval=12", "--set", "checkpoint_interval=12"]



def launch_json(*args) -> dict:
    result = runner.invoke(app, ["launch", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def status_json(sweep: Path) -> dict:
    result = runner.invoke(app, ["status", str(sweep), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def wait_for_figures(sweep: Path, timeout: float) -> list[Path]:
    """Poll the file system only: the PNGs `plot all` writes into SWEEP/figures/."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pngs = sorted((sweep / "figures").glob("*.png"))
        if pngs and all(png.with_suffix(".pdf").exists() for png in pngs):
            return pngs
        time.sleep(2)
    log = "\n".join(p.read_text(errors="replace")[-2000:] for p in store.jobs_dir(sweep).glob("*then*"))
    raise AssertionError(f"no figures in {sweep / 'figures'} after {timeout} s; finisher output:\n{log}")


def wait_for_report(sweep: Path, timeout: float) -> Path:
    """Poll the file system only: the report.html that `rotsweep report` writes into SWEEP/."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (sweep / "report.html").exists() and (sweep / "report.md").exists():
            return sweep / "report.html"
        time.sleep(2)
    log = "\n".join(p.read_text(errors="replace")[-2000:] for p in store.jobs_dir(sweep).glob("*then*"))
    raise AssertionError(f"no report.html in {sweep} after {timeout} s; finisher output:\n{log}")


def check_finished_before_figures(sweep: Path, pngs: list[Path]) -> None:
    """Every run is done and gathered, and the figures were drawn after the last run ended."""
    manifest = store.read_manifest(sweep)
    statuses = [store.read_status(store.run_dir(sweep, run_id)) for run_id in manifest["runs"]]
    assert [status["status"] for status in statuses] == ["done"] * len(statuses)
    runs = pd.read_parquet(sweep / "results" / "runs.parquet")
    assert sorted(runs["run_id"]) == sorted(manifest["runs"]) and set(runs["status"]) == {"done"}
    last_update = max(status["updated"] for status in statuses)
    assert min(png.stat().st_mtime for png in pngs) >= last_update


@pytest.mark.slurm
@needs_slurm
def test_then_report_on_slurm_writes_the_report_after_the_array_ends(tmp_path):
    sweep = tmp_path / "sweep"
    first = launch_json(*TWO_RUNS, "--executor", "slurm", "--profile", "local", "--out", sweep, "--then", "gather")
    # A relaunch while the runs are in flight submits no run but replaces the finisher (now: report).
    second = launch_json(sweep, "--executor", "slurm", "--profile", "local", "--then", "report")
    assert second["submitted_runs"] == 0
    old, new = first["then"], second["then"]
    arrays = sorted({job_id.split("_")[0] for job_id in first["job_ids"]})
    assert new["dependency"] == "afterany:" + ":".join(arrays) and new["job_id"] != old["job_id"]
    assert store.read_manifest(sweep)["then"] == new
    # What the scheduler holds: the finisher waits on the arrays; the replaced one was cancelled.
    shown = subprocess.run(["scontrol", "show", "job", new["job_id"]], capture_output=True, text=True).stdout
    assert "JobState=PENDING" in shown and "Dependency=afterany:" in shown, shown
    report = wait_for_report(sweep, timeout=900)
    check_finished_before_figures(sweep, [report])
    html = report.read_text()
    images = re.findall(r'<img[^>]* src="([^"]*)"', html)
    assert images and all(src.startswith("data:image/") for src in images)  # the figures, embedded
    assert slurm.slurm_job_states([old["job_id"]]) == {old["job_id"]: "CANCELLED"}


def test_then_plot_with_the_local_executor_draws_the_figures_after_the_jobs_end(tmp_path):
    sweep = tmp_path / "sweep"
    summary = launch_json(*TWO_RUNS, "--executor", "local", "--out", sweep, "--then", "plot")
    finisher = summary["then"]
    assert finisher["executor"] == "local" and finisher["after"] == summary["job_ids"]
    assert is_job_process(finisher)  # detached, waiting for the sweep's job
    pngs = wait_for_figures(sweep, timeout=900)
    check_finished_before_figures(sweep, pngs)
    deadline = time.time() + 60
    while is_job_process(finisher) and time.time() < deadline:
        time.sleep(0.5)
    assert not is_job_process(finisher)  # it ends once its steps are done
    assert status_json(sweep)["then"]["state"] == "completed"


def test_an_unknown_then_step_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["launch", *TWO_RUNS, "--executor", "local", "--out", str(tmp_path / "s"),
                                 "--then", "publish"])
    assert result.exit_code == 2 and "publish" in result.output
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("executor", ["local", pytest.param("slurm", marks=[pytest.mark.slurm, needs_slurm])])
def test_cancel_also_cancels_the_finisher_so_nothing_runs_on_the_cancelled_sweep(tmp_path, executor):
    sweep = tmp_path / "sweep"
    profile = ["--profile", "local"] if executor == "slurm" else []
    finisher = launch_json(*TWO_RUNS, "--executor", executor, *profile, "--out", sweep, "--then", "gather")["then"]
    waiting = status_json(sweep)["then"]
    assert (waiting["job_id"], waiting["steps"]) == (finisher["job_id"], "gather")
    assert waiting["state"] in ("pending", "running")  # held by SLURM / a local process polling the jobs
    result = runner.invoke(app, ["cancel", str(sweep)])
    assert result.exit_code == 0, result.output
    assert finisher["job_id"] in result.output.split()  # counted among the cancelled jobs
    assert store.read_manifest(sweep)["then"]["cancelled"] is True
    shown = runner.invoke(app, ["status", str(sweep)]).output
    assert f"then: rotsweep gather, once every job has ended: {executor} job {finisher['job_id']}, cancelled" in shown
    wait_until_stopped(sweep)
    if executor == "slurm":
        deadline = time.time() + 60  # accounting records the cancellation a moment later
        while slurm.slurm_job_states([finisher["job_id"]]).get(finisher["job_id"]) != "CANCELLED":
            assert time.time() < deadline, slurm.slurm_job_states([finisher["job_id"]])
            time.sleep(1)
    else:
        deadline = time.time() + 30
        while is_job_process(finisher):
            assert time.time() < deadline, "the local finisher outlived cancel"
            time.sleep(0.2)
    time.sleep(POLL_GRACE_S)  # time for a finisher that was not cancelled to start gathering
    assert not (sweep / "results").exists()
    # A relaunch would submit the runs again, and the recorded finisher with them: its dry run says so.
    again = runner.invoke(app, ["launch", str(sweep), "--executor", executor, *profile, "--dry-run", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["then"] == "gather"


def test_the_dry_run_says_what_runs_when_the_sweep_ends_and_writes_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    shown = runner.invoke(app, ["launch", *TWO_RUNS, "--executor", "local", "--out", str(sweep), "--then", "report",
                                "--dry-run"])
    assert shown.exit_code == 0, shown.output
    assert "then: rotsweep gather, then rotsweep report, once every job of the sweep has ended" in shown.output
    without = runner.invoke(app, ["launch", *TWO_RUNS, "--executor", "local", "--out", str(sweep), "--dry-run",
                                  "--json"])
    assert "then" not in json.loads(without.output)
    assert not sweep.exists()
