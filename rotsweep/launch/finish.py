"""A sweep that finishes itself: `launch --then gather|plot|report` gathers the sweep when its last
job ends, then draws its figures or writes its report, with no command run after the launch.

The steps are the commands a person would type (`rotsweep gather SWEEP`, `rotsweep plot all SWEEP`,
`rotsweep report SWEEP`), run as subprocesses, so the launcher never imports the analysis code.
On SLURM they are a small CPU job that sbatch holds until every job of the sweep has ended
(`--dependency=afterany:<each array job>`); locally a detached process polls the sweep's jobs.
Each launch that submits jobs replaces the recorded finisher (manifest "then"), so the steps
also wait for the runs a relaunch submitted.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from rotsweep import store
from rotsweep.errors import UserError
from rotsweep.launch.backend import ACTIVE_JOB_STATES, Backend
from rotsweep.launch.backends import BACKENDS, job_states
from rotsweep.launch.manifest import load_sweep

# What each --then does once the sweep's jobs have ended: rotsweep commands, each given the sweep.
THEN_STEPS = {
    "gather": (("gather",),),
    "plot": (("gather",), ("plot", "all")),
    "report": (("gather",), ("report",)),
}
POLL_SECONDS = 2.0  # how often a local finisher looks at the sweep's jobs
# The manifest's key of the finisher's record; also its key in a job-state query beside the
# runs' ids (twelve hex digits, never this word), so status asks the scheduler once for both.
FINISHER = "then"


def check_then(then: str | None) -> None:
    if then is not None and then not in THEN_STEPS:
        raise UserError(f"unknown step {then!r} to run when the sweep ends; choose {', '.join(THEN_STEPS)}")


def run_steps(sweep: str | Path, then: str) -> None:
    """Run the steps of `then` on the sweep, in order; the first that fails stops the rest."""
    for step in THEN_STEPS[then]:
        command = [sys.executable, "-m", "rotsweep.cli", *step, str(sweep)]
        print(f"$ {shlex.join(command)}", flush=True)
        subprocess.run(command, check=True)


class FinishJob:
    """What a scheduler's finisher job runs (pickled by submitit): the steps, once it is allowed to start."""

    def __init__(self, sweep: str, then: str):
        self.sweep = sweep
        self.then = then

    def __call__(self) -> None:
        run_steps(self.sweep, self.then)


def active_jobs(manifest: dict) -> dict[str, dict]:
    """{run_id: job entry} of the sweep's jobs that may still run."""
    jobs = manifest.get("jobs", {})
    states = job_states(jobs)
    return {run_id: job for run_id, job in jobs.items() if states.get(run_id) in ACTIVE_JOB_STATES}


def wait_then_run(sweep: Path, then: str) -> None:
    """A local finisher: wait until no job of the sweep may still run (re-reading the manifest, so
    jobs a relaunch adds are waited for too), then run the steps."""
    while active_jobs(load_sweep(sweep)):
        time.sleep(POLL_SECONDS)
    run_steps(sweep, then)


def finisher_steps(sweep: Path, then: str | None, submits_jobs: bool) -> str | None:
    """The steps a launch's finisher would run: those asked for, else, when the launch submits
    jobs, those recorded by an earlier launch (they then wait for the new jobs too)."""
    recorded = (store.read_manifest(sweep) or {}).get(FINISHER)
    return then or (recorded["steps"] if recorded and submits_jobs else None)


def describe_steps(then: str) -> str:
    """The commands `then` runs, as a person would type them: "rotsweep gather, then rotsweep report"."""
    return ", then ".join("rotsweep " + " ".join(step) for step in THEN_STEPS[then])


def finisher_jobs(manifest: dict) -> dict[str, dict]:
    """{FINISHER: its record} to ask its job state with the runs' jobs, or {} when none was submitted."""
    record = manifest.get(FINISHER)
    return {FINISHER: record} if record and record.get("job_id") else {}


def finisher_state(manifest: dict, states: dict[str, str | None]) -> dict | None:
    """The recorded finisher as status shows it: steps, executor, job_id and state (the scheduler's
    word, lower case: pending, running, completed ...), or None without one. `states`: job_states()
    of jobs that included finisher_jobs(manifest)."""
    record = finisher_jobs(manifest).get(FINISHER)
    if record is None:
        return None
    # Cancelled by `rotsweep cancel`: said at once, though accounting may still report the job
    # pending for a moment (only this line reads it; which runs to submit never depends on it).
    state = "cancelled" if record.get("cancelled") else (states.get(FINISHER) or "unknown").lower()
    return {"steps": record["steps"], "executor": record["executor"], "job_id": record["job_id"], "state": state}


def cancel_finisher(manifest: dict) -> list[str]:
    """Cancel the manifest's finisher if it has not run its steps yet (marking its record);
    returns the job ids cancelled. The caller writes the manifest."""
    jobs = finisher_jobs(manifest)
    if not jobs or job_states(jobs)[FINISHER] not in ACTIVE_JOB_STATES:
        return []
    record = jobs[FINISHER]
    record["cancelled"] = True
    return BACKENDS[record["executor"]].cancel([record])


def replace_finisher(sweep: Path, then: str, backend: Backend, profile: dict) -> dict:
    """Cancel the sweep's recorded finisher if it has not run yet, submit one for `then` that waits
    for every job of the sweep that may still run, and record it in the manifest; returns the record.

    Called by a launch while it holds the sweep's lock, after its own jobs are submitted.
    """
    manifest = load_sweep(sweep)
    cancel_finisher(manifest)
    after = sorted({job["job_id"] for job in active_jobs(manifest).values() if job["executor"] == backend.name})
    record = {"steps": then, "executor": backend.name, "after": after, "submitted": time.time(),
              **backend.submit_finisher(Path(sweep), then, after, profile)}
    manifest[FINISHER] = record
    store.write_manifest(sweep, manifest)
    return record


if __name__ == "__main__":  # the local finisher's process: python -m rotsweep.launch.finish SWEEP STEPS
    wait_then_run(Path(sys.argv[1]), sys.argv[2])
