"""Figures 3, 4 middle/right, 6 right, 7 right, 13: weight norms and rotation over training, measured
and predicted (η̂_r at the scheduled lr, the equilibrium norm and the transient of eq. 15-16)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from rotsweep import theory
from rotsweep.analysis import results
from rotsweep.analysis.figures.common import (
    figure_name,
    ETA_R, ETA_R_HAT, FigureFiles, MissingData, NORM, NORM_HAT, PREDICTION, _log_y, _number, _select_runs,
    _spread_out, _steps_axis, load_runs, rms_downsample, save,
)
from rotsweep.analysis.results import run_config
from rotsweep.config import RunConfig
from rotsweep.errors import UserError
from rotsweep.schedule import learning_rate


# --- Figures 3, 4 middle/right, 6 right, 7 right, 13: norms and rotation over training ------


def read_dynamics(sweep: str | os.PathLike, run_ids: list[str], params: list[str] | None = None,
                  reductions: tuple[str, ...] = ("mean", "rms", "std", "sample")) -> pd.DataFrame:
    """The norm and angular-update rows of some runs (and weights) of dynamics.parquet.

    The table can hold billions of rows at paper scale, so only these runs' files are
    opened and only these rows kept (results.read_dynamics).
    """
    return results.read_dynamics(sweep, run_ids, stats=("norm", "angular_update"), reductions=reductions,
                                params=params)


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
        return results.scheduled_rotation(self.config, steps, self.total_steps, self.warmup_steps)

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
                       metric: str | None = None, by: list[str] | None = None
                       ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(layers.parquet of the chosen runs, the chosen rows of load_runs(), the weights to draw).

    Runs: `run_ids`, or each variant's (or each value of `by`'s, add_variants) best (lr, λ)
    run, at most four. Weights: `layers`, or every weight with dynamics, in the model's
    order. Unknown ones are a UserError that lists the valid ones.
    """
    layers_wanted = layers
    runs = load_runs(sweep, by=by)
    layers = results.read_results(sweep, "layers")
    runs_with = runs[runs["run_id"].isin(layers["run_id"])]
    if runs_with.empty:
        raise MissingData("dynamics", "recorded norms and angular updates (layers.parquet is empty)")
    chosen = _select_runs(runs_with, run_ids, metric, limit=4, what="runs with dynamics")
    if not run_ids:  # one seed per variant is enough to show the dynamics
        chosen = chosen.drop_duplicates("variant")
    layers = layers[layers["run_id"].isin(chosen["run_id"])]
    # Model order (the recorder's), not alphabetical: weights as they first appear in the dynamics.
    first = results.read_dynamics(sweep, chosen["run_id"].tolist()[:1], pairs=[("angular_update", "mean")])
    weights = list(dict.fromkeys(first["param"]))
    weights = [w for w in weights if w in set(layers["param"])] + sorted(set(layers["param"]) - set(weights))
    if layers_wanted:
        unknown = [w for w in layers_wanted if w not in weights]
        if unknown:
            raise UserError(f"no weight {', '.join(unknown)} recorded; recorded weights: {', '.join(weights)}")
        weights = [w for w in weights if w in layers_wanted]
    return layers, chosen, weights


def neuron_weight(layer_table: pd.DataFrame, weights: list[str]) -> str:
    """The weight whose neurons rotate the most unevenly (layers.parquet's imbalance_neurons,
    averaged over the chosen runs), the first weight if none was measured."""
    spread = layer_table[layer_table["param"].isin(weights)].groupby("param")["imbalance_neurons"].mean()
    return spread.idxmax() if spread.notna().any() else weights[0]


def plot_dynamics(sweep: str | os.PathLike, run_ids: list[str] | None = None, layers: list[str] | None = None,
                  neurons: bool = False, metric: str | None = None, files: FigureFiles = FigureFiles(),
                  by: list[str] | None = None) -> list[Path]:
    """Figures 3, 4 middle/right, 6 right, 13 (per layer) → SWEEP/figures/dynamics.png and .pdf;
    with neurons=True, Figure 7 right (the neurons of one weight) → dynamics_neurons.png and .pdf.

    run_ids, layers and by choose the runs and weights (dynamics_selection). With
    neurons=True the weight is the first of `layers`, by default neuron_weight().
    Only the chosen runs' rows of the drawn weights and statistics are read.
    """
    layer_table, chosen, weights = dynamics_selection(sweep, run_ids, layers, metric, by)
    curves = results.read_results(sweep, "curves")
    if neurons:
        weight = layers[0] if layers else neuron_weight(layer_table, weights)
        dynamics = read_dynamics(sweep, chosen["run_id"].tolist(), [weight])
        fig = draw_neuron_dynamics(chosen, weight, dynamics, curves)
        return save(fig, sweep, figure_name("dynamics_neurons", by=by), files)
    dynamics = results.read_dynamics(sweep, chosen["run_id"].tolist(), pairs=DRAWN_ROWS, params=weights)
    return save(draw_dynamics(chosen, weights, dynamics, layer_table, curves), sweep, figure_name("dynamics", by=by),
                files)
