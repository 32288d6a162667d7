"""Following a sweep: each run's variant, swept values, state, step, last metric, elapsed time
and ETA (SweepStatus, one screen at any size); cancel; log paths.

A file that cannot be read (a run's status.json or metrics.parquet) is reported, as
gather reports it, and does not stop `status` for the other runs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from rotsweep import store
from rotsweep.errors import UserError
from rotsweep.launch.backend import ACTIVE_JOB_STATES
from rotsweep.launch.backends import BACKENDS, job_states
from rotsweep.launch.finish import cancel_finisher, describe_steps, finisher_jobs, finisher_state
from rotsweep.launch.labels import VARIANT_FIELDS, variant_label
from rotsweep.launch.manifest import first_line, load_sweep, sweep_lock
from rotsweep.launch.plan import UNREADABLE, read_run_status, run_state


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


# --- What one run shows ----------------------------------------------------------------------

# States in the order a person should look at them: what went wrong, then what is moving.
ATTENTION_STATES = ("failed", UNREADABLE, "diverged", "cancelled", "preempted", "running")
STATE_ORDER = ATTENTION_STATES + ("queued", "pending", "done")
# Above this many runs the default view is grouped counts and the runs that need attention
# (one screen); --all, or a --state filter, lists every run it selects.
SCREEN_RUNS = 40
ATTENTION_ROWS = 15
SORTS = ("run", "state", "variant", "metric", "progress", "eta")


@dataclass
class RunStatus:
    run_id: str
    variant: str  # the optimizer as the paper names it, e.g. RV-AdamW (rotsweep.launch.labels)
    swept: dict  # {RunConfig field: value} of the fields that vary between the sweep's runs
    state: str  # a state of rotsweep.launch.plan.run_state
    detail: str
    step: int
    total_steps: int | None
    metric: str | None  # the last validation metric the run wrote, e.g. val_top1
    value: float | None
    elapsed_s: float | None  # training time so far (status.json's wall_s, plus the time since for a running run)
    eta_s: float | None  # a running run's remaining steps at its mean time per step so far
    job_id: str | None
    log: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def label(self) -> str:
        return " ".join([self.variant, *(f"{name}={format_value(value)}" for name, value in self.swept.items())])


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def higher_is_better(metric: str) -> bool:
    """Accuracies (top1, top5) improve upwards; losses and perplexities downwards."""
    return "top" in metric or "acc" in metric


def elapsed_and_eta(status: dict, state: str, now: float) -> tuple[float | None, float | None]:
    """(training seconds so far, seconds left) from status.json's wall_s, step and total_steps.

    status.json is rewritten at each eval; a running run has trained since, for now − updated.
    """
    wall = status.get("wall_s")
    if wall is None:
        return None, None
    if state == "running" and status.get("updated"):
        wall += max(0.0, now - status["updated"])
    step, total = status.get("step") or 0, status.get("total_steps")
    if state != "running" or not step or not total:
        return wall, None
    return wall, wall / step * max(total - step, 0)


def swept_fields(configs: dict[str, dict]) -> list[str]:
    """The RunConfig fields whose values differ between the runs (besides the variant's own)."""
    values: dict[str, set] = {}
    for config in configs.values():
        for name, value in config.items():
            values.setdefault(name, set()).add(json.dumps(value, sort_keys=True))
    return [name for name, seen in values.items() if len(seen) > 1 and name not in VARIANT_FIELDS]


def read_config(run_dir: Path) -> dict | None:
    """config.json as plain data (None before the run is submitted, or if unreadable: status says why)."""
    try:
        return json.loads((run_dir / store.CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --- The sweep's status ----------------------------------------------------------------------


@dataclass
class SweepStatus:
    sweep: Path
    experiment: str
    model: str
    scale: str
    counts: dict[str, int]  # {state: runs}, over every run of the sweep
    runs: list[RunStatus]  # every run, or those of the --state filter, in the chosen order
    problems: list[str]
    total: int  # runs in the sweep
    best: RunStatus | None  # the best last metric so far, over every run (best_run)
    filtered: bool = False  # runs holds only the states asked for
    then: dict | None = None  # the finisher of `launch --then` (finish.finisher_state), if one was submitted

    def to_dict(self) -> dict:
        best = self.best
        return {"sweep": str(self.sweep), "experiment": self.experiment, "model": self.model, "scale": self.scale,
                "total": self.total, "counts": self.counts, "groups": self.groups(),
                "best": best.to_dict() if best else None,
                "runs": [run.to_dict() for run in self.runs], "problems": self.problems, "then": self.then}

    def groups(self) -> dict[str, dict[str, int]]:
        """{variant: {state: runs}} over the listed runs."""
        groups: dict[str, dict[str, int]] = {}
        for run in self.runs:
            counts = groups.setdefault(run.variant, {})
            counts[run.state] = counts.get(run.state, 0) + 1
        return groups

    def summary(self) -> str:
        counts = ", ".join(f"{self.counts[state]} {state}" for state in sorted(self.counts, key=state_rank))
        line = f"{self.sweep}: {self.experiment} / {self.model} / {self.scale}: {self.total} runs: {counts}"
        best = self.best
        if best is not None:
            line += f"; best {best.metric} {best.value:.4g}: {best.run_id} {best.label()}"
        return line

    def format(self, all_runs: bool = False) -> str:
        """The summary, then every listed run (few runs, --all, a --state filter) or, for a large
        sweep, counts per variant and the runs that need attention: one screen at any size."""
        lines = [self.summary()]
        if all_runs or self.filtered or len(self.runs) <= SCREEN_RUNS:
            lines += format_runs(self.runs)
        else:
            lines += format_groups(self.groups())
            attention = sorted((run for run in self.runs if run.state in ATTENTION_STATES),
                               key=lambda run: state_rank(run.state))
            if attention:
                lines.append(f"needing attention ({len(attention)}):")
                lines += format_runs(attention[:ATTENTION_ROWS])
                if len(attention) > ATTENTION_ROWS:
                    lines.append(f"  ... {len(attention) - ATTENTION_ROWS} more: --state "
                                 f"{','.join(sorted({run.state for run in attention}, key=state_rank))} lists them, "
                                 "--all lists every run")
            else:
                lines.append("no run needs attention; --all lists every run")
        if self.then is not None:
            then = self.then
            lines.append(f"then: {describe_steps(then['steps'])}, once every job has ended: "
                         f"{then['executor']} job {then['job_id']}, {then['state']}")
        lines += [f"problem: {problem}" for problem in self.problems]
        return "\n".join(lines)


def best_run(runs: list[RunStatus]) -> RunStatus | None:
    """The run with the best last metric, of the metric most runs report (None: nothing measured yet)."""
    measured = [run for run in runs if run.metric is not None and run.value is not None]
    if not measured:
        return None
    names = [run.metric for run in measured]
    metric = max(sorted(set(names)), key=names.count)
    candidates = [run for run in measured if run.metric == metric]
    return (max if higher_is_better(metric) else min)(candidates, key=lambda run: run.value)


def state_rank(state: str) -> int:
    return STATE_ORDER.index(state) if state in STATE_ORDER else len(STATE_ORDER)


def format_runs(runs: list[RunStatus]) -> list[str]:
    lines = [f"  {'run_id':12s}  {'state':9s}  {'step':>13s}  {'last metric':>18s}  {'elapsed':>7s}  {'eta':>7s}  "
             f"{'job':>10s}  variant, swept values; detail"]
    for run in runs:
        steps = f"{run.step}/{run.total_steps if run.total_steps is not None else '?'}"
        metric = f"{run.metric} {run.value:.4g}" if run.metric else "-"
        detail = run.detail + (f" (log: {run.log})" if run.state == "failed" else "")
        lines.append(f"  {run.run_id:12s}  {run.state:9s}  {steps:>13s}  {metric:>18s}  "
                     f"{format_duration(run.elapsed_s):>7s}  {format_duration(run.eta_s):>7s}  "
                     f"{str(run.job_id or '-'):>10s}  {run.label()}" + (f"; {detail}" if detail else ""))
    return lines


def format_groups(groups: dict[str, dict[str, int]]) -> list[str]:
    states = sorted({state for counts in groups.values() for state in counts}, key=state_rank)
    width = max([len("variant"), *map(len, groups)])
    lines = ["  " + f"{'variant':{width}s}" + "".join(f"  {state:>9s}" for state in states)]
    for variant, counts in sorted(groups.items()):
        lines.append("  " + f"{variant:{width}s}" + "".join(f"  {counts.get(state, 0):>9d}" for state in states))
    return lines


def sort_runs(runs: list[RunStatus], by: str) -> list[RunStatus]:
    """Runs in the order asked for: run (the sweep's order), state (attention first), variant,
    metric (best first, unmeasured last), progress (least done first), eta (longest first)."""
    if by == "run":
        return list(runs)
    if by == "state":
        return sorted(runs, key=lambda run: state_rank(run.state))
    if by == "variant":
        return sorted(runs, key=lambda run: (run.variant, [json.dumps(v, sort_keys=True) for v in run.swept.values()]))
    if by == "progress":
        return sorted(runs, key=lambda run: run.step / run.total_steps if run.total_steps else 0.0)
    if by == "eta":
        return sorted(runs, key=lambda run: -(run.eta_s or 0.0))
    measured = [run for run in runs if run.value is not None]
    unmeasured = [run for run in runs if run.value is None]
    best = best_run(measured)
    upwards = best is not None and higher_is_better(best.metric)
    return sorted(measured, key=lambda run: -run.value if upwards else run.value) + unmeasured


def sweep_status(sweep: Path, states: list[str] | None = None, sort: str = "run") -> SweepStatus:
    """Every run's state, step, last metric and timing, from the run directories and the scheduler.

    states: list only the runs in these states (counts still cover every run); sort: see sort_runs.
    Like gather, a file that cannot be read is reported (`problems`), not fatal:
    an unreadable manifest.json leaves the run directories to list the runs, an unreadable
    status.json makes its run `unreadable`, an unreadable metrics.parquet its metric unknown.
    """
    unknown = sorted(set(states or []) - set(STATE_ORDER))
    if unknown:
        raise UserError(f"unknown state {unknown[0]!r}; choose from: {', '.join(STATE_ORDER)}")
    if sort not in SORTS:
        raise UserError(f"unknown sort {sort!r}; choose one of: {', '.join(SORTS)}")
    problems: list[str] = []
    try:
        manifest = load_sweep(sweep)
    except UserError as error:
        if not store.runs_dir(sweep).is_dir() or not (Path(sweep) / store.MANIFEST_FILE).exists():
            raise
        problems.append(str(error))
        runs_found = sorted(entry.name for entry in store.runs_dir(sweep).iterdir() if entry.is_dir())
        manifest = {"experiment": "?", "model": "?", "scale": "?", "runs": runs_found, "jobs": {}}
    job_state_of = job_states({**manifest.get("jobs", {}), **finisher_jobs(manifest)})  # one question
    configs = {run_id: read_config(store.run_dir(sweep, run_id)) for run_id in manifest["runs"]}
    swept = swept_fields({run_id: config for run_id, config in configs.items() if config is not None})
    now = time.time()
    runs = []
    for run_id in manifest["runs"]:
        directory = store.run_dir(sweep, run_id)
        status, problem = read_run_status(directory)
        job = manifest.get("jobs", {}).get(run_id, {})
        state = run_state(status, job_state_of.get(run_id), (directory / store.CONFIG_FILE).exists(),
                          job.get("job_id"), problem)
        try:
            metric = last_metric(directory)
        except (OSError, ValueError, KeyError, IndexError) as error:  # pyarrow's errors are OSError/ValueError
            metric = None
            problem = f"{store.METRICS_FILE}: {type(error).__name__}: {first_line(error)}"
        if problem:
            problems.append(f"{run_id}: {problem}")
        config = configs[run_id]
        elapsed, eta = elapsed_and_eta(status, state.state, now)
        runs.append(RunStatus(
            run_id=run_id,
            variant=variant_label(config) if config else "?",
            swept={name: config.get(name) for name in swept} if config else {},
            state=state.state,
            detail=state.detail,
            step=status.get("step", 0),
            total_steps=status.get("total_steps"),
            metric=metric[0] if metric else None,
            value=metric[1] if metric else None,
            elapsed_s=elapsed,
            eta_s=eta,
            job_id=job.get("job_id"),
            log=str(directory / store.LOG_FILE),
        ))
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.state] = counts.get(run.state, 0) + 1
    listed = [run for run in runs if not states or run.state in states]
    return SweepStatus(Path(sweep), manifest["experiment"], manifest["model"], manifest["scale"], counts,
                       sort_runs(listed, sort), problems, len(runs), best_run(runs), filtered=bool(states),
                       then=finisher_state(manifest, job_state_of))


def cancel(sweep: Path) -> list[str]:
    """Cancel every job of the sweep that may still run, and its finisher (`launch --then`) if it
    has not run yet, so no step runs on the cancelled sweep; returns the cancelled job ids.
    A relaunch submits the runs again, and the recorded finisher with them."""
    load_sweep(sweep)
    with sweep_lock(sweep):
        manifest = load_sweep(sweep)
        cancelled = cancel_finisher(manifest)  # first: on SLURM it would start once the arrays end
        jobs = manifest.get("jobs", {})
        states = job_states(jobs)
        active = {run_id: job for run_id, job in jobs.items() if states.get(run_id) in ACTIVE_JOB_STATES}
        for name, backend in BACKENDS.items():
            cancelled += backend.cancel([job for job in active.values() if job["executor"] == name])
        for run_id in active:
            jobs[run_id]["cancelled"] = True
        store.write_manifest(sweep, manifest)
    return cancelled


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


STOPPED_STATES = ("done", "diverged", "failed", "cancelled", "pending", "preempted", UNREADABLE)


def all_stopped(report: SweepStatus) -> bool:
    """True when no run of the sweep is running or queued."""
    return all(state in STOPPED_STATES for state in report.counts)


def watch_status(sweep: Path, interval: float, states: list[str] | None = None, sort: str = "run",
                 all_runs: bool = False) -> SweepStatus:
    """Redraw the status with a progress bar until no run is running or queued."""
    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.text import Text

    progress = Progress(TextColumn("[bold]runs finished"), BarColumn(), MofNCompleteColumn())
    task = progress.add_task("runs", total=None)
    with Live(refresh_per_second=2) as live:
        while True:
            report = sweep_status(sweep, states, sort)
            finished = sum(report.counts.get(state, 0) for state in store.FINISHED_STATUSES)
            progress.update(task, total=report.total, completed=finished)
            live.update(Group(progress, Text(report.format(all_runs))))
            if all_stopped(report):
                return report
            time.sleep(interval)
