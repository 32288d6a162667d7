"""The sweep's manifest.json (what was launched, how, and which job runs each run) and its lock.

Launches and cancels of one sweep take turns under a lock on a file in the
sweep (sweep_lock): a launch plans again once it holds the lock, so a run is
submitted by one launch only, and no launch loses another's manifest entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rotsweep import __version__, store
from rotsweep.clean import DEFAULT_KEEP
from rotsweep.errors import UserError
from rotsweep.launch.backend import run_command
from rotsweep.launch.backends import EXECUTORS

if TYPE_CHECKING:
    from rotsweep.launch.plan import Plan


def first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else ""


def read_manifest_checked(sweep: Path) -> dict | None:
    """The sweep's manifest.json (None if it has none); a UserError if it is not one rotsweep wrote."""
    path = Path(sweep) / store.MANIFEST_FILE
    try:
        manifest = store.read_manifest(sweep)
    except (OSError, ValueError) as error:
        manifest, why = None, f"{type(error).__name__}: {first_line(error)}"
    else:
        why = None if manifest is None else _manifest_problem(manifest)
    if why:
        raise UserError(f"{path} is unreadable ({why}); move it away (finished runs are found again by their "
                        "run_id) and launch again")
    return manifest


def _manifest_problem(manifest) -> str | None:
    if not isinstance(manifest, dict):
        return "not a JSON object"
    if not all(isinstance(manifest.get(key), str) for key in ("experiment", "model", "scale")):
        return "no experiment, model and scale"
    runs, jobs = manifest.get("runs", []), manifest.get("jobs", {})
    if not isinstance(runs, list) or not all(isinstance(run_id, str) for run_id in runs):
        return "\"runs\" is not a list of run ids"
    overrides, seeds = manifest.get("overrides") or [], manifest.get("seeds") or []
    if not isinstance(overrides, list) or not all(isinstance(item, str) and "=" in item for item in overrides):
        return "\"overrides\" is not a list of key=value"
    if not isinstance(seeds, list) or not all(isinstance(seed, int) for seed in seeds):
        return "\"seeds\" is not a list of integers"
    if not isinstance(jobs, dict) or not all(
            isinstance(job, dict) and isinstance(job.get("job_id"), str) and job.get("executor") in EXECUTORS
            for job in jobs.values()):
        return "\"jobs\" is not a table of jobs"
    return None



@contextlib.contextmanager
def sweep_lock(sweep: Path):
    """Hold the sweep's lock (flock on SWEEP/launch.lock) while planning and writing the manifest.

    Launches and cancels of one sweep take turns, so two launches at once cannot
    both submit a run or lose each other's manifest entries. The kernel releases
    the lock when its holder exits, even when killed: a stale lock cannot remain.
    """
    Path(sweep).mkdir(parents=True, exist_ok=True)
    with open(Path(sweep) / store.LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield



def update_manifest(plan: Plan, executor: str, profile_name: str | None, keep_checkpoints: str = DEFAULT_KEEP) -> dict:
    manifest = store.read_manifest(plan.sweep) or {
        **plan.manifest_identity(),
        "created": time.time(),
        "runs": [],
        "jobs": {},
        "launches": [],
    }
    known = set(manifest["runs"])
    manifest["runs"] += [run.config.run_id for run in plan.runs if run.config.run_id not in known]
    manifest["axes"] = plan.axes
    if plan.sweep_file is not None:
        manifest["sweep_file"] = plan.sweep_file  # its latest text: a relaunch from the directory uses it
    if plan.experiment_model not in (None, plan.model):
        manifest["experiment_model"] = plan.experiment_model
    manifest["code_version"] = code_version()
    if plan.code_path:
        manifest["code_path"] = plan.code_path  # the latest launch's: relaunches and jobs import from there
    manifest["launches"].append({
        "time": time.time(), "executor": executor, "profile": profile_name, "keep_checkpoints": keep_checkpoints,
        "submitted": [run.config.run_id for run in plan.to_submit],
    })
    store.write_manifest(plan.sweep, manifest)
    return manifest


def code_version() -> str:
    """rotsweep's version and, in a git checkout, the commit (marked -dirty with local changes)."""
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = run_command(["git", "-C", str(repo), "describe", "--always", "--dirty"], timeout=5)
        if commit.returncode == 0:
            return f"{__version__}+{commit.stdout.strip()}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return __version__



def load_sweep(sweep: Path) -> dict:
    manifest = read_manifest_checked(sweep)
    if manifest is None:
        raise UserError(f"{sweep} is not a sweep directory (no {store.MANIFEST_FILE}); launch one with `rotsweep launch`")
    return manifest
