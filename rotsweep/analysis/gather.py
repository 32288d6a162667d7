"""Gather a sweep's run directories into four Parquet tables in SWEEP/results/.

    runs.parquet      one row per run (every run of the manifest, and any run directory
                      not in it): run_id, sweep, experiment, in_manifest, status, the
                      RunConfig fields (dicts such as model_options as canonical JSON),
                      eta_lambda,
                      steps_done, total_steps, wall_s, error, final and best metrics,
                      the Table 1 predictions and the measured rotation summaries below
    curves.parquet    run_id, step, epoch, split, metric, value     (store.read_metrics of every run)
    dynamics.parquet/ run_id, step, param, stat, reduction, neuron, value  (every part file),
                      a directory of one file per run, <run_id>.parquet
    layers.parquet    one row per run x weight tensor: its equilibrium rotation and norm

Rows are in run_id order, each run's rows together and in the order of its files.
At paper scale the dynamics reach billions of rows (846 ResNet-18 runs of ~0.8 million,
one GPT-2 run of ~50 million), so they are never held whole: dynamics.parquet/ is a
dataset that pandas, pyarrow and DuckDB open as one table (pd.read_parquet(path),
pyarrow.dataset.dataset(path), read_parquet('path/*.parquet')) and that readers filter
without loading it. read_dynamics() reads only the files of the runs asked for, with
the stat/reduction/param filters pushed into the Parquet scan.

Memory. gather streams: each run's dynamics parts are read BATCH_ROWS rows at a time,
written to the run's file and reduced to its layers.parquet rows on the way; curves are
written a batch at a time and merged with the previous gather's file as a stream. What
stays in memory is a few batches per reading thread (gather(batch_rows=, threads=)) and
the small tables (runs, layers: one row per run or per run x weight), so peak memory
does not grow with the number of runs or with a run's rows (benchmarks/bench_gather.py:
a few hundred MB at the defaults).

Metrics. For each (split, metric) of SUMMARY_METRICS: final_<split>_<metric> is the
value at the last recorded step (NaN included: a diverged run ends on its NaN or inf
train loss), best_<split>_<metric> the best finite value (max for top1, min otherwise).
For an unfinished run "final" is the last value so far; its status says so.

Predictions (Table 1, rotsweep.theory, at the run's peak lr; NaN where Table 1 needs
gradient statistics rather than hyperparameters):
    eta_r_hat   η̂_r: AdamW sqrt(2ηλ(1−β1)/(1+β1)), SGDM sqrt(2ηλ/(1+α)), Lion
                sqrt(πηλK). Adam+ℓ2 (eq. 94) needs ⟨1, sqrt(E[g̃²])⟩: NaN. A rotational
                run (Algorithm 1) rotates at the η̂_r of rv_eta_r_from when it is set
                (Adam+ℓ2 directions with AdamW's rotation, Appendix J), otherwise at its
                own optimizer's. Imbalanced runs get the nominal value.
    eta_g_hat   η̂_g per coordinate (C = 1): AdamW and Adam+ℓ2 η·sqrt((1−β1)/(1+β1)),
                Lion η. SGDM needs E‖g‖²: NaN.
    norm_hat    ‖ω̂‖ per coordinate (C = 1): AdamW sqrt(η/(2λ)), Lion sqrt(η/(πKλ)).
                NaN for SGDM and Adam+ℓ2 (gradient statistics), for λ = 0 (no
                equilibrium: the norm grows without bound) and for rotational runs
                (Algorithm 1 keeps every neuron at its initial norm).
A neuron of fan-in C has sqrt(C) times the per-coordinate η̂_g and ‖ω̂‖; η̂_r does not
depend on C.

Measured rotation. A run's equilibrium window is its recorded steps in
[WINDOW[0], WINDOW[1]] x total_steps = [25%, 75%]: past the initial transient
(§5.2, eq. 16) and before the end of a decaying schedule, where the rotation lags
the learning rate. total_steps and the resolved warmup (runs.parquet's
warmup_total_steps) are status.json's, else config.steps / config.warmup_steps,
else epochs x the steps per epoch that the curves' epoch column implies.
For every weight tensor with angular_update rows in the window, layers.parquet has
    eta_r            mean over the window of the mean-over-neurons angular update
                     (stat angular_update, reduction mean), in radians per step
    eta_r_predicted  mean over the same steps of η̂_r at each step's scheduled lr
                     (rotsweep.schedule.learning_rate; NaN when the schedule cannot be
                     reconstructed or Table 1 needs gradient statistics)
    eta_r_ratio      eta_r / eta_r_predicted (1 = in equilibrium as predicted)
    norm             mean over the window of the mean-over-neurons norm
    imbalance_neurons  std over the sampled neurons (reduction sample) of log of each
                     neuron's mean angular update in the window
    fan_in           C, the size of one neuron's weight vector (the recorder's fan_in
                     rows), for Table 1's norm predictions
and runs.parquet summarises a run's layers as
    eta_r_measured     mean over layers of eta_r
    imbalance_layers   std over layers of log(eta_r): 0 when every layer rotates alike
    imbalance_neurons  mean over layers of imbalance_neurons
All stds are population stds (ddof=0). Logs skip layers and neurons that did not move
(a rotation of 0, e.g. a weight that got no gradient). Runs without dynamics in the
window get NaN. The dynamics `step` is the 0-based index of the optimizer step it
measured, whose lr is learning_rate(config, step, ...) (rotsweep.train).

Robustness. A file that cannot be read (truncated Parquet, invalid JSON, missing or
mistyped columns, a config that RunConfig refuses) is reported as a Problem (run id,
file, reason) and skipped; the run keeps a row with what could be read. Jobs may be
writing while we read: their files are replaced atomically, but a dynamics part can
vanish between listing and reading (a resumed run deletes parts past its checkpoint).
A run is therefore read until its files' signature (name, size, mtime_ns, inode) is
the same before and after reading; a run still changing after READ_ATTEMPTS keeps
what the last attempt read and is read again by the next gather. A part file damaged
after its footer keeps the rows read before the damage.

Gaps. rotsweep.dynamics records the parts a run wrote in dynamics.parquet/_parts.json;
a recorded part that is gone is a Problem (its steps are missing from the layers).
Runs recorded before that file existed are not checked.

Symbolic links. gather reads and writes only inside the sweep: a run directory, a run's
file or a results/ path that is a symbolic link leading out of the sweep is not
followed. Run directories and files are reported as Problems and skipped; results/
paths are refused (UserError) before anything is written.

Incremental. results/.gather-cache.json records each run's signature, problems,
membership of the manifest and dynamics file, the signatures of the other outputs, and a key (schema
version, the source of the modules that compute the rows, sweep name, experiment).
Gathering again reads only the runs for which one of these changed, takes every
other run's rows from the previous outputs (its dynamics file stays as it is), and
writes nothing when no run changed.
A different key, or outputs that are not the ones the cache describes, make a full
gather (as does gather(..., full=True)). The problems of unchanged runs are
reported again from the cache.

Types. Every table has a fixed Arrow schema (the RunConfig columns follow
RunConfig's annotations) and carries SCHEMA_VERSION under the Parquet key-value
metadata key b"rotsweep.schema_version"; pandas, pyarrow and DuckDB read the files
as they are; each file of dynamics.parquet/ carries it too. All writes go through
rotsweep.store (atomic per file). Identical inputs give byte-identical outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rotsweep import config as config_module
from rotsweep import schedule, store, theory
from rotsweep.analysis import results
from rotsweep.config import RunConfig
from rotsweep.errors import UserError
from rotsweep.store import FAN_IN, PARTS_RECORD

# The tables' schemas, paths and readers live in rotsweep.analysis.results; gather re-exports
# them (gather.read_results, gather.read_dynamics, gather.TABLES, ...) for older callers.
from rotsweep.analysis.results import (  # noqa: F401
    CONFIG_TYPES, CURVES_SCHEMA, DYNAMICS_FILE_SCHEMA, DYNAMICS_SCHEMA, FLOAT, INT, JSON_FIELDS,
    LAYERS_SCHEMA, METRICS_FILE_SCHEMA, RESULTS_DIR, RUNS_SCHEMA, SCHEMA_VERSION, SCHEMA_VERSION_KEY,
    STRING, SUMMARY_COLUMNS, SUMMARY_METRICS, TABLES, _checked_output, output_paths, predicted_rotation,
    predictions, read_dynamics, read_results, scheduled_rotation,
)

CACHE_FILE = ".gather-cache.json"
WINDOW = (0.25, 0.75)
READ_ATTEMPTS = 3
# Arrow decodes Parquet without holding the GIL: a few threads overlap the many small reads.
READ_THREADS = 4
# Rows of dynamics (or curves) decoded at a time per thread, ~50 MB each: what bounds memory.
BATCH_ROWS = 1 << 19

# What can go wrong reading a file that is not a bug of ours: I/O, bad JSON, bad Parquet,
# columns that do not cast, a config RunConfig refuses.
READ_ERRORS = (OSError, ValueError, TypeError, pa.ArrowException, UserError)

# --- The report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    run_id: str | None  # None for the sweep's own files (manifest.json)
    file: str  # relative to the run directory (or the sweep, for manifest.json)
    reason: str


@dataclass
class GatherReport:
    sweep: Path
    runs: int  # rows of runs.parquet
    read: int  # run directories read by this gather
    unchanged: int  # runs whose rows came from the previous gather
    skipped: int  # runs with at least one file skipped (see problems)
    missing: int  # runs of the manifest without a directory (rows with status pending)
    problems: list[Problem]
    outputs: dict[str, Path]
    written: bool  # False when nothing changed and results/ was left as it was

    def to_dict(self) -> dict:
        return {
            "sweep": str(self.sweep),
            "runs": self.runs,
            "read": self.read,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "missing": self.missing,
            "problems": [dataclasses.asdict(problem) for problem in self.problems],
            "outputs": {name: str(path) for name, path in self.outputs.items()},
            "written": self.written,
        }

    def format(self) -> str:
        lines = [
            f"gathered {self.sweep}: {self.runs} runs ({self.read} read, {self.unchanged} unchanged"
            + (f", {self.missing} without a directory" if self.missing else "") + ")"
        ]
        if self.problems:
            lines.append(f"{len(self.problems)} file(s) skipped:")
            lines += [f"  {problem.run_id or '-'} {problem.file}: {problem.reason}" for problem in self.problems]
        if self.written:
            lines.append(f"wrote {', '.join(str(path) for path in self.outputs.values())}")
        else:
            lines.append(f"nothing changed: {self.sweep / RESULTS_DIR} left as it was")
        return "\n".join(lines)


# --- Reading one run directory -------------------------------------------------------------


def _stat_entry(name: str, stat: os.stat_result) -> list:
    return [name, stat.st_size, stat.st_mtime_ns, stat.st_ino]


def _outside(path: Path, root: Path) -> Path | None:
    """Where `path` leads when symbolic links take it out of the sweep `root` (resolved), else None."""
    target = path.resolve()
    return None if target.is_relative_to(root) else target


def _outside_entry(name: str, target: Path) -> list:
    """The signature entry of a file that leads out of the sweep: never read, reported."""
    return [name, "outside", str(target), 0]


def _outside_reason(target: Path) -> str:
    return f"a symbolic link to {target}, outside the sweep: not read (move it into the sweep)"


def run_signature(run_dir: Path, root: Path | None = None) -> list[list]:
    """[name, size, mtime_ns, inode] of every file gather reads; [] for a missing directory.

    os.replace gives the new file a new inode, so a rewrite is seen even within the
    resolution of mtime. With `root` (the resolved sweep), a run directory leading out of
    it counts as missing, and a file or dynamics directory leading out of it gets an
    _outside_entry instead of being read.
    """
    if root is not None and _outside(run_dir, root) is not None:
        return []
    entries = []
    for directory, prefix, wanted in (
        (run_dir, "", lambda name: name in (store.CONFIG_FILE, store.STATUS_FILE, store.METRICS_FILE)),
        (run_dir / store.LIVE_METRICS_DIR, f"{store.LIVE_METRICS_DIR}/", lambda name: name.startswith("part-")),
        (run_dir / store.DYNAMICS_DIR, f"{store.DYNAMICS_DIR}/",
         lambda name: name == PARTS_RECORD or (name.startswith("part-") and name.endswith(".parquet"))),
    ):
        if root is not None and directory != run_dir and (target := _outside(directory, root)) is not None:
            if directory.exists():
                entries.append(_outside_entry(prefix.rstrip("/"), target))
            continue
        try:
            with os.scandir(directory) as scan:
                for entry in scan:
                    if not wanted(entry.name):
                        continue
                    try:
                        if root is not None and entry.is_symlink() and (
                                target := _outside(Path(entry.path), root)) is not None:
                            entries.append(_outside_entry(prefix + entry.name, target))
                        else:
                            entries.append(_stat_entry(prefix + entry.name, entry.stat()))
                    except FileNotFoundError:
                        pass  # deleted since the listing: it is not part of the run any more
        except (FileNotFoundError, NotADirectoryError):
            pass
    return sorted(entries)


@dataclass
class RunFiles:
    """What one run directory held when it was read, reduced to its rows of the results."""

    run_id: str
    config: RunConfig | None = None
    status: dict | None = None  # None when status.json cannot be read
    curves: pa.Table = field(default_factory=METRICS_FILE_SCHEMA.empty_table)
    layers: pd.DataFrame | None = None  # its layers.parquet rows (None: no window to measure in)
    total_steps: int | None = None  # the schedule's length and warmup, None where unknown
    warmup_steps: int | None = None
    dynamics_rows: int = 0  # rows written to its dynamics.parquet/ file
    problems: list[Problem] = field(default_factory=list)
    signature: list | None = None  # None: still changing, read it again next time
    vanished: bool = False  # a listed file disappeared while we read


def _read_config(path: Path) -> RunConfig:
    values = json.loads(path.read_text())
    if not isinstance(values, dict):
        raise ValueError("not a JSON object")
    return RunConfig.from_dict(values)


def _read_status(path: Path) -> dict:
    status = json.loads(path.read_text())
    if not isinstance(status, dict) or not isinstance(status.get("status"), str):
        raise ValueError("no \"status\" string")
    for key, types in (("step", int), ("total_steps", int), ("wall_s", (int, float)), ("error", str)):
        value = status.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise ValueError(f"{key}={value!r} has the wrong type")
    return status


def _read_parquet(path: Path, schema: pa.Schema) -> pa.Table:
    # One read of the whole (small) file (store.parquet_snapshot): whole even if the run replaces
    # it meanwhile, and cheaper than letting Arrow open it. Threads are ours (READ_THREADS), not Arrow's.
    with store.parquet_snapshot(path) as file:
        _check_columns(file, schema)
        table = file.read(columns=schema.names, use_threads=False)
    return table.select(schema.names).cast(schema)


def _check_columns(file: pq.ParquetFile, schema: pa.Schema) -> None:
    names = file.schema_arrow.names
    missing = [name for name in schema.names if name not in names]
    if missing:
        raise ValueError(f"missing column(s) {', '.join(missing)}")


def _part_batches(path: Path, batch_rows: int):
    """A dynamics part's rows, batch_rows at a time, as DYNAMICS_FILE_SCHEMA tables.

    The file stays open while we read: a snapshot even if the job replaces or deletes it.
    """
    with pq.ParquetFile(pa.OSFile(str(path))) as file:
        _check_columns(file, DYNAMICS_FILE_SCHEMA)
        for batch in file.iter_batches(batch_size=batch_rows, columns=DYNAMICS_FILE_SCHEMA.names,
                                       use_threads=False):
            yield pa.Table.from_batches([batch]).select(DYNAMICS_FILE_SCHEMA.names).cast(DYNAMICS_FILE_SCHEMA)


def _read_parts_record(path: Path) -> dict[str, dict]:
    record = json.loads(path.read_text())
    parts = record.get("parts") if isinstance(record, dict) else None
    if not isinstance(parts, dict) or not all(isinstance(entry, dict) for entry in parts.values()):
        raise ValueError("no \"parts\" object")
    return parts


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _with_run_id(table: pa.Table, run_id: str, schema: pa.Schema) -> pa.Table:
    """A run's rows (without run_id) with its id in front, as `schema`."""
    ids = pa.array([run_id], STRING).take(pa.array(np.zeros(table.num_rows, dtype=np.int32)))
    return table.add_column(0, schema.field("run_id"), ids).replace_schema_metadata(None)


def _read_files(run_id: str, run_dir: Path, signature: list, out: Path, batch_rows: int) -> RunFiles:
    """Read the files of `signature`, writing the run's dynamics to `out` (its dynamics.parquet/ file).

    An unreadable file is a Problem, a vanished one sets `vanished`.
    """
    run = RunFiles(run_id)
    names = [entry[0] for entry in signature]
    outside = {entry[0]: entry[2] for entry in signature if entry[1] == "outside"}
    for name, target in outside.items():
        run.problems.append(Problem(run_id, name, _outside_reason(Path(target))))

    def read(name, reader, *args):
        try:
            return reader(run_dir / name, *args)
        except FileNotFoundError:
            run.vanished = True
        except READ_ERRORS as error:
            run.problems.append(Problem(run_id, name, _reason(error)))
        return None

    def readable(name):
        return name in names and name not in outside

    if readable(store.CONFIG_FILE):
        run.config = read(store.CONFIG_FILE, _read_config)
    elif names and store.CONFIG_FILE not in outside:
        run.problems.append(Problem(run_id, store.CONFIG_FILE, "missing"))
    run.status = read(store.STATUS_FILE, _read_status) if readable(store.STATUS_FILE) else (
        None if store.STATUS_FILE in outside else {"status": "pending"})
    live = [name for name in names if name.startswith(store.LIVE_METRICS_DIR)]  # rows since the checkpoint
    if (readable(store.METRICS_FILE) or live) and not {store.METRICS_FILE, *live} & outside.keys():
        curves = read(store.METRICS_FILE, lambda path: store.read_metrics(path.parent).cast(METRICS_FILE_SCHEMA))
        if curves is not None:
            run.curves = curves

    parts = [name for name in names if name.startswith(f"{store.DYNAMICS_DIR}/part-") and name not in outside]
    record_name = f"{store.DYNAMICS_DIR}/{PARTS_RECORD}"
    if readable(record_name):
        recorded = read(record_name, _read_parts_record) or {}
        for part, entry in sorted(recorded.items()):
            if f"{store.DYNAMICS_DIR}/{part}" not in names:
                run.problems.append(Problem(run_id, f"{store.DYNAMICS_DIR}/{part}", (
                    f"missing: {PARTS_RECORD} records it (steps {entry.get('first_step')}-{entry.get('last_step')}, "
                    f"{entry.get('rows')} rows); those steps are a gap in the run's dynamics and layers")))

    curves_frame = _with_run_id(run.curves, run_id, CURVES_SCHEMA).to_pandas()
    run.total_steps, run.warmup_steps = _schedule_lengths(
        run, _steps_per_epoch(curves_frame).get(run_id, math.nan))
    window = None
    if run.total_steps is not None:
        window = (math.ceil(WINDOW[0] * run.total_steps), math.floor(WINDOW[1] * run.total_steps))
    layers = _LayerMeasure(run_id, window, step_predictor(run.config, run.total_steps, run.warmup_steps))

    metadata = {SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()}
    with store.atomic_path(out) as tmp, pq.ParquetWriter(tmp, DYNAMICS_SCHEMA.with_metadata(metadata)) as writer:
        for name in parts:
            try:
                for rows in _part_batches(run_dir / name, batch_rows):
                    writer.write_table(_with_run_id(rows, run_id, DYNAMICS_SCHEMA), row_group_size=batch_rows)
                    run.dynamics_rows += rows.num_rows
                    layers.add(rows)
            except FileNotFoundError:
                run.vanished = True
            except READ_ERRORS as error:
                run.problems.append(Problem(run_id, name, _reason(error)))
    run.layers = layers.rows()
    return run


def read_run(run_id: str, run_dir: Path, out: Path, *, root: Path | None = None,
             batch_rows: int = BATCH_ROWS) -> RunFiles:
    """Read a run directory into its rows, writing its dynamics to `out`; again while a job
    rewrites it under us (module docstring)."""
    for _ in range(READ_ATTEMPTS):
        before = run_signature(run_dir, root)
        run = _read_files(run_id, run_dir, before, out, batch_rows)
        if not run.vanished and run_signature(run_dir, root) == before:
            run.signature = before
            return run
    return run  # signature None: read again by the next gather


# --- Predictions ---------------------------------------------------------------------------


# --- From run files to table rows ----------------------------------------------------------


def _summarize_metrics(curves: pd.DataFrame) -> pd.DataFrame:
    """final_* and best_* of SUMMARY_METRICS, one row per run_id."""
    latest = curves.sort_values("step", kind="stable").drop_duplicates(["run_id", "split", "metric"], keep="last")
    finite = curves[np.isfinite(curves["value"])]
    columns = {}
    for split, metric, better in SUMMARY_METRICS:
        name = f"{split}_{metric}"
        rows = latest[(latest["split"] == split) & (latest["metric"] == metric)]
        columns[f"final_{name}"] = rows.set_index("run_id")["value"]
        if better:
            rows = finite[(finite["split"] == split) & (finite["metric"] == metric)]
            columns[f"best_{name}"] = rows.groupby("run_id")["value"].agg(better)
    return pd.DataFrame(columns)


def _steps_per_epoch(curves: pd.DataFrame) -> pd.Series:
    """Optimizer steps per epoch, from train.py's epoch = step / steps_per_epoch."""
    rows = curves[curves["epoch"] > 0].drop_duplicates("run_id")
    return (rows["step"] / rows["epoch"]).round().set_axis(rows["run_id"])


def _schedule_lengths(run: RunFiles, steps_per_epoch: float) -> tuple[int | None, int | None]:
    """(total_steps, warmup_steps) as train.Lengths computed them, None where unknown."""
    config, status = run.config, run.status or {}
    known = not math.isnan(steps_per_epoch)
    total = status.get("total_steps")
    if total is None and config is not None:
        if config.steps is not None:
            total = config.steps
        elif known:
            total = max(1, round(config.epochs * steps_per_epoch))
    if status.get("warmup_steps") is not None:  # train.py records the warmup it resolved
        warmup = status["warmup_steps"]
    elif config is None:
        warmup = None
    elif config.warmup_steps or not config.warmup_epochs:
        warmup = config.warmup_steps
    else:
        warmup = round(config.warmup_epochs * steps_per_epoch) if known else None
    return total, warmup


class _LayerMeasure:
    """layers.parquet's rows of one run (module docstring), from its dynamics a batch at a time.

    Each batch is reduced at once to per-layer sums and counts (of angular updates, of their
    predictions, of norms), per-neuron sums and counts of the sampled angular updates, and
    the layer's recorded steps, so memory does not grow with the run's rows. Means are
    sums / counts of the finite values, as pandas' mean; the fixed order of the sums makes
    the same files always give the same bits.
    """

    def __init__(self, run_id: str, window: tuple[int, int] | None, predict):
        self.run_id, self.window, self.predict = run_id, window, predict
        self.sums: list[pd.DataFrame] = []  # per (stat, param): sum, count, predicted sum and count
        self.fan_ins: list[pd.Series] = []  # per param, the first fan_in of each batch
        self.neuron_sums: list[pd.DataFrame] = []  # per (param, neuron): sum, count
        self.steps: dict[str, list[np.ndarray]] = {}  # per param: the steps with an angular_update mean

    def add(self, rows: pa.Table) -> None:
        if self.window is None:
            return
        first, last = self.window
        step, stat, reduction = rows["step"], rows["stat"], rows["reduction"]
        in_window = pc.and_(pc.greater_equal(step, first), pc.less_equal(step, last))
        rotation = pc.equal(stat, "angular_update")
        means = pc.or_(pc.and_(pc.or_(rotation, pc.equal(stat, "norm")), pc.equal(reduction, "mean")),
                       pc.equal(stat, FAN_IN))
        means = rows.filter(pc.and_(in_window, means)).select(["step", "param", "stat", "value"]).to_pandas()
        fan_in = means["stat"] == FAN_IN
        self.fan_ins.append(means[fan_in].groupby("param")["value"].first())
        means = means[~fan_in]
        steps = np.unique(means["step"].to_numpy())  # η̂_r once per recorded step
        predicted = pd.Series(self.predict(steps) if len(steps) else np.empty(0), index=steps, dtype=float)
        means = means.assign(predicted=means["step"].map(predicted).where(means["stat"] == "angular_update"))
        self.sums.append(means.groupby(["stat", "param"]).agg(
            sum=("value", "sum"), count=("value", "count"), predicted=("predicted", "sum"),
            predicted_count=("predicted", "count")))
        for param, group in means[means["stat"] == "angular_update"].groupby("param"):
            self.steps.setdefault(param, []).append(np.unique(group["step"].to_numpy()))
        samples = rows.filter(pc.and_(in_window, pc.and_(rotation, pc.equal(reduction, "sample"))))
        samples = samples.select(["param", "neuron", "value"]).to_pandas()
        self.neuron_sums.append(samples.groupby(["param", "neuron"])["value"].agg(["sum", "count"]))

    def rows(self) -> pd.DataFrame | None:
        """The run's layers rows (LAYERS_SCHEMA's columns), None without a window."""
        if self.window is None:
            return None
        sums = pd.concat(self.sums).groupby(level=["stat", "param"]).sum() if self.sums else None
        if sums is None or "angular_update" not in sums.index.get_level_values("stat"):
            return pd.DataFrame(columns=LAYERS_SCHEMA.names)
        rotation = sums.loc["angular_update"]
        layers = pd.DataFrame({
            "window_steps": pd.Series({param: len(np.unique(np.concatenate(steps)))
                                       for param, steps in self.steps.items()}),
            "eta_r": rotation["sum"] / rotation["count"],
            "eta_r_predicted": rotation["predicted"] / rotation["predicted_count"],
        }).rename_axis("param")
        layers["window_start"], layers["window_end"] = self.window
        layers["eta_r_ratio"] = (layers["eta_r"] / layers["eta_r_predicted"]).where(layers["eta_r_predicted"] > 0)
        if "norm" in sums.index.get_level_values("stat"):
            layers["norm"] = sums.loc["norm", "sum"] / sums.loc["norm", "count"]
        else:
            layers["norm"] = math.nan
        layers["fan_in"] = pd.concat(self.fan_ins).groupby(level=0).first().astype("Int64")
        neurons = pd.concat(self.neuron_sums).groupby(level=["param", "neuron"]).sum()
        per_neuron = neurons["sum"] / neurons["count"]
        moved = per_neuron[per_neuron > 0]
        layers["imbalance_neurons"] = np.log(moved).groupby(level="param").std(ddof=0) if len(moved) else math.nan
        layers = layers.reset_index()
        layers.insert(0, "run_id", self.run_id)
        return layers[LAYERS_SCHEMA.names]


def _summarize_layers(layers: pd.DataFrame) -> pd.DataFrame:
    """eta_r_measured, imbalance_layers, imbalance_neurons per run_id."""
    by_run = layers.groupby("run_id")
    moved = layers[layers["eta_r"] > 0]
    return pd.DataFrame({
        "eta_r_measured": by_run["eta_r"].mean(),
        "imbalance_layers": np.log(moved["eta_r"]).groupby(moved["run_id"]).std(ddof=0),
        "imbalance_neurons": by_run["imbalance_neurons"].mean(),
    })


def _run_row(run: RunFiles, sweep_name: str, experiment: str | None, in_manifest: bool) -> dict:
    """The run's runs.parquet row: config.json, status.json, its curves' and layers' summaries."""
    status = run.status or {}
    row = {
        "run_id": run.run_id, "sweep": sweep_name, "experiment": experiment, "in_manifest": in_manifest,
        "status": status.get("status"), "steps_done": status.get("step", 0 if run.status else None),
        "total_steps": run.total_steps, "warmup_total_steps": run.warmup_steps, "wall_s": status.get("wall_s"),
        "error": status.get("error"),
    }
    if run.config is not None:
        config = run.config
        for name in CONFIG_TYPES:
            value = getattr(config, name)
            row[name] = json.dumps(value, sort_keys=True, separators=(",", ":")) if name in JSON_FIELDS else value
        row["eta_lambda"] = config.eta_lambda
        try:
            row.update(predictions(config))
        except (ArithmeticError, UserError):  # hyperparameters outside the formulas' range (e.g. momentum 1)
            pass
    metrics = _summarize_metrics(_with_run_id(run.curves, run.run_id, CURVES_SCHEMA).to_pandas())
    layers = _summarize_layers(run.layers) if run.layers is not None and len(run.layers) else pd.DataFrame()
    if len(metrics) or len(layers):  # NaN, not null, for what a run with either summary lacks
        row.update(dict.fromkeys([*SUMMARY_COLUMNS, "eta_r_measured", "imbalance_layers", "imbalance_neurons"],
                                 math.nan))
        for summary in (metrics, layers):
            if len(summary):
                row.update(summary.iloc[0].to_dict())
    return row


def step_predictor(config: RunConfig | None, total_steps: int, warmup_steps: int | None):
    """steps -> η̂_r at each step's scheduled lr (NaN when the config or the warmup length is unknown)."""
    if config is None or warmup_steps is None:
        return lambda steps: np.full(len(steps), math.nan)
    return functools.partial(scheduled_rotation, config, total_steps=total_steps, warmup_steps=warmup_steps)


# --- The sweep: scan, cache, merge, write ---------------------------------------------------


def _source_hash(*modules) -> str:
    return hashlib.sha256(b"".join(Path(module.__file__).read_bytes() for module in modules)).hexdigest()[:16]


# The rows depend on the code that computes them (as this process imported it): a cache made by
# other code is not used. store reads a run's metrics (store.read_metrics: metrics.parquet + live parts).
CODE_HASH = _source_hash(sys.modules[__name__], results, store, theory, schedule, config_module)


def _cache_key(sweep_name: str, experiment: str | None) -> dict:
    return {"schema_version": SCHEMA_VERSION, "code": CODE_HASH, "sweep": sweep_name, "experiment": experiment}


def _file_signature(path: Path) -> list | None:
    try:
        return _stat_entry(path.name, path.stat())
    except FileNotFoundError:
        return None


def _table_signatures(outputs: dict[str, Path]) -> dict:
    """Signatures of the single-file outputs (dynamics' files are in each run's cache entry)."""
    return {name: _file_signature(path) for name, path in outputs.items() if name != "dynamics"}


def _load_cache(results: Path, key: dict) -> dict | None:
    """The previous gather's cache, if it describes the outputs as they are and was made with this key."""
    try:
        cache = store.read_json(results / CACHE_FILE)
    except (OSError, ValueError):
        return None
    if not isinstance(cache, dict) or cache.get("key") != key or not isinstance(cache.get("runs"), dict):
        return None
    outputs = output_paths(results.parent)
    if cache.get("outputs") != _table_signatures(outputs):
        return None
    for run_id, entry in cache["runs"].items():
        dynamics_file = outputs["dynamics"] / f"{run_id}.parquet"
        if not isinstance(entry, dict) or entry.get("dynamics") != _file_signature(dynamics_file):
            return None
    return cache


def recorded_problems(sweep: str | os.PathLike) -> list[Problem]:
    """The per-run problems (files skipped) of the sweep's last gather, as its cache recorded them.

    Figures are drawn from the gathered tables alone; this is how they tell what those tables
    lack. An unreadable cache records nothing.
    """
    try:
        cache = store.read_json(Path(sweep) / RESULTS_DIR / CACHE_FILE)
        entries = cache["runs"]
        return [Problem(run_id, file, reason) for run_id, entry in sorted(entries.items())
                for file, reason in entry.get("problems", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def _read_manifest(sweep: Path, problems: list[Problem]) -> tuple[str | None, list[str]]:
    """(experiment, run ids) of manifest.json; a bad manifest is a Problem, not an error."""
    try:
        manifest = store.read_manifest(sweep)
        if manifest is None:
            return None, []
        runs = manifest.get("runs", [])
        if not isinstance(runs, list) or not all(isinstance(run_id, str) for run_id in runs):
            raise ValueError("\"runs\" is not a list of run ids")
        experiment = manifest.get("experiment")
        return (experiment if isinstance(experiment, str) else None), runs
    except READ_ERRORS + (AttributeError,) as error:
        problems.append(Problem(None, store.MANIFEST_FILE, _reason(error)))
        return None, []


def _run_directories(sweep: Path, root: Path, problems: list[Problem]) -> set[str]:
    """The run directories in runs/; those leading out of the sweep are Problems, not runs."""
    runs = store.runs_dir(sweep)
    if runs.exists() and (target := _outside(runs, root)) is not None:
        problems.append(Problem(None, runs.name, _outside_reason(target)))
        return set()
    directories = set()
    try:
        with os.scandir(runs) as scan:
            for entry in scan:
                if entry.name.startswith("."):
                    continue
                if entry.is_symlink() and (target := _outside(Path(entry.path), root)) is not None:
                    problems.append(Problem(None, f"{runs.name}/{entry.name}", _outside_reason(target)))
                elif entry.is_dir():
                    directories.add(entry.name)
    except FileNotFoundError:
        pass
    return directories


def _refuse_outputs_outside(sweep: Path, root: Path) -> None:
    """Refuse results/ paths that would make us write out of the sweep through a symbolic link."""
    results = sweep / RESULTS_DIR
    for path in (results, results / CACHE_FILE, *output_paths(sweep).values()):
        target = _outside(path, root)
        if target is not None:
            raise UserError(f"{path} leads out of the sweep, to {target}; gather writes only inside the sweep: "
                            f"remove the symbolic link (gather rebuilds {RESULTS_DIR}/ from the run directories)")


def _run_blocks(table: pa.Table) -> dict[str, pa.Table]:
    """Each run's rows, for a table whose runs are contiguous blocks (as gather writes them)."""
    run_ids = pc.unique(table["run_id"])
    codes = pc.index_in(table["run_id"], value_set=run_ids).to_numpy()
    starts = np.flatnonzero(np.diff(codes, prepend=-1))
    ends = np.append(starts[1:], len(codes))
    names = run_ids.take(pa.array(codes[starts])).to_pylist()
    return {name: table.slice(start, end - start) for name, start, end in zip(names, starts, ends)}


def _merge(path: Path, schema: pa.Schema, new: pa.Table, replaced: set[str]) -> pa.Table:
    """The previous (small) table's rows of the runs not replaced, and the new rows, in run_id order."""
    previous = pq.read_table(path, schema=schema).replace_schema_metadata(None)
    blocks = {run_id: rows for run_id, rows in _run_blocks(previous).items() if run_id not in replaced}
    blocks.update(_run_blocks(new))
    return pa.concat_tables([blocks[run_id] for run_id in sorted(blocks)]) if blocks else new


def _kept_blocks(path: Path, schema: pa.Schema, kept: set[str], batch_rows: int):
    """(run_id, rows) of the runs in `kept`, streamed from a previous output in its (run_id) order."""
    with pq.ParquetFile(path) as file:
        for batch in file.iter_batches(batch_size=batch_rows, columns=schema.names, use_threads=False):
            for run_id, rows in _run_blocks(pa.Table.from_batches([batch]).cast(schema)).items():
                if run_id in kept:
                    yield run_id, rows


def _write_stream(path: Path, schema: pa.Schema, metadata: dict, blocks, batch_rows: int) -> None:
    """Write (run_id, rows) blocks as one file, batch_rows rows per row group."""
    with store.atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema.with_metadata(metadata)) as writer:
        pending, count = [], 0
        for _, rows in blocks:
            pending.append(rows)
            count += rows.num_rows
            if count >= batch_rows:
                writer.write_table(pa.concat_tables(pending), row_group_size=batch_rows)
                pending, count = [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=batch_rows)


def gather(sweep: str | os.PathLike, *, full: bool = False, batch_rows: int = BATCH_ROWS,
           threads: int = READ_THREADS) -> GatherReport:
    """Read the sweep's run directories that changed and (re)write SWEEP/results/.

    full=True ignores the cache and reads every run. batch_rows and threads bound the
    memory (module docstring): about threads x batch_rows x 100 bytes.
    """
    sweep = Path(sweep)
    if not ((sweep / store.MANIFEST_FILE).is_file() or store.runs_dir(sweep).is_dir()):
        raise UserError(f"{sweep} is not a sweep directory (no {store.MANIFEST_FILE}, no runs/); "
                        "give the directory that `rotsweep launch` created")
    if batch_rows < 1 or threads < 1:
        raise UserError(f"batch_rows and threads must be positive, got {batch_rows} and {threads}")
    root = sweep.resolve()
    sweep_name = root.name
    _refuse_outputs_outside(sweep, root)
    results = sweep / RESULTS_DIR
    store.check_output_dir(results)  # a results/ that is a file: one line, before any run is read
    outputs = output_paths(sweep)

    problems: list[Problem] = []
    experiment, manifest_runs = _read_manifest(sweep, problems)
    directories = _run_directories(sweep, root, problems)
    listed = set(manifest_runs)
    run_ids = sorted(listed | directories)

    key = _cache_key(sweep_name, experiment)
    cache = None if full else _load_cache(results, key)
    cached = cache["runs"] if cache else {}
    changed = [
        run_id for run_id in run_ids
        if run_id not in cached or cached[run_id]["signature"] is None
        or cached[run_id]["in_manifest"] != (run_id in listed)
        or cached[run_id]["signature"] != run_signature(store.run_dir(sweep, run_id), root)
    ]
    removed = set(cached) - set(run_ids)
    entries = {run_id: entry for run_id, entry in cached.items() if run_id not in removed}
    written = bool(changed or removed or cache is None)

    if written:
        metadata = {SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()}
        dynamics_dir = outputs["dynamics"]
        if dynamics_dir.is_file():  # schema version 3 and before: one file
            dynamics_dir.unlink()
        dynamics_dir.mkdir(parents=True, exist_ok=True)
        run_rows, layer_rows = [], []

        def fresh_curves():
            """Read the changed runs, a few at a time in run_id order, yielding their curves."""
            def read(run_id):
                return read_run(run_id, store.run_dir(sweep, run_id), dynamics_dir / f"{run_id}.parquet",
                                root=root, batch_rows=batch_rows)
            with ThreadPoolExecutor(threads) as pool:
                for start in range(0, len(changed), threads):
                    for run in pool.map(read, changed[start:start + threads]):
                        run_rows.append(_run_row(run, sweep_name, experiment, run.run_id in listed))
                        if run.layers is not None and len(run.layers):
                            layer_rows.append(run.layers)
                        entries[run.run_id] = {
                            "signature": run.signature, "in_manifest": run.run_id in listed,
                            "problems": [[p.file, p.reason] for p in run.problems],
                            "dynamics": _file_signature(dynamics_dir / f"{run.run_id}.parquet"),
                        }
                        yield run.run_id, _with_run_id(run.curves, run.run_id, CURVES_SCHEMA)

        kept = set(entries) - set(changed)
        previous = _kept_blocks(outputs["curves"], CURVES_SCHEMA, kept, batch_rows) if cache else iter(())
        _write_stream(outputs["curves"], CURVES_SCHEMA, metadata,
                      heapq.merge(previous, fresh_curves(), key=lambda block: block[0]), batch_rows)

        new = {
            "runs": pa.Table.from_pylist(run_rows, schema=RUNS_SCHEMA),
            "layers": pa.Table.from_pandas(pd.concat(layer_rows, ignore_index=True), schema=LAYERS_SCHEMA,
                                           preserve_index=False) if layer_rows else LAYERS_SCHEMA.empty_table(),
        }
        for name, table in new.items():
            if cache is not None:
                table = _merge(outputs[name], TABLES[name], table, set(changed) | removed)
            store.write_parquet(outputs[name], table.replace_schema_metadata(metadata))
        # Files of runs no longer in the sweep (and, after a full gather, any other stray file).
        for path in dynamics_dir.glob("*.parquet"):
            if path.stem not in entries:
                path.unlink(missing_ok=True)
        # The cache goes last: if we stop before it, the outputs no longer match it and the
        # next gather starts from scratch.
        store.write_json(results / CACHE_FILE, {"key": key, "outputs": _table_signatures(outputs), "runs": entries})

    for run_id in run_ids:
        problems += [Problem(run_id, file, reason) for file, reason in entries[run_id]["problems"]]
    return GatherReport(
        sweep=sweep, runs=len(run_ids), read=len(changed), unchanged=len(run_ids) - len(changed),
        skipped=len({problem.run_id for problem in problems if problem.run_id is not None}),
        missing=len(listed - directories), problems=sorted(problems, key=lambda p: (p.run_id or "", p.file)),
        outputs=outputs, written=written,
    )
