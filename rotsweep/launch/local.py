"""The local backend: jobs are processes on this machine (submitit's LocalExecutor).

submitit's LocalExecutor starts every job at once, so runs are packed into at
most `max_parallel` jobs that each work through their runs one after the other.
A local job is a process, known by its PID and its start time (a PID alone may
have been reused).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

from rotsweep import store
from rotsweep.launch.backend import Backend, Packing, submitit_executor


class LocalBackend(Backend):
    name = "local"
    runs_on_this_machine = True

    def packing(self, runs: int, max_parallel: int | None, runs_per_job: int) -> Packing:
        """A bounded pool of at most max_parallel (default 1) jobs, each running its share in sequence."""
        max_parallel = max_parallel or 1
        runs_per_job = max(runs_per_job, math.ceil(runs / max_parallel)) if runs else 1
        return Packing(runs_per_job, max_parallel, local_cpu_threads(min(max_parallel, max(runs, 1))))

    def processes_started_by_job(self, resources: dict) -> int:
        from rotsweep.launch.profiles import processes_per_run

        return processes_per_run(resources)  # no scheduler starts a run's processes as tasks here

    def make_executor(self, sweep: Path, profile: dict, max_parallel: int | None, name: str):
        # A local job packs many runs and has no scheduler limit: submitit must never time it out.
        return submitit_executor("local", sweep, name, {"timeout_min": 7 * 24 * 60})

    @contextlib.contextmanager
    def submitting(self, sweep: Path):
        with detached_children(sweep):
            yield

    def job_record(self, job_id: str) -> dict:
        # A local job is a PID, which the kernel reuses: keep what tells the job's process apart.
        return {"process": process_start(int(job_id))}

    def job_states(self, jobs: dict[str, dict]) -> dict[str, str]:
        return {run_id: local_job_state(job) for run_id, job in jobs.items()}

    def cancel(self, jobs: list[dict]) -> list[str]:
        # As submitit's LocalJob.cancel: SIGINT makes the local controller kill its worker
        # (which, like every submitit job, ignores SIGTERM) and exit. Only a process that is
        # still the job's own is signalled, never whatever now holds a recycled PID.
        by_id = {job["job_id"]: job for job in jobs}
        return sorted(pid for pid, job in by_id.items() if signal_job_process(job, signal.SIGINT))

    def submit_finisher(self, sweep: Path, then: str, after: list[str], profile: dict) -> dict:
        # A process of its own session, detached from the launcher's terminal like the jobs' controllers,
        # that polls the manifest's jobs (rotsweep.launch.finish.wait_then_run).
        log_path = store.jobs_dir(sweep) / "then.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(os.devnull, "rb") as devnull, open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "rotsweep.launch.finish", str(Path(sweep).resolve()), then],
                stdin=devnull, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return {"job_id": str(process.pid), "process": process_start(process.pid), "log": str(log_path)}

    def describe_jobs(self, report) -> str:
        return (f"local jobs: {report.jobs} at once on this machine, {report.runs_per_job} run(s) each "
                f"in sequence, {report.threads_per_job} torch thread(s) each")


def local_cpu_threads(max_parallel: int) -> int:
    return max(1, (os.cpu_count() or 1) // max_parallel)


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



@contextlib.contextmanager
def detached_children(sweep: Path):
    """Local jobs start with stdin from /dev/null and stdout/stderr appended to jobs/local-controllers.log.

    submitit's LocalExecutor starts each job's controller process with this
    process's own standard streams. A controller holding them open would keep
    `rotsweep launch ... --executor local | tail -1` waiting until the whole
    sweep ends. Children inherit file descriptors 0-2 as they are when started,
    so these point at the log for the duration. (A job's runs write to their
    own log.txt and submitit's jobs/<id>_0_log.out|err, as on SLURM.)
    """
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


