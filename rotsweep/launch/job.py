"""The job: what runs on a node (or in a local job's process), pickled by submitit at submission."""

from __future__ import annotations

import os
from pathlib import Path

import submitit

from rotsweep import store, usercode
from rotsweep.clean import DEFAULT_KEEP
from rotsweep.config import RunConfig
from rotsweep.launch.backends import BACKENDS


class RunJob(submitit.helpers.Checkpointable):
    """Trains a list of run directories one after the other; requeued on preemption.

    On preemption or timeout submitit calls `checkpoint` (the default returns
    this same job) and requeues it; each run then resumes from its own last
    checkpoint, and finished runs are skipped.
    """

    # Fields added since release 0.1. A job pickled before them (and requeued after an upgrade)
    # has none of them in its state, and reads these class defaults instead.
    local_processes: int = 1
    keep_checkpoints: str = DEFAULT_KEEP
    code_path: tuple[str, ...] | list[str] = ()

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

        usercode.add_to_sys_path(self.code_path)
        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0")) or None
        if threads:
            torch.set_num_threads(threads)
        backend = BACKENDS.get(os.environ.get("SUBMITIT_EXECUTOR", ""))  # set by submitit in every job
        if backend is not None:
            backend.prepare_task()
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
                    clean.apply(run_dir, self.keep_checkpoints)
            except distributed.RankLost:
                raise  # the process group is gone: no later run of this job could start either
            except Exception as error:  # recorded in the run's status.json and log.txt
                results[config.run_id] = "failed"
                failures.append(f"{config.run_id}: {type(error).__name__}: {error}")
        distributed.shutdown()  # a task of a multi-task job leaves its process group before it exits
        if failures:
            # Fail the job too, so that the scheduler's view agrees with the runs'.
            raise RuntimeError("runs failed: " + "; ".join(failures))
        return results
