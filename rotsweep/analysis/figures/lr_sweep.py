"""Figures 4 left, 5 middle/right, 7 left, 14: the final metric against the learning rate, one line per variant."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from rotsweep.analysis.figures.common import (
    AXIS_LABELS, axis_label, check_columns, figure_name, numeric_axes,
    ETA_R_HAT, FigureFiles, Metric, MissingData, STATE_ORDER, _label_log_axis, _log_y, _marker_row, _number,
    _seeds_note, best_rows, load_runs, pick_metric, save, summarize, variant_colors,
)


# --- Figures 4 left, 5 middle/right, 7 left, 14: metric against the learning rate ----------


def tuned_fields(x: str) -> list[str]:
    """The hyperparameters tuned at each point of a sweep over `x`: lr and λ, other than x itself."""
    return [name for name in ("lr", "weight_decay") if name != x]


def lr_sweep_points(runs: pd.DataFrame, metric: str | None = None, x: str = "lr"
                    ) -> tuple[Metric, pd.DataFrame, pd.DataFrame]:
    """(metric, summarize() by variant × x × the tuned fields, the best of each variant × x: the points).

    x is the learning rate by default, or any numeric column of runs.parquet; lr and λ
    other than x are tuned at each point (tuned_fields).
    """
    check_columns(runs, [x], "the x axis")
    chosen = pick_metric(runs, metric)
    table = summarize(runs, ["variant", x, *tuned_fields(x)], chosen)
    if table.groupby("variant")[x].nunique().max() < 2:
        what = "learning rates" if x == "lr" else f"values of {x}"
        raise MissingData("lr-sweep", f"runs at two or more {what}")
    return chosen, table, best_rows(table, ["variant", x], chosen)


def draw_lr_sweep(runs: pd.DataFrame, metric: str | None = None, x: str = "lr") -> plt.Figure:
    """One line per variant: the metric against the (peak) lr, or `x`, mean ± std over seeds."""
    chosen, table, points = lr_sweep_points(runs, metric, x)
    tuned = table.groupby(["variant", x]).size().max() > 1  # several λ (or lr) per point: the best is shown

    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    palette = variant_colors(runs)
    variants = list(palette)
    markers = {"diverged": "x", "failed": "X", "unreadable": "$?$", "unfinished": "o"}
    for variant in variants:
        rows = points[points["variant"] == variant]
        done = rows[rows["state"] == "done"]
        ax.errorbar(done[x].to_numpy(float), done["mean"].to_numpy(float),
                    yerr=done["std"].fillna(0).to_numpy(float), color=palette[variant], marker="o", markersize=5,
                    capsize=3, linewidth=1.6, label=variant)
        for state, marker in markers.items():
            bad = rows[rows["state"] == state]
            if len(bad):
                ax.scatter(bad[x], np.full(len(bad), _marker_row(ax, chosen)), transform=ax.get_xaxis_transform(),
                           marker=marker, s=50, color=palette[variant], clip_on=False, zorder=5,
                           facecolors="none" if state == "unfinished" else None)
    values = runs[x].astype(float)
    log = x == "lr" or bool((values > 0).all() and values.max() >= 10 * values.min())
    if log:
        ax.set_xscale("log")
        _label_log_axis(ax, values)
    if chosen.name == "val_perplexity":
        _log_y(ax)
    ax.set_xlabel(axis_label(x, log))
    ax.set_ylabel(chosen.label)
    ax.grid(alpha=0.3)

    handles, _ = ax.get_legend_handles_labels()
    shown = set(points["state"]) - {"done"}
    handles += [Line2D([], [], color="0.3", marker=markers[state], linestyle="none", markerfacecolor="none",
                       label=f"{state}: no finished seed") for state in STATE_ORDER if state in shown]
    ax.legend(handles=handles, fontsize=8)
    notes = [note for note in [_seeds_note(points)] if note]
    if tuned:
        notes.append(f"best {' and '.join('λ' if name == 'weight_decay' else 'η' for name in tuned_fields(x))} "
                     "at each point")
    products = (runs["lr"] * runs["weight_decay"]).round(15).unique()
    if x == "lr" and len(products) == 1 and products[0] > 0:
        notes.append(f"η·λ = {_number(products[0])} fixed, so the same {ETA_R_HAT} (Table 1)")
    against = "learning rate" if x == "lr" else AXIS_LABELS.get(x, x)
    ax.set_title(f"Final {chosen.label} against {against}" + (f"\n({'; '.join(notes)})" if notes else ""),
                 fontsize=10)
    return fig


def lr_sweep_input(sweep: str | os.PathLike, x: str | None = None, by: list[str] | None = None
                   ) -> tuple[pd.DataFrame, str]:
    """(the runs with variants that leave x out, x): x by default lr, or the sweep's first
    numeric axis (numeric_axes) when lr does not vary; `by` as in add_variants."""
    if x is None:
        runs = load_runs(sweep, by=by)
        x = (numeric_axes(sweep, runs) or ["lr"])[0] if runs["lr"].nunique() < 2 else "lr"
    return load_runs(sweep, axes=(x,), by=by), x


def plot_lr_sweep(sweep: str | os.PathLike, metric: str | None = None, files: FigureFiles = FigureFiles(),
                  x: str | None = None, by: list[str] | None = None) -> list[Path]:
    """Figures 4 left, 5 middle/right, 7 left, 14 → SWEEP/figures/lr_sweep.png and .pdf (the metric
    against `x`, by default lr; lr_sweep_input), one line per variant or per value of `by`."""
    runs, x = lr_sweep_input(sweep, x, by)
    return save(draw_lr_sweep(runs, metric, x), sweep, figure_name("lr_sweep", None if x == "lr" else x, by=by), files)
