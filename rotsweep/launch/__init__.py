"""Plan, submit and follow sweeps: SLURM job arrays through submitit, or this machine.

A sweep is a directory (see rotsweep.store for its layout). The package follows
submitit's own shape:

    backend.py    what a scheduler backend provides (the Backend class), the job-state vocabulary
    slurm.py      the SLURM backend: arrays, sacct/squeue states, scancel, MaxArraySize, sbatch header
    local.py      the local backend: a bounded pool of processes on this machine
    backends.py   the registry of backends by executor name, job states of a whole manifest
    profiles.py   cluster profiles (slurm/NAME.toml) and the resources of one run's job
    plan.py       the state of each run and what a launch submits (writes nothing)
    manifest.py   SWEEP/manifest.json and the sweep's lock
    job.py        RunJob: what runs on a node
    submit.py     packing runs into jobs and submitting them
    labels.py     how a run is named to a person (variant label, one-line description)
    dryrun.py     DryRun: everything a launch would do, without doing it
    status.py     SweepStatus (one screen at any size), cancel, log paths

Below is what the command line (rotsweep.cli) and the demo (rotsweep.demo) use.
"""

from rotsweep.launch.backends import EXECUTORS, get_backend
from rotsweep.launch.dryrun import DryRun, dry_run
from rotsweep.launch.job import RunJob  # also here: jobs pickled by release 0.1 name it rotsweep.launch.RunJob
from rotsweep.launch.plan import SCALES, Plan, make_file_plan, make_plan, make_relaunch_plan
from rotsweep.launch.status import (STOPPED_STATES, SweepStatus, all_stopped, cancel, log_paths,
                                    sweep_status, watch_status)
from rotsweep.launch.submit import Submission, submit

__all__ = ["EXECUTORS", "SCALES", "STOPPED_STATES", "DryRun", "Plan", "RunJob", "Submission",
           "SweepStatus", "all_stopped", "cancel", "dry_run", "get_backend", "log_paths", "make_file_plan", "make_plan",
           "make_relaunch_plan", "submit", "sweep_status", "watch_status"]
