"""Plan, submit and follow sweeps: SLURM job arrays through submitit, or this machine.

A sweep is a directory (see rotsweep.store for its layout). Launching is
idempotent: every run is identified by its config's run_id and keeps its own
directory, so launching the same command again submits only the runs that are
not finished or in flight, and two runs with the same config are one run.

The decision for each run combines what the run wrote (status.json) with what
the scheduler says of its job (one sacct call for the whole sweep):

    done, diverged            finished: never resubmitted
    running, queued           in flight: left alone
    pending                   never submitted (or its directory was deleted): submitted
    preempted, cancelled      the job stopped before the run finished: submitted, resumes from its checkpoint
    failed (exception)        the run raised: resubmitted only with --rerun-failed
    failed (crashed)          the job ended without the run saying why (killed, OOM,
                              COMPLETED without a finished run): submitted again
    unreadable                status.json cannot be read: reported, never submitted
                              (fix the file, or delete the run directory to train it again)

A file that cannot be read (a run's status.json or metrics.parquet) is reported, as
gather reports it, and does not stop `status` or `launch` for the other runs.

Local execution uses the same code path: submitit's LocalExecutor starts every
job at once, so runs are packed into at most `max_parallel` jobs that each
work through their runs one after the other. A local job is a process,
known by its PID and its start time (a PID alone may have been reused).

Launches and cancels of one sweep take turns under a lock on a file in the
sweep (sweep_lock): a launch plans again once it holds the lock, so a run is
submitted by one launch only, and no launch loses another's manifest entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from rotsweep import __version__, store, sweepfile, usercode
from rotsweep.clean import DEFAULT_KEEP, check_keep
from rotsweep.config import RunConfig, parse_assignments
from rotsweep.errors import UserError
from rotsweep.experiments import Sweep, get_experiment
from rotsweep.sweepfile import SweepFile

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PROFILE_DIR = Path(__file__).resolve().parents[1] / "slurm"
EXECUTORS = ("slurm", "local")
SCALES = ("paper", "tiny")

# Job states (sacct's first word) in which a job may still run its runs.
ACTIVE_JOB_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
                     "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}


# --- Profiles ------------------------------------------------------------------------------


def default_profile(scale: str) -> str:
    """Paper-scale runs go to A100 nodes; tiny runs are CPU runs, like the local test cluster's."""
    return "a100" if scale == "paper" else "local"


def load_profile(name: str) -> dict:
    """A cluster profile: slurm/NAME.toml, or a path to a .toml file.

    Keys are submitit AutoExecutor parameters (timeout_min, mem_gb, cpus_per_task,
    gpus_per_node, slurm_partition, slurm_array_parallelism, ...), see slurm/README.md.
    """
    path = Path(name) if name.endswith(".toml") else PROFILE_DIR / f"{name}.toml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))) or "none"
        what = "a directory, not a file" if path.is_dir() else "no file"
        raise UserError(f"unknown profile {name!r}: {path} is {what}; available profiles: {available}")
    try:
        profile = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"profile {path} is not UTF-8 text; save it as UTF-8 TOML") from None
    except OSError as error:
        raise UserError(f"cannot read profile {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"profile {path} is not valid TOML: {error}") from None
    check_profile(profile, path)
    return profile


# The type of each AutoExecutor parameter that a profile may set, besides the slurm_* ones
# (submitit's AutoExecutor: the generic parameters every cluster understands).
GENERIC_PROFILE_TYPES = {"timeout_min": int, "mem_gb": (int, float), "nodes": int, "tasks_per_node": int,
                         "cpus_per_task": int, "gpus_per_node": int, "stderr_to_stdout": bool}


def check_profile(profile: dict, path: Path) -> None:
    """Refuse unknown keys and wrongly typed values now, before a manifest is written or sbatch asked."""
    import typing

    slurm_types = submitit_sbatch_parameter_types()
    for key, value in profile.items():
        if key.startswith("slurm_") and key[len("slurm_"):] in slurm_types:
            expected = typing.get_args(slurm_types[key[len("slurm_"):]]) or (slurm_types[key[len("slurm_"):]],)
            expected = tuple(typing.get_origin(t) or t for t in expected if t is not type(None))
        elif key in GENERIC_PROFILE_TYPES:
            expected = GENERIC_PROFILE_TYPES[key]
            expected = expected if isinstance(expected, tuple) else (expected,)
        else:
            raise UserError(f"profile {path}: unknown key {key!r}; keys are submitit AutoExecutor parameters "
                            f"({', '.join(GENERIC_PROFILE_TYPES)}, or slurm_ and an sbatch option), see slurm/README.md")
        # TOML's true/false are Python bools, which isinstance also counts as ints.
        if not (bool in expected if isinstance(value, bool) else isinstance(value, expected)):
            names = " or ".join(t.__name__ for t in expected)
            raise UserError(f"profile {path}: {key} = {value!r} has the wrong type, expected {names}")


def run_resources(profile: dict, gpus_per_run: int | None = None, nodes_per_run: int | None = None) -> dict:
    """The profile with the processes of one run laid out as submitit parameters.

    A run of G processes (one per GPU; CPU processes with gloo on a profile without
    gpus_per_node) on N nodes is one job of `nodes` = N and `tasks_per_node` = G / N,
    plus `gpus_per_node` = G / N on a GPU profile. G and N come from the arguments, else
    from the profile's own nodes × tasks_per_node and nodes (1 and 1 if absent). They do
    not change what a run computes (see rotsweep.distributed), so they are not in run_ids.
    """
    parameters = dict(profile)
    processes = gpus_per_run or parameters.get("nodes", 1) * parameters.get("tasks_per_node", 1)
    nodes = nodes_per_run or parameters.get("nodes", 1)
    if processes < 1 or nodes < 1:
        raise UserError(f"GPUs per run ({processes}) and nodes per run ({nodes}) must be at least 1")
    if processes % nodes:
        raise UserError(f"{processes} GPUs per run cannot be spread evenly over {nodes} nodes; "
                        f"choose a number of GPUs per run that is a multiple of the nodes per run")
    parameters["nodes"] = nodes
    parameters["tasks_per_node"] = processes // nodes
    if "gpus_per_node" in parameters:
        parameters["gpus_per_node"] = processes // nodes
    return parameters


def processes_per_run(resources: dict) -> int:
    return resources.get("nodes", 1) * resources.get("tasks_per_node", 1)


def check_divides_accumulation(runs: list[PlannedRun], processes: int) -> None:
    """Each process accumulates accumulation / processes micro-batches, so it must divide every run's."""
    for run in runs:
        if run.config.accumulation % processes:
            raise UserError(
                f"run {run.config.run_id} accumulates {run.config.accumulation} micro-batches per step, which "
                f"cannot be shared out over {processes} processes; choose GPUs per run dividing "
                f"{run.config.accumulation}, or --set accumulation to a multiple of {processes}"
            )


# --- Asking the scheduler ------------------------------------------------------------------


def _run_command(args: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def check_slurm_reachable() -> None:
    """A one-line UserError unless a SLURM controller answers."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        raise UserError(
            "SLURM is not installed here (no sbatch on PATH); use --executor local, "
            "or start the test cluster with `bash slurm/cluster.sh start`"
        )
    try:
        ping = _run_command(["scontrol", "ping"], timeout=20)
    except subprocess.TimeoutExpired:
        raise UserError("SLURM controller unreachable (scontrol ping timed out); check slurmctld") from None
    if ping.returncode != 0 or "UP" not in ping.stdout:
        answer = (ping.stdout + ping.stderr).strip().splitlines()
        raise UserError(
            f"SLURM controller unreachable ({answer[-1] if answer else 'no answer'}); "
            "start it (`bash slurm/cluster.sh start` for the local test cluster) or use --executor local"
        )


def max_array_size() -> int:
    """The cluster's MaxArraySize: an array's task indices must stay below it."""
    result = _run_command(["scontrol", "show", "config"])
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize":
            return int(value.strip())
    return 1001  # SLURM's documented default


def slurm_job_states(job_ids: list[str]) -> dict[str, str]:
    """{job_id: first word of its State} for the given ids: one sacct call, squeue for what it misses."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    wanted = sorted(set(job_ids))
    result = _run_command(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(wanted)])
    states = parse_job_states(result.stdout, separator="|")
    missing = [job_id for job_id in wanted if job_id not in states]
    if missing and shutil.which("squeue"):
        # Accounting can lag behind a fresh submission; squeue -r lists each array task.
        queued = _run_command(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(missing)])
        states.update(parse_job_states(queued.stdout, separator="|"))
    return {job_id: states[job_id] for job_id in wanted if job_id in states}


def parse_job_states(text: str, separator: str) -> dict[str, str]:
    """Parse "JobID|State" lines; sacct writes not-yet-started array tasks as ranges, e.g. 27_[2-9%2]."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        job_id, _, state = line.strip().partition(separator)
        if not state:
            continue
        state = state.split()[0]
        base, _, tasks = job_id.partition("_[")
        if not tasks:
            states[job_id] = state
            continue
        for part in tasks.rstrip("]").split("%")[0].split(","):
            first, _, last = part.partition("-")
            for task in range(int(first), int(last or first) + 1):
                states[f"{base}_{task}"] = state
    return states


def local_job_state(job: dict) -> str:
    """Local jobs are processes: RUNNING while the job's own process lives, COMPLETED afterwards.

    A PID alone does not name a process: once the job ends, the kernel hands its
    PID to some later process, even to a later job of the same sweep. A job
    therefore counts as running only while its PID belongs to the process
    recorded at submission (see is_job_process), and each manifest entry is
    judged on its own rather than by PID.
    """
    return "RUNNING" if is_job_process(job) else "COMPLETED"


def process_alive(pid: int) -> bool:
    """True for a live process; a zombie (ended, not yet reaped by its parent) is not alive."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The state follows the parenthesised command name, which may itself contain spaces.
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def process_start(pid: int) -> str | None:
    """When the process with this PID started: "<boot id>:<start time in clock ticks since boot>".

    Two processes that ever held the same PID differ here (the boot id covers
    reboots). None when there is no such process or no /proc (macOS).
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return f"{boot_id}:{fields[19]}"  # field 22 of proc(5), counted after the ")" that ends field 2


def is_job_process(job: dict) -> bool:
    """True while the local job's PID still belongs to the job's own process.

    Since this version the manifest records each local job's start time
    ("process"): the PID must be alive with that same start time. Entries
    written before carry no start time; for those the process must at least be
    a submitit local controller, as its command line shows.
    """
    pid = int(job["job_id"])
    if not process_alive(pid):
        return False
    if job.get("process"):
        return process_start(pid) == job["process"]
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return True  # no /proc: nothing more to check than that the PID lives
    return "submitit.local._local" in arguments


def signal_job_process(job: dict, signum: int) -> bool:
    """Send signum to a local job's process only if the PID is still the job's; True if sent.

    Linux: a pidfd taken before the identity check keeps naming the process
    checked, so a PID recycled between the check and the signal cannot be hit.
    """
    pid = int(job["job_id"])
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # no pidfd (macOS, old kernels): check, then signal by PID
        handle = None
    try:
        if not is_job_process(job):
            return False
        if handle is not None:
            signal.pidfd_send_signal(handle, signum)
        else:
            os.kill(pid, signum)
        return True
    except ProcessLookupError:
        return False
    finally:
        if handle is not None:
            os.close(handle)


def job_states(jobs: dict[str, dict]) -> dict[str, str]:
    """{run_id: job state} for the runs in a manifest's `jobs` table."""
    slurm_states = slurm_job_states([job["job_id"] for job in jobs.values() if job["executor"] == "slurm"])
    result = {}
    for run_id, job in jobs.items():
        state = local_job_state(job) if job["executor"] == "local" else slurm_states.get(job["job_id"])
        if job.get("cancelled") and state in (None, "COMPLETED"):
            state = "CANCELLED"  # local jobs: we killed the process ourselves
        result[run_id] = state
    return result


# --- The state of each run -----------------------------------------------------------------


@dataclass
class RunState:
    state: str  # done | diverged | running | queued | pending | preempted | cancelled | failed | unreadable
    detail: str = ""
    crashed: bool = False  # failed without the run recording why: resubmitted automatically


# A run whose status.json cannot be read: its state is unknown, so it is neither counted as
# finished nor submitted again (its job could not read the file either) until someone looks.
UNREADABLE = "unreadable"


def read_run_status(run_dir: Path) -> tuple[dict, str | None]:
    """(status.json, None), or ({"status": "unreadable"}, why) for a file no run could have written."""
    try:
        status = store.read_status(run_dir)
    except (OSError, ValueError) as error:  # ValueError: not JSON, not UTF-8
        return {"status": UNREADABLE}, f"{store.STATUS_FILE}: {type(error).__name__}: {_first_line(error)}"
    if not isinstance(status, dict) or status.get("status") not in store.RUN_STATUSES:
        return {"status": UNREADABLE}, f"{store.STATUS_FILE}: no valid \"status\" (one of {', '.join(store.RUN_STATUSES)})"
    return status, None


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else ""


def run_state(status: dict, job_state: str | None, has_config: bool = True, job_id: str | None = None,
              problem: str | None = None) -> RunState:
    """Combine a run's status.json with its job's scheduler state (job_id, problem: for the detail)."""
    if not has_config:
        # No config.json (never submitted, or its directory was deleted): no job can run it.
        return RunState("pending", f"its directory is gone since job {job_id}" if job_id else "not submitted")
    recorded = status["status"]
    if recorded == UNREADABLE:
        return RunState(UNREADABLE, f"{problem}; fix the file, or delete the run directory to train the run again")
    if recorded in store.FINISHED_STATUSES:
        return RunState(recorded)
    if job_state in ACTIVE_JOB_STATES:
        if recorded == "running":
            return RunState("running", f"job {job_state}")
        return RunState("queued", f"job {job_state}")
    if job_state == "CANCELLED":
        return RunState("cancelled", "job cancelled")
    if recorded == "failed":
        return RunState("failed", status.get("error") or "the run raised an exception")
    if recorded == "preempted":
        return RunState("preempted", "interrupted; resumes from its checkpoint")
    if job_state is None:
        if recorded == "pending":
            # A SLURM array task cancelled before it started leaves no accounting record.
            return RunState("pending", f"job {job_id} ended before the run started (cancelled while pending?)"
                            if job_id else "not submitted")
        return RunState("failed", "no job known for a started run", crashed=True)
    if recorded == "pending":  # a job that ran other runs of its pack, or none, and ended
        return RunState("pending", f"job {job_state} before the run started")
    # The job is over (COMPLETED, FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL ...) but the run never finished.
    return RunState("failed", f"job {job_state} without a finished run", crashed=True)


def should_submit(state: RunState, rerun_failed: bool) -> bool:
    """Pending, interrupted and crashed runs; failed ones on request; never unreadable ones."""
    if state.state in ("pending", "preempted", "cancelled"):
        return True
    return state.state == "failed" and (state.crashed or rerun_failed)


# --- Planning ------------------------------------------------------------------------------


@dataclass
class PlannedRun:
    config: RunConfig
    run_dir: Path
    state: RunState
    submit: bool


@dataclass
class Plan:
    experiment: str
    model: str
    scale: str
    sweep: Path
    seeds: list[int] | None
    overrides: list[str]
    axes: dict
    runs: list[PlannedRun] = field(default_factory=list)
    rerun_failed: bool = False
    problems: list[str] = field(default_factory=list)  # unreadable run files, as "run_id: file: reason"
    # A sweep file's path and text, recorded in the manifest so that later commands need no file.
    sweep_file: dict | None = None
    grid: Sweep | None = None  # what the runs were expanded from (a launch plans again under the sweep's lock)
    axes_changed: dict = field(default_factory=dict)  # axes added or replaced ({name: axis as a sweep file writes it})
    experiment_model: str | None = None  # the built-in's model the grid comes from (`model` is what the runs train)

    @property
    def to_submit(self) -> list[PlannedRun]:
        return [run for run in self.runs if run.submit]

    @property
    def already_done(self) -> list[PlannedRun]:
        return [run for run in self.runs if run.state.state in store.FINISHED_STATUSES]

    @property
    def code_path(self) -> list[str]:
        """Directories a job puts on sys.path to import the runs' own builders (rotsweep.usercode)."""
        return usercode.code_path(run.config for run in self.runs)

    def manifest_identity(self) -> dict:
        # Changed axes are part of what a sweep is; recorded only when there are some, so
        # that sweeps launched before axes could change keep their identity.
        return {"experiment": self.experiment, "model": self.model, "scale": self.scale,
                "seeds": self.seeds, "overrides": self.overrides,
                **({"axes_changed": self.axes_changed} if self.axes_changed else {})}


def default_sweep_dir(experiment: str, model: str, scale: str) -> Path:
    return Path("sweeps") / f"{experiment}-{usercode.label(model)}-{scale}"


def make_plan(
    experiment: str,
    model: str,
    *,
    scale: str = "paper",
    out: Path | None = None,
    seeds: list[int] | None = None,
    overrides: list[str] = (),
    rerun_failed: bool = False,
    axes: dict | None = None,
) -> Plan:
    """Expand the experiment's grid and decide, run by run, what to submit. Writes nothing.

    Every config is checked as a job would check it (model, data set and their options),
    so that a dry run refuses what a launch would only find out on the nodes.
    axes: {name: axis as a sweep file writes it} replacing or adding axes (rotsweep.sweepfile).
    """
    if scale not in SCALES:
        raise UserError(f"unknown scale {scale!r}; choose paper or tiny")
    if axes:
        grid = sweepfile.builtin(experiment, model, grid=axes).sweep(scale)
    else:
        grid = get_experiment(experiment).sweep(model, scale)
    # The sweep is named after the model its runs train (`--set model=vgg13` makes a VGG sweep);
    # the experiment's own model is recorded when they differ, for a relaunch of the directory.
    plan = plan_sweep(grid, experiment, None, scale, out=out, seeds=seeds, overrides=overrides,
                      rerun_failed=rerun_failed, axes_changed=axes)
    plan.experiment_model = model
    return plan


def make_file_plan(
    sweep_file: SweepFile,
    *,
    scale: str | None = None,
    out: Path | None = None,
    seeds: list[int] | None = None,
    overrides: list[str] = (),
    rerun_failed: bool = False,
    axes: dict | None = None,
) -> Plan:
    """As make_plan, for a sweep file (rotsweep.sweepfile); scale None is the file's own. Writes nothing."""
    if axes:
        sweep_file = sweepfile.parse(sweep_file.text, origin=sweep_file.origin, grid=axes)
    scale = scale or sweep_file.default_scale
    grid = sweep_file.sweep(scale)
    plan = plan_sweep(grid, sweep_file.name, None, scale, out=out, seeds=seeds,
                      overrides=overrides, rerun_failed=rerun_failed, axes_changed=axes)
    plan.sweep_file = {"path": sweep_file.origin, "text": sweep_file.text}
    return plan


def make_relaunch_plan(
    sweep: Path, *, seeds: list[int] | None = None, overrides: list[str] = (), rerun_failed: bool = False
) -> Plan:
    """The plan of an existing sweep directory, from its manifest alone (no sweep file needed).

    The seeds and overrides default to the recorded ones; a sweep file's grid is
    the text recorded at its last launch.
    """
    manifest = load_sweep(sweep)
    usercode.add_to_sys_path(manifest.get("code_path", []))  # where its own model and data were found
    seeds = seeds if seeds is not None else manifest.get("seeds")
    overrides = list(overrides) or manifest.get("overrides", [])
    axes = manifest.get("axes_changed")
    recorded = manifest.get("sweep_file")
    if recorded is None:
        return make_plan(manifest["experiment"], manifest.get("experiment_model", manifest["model"]),
                         scale=manifest["scale"], out=sweep, seeds=seeds, overrides=overrides,
                         rerun_failed=rerun_failed, axes=axes)
    origin = f"{recorded['path']} (as recorded in {Path(sweep) / store.MANIFEST_FILE})"
    plan = make_file_plan(sweepfile.parse(recorded["text"], origin=origin), scale=manifest["scale"], out=sweep,
                          seeds=seeds, overrides=overrides, rerun_failed=rerun_failed, axes=axes)
    plan.sweep_file = recorded
    return plan


def plan_sweep(
    grid: Sweep,
    experiment: str,
    model: str | None,
    scale: str,
    *,
    out: Path | None = None,
    seeds: list[int] | None = None,
    overrides: list[str] = (),
    rerun_failed: bool = False,
    axes_changed: dict | None = None,
) -> Plan:
    """Decide, run by run, what to submit of a grid named experiment / model / scale. Writes nothing.

    model None: the model the runs train (several joined by "+"), after the overrides.
    """
    # Applied first, so that a value no run may take is named as such; then refused if it
    # would collapse an axis of the grid.
    configs = [config.with_overrides(list(overrides)) for config in grid.runs(seeds)]
    collapsed = sorted(set(parse_assignments(list(overrides))) & grid.swept_fields())
    if collapsed:
        raise UserError(f"{collapsed[0]} is swept by the grid of {experiment}: a --set would give every run one value; "
                        f"change its values with --grid {collapsed[0]}=V1,V2,... instead")
    unique = list({config.run_id: config for config in configs}.values())
    if not unique:
        raise UserError(f"the grid of {experiment} for {model} at {scale} scale is empty; check --seeds and --set")
    from rotsweep.data import check_dataset
    from rotsweep.models import check_model

    for config in unique:
        check_model(config.model, config.model_options)
        check_dataset(config.dataset, config.dataset_options)
    model = model or "+".join(sorted({config.model for config in unique}))
    sweep = Path(out) if out is not None else default_sweep_dir(experiment, model, scale)
    store.check_output_dir(sweep)
    # The sweep's identity is what it computes, however it was spelled: the default seeds given
    # explicitly are the default, `--set "steps= 1200"` is `--set steps=1200`.
    plan = Plan(experiment, model, scale, sweep, canonical_seeds(seeds, grid.seeds), canonical_overrides(overrides),
                grid.axes(), rerun_failed=rerun_failed, grid=grid, axes_changed=dict(axes_changed or {}))

    manifest = read_manifest_checked(sweep)
    if manifest is not None:
        recorded = {key: manifest.get(key) for key in plan.manifest_identity()}
        recorded["seeds"] = canonical_seeds(recorded["seeds"], grid.seeds)
        recorded["overrides"] = canonical_overrides(recorded["overrides"] or [])
        if recorded != plan.manifest_identity() or (manifest.get("axes_changed") or {}) != plan.axes_changed:
            raise UserError(
                f"{sweep} holds another sweep ({manifest['experiment']} {manifest['model']} {manifest['scale']}, "
                f"seeds {manifest.get('seeds')}, --set {manifest.get('overrides')}); choose another --out"
            )
    jobs = manifest.get("jobs", {}) if manifest else {}
    states = job_states(jobs)
    for config in unique:
        directory = store.run_dir(sweep, config.run_id)
        status, problem = read_run_status(directory)
        config_problem = _config_problem(directory, config)
        if config_problem:
            status, problem = {"status": UNREADABLE}, config_problem
        if problem:
            plan.problems.append(f"{config.run_id}: {problem}")
        state = run_state(status, states.get(config.run_id), (directory / store.CONFIG_FILE).exists(),
                          jobs.get(config.run_id, {}).get("job_id"), problem)
        plan.runs.append(PlannedRun(config, directory, state, should_submit(state, rerun_failed)))
    return plan


def _config_problem(run_dir: Path, config: RunConfig) -> str | None:
    """Why the run directory's config.json is not `config` (unreadable, or another run's), if it is not."""
    path = run_dir / store.CONFIG_FILE
    if not path.exists():
        return None
    try:
        recorded = RunConfig.load(path)
    except UserError as error:
        return f"{store.CONFIG_FILE}: {_first_line(error)}"
    return None if recorded == config else f"{store.CONFIG_FILE}: holds run {recorded.run_id}"


def canonical_seeds(seeds: list[int] | None, default: tuple[int, ...]) -> list[int] | None:
    """None for the experiment's default seeds (however given), else the sorted distinct seeds."""
    if seeds is None or sorted(set(seeds)) == sorted(set(default)):
        return None
    return sorted(set(seeds))


def canonical_overrides(overrides: list[str]) -> list[str]:
    """`--set` items as sorted key=JSON strings, the last of a repeated key winning."""
    values = parse_assignments(list(overrides))
    return [f"{key}={json.dumps(value, sort_keys=True)}" for key, value in sorted(values.items())]


def read_manifest_checked(sweep: Path) -> dict | None:
    """The sweep's manifest.json (None if it has none); a UserError if it is not one rotsweep wrote."""
    path = Path(sweep) / store.MANIFEST_FILE
    try:
        manifest = store.read_manifest(sweep)
    except (OSError, ValueError) as error:
        manifest, why = None, f"{type(error).__name__}: {_first_line(error)}"
    else:
        why = None if manifest is None else _manifest_problem(manifest)
    if why:
        raise UserError(f"{path} is unreadable ({why}); move it away (finished runs are found again by their "
                        "run_id) and launch again")
    return manifest


def _manifest_problem(manifest) -> str | None:
    if not isinstance(manifest, dict):
        return "not a JSON object"
    if not all(isinstance(manifest.get(key), str) for key in ("experiment", "model", "scale")):
        return "no experiment, model and scale"
    runs, jobs = manifest.get("runs", []), manifest.get("jobs", {})
    if not isinstance(runs, list) or not all(isinstance(run_id, str) for run_id in runs):
        return "\"runs\" is not a list of run ids"
    overrides, seeds = manifest.get("overrides") or [], manifest.get("seeds") or []
    if not isinstance(overrides, list) or not all(isinstance(item, str) and "=" in item for item in overrides):
        return "\"overrides\" is not a list of key=value"
    if not isinstance(seeds, list) or not all(isinstance(seed, int) for seed in seeds):
        return "\"seeds\" is not a list of integers"
    if not isinstance(jobs, dict) or not all(
            isinstance(job, dict) and isinstance(job.get("job_id"), str) and job.get("executor") in EXECUTORS
            for job in jobs.values()):
        return "\"jobs\" is not a table of jobs"
    return None


# --- The job: what runs on a node ----------------------------------------------------------


class RunJob(submitit.helpers.Checkpointable):
    """Trains a list of run directories one after the other; requeued on preemption.

    On preemption or timeout submitit calls `checkpoint` (the default returns
    this same job) and requeues it; each run then resumes from its own last
    checkpoint, and finished runs are skipped.
    """

    def __init__(self, run_dirs: list[str], data_dir: str | None = None, threads: int | None = None,
                 local_processes: int = 1, keep_checkpoints: str = DEFAULT_KEEP, code_path: list[str] = ()):
        self.run_dirs = run_dirs
        self.data_dir = data_dir
        self.threads = threads
        # Local executor: processes started here per run. On SLURM each task of the job runs
        # this object; its env:// variables come from submitit (distributed.export_slurm_env).
        self.local_processes = local_processes
        self.keep_checkpoints = keep_checkpoints  # what a finished run keeps of its checkpoint (rotsweep.clean)
        self.code_path = list(code_path)  # where the runs' own builders are imported from (rotsweep.usercode)

    def __call__(self) -> dict[str, str]:
        import torch

        from rotsweep import clean, distributed, train

        usercode.add_to_sys_path(getattr(self, "code_path", []))  # a job pickled before the field: none
        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0")) or None
        if threads:
            torch.set_num_threads(threads)
        if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
            distributed.export_slurm_env()
        results, failures = {}, []
        for run_dir in self.run_dirs:
            if not (Path(run_dir) / store.CONFIG_FILE).exists():
                continue  # its directory was deleted after submission: a relaunch submits it anew
            config = RunConfig.load(Path(run_dir) / store.CONFIG_FILE)
            try:
                if self.local_processes > 1:
                    distributed.spawn(self.local_processes, train.run, config, run_dir, data_dir=self.data_dir,
                                      threads=max(1, (threads or os.cpu_count() or 1) // self.local_processes))
                    results[config.run_id] = store.read_status(Path(run_dir))["status"]
                else:
                    results[config.run_id] = train.run(config, run_dir, data_dir=self.data_dir)
                if results[config.run_id] in store.FINISHED_STATUSES:  # safe on every task of a job
                    clean.apply(run_dir, getattr(self, "keep_checkpoints", DEFAULT_KEEP))
            except distributed.RankLost:
                raise  # the process group is gone: no later run of this job could start either
            except Exception as error:  # recorded in the run's status.json and log.txt
                results[config.run_id] = "failed"
                failures.append(f"{config.run_id}: {type(error).__name__}: {error}")
        if failures:
            # Fail the job too, so that the scheduler's view agrees with the runs'.
            raise RuntimeError("runs failed: " + "; ".join(failures))
        return results


# --- Submission ----------------------------------------------------------------------------


def pack(runs: list[PlannedRun], runs_per_job: int) -> list[list[PlannedRun]]:
    return [runs[i : i + runs_per_job] for i in range(0, len(runs), runs_per_job)]


def local_cpu_threads(max_parallel: int) -> int:
    return max(1, (os.cpu_count() or 1) // max_parallel)


def check_submission_options(executor: str, max_parallel: int | None, runs_per_job: int) -> None:
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; choose slurm or local")
    if runs_per_job < 1:
        raise UserError(f"--runs-per-job must be at least 1, got {runs_per_job}")
    if max_parallel is not None and max_parallel < 1:
        raise UserError(f"--max-parallel must be at least 1, got {max_parallel}")


@dataclass
class Packing:
    runs_per_job: int
    max_parallel: int | None  # SLURM's array throttle; for local jobs, how many run at once
    threads: int | None  # torch threads per local job (SLURM jobs take cpus_per_task)


def packing(executor: str, runs: int, max_parallel: int | None, runs_per_job: int) -> Packing:
    """How `runs` runs become jobs. Locally: a bounded pool of at most max_parallel (default 1)
    jobs, each running its share in sequence, since submitit starts every local job at once."""
    if executor != "local":
        return Packing(runs_per_job, max_parallel, None)
    max_parallel = max_parallel or 1
    runs_per_job = max(runs_per_job, math.ceil(runs / max_parallel)) if runs else 1
    return Packing(runs_per_job, max_parallel, local_cpu_threads(min(max_parallel, max(runs, 1))))


def make_executor(executor: str, sweep: Path, profile: dict, max_parallel: int | None, name: str):
    folder = store.jobs_dir(sweep)
    if executor == "slurm":
        parameters = dict(profile)
        if processes_per_run(parameters) > 1:
            # Whole job down when one task fails (a dead rank), not the others hanging on it.
            parameters.setdefault("slurm_srun_args", ["--kill-on-bad-exit=1"])
        if max_parallel:
            parameters["slurm_array_parallelism"] = max_parallel
        chosen = submitit.AutoExecutor(folder=folder, cluster="slurm")
    else:
        # A local job packs many runs and has no scheduler limit: submitit must never time it out.
        parameters = {"timeout_min": 7 * 24 * 60}
        chosen = submitit.AutoExecutor(folder=folder, cluster="local")
    try:
        chosen.update_parameters(name=name, **parameters)
    except (NameError, ValueError, TypeError) as error:
        raise UserError(f"bad cluster profile parameter: {error}") from None
    return chosen


@dataclass
class Submission:
    jobs: int
    runs: int
    job_ids: list[str]


def submit(
    plan: Plan,
    *,
    executor: str = "slurm",
    profile_name: str | None = None,
    max_parallel: int | None = None,
    runs_per_job: int = 1,
    data_dir: str | None = None,
    gpus_per_run: int | None = None,
    nodes_per_run: int | None = None,
    keep_checkpoints: str = DEFAULT_KEEP,
) -> Submission:
    """Submit the plan's runs; returns as soon as the scheduler has them.

    gpus_per_run / nodes_per_run spread each run over several processes (see run_resources).
    keep_checkpoints: what each run keeps of its checkpoint once finished (rotsweep.clean; not
    a RunConfig field, so no run_id depends on it).
    """
    check_submission_options(executor, max_parallel, runs_per_job)
    check_keep(keep_checkpoints)
    profile = run_resources(load_profile(profile_name or default_profile(plan.scale)), gpus_per_run, nodes_per_run)
    check_divides_accumulation(plan.to_submit, processes_per_run(profile))
    if executor == "slurm":
        check_slurm_reachable()
    if plan.scale == "paper":
        require_data(plan, data_dir)
    usercode.try_builders([run.config for run in plan.to_submit], data_dir)  # the user's own model and data
    with sweep_lock(plan.sweep):
        # Another launch into this sweep may have submitted since `plan` was made:
        # decide again under the lock, so that each run is submitted by one launch only.
        again = plan_sweep(plan.grid, plan.experiment, plan.model, plan.scale, out=plan.sweep, seeds=plan.seeds,
                           overrides=plan.overrides, rerun_failed=plan.rerun_failed, axes_changed=plan.axes_changed)
        again.sweep_file, again.experiment_model = plan.sweep_file, plan.experiment_model
        plan = again
        return submit_locked(plan, executor, profile, profile_name, max_parallel, runs_per_job, data_dir,
                              keep_checkpoints)


def submit_locked(
    plan: Plan, executor: str, profile: dict, profile_name: str | None, max_parallel: int | None,
    runs_per_job: int, data_dir: str | None, keep_checkpoints: str = DEFAULT_KEEP,
) -> Submission:
    """submit()'s work, done while holding the sweep's lock."""
    runs = plan.to_submit
    packed = packing(executor, len(runs), max_parallel, runs_per_job)
    max_parallel = packed.max_parallel
    groups = pack(runs, packed.runs_per_job)
    # Locally a job starts each run's processes itself; on SLURM they are the job's tasks.
    local_processes = processes_per_run(profile) if executor == "local" else 1
    jobs_to_make = [RunJob([str(run.run_dir) for run in group], data_dir, packed.threads, local_processes,
                           keep_checkpoints, plan.code_path)
                    for group in groups]
    for job in jobs_to_make:
        pickle.dumps(job)  # fail here, not on the node, if something cannot be pickled

    manifest = update_manifest(plan, executor, profile_name, keep_checkpoints)
    for run in runs:
        ready_for_submission(run)
    if not groups:
        return Submission(0, 0, [])

    chosen = make_executor(executor, plan.sweep, profile, max_parallel, f"rotsweep-{plan.experiment}")
    array_limit = max_array_size() if executor == "slurm" else len(groups)
    job_ids: list[str] = []
    for start in range(0, len(groups), array_limit):
        chunk_groups = groups[start : start + array_limit]
        try:
            # submitit echoes sbatch's complaint to stderr before raising it: keep it for the one-line error.
            with contextlib.redirect_stderr(io.StringIO()), detached_children(executor, plan.sweep), chosen.batch():
                submitted = [chosen.submit(job) for job in jobs_to_make[start : start + array_limit]]
        except submitit.core.utils.FailedJobError as error:
            refusal = str(error).strip().splitlines()[-1] if str(error).strip() else "no reason given"
            raise UserError(
                f"the scheduler refused the job array ({refusal}); check the profile "
                f"({profile_name or default_profile(plan.scale)}) against `sinfo`, then launch again"
            ) from None
        for group, job in zip(chunk_groups, submitted):
            job_ids.append(job.job_id)
            for run in group:
                manifest["jobs"][run.config.run_id] = {
                    "job_id": job.job_id, "executor": executor, "submitted": time.time(),
                    # A local job is a PID, which the kernel reuses: keep what tells the job's process apart.
                    **({"process": process_start(int(job.job_id))} if executor == "local" else {}),
                }
        store.write_manifest(plan.sweep, manifest)  # after each array: nothing submitted is forgotten
    return Submission(len(groups), len(runs), job_ids)


@contextlib.contextmanager
def sweep_lock(sweep: Path):
    """Hold the sweep's lock (flock on SWEEP/launch.lock) while planning and writing the manifest.

    Launches and cancels of one sweep take turns, so two launches at once cannot
    both submit a run or lose each other's manifest entries. The kernel releases
    the lock when its holder exits, even when killed: a stale lock cannot remain.
    """
    Path(sweep).mkdir(parents=True, exist_ok=True)
    with open(Path(sweep) / store.LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def detached_children(executor: str, sweep: Path):
    """Local jobs start with stdin from /dev/null and stdout/stderr appended to jobs/local-controllers.log.

    submitit's LocalExecutor starts each job's controller process with this
    process's own standard streams. A controller holding them open would keep
    `rotsweep launch ... --executor local | tail -1` waiting until the whole
    sweep ends. Children inherit file descriptors 0-2 as they are when started,
    so these point at the log for the duration. (A job's runs write to their
    own log.txt and submitit's jobs/<id>_0_log.out|err, as on SLURM.)
    """
    if executor != "local":
        yield
        return
    log_path = store.jobs_dir(sweep) / "local-controllers.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    with open(os.devnull, "rb") as devnull, open(log_path, "ab") as log:
        targets = {0: devnull.fileno(), 1: log.fileno(), 2: log.fileno()}
        saved = {}
        for fd in targets:
            try:
                saved[fd] = os.dup(fd)
            except OSError:  # this stream was closed: nothing to restore
                saved[fd] = None
        try:
            for fd, target in targets.items():
                os.dup2(target, fd)
            yield
        finally:
            for fd, copy in saved.items():
                if copy is None:
                    os.close(fd)
                else:
                    os.dup2(copy, fd)
                    os.close(copy)


def ready_for_submission(run: PlannedRun) -> None:
    """Write config.json, and drop a stale failure status so the run reads as queued."""
    store.prepare_run_dir(run.config, run.run_dir)
    if run.state.state in ("failed", "cancelled"):
        store.write_status(run.run_dir, "pending", resubmitted_after=run.state.state)


def update_manifest(plan: Plan, executor: str, profile_name: str | None, keep_checkpoints: str = DEFAULT_KEEP) -> dict:
    manifest = store.read_manifest(plan.sweep) or {
        **plan.manifest_identity(),
        "created": time.time(),
        "runs": [],
        "jobs": {},
        "launches": [],
    }
    known = set(manifest["runs"])
    manifest["runs"] += [run.config.run_id for run in plan.runs if run.config.run_id not in known]
    manifest["axes"] = plan.axes
    if plan.sweep_file is not None:
        manifest["sweep_file"] = plan.sweep_file  # its latest text: a relaunch from the directory uses it
    if plan.experiment_model not in (None, plan.model):
        manifest["experiment_model"] = plan.experiment_model
    manifest["code_version"] = code_version()
    if plan.code_path:
        manifest["code_path"] = plan.code_path  # the latest launch's: relaunches and jobs import from there
    manifest["launches"].append({
        "time": time.time(), "executor": executor, "profile": profile_name, "keep_checkpoints": keep_checkpoints,
        "submitted": [run.config.run_id for run in plan.to_submit],
    })
    store.write_manifest(plan.sweep, manifest)
    return manifest


def code_version() -> str:
    """rotsweep's version and, in a git checkout, the commit (marked -dirty with local changes)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = _run_command(["git", "-C", str(repo), "describe", "--always", "--dirty"], timeout=5)
        if commit.returncode == 0:
            return f"{__version__}+{commit.stdout.strip()}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return __version__


def require_data(plan: Plan, data_dir: str | None) -> None:
    """Paper-scale runs need their data sets: say so before anything is submitted."""
    from rotsweep.data import require_dataset

    for name in sorted({run.config.dataset for run in plan.to_submit}):
        require_dataset(name, data_dir=data_dir)


# --- Dry run -------------------------------------------------------------------------------

# A100 throughput of each recipe, from the train durations of the paper's Tables 4 and 5:
# ResNet-20/18 CIFAR: 200 epochs x 50k images in 35 min; ResNet-50 ImageNet: 90 x 1.28M in 30 h;
# GPT2-124M: 15k steps x 165 x 512 tokens in 3 h (Wikitext), 5k x 491,520 tokens in 4 h (OpenWebText).
A100_IMAGES_PER_SECOND = {"resnet20": 4762.0, "resnet18": 4762.0, "resnet18-ln": 4762.0, "vgg13": 4762.0,
                          "resnet50": 1067.0}
A100_TOKENS_PER_SECOND = {"wikitext": 117_000.0, "openwebtext": 170_000.0}
TRAIN_SET_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "imagenet": 1_281_167}


def estimated_gpu_hours(config: RunConfig) -> float | None:
    """Rough A100 hours of one run from the paper's measured durations (None if unknown)."""
    samples_per_step = config.batch_size * config.accumulation
    if config.model == "gpt2" and config.dataset in A100_TOKENS_PER_SECOND and config.steps is not None:
        tokens = config.steps * samples_per_step * (config.block_size or 1024)
        return tokens / A100_TOKENS_PER_SECOND[config.dataset] / 3600
    if config.model in A100_IMAGES_PER_SECOND and config.dataset in TRAIN_SET_SIZES:
        train_size = TRAIN_SET_SIZES[config.dataset] * (0.9 if config.val_split else 1.0)
        steps = config.steps if config.steps is not None else config.epochs * train_size // samples_per_step
        return steps * samples_per_step / A100_IMAGES_PER_SECOND[config.model] / 3600
    return None


def sbatch_header(profile: dict, sweep: Path, name: str, array_size: int, max_parallel: int | None) -> str:
    """The #SBATCH lines submitit would write for this profile (rendered without needing srun)."""
    text = submitit_sbatch_script(
        profile, command=f"{sys.executable} -u -m submitit.core._submit {store.jobs_dir(sweep)}",
        folder=store.jobs_dir(sweep), job_name=name, array_size=array_size, array_parallelism=max_parallel,
    )
    return "\n".join(line for line in text.splitlines() if line.startswith("#SBATCH"))


def submitit_sbatch_script(
    profile: dict, *, command: str, folder: Path, job_name: str, array_size: int, array_parallelism: int | None
) -> str:
    """The sbatch script submitit writes for a job array of this profile, without submitting it.

    submitit has no public way to render its script, so this is the one place that
    uses its private API: SlurmExecutor._equivalence_dict (AutoExecutor names ->
    sbatch parameters), _convert_mem and _make_sbatch_string (its annotations: submitit_sbatch_parameter_types
    below, for checking profiles). tests/test_trust.py
    checks the result line by line and, on the local SLURM cluster, against the
    script submitit really submits: a submitit release that changes any of them
    fails there rather than in a user's dry run.
    """
    from submitit.slurm import slurm

    parameters: dict = {}
    generic = slurm.SlurmExecutor._equivalence_dict()
    for key, value in profile.items():
        if key.startswith("slurm_"):
            parameters[key[len("slurm_"):]] = value
        elif key in generic:
            parameters[generic[key]] = value
        else:
            raise UserError(f"bad cluster profile parameter {key!r}: not a submitit AutoExecutor parameter")
    if "mem" in parameters:
        parameters["mem"] = slurm._convert_mem(parameters["mem"])
    if array_parallelism:
        parameters["array_parallelism"] = array_parallelism
    return slurm._make_sbatch_string(
        command=command, folder=folder, job_name=job_name, map_count=array_size, **parameters,
    )


def submitit_sbatch_parameter_types() -> dict:
    """{sbatch parameter: its annotation} in submitit's script renderer: the same private API as above."""
    import typing

    from submitit.slurm import slurm

    return typing.get_type_hints(slurm._make_sbatch_string)


def dry_run_report(
    plan: Plan, *, executor: str, profile_name: str | None, max_parallel: int | None, runs_per_job: int,
    gpus_per_run: int | None = None, nodes_per_run: int | None = None,
) -> dict:
    """Everything `launch` would do, as data: runs, grid, resources, sbatch header, GPU hours.

    Checks what `submit` checks first, and counts jobs as it packs them; local jobs have no
    profile (their resources are this machine's), and nothing to submit has no sbatch header.
    GPU hours count every GPU a run holds: the estimated single-GPU run hours × the GPUs of
    its job, an upper bound (a run on G GPUs at ideal scaling takes 1/G of the time).
    """
    check_submission_options(executor, max_parallel, runs_per_job)
    profile = run_resources(load_profile(profile_name or default_profile(plan.scale)), gpus_per_run, nodes_per_run)
    gpus_per_job = processes_per_run(profile)  # one GPU per process
    check_divides_accumulation(plan.to_submit, gpus_per_job)
    packed = packing(executor, len(plan.to_submit), max_parallel, runs_per_job)
    jobs = len(pack(plan.to_submit, packed.runs_per_job))
    hours = [estimated_gpu_hours(run.config) for run in plan.to_submit]
    known = [h for h in hours if h is not None]
    report = {
        "experiment": plan.experiment,
        "model": plan.model,
        "scale": plan.scale,
        "sweep": str(plan.sweep),
        "axes": plan.axes,
        "runs": [
            {"run_id": run.config.run_id, "state": run.state.state, "submit": run.submit,
             "config": run.config.to_dict()}
            for run in plan.runs
        ],
        "to_submit": len(plan.to_submit),
        "already_done": len(plan.already_done),
        "executor": executor,
        "profile": profile if executor == "slurm" else None,
        "jobs": jobs,
        "runs_per_job": packed.runs_per_job,
        "max_parallel": packed.max_parallel,
        "threads_per_job": packed.threads,
        "gpus_per_run": gpus_per_job,
        "gpu_hours": round(sum(known) * gpus_per_job, 1) if known and plan.scale == "paper" else None,
        "problems": plan.problems,
    }
    if executor == "slurm" and jobs:
        report["sbatch_header"] = sbatch_header(
            profile, plan.sweep, f"rotsweep-{plan.experiment}", jobs, max_parallel
        )
    return report


def describe_run(config: dict) -> str:
    """One line naming what distinguishes a run in a sweep."""
    name = ("RV-" if config["rotational"] else "") + config["optimizer"]
    if config["warmup_steps"]:
        warmup = f"{config['warmup_steps']} steps"
    elif config["warmup_epochs"]:
        warmup = f"{config['warmup_epochs']:g} epochs"
    else:
        warmup = "none"
    extras = [label for flag, label in (("weight_standardization", "WS"), ("gain", "gain")) if config[flag]]
    if config["imbalance_portion"]:
        extras.append(f"{config['imbalance_mode']} p={config['imbalance_portion']:g} f={config['imbalance_factor']:g}")
    if config["model_options"]:
        extras.append(json.dumps(config["model_options"], sort_keys=True))
    return (f"{config['model']:<11s} {name:<12s} lr {config['lr']:<9.3g} wd {config['weight_decay']:<9.3g} "
            f"warmup {warmup:<10s} seed {config['seed']}  {' '.join(extras)}").rstrip()


def format_dry_run(report: dict) -> str:
    lines = [
        f"{report['experiment']} / {report['model']} / {report['scale']} scale -> {report['sweep']}",
        "grid: " + "; ".join(f"{axis} = {values}" for axis, values in report["axes"].items()),
        f"runs: {len(report['runs'])} ({report['to_submit']} to submit, {report['already_done']} already finished)",
    ]
    for run in report["runs"]:
        config = run["config"]
        mark = "submit" if run["submit"] else "skip  "
        lines.append(f"  {mark} {run['run_id']}  {run['state']:9s} {describe_run(config)}")
    if report["executor"] == "slurm":
        lines.append(f"slurm jobs: {report['jobs']}; resources per job: {report['profile']}")
    else:
        lines.append(f"local jobs: {report['jobs']} at once on this machine, {report['runs_per_job']} run(s) each "
                     f"in sequence, {report['threads_per_job']} torch thread(s) each")
    if not report["to_submit"]:
        lines.append("to_submit: 0 (nothing to do: every run is finished, in flight or needs --rerun-failed)")
    lines += [f"problem: {problem}" for problem in report["problems"]]
    if report.get("gpu_hours") is not None:
        lines.append(f"estimated A100 GPU-hours (from the paper's Table 4/5 durations, × {report['gpus_per_run']} "
                     f"GPU(s) per run): {report['gpu_hours']}")
        if report["gpus_per_run"] > 1:
            lines.append(f"  (held for a run's single-GPU duration: an upper bound; at ideal DDP scaling a run "
                         f"takes 1/{report['gpus_per_run']} of it and the GPU-hours are those of one GPU)")
    if "sbatch_header" in report:
        lines += ["sbatch header:", report["sbatch_header"]]
    lines.append("dry run: nothing was submitted or written")
    return "\n".join(lines)


# --- Status, cancel, logs ------------------------------------------------------------------


def load_sweep(sweep: Path) -> dict:
    manifest = read_manifest_checked(sweep)
    if manifest is None:
        raise UserError(f"{sweep} is not a sweep directory (no {store.MANIFEST_FILE}); launch one with `rotsweep launch`")
    return manifest


def last_metric(run_dir: Path) -> tuple[str, float] | None:
    """The last validation metric a run wrote (top1 for images, loss for text), live parts included."""
    table = store.read_metrics(run_dir).to_pandas()
    val = table[table["split"] == "val"]
    if val.empty:
        val = table
    if val.empty:
        return None
    preferred = "top1" if (val["metric"] == "top1").any() else "loss"
    row = val[val["metric"] == preferred].iloc[-1]
    return f"{row['split']}_{preferred}", float(row["value"])


def sweep_status(sweep: Path) -> dict:
    """Every run's state, step and last metric, from the run directories and one sacct call.

    Like gather, a file that cannot be read is reported (the report's `problems`), not fatal:
    an unreadable manifest.json leaves the run directories to list the runs, an unreadable
    status.json makes its run `unreadable`, an unreadable metrics.parquet its metric unknown.
    """
    problems: list[str] = []
    try:
        manifest = load_sweep(sweep)
    except UserError as error:
        if not store.runs_dir(sweep).is_dir() or not (Path(sweep) / store.MANIFEST_FILE).exists():
            raise
        problems.append(str(error))
        runs_found = sorted(entry.name for entry in store.runs_dir(sweep).iterdir() if entry.is_dir())
        manifest = {"experiment": "?", "model": "?", "scale": "?", "runs": runs_found, "jobs": {}}
    states = job_states(manifest.get("jobs", {}))
    runs = []
    for run_id in manifest["runs"]:
        directory = store.run_dir(sweep, run_id)
        status, problem = read_run_status(directory)
        job = manifest.get("jobs", {}).get(run_id, {})
        state = run_state(status, states.get(run_id), (directory / store.CONFIG_FILE).exists(), job.get("job_id"),
                          problem)
        try:
            metric = last_metric(directory)
        except (OSError, ValueError, KeyError, IndexError) as error:  # pyarrow's errors are OSError/ValueError
            metric = None
            problem = f"{store.METRICS_FILE}: {type(error).__name__}: {_first_line(error)}"
        if problem:
            problems.append(f"{run_id}: {problem}")
        runs.append({
            "run_id": run_id,
            "state": state.state,
            "detail": state.detail,
            "step": status.get("step", 0),
            "total_steps": status.get("total_steps"),
            "metric": metric[0] if metric else None,
            "value": metric[1] if metric else None,
            "job_id": job.get("job_id"),
            "log": str(directory / store.LOG_FILE),
        })
    counts: dict[str, int] = {}
    for run in runs:
        counts[run["state"]] = counts.get(run["state"], 0) + 1
    return {"sweep": str(sweep), "experiment": manifest["experiment"], "model": manifest["model"],
            "scale": manifest["scale"], "counts": counts, "runs": runs, "problems": problems}


def cancel(sweep: Path) -> list[str]:
    """Cancel every job of the sweep that may still run; returns the cancelled job ids."""
    load_sweep(sweep)
    with sweep_lock(sweep):
        manifest = load_sweep(sweep)
        jobs = manifest.get("jobs", {})
        states = job_states(jobs)
        active = {run_id: job for run_id, job in jobs.items() if states.get(run_id) in ACTIVE_JOB_STATES}
        slurm_ids = sorted({job["job_id"] for job in active.values() if job["executor"] == "slurm"})
        local_jobs = {job["job_id"]: job for job in active.values() if job["executor"] == "local"}
        if slurm_ids:
            result = _run_command(["scancel", *slurm_ids])
            if result.returncode != 0:
                raise UserError(f"scancel failed: {result.stderr.strip()}")
        # As submitit's LocalJob.cancel: SIGINT makes the local controller kill its worker
        # (which, like every submitit job, ignores SIGTERM) and exit. Only a process that is
        # still the job's own is signalled, never whatever now holds a recycled PID.
        local_ids = sorted(pid for pid, job in local_jobs.items() if signal_job_process(job, signal.SIGINT))
        for run_id in active:
            jobs[run_id]["cancelled"] = True
        store.write_manifest(sweep, manifest)
    return slurm_ids + local_ids


def log_paths(sweep: Path, run_id: str) -> dict[str, Path]:
    manifest = load_sweep(sweep)
    if run_id not in manifest["runs"]:
        raise UserError(f"no run {run_id} in {sweep}; `rotsweep status {sweep}` lists the runs")
    paths = {"run log": store.run_dir(sweep, run_id) / store.LOG_FILE}
    job = manifest.get("jobs", {}).get(run_id)
    if job:
        folder = store.jobs_dir(sweep)
        paths["job stdout"] = folder / f"{job['job_id']}_0_log.out"
        paths["job stderr"] = folder / f"{job['job_id']}_0_log.err"
    return paths


def format_status(report: dict) -> str:
    counts = ", ".join(f"{count} {state}" for state, count in sorted(report["counts"].items()))
    lines = [f"{report['sweep']}: {report['experiment']} / {report['model']} / {report['scale']}: {counts}"]
    lines.append(f"  {'run_id':12s}  {'state':9s}  {'step':>13s}  {'last metric':>20s}  {'job':>10s}  detail")
    for run in report["runs"]:
        steps = f"{run['step']}/{run['total_steps'] if run['total_steps'] is not None else '?'}"
        metric = f"{run['metric']} {run['value']:.4g}" if run["metric"] else "-"
        detail = run["detail"] + (f" (log: {run['log']})" if run["state"] == "failed" else "")
        lines.append(f"  {run['run_id']:12s}  {run['state']:9s}  {steps:>13s}  {metric:>20s}  {str(run['job_id'] or '-'):>10s}  {detail}")
    lines += [f"problem: {problem}" for problem in report.get("problems", [])]
    return "\n".join(lines)


STOPPED_STATES = ("done", "diverged", "failed", "cancelled", "pending", "preempted", UNREADABLE)


def all_stopped(report: dict) -> bool:
    """True when no run of a sweep_status report is running or queued."""
    return all(run["state"] in STOPPED_STATES for run in report["runs"])


def watch_status(sweep: Path, interval: float) -> dict:
    """Redraw the status with a progress bar until no run is running or queued."""
    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.text import Text

    progress = Progress(TextColumn("[bold]runs finished"), BarColumn(), MofNCompleteColumn())
    task = progress.add_task("runs", total=None)
    with Live(refresh_per_second=2) as live:
        while True:
            report = sweep_status(sweep)
            finished = sum(report["counts"].get(state, 0) for state in store.FINISHED_STATUSES)
            progress.update(task, total=len(report["runs"]), completed=finished)
            live.update(Group(progress, Text(format_status(report))))
            if all_stopped(report):
                return report
            time.sleep(interval)
