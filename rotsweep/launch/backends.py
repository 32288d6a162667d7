"""The registry of scheduler backends, keyed by executor name (`--executor`, a manifest job's "executor")."""

from __future__ import annotations

from rotsweep.errors import UserError
from rotsweep.launch.backend import Backend
from rotsweep.launch.local import LocalBackend
from rotsweep.launch.slurm import SlurmBackend

BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (SlurmBackend(), LocalBackend())}
EXECUTORS = tuple(BACKENDS)


def get_backend(executor: str) -> Backend:
    try:
        return BACKENDS[executor]
    except KeyError:
        raise UserError(f"unknown executor {executor!r}; choose {' or '.join(EXECUTORS)}") from None


def job_states(jobs: dict[str, dict]) -> dict[str, str]:
    """{run_id: job state} for the runs in a manifest's `jobs` table: one question per backend."""
    states: dict[str, str] = {}
    for name, backend in BACKENDS.items():
        states.update(backend.job_states({run_id: job for run_id, job in jobs.items() if job["executor"] == name}))
    result = {}
    for run_id, job in jobs.items():
        state = states.get(run_id)
        if job.get("cancelled") and state in (None, "COMPLETED"):
            state = "CANCELLED"  # local jobs: we killed the process ourselves
        result[run_id] = state
    return result
