"""Which runs a launch submits: the state of each run, and the plan of a sweep.

The decision for each run combines what the run wrote (status.json) with what
the scheduler says of its job (one question per backend for the whole sweep):

    done, diverged            finished: never resubmitted
    running, queued           in flight: left alone
    pending                   never submitted (or its directory was deleted): submitted
    preempted, cancelled      the job stopped before the run finished: submitted, resumes from its checkpoint
    failed (exception)        the run raised: resubmitted only with --rerun-failed
    failed (crashed)          the job ended without the run saying why (killed, OOM,
                              COMPLETED without a finished run): submitted again
    unreadable                status.json cannot be read: reported, never submitted
                              (fix the file, or delete the run directory to train it again)

Planning writes nothing; rotsweep.launch.submit plans again under the sweep's lock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rotsweep import store, sweepfile, usercode
from rotsweep.config import RunConfig, parse_assignments
from rotsweep.errors import UserError
from rotsweep.experiments import Sweep, get_experiment
from rotsweep.launch.backend import ACTIVE_JOB_STATES
from rotsweep.launch.backends import job_states
from rotsweep.launch.manifest import first_line, load_sweep, read_manifest_checked
from rotsweep.sweepfile import SweepFile

SCALES = ("paper", "tiny")


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
        return {"status": UNREADABLE}, f"{store.STATUS_FILE}: {type(error).__name__}: {first_line(error)}"
    if not isinstance(status, dict) or status.get("status") not in store.RUN_STATUSES:
        return {"status": UNREADABLE}, f"{store.STATUS_FILE}: no valid \"status\" (one of {', '.join(store.RUN_STATUSES)})"
    return status, None


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
        return f"{store.CONFIG_FILE}: {first_line(error)}"
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
