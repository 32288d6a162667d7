"""Gather a sweep's run directories into four Parquet tables in SWEEP/results/.

    runs.parquet      one row per run (every run of the manifest, and any run directory
                      not in it): run_id, sweep, experiment, in_manifest, status, the
                      RunConfig fields (dicts such as model_options as canonical JSON),
                      eta_lambda,
                      steps_done, total_steps, wall_s, error, final and best metrics,
                      the Table 1 predictions and the measured rotation summaries below
    curves.parquet    run_id, step, epoch, split, metric, value     (every metrics.parquet)
    dynamics.parquet  run_id, step, param, stat, reduction, neuron, value  (every part file)
    layers.parquet    one row per run x weight tensor: its equilibrium rotation and norm

Rows are in run_id order, each run's rows together and in the order of its files.

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
what the last attempt read and is read again by the next gather.

Incremental. results/.gather-cache.json records each run's signature, problems and
membership of the manifest, the signatures of the four outputs, and a key (schema
version, the source of the modules that compute the rows, sweep name, experiment).
Gathering again reads only the runs for which one of these changed, takes every
other run's rows from the previous outputs, and writes nothing when no run changed.
A different key, or outputs that are not the ones the cache describes, make a full
gather (as does gather(..., full=True)). The problems of unchanged runs are
reported again from the cache.

Types. Every table has a fixed Arrow schema (the RunConfig columns follow
RunConfig's annotations) and carries SCHEMA_VERSION under the Parquet key-value
metadata key b"rotsweep.schema_version"; pandas, pyarrow and DuckDB read the files
as they are. All writes go through rotsweep.store (atomic).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import typing
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
from rotsweep.config import RunConfig
from rotsweep.errors import UserError
from rotsweep.schedule import learning_rate
from rotsweep.store import FAN_IN

SCHEMA_VERSION = 3
SCHEMA_VERSION_KEY = b"rotsweep.schema_version"
RESULTS_DIR = "results"
CACHE_FILE = ".gather-cache.json"
WINDOW = (0.25, 0.75)
READ_ATTEMPTS = 3
# Arrow decodes Parquet without holding the GIL: a few threads overlap the many small reads.
READ_THREADS = 4

# (split, metric, better): final_<split>_<metric> for each, best_<split>_<metric> where `better` is set.
SUMMARY_METRICS = (
    ("val", "loss", "min"),
    ("val", "top1", "max"),
    ("val", "perplexity", "min"),
    ("train", "loss", None),
)

# What can go wrong reading a file that is not a bug of ours: I/O, bad JSON, bad Parquet,
# columns that do not cast, a config RunConfig refuses.
READ_ERRORS = (OSError, ValueError, TypeError, pa.ArrowException, UserError)


# --- Schemas -------------------------------------------------------------------------------

STRING, INT, FLOAT = pa.string(), pa.int64(), pa.float64()

CURVES_SCHEMA = pa.schema([
    ("run_id", STRING), ("step", INT), ("epoch", FLOAT), ("split", STRING), ("metric", STRING), ("value", FLOAT),
])
DYNAMICS_SCHEMA = pa.schema([
    ("run_id", STRING), ("step", INT), ("param", STRING), ("stat", STRING), ("reduction", STRING),
    ("neuron", INT), ("value", FLOAT),
])
LAYERS_SCHEMA = pa.schema([
    ("run_id", STRING), ("param", STRING), ("window_start", INT), ("window_end", INT), ("window_steps", INT),
    ("eta_r", FLOAT), ("eta_r_predicted", FLOAT), ("eta_r_ratio", FLOAT), ("norm", FLOAT),
    ("imbalance_neurons", FLOAT), ("fan_in", INT),
])


def _base_type(hint) -> type:
    """int for `int | None`, dict for `dict`: the Python type of a RunConfig field's values."""
    (base,) = [t for t in (typing.get_args(hint) or (hint,)) if t is not type(None)]
    return base


# RunConfig's fields and their Python types; dicts (model_options, ...) are stored as canonical JSON strings.
_HINTS = typing.get_type_hints(RunConfig)
CONFIG_TYPES = {f.name: _base_type(_HINTS[f.name]) for f in dataclasses.fields(RunConfig)}
JSON_FIELDS = {name for name, base in CONFIG_TYPES.items() if base is dict}
ARROW_TYPES = {bool: pa.bool_(), int: INT, float: FLOAT, str: STRING, dict: STRING}

SUMMARY_COLUMNS = [
    f"{kind}_{split}_{metric}"
    for split, metric, better in SUMMARY_METRICS
    for kind in (("final", "best") if better else ("final",))
]
RUNS_SCHEMA = pa.schema(
    [("run_id", STRING), ("sweep", STRING), ("experiment", STRING), ("in_manifest", pa.bool_()), ("status", STRING)]
    + [(name, ARROW_TYPES[base]) for name, base in CONFIG_TYPES.items()]
    + [("eta_lambda", FLOAT), ("steps_done", INT), ("total_steps", INT), ("warmup_total_steps", INT),
       ("wall_s", FLOAT), ("error", STRING)]
    + [(name, FLOAT) for name in SUMMARY_COLUMNS]
    + [(name, FLOAT) for name in ("eta_r_hat", "eta_g_hat", "norm_hat")]
    + [(name, FLOAT) for name in ("eta_r_measured", "imbalance_layers", "imbalance_neurons")]
)

TABLES = {"runs": RUNS_SCHEMA, "curves": CURVES_SCHEMA, "dynamics": DYNAMICS_SCHEMA, "layers": LAYERS_SCHEMA}
# The columns of a run's own files: the results tables without run_id.
METRICS_FILE_SCHEMA = pa.schema(list(CURVES_SCHEMA)[1:])
DYNAMICS_FILE_SCHEMA = pa.schema(list(DYNAMICS_SCHEMA)[1:])


def output_paths(sweep: str | os.PathLike) -> dict[str, Path]:
    return {name: Path(sweep) / RESULTS_DIR / f"{name}.parquet" for name in TABLES}


def read_results(sweep: str | os.PathLike, name: str) -> pd.DataFrame:
    """One results table as a DataFrame, refusing one written by another schema version."""
    path = output_paths(sweep)[name]
    try:
        metadata = pq.read_schema(path).metadata or {}
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; run `rotsweep gather {sweep}` first") from None
    except (OSError, ValueError) as error:  # truncated or not Parquet (pyarrow's errors derive from these)
        raise UserError(f"{path} is unreadable ({type(error).__name__}); "
                        f"run `rotsweep gather --full {sweep}` to write it again") from None
    version = metadata.get(SCHEMA_VERSION_KEY, b"?").decode()
    if version != str(SCHEMA_VERSION):
        raise UserError(f"{path} has schema version {version}, not {SCHEMA_VERSION}; "
                        f"run `rotsweep gather {sweep}` again")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is unreadable ({type(error).__name__}); "
                        f"run `rotsweep gather --full {sweep}` to write it again") from None


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


def run_signature(run_dir: Path) -> list[list]:
    """[name, size, mtime_ns, inode] of every file gather reads; [] for a missing directory.

    os.replace gives the new file a new inode, so a rewrite is seen even within the
    resolution of mtime.
    """
    entries = []
    for directory, prefix, wanted in (
        (run_dir, "", lambda name: name in (store.CONFIG_FILE, store.STATUS_FILE, store.METRICS_FILE)),
        (run_dir / store.DYNAMICS_DIR, f"{store.DYNAMICS_DIR}/",
         lambda name: name.startswith("part-") and name.endswith(".parquet")),
    ):
        try:
            with os.scandir(directory) as scan:
                for entry in scan:
                    if wanted(entry.name):
                        try:
                            entries.append(_stat_entry(prefix + entry.name, entry.stat()))
                        except FileNotFoundError:
                            pass  # deleted since the listing: it is not part of the run any more
        except (FileNotFoundError, NotADirectoryError):
            pass
    return sorted(entries)


@dataclass
class RunFiles:
    """What one run directory held when it was read."""

    run_id: str
    config: RunConfig | None = None
    status: dict | None = None  # None when status.json cannot be read
    curves: pa.Table = field(default_factory=METRICS_FILE_SCHEMA.empty_table)
    dynamics: pa.Table = field(default_factory=DYNAMICS_FILE_SCHEMA.empty_table)
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
    # One read of the whole (small) file: a snapshot even if the file is replaced meanwhile,
    # and cheaper than letting Arrow open it. Threads are ours (READ_THREADS), not Arrow's.
    with pq.ParquetFile(pa.BufferReader(path.read_bytes())) as file:
        names = file.schema_arrow.names
        missing = [name for name in schema.names if name not in names]
        if missing:
            raise ValueError(f"missing column(s) {', '.join(missing)}")
        table = file.read(columns=schema.names, use_threads=False)
    return table.select(schema.names).cast(schema)


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _read_files(run_id: str, run_dir: Path, signature: list) -> RunFiles:
    """Read the files of `signature`; an unreadable file is a Problem, a vanished one sets `vanished`."""
    run = RunFiles(run_id)
    names = [entry[0] for entry in signature]

    def read(name, reader, *args):
        try:
            return reader(run_dir / name, *args)
        except FileNotFoundError:
            run.vanished = True
        except READ_ERRORS as error:
            run.problems.append(Problem(run_id, name, _reason(error)))
        return None

    if store.CONFIG_FILE in names:
        run.config = read(store.CONFIG_FILE, _read_config)
    elif names:
        run.problems.append(Problem(run_id, store.CONFIG_FILE, "missing"))
    run.status = read(store.STATUS_FILE, _read_status) if store.STATUS_FILE in names else {"status": "pending"}
    curves = read(store.METRICS_FILE, _read_parquet, METRICS_FILE_SCHEMA) if store.METRICS_FILE in names else None
    if curves is not None:
        run.curves = curves
    parts = [read(name, _read_parquet, DYNAMICS_FILE_SCHEMA) for name in names if name.startswith(store.DYNAMICS_DIR)]
    parts = [part for part in parts if part is not None]
    if parts:
        run.dynamics = pa.concat_tables(parts)
    return run


def read_run(run_id: str, run_dir: Path) -> RunFiles:
    """Read a run directory, again while a job rewrites it under us (module docstring)."""
    for _ in range(READ_ATTEMPTS):
        before = run_signature(run_dir)
        run = _read_files(run_id, run_dir, before)
        if not run.vanished and run_signature(run_dir) == before:
            run.signature = before
            return run
    return run  # signature None: read again by the next gather


# --- Predictions ---------------------------------------------------------------------------


def _rotation_optimizer(config: RunConfig) -> str:
    """The optimizer whose Table 1 η̂_r the run follows (Algorithm 1 may borrow another's)."""
    if config.rotational and config.rv_eta_r_from:
        return config.rv_eta_r_from
    return config.optimizer


def predicted_rotation(config: RunConfig, lr):
    """η̂_r of Table 1 for this run at learning rate(s) `lr`; NaN where it needs gradient statistics."""
    optimizer = _rotation_optimizer(config)
    if optimizer not in theory.OPTIMIZERS or optimizer == "adam-l2":
        return np.full(np.shape(lr), math.nan) if np.ndim(lr) else math.nan
    return theory.expected_rotation(optimizer, lr, config.weight_decay, beta1=config.beta1, beta2=config.beta2,
                                    momentum=config.momentum)


def predictions(config: RunConfig) -> dict[str, float]:
    """eta_r_hat, eta_g_hat and norm_hat (per coordinate, C = 1) at the run's peak lr."""
    hyper = dict(beta1=config.beta1, beta2=config.beta2, momentum=config.momentum)
    eta_g = math.nan if config.optimizer == "sgdm" else theory.rms_update(config.optimizer, config.lr, dim=1, **hyper)
    norm = math.nan
    if config.optimizer in ("adamw", "lion") and config.weight_decay > 0 and not config.rotational:
        norm = theory.equilibrium_norm(config.optimizer, config.lr, config.weight_decay, dim=1, **hyper)
    return {"eta_r_hat": float(predicted_rotation(config, config.lr)), "eta_g_hat": eta_g, "norm_hat": norm}


# --- From run files to table rows ----------------------------------------------------------


def _stack(run_ids: list[str], tables: list[pa.Table], schema: pa.Schema) -> tuple[pa.Table, np.ndarray]:
    """Concatenate per-run tables (without run_id), put each run's id in front of its rows.

    Also returns each row's run as an index into run_ids.
    """
    body = pa.concat_tables(tables) if tables else pa.schema(list(schema)[1:]).empty_table()
    row_run = np.repeat(np.arange(len(run_ids)), [table.num_rows for table in tables])
    ids = pa.array(run_ids, STRING).take(pa.array(row_run))
    return body.add_column(0, schema.field("run_id"), ids), row_run


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


def _measure_layers(dynamics: pa.Table, row_run: np.ndarray, run_ids: list[str], windows: dict,
                    predicted: dict) -> pd.DataFrame:
    """layers.parquet's rows from the runs' dynamics rows in their windows (module docstring).

    row_run[i] is the index in run_ids of row i's run; windows[run_id] = (first, last step),
    predicted[run_id](steps) gives η̂_r at those steps. The bulk (all rows, then the
    sampled neurons) is filtered and aggregated in Arrow; the per-layer means, one row
    per layer and recorded step, are few enough for pandas.
    """
    # Each row's window is its run's; a run without one gets an empty window [1, 0].
    first = np.array([windows.get(run_id, (1, 0))[0] for run_id in run_ids], dtype=np.int64)
    last = np.array([windows.get(run_id, (1, 0))[1] for run_id in run_ids], dtype=np.int64)
    step = dynamics["step"].to_numpy()
    in_window = pa.array((step >= first[row_run]) & (step <= last[row_run]))
    stat, reduction = dynamics["stat"], dynamics["reduction"]
    wanted = dynamics.filter(pc.and_(in_window, pc.or_(pc.or_(
        pc.and_(pc.equal(stat, "angular_update"), pc.is_in(reduction, pa.array(["mean", "sample"]))),
        pc.and_(pc.equal(stat, "norm"), pc.equal(reduction, "mean"))),
        pc.equal(stat, FAN_IN),
    )))
    keys = ["run_id", "param"]

    means = wanted.filter(pc.equal(wanted["reduction"], "mean")).to_pandas()
    rotation = means[means["stat"] == "angular_update"]
    # η̂_r once per (run, step), in run order so that the per-run arrays line up with the rows.
    steps = rotation[["run_id", "step"]].drop_duplicates().sort_values(["run_id", "step"])
    steps["predicted"] = np.concatenate(
        [predicted[run_id](group["step"].to_numpy()) for run_id, group in steps.groupby("run_id")]
    ) if len(steps) else np.empty(0)
    rotation = rotation.merge(steps, on=["run_id", "step"])
    layers = rotation.groupby(keys).agg(
        window_steps=("step", "nunique"), eta_r=("value", "mean"), eta_r_predicted=("predicted", "mean"),
    )
    bounds = layers.index.get_level_values("run_id").map(windows)
    layers["window_start"] = [start for start, _ in bounds]
    layers["window_end"] = [end for _, end in bounds]
    layers["eta_r_ratio"] = (layers["eta_r"] / layers["eta_r_predicted"]).where(layers["eta_r_predicted"] > 0)
    layers["norm"] = means[means["stat"] == "norm"].groupby(keys)["value"].mean()
    fan_ins = wanted.filter(pc.equal(wanted["stat"], FAN_IN)).to_pandas()
    layers["fan_in"] = fan_ins.groupby(keys)["value"].first().astype("Int64")

    samples = wanted.filter(pc.equal(wanted["reduction"], "sample"))
    per_neuron = samples.group_by(keys + ["neuron"]).aggregate([("value", "mean")])
    moved = per_neuron.filter(pc.greater(per_neuron["value_mean"], 0))
    moved = moved.append_column("log", pc.ln(moved["value_mean"]))
    spread = moved.group_by(keys).aggregate([("log", "stddev")]).to_pandas()  # Arrow's stddev has ddof=0
    layers["imbalance_neurons"] = spread.set_index(keys)["log_stddev"]
    return layers.reset_index()


def _summarize_layers(layers: pd.DataFrame) -> pd.DataFrame:
    """eta_r_measured, imbalance_layers, imbalance_neurons per run_id."""
    by_run = layers.groupby("run_id")
    moved = layers[layers["eta_r"] > 0]
    return pd.DataFrame({
        "eta_r_measured": by_run["eta_r"].mean(),
        "imbalance_layers": np.log(moved["eta_r"]).groupby(moved["run_id"]).std(ddof=0),
        "imbalance_neurons": by_run["imbalance_neurons"].mean(),
    })


def _run_row(run: RunFiles, sweep_name: str, experiment: str | None, in_manifest: bool, total_steps,
             warmup_steps) -> dict:
    """The runs.parquet columns that come from config.json and status.json."""
    status = run.status or {}
    row = {
        "run_id": run.run_id, "sweep": sweep_name, "experiment": experiment, "in_manifest": in_manifest,
        "status": status.get("status"), "steps_done": status.get("step", 0 if run.status else None),
        "total_steps": total_steps, "warmup_total_steps": warmup_steps, "wall_s": status.get("wall_s"),
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
    return row


def tables_of(runs: list[RunFiles], sweep_name: str, experiment: str | None, listed: set[str]) -> dict[str, pa.Table]:
    """The four results tables of these runs (in the order given)."""
    run_ids = [run.run_id for run in runs]
    curves, _ = _stack(run_ids, [run.curves for run in runs], CURVES_SCHEMA)
    dynamics, dynamics_run = _stack(run_ids, [run.dynamics for run in runs], DYNAMICS_SCHEMA)

    curves_frame = curves.select(["run_id", "step", "epoch", "split", "metric", "value"]).to_pandas()
    steps_per_epoch = _steps_per_epoch(curves_frame)
    rows, windows, predicted = [], {}, {}
    for run in runs:
        total, warmup = _schedule_lengths(run, steps_per_epoch.get(run.run_id, math.nan))
        rows.append(_run_row(run, sweep_name, experiment, run.run_id in listed, total, warmup))
        if total is not None:
            windows[run.run_id] = (math.ceil(WINDOW[0] * total), math.floor(WINDOW[1] * total))
            predicted[run.run_id] = _step_predictor(run.config, total, warmup)

    layers = _measure_layers(dynamics, dynamics_run, run_ids, windows, predicted)
    summary = _summarize_metrics(curves_frame).join(_summarize_layers(layers), how="outer").to_dict("index")
    for row in rows:
        row.update(summary.get(row["run_id"], {}))
    return {
        "runs": pa.Table.from_pylist(rows, schema=RUNS_SCHEMA),
        "curves": curves,
        "dynamics": dynamics,
        "layers": pa.Table.from_pandas(layers, schema=LAYERS_SCHEMA, preserve_index=False),
    }


def _step_predictor(config: RunConfig | None, total_steps: int, warmup_steps: int | None):
    """steps -> η̂_r at each step's scheduled lr (NaN when the config or the warmup length is unknown)."""
    def predict(steps: np.ndarray) -> np.ndarray:
        if config is None or warmup_steps is None:
            return np.full(len(steps), math.nan)
        lrs = np.array([learning_rate(config, int(step), total_steps, warmup_steps) for step in steps])
        return np.asarray(predicted_rotation(config, lrs), dtype=float)
    return predict


# --- The sweep: scan, cache, merge, write ---------------------------------------------------


def _source_hash(*modules) -> str:
    return hashlib.sha256(b"".join(Path(module.__file__).read_bytes() for module in modules)).hexdigest()[:16]


# The rows depend on the code that computes them (as this process imported it): a cache made by
# other code is not used.
CODE_HASH = _source_hash(sys.modules[__name__], theory, schedule, config_module)


def _cache_key(sweep_name: str, experiment: str | None) -> dict:
    return {"schema_version": SCHEMA_VERSION, "code": CODE_HASH, "sweep": sweep_name, "experiment": experiment}


def _file_signature(path: Path) -> list | None:
    try:
        return _stat_entry(path.name, path.stat())
    except FileNotFoundError:
        return None


def _load_cache(results: Path, key: dict) -> dict | None:
    """The previous gather's cache, if it describes the outputs as they are and was made with this key."""
    try:
        cache = store.read_json(results / CACHE_FILE)
    except (OSError, ValueError):
        return None
    if not isinstance(cache, dict) or cache.get("key") != key:
        return None
    outputs = output_paths(results.parent)
    if cache.get("outputs") != {name: _file_signature(path) for name, path in outputs.items()}:
        return None
    return cache


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


def _run_directories(sweep: Path) -> set[str]:
    try:
        with os.scandir(store.runs_dir(sweep)) as scan:
            return {entry.name for entry in scan if entry.is_dir() and not entry.name.startswith(".")}
    except FileNotFoundError:
        return set()


def _run_blocks(table: pa.Table) -> dict[str, pa.Table]:
    """Each run's rows, for a table whose runs are contiguous blocks (as gather writes them)."""
    run_ids = pc.unique(table["run_id"])
    codes = pc.index_in(table["run_id"], value_set=run_ids).to_numpy()
    starts = np.flatnonzero(np.diff(codes, prepend=-1))
    ends = np.append(starts[1:], len(codes))
    names = run_ids.take(pa.array(codes[starts])).to_pylist()
    return {name: table.slice(start, end - start) for name, start, end in zip(names, starts, ends)}


def _merge(path: Path, schema: pa.Schema, new: pa.Table, replaced: set[str]) -> pa.Table:
    """The previous table's rows of the runs not replaced, and the new rows, in run_id order."""
    previous = pq.read_table(path, schema=schema).replace_schema_metadata(None)
    blocks = {run_id: rows for run_id, rows in _run_blocks(previous).items() if run_id not in replaced}
    blocks.update(_run_blocks(new))
    return pa.concat_tables([blocks[run_id] for run_id in sorted(blocks)]) if blocks else new


def gather(sweep: str | os.PathLike, *, full: bool = False) -> GatherReport:
    """Read the sweep's run directories that changed and (re)write SWEEP/results/*.parquet.

    full=True ignores the cache and reads every run.
    """
    sweep = Path(sweep)
    if not ((sweep / store.MANIFEST_FILE).is_file() or store.runs_dir(sweep).is_dir()):
        raise UserError(f"{sweep} is not a sweep directory (no {store.MANIFEST_FILE}, no runs/); "
                        "give the directory that `rotsweep launch` created")
    sweep_name = sweep.resolve().name
    results = sweep / RESULTS_DIR
    outputs = output_paths(sweep)

    problems: list[Problem] = []
    experiment, manifest_runs = _read_manifest(sweep, problems)
    directories = _run_directories(sweep)
    listed = set(manifest_runs)
    run_ids = sorted(listed | directories)

    key = _cache_key(sweep_name, experiment)
    cache = None if full else _load_cache(results, key)
    cached = cache["runs"] if cache else {}
    changed = [
        run_id for run_id in run_ids
        if run_id not in cached or cached[run_id]["signature"] is None
        or cached[run_id]["in_manifest"] != (run_id in listed)
        or cached[run_id]["signature"] != run_signature(store.run_dir(sweep, run_id))
    ]
    removed = set(cached) - set(run_ids)
    with ThreadPoolExecutor(READ_THREADS) as pool:
        fresh = list(pool.map(lambda run_id: read_run(run_id, store.run_dir(sweep, run_id)), changed))

    entries = dict(cached)
    for run_id in removed:
        del entries[run_id]
    for run in fresh:
        entries[run.run_id] = {"signature": run.signature, "in_manifest": run.run_id in listed,
                               "problems": [[p.file, p.reason] for p in run.problems]}
    for run_id in run_ids:
        problems += [Problem(run_id, file, reason) for file, reason in entries[run_id]["problems"]]

    written = bool(fresh or removed or cache is None)
    if written:
        tables = tables_of(fresh, sweep_name, experiment, listed)
        if cache is not None:
            tables = {name: _merge(outputs[name], TABLES[name], tables[name], set(changed) | removed)
                      for name in TABLES}
        metadata = {SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()}
        for name, table in tables.items():
            store.write_parquet(outputs[name], table.replace_schema_metadata(metadata))
        # The cache goes last: if we stop before it, the outputs no longer match it and the
        # next gather starts from scratch.
        store.write_json(results / CACHE_FILE, {
            "key": key,
            "outputs": {name: _file_signature(path) for name, path in outputs.items()},
            "runs": entries,
        })

    return GatherReport(
        sweep=sweep, runs=len(run_ids), read=len(fresh), unchanged=len(run_ids) - len(fresh),
        skipped=len({problem.run_id for problem in problems if problem.run_id is not None}),
        missing=len(listed - directories), problems=sorted(problems, key=lambda p: (p.run_id or "", p.file)),
        outputs=outputs, written=written,
    )
