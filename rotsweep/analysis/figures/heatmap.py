"""Figure 6 left: the final metric over an lr × λ grid, one panel per variant, with η̂_r contours."""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from rotsweep.analysis import results
from rotsweep.analysis.figures.common import (
    AXIS_LABELS, axis_label, best_rows, check_columns, figure_name, numeric_axes,
    CONTOUR_COLOR, ETA_R_HAT, FigureFiles, Metric, MissingData, STATE_ORDER, _number, load_runs, pick_metric, save,
    summarize,
)
from rotsweep.analysis.results import run_config
from rotsweep.config import RunConfig
from rotsweep.errors import UserError


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
        surface = np.array([results.predicted_rotation(config.replace(weight_decay=float(wd)), lr_at) for wd in wd_at])
        what = "η̂_r"
    levels = _nice_levels(surface.min(), surface.max())
    contours = ax.contour(x, y, np.log10(surface), levels=np.log10(levels), colors=CONTOUR_COLOR,
                          linestyles="--", linewidths=1.4, zorder=5)
    labels = ax.clabel(contours, fmt=dict(zip(contours.levels, (_number(level) for level in levels))), fontsize=7,
                       manual=_label_spots(contours, len(lrs), len(positive)))
    for label in labels:  # readable over any cell colour
        label.set_bbox(dict(facecolor="white", edgecolor="none", alpha=0.75, pad=0.4))
    return what


def _heatmap_panel(ax, cells: pd.DataFrame, config: RunConfig, metric: Metric, cmap, vmin, vmax,
                   x: str = "lr", y: str = "weight_decay") -> dict:
    """One variant's grid (columns the values of x, rows those of y); returns which legend entries it needs."""
    lrs = sorted(cells[x].unique())  # the columns: learning rates in the paper's heatmap
    weight_decays = sorted(cells[y].unique(), reverse=True)  # the rows, largest at the top (λ = 0 last)
    grid = cells.set_index([y, x])
    mean = grid["mean"].unstack(x).reindex(index=weight_decays, columns=lrs)
    state = grid["state"].unstack(x).reindex(index=weight_decays, columns=lrs)
    diverged = grid["diverged"].unstack(x).reindex(index=weight_decays, columns=lrs)
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
    paper = (x, y) == ("lr", "weight_decay")  # Figure 6's axes: Table 1 gives η̂_r over them
    ax.set_xlabel("learning rate η (log scale)" if x == "lr" else axis_label(x, log=False))
    ax.set_ylabel(("ℓ2 coefficient" if config.optimizer == "adam-l2" else "weight decay") + " λ (log scale)"
                  if y == "weight_decay" else axis_label(y, log=False))
    zero = y == "weight_decay" and weight_decays[-1] == 0
    if zero:  # the λ = 0 row is below the log-spaced ones: set it apart
        ax.axhline(len(weight_decays) - 1, color="black", linewidth=1.5, zorder=6)
    contours = _rotation_contours(ax, config, lrs, weight_decays) if paper else None
    return {"contours": contours, "zero": zero, "marked": set(state.stack()) & set(marks),
            "dagger": bool((diverged.where(state == "done") > 0).any().any()), "blank": bool(state.isna().any().any())}


def heatmap_cells(runs: pd.DataFrame, metric: str | None = None, x: str = "lr", y: str = "weight_decay",
                  full_grid: bool = True) -> tuple[Metric, pd.DataFrame, list[str]]:
    """(metric, one summarize() row per variant × y × x, the variants drawn as panels).

    x and y are lr and λ by default, or any numeric columns of runs.parquet; lr and λ other
    than x and y are tuned in each cell (its best, as lr_sweep_points). A panel needs a
    grid (full_grid: some y at several x and some x at several y, not a line such as
    η·λ = const), or else two or more values of each (a sparse grid, blank where no run is).
    """
    check_columns(runs, [x, y], "the heatmap's axes")
    if x == y:
        raise UserError(f"the heatmap's x and y are both {x}; give two different fields")
    chosen = pick_metric(runs, metric)
    # λ = η·λ / η reached from two (η·λ, η) pairs may differ in the last bit (1e-2/0.1 vs 1e-3/0.01): one row.
    runs = runs.assign(weight_decay=runs["weight_decay"].map(lambda wd: float(f"{wd:.12g}")))
    tuned = [name for name in ("lr", "weight_decay") if name not in (x, y)]
    cells = summarize(runs, ["variant", y, x, *tuned], chosen)
    if tuned:
        cells = best_rows(cells, ["variant", y, x], chosen)
    if full_grid:
        panels = [variant for variant, group in cells.groupby("variant", sort=False)  # summarize sorted them
                  if group.groupby(y)[x].nunique().max() > 1 and group.groupby(x)[y].nunique().max() > 1]
    else:
        panels = [variant for variant, group in cells.groupby("variant", sort=False)
                  if group[x].nunique() > 1 and group[y].nunique() > 1]
    if not panels:
        shape = "grid (several lr at one λ and several λ at one lr)" if full_grid else "grid (two or more of each)"
        names = "lr × weight-decay" if (x, y) == ("lr", "weight_decay") else f"{x} × {y}"
        raise MissingData("heatmap", f"{names} {shape}")
    return chosen, cells[cells["variant"].isin(panels)], panels


def draw_heatmap(runs: pd.DataFrame, metric: str | None = None, x: str = "lr", y: str = "weight_decay",
                 full_grid: bool = True) -> plt.Figure:
    """Figure 6 left from a runs table (with variants): one panel per variant with an lr × λ grid
    (or x × y, heatmap_cells)."""
    chosen, cells, panels = heatmap_cells(runs, metric, x, y, full_grid)
    finished = cells.loc[cells["state"] == "done", "mean"]
    vmin, vmax = (finished.min(), finished.max()) if len(finished) else (0.0, 1.0)
    cmap = "viridis" if chosen.higher_is_better else "viridis_r"  # yellow is good either way

    widths = [max(3.6, 0.55 * cells.loc[cells["variant"] == v, x].nunique() + 1.6) for v in panels]
    rows = max(cells.loc[cells["variant"] == v, y].nunique() for v in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths) + 1.2, max(3.4, 0.42 * rows + 2.2)),
                             width_ratios=widths, squeeze=False, layout="constrained")
    needs = []
    for ax, variant in zip(axes[0], panels):
        config = run_config(runs[runs["variant"] == variant].iloc[0])
        needs.append(_heatmap_panel(ax, cells[cells["variant"] == variant], config, chosen, cmap, vmin, vmax, x, y))
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
    over = ("learning rate × weight decay" if (x, y) == ("lr", "weight_decay")
            else f"{AXIS_LABELS.get(x, x)} × {AXIS_LABELS.get(y, y)}")
    tuned = [name for name in ("lr", "weight_decay") if name not in (x, y) and runs[name].nunique() > 1]
    best = f", best {' and '.join('λ' if n == 'weight_decay' else 'η' for n in tuned)} per cell" if tuned else ""
    fig.suptitle(f"Final {chosen.label} over {over} (mean of finished seeds{best})")
    return fig


def heatmap_axes(sweep: str | os.PathLike, runs: pd.DataFrame) -> tuple[str, str]:
    """The default axes: lr and weight_decay when both vary, else the sweep's first two numeric axes."""
    axes = numeric_axes(sweep, runs)
    if {"lr", "weight_decay"} <= set(axes) or len(axes) < 2:
        return "lr", "weight_decay"
    return axes[0], axes[1]


def plot_heatmap(sweep: str | os.PathLike, metric: str | None = None, files: FigureFiles = FigureFiles(),
                 x: str | None = None, y: str | None = None, by: list[str] | None = None,
                 full_grid: bool | None = None) -> list[Path]:
    """Figure 6 left → SWEEP/figures/heatmap.png and .pdf; over other axes (x, y, as heatmap_cells;
    default heatmap_axes) → heatmap-x-X-y-Y.png. Axes given by the caller may form a sparse
    grid (full_grid None: e.g. the line η·λ = const, whose cells then lie along an η̂_r contour)."""
    if full_grid is None:
        full_grid = x is None and y is None
    if x is None or y is None:
        default_x, default_y = heatmap_axes(sweep, load_runs(sweep, by=by))
        if x is None and y is None:
            x, y = default_x, default_y
        elif x is None:  # the other default axis where y took x's
            x = default_x if default_x != y else default_y
        else:
            y = default_y if default_y != x else default_x
    paper = (x, y) == ("lr", "weight_decay") and full_grid
    name = "heatmap" if paper and not by else figure_name("heatmap", x, y, by=by)
    return save(draw_heatmap(load_runs(sweep, axes=(x, y), by=by), metric, x, y, full_grid), sweep, name, files)
