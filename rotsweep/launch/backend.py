"""What every scheduler backend provides (rotsweep.launch.slurm, rotsweep.launch.local).

A backend is everything about one kind of scheduler that the rest of the launcher
must not know: how jobs are submitted (a submitit executor), how runs are packed
into jobs, how a job's state is asked for, how jobs are cancelled, how large one
submission may be, and what a dry run shows of its resources. The rest of the
launcher speaks one vocabulary: a job's state is a word of SLURM's (sacct's first
word), which the local backend also uses for its processes (RUNNING, COMPLETED).

Adding a scheduler: a module with a Backend subclass, named in rotsweep.launch.backends.
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Job states (sacct's first word) in which a job may still run its runs.
ACTIVE_JOB_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
                     "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}


def run_command(args: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def submitit_executor(cluster: str, sweep: Path, name: str, parameters: dict):
    """submitit's AutoExecutor for `cluster`, writing into SWEEP/jobs/, with these parameters."""
    import submitit

    from rotsweep import store
    from rotsweep.errors import UserError

    chosen = submitit.AutoExecutor(folder=store.jobs_dir(sweep), cluster=cluster)
    try:
        chosen.update_parameters(name=name, **parameters)
    except (NameError, ValueError, TypeError) as error:
        raise UserError(f"bad cluster profile parameter: {error}") from None
    return chosen


@dataclass
class Packing:
    runs_per_job: int
    max_parallel: int | None  # SLURM's array throttle; for local jobs, how many run at once
    threads: int | None  # torch threads per local job (SLURM jobs take cpus_per_task)


class Backend:
    """One scheduler. Manifest job entries are dicts {"job_id", "executor", "submitted", ...}."""

    name: str
    # True when the jobs share this machine with the user (so a demo runs one sweep at a time,
    # and an interrupted demo stops them); False when a cluster runs them elsewhere.
    runs_on_this_machine: bool

    def check_reachable(self) -> None:
        """A one-line UserError unless jobs can be submitted now."""

    def packing(self, runs: int, max_parallel: int | None, runs_per_job: int) -> Packing:
        """How `runs` runs become jobs."""
        return Packing(runs_per_job, max_parallel, None)

    def processes_started_by_job(self, resources: dict) -> int:
        """Processes a job starts itself for each run (the scheduler starts the others as tasks)."""
        return 1

    def make_executor(self, sweep: Path, profile: dict, max_parallel: int | None, name: str):
        """A submitit executor submitting into SWEEP/jobs/."""
        raise NotImplementedError

    def array_limit(self, jobs: int) -> int:
        """How many jobs one submission (one job array) may hold."""
        return jobs

    @contextlib.contextmanager
    def submitting(self, sweep: Path):
        """What must hold around submitit's submit calls."""
        yield

    def job_record(self, job_id: str) -> dict:
        """Manifest fields of a submitted job beyond its id, executor and time."""
        return {}

    def job_states(self, jobs: dict[str, dict]) -> dict[str, str]:
        """{run_id: job state} for {run_id: manifest job entry} of this backend; a run whose job the
        scheduler knows nothing of is left out."""
        raise NotImplementedError

    def cancel(self, jobs: list[dict]) -> list[str]:
        """Cancel the given active jobs; returns the job ids cancelled."""
        raise NotImplementedError

    def submit_finisher(self, sweep: Path, then: str, after: list[str], profile: dict) -> dict:
        """Start what runs the steps of `then` (rotsweep.launch.finish) once the jobs `after` have
        ended; returns the fields of its manifest record (at least job_id)."""
        raise NotImplementedError

    def prepare_task(self) -> None:
        """Called in each task of a job on its node, before any run starts."""

    def dry_run_profile(self, resources: dict) -> dict | None:
        """The resources a dry run reports per job (None: this machine's own)."""
        return None

    def dry_run_header(self, resources: dict, sweep: Path, name: str, jobs: int, max_parallel: int | None) -> str | None:
        """The job script header a dry run shows (None: there is none)."""
        return None

    def describe_jobs(self, report) -> str:
        """The dry run's line about the jobs (report: a rotsweep.launch.dryrun.DryRun)."""
        raise NotImplementedError
