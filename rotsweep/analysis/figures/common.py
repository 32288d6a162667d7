"""What every figure shares: metrics and what a value is (summarize), variants and their
order and colours, number and axis formatting, saving (FigureFiles), and the helpers that
several figures use (run selection, RMS downsampling, step axes). The package docstring
(rotsweep/analysis/figures/__init__.py) says what each figure draws."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# No matplotlib.use() here: importing this module in a notebook must leave its backend alone.
# The CLI chooses Agg (files only) before importing it; every figure here is drawn on a figure
# object and saved, never shown.
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from rotsweep import store, theory
from rotsweep.analysis import results
from rotsweep.analysis.catalog import SOURCES
from rotsweep.errors import UserError

FIGURES_DIR = "figures"
OPTIMIZER_NAMES = theory.OPTIMIZER_NAMES

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


def load_runs(sweep: str | os.PathLike, *, axes: tuple[str, ...] = (), by: list[str] | None = None) -> pd.DataFrame:
    """runs.parquet with a `variant` column (add_variants); rows whose config could not be read are left out."""
    runs = results.read_results(sweep, "runs")
    runs = runs[runs["lr"].notna()].reset_index(drop=True)
    # Without the config-less rows, RunConfig's flags are plain booleans again (not objects with None).
    runs = runs.astype({name: bool for name, base in results.CONFIG_TYPES.items() if base is bool})
    return add_variants(runs, axes=axes, by=by)


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


# What tells variants apart, in the order a variant's name lists it, and the RunConfig fields
# each part describes. The optimizer is always named; another part only where it separates
# runs that the parts before it do not: RV-AdamW comes with gains in the warmup sweep, so
# "gains" is not named again.
VARIANT_PARTS: dict[str, tuple[Callable[[pd.Series], str], set[str]]] = {
    "optimizer": (_optimizer_name, {"optimizer", "rotational", "rv_eta_r_from"}),
    "model": (lambda run: run["model"], {"model"}),
    "weight_standardization": (lambda run: "+WS" if run["weight_standardization"] else "no WS",
                               {"weight_standardization"}),
    "gain": (lambda run: "+gains" if run["gain"] else "no gains", {"gain"}),
    "warmup": (_warmup_name, {"warmup_steps", "warmup_epochs"}),
    "imbalance": (_imbalance_name, {"imbalance_portion", "imbalance_factor", "imbalance_mode"}),
    "width": (lambda run: f"width {_width(run['model_options'])}" if _width(run["model_options"]) else "full width",
              {"model_options"}),
}
NAMED_FIELDS = set().union(*(fields for _, fields in VARIANT_PARTS.values()))
SWEPT_FIELDS = {"lr", "weight_decay", "seed"}  # the figures' usual axes, never part of a variant


def check_columns(runs: pd.DataFrame, names, what: str) -> None:
    """A UserError naming the columns of runs.parquet when one of `names` is not among them."""
    unknown = [name for name in names if name not in runs.columns]
    if unknown:
        fields = ", ".join(name for name in results.CONFIG_TYPES if runs[name].nunique(dropna=False) > 1) or "none"
        raise UserError(f"no column {', '.join(unknown)} in runs.parquet for {what}; choose a RunConfig field "
                        f"(those that vary in this sweep: {fields}) or another column of runs.parquet "
                        "(e.g. eta_lambda)")


def _describe(runs: pd.DataFrame, name: str) -> pd.Series:
    """Each run's label for the field or part `name`: "AdamW", "+WS", or "epochs 3"."""
    if name in VARIANT_PARTS:
        return runs.apply(VARIANT_PARTS[name][0], axis=1)
    return runs[name].map(lambda value: f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}")


def add_variants(runs: pd.DataFrame, *, axes: tuple[str, ...] = (), by: list[str] | None = None) -> pd.DataFrame:
    """Add `variant`, a readable name of everything but lr, λ, seed and `axes` that differs between runs.

    With `by` (RunConfig fields or VARIANT_PARTS names), the variant names those and nothing
    else: runs that differ in anything else fall into one group (a figure then shows each
    group's best setting, or mean over its runs).
    """
    if runs.empty:
        return runs.assign(variant=pd.Series(dtype=str))
    check_columns(runs, [*axes, *[name for name in by or () if name not in VARIANT_PARTS]], "the figure's axes")
    if by:
        # In the order given; a field that a part describes (rotational: "RV-AdamW") by its part.
        parts = [name if name in VARIANT_PARTS else next(
            (part for part, (_, fields) in VARIANT_PARTS.items() if name in fields), name) for name in by]
        labels = [_describe(runs, name) for name in dict.fromkeys(parts)]
        return runs.assign(variant=pd.concat(labels, axis=1).agg(", ".join, axis=1))
    excluded = SWEPT_FIELDS | set(axes)
    parts = {}
    for name, (_, fields) in VARIANT_PARTS.items():
        if name == "optimizer" or not fields & excluded:
            parts[name] = _describe(runs, name)
        else:  # an axis is one of the part's fields: name the others on their own
            parts.update({field: _describe(runs, field) for field in sorted(fields - excluded)})
    for name in results.CONFIG_TYPES:  # anything else that varies, e.g. epochs or rv_beta
        if name not in NAMED_FIELDS | excluded:
            parts[name] = runs[name].map(lambda value, name=name: f"{name} {value}")
    key = parts["optimizer"]  # always named, so that a variant reads on its own: "AdamW, +WS"
    named = [parts.pop("optimizer")]
    for labels in parts.values():
        if (key + "|" + labels).nunique() > key.nunique():
            named.append(labels)
            key = key + "|" + labels
    return runs.assign(variant=pd.concat(named, axis=1).agg(", ".join, axis=1))


# How an axis is labelled; any other column is labelled by its name.
AXIS_LABELS = {"lr": "peak learning rate η", "weight_decay": "weight decay λ", "eta_lambda": "η·λ"}


def axis_label(name: str, log: bool) -> str:
    return AXIS_LABELS.get(name, name) + (" (log scale)" if log else "")


def numeric_axes(sweep: str | os.PathLike, runs: pd.DataFrame) -> list[str]:
    """The sweep's numeric axes that vary among its runs: lr and weight_decay first, then the
    manifest's grid ("axes") in its order, then any other numeric RunConfig field that varies."""
    grid = list((store.read_manifest(sweep) or {}).get("axes") or {})
    names = ["lr", "weight_decay", *grid, *results.CONFIG_TYPES]
    return [name for name in dict.fromkeys(names) if name in runs.columns and name != "seed"
            and pd.api.types.is_numeric_dtype(runs[name]) and not pd.api.types.is_bool_dtype(runs[name])
            and runs[name].nunique() > 1]


def figure_name(base: str, *axes: str | None, by: list[str] | None = None) -> str:
    """The file name of a figure drawn over other axes than its default: lr_sweep, lr_sweep-x-epochs, ..."""
    parts = [base, *(f"{key}-{value}" for key, value in zip("xy", axes) if value)]
    if by:
        parts.append("by-" + "-".join(by))
    return "-".join(parts)


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


# --- Shared by several figures ------------------------------------------------------------


def _marker_row(ax: plt.Axes, metric: Metric) -> float:
    """Where, in axes coordinates, runs without a value are marked: at the bad end of the y axis."""
    return 0.03 if metric.higher_is_better else 0.97


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


def _steps_axis(ax: plt.Axes) -> None:
    """An x axis of optimizer steps: whole numbers, thousands as 10k so that labels never touch."""
    ax.set_xlabel("optimizer step")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=5, integer=True))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
        lambda step, _: f"{step / 1000:g}k" if abs(step) >= 1000 else f"{step:g}"))


def _spread_out(samples: pd.DataFrame, count: int) -> np.ndarray:
    """`count` of the sampled neurons that span their range: evenly spaced ranks of their mean value."""
    ranked = samples.groupby("neuron")["value"].mean().sort_values().index.to_numpy()
    return ranked[np.unique(np.linspace(0, len(ranked) - 1, min(count, len(ranked))).round().astype(int))]
