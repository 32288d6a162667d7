"""Sweeps end to end: plan, submit (local pool and the real SLURM cluster), relaunch, status, cancel.

The SLURM tests need the single-node cluster of slurm/cluster.sh; they skip
without it, except under CI, where they must run.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rotsweep import launch, presets, store
from rotsweep.launch.job import RunJob
from rotsweep.launch.plan import run_state, should_submit
from rotsweep.launch.slurm import parse_job_states, slurm_job_states
from rotsweep.cli import app
from rotsweep.experiments import get_experiment
from helpers import needs_slurm, wait_until_stopped

runner = CliRunner()

# The tiny eta-lambda sweep of resnet20, shortened further to 24 steps a run.
FAST = ["--set", "steps=24", "--set", "eval_interval=12", "--set", "checkpoint_interval=12", "--set", "dynamics_interval=6"]
RUNS = len(get_experiment("eta-lambda").runs("resnet20", scale="tiny"))
# The tiny runs on CIFAR-10 instead of synthetic images: they fail when the data set is missing.
TO_CIFAR = ["--set", "dataset=cifar10", "--set", "dataset_options={}"]





def cli(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def launch_json(*args: str) -> dict:
    result = cli("launch", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)



def wait_for(predicate, timeout: float = 120.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# --- Planning and dry runs -------------------------------------------------------------


def test_dry_run_shows_the_paper_warmup_grid_and_writes_nothing(tmp_path):
    sweep = tmp_path / "warmup"
    report = launch_json("warmup", "--model", "gpt2", "--dry-run", "--out", sweep)
    assert (report["experiment"], report["model"], report["scale"]) == ("warmup", "gpt2", "paper")
    # Figure 5's 28 runs and the RV's extra lr 6e-4·64 of the official script, with and without warmup.
    assert report["to_submit"] == len(report["runs"]) == 30 and report["already_done"] == 0
    configs = [run["config"] for run in report["runs"]]
    assert sorted({c["lr"] for c in configs}) == pytest.approx([6e-4 * 2**i for i in range(-1, 7)])
    assert {(c["optimizer"], c["rotational"], c["warmup_steps"]) for c in configs} == {
        ("adamw", False, 250), ("adamw", False, 0), ("adamw", True, 250), ("adamw", True, 0)}
    assert len({run["run_id"] for run in report["runs"]}) == 30
    header = report["sbatch_header"]
    assert "#SBATCH --array=0-29%16" in header and "#SBATCH --constraint=a100" in header
    assert "#SBATCH --gpus-per-node=1" in header
    assert report["gpu_hours"] == pytest.approx(30 * 4.0, rel=0.01)  # Table 4: 4 h per OpenWebText run
    assert not sweep.exists()


def test_human_dry_run_lists_runs_and_header():
    result = cli("launch", "warmup", "--model", "gpt2", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "runs: 30 (30 to submit, 0 already finished)" in result.output
    assert "sbatch header:" in result.output and "dry run: nothing was submitted" in result.output


def test_run_state_combines_files_and_scheduler():
    assert run_state({"status": "done"}, "FAILED").state == "done"
    assert run_state({"status": "running"}, "RUNNING").state == "running"
    assert run_state({"status": "pending"}, "PENDING").state == "queued"
    assert run_state({"status": "pending"}, None).state == "pending"
    crashed = run_state({"status": "running"}, "COMPLETED")
    assert (crashed.state, crashed.crashed) == ("failed", True)
    assert "COMPLETED without a finished run" in crashed.detail
    raised = run_state({"status": "failed", "error": "ValueError: x"}, "FAILED")
    assert (raised.state, raised.crashed, raised.detail) == ("failed", False, "ValueError: x")
    assert run_state({"status": "running"}, "CANCELLED").state == "cancelled"
    assert should_submit(crashed, rerun_failed=False)
    assert not should_submit(raised, rerun_failed=False)
    assert should_submit(raised, rerun_failed=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["launch", "warmpu", "--model", "gpt2", "--dry-run"], "unknown experiment 'warmpu'"),
        (["launch", "warmup", "--model", "gtp2", "--dry-run"], "gtp2"),
        (["launch", "warmup", "--model", "resnet20", "--dry-run"], "resnet20"),
        (["launch", "warmup", "--model", "gpt2", "--set", "lr", "--dry-run"], "malformed --set 'lr'"),
        (["launch", "warmup", "--model", "gpt2", "--set", "steps=0", "--dry-run"], "steps=0 must be between 1 and"),
        (["launch", "warmup", "--model", "gpt2", "--scale", "huge", "--dry-run"], "'huge' is not one of 'paper', 'tiny'"),
        (["launch", "warmup", "--model", "gpt2", "--profile", "h100", "--dry-run"], "unknown profile 'h100'"),
        (["status", "/nonexistent/sweep"], "is not a sweep directory"),
    ],
)
def test_bad_input_is_one_line(args, message):
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert result.output.strip().count("\n") == 0


def test_missing_data_at_paper_scale_is_refused_before_submitting(tmp_path):
    sweep = tmp_path / "sweep"
    result = cli("launch", "eta-lambda", "--model", "resnet20", "--executor", "local", "--out", sweep,
                 "--data-dir", tmp_path / "no-data")
    assert result.exit_code == 2
    assert "CIFAR-10 not found" in result.output
    assert not (sweep / store.MANIFEST_FILE).exists()


# --- The local pool -------------------------------------------------------------------------


def test_local_sweep_runs_relaunches_nothing_and_resubmits_a_deleted_run(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["eta-lambda", "--model", "resnet20", "--scale", "tiny", "--executor", "local", "--max-parallel", "2",
            "--out", sweep, *FAST]
    first = launch_json(*args)
    assert first["submitted_runs"] == first["total_runs"] == RUNS
    assert first["jobs"] == 2  # bounded pool: the runs packed into 2 local jobs
    report = wait_until_stopped(sweep)
    assert report["counts"] == {"done": RUNS}, report

    again = launch_json(*args)
    assert (again["submitted_runs"], again["already_done"]) == (0, RUNS)

    victim = report["runs"][3]["run_id"]
    shutil.rmtree(store.run_dir(sweep, victim))
    third = launch_json(*args)
    assert third["submitted_runs"] == 1
    manifest = store.read_manifest(sweep)
    assert manifest["launches"][-1]["submitted"] == [victim]
    assert wait_until_stopped(sweep)["counts"] == {"done": RUNS}


def test_another_sweep_in_the_same_directory_is_refused_and_nothing_changes(tmp_path):
    sweep = tmp_path / "sweep"
    launch_json("eta-lambda", "--model", "resnet20", "--scale", "tiny", "--executor", "local", "--out", sweep,
                "--max-parallel", "2", *FAST)
    wait_until_stopped(sweep)
    before = snapshot(sweep)
    result = cli("launch", "warmup", "--model", "gpt2", "--scale", "tiny", "--executor", "local", "--out", sweep)
    assert result.exit_code == 2 and "holds another sweep" in result.output
    result = cli("launch", "eta-lambda", "--model", "resnet20", "--scale", "tiny", "--executor", "local",
                 "--out", sweep, "--set", "steps=7")
    assert result.exit_code == 2 and "holds another sweep" in result.output
    assert snapshot(sweep) == before


def test_status_reports_failed_diverged_and_done_runs(tmp_path):
    # SGDM at lr 1e4 diverges; a missing CIFAR directory makes the run raise (tiny scale does not check data).
    diverging = tmp_path / "diverging"
    # lr and η·λ are axes of eta-lambda: fixed with --grid (a --set is refused). η·λ = 0: no weight decay.
    launch_json("eta-lambda", "--model", "resnet20", "--scale", "tiny", "--executor", "local", "--out", diverging,
                "--max-parallel", "1", *FAST, "--set", "optimizer=sgdm", "--grid", "lr=1e4", "--grid", "eta_lambda=0",
                "--set", "warmup_steps=0")
    failing = tmp_path / "failing"
    launch_json("eta-lambda", "--model", "resnet20", "--scale", "tiny", "--executor", "local", "--out", failing,
                "--max-parallel", "1", *FAST, *TO_CIFAR, "--data-dir", tmp_path / "no-data")
    diverged = wait_until_stopped(diverging)
    assert diverged["counts"] == {"diverged": 2}  # one lr: SGDM and RV-SGDM
    failed = wait_until_stopped(failing)
    assert failed["counts"] == {"failed": RUNS}
    assert all("CIFAR-10 not found" in run["detail"] for run in failed["runs"])
    text = cli("status", failing).output
    assert f"{RUNS} failed" in text and "log:" in text

    # Failed runs are resubmitted only on request.
    assert launch_json("eta-lambda", "--model", "resnet20", "--scale", "tiny", "--executor", "local", "--out",
                       failing, "--max-parallel", "1", *FAST, *TO_CIFAR)["submitted_runs"] == 0
    rerun = launch_json("eta-lambda", "--model", "resnet20", "--scale", "tiny", "--executor", "local", "--out",
                        failing, "--max-parallel", "1", *FAST, *TO_CIFAR, "--rerun-failed",
                        "--data-dir", tmp_path / "no-data")
    assert rerun["submitted_runs"] == RUNS
    assert wait_until_stopped(failing)["counts"] == {"failed": RUNS}


def test_local_cancel_stops_the_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    launch_json("eta-lambda", "--model", "resnet20", "--scale", "tiny", "--executor", "local", "--out", sweep,
                "--max-parallel", "1", "--set", "steps=100000", "--set", "eval_interval=1000")
    wait_for(lambda: launch.sweep_status(sweep).counts.get("running"), what="a running run")
    result = cli("cancel", sweep)
    assert result.exit_code == 0 and "cancelled 1 job(s)" in result.output
    report = wait_until_stopped(sweep, timeout=60)
    assert report["counts"] == {"cancelled": RUNS}
    logs = cli("logs", sweep, report["runs"][0]["run_id"])
    assert logs.exit_code == 0 and "== run log:" in logs.output


# --- The real SLURM cluster -------------------------------------------------------------------


@needs_slurm
@pytest.mark.slurm
def test_slurm_sweep_completes_and_relaunch_submits_only_missing_runs(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["eta-lambda", "--model", "resnet20", "--scale", "tiny", "--executor", "slurm", "--profile", "local",
            "--out", sweep, *FAST]
    first = launch_json(*args)
    assert (first["submitted_runs"], first["jobs"]) == (RUNS, RUNS)
    assert all("_" in job_id for job_id in first["job_ids"])  # one array: A_0, A_1, ...
    report = wait_until_stopped(sweep, timeout=600)
    assert report["counts"] == {"done": RUNS}, report
    assert launch_json(*args)["submitted_runs"] == 0

    victim = report["runs"][0]["run_id"]
    shutil.rmtree(store.run_dir(sweep, victim))
    third = launch_json(*args)
    assert third["submitted_runs"] == 1 and store.read_manifest(sweep)["launches"][-1]["submitted"] == [victim]
    assert wait_until_stopped(sweep, timeout=300)["counts"] == {"done": RUNS}


@needs_slurm
@pytest.mark.slurm
def test_slurm_requeue_resumes_from_the_checkpoint(tmp_path):
    sweep = tmp_path / "sweep"
    summary = launch_json(
        "dynamics", "--model", "gpt2", "--scale", "tiny", "--executor", "slurm", "--profile", "local", "--out", sweep,
        "--set", "steps=3000", "--set", "checkpoint_interval=100", "--set", "eval_interval=1000",
        "--grid", "weight_standardization=false",
    )
    assert summary["submitted_runs"] >= 1
    run_id = store.read_manifest(sweep)["launches"][0]["submitted"][0]
    run_dir = store.run_dir(sweep, run_id)
    job_id = store.read_manifest(sweep)["jobs"][run_id]["job_id"]
    wait_for(lambda: store.read_status(run_dir).get("step", 0) >= 200, timeout=300, what="two checkpoints")
    requeue = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    assert requeue.returncode == 0, requeue.stderr
    report = wait_until_stopped(sweep, timeout=600)
    assert report["counts"].get("done") == len(report["runs"]), report
    assert "resumed at step" in (run_dir / store.LOG_FILE).read_text()


@needs_slurm
@pytest.mark.slurm
def test_slurm_cancel_and_completed_without_a_finished_run(tmp_path):
    sweep = tmp_path / "sweep"
    launch_json("eta-lambda", "--model", "resnet20", "--scale", "tiny", "--executor", "slurm", "--profile", "local",
                "--out", sweep, "--set", "steps=100000", "--set", "eval_interval=1000", "--max-parallel", "1")
    wait_for(lambda: launch.sweep_status(sweep).counts.get("running"), timeout=120, what="a running run")
    assert cli("cancel", sweep).exit_code == 0
    report = wait_for(lambda: (r := launch.sweep_status(sweep)).counts == {"cancelled": RUNS} and r,
                      timeout=120, what="all runs cancelled")
    assert all(run.job_id for run in report.runs)

    # A job SLURM calls COMPLETED whose run did not finish is shown as failed, with its log.
    done = tmp_path / "done"
    launch_json("eta-lambda", "--model", "resnet20", "--scale", "tiny", "--executor", "slurm", "--profile", "local",
                "--out", done, *FAST, "--grid", "lr=1e-3")
    wait_until_stopped(done, timeout=300)
    run = launch.sweep_status(done).to_dict()["runs"][0]
    store.write_status(store.run_dir(done, run["run_id"]), "running", step=3)
    # Accounting records COMPLETED once the array's job has left the node, a moment after its runs ended
    # (until then a loaded controller may know no job for the run at all: "no job known", also failed).
    shown = wait_for(lambda: "COMPLETED" in (r := launch.sweep_status(done).to_dict()["runs"][0])["detail"] and r,
                     timeout=120, what="the job to be COMPLETED in accounting")
    assert shown["state"] == "failed" and "COMPLETED without a finished run" in shown["detail"]
    assert "log:" in cli("status", done).output


@needs_slurm
@pytest.mark.slurm
def test_unreachable_controller_is_one_line_and_writes_nothing(tmp_path):
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    broken = tmp_path / "slurm.conf"
    lines = [line for line in conf.read_text().splitlines() if not line.startswith("SlurmctldPort")]
    broken.write_text("\n".join(lines + ["SlurmctldPort=1"]) + "\n")
    env = dict(os.environ, SLURM_CONF=str(broken))
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "rotsweep.cli", "launch", "eta-lambda", "--model", "resnet20",
         "--scale", "tiny", "--executor", "slurm", "--profile", "local", "--out", str(sweep)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: SLURM controller unreachable")
    assert result.stderr.strip().count("\n") == 0
    assert not sweep.exists()


def test_a_job_pickled_by_release_0_1_still_runs_when_requeued(tmp_path):
    # Release 0.1 pickled rotsweep.launch.RunJob holding run_dirs, data_dir and threads; submitit
    # unpickles a job again when SLURM requeues it, possibly under a newer rotsweep.
    config = presets.preset("tiny-gpt2-adamw").with_overrides(["steps=4", "eval_interval=0"])
    run_dir = tmp_path / "run"
    store.prepare_run_dir(config, run_dir)
    job = RunJob([str(run_dir)])
    job.__dict__ = {"run_dirs": [str(run_dir)], "data_dir": None, "threads": 1}  # 0.1's fields only
    pickled = pickle.dumps(job, protocol=0)  # the text protocol names the class as "module\nname"
    assert b"rotsweep.launch.job\nRunJob" in pickled
    requeued = pickle.loads(pickled.replace(b"rotsweep.launch.job\nRunJob", b"rotsweep.launch\nRunJob"))
    assert requeued() == {config.run_id: "done"}
    assert store.read_status(run_dir)["status"] == "done"


def test_sacct_array_ranges_are_expanded():
    text = "27_[2-4,7%2]|PENDING\n27_0|COMPLETED\n27_1|CANCELLED by 0\n30|RUNNING\n"
    assert parse_job_states(text, "|") == {
        "27_2": "PENDING", "27_3": "PENDING", "27_4": "PENDING", "27_7": "PENDING",
        "27_0": "COMPLETED", "27_1": "CANCELLED", "30": "RUNNING",
    }


@needs_slurm
@pytest.mark.slurm
def test_a_job_that_just_ended_has_a_state_before_accounting_records_it(tmp_path, monkeypatch):
    # Right after a job ends, sacct may not know it yet (slurmdbd is written to after the
    # controller) and squeue's default view no longer lists it: status then called a run whose
    # job had just completed "failed: no job known". An empty sacct stands in for that moment.
    ended = subprocess.run(["sbatch", "--parsable", "--wait", "--partition", "debug", "--time", "1",
                            "--output", "/dev/null", "--wrap", "true"], capture_output=True, text=True, timeout=120)
    assert ended.returncode == 0, ended.stderr
    job_id = ended.stdout.strip().split(";")[0]
    lagging = tmp_path / "bin"
    lagging.mkdir()
    (lagging / "sacct").write_text("#!/bin/sh\nexit 0\n")
    (lagging / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{lagging}{os.pathsep}{os.environ['PATH']}")
    assert slurm_job_states([job_id]) == {job_id: "COMPLETED"}


@needs_slurm
@pytest.mark.slurm
def test_a_refused_job_array_is_one_line(tmp_path):
    # The local test node has no GPUs: sbatch refuses a profile that asks for one.
    profile = tmp_path / "gpu.toml"
    profile.write_text('slurm_partition = "debug"\ngpus_per_node = 1\ntimeout_min = 5\n')
    result = cli("launch", "eta-lambda", "--model", "resnet20", "--scale", "tiny", "--executor", "slurm",
                 "--profile", profile, "--out", tmp_path / "sweep")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: the scheduler refused the job array")
    assert result.output.strip().count("\n") == 0
    # Nothing was submitted, so every run is still waiting to be submitted.
    assert launch.sweep_status(tmp_path / "sweep").counts == {"pending": RUNS}
