"""Export a gathered sweep to TensorBoard, W&B (offline) or CSV: `rotsweep export SWEEP --to ...`.

Everything comes from the results tables of `rotsweep gather` (results/*.parquet), never from
the run directories, so a finished sweep exports anywhere, and a cluster whose nodes have no
internet writes W&B runs that `wandb sync` uploads later. Per run (of runs.parquet, with its
config readable) the exported series are, as (tag, step, value):

    <split>/<metric>                  every curve of curves.parquet (train/loss, val/top1, ...)
    eta_r/<param>                     the mean-over-neurons angular update of each weight, per
    norm/<param>                      recorded step, and its mean-over-neurons norm (dynamics.parquet/)
    eta_r_predicted                   Table 1's η̂_r at each recorded step's scheduled lr (the same
                                      for every weight; NaN where Table 1 needs gradient statistics)
    layers/<param>/eta_r              layers.parquet: the equilibrium window's measured rotation,
    layers/<param>/eta_r_predicted    its prediction, the measured norm and Table 1's ‖ω̂‖·sqrt(C)
    layers/<param>/norm               (runs.parquet norm_hat per coordinate, C the weight's fan-in),
    layers/<param>/norm_predicted     at the window's last step
    final/<summary column>            runs.parquet's final_ and best_ metrics, at the run's last step

Formats (OUT defaults to SWEEP/export/<format>):
    tensorboard  OUT/<run_id>/events.out.tfevents.*: the series as scalars, and the RunConfig
                 fields (+ variant) as hparams; OUT/events.out.tfevents.*: the hparams
                 experiment, whose metrics are the final/ scalars.
                 Written with tensorboard's own event writer and protos (no TensorFlow, no torch).
    wandb        OUT/wandb/offline-run-*-<run_id>/: one offline run per rotsweep run (id = run_id,
                 project = the sweep's name, group = its experiment), config = the RunConfig,
                 history = the series merged by step, summary = final metrics and predictions.
                 wandb runs in offline mode only: nothing is sent; `wandb sync OUT/wandb/offline-run-*`.
    csv          OUT/runs.csv, curves.csv, layers.csv, dynamics.csv: the tables as they are.

An export replaces the previous export of OUT as a whole: it is written beside OUT and moved into
place, so OUT never holds a half export, and a directory that is not an export is never touched.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rotsweep import store
from rotsweep.analysis import gather
from rotsweep.analysis.figures.common import load_runs  # runs.parquet with the variant labels the figures use
from rotsweep.analysis.results import run_config
from rotsweep.errors import UserError

FORMATS = ("tensorboard", "wandb", "csv")
# A file in every export directory: what made it, and the mark that lets the next export replace it.
MARKER = ".rotsweep-export.json"
# The dynamics series of the export: (stat, reduction) -> tag prefix.
DYNAMICS_SERIES = {("angular_update", "mean"): "eta_r", ("norm", "mean"): "norm"}
EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb"}


@dataclass
class ExportReport:
    sweep: Path
    to: str
    out: Path
    runs: int
    scalars: int  # (tag, step, value) points written per the format (rows for csv)

    def format(self) -> str:
        what = "rows" if self.to == "csv" else "scalar points"
        return f"exported {self.runs} runs of {self.sweep} to {self.to}: {self.out} ({self.scalars} {what})"


def default_out(sweep: str | os.PathLike, to: str) -> Path:
    return Path(sweep) / "export" / to


def export(sweep: str | os.PathLike, to: str, out: str | os.PathLike | None = None) -> ExportReport:
    """Write the gathered sweep as `to` (one of FORMATS) into `out`; see the module docstring."""
    sweep = Path(sweep)
    if to not in FORMATS:
        raise UserError(f"cannot export to {to!r}; choose one of {', '.join(FORMATS)}")
    if to in EXTRAS:
        _require(to)
    out = Path(out) if out is not None else default_out(sweep, to)
    _check_replaceable(out)
    runs = load_runs(sweep)  # refuses a sweep that was not gathered, with the command to run
    curves = gather.read_results(sweep, "curves")
    layers = gather.read_results(sweep, "layers")
    store.check_output_dir(out)
    with store.atomic_directory(out) as scratch:
        writer = {"tensorboard": _write_tensorboard, "wandb": _write_wandb, "csv": _write_csv}[to]
        points = writer(sweep, runs, curves, layers, scratch)
        store.write_json(scratch / MARKER, {"sweep": str(sweep.resolve()), "format": to, "runs": len(runs),
                                            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return ExportReport(sweep, to, out, len(runs), points)


def _require(to: str) -> None:
    try:
        __import__(EXTRAS[to])
    except ImportError:
        raise UserError(f"exporting to {to} needs the {EXTRAS[to]} package: "
                        f"pip install 'rotsweep[{to}]'") from None


def _check_replaceable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give a directory for the export")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise UserError(f"{out} holds files that are not a rotsweep export; give an empty or new directory")


# --- The series of one run ---------------------------------------------------------------


def run_series(run: pd.Series, curves: pd.DataFrame, layers: pd.DataFrame, dynamics: pd.DataFrame) -> pd.DataFrame:
    """The run's exported series (module docstring) as a long frame: tag, step, value.

    `curves`, `layers` and `dynamics` hold this run's rows of the results tables.
    """
    frames = [pd.DataFrame({"tag": curves["split"] + "/" + curves["metric"], "step": curves["step"],
                            "value": curves["value"]})]
    for (stat, reduction), prefix in DYNAMICS_SERIES.items():
        rows = dynamics[(dynamics["stat"] == stat) & (dynamics["reduction"] == reduction)]
        frames.append(pd.DataFrame({"tag": prefix + "/" + rows["param"], "step": rows["step"], "value": rows["value"]}))
    steps = np.unique(dynamics["step"].to_numpy())
    if len(steps) and not pd.isna(run["total_steps"]):
        warmup = None if pd.isna(run["warmup_total_steps"]) else int(run["warmup_total_steps"])
        predicted = gather.step_predictor(run_config(run), int(run["total_steps"]), warmup)(steps)
        frames.append(pd.DataFrame({"tag": "eta_r_predicted", "step": steps, "value": predicted}))
    # Table 1's ‖ω̂‖ of a neuron of fan-in C: sqrt(C) times the per-coordinate norm_hat.
    norm_per_neuron = run["norm_hat"] * np.sqrt(layers["fan_in"].astype(float))
    for column, values in (("eta_r", layers["eta_r"]), ("eta_r_predicted", layers["eta_r_predicted"]),
                           ("norm", layers["norm"]), ("norm_predicted", norm_per_neuron)):
        frames.append(pd.DataFrame({"tag": "layers/" + layers["param"] + "/" + column,
                                    "step": layers["window_end"], "value": values}))
    finals = {column: run[column] for column in gather.SUMMARY_COLUMNS}
    last_step = int(run["steps_done"]) if not pd.isna(run["steps_done"]) else 0
    frames.append(pd.DataFrame({"tag": ["final/" + name for name in finals], "step": last_step,
                                "value": list(finals.values())}))
    series = pd.concat(frames, ignore_index=True).astype({"tag": str, "step": "int64", "value": float})
    return series[np.isfinite(series["value"])].reset_index(drop=True)


def hparams(run: pd.Series) -> dict:
    """The run's RunConfig fields (dicts as canonical JSON, None left out) and its variant."""
    values = {"variant": str(run["variant"])}
    for name, value in run_config(run).to_dict().items():
        if isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        if value is not None:
            values[name] = value
    return values


def _each_run(sweep: Path, runs: pd.DataFrame, curves: pd.DataFrame, layers: pd.DataFrame):
    """(run row, its series) for every run, reading the dynamics one run at a time."""
    curves_by_run = dict(tuple(curves.groupby("run_id", sort=False)))
    layers_by_run = dict(tuple(layers.groupby("run_id", sort=False)))
    for _, run in runs.iterrows():
        run_id = run["run_id"]
        dynamics = gather.read_dynamics(sweep, [run_id], pairs=list(DYNAMICS_SERIES))
        yield run, run_series(run, curves_by_run.get(run_id, curves.iloc[:0]),
                              layers_by_run.get(run_id, layers.iloc[:0]), dynamics)


# --- TensorBoard ---------------------------------------------------------------------------


def _write_tensorboard(sweep: Path, runs: pd.DataFrame, curves: pd.DataFrame, layers: pd.DataFrame,
                       out: Path) -> int:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import summary_v2 as hparams_summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    points, names, finals = 0, set(), set()
    for run, series in _each_run(sweep, runs, curves, layers):
        names |= hparams(run).keys()
        finals |= set(series["tag"][series["tag"].str.startswith("final/")])
        writer = EventFileWriter(str(out / run["run_id"]))
        try:
            # The hparams plugin reads a run's hyperparameters from this session-start summary
            # and its metrics from the run's scalars of the same tags (here final/...).
            writer.add_event(event_pb2.Event(wall_time=time.time(), step=0, summary=hparams_summary.hparams_pb(
                hparams(run), trial_id=run["run_id"])))
            for row in series.itertuples(index=False):
                value = summary_pb2.Summary.Value(tag=row.tag, simple_value=row.value)
                writer.add_event(event_pb2.Event(wall_time=time.time(), step=row.step,
                                                 summary=summary_pb2.Summary(value=[value])))
            points += len(series)
        finally:
            writer.close()
    # The experiment, at the top of the log directory: which hparams and which metrics the hparams
    # dashboard shows (without it, every scalar tag would be a metric column).
    writer = EventFileWriter(str(out))
    try:
        writer.add_event(event_pb2.Event(wall_time=time.time(), step=0, summary=hparams_summary.hparams_config_pb(
            hparams=[hparams_summary.HParam(name) for name in sorted(names)],
            metrics=[hparams_summary.Metric(tag) for tag in sorted(finals)])))
    finally:
        writer.close()
    return points


# --- Weights & Biases, offline -------------------------------------------------------------


def _write_wandb(sweep: Path, runs: pd.DataFrame, curves: pd.DataFrame, layers: pd.DataFrame, out: Path) -> int:
    # Offline in the environment too, whatever it said: wandb reads it when it sets itself up,
    # and so does anything it starts (its wandb-core service). Given back afterwards.
    saved = {name: os.environ.get(name) for name in ("WANDB_MODE", "WANDB_SILENT")}
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
    try:
        return _write_wandb_runs(sweep, runs, curves, layers, out)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _write_wandb_runs(sweep: Path, runs: pd.DataFrame, curves: pd.DataFrame, layers: pd.DataFrame, out: Path) -> int:
    import wandb

    settings = wandb.Settings(mode="offline", silent=True, console="off", save_code=False, disable_git=True,
                              x_disable_stats=True)
    experiment = runs["experiment"].dropna()
    points = 0
    for run, series in _each_run(sweep, runs, curves, layers):
        config = {name: value for name, value in run_config(run).to_dict().items()}
        session = wandb.init(dir=out, project=sweep.resolve().name, id=run["run_id"],
                             name=f"{run['variant']} {run['run_id']}",
                             group=str(experiment.iloc[0]) if len(experiment) else None,
                             config=config, settings=settings, reinit="create_new")
        try:
            history = series[~series["tag"].str.startswith("final/")]
            for step, rows in history.groupby("step", sort=True):
                session.log(dict(zip(rows["tag"], rows["value"])), step=int(step))
            finals = series[series["tag"].str.startswith("final/")]
            session.summary.update({tag.removeprefix("final/"): value for tag, value in zip(finals["tag"], finals["value"])})
            session.summary.update({name: float(run[name]) for name in ("eta_r_hat", "eta_g_hat", "norm_hat")
                                    if math.isfinite(run[name])})
            points += len(series)
        finally:
            session.finish()
    return points


# --- CSV -----------------------------------------------------------------------------------


def _write_csv(sweep: Path, runs: pd.DataFrame, curves: pd.DataFrame, layers: pd.DataFrame, out: Path) -> int:
    rows = 0
    for name, table in (("runs", gather.read_results(sweep, "runs")), ("curves", curves), ("layers", layers)):
        table.to_csv(out / f"{name}.csv", index=False)
        rows += len(table)
    # dynamics.parquet/ may not fit in memory: one run at a time, appended.
    with open(out / "dynamics.csv", "w") as handle:
        header = True
        for run_id in gather.read_results(sweep, "runs")["run_id"]:
            table = gather.read_dynamics(sweep, [run_id])
            table.to_csv(handle, index=False, header=header)
            header = header and table.empty
            rows += len(table)
    return rows
