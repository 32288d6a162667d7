"""Figure 16 right: imbalanced rotation (RV-AdamW with slowed neurons) against narrower networks."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from rotsweep.analysis.figures.common import (
    FigureFiles, Metric, MissingData, OPTIMIZER_NAMES, _marker_row, _number, _seeds_note, _width, best_rows,
    load_runs, pick_metric, save, summarize,
)


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
