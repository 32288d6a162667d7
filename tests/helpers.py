"""Small helpers shared by the test modules that launch real sweeps."""

from __future__ import annotations

import time
from pathlib import Path

from rotsweep import launch


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
