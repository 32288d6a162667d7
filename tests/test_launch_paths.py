"""Launch and gather paths beyond the plain sweep.

- Job arrays split at the cluster's MaxArraySize and --runs-per-job packing, on the real cluster.
- The preempted and cancelled rows of the run-state rules (rotsweep.launch), as a table and end to end:
  a preempted run and a cancelled sweep are submitted again and resume from their checkpoints.
- gather's cache is not used by other code; norm_hat is NaN where Table 1 has no equilibrium norm.
"""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from collections import Counter

import pandas as pd
import pytest
from typer.testing import CliRunner

from rotsweep import launch, store, train
from rotsweep.launch.backends import job_states
from rotsweep.launch.plan import run_state, should_submit
from rotsweep.launch import slurm
from rotsweep.launch.submit import ready_for_submission
from rotsweep.analysis import gather as gather_module
from rotsweep.analysis.gather import gather, output_paths
from rotsweep.cli import app
from rotsweep.config import RunConfig
from rotsweep.experiments import get_experiment
from helpers import needs_slurm, wait_until_stopped

runner = CliRunner()
FAST = ["--set", "steps=24", "--set", "eval_interval=12", "--set", "checkpoint_interval=12",
        "--set", "dynamics_interval=6"]
TINY_ETA_LAMBDA = ["eta-lambda", "--model", "resnet20", "--scale", "tiny"]
RUNS = len(get_experiment("eta-lambda").runs("resnet20", scale="tiny"))


def launch_json(*args) -> dict:
    result = runner.invoke(app, ["launch", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)



def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# --- Job arrays on the real cluster ----------------------------------------------------------



@pytest.mark.slurm
@needs_slurm
def test_arrays_split_at_max_array_size_and_runs_are_packed(tmp_path, monkeypatch):
    """The tiny eta-lambda grid (10 runs), 2 runs per job: 5 jobs; under MaxArraySize 2 (task indices
    0 and 1) they go in 3 arrays.

    The test cluster's MaxArraySize (1001) is too large to reach with tiny runs; the test
    lowers what launch reads as the cluster's limit and submits real arrays.
    """
    assert slurm.max_array_size() > 2  # the real value is read from `scontrol show config`
    monkeypatch.setattr(slurm, "max_array_size", lambda: 2)
    sweep = tmp_path / "sweep"
    summary = launch_json(*TINY_ETA_LAMBDA, "--executor", "slurm", "--profile", "local", "--out", sweep,
                          "--runs-per-job", 2, *FAST)
    assert (summary["submitted_runs"], summary["jobs"]) == (RUNS, math.ceil(RUNS / 2))

    jobs = store.read_manifest(sweep)["jobs"]
    runs_per_job = Counter(job["job_id"] for job in jobs.values())
    jobs_made = math.ceil(RUNS / 2)
    assert sorted(runs_per_job.values(), reverse=True) == [2] * (RUNS // 2) + [1] * (RUNS % 2)  # two by two
    arrays = Counter(job_id.split("_")[0] for job_id in runs_per_job)  # array id -> tasks
    assert sorted(arrays.values(), reverse=True) == [2] * (jobs_made // 2) + [1] * (jobs_made % 2)
    assert len(arrays) > 1
    # Indices stay below the limit (submitit submits a lone job as a plain job, not an array of one).
    assert {job_id.split("_")[1] for job_id in runs_per_job if "_" in job_id} == {"0", "1"}

    report = wait_until_stopped(sweep, timeout=900)
    assert report["counts"] == {"done": RUNS}, report
    # The two runs of a job ran in that one job (each SLURM job, array task or not, has its own SLURM_JOB_ID).
    ran_in = {}
    for run_id, job in jobs.items():
        ran_in.setdefault(job["job_id"], set()).add(store.read_status(store.run_dir(sweep, run_id))["job_id"])
    assert all(len(ids) == 1 and None not in ids for ids in ran_in.values())
    assert len(set.union(*ran_in.values())) == len(ran_in)


# --- The run-state rules ----------------------------------------------------------------------


@pytest.mark.parametrize("recorded, job_state, state, submit", [
    # The run recorded that it was interrupted; its job is over: submitted, resumes from its checkpoint.
    ("preempted", None, "preempted", True),
    ("preempted", "PREEMPTED", "preempted", True),
    ("preempted", "FAILED", "preempted", True),
    ("preempted", "TIMEOUT", "preempted", True),
    # ... or requeued by SLURM and waiting to run again: left alone.
    ("preempted", "REQUEUED", "queued", False),
    ("preempted", "PENDING", "queued", False),
    ("preempted", "RUNNING", "queued", False),
    # The job was cancelled before the run finished, whatever the run last wrote: submitted.
    ("running", "CANCELLED", "cancelled", True),
    ("pending", "CANCELLED", "cancelled", True),
    ("preempted", "CANCELLED", "cancelled", True),
    # A finished run stays finished, even if its job was cancelled afterwards.
    ("done", "CANCELLED", "done", False),
    ("diverged", "CANCELLED", "diverged", False),
])
def test_preempted_and_cancelled_rules(recorded, job_state, state, submit):
    decided = run_state({"status": recorded}, job_state)
    assert decided.state == state
    assert should_submit(decided, rerun_failed=False) is submit


def test_a_cancelled_local_job_reads_as_cancelled():
    """A local job is a process: COMPLETED once it is gone, CANCELLED if we killed it (`rotsweep cancel`)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    jobs = {"a": {"job_id": str(gone.pid), "executor": "local", "cancelled": True},
            "b": {"job_id": str(gone.pid), "executor": "local"}}
    assert job_states(jobs) == {"a": "CANCELLED", "b": "COMPLETED"}


# The tiny zero-shot comparison on GPT: two runs (AdamW and its rotational variant), 60 steps each.
ZERO_SHOT = ["zero-shot", "--model", "gpt2", "--scale", "tiny"]
LONGER = ["steps=60", "checkpoint_interval=10", "eval_interval=30", "dynamics_interval=10"]
ZERO_SHOT_RUNS = len(get_experiment("zero-shot").runs("gpt2", scale="tiny"))

PREEMPT_WORKER = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from rotsweep import train
    from rotsweep.config import RunConfig
    train.run(RunConfig.load(sys.argv[1] + "/config.json"), sys.argv[1])
    """
)


def launch_args(sweep, max_parallel: int) -> list:
    return [*ZERO_SHOT, "--out", sweep, "--executor", "local", "--max-parallel", max_parallel,
            *[item for assignment in LONGER for item in ("--set", assignment)]]


def test_a_preempted_run_is_submitted_again_and_resumes(tmp_path):
    sweep = tmp_path / "sweep"
    plan = launch.make_plan("zero-shot", "gpt2", scale="tiny", out=sweep, overrides=LONGER)
    victim = plan.runs[-1]  # the rotational run
    assert victim.config.rotational

    # Started by hand and interrupted (Ctrl-C) after a checkpoint: its status says preempted.
    store.prepare_run_dir(victim.config, victim.run_dir)
    worker = subprocess.Popen([sys.executable, "-c", PREEMPT_WORKER, str(victim.run_dir)],
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        wait_for(lambda: store.read_status(victim.run_dir).get("step", 0) >= 20, timeout=180, what="a checkpoint")
        worker.send_signal(signal.SIGINT)
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    status = store.read_status(victim.run_dir)
    assert status["status"] == "preempted" and 20 <= status["step"] < 60

    plan = launch.make_plan("zero-shot", "gpt2", scale="tiny", out=sweep, overrides=LONGER)
    states = {run.config.run_id: run.state.state for run in plan.runs}
    assert states == {run_id: "preempted" if run_id == victim.config.run_id else "pending" for run_id in states}
    assert len(plan.to_submit) == ZERO_SHOT_RUNS

    assert launch_json(*launch_args(sweep, 2))["submitted_runs"] == ZERO_SHOT_RUNS
    assert wait_until_stopped(sweep, timeout=600)["counts"] == {"done": ZERO_SHOT_RUNS}
    assert f"resumed at step {status['step']}" in (victim.run_dir / store.LOG_FILE).read_text()


def test_a_cancelled_sweep_is_submitted_again_and_resumes(tmp_path):
    sweep = tmp_path / "sweep"
    launch_json(*launch_args(sweep, 1))  # one local job: the runs one after the other

    def a_run_past_a_checkpoint():
        for run_id in store.read_manifest(sweep)["runs"]:
            if store.read_status(store.run_dir(sweep, run_id)).get("step", 0) >= 10:
                return run_id
        return None

    started = wait_for(a_run_past_a_checkpoint, timeout=180, what="a run past its first checkpoint")
    assert runner.invoke(app, ["cancel", str(sweep)]).exit_code == 0
    wait_for(lambda: launch.sweep_status(sweep).counts == {"cancelled": ZERO_SHOT_RUNS}, timeout=120,
             what="every run cancelled")
    if store.read_status(store.run_dir(sweep, started))["status"] == "done":
        pytest.fail("the run finished before the cancel reached it")

    plan = launch.make_plan("zero-shot", "gpt2", scale="tiny", out=sweep, overrides=LONGER)
    assert [run.state.state for run in plan.to_submit] == ["cancelled"] * ZERO_SHOT_RUNS
    ready_for_submission(plan.to_submit[0])  # what launch does before it submits
    assert store.read_status(plan.to_submit[0].run_dir)["resubmitted_after"] == "cancelled"

    assert launch_json(*launch_args(sweep, 2))["submitted_runs"] == ZERO_SHOT_RUNS
    assert wait_until_stopped(sweep, timeout=600)["counts"] == {"done": ZERO_SHOT_RUNS}
    assert "resumed at step" in (store.run_dir(sweep, started) / store.LOG_FILE).read_text()


# --- gather --------------------------------------------------------------------------------


def write_finished_run(sweep, config: RunConfig) -> str:
    """A finished run's files as train writes them (a real 6-step run)."""
    assert train.run(config, store.run_dir(sweep, config.run_id)) == "done"
    return config.run_id


def test_a_gather_cache_made_by_other_code_is_not_used(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    base = RunConfig(model="resnet20", tiny=True, dataset="synthetic-images", dataset_options={"image_size": 16},
                     steps=6, batch_size=16, eval_interval=3, eval_batches=1, dynamics_interval=2,
                     checkpoint_interval=0)
    for lr in (1e-3, 1e-2):
        write_finished_run(sweep, base.replace(lr=lr))
    assert gather(sweep).read == 2
    assert gather(sweep).read == 0  # the cache holds: nothing is read again

    # Other code (here: another hash of gather's sources) makes the cache unusable: all is read again.
    monkeypatch.setattr(gather_module, "CODE_HASH", "0" * 16)
    report = gather(sweep)
    assert (report.read, report.written) == (2, True)
    cache = json.loads((sweep / "results" / gather_module.CACHE_FILE).read_text())
    assert cache["key"]["code"] == "0" * 16
    assert gather(sweep).read == 0


def test_the_code_hash_follows_the_sources(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("x = 1\n")
    module = types.SimpleNamespace(__file__=str(source))
    before = gather_module._source_hash(module)
    source.write_text("x = 2\n")
    assert gather_module._source_hash(module) != before
    # gather's own hash covers the modules its rows depend on.
    from rotsweep import config, schedule, store, theory
    from rotsweep.analysis import results
    assert gather_module.CODE_HASH == gather_module._source_hash(gather_module, results, store, theory, schedule,
                                                                 config)


def test_norm_hat_is_nan_without_weight_decay_and_for_rotational_runs(tmp_path):
    sweep = tmp_path / "sweep"
    configs = {
        "adamw": RunConfig(optimizer="adamw", steps=10, lr=0.01, weight_decay=0.1),
        "adamw λ=0": RunConfig(optimizer="adamw", steps=10, lr=0.01, weight_decay=0.0),
        "lion λ=0": RunConfig(optimizer="lion", steps=10, lr=1e-4, weight_decay=0.0),
        "rv-adamw": RunConfig(optimizer="adamw", steps=10, lr=0.01, weight_decay=0.1, rotational=True),
        "rv-lion": RunConfig(optimizer="lion", steps=10, lr=1e-4, weight_decay=1.0, rotational=True),
    }
    for config in configs.values():
        run_dir = store.run_dir(sweep, config.run_id)
        store.prepare_run_dir(config, run_dir)
        store.write_status(run_dir, "pending")
    gather(sweep)
    runs = pd.read_parquet(output_paths(sweep)["runs"]).set_index("run_id")
    norm = {name: runs.loc[config.run_id, "norm_hat"] for name, config in configs.items()}
    assert norm["adamw"] == pytest.approx(math.sqrt(0.01 / (2 * 0.1)))  # Table 1 per coordinate: sqrt(η/(2λ))
    for name in ("adamw λ=0", "lion λ=0", "rv-adamw", "rv-lion"):
        assert math.isnan(norm[name]), name
    # The rotational runs still have their rotation: Algorithm 1 rotates at η̂_r.
    rv = runs.loc[configs["rv-adamw"].run_id]
    assert rv["eta_r_hat"] == pytest.approx(math.sqrt(2 * 0.01 * 0.1 * 0.1 / 1.9))
