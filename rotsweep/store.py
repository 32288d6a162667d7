"""Atomic file writes, so that no reader ever sees a half-written file.

Every file is first written to a temporary name in its target directory and
then moved into place with os.replace, which is atomic on POSIX file systems.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from rotsweep.config import RunConfig
from rotsweep.errors import UserError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


TMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success move it over `path`."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TMP_SUFFIX)
    except OSError as error:  # a file where a directory should be, no permission, read-only ...
        raise UserError(f"cannot write {target}: {error.strerror or error}; "
                        f"{target.parent} must be a writable directory") from None
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600 files; give them the usual umask-based mode, so that other
    # users of a shared cluster file system can read results.
    tmp.chmod(0o666 & ~_UMASK)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` (a directory or
    nothing) with two renames, so `path` is always a whole old or a whole new directory (between
    the renames, briefly, absent). On failure the temporary directory is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=TMP_SUFFIX))
    scratch.chmod(0o777 & ~_UMASK)  # mkdtemp makes it 0700
    try:
        yield scratch
        previous = None
        if target.exists():
            previous = target.with_name(f".{target.name}.previous-{os.getpid()}{TMP_SUFFIX}")
            os.replace(target, previous)
        os.replace(scratch, target)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def remove_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files atomic_path left in `directory` when its process was killed.

    Only for a directory that no other process writes to at the time (a run directory
    when its run starts); returns what was deleted.
    """
    stale = [path for path in Path(directory).glob(f".*{TMP_SUFFIX}") if path.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def check_output_dir(directory: str | os.PathLike) -> None:
    """A UserError unless `directory` is, or can be created as, a writable directory.

    Called before anything is computed or written, so that a bad output path fails at once.
    """
    directory = Path(directory)
    existing = directory
    while not existing.exists():
        if existing.is_symlink() or existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "is a file" if existing == directory else f"is inside {existing}, which is a file"
        raise UserError(f"{directory} {what}; give a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write in {existing} (permission denied); give a directory you can write to")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_parquet(path: str | os.PathLike, table: pd.DataFrame | pa.Table) -> None:
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def parquet_snapshot(path: str | os.PathLike) -> pq.ParquetFile:
    """A Parquet file read into memory through one open: whole even if a writer replaces it meanwhile.

    Files here are replaced by renaming a new one over them (atomic_path). pq.read_table(path)
    opens the path more than once, and between two opens may read the new file's pages with the
    old file's footer ("Page was smaller than expected": 1231 of 3000 reads against a writer in a
    loop, 0 of 3000 this way). For the small files of a run and of results/.
    """
    return pq.ParquetFile(pa.BufferReader(Path(path).read_bytes()))


# --- The layout of a sweep and of its run directories --------------------------------------
#
#   SWEEP/manifest.json                what the sweep is: experiment, scale, grid, run_ids, jobs
#   SWEEP/runs/<run_id>/config.json    one directory per run (see rotsweep.train)
#   SWEEP/launch.lock                  flock'ed by a launch or cancel while it plans and writes the manifest
#   SWEEP/jobs/                        submitit's folder: submission scripts, pickles, job logs,
#                                      local-controllers.log (output of local jobs' controllers)
#   SWEEP/results/*.parquet            written by `rotsweep gather`
#   SWEEP/figures/*.png|pdf            written by `rotsweep plot`

MANIFEST_FILE = "manifest.json"
LOCK_FILE = "launch.lock"
CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.parquet"  # every metric row up to the last checkpoint
# The rows measured since the last checkpoint, one part per eval (part-<step>.parquet), so that
# readers follow a run between checkpoints; folded into metrics.parquet at each checkpoint.
LIVE_METRICS_DIR = "metrics.live"
DYNAMICS_DIR = "dynamics.parquet"  # a directory of part files, one per checkpoint
# In a run's dynamics directory, beside its parts: which parts the run wrote (rotsweep.dynamics;
# part files are named part-<first step>-<last step>.parquet). The leading "_" keeps Parquet
# readers of the directory from taking it for data.
PARTS_RECORD = "_parts.json"
# The dynamics rows' `stat` of a weight's fan-in C (the size of one neuron's weight vector), a
# constant per weight. Here and not in rotsweep.dynamics (which writes it) so that the analysis,
# which reads it, does not import torch.
FAN_IN = "fan_in"
CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "weights.pt"  # a finished run's final weights, when its checkpoint was dropped (rotsweep.clean)
LOG_FILE = "log.txt"

RUN_STATUSES = ("pending", "running", "done", "diverged", "failed", "preempted")
FINISHED_STATUSES = ("done", "diverged")


def runs_dir(sweep: str | os.PathLike) -> Path:
    return Path(sweep) / "runs"


def run_dir(sweep: str | os.PathLike, run_id: str) -> Path:
    return runs_dir(sweep) / run_id


def jobs_dir(sweep: str | os.PathLike) -> Path:
    return Path(sweep) / "jobs"


def prepare_run_dir(config: RunConfig, run_dir: str | os.PathLike) -> None:
    """Create run_dir with config.json, refusing a directory that belongs to another config."""
    run_dir = Path(run_dir)
    check_output_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / CONFIG_FILE
    if config_path.exists():
        existing = RunConfig.load(config_path)
        if existing != config:
            raise UserError(
                f"{run_dir} holds run {existing.run_id}, not {config.run_id}; choose another --out directory"
            )
    else:
        write_text(config_path, config.canonical_json() + "\n")


def write_status(run_dir: str | os.PathLike, status: str, **fields: Any) -> None:
    assert status in RUN_STATUSES, status
    write_json(Path(run_dir) / STATUS_FILE, {"status": status, "updated": time.time(), **fields})


def read_status(run_dir: str | os.PathLike) -> dict:
    """The run's status.json, or {"status": "pending"} when the run has not started."""
    try:
        return read_json(Path(run_dir) / STATUS_FILE)
    except FileNotFoundError:
        return {"status": "pending"}


def read_manifest(sweep: str | os.PathLike) -> dict | None:
    path = Path(sweep) / MANIFEST_FILE
    return read_json(path) if path.exists() else None


def write_manifest(sweep: str | os.PathLike, manifest: dict) -> None:
    write_json(Path(sweep) / MANIFEST_FILE, manifest)


# --- Metric rows: metrics.parquet plus the live parts written since its checkpoint -----------
#
# A run appends the rows of each eval as a new part in metrics.live/ (append_live_metrics); at
# a checkpoint it rewrites metrics.parquet with every row and then deletes the parts
# (clear_live_metrics). A kill between the two leaves parts whose rows metrics.parquet already
# holds, so a reader takes from the parts only the rows past metrics.parquet's last step.

METRICS_SCHEMA = pa.schema([
    ("step", pa.int64()), ("epoch", pa.float64()), ("split", pa.string()), ("metric", pa.string()),
    ("value", pa.float64()),
])


def metrics_table(rows: list[dict]) -> pa.Table:
    """Metric rows ({step, epoch, split, metric, value} dicts) as a METRICS_SCHEMA table."""
    return pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)


def live_part_name(step: int) -> str:
    return f"part-{step:012d}.parquet"


def append_live_metrics(run_dir: str | os.PathLike, rows: list[dict], step: int) -> None:
    """Write the rows measured since the last write as the live part of the eval at `step`."""
    write_parquet(Path(run_dir) / LIVE_METRICS_DIR / live_part_name(step), metrics_table(rows))


def live_metric_parts(run_dir: str | os.PathLike) -> list[Path]:
    """The run's live parts in step order (names are zero-padded steps); temporaries excluded."""
    directory = Path(run_dir) / LIVE_METRICS_DIR
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.glob("part-*.parquet"))


def clear_live_metrics(run_dir: str | os.PathLike) -> None:
    """Delete the live parts (after metrics.parquet holds their rows, or to measure them again)."""
    directory = Path(run_dir) / LIVE_METRICS_DIR
    for path in live_metric_parts(run_dir):
        path.unlink(missing_ok=True)
    if directory.is_dir():
        remove_temporaries(directory)


def read_metrics(run_dir: str | os.PathLike) -> pa.Table:
    """Every metric row the run has written so far (METRICS_SCHEMA), checkpointed or live.

    The parts are listed and read before metrics.parquet: a part that a checkpoint deletes
    meanwhile is then in the metrics.parquet read afterwards, so no row is missed. Raises
    what pyarrow raises (OSError, ValueError, ArrowException) for an unreadable file.
    """
    run_dir = Path(run_dir)
    parts = []
    for path in live_metric_parts(run_dir):
        try:
            parts.append(_read_metrics_file(path))
        except FileNotFoundError:
            pass  # folded into metrics.parquet by a checkpoint since the listing
    try:
        saved = _read_metrics_file(run_dir / METRICS_FILE)
    except FileNotFoundError:
        saved = METRICS_SCHEMA.empty_table()
    if not parts:
        return saved
    live = pa.concat_tables(parts)
    if saved.num_rows:
        last_saved = pa.compute.max(saved["step"]).as_py()
        live = live.filter(pa.compute.greater(live["step"], last_saved))
    return pa.concat_tables([saved, live])


def _read_metrics_file(path: Path) -> pa.Table:
    """One metrics file as METRICS_SCHEMA; a ValueError naming it (as in the run directory) if unreadable."""
    name = path.name if path.name == METRICS_FILE else f"{LIVE_METRICS_DIR}/{path.name}"
    try:
        table = parquet_snapshot(path).read()
    except FileNotFoundError:
        raise
    except (OSError, ValueError, pa.ArrowException) as error:
        raise ValueError(f"{name}: {(str(error).strip().splitlines() or [''])[0]}") from None
    missing = [column for column in METRICS_SCHEMA.names if column not in table.column_names]
    if missing:
        raise ValueError(f"{name}: missing column(s) {', '.join(missing)}")
    return table.select(METRICS_SCHEMA.names).cast(METRICS_SCHEMA)
