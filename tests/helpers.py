"""Small helpers shared by the test modules that launch real sweeps."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from rotsweep import launch
from rotsweep.errors import UserError
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
needs_slurm = pytest.mark.skipif(
    slurm_problem() is not None and not os.environ.get("CI"),
    reason=f"no SLURM controller ({slurm_problem()}); start one with `bash slurm/cluster.sh start`",
)


def wait_until_stopped(sweep: Path, timeout: float = 600.0) -> dict:
    """The sweep's status report (as `status --json` prints it) once every run has stopped;
    an AssertionError after `timeout` s."""
    deadline = time.time() + timeout
    while True:
        report = launch.sweep_status(sweep)
        if launch.all_stopped(report):
            return report.to_dict()
        if time.time() > deadline:
            raise AssertionError(f"sweep still running after {timeout} s: {report.format(all_runs=True)}")
        time.sleep(1.0)
