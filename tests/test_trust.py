"""Trust (issue 10 A and E): no foreign code runs, no wrong process is signalled, launches take
turns, runs keep their thread count, local jobs let go of the terminal, the repo stands on its own.
"""

import ast
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
import torch

from rotsweep import launch, store, train
from rotsweep.launch.backends import job_states
from rotsweep.launch.local import is_job_process, process_start, signal_job_process
from rotsweep.launch.slurm import submitit_sbatch_script
from rotsweep.analysis import gather
from rotsweep.errors import UserError
from rotsweep.experiments import describe_experiments, get_experiment
from rotsweep.presets import preset
from helpers import needs_slurm

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
ROTSWEEP = [sys.executable, "-c", "from rotsweep.cli import app; app()"]
RUNS = len(get_experiment("eta-lambda").runs("resnet20", scale="tiny"))
# The tiny eta-lambda sweep of resnet20, 2 steps a run: only the launching is under test.
SHORT = ["--set", "steps=2", "--set", "eval_interval=2", "--set", "checkpoint_interval=2",
         "--set", "dynamics_interval=1"]


def rotsweep(*args, timeout: float = 600.0) -> subprocess.CompletedProcess:
    return subprocess.run([*ROTSWEEP, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)


def local_launch(sweep: Path, *extra: str) -> list[str]:
    return ["launch", "eta-lambda", "--model", "resnet20", "--scale", "tiny", "--executor", "local",
            "--max-parallel", "1", "--out", str(sweep), *extra]


def wait_for(predicate, timeout: float = 300.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def wait_until_stopped(sweep: Path) -> dict:
    def stopped():
        report = launch.sweep_status(sweep)
        return report.to_dict() if launch.all_stopped(report) else None

    return wait_for(stopped, what=f"every run of {sweep} to stop")


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def one_line_error(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


# --- A1: a checkpoint cannot run code ---------------------------------------------------------


class RunsAShellCommand:
    """Pickles as a call of os.system: what a crafted checkpoint would carry."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_checkpoint_carrying_a_callable_is_refused_and_nothing_runs(tmp_path):
    config = preset("tiny-resnet20-adamw", steps=4)
    run_dir = tmp_path / "run"
    store.prepare_run_dir(config, run_dir)
    config_path = tmp_path / "config.json"
    config_path.write_text(config.canonical_json())
    marker = tmp_path / "pwned"
    torch.save({"step": 2, "wall_s": 0.0, "model": RunsAShellCommand(f"touch {marker}")},
               run_dir / store.CHECKPOINT_FILE)
    before = (run_dir / store.CHECKPOINT_FILE).read_bytes()

    result = rotsweep("train", "--config", config_path, "--out", run_dir, "--no-progress")
    one_line_error(result, str(run_dir / store.CHECKPOINT_FILE), "posix.system", "Delete it")
    assert not marker.exists()
    assert (run_dir / store.CHECKPOINT_FILE).read_bytes() == before
    assert store.read_status(run_dir)["status"] == "failed"

    # The file is a working exploit: an unrestricted load runs the command.
    torch.load(run_dir / store.CHECKPOINT_FILE, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("changes", [
    {"optimizer": "lion", "rotational": True},
    {"optimizer": "sgdm", "rotational": True, "imbalance_portion": 0.5, "imbalance_factor": 2.0},
    {"optimizer": "adam-l2", "rotational": True, "rv_eta_r_from": "adamw", "precision": "bf16"},
])
def test_every_optimizers_checkpoint_loads_without_unrestricted_unpickling(tmp_path, changes):
    config = preset("tiny-resnet20-adamw", steps=3, eval_interval=3, dynamics_interval=1, **changes)
    assert train.run(config, tmp_path) == "done"
    state = train.read_checkpoint(tmp_path / store.CHECKPOINT_FILE, torch.device("cpu"), print)
    assert state["step"] == 3 and state["threads"] == torch.get_num_threads()
    assert state["optimizer"]["param_groups"][0]["lr"] >= 0


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_checkpoint_is_set_aside_and_the_run_starts_over(tmp_path, damage):
    config = preset("tiny-resnet20-adamw", steps=8, checkpoint_interval=4, eval_interval=4, dynamics_interval=2)
    straight = tmp_path / "straight"
    assert train.run(config, straight) == "done"
    whole = (straight / store.CHECKPOINT_FILE).read_bytes()
    damaged = whole[: len(whole) // 2] if damage == "truncated" else b""

    run_dir = tmp_path / "damaged"
    store.prepare_run_dir(config, run_dir)
    (run_dir / store.CHECKPOINT_FILE).write_bytes(damaged)
    assert train.run(config, run_dir) == "done"
    pd.testing.assert_frame_equal(pd.read_parquet(straight / store.METRICS_FILE),
                                  pd.read_parquet(run_dir / store.METRICS_FILE))
    aside = list(run_dir.glob(f"{store.CHECKPOINT_FILE}.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept, not lost
    log = (run_dir / store.LOG_FILE).read_text()
    assert "checkpoint unreadable" in log and "resumed at step" not in log


# --- A2: a recycled PID is not the job ---------------------------------------------------------


def test_a_process_holding_a_finished_jobs_pid_is_neither_the_job_nor_signalled(tmp_path):
    sweep = tmp_path / "sweep"
    assert rotsweep(*local_launch(sweep, *SHORT)).returncode == 0
    assert wait_until_stopped(sweep)["counts"] == {"done": RUNS}
    manifest = store.read_manifest(sweep)
    job = next(iter(manifest["jobs"].values()))
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert job["process"].startswith(boot_id + ":")  # the job's start time was recorded with its PID
    wait_for(lambda: not is_job_process(job), what="the job's process to exit")

    # Run r's job was killed mid-run; its PID now belongs to an unrelated live process.
    victim = manifest["runs"][0]
    store.write_status(store.run_dir(sweep, victim), "running", step=1, total_steps=2)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        for legacy in (False, True):  # with the recorded start time, and a manifest from before it existed
            manifest["jobs"][victim]["job_id"] = str(stranger.pid)
            if legacy:
                del manifest["jobs"][victim]["process"]
            store.write_manifest(sweep, manifest)

            report = launch.sweep_status(sweep)
            state = next(run for run in report.runs if run.run_id == victim)
            assert (state.state, state.detail) == ("failed", "job COMPLETED without a finished run")
            assert launch.cancel(sweep) == []
            assert stranger.poll() is None  # not signalled
            plan = launch.make_plan("eta-lambda", "resnet20", scale="tiny", out=sweep, overrides=SHORT[1::2])
            assert [run.config.run_id for run in plan.to_submit] == [victim]  # a relaunch resubmits it
    finally:
        stranger.kill()
        stranger.wait()


def test_process_start_tells_processes_apart():
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        identity = process_start(first.pid)
        assert identity and identity == process_start(first.pid)
        assert is_job_process({"job_id": str(first.pid), "process": identity})
        assert not is_job_process({"job_id": str(first.pid), "process": identity + "0"})
        # One PID in two manifest entries (an old job's, and a later job's that got the PID again).
        jobs = {"old": {"job_id": str(first.pid), "executor": "local", "process": identity + "0"},
                "new": {"job_id": str(first.pid), "executor": "local", "process": identity}}
        assert job_states(jobs) == {"old": "COMPLETED", "new": "RUNNING"}
        assert not signal_job_process({"job_id": str(first.pid), "process": identity + "0"}, signal.SIGTERM)
        assert first.poll() is None
        assert signal_job_process({"job_id": str(first.pid), "process": identity}, signal.SIGTERM)
        assert first.wait(timeout=60) == -signal.SIGTERM
    finally:
        first.kill()
        first.wait()
    assert process_start(first.pid) != identity  # reaped: gone, or another process
    assert not is_job_process({"job_id": str(first.pid), "process": identity})


# --- A3: concurrent launches take turns -----------------------------------------------------


def flock_waiters(path: Path) -> set[int]:
    """PIDs blocked in flock() on `path`, from /proc/locks (waiters are listed after "->")."""
    inode = path.stat().st_ino
    waiters = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and fields[fields.index("->") + 1] == "FLOCK":
            rest = fields[fields.index("->") + 1:]
            if int(rest[4].split(":")[-1]) == inode:
                waiters.add(int(rest[3]))
    return waiters


def test_two_launches_at_once_submit_each_run_once_and_both_are_recorded(tmp_path):
    import fcntl

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    args = [*ROTSWEEP, *local_launch(sweep, *SHORT), "--json"]
    with open(sweep / store.LOCK_FILE, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as if a third launch were planning right now
        launches = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
                    for _ in range(2)]
        wait_for(lambda: flock_waiters(sweep / store.LOCK_FILE) >= {p.pid for p in launches},
                 what="both launches to wait for the sweep's lock")
        assert not (sweep / store.MANIFEST_FILE).exists()  # neither planned nor wrote anything meanwhile
    outputs = []
    for process in launches:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        outputs.append(json.loads(out))
    assert sorted(o["submitted_runs"] for o in outputs) == [0, RUNS]

    manifest = store.read_manifest(sweep)
    submitted = [run_id for record in manifest["launches"] for run_id in record["submitted"]]
    assert len(manifest["launches"]) == 2
    assert sorted(submitted) == sorted(manifest["runs"]) and len(manifest["runs"]) == RUNS
    assert set(manifest["jobs"]) == set(manifest["runs"])
    assert wait_until_stopped(sweep)["counts"] == {"done": RUNS}
    for run_id in manifest["runs"]:
        assert (store.run_dir(sweep, run_id) / store.LOG_FILE).read_text().count(" started: ") == 1


# --- A5: a run keeps its thread count ----------------------------------------------------------

INTERRUPTED_RUN = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(2)
    from rotsweep import train
    from rotsweep.config import RunConfig
    train.run(RunConfig.load(sys.argv[1]), sys.argv[2])
    """
)


def test_a_resumed_run_keeps_the_thread_count_it_started_with(tmp_path):
    config = preset("tiny-gpt2-adamw", steps=60, checkpoint_interval=20, eval_interval=20, dynamics_interval=5)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    torch.set_num_threads(2)
    try:
        assert train.run(config, straight) == "done"
    finally:
        torch.set_num_threads(1)
    assert store.read_status(straight)["threads"] == 2

    config_path = tmp_path / "config.json"
    config_path.write_text(config.canonical_json())
    worker = subprocess.Popen([sys.executable, "-c", INTERRUPTED_RUN, config_path, interrupted], env=ENV)
    try:
        wait_for(lambda: store.read_status(interrupted).get("step", 0) >= 20, what="the checkpoint at step 20")
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.wait()
    assert 0 < torch.load(interrupted / store.CHECKPOINT_FILE)["step"] < config.steps

    assert torch.get_num_threads() == 1  # this process: a different allocation
    assert train.run(config, interrupted) == "done"
    assert torch.get_num_threads() == 1  # given back after the run
    assert store.read_status(interrupted)["threads"] == 2
    assert "resumed at step" in (interrupted / store.LOG_FILE).read_text()
    pd.testing.assert_frame_equal(pd.read_parquet(straight / store.METRICS_FILE),
                                  pd.read_parquet(interrupted / store.METRICS_FILE))


# --- A7: local jobs let go of the launcher's terminal -----------------------------------------


def test_a_local_launch_in_a_pipe_returns_while_its_jobs_run(tmp_path):
    sweep = tmp_path / "sweep"
    command = shlex.join([*ROTSWEEP, *local_launch(sweep, "--set", "steps=100000", "--set", "eval_interval=100000")])
    command += " | tail -1"
    try:
        piped = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, env=ENV,
                               timeout=300)
        assert piped.returncode == 0, piped.stderr
        assert f"submitted {RUNS} of {RUNS} runs in 1 local job(s)" in piped.stdout
        # The pipe closed while the job still works through 100000 steps.
        assert launch.sweep_status(sweep).counts.get("done", 0) == 0
        assert not launch.all_stopped(launch.sweep_status(sweep))
        assert (store.jobs_dir(sweep) / "local-controllers.log").exists()
    finally:
        if (sweep / store.MANIFEST_FILE).exists():
            launch.cancel(sweep)
    assert wait_until_stopped(sweep)["counts"].get("done", 0) == 0


# --- E: submitit's private renderer, declared packages, a repo that stands on its own ---------


def test_the_sbatch_script_carries_every_profile_setting(tmp_path):
    profile = {"timeout_min": 90, "mem_gb": 1.5, "cpus_per_task": 3, "gpus_per_node": 1,
               "slurm_partition": "debug", "slurm_constraint": "a100"}
    script = submitit_sbatch_script(profile, command="echo hi", folder=tmp_path, job_name="rotsweep-x",
                                           array_size=5, array_parallelism=2)
    flags = {line.split()[1] for line in script.splitlines() if line.startswith("#SBATCH")}
    assert {"--job-name=rotsweep-x", "--array=0-4%2", "--time=90", "--mem=1536MB", "--cpus-per-task=3",
            "--gpus-per-node=1", "--partition=debug", "--constraint=a100",
            f"--output={tmp_path}/%A_%a_0_log.out", f"--error={tmp_path}/%A_%a_0_log.err"} <= flags
    assert "echo hi" in script
    with pytest.raises(UserError, match="'cpus': not a submitit AutoExecutor parameter"):
        submitit_sbatch_script({"cpus": 1}, command="x", folder=tmp_path, job_name="x", array_size=1,
                                      array_parallelism=None)





@needs_slurm
@pytest.mark.slurm
def test_the_dry_run_header_is_what_submitit_submits(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["launch", "eta-lambda", "--model", "resnet20", "--scale", "tiny", "--executor", "slurm",
            "--profile", "local", "--max-parallel", "2", "--out", sweep, *SHORT, "--json"]
    dry = rotsweep(*args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    header = json.loads(dry.stdout)["sbatch_header"]
    real = rotsweep(*args)
    try:
        assert real.returncode == 0, real.stderr
        scripts = list(store.jobs_dir(sweep).glob("*_submission.sh"))
        assert len(scripts) == 1, scripts
        submitted = [line for line in scripts[0].read_text().splitlines() if line.startswith("#SBATCH")]
        assert header.splitlines() == submitted and f"#SBATCH --array=0-{RUNS - 1}%2" in submitted
    finally:
        launch.cancel(sweep)


def imported_distributions() -> set[str]:
    """Distributions that rotsweep's modules import (third-party top-level modules, mapped by pip metadata)."""
    modules = set()
    for path in (REPO / "rotsweep").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"rotsweep", "tomli"}  # tomli: Python < 3.11 only
    providers = metadata.packages_distributions()
    return {providers[module][0].lower() for module in third_party}


def declared(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower() for requirement in requirements}


def test_every_imported_package_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = {name: declared(requirements) for name, requirements in project["optional-dependencies"].items()}
    runtime = declared(project["dependencies"]) | set().union(*(v for k, v in extras.items() if k != "test"))
    assert "pillow" in imported_distributions()
    assert imported_distributions() <= runtime, imported_distributions() - runtime
    assert "tomli" in declared(project["dependencies"])


def test_the_repo_points_nowhere_outside_itself():
    texts = {path: path.read_text() for path in [REPO / "README.md", *(REPO / "rotsweep").rglob("*.py")]}
    assert [str(path) for path, text in texts.items() if "shared/" in text] == []
    readme = texts[REPO / "README.md"]
    links = re.findall(r"\]\(([^)#:]+)\)", readme)
    assert "docs/architecture.md" in links and "LICENSE" in links and "CITATION.cff" in links
    assert [link for link in links if not (REPO / link).exists()] == []
    citation = (REPO / "CITATION.cff").read_text()
    assert "Rotational Equilibrium: How Weight Decay Balances Learning Across Neural Networks" in citation
    assert all(name in citation for name in ("Kosson", "Messmer", "Jaggi"))
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def test_the_architecture_doc_names_every_module_file_and_table():
    doc = (REPO / "docs" / "architecture.md").read_text()
    modules = sorted(str(p.relative_to(REPO)) for p in (REPO / "rotsweep").rglob("*.py") if p.name != "__init__.py")
    assert [m for m in modules if f"`{m}`" not in doc] == []
    files = [store.MANIFEST_FILE, store.LOCK_FILE, store.CONFIG_FILE, store.STATUS_FILE, store.METRICS_FILE,
             store.DYNAMICS_DIR, store.CHECKPOINT_FILE, store.LOG_FILE]
    tables = [f"{gather.RESULTS_DIR}/{name}.parquet" for name in gather.TABLES]
    assert [name for name in files + tables if name not in doc] == []
    experiments = [entry["name"] for entry in describe_experiments()]
    assert [name for name in experiments if f"`{name}`" not in doc] == []
    assert "FIRST_RELEASE_FIELDS" in doc
