"""Following a sweep: each run's state, step and last metric; cancel; log paths.

A file that cannot be read (a run's status.json or metrics.parquet) is reported, as
gather reports it, and does not stop `status` for the other runs.
"""

from __future__ import annotations

import time
from pathlib import Path

from rotsweep import store
from rotsweep.errors import UserError
from rotsweep.launch.backend import ACTIVE_JOB_STATES
from rotsweep.launch.backends import BACKENDS, job_states
from rotsweep.launch.manifest import first_line, load_sweep, sweep_lock
from rotsweep.launch.plan import UNREADABLE, read_run_status, run_state


def last_metric(run_dir: Path) -> tuple[str, float] | None:
    """The last validation metric a run wrote (top1 for images, loss for text)."""
    import pyarrow.parquet as pq

    path = run_dir / store.METRICS_FILE
    if not path.exists():
        return None
    table = pq.read_table(path, columns=["split", "metric", "value"]).to_pandas()
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
            problem = f"{store.METRICS_FILE}: {type(error).__name__}: {first_line(error)}"
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
        cancelled = []
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
