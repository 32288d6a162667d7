"""Submission: runs packed into jobs, handed to a backend's submitit executor, recorded in the manifest.

Launching is idempotent: every run is identified by its config's run_id and keeps
its own directory, so launching the same command again submits only the runs that
are not finished or in flight (rotsweep.launch.plan), and two runs with the same
config are one run.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import time
from dataclasses import dataclass

import submitit

from rotsweep import store, usercode
from rotsweep.clean import DEFAULT_KEEP, check_keep
from rotsweep.errors import UserError
from rotsweep.launch.backend import Backend
from rotsweep.launch.backends import get_backend
from rotsweep.launch.finish import check_then, finisher_steps, replace_finisher
from rotsweep.launch.job import RunJob
from rotsweep.launch.manifest import sweep_lock, update_manifest
from rotsweep.launch.plan import Plan, PlannedRun, plan_sweep
from rotsweep.launch.profiles import default_profile, load_profile, processes_per_run, run_resources


def pack(runs: list[PlannedRun], runs_per_job: int) -> list[list[PlannedRun]]:
    return [runs[i : i + runs_per_job] for i in range(0, len(runs), runs_per_job)]


def check_submission_options(executor: str, max_parallel: int | None, runs_per_job: int) -> Backend:
    """The executor's backend, once the packing options are known to be valid."""
    backend = get_backend(executor)
    if runs_per_job < 1:
        raise UserError(f"--runs-per-job must be at least 1, got {runs_per_job}")
    if max_parallel is not None and max_parallel < 1:
        raise UserError(f"--max-parallel must be at least 1, got {max_parallel}")
    return backend


def check_divides_accumulation(runs: list[PlannedRun], processes: int) -> None:
    """Each process accumulates accumulation / processes micro-batches, so it must divide every run's."""
    for run in runs:
        if run.config.accumulation % processes:
            raise UserError(
                f"run {run.config.run_id} accumulates {run.config.accumulation} micro-batches per step, which "
                f"cannot be shared out over {processes} processes; choose GPUs per run dividing "
                f"{run.config.accumulation}, or --set accumulation to a multiple of {processes}"
            )


@dataclass
class Submission:
    jobs: int
    runs: int
    job_ids: list[str]
    then: dict | None = None  # the finisher's manifest record (rotsweep.launch.finish), if one was submitted


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
    then: str | None = None,
) -> Submission:
    """Submit the plan's runs; returns as soon as the scheduler has them.

    gpus_per_run / nodes_per_run spread each run over several processes (see run_resources).
    keep_checkpoints: what each run keeps of its checkpoint once finished (rotsweep.clean; not
    a RunConfig field, so no run_id depends on it).
    then: gather, plot or report once every job of the sweep has ended (rotsweep.launch.finish);
    a finisher recorded by an earlier launch is replaced whenever this one submits jobs.
    """
    backend = check_submission_options(executor, max_parallel, runs_per_job)
    check_keep(keep_checkpoints)
    check_then(then)
    profile = run_resources(load_profile(profile_name or default_profile(plan.scale)), gpus_per_run, nodes_per_run)
    check_divides_accumulation(plan.to_submit, processes_per_run(profile))
    backend.check_reachable()
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
        submission = submit_locked(plan, backend, profile, profile_name, max_parallel, runs_per_job, data_dir,
                                   keep_checkpoints)
        steps = finisher_steps(plan.sweep, then, submits_jobs=bool(submission.jobs))
        if steps:
            submission.then = replace_finisher(plan.sweep, steps, backend, profile)
        return submission


def submit_locked(
    plan: Plan, backend: Backend, profile: dict, profile_name: str | None, max_parallel: int | None,
    runs_per_job: int, data_dir: str | None, keep_checkpoints: str = DEFAULT_KEEP,
) -> Submission:
    """submit()'s work, done while holding the sweep's lock."""
    runs = plan.to_submit
    packed = backend.packing(len(runs), max_parallel, runs_per_job)
    max_parallel = packed.max_parallel
    groups = pack(runs, packed.runs_per_job)
    # Locally a job starts each run's processes itself; on SLURM they are the job's tasks.
    jobs_to_make = [RunJob([str(run.run_dir) for run in group], data_dir, packed.threads,
                           backend.processes_started_by_job(profile), keep_checkpoints, plan.code_path)
                    for group in groups]
    for job in jobs_to_make:
        pickle.dumps(job)  # fail here, not on the node, if something cannot be pickled

    manifest = update_manifest(plan, backend.name, profile_name, keep_checkpoints)
    for run in runs:
        ready_for_submission(run)
    if not groups:
        return Submission(0, 0, [])

    chosen = backend.make_executor(plan.sweep, profile, max_parallel, f"rotsweep-{plan.experiment}")
    array_limit = backend.array_limit(len(groups))
    job_ids: list[str] = []
    for start in range(0, len(groups), array_limit):
        chunk_groups = groups[start : start + array_limit]
        try:
            # submitit echoes sbatch's complaint to stderr before raising it: keep it for the one-line error.
            with contextlib.redirect_stderr(io.StringIO()), backend.submitting(plan.sweep), chosen.batch():
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
                    "job_id": job.job_id, "executor": backend.name, "submitted": time.time(),
                    **backend.job_record(job.job_id),
                }
        store.write_manifest(plan.sweep, manifest)  # after each array: nothing submitted is forgotten
    return Submission(len(groups), len(runs), job_ids)


def ready_for_submission(run: PlannedRun) -> None:
    """Write config.json, and drop a stale failure status so the run reads as queued."""
    store.prepare_run_dir(run.config, run.run_dir)
    if run.state.state in ("failed", "cancelled"):
        store.write_status(run.run_dir, "pending", resubmitted_after=run.state.state)


def require_data(plan: Plan, data_dir: str | None) -> None:
    """Paper-scale runs need their data sets: say so before anything is submitted."""
    from rotsweep.data import require_dataset

    for name in sorted({run.config.dataset for run in plan.to_submit}):
        require_dataset(name, data_dir=data_dir)
