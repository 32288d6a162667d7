"""Figure 5 left: train and validation loss over training."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from rotsweep.analysis import results
from rotsweep.analysis.figures.common import (
    figure_name,
    FigureFiles, MissingData, _number, _select_runs, _steps_axis, load_runs, save, variant_colors,
)


# --- Figure 5 left: loss curves -------------------------------------------------------------


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
    # A group of --by may hold runs that differ in more than their seed: then say runs.
    what = "seeds" if seeds == chosen.groupby("line")["seed"].nunique().max() else "runs"

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
    band = f"; mean ± std over {seeds} {what}" if seeds > 1 else ""
    which = "chosen runs" if run_ids else "each variant at its best (η, λ)"
    fig.suptitle(f"Loss over training: {which}{band}")
    return fig


def plot_curves(sweep: str | os.PathLike, run_ids: list[str] | None = None, metric: str | None = None,
                files: FigureFiles = FigureFiles(), by: list[str] | None = None) -> list[Path]:
    """Figure 5 left → SWEEP/figures/curves.png and .pdf; with `by` (fields, as add_variants) the
    best run of each of their values → curves-by-FIELD.png."""
    fig = draw_curves(load_runs(sweep, by=by), results.read_results(sweep, "curves"), run_ids, metric)
    return save(fig, sweep, figure_name("curves", by=by), files)
