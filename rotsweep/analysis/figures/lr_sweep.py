"""Figures 4 left, 5 middle/right, 7 left, 14: the final metric against the learning rate, one line per variant."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from rotsweep.analysis.figures.common import (
    ETA_R_HAT, FigureFiles, Metric, MissingData, STATE_ORDER, _label_log_axis, _log_y, _marker_row, _number,
    _seeds_note, best_rows, load_runs, pick_metric, save, summarize, variant_colors,
)


# --- Figures 4 left, 5 middle/right, 7 left, 14: metric against the learning rate ----------


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
