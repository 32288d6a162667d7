"""One home for the results tables of `rotsweep gather`: their schemas, paths and readers,
and the link between a RunConfig and its row (config ↔ row, Table 1's predictions for a row).

    SWEEP/results/runs.parquet       RUNS_SCHEMA      one row per run
    SWEEP/results/curves.parquet     CURVES_SCHEMA    one row per metric value
    SWEEP/results/layers.parquet     LAYERS_SCHEMA    one row per run x weight tensor
    SWEEP/results/dynamics.parquet/  DYNAMICS_SCHEMA  one file per run, <run_id>.parquet

rotsweep.analysis.gather writes them (its docstring defines every column); the figures,
the tables, the report and the demo read them through read_results() and read_dynamics()
(which opens only the runs asked for and pushes its filters into the Parquet scan).
Nothing here imports torch.

Table 1's η̂_r of a run lives here once: predicted_rotation(config, lr) at any lr, and
scheduled_rotation(config, steps, ...) at each step's scheduled lr (rotsweep.schedule),
which gather's layers.parquet, the dynamics figure and the demo's findings all use.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import operator
import os
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from rotsweep import store, theory
from rotsweep.config import RunConfig
from rotsweep.errors import UserError
from rotsweep.schedule import learning_rate

SCHEMA_VERSION = 4  # 4: dynamics.parquet is a directory of one file per run
SCHEMA_VERSION_KEY = b"rotsweep.schema_version"
RESULTS_DIR = "results"
# read_dynamics: rows per batch and batches decoded ahead while filtering.
READ_BATCH_ROWS = 1 << 17
READ_AHEAD = 2

# (split, metric, better): final_<split>_<metric> for each, best_<split>_<metric> where `better` is set.
SUMMARY_METRICS = (
    ("val", "loss", "min"),
    ("val", "top1", "max"),
    ("val", "perplexity", "min"),
    ("train", "loss", None),
)


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
    """The four outputs; "dynamics" is a directory of one <run_id>.parquet per run."""
    return {name: Path(sweep) / RESULTS_DIR / f"{name}.parquet" for name in TABLES}


def _checked_output(sweep: str | os.PathLike, name: str) -> Path:
    """The output's path, refusing a missing one or one written by another schema version.

    dynamics.parquet/ is written by the same gather as runs.parquet, whose version it shares.
    """
    path = output_paths(sweep)[name]
    probe = output_paths(sweep)["runs"] if name == "dynamics" else path
    try:
        metadata = pq.read_schema(probe).metadata or {}
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; run `rotsweep gather {sweep}` first") from None
    except (OSError, ValueError) as error:  # truncated or not Parquet (pyarrow's errors derive from these)
        raise UserError(f"{path} is unreadable ({type(error).__name__}); "
                        f"run `rotsweep gather --full {sweep}` to write it again") from None
    version = metadata.get(SCHEMA_VERSION_KEY, b"?").decode()
    if version != str(SCHEMA_VERSION) or (name == "dynamics" and not path.is_dir()):
        raise UserError(f"{path} has schema version {version}, not {SCHEMA_VERSION}; "
                        f"run `rotsweep gather {sweep}` again")
    return path


def read_results(sweep: str | os.PathLike, name: str) -> pd.DataFrame:
    """One results table as a DataFrame, refusing one written by another schema version.

    "dynamics" reads every row of every run: use read_dynamics() to read some of them.
    """
    if name == "dynamics":
        return read_dynamics(sweep)
    path = _checked_output(sweep, name)
    try:
        return store.parquet_snapshot(path).read().to_pandas()  # whole while a gather replaces it
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is unreadable ({type(error).__name__}); "
                        f"run `rotsweep gather --full {sweep}` to write it again") from None


def read_dynamics(sweep: str | os.PathLike, run_ids: list[str] | None = None, *,
                  stats: list[str] | tuple[str, ...] | None = None,
                  reductions: list[str] | tuple[str, ...] | None = None,
                  params: list[str] | tuple[str, ...] | None = None,
                  pairs: list[tuple[str, str]] | tuple[tuple[str, str], ...] | None = None) -> pd.DataFrame:
    """Rows of dynamics.parquet/: of `run_ids` (None: every run) whose stat, reduction and
    param are among those given (None: any) and whose (stat, reduction) is one of `pairs`
    (None: any), in run_id order, each run's rows in file order.

    Only the files of those runs are opened, and the filters are pushed into the Parquet
    scan, which streams: memory holds the rows returned, not the runs' tables.
    """
    directory = _checked_output(sweep, "dynamics")
    if run_ids is None:
        paths = sorted(directory.glob("*.parquet"))
    else:
        paths = [path for path in (directory / f"{run_id}.parquet" for run_id in sorted(set(run_ids)))
                 if path.is_file()]
    wanted = None
    for column, values in (("stat", stats), ("reduction", reductions), ("param", params)):
        if values is not None:
            condition = ds.field(column).isin(list(values))
            wanted = condition if wanted is None else wanted & condition
    if pairs is not None:
        either = [(ds.field("stat") == stat) & (ds.field("reduction") == reduction) for stat, reduction in pairs]
        condition = functools.reduce(operator.or_, either) if either else ds.scalar(False)
        wanted = condition if wanted is None else wanted & condition
    dataset = ds.dataset([str(path) for path in paths], schema=DYNAMICS_SCHEMA, format="parquet")
    # One file and a few batches in flight: Arrow's default read-ahead holds hundreds of MB.
    return dataset.to_table(filter=wanted, batch_size=READ_BATCH_ROWS, batch_readahead=READ_AHEAD,
                            fragment_readahead=1).to_pandas()


def run_config(run: pd.Series) -> RunConfig:
    """The RunConfig of a runs.parquet row (RunConfig's fields are its columns)."""
    values = {}
    for name, base in CONFIG_TYPES.items():
        value = run[name]
        if name in JSON_FIELDS:
            value = json.loads(value)
        elif value is None or (isinstance(value, float) and math.isnan(value)):
            value = None  # an optional field that is not set
        elif base is int:
            value = int(value)  # an int column with missing values is read as floats
        elif isinstance(value, np.generic):
            value = value.item()
        values[name] = value
    return RunConfig.from_dict(values)


# --- Table 1 for a run ----------------------------------------------------------------------


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


def scheduled_rotation(config: RunConfig, steps, total_steps: int, warmup_steps: int) -> np.ndarray:
    """η̂_r (Table 1) at the lr that rotsweep.schedule gives each of `steps` (0-based optimizer
    steps, as the dynamics record them); NaN where Table 1 needs gradient statistics."""
    lrs = np.array([learning_rate(config, int(step), total_steps, warmup_steps) for step in steps], dtype=float)
    return np.asarray(predicted_rotation(config, lrs), dtype=float)
