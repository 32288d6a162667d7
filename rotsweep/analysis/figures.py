"""The paper's figures, drawn from a sweep's results tables with Table 1's predictions on top.

    function         paper figure                          data from (the experiment that makes it)
    plot_heatmap     6 left                                runs       (adam-vs-adamw)
    plot_lr_sweep    4 left, 5 middle/right, 7 left, 14    runs       (eta-lambda, warmup, weight-std)
    plot_curves      5 left                                curves     (warmup, or any sweep)
    plot_dynamics    3, 4 middle/right, 6 right, 7 right,  dynamics   (dynamics, or any sweep)
                     13
    plot_imbalance   16 right                              runs       (imbalance)
    plot_randomwalk  9                                     the files of `rotsweep randomwalk --out`

A figure reads only SWEEP/results/*.parquet (written by `rotsweep gather`), never a run
directory, and writes SWEEP/figures/<name>.png and .pdf (FigureFiles: also .svg, any dpi) with
TrueType fonts. The random walk is not a sweep:
plot_randomwalk reads a directory holding one `rotsweep randomwalk --out` directory per
optimizer (dynamics.parquet and randomwalk.json). A sweep without the data a figure needs
is a one-line UserError naming the experiment that produces it, and find_sweep picks the
newest sweep that has it.

The metric (metric=...) is a final value of runs.parquet: val_top1 (the default where runs
have it), val_loss (the default otherwise), val_perplexity or train_loss.

What a value is. Only finished runs (status done) give a metric: the last value of a
diverged run, or of one still running, says nothing about its hyperparameters. A cell or
point is the mean over its finished seeds (± their std); one without any is drawn as
diverged, failed or unfinished. Runs are grouped into variants by the RunConfig fields
that tell them apart (optimizer and RV, warmup, WS, imbalance, width, ...; add_variants).

The predictions (rotsweep.theory, Table 1; η learning rate, λ weight decay):
- heatmap: dashed contours of the equilibrium rotation η̂_r over the grid, e.g. AdamW
  η̂_r = sqrt(2ηλ(1−β1)/(1+β1)): along a contour only the RMS update η̂_g of biases and
  gains changes (§5.2). Adam+ℓ2's η̂_r = (2η²λ/⟨1, sqrt(E[g̃²])⟩)^(1/3)·sqrt(C(1−β1)/(1+β1))
  (eq. 94) also needs gradient statistics that a sweep does not record, so its panel has
  the contours of η²λ, the hyperparameters' part of it. λ = 0 has no equilibrium (the
  norm grows without bound) and no contour.
- dynamics: η̂_r at each recorded step's scheduled lr (rotsweep.schedule), the same for
  every layer. The equilibrium norm ‖ω̂‖ = sqrt(ηC/2λ) (AdamW) and the transient from the
  initial norm (eq. 15-16, theory.transient, with the run's own lr schedule) depend on
  each weight's fan-in C: they are drawn when layers.parquet has a fan_in column.
- randomwalk: the walk's own Table 1 predictions for the layer (randomwalk.json: norm,
  η̂_r, η̂_g per coordinate), which for SGDM and Adam+ℓ2 use the gradient statistics
  measured in the walk.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# No matplotlib.use() here: importing this module in a notebook must leave its backend alone.
# The CLI chooses Agg (files only) before importing it; every figure here is drawn on a figure
# object and saved, never shown.
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from rotsweep import store, theory
from rotsweep.analysis import gather
from rotsweep.config import RunConfig
from rotsweep.errors import UserError
from rotsweep.schedule import learning_rate

FIGURES_DIR = "figures"
OPTIMIZER_NAMES = {"adamw": "AdamW", "adam-l2": "Adam+ℓ2", "sgdm": "SGDM", "lion": "Lion"}

# Where each figure's data comes from, for the error of a sweep without it.
SOURCES = {
    "heatmap": "the adam-vs-adamw experiment makes one (`rotsweep launch adam-vs-adamw --model resnet18`)",
    "lr-sweep": "the eta-lambda, warmup and weight-std experiments make them (`rotsweep launch eta-lambda ...`)",
    "curves": "every run records them, the paper's come from the warmup experiment (`rotsweep launch warmup ...`)",
    "dynamics": "every run records them, Figures 3 and 13 come from the dynamics experiment "
                "(`rotsweep launch dynamics ...`)",
    "imbalance": "the imbalance experiment makes them (`rotsweep launch imbalance --model resnet18`)",
    "randomwalk": "`rotsweep randomwalk --optimizer NAME --out DIR/NAME` makes one per optimizer",
}

PREDICTION = dict(linestyle="--", linewidth=1.6)
# Symbols in matplotlib's mathtext.
ETA_R, ETA_R_HAT, ETA_G = r"$\eta_r$", r"$\hat\eta_r$", r"$\eta_g$"
NORM, NORM_HAT = r"$\|\omega\|$", r"$\|\hat\omega\|$"
CONTOUR_COLOR = "darkorange"


class MissingData(UserError):
    """The sweep has no data for this figure (find_sweep then tries the next one)."""

    def __init__(self, figure: str, what: str):
        super().__init__(f"no {what} to draw the {figure} figure; {SOURCES[figure]}")


# --- Metrics and outcomes -------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    name: str  # e.g. val_top1: runs.parquet's final_val_top1
    label: str
    higher_is_better: bool

    @property
    def column(self) -> str:
        return f"final_{self.name}"


METRICS = {
    "val_top1": Metric("val_top1", "validation top-1 accuracy (%)", True),
    "val_loss": Metric("val_loss", "validation loss (nats)", False),
    "val_perplexity": Metric("val_perplexity", "validation perplexity", False),
    "train_loss": Metric("train_loss", "train loss (nats)", False),
}


def pick_metric(runs: pd.DataFrame, name: str | None = None) -> Metric:
    """The metric `name`, or by default accuracy if the runs have it, else the validation loss."""
    if name is not None and name not in METRICS:
        raise UserError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    for metric in [METRICS[name]] if name else [METRICS["val_top1"], METRICS["val_loss"], METRICS["train_loss"]]:
        done = runs.loc[runs["status"] == "done", metric.column]
        if np.isfinite(done.to_numpy(dtype=float)).any():
            return metric
    wanted = name or "validation metric"
    raise UserError(f"no finished run has a {wanted} yet; wait for runs to finish, then gather again")


# Most telling first. "unreadable": gather could not read the run's status.json (it lists
# the file among its problems), so whether the run finished is unknown, not "unfinished".
STATE_ORDER = ("done", "diverged", "failed", "unreadable", "unfinished")


def summarize(runs: pd.DataFrame, keys: list[str], metric: Metric) -> pd.DataFrame:
    """One row per distinct `keys`: the metric's mean and std over finished seeds, and a state.

    Columns: keys, mean, std (NaN for one seed), seeds (finished ones), diverged (count),
    state: "done" when a seed finished, otherwise the first of diverged, failed,
    unreadable (no status gather could read), unfinished (pending, running or preempted)
    that applies.
    """
    finished = runs["status"] == "done"
    data = runs.assign(
        value=runs[metric.column].where(finished & np.isfinite(runs[metric.column].astype(float))),
        diverged=runs["status"] == "diverged",
        failed=runs["status"] == "failed",
        unreadable=runs["status"].isna(),
    )
    table = data.groupby(keys, sort=True).agg(
        mean=("value", "mean"), std=("value", "std"), seeds=("value", "count"),
        diverged=("diverged", "sum"), failed=("failed", "sum"), unreadable=("unreadable", "sum"),
    ).reset_index()
    table["state"] = np.select(
        [table["seeds"] > 0, table["diverged"] > 0, table["failed"] > 0, table["unreadable"] > 0],
        list(STATE_ORDER[:4]), STATE_ORDER[4],
    )
    return table


def _seeds_note(points: pd.DataFrame) -> str | None:
    """The note "mean ± std over 3 seeds" (or "2–3 seeds") for the finished points of a summarize() table."""
    seeds = points.loc[points["state"] == "done", "seeds"]
    if seeds.empty or seeds.max() < 2:
        return None
    counts = f"{seeds.min()}–{seeds.max()}" if seeds.min() < seeds.max() else f"{seeds.max()}"
    return f"mean ± std over {counts} seeds"


def best_rows(table: pd.DataFrame, keys: list[str], metric: Metric) -> pd.DataFrame:
    """Of each `keys` group of a summarize() table, the row with the best mean (e.g. the best λ).

    A group without a finished row keeps its most telling one, to be drawn as such.
    """
    ranked = table.assign(_rank=table["state"].map(STATE_ORDER.index)).sort_values(
        ["_rank", "mean"], ascending=[True, not metric.higher_is_better], na_position="last", kind="stable"
    )
    return ranked.drop_duplicates(keys).drop(columns="_rank").sort_values(keys).reset_index(drop=True)


# --- Runs, their configs and their variants -----------------------------------------------


def load_runs(sweep: str | os.PathLike) -> pd.DataFrame:
    """runs.parquet with a `variant` column; rows whose config could not be read are left out."""
    runs = gather.read_results(sweep, "runs")
    runs = runs[runs["lr"].notna()].reset_index(drop=True)
    # Without the config-less rows, RunConfig's flags are plain booleans again (not objects with None).
    return add_variants(runs.astype({name: bool for name, base in gather.CONFIG_TYPES.items() if base is bool}))


def run_config(run: pd.Series) -> RunConfig:
    """The RunConfig of a runs.parquet row (RunConfig's fields are its columns)."""
    values = {}
    for name, base in gather.CONFIG_TYPES.items():
        value = run[name]
        if name in gather.JSON_FIELDS:
            value = json.loads(value)
        elif value is None or (isinstance(value, float) and math.isnan(value)):
            value = None  # an optional field that is not set
        elif base is int:
            value = int(value)  # an int column with missing values is read as floats
        elif isinstance(value, np.generic):
            value = value.item()
        values[name] = value
    return RunConfig.from_dict(values)


def _width(model_options: str) -> int | None:
    """The width a run's model_options (JSON) set, None for the model's default."""
    return json.loads(model_options).get("width")


def _optimizer_name(run: pd.Series) -> str:
    name = OPTIMIZER_NAMES.get(run["optimizer"], run["optimizer"])
    if run["rotational"]:
        name = "RV-" + name
        if isinstance(run["rv_eta_r_from"], str):
            name += f" ({ETA_R_HAT} of {OPTIMIZER_NAMES.get(run['rv_eta_r_from'], run['rv_eta_r_from'])})"
    return name


def _warmup_name(run: pd.Series) -> str:
    if run["warmup_steps"] > 0:
        return f"warmup {run['warmup_steps']:g} steps"
    if run["warmup_epochs"] > 0:
        return f"warmup {run['warmup_epochs']:g} epochs"
    return "no warmup"


def _imbalance_name(run: pd.Series) -> str:
    if not run["rotational"] or run["imbalance_portion"] <= 0:
        return "balanced"
    # imbalance_portion is the affected fraction 1 − p (experiments/imbalance.py).
    return f"{run['imbalance_mode']} p={1 - run['imbalance_portion']:.0%} f={run['imbalance_factor']:g}"


# What tells variants apart, in the order a variant's name lists it. The optimizer is always
# named; another field only where it separates runs that the fields before it do not:
# RV-AdamW comes with gains in the warmup sweep, so "gains" is not named again.
VARIANT_PARTS: dict[str, Callable[[pd.Series], str]] = {
    "optimizer": _optimizer_name,
    "model": lambda run: run["model"],
    "weight_standardization": lambda run: "+WS" if run["weight_standardization"] else "no WS",
    "gain": lambda run: "+gains" if run["gain"] else "no gains",
    "warmup": _warmup_name,
    "imbalance": _imbalance_name,
    "width": lambda run: f"width {_width(run['model_options'])}" if _width(run["model_options"]) else "full width",
}
NAMED_FIELDS = {"model", "optimizer", "rotational", "rv_eta_r_from", "weight_standardization", "gain",
                "warmup_steps", "warmup_epochs", "imbalance_portion", "imbalance_factor", "imbalance_mode"}
SWEPT_FIELDS = {"lr", "weight_decay", "seed"}  # the figures' axes, never part of a variant


def add_variants(runs: pd.DataFrame) -> pd.DataFrame:
    """Add `variant`, a readable name of everything but lr, λ and seed that differs between runs."""
    if runs.empty:
        return runs.assign(variant=pd.Series(dtype=str))
    parts = {name: runs.apply(describe, axis=1) for name, describe in VARIANT_PARTS.items()}
    for name in gather.CONFIG_TYPES:  # anything else that varies, e.g. epochs or rv_beta
        if name not in NAMED_FIELDS | SWEPT_FIELDS:
            parts[name] = runs[name].map(lambda value, name=name: f"{name} {value}")
    key = parts["optimizer"]  # always named, so that a variant reads on its own: "AdamW, +WS"
    named = [parts.pop("optimizer")]
    for labels in parts.values():
        if (key + "|" + labels).nunique() > key.nunique():
            named.append(labels)
            key = key + "|" + labels
    return runs.assign(variant=pd.concat(named, axis=1).agg(", ".join, axis=1))


def variant_order(runs: pd.DataFrame) -> list[str]:
    """The sweep's variants in the one order every figure uses for its panels, columns and legends
    (alphabetical: it depends on the variants only, not on the order of the runs in the table)."""
    return sorted(runs["variant"].unique())


def variant_colors(runs: pd.DataFrame) -> dict[str, tuple]:
    """One colour per variant, the same in every figure of the sweep (in variant_order)."""
    variants = variant_order(runs)
    return dict(zip(variants, sns.color_palette("colorblind", len(variants))))


def _number(value: float) -> str:
    """A compact label for a swept value: 0.016, 2e-4, 3.9e-4, 100, 1e30."""
    if value == 0:
        return "0"
    if 0.01 <= abs(value) < 1000:
        text = f"{value:.2g}"
        return f"{value:.0f}" if "e" in text else text
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _label_log_axis(ax: plt.Axes, values) -> None:
    """Ticks of a log x axis at the swept values, skipping any closer than 1/10 of the axis to the last."""
    logs = np.log10(np.sort(np.unique(np.asarray(values, dtype=float))))
    shown = [logs[0]]
    for value in logs[1:]:
        if value - shown[-1] >= (logs[-1] - logs[0]) / 10:
            shown.append(value)
    ax.set_xticks(10 ** np.array(shown), [_number(10**v) for v in shown], rotation=45 if len(shown) > 5 else 0)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def _log_y(*axes: plt.Axes, decades: float = 3.0) -> None:
    """Log y axes for what the axes' lines show together, labelled with plain numbers.

    The axis spans at most `decades` below the largest value (a first step at lr 0 would
    otherwise stretch it to 1e-9); lines spanning less than 3× stay linear, where a log
    axis would have no round number to label.
    """
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for ax in axes for line in ax.get_lines()]
                            or [[]])
    values = values[np.isfinite(values) & (values > 0)]
    if len(values) == 0 or values.max() / values.min() <= 3:
        for ax in axes:  # 0.000504 and 0.000496 read better as 5.04 and 4.96 ×1e-4
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3), useMathText=True)
        return
    low, high = max(values.min(), values.max() / 10**decades), values.max()
    subs = (1.0, 2.0, 5.0) if high / low < 1000 else (1.0,)
    for ax in axes:
        ax.set_yscale("log")
        ax.set_ylim(low / 1.15, high * 1.15)
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=subs))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: _number(value)))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


# --- Saving and finding sweeps --------------------------------------------------------------


FIGURE_FORMATS = ("png", "pdf", "svg")

# Fonts as embedded TrueType (Type 42) in PDF and PostScript: matplotlib's default, Type 3,
# is rejected by the camera-ready checks of conferences (ICML, NeurIPS).
EMBEDDED_FONTS = {"pdf.fonttype": 42, "ps.fonttype": 42}


@dataclass(frozen=True)
class FigureFiles:
    """The files each figure is saved as: one per format, raster formats at `dpi`."""

    formats: tuple[str, ...] = ("png", "pdf")
    dpi: int = 150

    def __post_init__(self):
        unknown = [kind for kind in self.formats if kind not in FIGURE_FORMATS]
        if unknown or not self.formats:
            raise UserError(f"figure formats {', '.join(unknown) or '(none)'} not supported; "
                            f"choose one or more of {', '.join(FIGURE_FORMATS)}")
        if self.dpi < 1:
            raise UserError(f"dpi {self.dpi} is not a resolution; give a positive number of dots per inch")


def save(fig: plt.Figure, directory: str | os.PathLike, name: str, files: FigureFiles = FigureFiles()) -> list[Path]:
    """Write DIRECTORY/figures/NAME.<format> for each of files.formats (atomically: a viewer never
    sees half a file), with fonts embedded as TrueType (EMBEDDED_FONTS)."""
    paths = [Path(directory) / FIGURES_DIR / f"{name}.{kind}" for kind in dict.fromkeys(files.formats)]
    with matplotlib.rc_context(EMBEDDED_FONTS):
        for path in paths:
            with store.atomic_path(path) as tmp:
                fig.savefig(tmp, format=path.suffix[1:], dpi=files.dpi, bbox_inches="tight")
            fig.set_layout_engine("none")  # laid out by the first save: the next keep it (and half the time)
    plt.close(fig)
    return paths


def _is_randomwalk_dir(directory: Path) -> bool:
    return any((child / "randomwalk.json").is_file() for child in directory.iterdir() if child.is_dir())


def find_sweep(figure: str, root: str | os.PathLike = "sweeps") -> Path:
    """The most recently gathered sweep under `root` that has the data `figure` needs."""
    if figure not in SOURCES:
        raise UserError(f"unknown figure {figure!r}; choose one of {', '.join(SOURCES)}")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no sweep directory {root}/; give a SWEEP, or launch one there: {SOURCES[figure]}")
    directories = [path for path in root.iterdir() if path.is_dir()]
    if figure == "randomwalk":
        candidates = [path for path in [root, *directories] if _is_randomwalk_dir(path)]
        newest = {path: max((child / "randomwalk.json").stat().st_mtime for child in path.iterdir()
                            if (child / "randomwalk.json").is_file()) for path in candidates}
    else:
        newest = {path: gather.output_paths(path)["runs"].stat().st_mtime for path in directories
                  if gather.output_paths(path)["runs"].is_file()}
    for path in sorted(newest, key=newest.get, reverse=True):
        try:
            REQUIREMENTS[figure](path)
            return path
        except UserError:
            continue  # not this one: no data for the figure, or results of another schema
    raise UserError(f"no sweep in {root}/ has data for the {figure} figure; {SOURCES[figure]}")


# --- Figure 6 left: the lr × λ heatmap ------------------------------------------------------


def cell_value(position, values) -> np.ndarray:
    """The value at `position` along a heatmap axis whose cell i, spanning [i, i+1], holds values[i].

    Log-linear between the cell centres and, past the first and last centre, the grid's
    own spacing continued, so that a swept grid of powers of two maps onto straight lines.
    """
    logs = np.log(np.asarray(values, dtype=float))
    position = np.asarray(position, dtype=float)
    segment = np.clip(np.floor(position - 0.5).astype(int), 0, len(logs) - 2)
    slope = logs[segment + 1] - logs[segment]
    return np.exp(logs[segment] + (position - 0.5 - segment) * slope)


def _nice_levels(low: float, high: float, most: int = 5) -> np.ndarray:
    """Round numbers (1, 2, 5 × 10^k) strictly between low and high, at most `most` of them."""
    decades = np.arange(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    levels = np.array([m * 10.0**d for d in decades for m in (1, 2, 5)])
    levels = levels[(levels > low) & (levels < high)]
    if len(levels) == 0:
        return np.array([math.sqrt(low * high)])
    return levels[:: math.ceil(len(levels) / most)]


def _label_spots(contours, columns: int, rows: int) -> list[tuple[float, float]]:
    """Where to label each contour line: its point farthest from any cell's centre (where the
    cell's value is written), away from the panel's border."""
    spots = []
    for path in contours.get_paths():
        points = path.interpolated(20).vertices  # the line's vertices lie on the grid: add points between
        inside = points[(points[:, 0] > 0.3) & (points[:, 0] < columns - 0.3)
                        & (points[:, 1] > 0.3) & (points[:, 1] < rows - 0.3)]
        if len(inside):
            offset = inside - (np.floor(inside) + 0.5)
            spots.append(tuple(inside[np.argmax(np.hypot(offset[:, 0], offset[:, 1]))]))
    return spots


def _rotation_contours(ax: plt.Axes, config: RunConfig, lrs: list[float], weight_decays: list[float]) -> str | None:
    """Dashed contours of η̂_r over a panel whose columns are `lrs` and rows `weight_decays` (top first).

    Returns what the contours are of (for the legend), or None when there are none: rows
    with λ = 0 have no equilibrium, and a contour needs two λ > 0 to interpolate between.
    """
    positive = [wd for wd in weight_decays if wd > 0]
    if len(positive) < 2:
        return None
    # Grid points at every cell centre and both edges: log η̂_r is then linear inside each
    # grid square, so the contour lines are exact, not interpolated.
    x = np.concatenate([[0.0], np.arange(len(lrs)) + 0.5, [len(lrs)]])
    y = np.concatenate([[0.0], np.arange(len(positive)) + 0.5, [len(positive)]])
    lr_at, wd_at = cell_value(x, lrs), cell_value(y, positive)
    if config.optimizer == "adam-l2" and not (config.rotational and config.rv_eta_r_from):
        surface = lr_at[None, :] ** 2 * wd_at[:, None]
        what = "η²λ"
    else:
        surface = np.array([gather.predicted_rotation(config.replace(weight_decay=float(wd)), lr_at) for wd in wd_at])
        what = "η̂_r"
    levels = _nice_levels(surface.min(), surface.max())
    contours = ax.contour(x, y, np.log10(surface), levels=np.log10(levels), colors=CONTOUR_COLOR,
                          linestyles="--", linewidths=1.4, zorder=5)
    labels = ax.clabel(contours, fmt=dict(zip(contours.levels, (_number(level) for level in levels))), fontsize=7,
                       manual=_label_spots(contours, len(lrs), len(positive)))
    for label in labels:  # readable over any cell colour
        label.set_bbox(dict(facecolor="white", edgecolor="none", alpha=0.75, pad=0.4))
    return what


def _heatmap_panel(ax, cells: pd.DataFrame, config: RunConfig, metric: Metric, cmap, vmin, vmax) -> dict:
    """One optimizer's grid; returns which legend entries it needs."""
    lrs = sorted(cells["lr"].unique())
    weight_decays = sorted(cells["weight_decay"].unique(), reverse=True)  # largest at the top, λ = 0 last
    grid = cells.set_index(["weight_decay", "lr"])
    mean = grid["mean"].unstack("lr").reindex(index=weight_decays, columns=lrs)
    state = grid["state"].unstack("lr").reindex(index=weight_decays, columns=lrs)
    diverged = grid["diverged"].unstack("lr").reindex(index=weight_decays, columns=lrs)
    values = mean.where(state == "done")

    digits = ".1f" if metric.name == "val_top1" else ".3g"
    text = np.vectorize(lambda v, d: "" if np.isnan(v) else f"{v:{digits}}" + ("†" if d > 0 else ""))(
        values.to_numpy(float), diverged.fillna(0).to_numpy())
    size = 8 if len(lrs) <= 8 else 6
    sns.heatmap(values, ax=ax, cmap=cmap, vmin=vmin, vmax=vmax, cbar=False, annot=text, fmt="",
                annot_kws={"size": size}, linewidths=0.5, linecolor="white", square=False)

    marks = {"diverged": "div.", "failed": "failed", "unreadable": "?", "unfinished": "…"}
    for i in range(len(weight_decays)):
        for j in range(len(lrs)):
            if state.iat[i, j] in marks:
                ax.add_patch(Rectangle((j, i), 1, 1, facecolor="0.92", edgecolor="0.6", hatch="///", linewidth=0))
                ax.text(j + 0.5, i + 0.5, marks[state.iat[i, j]], ha="center", va="center", fontsize=size,
                        color="firebrick", bbox=dict(facecolor="0.92", edgecolor="none", pad=0.5))
    finished = values.to_numpy(float)
    if np.isfinite(finished).any():
        best = np.nanargmax(finished) if metric.higher_is_better else np.nanargmin(finished)
        i, j = np.unravel_index(best, finished.shape)
        ax.add_patch(Rectangle((j, i), 1, 1, fill=False, edgecolor="red", linewidth=2.5, zorder=6, gid="best-cell"))

    ax.set_xticks(np.arange(len(lrs)) + 0.5, [_number(v) for v in lrs], rotation=45 if len(lrs) > 4 else 0)
    ax.set_yticks(np.arange(len(weight_decays)) + 0.5, [_number(v) for v in weight_decays], rotation=0)
    ax.set_xlabel("learning rate η (log scale)")
    ax.set_ylabel(("ℓ2 coefficient" if config.optimizer == "adam-l2" else "weight decay") + " λ (log scale)")
    if weight_decays[-1] == 0:  # the λ = 0 row is below the log-spaced ones: set it apart
        ax.axhline(len(weight_decays) - 1, color="black", linewidth=1.5, zorder=6)
    contours = _rotation_contours(ax, config, lrs, weight_decays)
    return {"contours": contours, "zero": weight_decays[-1] == 0, "marked": set(state.stack()) & set(marks),
            "dagger": bool((diverged.where(state == "done") > 0).any().any()), "blank": bool(state.isna().any().any())}


def heatmap_cells(runs: pd.DataFrame, metric: str | None = None) -> tuple[Metric, pd.DataFrame, list[str]]:
    """(metric, one summarize() row per variant × λ × lr, the variants with a grid of two or more of each)."""
    chosen = pick_metric(runs, metric)
    # λ = η·λ / η reached from two (η·λ, η) pairs may differ in the last bit (1e-2/0.1 vs 1e-3/0.01): one row.
    runs = runs.assign(weight_decay=runs["weight_decay"].map(lambda wd: float(f"{wd:.12g}")))
    cells = summarize(runs, ["variant", "weight_decay", "lr"], chosen)
    # A grid, not a line such as η·λ = const: some λ at several lr, and some lr at several λ.
    panels = [variant for variant, group in cells.groupby("variant", sort=False)  # summarize sorted them
              if group.groupby("weight_decay")["lr"].nunique().max() > 1
              and group.groupby("lr")["weight_decay"].nunique().max() > 1]
    if not panels:
        raise MissingData("heatmap", "lr × weight-decay grid (several lr at one λ and several λ at one lr)")
    return chosen, cells[cells["variant"].isin(panels)], panels


def draw_heatmap(runs: pd.DataFrame, metric: str | None = None) -> plt.Figure:
    """Figure 6 left from a runs table (with variants): one panel per variant with an lr × λ grid."""
    chosen, cells, panels = heatmap_cells(runs, metric)
    finished = cells.loc[cells["state"] == "done", "mean"]
    vmin, vmax = (finished.min(), finished.max()) if len(finished) else (0.0, 1.0)
    cmap = "viridis" if chosen.higher_is_better else "viridis_r"  # yellow is good either way

    widths = [max(3.6, 0.55 * cells.loc[cells["variant"] == v, "lr"].nunique() + 1.6) for v in panels]
    rows = max(cells.loc[cells["variant"] == v, "weight_decay"].nunique() for v in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths) + 1.2, max(3.4, 0.42 * rows + 2.2)),
                             width_ratios=widths, squeeze=False, layout="constrained")
    needs = []
    for ax, variant in zip(axes[0], panels):
        config = run_config(runs[runs["variant"] == variant].iloc[0])
        needs.append(_heatmap_panel(ax, cells[cells["variant"] == variant], config, chosen, cmap, vmin, vmax))
        ax.set_title(variant)
    fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap), ax=axes[0].tolist(), label=chosen.label, shrink=0.9)

    handles = [Rectangle((0, 0), 1, 1, fill=False, edgecolor="red", linewidth=2.5, label="best cell")]
    contours = {
        "η̂_r": f"{ETA_R_HAT} contours (Table 1): the same equilibrium rotation along a line",
        "η²λ": f"Adam+ℓ2: contours of η²λ; its {ETA_R_HAT} ∝ (η²λ)$^{{1/3}}$ also needs gradient statistics "
               "(eq. 94)",
    }
    drawn = {need["contours"] for need in needs}
    handles += [Line2D([], [], color=CONTOUR_COLOR, linestyle="--", label=label)
                for what, label in contours.items() if what in drawn]
    marked = set().union(*(need["marked"] for need in needs))
    if marked:
        names = {"diverged": "div. = diverged", "failed": "failed", "unreadable": "? = status unreadable",
                 "unfinished": "… = not finished"}
        handles.append(Patch(facecolor="0.92", edgecolor="0.6", hatch="///",
                             label=", ".join(names[m] for m in STATE_ORDER if m in marked)))
    if any(need["blank"] for need in needs):
        handles.append(Patch(facecolor="white", edgecolor="0.6", label="blank: no run"))
    if any(need["dagger"] for need in needs):
        handles.append(Line2D([], [], linestyle="none", label="†: some seeds diverged (mean of the others)"))
    if any(need["zero"] for need in needs):
        handles.append(Line2D([], [], color="black", linewidth=1.5, label="below: λ = 0, no equilibrium (no contour)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"Final {chosen.label} over learning rate × weight decay (mean of finished seeds)")
    return fig


def plot_heatmap(sweep: str | os.PathLike, metric: str | None = None, files: FigureFiles = FigureFiles()) -> list[Path]:
    """Figure 6 left → SWEEP/figures/heatmap.png and .pdf."""
    return save(draw_heatmap(load_runs(sweep), metric), sweep, "heatmap", files)


# --- Figures 4 left, 5 middle/right, 7 left, 14: metric against the learning rate ----------


def _marker_row(ax: plt.Axes, metric: Metric) -> float:
    """Where, in axes coordinates, runs without a value are marked: at the bad end of the y axis."""
    return 0.03 if metric.higher_is_better else 0.97


def lr_sweep_points(runs: pd.DataFrame, metric: str | None = None) -> tuple[Metric, pd.DataFrame, pd.DataFrame]:
    """(metric, summarize() by variant × lr × λ, its best λ of each variant × lr: the points)."""
    chosen = pick_metric(runs, metric)
    table = summarize(runs, ["variant", "lr", "weight_decay"], chosen)
    if table.groupby("variant")["lr"].nunique().max() < 2:
        raise MissingData("lr-sweep", "runs at two or more learning rates")
    return chosen, table, best_rows(table, ["variant", "lr"], chosen)


def draw_lr_sweep(runs: pd.DataFrame, metric: str | None = None) -> plt.Figure:
    """One line per variant: the metric against the (peak) lr, mean ± std over seeds."""
    chosen, table, points = lr_sweep_points(runs, metric)
    tuned = table.groupby(["variant", "lr"]).size().max() > 1  # several λ per lr: the best is shown

    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    palette = variant_colors(runs)
    variants = list(palette)
    markers = {"diverged": "x", "failed": "X", "unreadable": "$?$", "unfinished": "o"}
    for variant in variants:
        rows = points[points["variant"] == variant]
        done = rows[rows["state"] == "done"]
        ax.errorbar(done["lr"].to_numpy(float), done["mean"].to_numpy(float),
                    yerr=done["std"].fillna(0).to_numpy(float), color=palette[variant], marker="o", markersize=5,
                    capsize=3, linewidth=1.6, label=variant)
        for state, marker in markers.items():
            bad = rows[rows["state"] == state]
            if len(bad):
                ax.scatter(bad["lr"], np.full(len(bad), _marker_row(ax, chosen)), transform=ax.get_xaxis_transform(),
                           marker=marker, s=50, color=palette[variant], clip_on=False, zorder=5,
                           facecolors="none" if state == "unfinished" else None)
    ax.set_xscale("log")
    _label_log_axis(ax, runs["lr"])
    if chosen.name == "val_perplexity":
        _log_y(ax)
    ax.set_xlabel("peak learning rate η (log scale)")
    ax.set_ylabel(chosen.label)
    ax.grid(alpha=0.3)

    handles, _ = ax.get_legend_handles_labels()
    shown = set(points["state"]) - {"done"}
    handles += [Line2D([], [], color="0.3", marker=markers[state], linestyle="none", markerfacecolor="none",
                       label=f"{state}: no finished seed") for state in STATE_ORDER if state in shown]
    ax.legend(handles=handles, fontsize=8)
    notes = [note for note in [_seeds_note(points)] if note]
    if tuned:
        notes.append("best λ at each point")
    products = (runs["lr"] * runs["weight_decay"]).round(15).unique()
    if len(products) == 1 and products[0] > 0:
        notes.append(f"η·λ = {_number(products[0])} fixed, so the same {ETA_R_HAT} (Table 1)")
    ax.set_title(f"Final {chosen.label} against learning rate" + (f"\n({'; '.join(notes)})" if notes else ""),
                 fontsize=10)
    return fig


def plot_lr_sweep(sweep: str | os.PathLike, metric: str | None = None, files: FigureFiles = FigureFiles()) -> list[Path]:
    """Figures 4 left, 5 middle/right, 7 left, 14 → SWEEP/figures/lr_sweep.png and .pdf."""
    return save(draw_lr_sweep(load_runs(sweep), metric), sweep, "lr_sweep", files)


# --- Figure 5 left: loss curves -------------------------------------------------------------


def _best_configs(runs: pd.DataFrame, metric: Metric, limit: int | None = None) -> pd.DataFrame:
    """The runs (all seeds) of each variant's best (lr, λ): the run ids to show by default."""
    table = summarize(runs, ["variant", "lr", "weight_decay"], metric)
    best = best_rows(table[table["state"] == "done"], ["variant"], metric)
    best = best.set_index("variant").reindex(variant_order(runs)).dropna(subset=["lr"])
    if limit is not None:
        best = best.head(limit)
    keys = ["variant", "lr", "weight_decay"]
    return best.reset_index()[keys].merge(runs, on=keys)[runs.columns]  # in variant_order


def _select_runs(runs: pd.DataFrame, run_ids: list[str] | None, metric: str | None, limit: int | None,
                 what: str = "runs") -> pd.DataFrame:
    """The runs `run_ids`, or else the runs of each variant's best (lr, λ) by `metric`; while no
    run has finished, the first run of each variant (curves and dynamics are worth a look then)."""
    if run_ids:
        unknown = [run_id for run_id in run_ids if run_id not in set(runs["run_id"])]
        if unknown:
            raise UserError(f"no run {', '.join(unknown)} among the {what}: {', '.join(sorted(runs['run_id']))}")
        return runs.set_index("run_id").loc[run_ids].reset_index()
    finished = (runs["status"] == "done").any()
    if metric is None and not finished:
        first = runs.drop_duplicates("variant").set_index("variant").reindex(variant_order(runs))
        return first.reset_index()[runs.columns].head(limit)
    return _best_configs(runs, pick_metric(runs, metric), limit)


def curve_runs(runs: pd.DataFrame, curves: pd.DataFrame, run_ids: list[str] | None = None,
               metric: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the runs to draw, the finite loss rows of curves.parquet)."""
    losses = curves[(curves["metric"] == "loss") & np.isfinite(curves["value"])]
    runs = runs[runs["run_id"].isin(losses["run_id"])]
    if runs.empty:
        raise MissingData("curves", "loss curves")
    return _select_runs(runs, run_ids, metric, limit=None, what="runs with loss curves"), losses


def draw_curves(runs: pd.DataFrame, curves: pd.DataFrame, run_ids: list[str] | None = None,
                metric: str | None = None) -> plt.Figure:
    """Train and validation loss over training: each variant at its best (lr, λ), or the given runs."""
    chosen, losses = curve_runs(runs, curves, run_ids, metric)
    chosen = chosen.assign(line=chosen["variant"] + "  (η " + chosen["lr"].map(_number) + ", λ "
                           + chosen["weight_decay"].map(_number) + ")")
    data = losses.merge(chosen[["run_id", "line"]], on="run_id")
    splits = [split for split in ("train", "val") if (data["split"] == split).any()]
    seeds = chosen.groupby("line")["run_id"].nunique().max()

    fig, axes = plt.subplots(1, len(splits), figsize=(6.2 * len(splits), 4.6), squeeze=False, layout="constrained")
    chosen = chosen.sort_values(["variant", "lr", "weight_decay"])
    lines = list(dict.fromkeys(chosen["line"]))
    if len(lines) == chosen["variant"].nunique():  # a line per variant: the variant's colour in every figure
        palette = dict(zip(chosen["line"], chosen["variant"].map(variant_colors(runs))))
    else:
        palette = dict(zip(lines, sns.color_palette("colorblind", len(lines))))
    for ax, split in zip(axes[0], splits):
        part = data[data["split"] == split]
        sns.lineplot(part, x="step", y="value", hue="line", hue_order=list(palette), palette=palette, errorbar="sd",
                     linewidth=1.4, ax=ax, legend=False)
        # The first steps' loss is far above the rest: leave it out of the y range.
        late = part[part["step"] >= 0.1 * part["step"].max()]["value"]
        low, high = late.min(), late.max()
        if high > low:
            ax.set_ylim(low - 0.05 * (high - low), high + 0.15 * (high - low))
        _steps_axis(ax)
        ax.set_ylabel(f"{'train' if split == 'train' else 'validation'} loss (nats)")
        ax.set_title("train loss (window means)" if split == "train" else "validation loss")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=color, linewidth=1.4, label=line) for line, color in palette.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(2, len(handles)), fontsize=8, frameon=False)
    band = f"; mean ± std over {seeds} seeds" if seeds > 1 else ""
    which = "chosen runs" if run_ids else "each variant at its best (η, λ)"
    fig.suptitle(f"Loss over training: {which}{band}")
    return fig


def plot_curves(sweep: str | os.PathLike, run_ids: list[str] | None = None, metric: str | None = None,
                files: FigureFiles = FigureFiles()) -> list[Path]:
    """Figure 5 left → SWEEP/figures/curves.png and .pdf."""
    return save(draw_curves(load_runs(sweep), gather.read_results(sweep, "curves"), run_ids, metric), sweep, "curves",
                files)


# --- Figures 3, 4 middle/right, 6 right, 7 right, 13: norms and rotation over training ------


def read_dynamics(sweep: str | os.PathLike, run_ids: list[str], params: list[str] | None = None,
                  reductions: tuple[str, ...] = ("mean", "rms", "std", "sample")) -> pd.DataFrame:
    """The norm and angular-update rows of some runs (and weights) of dynamics.parquet.

    The table can hold billions of rows at paper scale, so only these runs' files are
    opened and only these rows kept (gather.read_dynamics).
    """
    return gather.read_dynamics(sweep, run_ids, stats=("norm", "angular_update"), reductions=reductions,
                                params=params)


def rms_downsample(steps: np.ndarray, values: np.ndarray, points: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Root mean square over consecutive windows, leaving at most `points` (as Figure 9 is drawn)."""
    keep = np.isfinite(values)
    steps, values = np.asarray(steps, dtype=float)[keep], np.asarray(values, dtype=float)[keep]
    size = math.ceil(len(values) / points)
    if size <= 1:
        return steps, values
    starts = np.arange(0, len(values), size)
    counts = np.diff(np.append(starts, len(values)))
    return np.add.reduceat(steps, starts) / counts, np.sqrt(np.add.reduceat(values**2, starts) / counts)


@dataclass
class Schedule:
    """A run's lr schedule as train.py applied it, and Table 1's predictions along it."""

    config: RunConfig
    total_steps: int
    warmup_steps: int

    @classmethod
    def of(cls, run: pd.Series) -> "Schedule | None":
        """None when gather could not resolve the run's length or warmup."""
        if pd.isna(run["total_steps"]) or pd.isna(run["warmup_total_steps"]):
            return None
        return cls(run_config(run), int(run["total_steps"]), int(run["warmup_total_steps"]))

    def lrs(self, steps) -> np.ndarray:
        return np.array([learning_rate(self.config, int(step), self.total_steps, self.warmup_steps) for step in steps])

    def rotation(self, steps) -> np.ndarray:
        """η̂_r at the scheduled lr of each step (NaN where Table 1 needs gradient statistics)."""
        if self.config.weight_decay <= 0:
            return np.full(len(steps), np.nan)  # no weight decay, no equilibrium
        return np.asarray(gather.predicted_rotation(self.config, self.lrs(steps)), dtype=float)

    def sizes(self, fan_in: np.ndarray, norm0: np.ndarray, steps) -> dict[str, np.ndarray] | None:
        """Per weight (columns) at `steps` (rows): the equilibrium norm at the scheduled lr, and the
        transient norm and rotation (theory.transient) from the initial norm `norm0`.

        None where Table 1 has no hyperparameter-only norm (SGDM, Adam+ℓ2, RVs, λ = 0).
        """
        config = self.config
        if config.rotational or config.optimizer not in ("adamw", "lion") or config.weight_decay <= 0:
            return None
        hyper = dict(beta1=config.beta1, beta2=config.beta2, momentum=config.momentum)
        every = self.lrs(range(int(max(steps)) + 1))
        walk = theory.transient(config.optimizer, every, config.weight_decay, dim=fan_in, norm0=norm0, **hyper)
        index = np.asarray(steps, dtype=int)
        with np.errstate(divide="ignore", invalid="ignore"):  # lr 0 (a warmup's start) has no equilibrium: NaN
            equilibrium = theory.equilibrium_norm(config.optimizer, every[index][:, None], config.weight_decay,
                                                  dim=fan_in[None, :], **hyper)
        return {"equilibrium": equilibrium, "norm": walk["norm"][index], "rotation": walk["rotation"][index]}


def _steps_axis(ax: plt.Axes) -> None:
    """An x axis of optimizer steps: whole numbers, thousands as 10k so that labels never touch."""
    ax.set_xlabel("optimizer step")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=5, integer=True))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
        lambda step, _: f"{step / 1000:g}k" if abs(step) >= 1000 else f"{step:g}"))


def _note(ax: plt.Axes, text: str) -> None:
    """A remark inside a panel, where it covers the least data (a legend's "best" place)."""
    ax.legend(handles=[], title=text, title_fontsize=7, loc="best", framealpha=0.85)


def _prediction_note(schedule: Schedule | None) -> str | None:
    """Why a run has no η̂_r line, or None if it has one."""
    if schedule is None:
        return f"no {ETA_R_HAT}: the lr schedule cannot be rebuilt"
    config = schedule.config
    if config.weight_decay <= 0:
        return f"no {ETA_R_HAT}: λ = 0 has no equilibrium"
    if not np.isfinite(schedule.rotation([0])).all():
        return f"no {ETA_R_HAT}: Adam+ℓ2's needs gradient statistics"
    return None


def _layer_colors(weights: list[str]) -> dict[str, tuple]:
    colors = sns.color_palette("tab10" if len(weights) <= 10 else "viridis", len(weights))
    return dict(zip(weights, colors))


def _short(param: str) -> str:
    return param.removesuffix(".weight")


# The (stat, reduction) rows draw_dynamics draws: all that plot_dynamics reads for it.
DRAWN_ROWS = (("norm", "rms"), ("angular_update", "mean"))


def draw_dynamics(chosen: pd.DataFrame, weights: list[str], dynamics: pd.DataFrame, layers: pd.DataFrame,
                  curves: pd.DataFrame) -> plt.Figure:
    """Per-layer norm (top row) and angular update (bottom row) over training, one column per run.

    chosen: rows of load_runs(); weights: the weights to draw (model order); dynamics,
    layers, curves: the results tables (dynamics as read_dynamics() reads it).
    """
    fig, axes = plt.subplots(2, len(chosen), figsize=(5.2 * len(chosen) + 0.6, 7.4), squeeze=False,
                             sharex="col", layout="constrained")
    colors = _layer_colors(weights)
    has_fan_in = "fan_in" in layers
    any_prediction = any_sizes = False
    for column, (_, run) in enumerate(chosen.iterrows()):
        norm_ax, angle_ax = axes[0][column], axes[1][column]
        data = dynamics[dynamics["run_id"] == run["run_id"]]
        drawn = [w for w in weights if (data["param"] == w).any()]
        for weight in drawn:
            rows = data[data["param"] == weight]
            for ax, stat, reduction in ((norm_ax, "norm", "rms"), (angle_ax, "angular_update", "mean")):
                series = rows[(rows["stat"] == stat) & (rows["reduction"] == reduction)].sort_values("step")
                ax.plot(*rms_downsample(series["step"].to_numpy(), series["value"].to_numpy()),
                        color=colors[weight], linewidth=1.1)
        steps = np.sort(data["step"].unique())
        schedule = Schedule.of(run)
        note = _prediction_note(schedule)
        if note is None:
            angle_ax.plot(steps, schedule.rotation(steps), color="black", **PREDICTION)
            any_prediction = True
        else:
            _note(angle_ax, note)
        run_layers = layers[(layers["run_id"] == run["run_id"]) & layers["param"].isin(drawn)]
        sizes = None
        if has_fan_in and schedule is not None and len(run_layers) == len(drawn) and len(steps):
            first = data[(data["stat"] == "norm") & (data["reduction"] == "rms") & (data["step"] == steps[0])]
            norm0 = first.set_index("param")["value"].reindex(drawn).to_numpy(float)
            fan_in = run_layers.set_index("param")["fan_in"].reindex(drawn).to_numpy(float)
            sizes = schedule.sizes(fan_in, norm0, steps)
        if sizes is not None:
            any_sizes = True
            for k, weight in enumerate(drawn):
                norm_ax.plot(steps, sizes["equilibrium"][:, k], color=colors[weight], linestyle=":", linewidth=1.2)
                norm_ax.plot(steps, sizes["norm"][:, k], color=colors[weight], linestyle="--", linewidth=1)
                angle_ax.plot(steps, sizes["rotation"][:, k], color=colors[weight], linestyle="--", linewidth=1)
        norm_ax.set_title(f"{run['variant']}\nη {_number(run['lr'])}, λ {_number(run['weight_decay'])}, "
                          f"seed {run['seed']:.0f} ({run['run_id']})", fontsize=9)
        norm_ax.set_ylabel(f"RMS over neurons of the norm {NORM}")
        angle_ax.set_ylabel(f"mean angular update {ETA_R} (rad/step)")
        _steps_axis(angle_ax)
        for ax in (norm_ax, angle_ax):
            _log_y(ax)
            ax.grid(alpha=0.3)

    handles = []
    if len(weights) <= 10:
        handles += [Line2D([], [], color=colors[w], label=_short(w)) for w in weights]
    else:
        fig.colorbar(ScalarMappable(Normalize(0, len(weights) - 1), "viridis"), ax=axes[:, -1].tolist(),
                     label=f"layer, input ({_short(weights[0])}) → output ({_short(weights[-1])})", shrink=0.8)
    if any_prediction:
        handles.append(Line2D([], [], color="black", label=f"{ETA_R_HAT} (Table 1) at the scheduled lr", **PREDICTION))
    if not has_fan_in:
        handles.append(Line2D([], [], linestyle="none", label=f"(no {NORM_HAT} or transient: they need each weight's "
                                                                "fan-in, which the results do not have)"))
    if any_sizes:
        handles.append(Line2D([], [], color="0.4", linestyle=":",
                              label=f"equilibrium {NORM_HAT} (Table 1) at the scheduled lr"))
        handles.append(Line2D([], [], color="0.4", linestyle="--", label="transient (eq. 15) from the initial norm"))
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Weight norm and rotation per layer over training (solid: measured, dashed: predicted)")
    return fig


def _spread_out(samples: pd.DataFrame, count: int) -> np.ndarray:
    """`count` of the sampled neurons that span their range: evenly spaced ranks of their mean value."""
    ranked = samples.groupby("neuron")["value"].mean().sort_values().index.to_numpy()
    return ranked[np.unique(np.linspace(0, len(ranked) - 1, min(count, len(ranked))).round().astype(int))]


def draw_neuron_dynamics(chosen: pd.DataFrame, weight: str, dynamics: pd.DataFrame, curves: pd.DataFrame,
                         examples: int = 6) -> plt.Figure:
    """Figure 7 right: one weight's neurons, example neurons in colour and the mean ± std over all of them."""
    fig, axes = plt.subplots(2, len(chosen), figsize=(5.2 * len(chosen), 7.0), squeeze=False, sharex="col",
                             sharey="row", layout="constrained")
    any_prediction = False
    for column, (_, run) in enumerate(chosen.iterrows()):
        data = dynamics[(dynamics["run_id"] == run["run_id"]) & (dynamics["param"] == weight)]
        # Examples from the slowest to the fastest rotating of the sampled neurons.
        picked = _spread_out(data[(data["stat"] == "angular_update") & (data["reduction"] == "sample")], examples)
        for ax, stat in zip(axes[:, column], ("norm", "angular_update")):
            rows = data[data["stat"] == stat].sort_values("step")
            samples = rows[rows["reduction"] == "sample"]
            for neuron, color in zip(picked, sns.color_palette("husl", len(picked))):
                series = samples[samples["neuron"] == neuron]
                ax.plot(*rms_downsample(series["step"].to_numpy(), series["value"].to_numpy()), color=color,
                        linewidth=0.9, alpha=0.9)
            mean = rows[rows["reduction"] == "mean"].set_index("step")["value"]
            std = rows[rows["reduction"] == "std"].set_index("step")["value"].reindex(mean.index)
            steps, center = rms_downsample(mean.index.to_numpy(), mean.to_numpy())
            _, spread = rms_downsample(std.index.to_numpy(), std.to_numpy())
            if len(spread) == len(center):
                ax.fill_between(steps, np.maximum(center - spread, center * 0.05), center + spread,
                                color="0.6", alpha=0.35, linewidth=0)
            ax.plot(steps, center, color="black", linewidth=1.8)
            ax.grid(alpha=0.3)
        schedule = Schedule.of(run)
        note = _prediction_note(schedule)
        angle_ax = axes[1][column]
        if note is None:
            steps = np.sort(data["step"].unique())
            angle_ax.plot(steps, schedule.rotation(steps), color="red", **PREDICTION)
            any_prediction = True
        else:
            _note(angle_ax, note)
        axes[0][column].set_title(f"{run['variant']}\nη {_number(run['lr'])}, λ {_number(run['weight_decay'])} "
                                  f"({run['run_id']})", fontsize=9)
        _steps_axis(angle_ax)
    for row in axes:
        _log_y(*row)
    axes[0][0].set_ylabel(f"neuron norm {NORM}")
    axes[1][0].set_ylabel(f"angular update {ETA_R} (rad/step)")
    handles = [Line2D([], [], color="C1", linewidth=0.9, label="example neurons (each colour one)"),
               Line2D([], [], color="black", linewidth=1.8, label="mean over the layer's neurons"),
               Patch(color="0.6", alpha=0.35, label="± std over the layer's neurons")]
    if any_prediction:
        handles.append(Line2D([], [], color="red", label=f"{ETA_R_HAT} (Table 1) at the scheduled lr", **PREDICTION))
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"Rotation of the neurons of {_short(weight)}")
    return fig


def dynamics_selection(sweep: str | os.PathLike, run_ids: list[str] | None = None, layers: list[str] | None = None,
                       metric: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(layers.parquet of the chosen runs, the chosen rows of load_runs(), the weights to draw).

    Runs: `run_ids`, or each variant's best (lr, λ) run, at most four. Weights: `layers`,
    or every weight with dynamics, in the model's order. Unknown ones are a UserError
    that lists the valid ones.
    """
    layers_wanted = layers
    runs = load_runs(sweep)
    layers = gather.read_results(sweep, "layers")
    runs_with = runs[runs["run_id"].isin(layers["run_id"])]
    if runs_with.empty:
        raise MissingData("dynamics", "recorded norms and angular updates (layers.parquet is empty)")
    chosen = _select_runs(runs_with, run_ids, metric, limit=4, what="runs with dynamics")
    if not run_ids:  # one seed per variant is enough to show the dynamics
        chosen = chosen.drop_duplicates("variant")
    layers = layers[layers["run_id"].isin(chosen["run_id"])]
    # Model order (the recorder's), not alphabetical: weights as they first appear in the dynamics.
    weights = list(dict.fromkeys(read_dynamics(sweep, chosen["run_id"].tolist()[:1], reductions=("mean",))["param"]))
    weights = [w for w in weights if w in set(layers["param"])] + sorted(set(layers["param"]) - set(weights))
    if layers_wanted:
        unknown = [w for w in layers_wanted if w not in weights]
        if unknown:
            raise UserError(f"no weight {', '.join(unknown)} recorded; recorded weights: {', '.join(weights)}")
        weights = [w for w in weights if w in layers_wanted]
    return layers, chosen, weights


def plot_dynamics(sweep: str | os.PathLike, run_ids: list[str] | None = None, layers: list[str] | None = None,
                  neurons: bool = False, metric: str | None = None, files: FigureFiles = FigureFiles()) -> list[Path]:
    """Figures 3, 4 middle/right, 6 right, 13 (per layer) → SWEEP/figures/dynamics.png and .pdf;
    with neurons=True, Figure 7 right (the neurons of one weight) → dynamics_neurons.png and .pdf.

    run_ids and layers choose the runs and weights (dynamics_selection). With neurons=True
    the weight is the first of `layers`, by default the one whose neurons rotate the most
    unevenly (layers.parquet's imbalance_neurons, averaged over the chosen runs).
    """
    layer_table, chosen, weights = dynamics_selection(sweep, run_ids, layers, metric)
    curves = gather.read_results(sweep, "curves")
    if neurons:
        if layers:
            weight = layers[0]
        else:
            spread = layer_table[layer_table["param"].isin(weights)].groupby("param")["imbalance_neurons"].mean()
            weight = spread.idxmax() if spread.notna().any() else weights[0]
        dynamics = read_dynamics(sweep, chosen["run_id"].tolist(), [weight])
        return save(draw_neuron_dynamics(chosen, weight, dynamics, curves), sweep, "dynamics_neurons", files)
    dynamics = gather.read_dynamics(sweep, chosen["run_id"].tolist(), pairs=DRAWN_ROWS, params=weights)
    return save(draw_dynamics(chosen, weights, dynamics, layer_table, curves), sweep, "dynamics", files)


# --- Figure 16 right: imbalanced rotation -----------------------------------------------------


@dataclass
class ImbalancePanel:
    title: str
    xlabel: str
    points: pd.DataFrame  # best_rows() by imbalance_mode × x: the best λ of each setting
    balanced_x: float | None  # where the balanced RV sits on this axis (p = 100%, f = 1), if it does


def imbalance_tables(runs: pd.DataFrame, metric: str | None = None
                     ) -> tuple[Metric, list[ImbalancePanel], pd.Series | None]:
    """(metric, the panels of Figure 16 right, the balanced full-width RV's best row or None).

    RunConfig.imbalance_portion is the affected fraction 1 − p (experiments/imbalance.py);
    a run with portion 0 or factor 1 is balanced. Right-1 sweeps the portion at the factor
    with the most portions, Right-2 the factor at the portion with the most factors,
    Right-3 the width of balanced networks.
    """
    rv = runs[runs["rotational"]]
    rv = rv.assign(width=rv["model_options"].map(_width).astype(float), imbalance_mode=rv["imbalance_mode"].astype(str))
    balanced = (rv["imbalance_portion"] <= 0) | (rv["imbalance_factor"] == 1)
    imbalanced, narrow = rv[~balanced & rv["width"].isna()], rv[balanced & rv["width"].notna()]
    if imbalanced.empty and narrow.empty:
        raise MissingData("imbalance", "imbalanced or narrower RV runs")
    chosen = pick_metric(rv, metric)

    def best(frame: pd.DataFrame, x: pd.Series) -> pd.DataFrame:
        table = summarize(frame.assign(x=x), ["imbalance_mode", "x", "weight_decay"], chosen)
        return best_rows(table, ["imbalance_mode", "x"], chosen)

    panels = []
    if len(imbalanced):
        portions = imbalanced.groupby("imbalance_factor")["imbalance_portion"].nunique()
        factor = portions[portions == portions.max()].index.max()  # a tie: the strongest factor
        factors = imbalanced.groupby("imbalance_portion")["imbalance_factor"].nunique()
        portion = factors[factors == factors.max()].index.max()  # a tie: the most neurons affected
        by_portion = imbalanced[imbalanced["imbalance_factor"] == factor]
        by_factor = imbalanced[imbalanced["imbalance_portion"] == portion]
        panels.append(ImbalancePanel(f"portion p, at factor f = {factor:g}", "unaffected portion p of the neurons (%)",
                                     best(by_portion, 100 * (1 - by_portion["imbalance_portion"])), 100.0))
        panels.append(ImbalancePanel(f"factor f, at portion p = {1 - portion:.0%}",
                                     "rotation factor f (slower / faster)",
                                     best(by_factor, by_factor["imbalance_factor"]), 1.0))
    if len(narrow):
        panels.append(ImbalancePanel("width, balanced", "network width (channels of the first stage)",
                                     best(narrow.assign(imbalance_mode="narrower"), narrow["width"]), None))
    reference = rv[balanced & rv["width"].isna()]
    reference = best(reference, pd.Series(0.0, index=reference.index)) if len(reference) else None
    finished = reference is not None and reference.iloc[0]["state"] == "done"
    return chosen, panels, reference.iloc[0] if finished else None


def draw_imbalance(runs: pd.DataFrame, metric: str | None = None) -> plt.Figure:
    """Figure 16 right: the metric against p, f and width, each point at its best λ (mean ± std over seeds)."""
    chosen, panels, reference = imbalance_tables(runs, metric)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels) + 0.4, 4.4), squeeze=False, sharey=True,
                             layout="constrained")
    styles = {"slow": ("1 − p of the neurons f× slower", "C0", "o"),
              "split": ("1 − p: half f× slower, half f× faster", "C1", "s"),
              "narrower": ("balanced RV, narrower network", "C2", "D")}
    shown, unfinished = set(), False
    for ax, panel in zip(axes[0], panels):
        for mode, rows in panel.points.groupby("imbalance_mode"):
            label, color, marker = styles[mode]
            done = rows[rows["state"] == "done"]
            if panel.balanced_x is not None and reference is not None:  # each line ends at the balanced RV
                done = pd.concat([done, pd.DataFrame({"x": [panel.balanced_x], "mean": [reference["mean"]],
                                                      "std": [reference["std"]]})])
            done = done.sort_values("x")
            ax.errorbar(done["x"].to_numpy(float), done["mean"].to_numpy(float),
                        yerr=done["std"].fillna(0).to_numpy(float), color=color, marker=marker,
                        capsize=3, linewidth=1.5)
            bad = rows[rows["state"] != "done"]
            if len(bad):
                ax.scatter(bad["x"], np.full(len(bad), _marker_row(ax, chosen)), transform=ax.get_xaxis_transform(),
                           marker="x", color=color, s=50, clip_on=False)
                unfinished = True
            shown.add(mode)
        if reference is not None:
            ax.axhline(reference["mean"], color="0.3", linestyle=":", linewidth=1.2)
        ticks = set(panel.points["x"]) | ({panel.balanced_x} if panel.balanced_x is not None and reference is not None
                                          else set())
        ax.set_xticks(sorted(ticks), [_number(t) for t in sorted(ticks)])
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(chosen.label)

    handles = [Line2D([], [], color=color, marker=marker, label=label)
               for mode, (label, color, marker) in styles.items() if mode in shown]
    if reference is not None:
        handles.append(Line2D([], [], color="0.3", linestyle=":", label="balanced RV, full width"))
    if unfinished:
        handles.append(Line2D([], [], color="0.3", marker="x", linestyle="none", label="no finished seed"))
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    note = _seeds_note(pd.concat([panel.points for panel in panels]))
    optimizer = OPTIMIZER_NAMES.get(runs.loc[runs["rotational"], "optimizer"].iloc[0], "")
    fig.suptitle(f"Imbalanced rotation in RV-{optimizer}: final {chosen.label}\nat the best λ of each point"
                 + (f", {note}" if note else ""), fontsize=11)
    return fig


def plot_imbalance(sweep: str | os.PathLike, metric: str | None = None, files: FigureFiles = FigureFiles()) -> list[Path]:
    """Figure 16 right → SWEEP/figures/imbalance.png and .pdf."""
    return save(draw_imbalance(load_runs(sweep), metric), sweep, "imbalance", files)


# --- Figure 9: the random walk --------------------------------------------------------------


# What the figure reads from each randomwalk.json.
WALK_KEYS = {"optimizer", "rotational", "lr", "weight_decay", "norm_predicted", "eta_r_predicted", "eta_g_predicted"}


def read_randomwalks(directory: str | os.PathLike) -> list[tuple[dict, pd.DataFrame]]:
    """(randomwalk.json, dynamics.parquet) of each `rotsweep randomwalk --out` directory in `directory`."""
    directory = Path(directory)
    walks = []
    for child in sorted(directory.iterdir()) if directory.is_dir() else []:
        if (child / "randomwalk.json").is_file() and (child / "dynamics.parquet").is_file():
            result = store.read_json(child / "randomwalk.json")
            missing = sorted(WALK_KEYS - set(result))
            if missing:
                raise UserError(f"{child / 'randomwalk.json'} has no {', '.join(missing)} (an older version wrote "
                                f"it); run `rotsweep randomwalk --optimizer {result.get('optimizer', 'NAME')} "
                                f"--out {child}` again")
            walks.append(({**result, "directory": child.name}, pd.read_parquet(child / "dynamics.parquet")))
    if not walks:
        raise MissingData("randomwalk", f"random-walk runs in {directory}/ (subdirectories with randomwalk.json)")
    order = {name: k for k, name in enumerate(("sgdm", "adamw", "adam-l2", "lion"))}
    return sorted(walks, key=lambda walk: (walk[0]["rotational"], order.get(walk[0]["optimizer"], 9)))


def _walk_title(result: dict) -> str:
    name = ("RV-" if result["rotational"] else "") + OPTIMIZER_NAMES.get(result["optimizer"], result["optimizer"])
    if result.get("eta_r_from", result["optimizer"]) != result["optimizer"]:
        name += f" ({ETA_R_HAT} of {OPTIMIZER_NAMES.get(result['eta_r_from'], result['eta_r_from'])})"
    return f"{name}\nη {_number(result['lr'])}, λ {_number(result['weight_decay'])}"


def draw_randomwalk(walks: list[tuple[dict, pd.DataFrame]], examples: int = 4) -> plt.Figure:
    """Figure 9: rows norm, angular update, RMS update; one column per optimizer."""
    # stat, the layer's reduction (as randomwalk.json measures it), label, randomwalk.json's prediction.
    rows = (("norm", "rms", f"neuron norm {NORM}", "norm_predicted"),
            ("angular_update", "mean", f"angular update {ETA_R} (rad/step)", "eta_r_predicted"),
            ("rms_update", "mean", f"RMS update {ETA_G} per coordinate", "eta_g_predicted"))
    fig, axes = plt.subplots(3, len(walks), figsize=(3.6 * len(walks) + 0.4, 8.2), squeeze=False, sharex="col",
                             layout="constrained")
    colors = ["#e7298a", "#ff7f00", "#33a02c", "#1f78b4"]  # pink, orange, green, blue as in the paper
    titles = [_walk_title(result) for result, _ in walks]
    for column, (result, table) in enumerate(walks):
        table = table[table["param"] == table["param"].iloc[0]]
        # Neurons with different gradient sizes, from the smallest to the largest of the sampled ones.
        picked = _spread_out(table[(table["stat"] == "grad_norm") & (table["reduction"] == "sample")], examples)
        for row, (stat, reduction, label, key) in enumerate(rows):
            ax = axes[row][column]
            data = table[table["stat"] == stat]
            for neuron, color in zip(picked, colors):
                series = data[(data["reduction"] == "sample") & (data["neuron"] == neuron)].sort_values("step")
                ax.plot(*rms_downsample(series["step"].to_numpy(), series["value"].to_numpy(), 150), color=color,
                        linewidth=0.9)
            layer = data[data["reduction"] == reduction].sort_values("step")
            ax.plot(*rms_downsample(layer["step"].to_numpy(), layer["value"].to_numpy(), 150), color="black",
                    linewidth=1.6)
            ax.axhline(result[key], color="red", **PREDICTION)
            _log_y(ax)
            ax.grid(alpha=0.3)
            if column == 0:
                ax.set_ylabel(label)
        title = titles[column]
        if titles.count(title) > 1:  # walks that differ only in what the title leaves out
            title += f"\n{result.get('directory', '')} ({result.get('steps', '?')} steps)"
        axes[0][column].set_title(title, fontsize=10)
        _steps_axis(axes[-1][column])
    handles = [Line2D([], [], color=colors[0], label="individual neurons (each colour one)"),
               Line2D([], [], color="black", linewidth=1.6, label="layer average (RMS for the norm)"),
               Line2D([], [], color="red", label="Table 1 prediction for the layer average", **PREDICTION)]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Random walk of Appendix F against Table 1 (RMS-averaged over windows)")
    return fig


def plot_randomwalk(directory: str | os.PathLike, files: FigureFiles = FigureFiles()) -> list[Path]:
    """Figure 9 → DIRECTORY/figures/randomwalk.png and .pdf."""
    return save(draw_randomwalk(read_randomwalks(directory)), directory, "randomwalk", files)


# --- Every figure a sweep supports ----------------------------------------------------------


# What each figure needs, checked without drawing: raises MissingData (a UserError) if absent.
REQUIREMENTS: dict[str, Callable[[Path], object]] = {
    "heatmap": lambda sweep: heatmap_cells(load_runs(sweep)),
    "lr-sweep": lambda sweep: lr_sweep_points(load_runs(sweep)),
    "curves": lambda sweep: curve_runs(load_runs(sweep), gather.read_results(sweep, "curves")),
    "dynamics": dynamics_selection,
    "imbalance": lambda sweep: imbalance_tables(load_runs(sweep)),
    "randomwalk": read_randomwalks,
}

# plot_all's figures: (name, what draws it, the figure's requirement).
ALL_FIGURES: list[tuple[str, Callable[..., list[Path]], str]] = [  # plot(sweep, files=...)
    ("heatmap", plot_heatmap, "heatmap"),
    ("lr-sweep", plot_lr_sweep, "lr-sweep"),
    ("curves", plot_curves, "curves"),
    ("dynamics", plot_dynamics, "dynamics"),
    ("dynamics-neurons", lambda sweep, files: plot_dynamics(sweep, neurons=True, files=files), "dynamics"),
    ("imbalance", plot_imbalance, "imbalance"),
    ("randomwalk", plot_randomwalk, "randomwalk"),
]


def _require_gathered(directory: Path) -> None:
    """A UserError naming the command to run when `directory` is not a gathered sweep."""
    if gather.output_paths(directory)["runs"].is_file():
        return
    if (directory / store.CONFIG_FILE).is_file() or (directory / store.STATUS_FILE).is_file():
        sweep = directory.parent.parent if directory.parent.name == "runs" else None
        where = (f"`rotsweep gather {sweep}`, then `rotsweep plot all {sweep}`" if sweep is not None
                 else "`rotsweep gather SWEEP` on the sweep that holds it")
        raise UserError(f"{directory} is a run directory, not a sweep: figures are drawn from a gathered sweep; "
                        f"run {where}")
    if (directory / store.MANIFEST_FILE).is_file() or store.runs_dir(directory).is_dir():
        raise UserError(f"{directory} has not been gathered (no {gather.output_paths(directory)['runs']}); "
                        f"run `rotsweep gather {directory}`, then `rotsweep plot all {directory}`")
    raise UserError(f"{directory} is neither a sweep nor a random-walk directory; give the directory that "
                    "`rotsweep launch` (then `rotsweep gather`) or `rotsweep randomwalk --out` wrote")


@dataclass
class Drawn:
    """What plot_all drew, and why it skipped the others."""

    paths: dict[str, list[Path]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def format(self) -> str:
        lines = [f"{name}: {paths[0]}" + "".join(f" (and {path.suffix})" for path in paths[1:])
                 for name, paths in self.paths.items()]
        lines += [f"{name}: skipped, {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)


def plot_all(sweep: str | os.PathLike, files: FigureFiles = FigureFiles()) -> Drawn:
    """Every figure the sweep's data supports; a random-walk directory (see plot_randomwalk) gives Figure 9."""
    sweep = Path(sweep)
    if not sweep.is_dir():
        raise UserError(f"{sweep} is not a directory; give a sweep directory (or a random-walk one)")
    walk = _is_randomwalk_dir(sweep)
    if not walk:
        _require_gathered(sweep)
    drawn = Drawn()
    for name, plot, requirement in ALL_FIGURES:
        if walk != (requirement == "randomwalk"):
            continue
        try:
            REQUIREMENTS[requirement](sweep)
        except UserError as error:
            drawn.skipped[name] = str(error)
            continue
        drawn.paths[name] = plot(sweep, files=files)
    return drawn
