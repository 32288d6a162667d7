"""The SLURM backend: job arrays through submitit, states from sacct/squeue, scancel.

Also the one place that renders submitit's sbatch script without submitting it
(the dry run's header, and the types a profile's slurm_* keys must have).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import submitit

from rotsweep import store
from rotsweep.errors import UserError
from rotsweep.launch.backend import Backend, run_command, submitit_executor


class SlurmBackend(Backend):
    name = "slurm"
    runs_on_this_machine = False

    def check_reachable(self) -> None:
        check_slurm_reachable()

    def make_executor(self, sweep: Path, profile: dict, max_parallel: int | None, name: str):
        from rotsweep.launch.profiles import processes_per_run

        parameters = dict(profile)
        if processes_per_run(parameters) > 1:
            # Whole job down when one task fails (a dead rank), not the others hanging on it.
            parameters.setdefault("slurm_srun_args", ["--kill-on-bad-exit=1"])
        if max_parallel:
            parameters["slurm_array_parallelism"] = max_parallel
        return submitit_executor("slurm", sweep, name, parameters)

    def array_limit(self, jobs: int) -> int:
        return max_array_size()

    def job_states(self, jobs: dict[str, dict]) -> dict[str, str]:
        states = slurm_job_states([job["job_id"] for job in jobs.values()])
        return {run_id: states[job["job_id"]] for run_id, job in jobs.items() if job["job_id"] in states}

    def cancel(self, jobs: list[dict]) -> list[str]:
        job_ids = sorted({job["job_id"] for job in jobs})
        if job_ids:
            result = run_command(["scancel", *job_ids])
            if result.returncode != 0:
                raise UserError(f"scancel failed: {result.stderr.strip()}")
        return job_ids

    def submit_finisher(self, sweep: Path, then: str, after: list[str], profile: dict) -> dict:
        from rotsweep.launch.finish import FinishJob

        # One CPU in the sweep's partition (and account, qos), held by sbatch until each array has
        # ended: afterany on an array's id waits for all of its tasks, whatever their outcome.
        parameters = {"timeout_min": 60, "cpus_per_task": 1, "mem_gb": min(profile.get("mem_gb", 4), 4),
                      **{key: profile[key] for key in ("slurm_partition", "slurm_account", "slurm_qos")
                         if key in profile}}
        arrays = sorted({job_id.split("_")[0] for job_id in after}, key=int)
        if arrays:
            parameters["slurm_dependency"] = "afterany:" + ":".join(arrays)
        executor = submitit_executor("slurm", sweep, f"rotsweep-then-{then}", parameters)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                job = executor.submit(FinishJob(str(Path(sweep).resolve()), then))
        except submitit.core.utils.FailedJobError as error:
            refusal = str(error).strip().splitlines()[-1] if str(error).strip() else "no reason given"
            raise UserError(f"the scheduler refused the job that runs {then} after the sweep ({refusal}); "
                            "the sweep's runs are submitted: launch again with the same --then") from None
        return {"job_id": job.job_id, **({"dependency": parameters["slurm_dependency"]} if arrays else {})}

    def prepare_task(self) -> None:
        from rotsweep import distributed

        distributed.export_slurm_env()

    def dry_run_profile(self, resources: dict) -> dict | None:
        return resources

    def dry_run_header(self, resources: dict, sweep: Path, name: str, jobs: int, max_parallel: int | None) -> str | None:
        return sbatch_header(resources, sweep, name, jobs, max_parallel) if jobs else None

    def describe_jobs(self, report) -> str:
        return f"slurm jobs: {report.jobs}; resources per job: {report.profile}"


def check_slurm_reachable() -> None:
    """A one-line UserError unless a SLURM controller answers."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        raise UserError(
            "SLURM is not installed here (no sbatch on PATH); use --executor local, "
            "or start the test cluster with `bash slurm/cluster.sh start`"
        )
    try:
        ping = run_command(["scontrol", "ping"], timeout=20)
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
    result = run_command(["scontrol", "show", "config"])
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
    result = run_command(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(wanted)])
    states = parse_job_states(result.stdout, separator="|")
    missing = [job_id for job_id in wanted if job_id not in states]
    if missing and shutil.which("squeue"):
        # Accounting lags behind a fresh submission and a job that just ended. The controller
        # knows both: -t all also lists the jobs it ended in the last MinJobAge (300 s by
        # default), -r each array task on its own line.
        queued = run_command(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(missing)])
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

