"""Disk space of finished runs: what is kept of their checkpoints (--keep-checkpoints) and `rotsweep clean`.

A run's checkpoint.pt holds everything to resume it: the model, the optimizer state (for Adam
and Lion-like optimizers one or two tensors the size of the model), the recorder, the RNG
state and the metrics. Once the run has finished (status done or diverged, which nothing
resumes: train.run returns at once on a finished run), only the model weights can still be
useful, e.g. to evaluate them again. The choices:

    all    keep checkpoint.pt as written (to inspect the optimizer state)
    last   keep the final weights only: weights.pt = {"step", "model"}; checkpoint.pt is removed
    none   keep nothing; the run's results (status.json, metrics, dynamics) stay

Default: last. It frees most of a checkpoint (the optimizer state: ~2/3 of it for AdamW,
~1/2 for SGDM and Lion), keeps what a researcher may still load after the sweep, and loses
nothing that the analysis reads (it reads status.json, metrics.parquet and dynamics.parquet
only). Unfinished runs (pending, running, preempted, failed) are never touched: they resume
from their checkpoint.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from rotsweep import store
from rotsweep.errors import UserError

KEEP_CHOICES = ("all", "last", "none")
DEFAULT_KEEP = "last"


def check_keep(keep: str) -> str:
    if keep not in KEEP_CHOICES:
        raise UserError(f"unknown checkpoint policy {keep!r}; choose one of {', '.join(KEEP_CHOICES)}")
    return keep


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def bytes_freed(run_dir: Path, keep: str) -> int:
    """What apply(run_dir, keep) would free, in bytes; for last an estimate: the checkpoint less
    the bytes of the model tensors that weights.pt keeps (its few bytes of framing not counted)."""
    checkpoint, weights = run_dir / store.CHECKPOINT_FILE, run_dir / store.WEIGHTS_FILE
    if keep == "all":
        return 0
    if keep == "none":
        return _size(checkpoint) + _size(weights)
    if not checkpoint.exists():
        return 0
    import torch

    model = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    return max(0, _size(checkpoint) - sum(t.numel() * t.element_size() for t in model.values()))


def apply(run_dir: str | os.PathLike, keep: str) -> int:
    """Apply `keep` to a finished run's directory; returns the bytes freed. Idempotent, and safe
    against a concurrent apply on the same run (the job's own and `rotsweep clean`'s)."""
    import torch

    check_keep(keep)
    run_dir = Path(run_dir)
    if store.read_status(run_dir).get("status") not in store.FINISHED_STATUSES:
        raise UserError(f"{run_dir} has not finished; only finished runs' checkpoints can be dropped")
    checkpoint, weights = run_dir / store.CHECKPOINT_FILE, run_dir / store.WEIGHTS_FILE
    before = _size(checkpoint) + _size(weights)
    if keep == "last" and checkpoint.exists():
        try:
            # weights_only: tensors and plain values only, as train.read_checkpoint reads it.
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except FileNotFoundError:  # removed by a concurrent apply since exists()
            state = None
        if state is not None:
            with store.atomic_path(weights) as tmp:
                torch.save({"step": state["step"], "model": state["model"]}, tmp)
    if keep in ("last", "none"):
        checkpoint.unlink(missing_ok=True)
    if keep == "none":
        weights.unlink(missing_ok=True)
    return max(0, before - _size(checkpoint) - _size(weights))


@dataclass
class Cleaning:
    """What `clean` did (or would do, dry_run): per finished run the bytes freed; the rest skipped."""

    sweep: str
    keep: str
    dry_run: bool
    freed: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # run_id: its state

    def to_dict(self) -> dict:
        return {"sweep": self.sweep, "keep": self.keep, "dry_run": self.dry_run, "freed": self.freed,
                "bytes_freed": sum(self.freed.values()), "skipped": self.skipped}

    def format(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        total = sum(self.freed.values())
        lines = [f"{self.sweep}: {verb} {total / 2**20:.1f} MiB from {sum(1 for b in self.freed.values() if b)} "
                 f"finished run(s) (keep {self.keep}); {len(self.skipped)} unfinished run(s) left alone"]
        lines += [f"  {run_id}  {size / 2**20:8.2f} MiB" for run_id, size in self.freed.items() if size]
        return "\n".join(lines)


def clean(sweep: str | os.PathLike, keep: str = DEFAULT_KEEP, dry_run: bool = False) -> Cleaning:
    """Apply `keep` to every finished run of the sweep (never to unfinished ones) and record it in
    the manifest; with dry_run, only report what it would free."""
    check_keep(keep)
    sweep = Path(sweep)
    runs = store.runs_dir(sweep)
    if not runs.is_dir():
        raise UserError(f"{sweep} is not a sweep (no {runs}); give the directory `rotsweep launch` wrote")
    report = Cleaning(str(sweep), keep, dry_run)
    for run_dir in sorted(path for path in runs.iterdir() if path.is_dir()):
        try:
            state = store.read_status(run_dir).get("status")
        except (OSError, ValueError):  # a status.json being replaced or damaged: not provably finished
            state = "unreadable"
        if state not in store.FINISHED_STATUSES:
            report.skipped[run_dir.name] = state
            continue
        report.freed[run_dir.name] = bytes_freed(run_dir, keep) if dry_run else apply(run_dir, keep)
    if not dry_run and store.read_manifest(sweep) is not None:
        from rotsweep.launch.manifest import sweep_lock  # the manifest has one writer at a time

        with sweep_lock(sweep):
            manifest = store.read_manifest(sweep)
            manifest.setdefault("cleanings", []).append(
                {"time": time.time(), "keep": keep, "bytes_freed": sum(report.freed.values()),
                 "runs": sorted(run_id for run_id, size in report.freed.items() if size)})
            store.write_manifest(sweep, manifest)
    return report
