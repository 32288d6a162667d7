"""Figure 9: the random walk of Appendix F against Table 1."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D

from rotsweep import store
from rotsweep.analysis.figures.common import (
    ETA_G, ETA_R, ETA_R_HAT, FigureFiles, MissingData, NORM, OPTIMIZER_NAMES, PREDICTION, _log_y, _number,
    _spread_out, _steps_axis, rms_downsample, save,
)
from rotsweep.errors import UserError


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
