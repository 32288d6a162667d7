"""Small helpers shared by the test modules that launch real sweeps."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from rotsweep import launch, store
from rotsweep.errors import UserError
from rotsweep.launch.local import is_job_process
from rotsweep.launch.slurm import check_slurm_reachable


def slurm_problem() -> str | None:
    """None when the SLURM controller answers, else why not."""
    try:
        check_slurm_reachable()
    except UserError as error:
        return str(error)
    return None


# Outside CI a test of the real cluster is skipped when none answers; under CI (.ci/run starts the
# cluster) it runs and fails with the reason instead (tests/conftest.py turns such skips into failures).
_SLURM_PROBLEM = slurm_problem()  # asked once per test process (each ask runs scontrol)
needs_slurm = pytest.mark.skipif(
    _SLURM_PROBLEM is not None and not os.environ.get("CI"),
    reason=f"no SLURM controller ({_SLURM_PROBLEM}); start one with `bash slurm/cluster.sh start`",
)


def wait_until_stopped(sweep: Path, timeout: float = 600.0) -> dict:
    """The sweep's status report (as `status --json` prints it) once every run has stopped and
    every local job process has exited; an AssertionError after `timeout` s.

    A local job writes its last lines into SWEEP/jobs/ after its runs' status.json says done, so a
    test that compares the sweep's files before and after something waits for the processes too.
    """
    deadline = time.time() + timeout
    while True:
        report = launch.sweep_status(sweep)
        if launch.all_stopped(report):
            break
        if time.time() > deadline:
            raise AssertionError(f"sweep still running after {timeout} s: {report.format(all_runs=True)}")
        time.sleep(1.0)
    jobs = [job for job in (store.read_manifest(sweep) or {}).get("jobs", {}).values() if job["executor"] == "local"]
    while any(is_job_process(job) for job in jobs):
        if time.time() > deadline:
            raise AssertionError(f"local job processes of {sweep} still alive after {timeout} s")
        time.sleep(0.2)
    return report.to_dict()
