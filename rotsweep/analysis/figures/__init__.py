"""The paper's figures, drawn from a sweep's results tables with Table 1's predictions on top.

    module       function         paper figure                          data from (the experiment that makes it)
    heatmap      plot_heatmap     6 left                                runs       (adam-vs-adamw)
    lr_sweep     plot_lr_sweep    4 left, 5 middle/right, 7 left, 14    runs       (eta-lambda, warmup, weight-std)
    curves       plot_curves      5 left                                curves     (warmup, or any sweep)
    dynamics     plot_dynamics    3, 4 middle/right, 6 right, 7 right,  dynamics   (dynamics, or any sweep)
                                  13
    imbalance    plot_imbalance   16 right                              runs       (imbalance)
    randomwalk   plot_randomwalk  9                                     the files of `rotsweep randomwalk --out`

One module per figure, what they share in common.py. rotsweep.analysis.catalog names the
figures (what each draws, which sweeps have its data; the CLI's plot help comes from it) and
FIGURES below adds how each is checked and drawn: `rotsweep plot all` and `rotsweep report`
iterate it. Each module separates the table it computes (heatmap_cells, lr_sweep_points,
curve_runs, dynamics_selection, imbalance_tables, read_randomwalks) from the drawing;
tests/test_figure_numbers.py pins those tables against stored values.

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

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rotsweep import store
from rotsweep.analysis import results
from rotsweep.analysis.catalog import CATALOG, SOURCES  # noqa: F401  (SOURCES: public here too)
from rotsweep.analysis.figures.common import (  # noqa: F401  (the package's public names)
    ETA_R, ETA_R_HAT, FIGURE_FORMATS, FIGURES_DIR, METRICS, OPTIMIZER_NAMES, STATE_ORDER, FigureFiles,
    Metric, MissingData, _best_configs, figure_name, numeric_axes,
    _is_randomwalk_dir, _number, _select_runs, _spread_out, add_variants,
    best_rows, load_runs, pick_metric, rms_downsample, save, summarize, variant_colors, variant_order,
)
from rotsweep.analysis.figures.curves import curve_runs, draw_curves, plot_curves
from rotsweep.analysis.figures.dynamics import (  # noqa: F401
    DRAWN_ROWS, Schedule, _prediction_note, draw_dynamics, draw_neuron_dynamics, dynamics_selection,
    neuron_weight, plot_dynamics, read_dynamics,
)
from rotsweep.analysis.figures.heatmap import (  # noqa: F401
    cell_value, draw_heatmap, heatmap_axes, heatmap_cells, plot_heatmap,
)
from rotsweep.analysis.figures.imbalance import (  # noqa: F401
    ImbalancePanel, draw_imbalance, imbalance_tables, plot_imbalance,
)
from rotsweep.analysis.figures.lr_sweep import (  # noqa: F401
    draw_lr_sweep, lr_sweep_input, lr_sweep_points, plot_lr_sweep,
)
from rotsweep.analysis.figures.randomwalk import (  # noqa: F401
    WALK_KEYS, draw_randomwalk, plot_randomwalk, read_randomwalks,
)
from rotsweep.analysis.results import run_config  # noqa: F401
from rotsweep.errors import UserError


# --- The registry -------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One figure of rotsweep.analysis.catalog (its name, what it draws, its data), and how it is made."""

    name: str
    check: Callable[[Path], object]  # raises MissingData when the sweep lacks its data; draws nothing
    plot: Callable[..., list[Path]]  # plot(sweep, files=FigureFiles) -> the files written

    @property
    def draws(self) -> str:
        return CATALOG[self.name].draws

    @property
    def data(self) -> str:
        return CATALOG[self.name].data

    @property
    def applies_to(self) -> str:
        return CATALOG[self.name].applies_to


# `plot all` and the report draw the paper's axes (lr, and λ for the heatmap); the single
# commands fall back to the sweep's own axes where those do not vary (plot_heatmap, plot_lr_sweep).
def _paper_heatmap(sweep, files: FigureFiles = FigureFiles()) -> list[Path]:
    return plot_heatmap(sweep, files=files, x="lr", y="weight_decay", full_grid=True)


def _paper_lr_sweep(sweep, files: FigureFiles = FigureFiles()) -> list[Path]:
    return plot_lr_sweep(sweep, files=files, x="lr")


def _dynamics_neurons(sweep, files: FigureFiles = FigureFiles()) -> list[Path]:
    return plot_dynamics(sweep, neurons=True, files=files)


FIGURES: dict[str, Figure] = {figure.name: figure for figure in [
    Figure("heatmap", lambda sweep: heatmap_cells(load_runs(sweep)), _paper_heatmap),
    Figure("lr-sweep", lambda sweep: lr_sweep_points(load_runs(sweep)), _paper_lr_sweep),
    Figure("curves", lambda sweep: curve_runs(load_runs(sweep), results.read_results(sweep, "curves")), plot_curves),
    Figure("dynamics", dynamics_selection, plot_dynamics),
    Figure("dynamics-neurons", dynamics_selection, _dynamics_neurons),
    Figure("imbalance", lambda sweep: imbalance_tables(load_runs(sweep)), plot_imbalance),
    Figure("randomwalk", read_randomwalks, plot_randomwalk),
]}


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
        newest = {path: results.output_paths(path)["runs"].stat().st_mtime for path in directories
                  if results.output_paths(path)["runs"].is_file()}
    for path in sorted(newest, key=newest.get, reverse=True):
        try:
            FIGURES[figure].check(path)
            return path
        except UserError:
            continue  # not this one: no data for the figure, or results of another schema
    raise UserError(f"no sweep in {root}/ has data for the {figure} figure; {SOURCES[figure]}")


# --- Every figure a sweep supports ----------------------------------------------------------


def _require_gathered(directory: Path) -> None:
    """A UserError naming the command to run when `directory` is not a gathered sweep."""
    if results.output_paths(directory)["runs"].is_file():
        return
    if (directory / store.CONFIG_FILE).is_file() or (directory / store.STATUS_FILE).is_file():
        sweep = directory.parent.parent if directory.parent.name == "runs" else None
        where = (f"`rotsweep gather {sweep}`, then `rotsweep plot all {sweep}`" if sweep is not None
                 else "`rotsweep gather SWEEP` on the sweep that holds it")
        raise UserError(f"{directory} is a run directory, not a sweep: figures are drawn from a gathered sweep; "
                        f"run {where}")
    if (directory / store.MANIFEST_FILE).is_file() or store.runs_dir(directory).is_dir():
        raise UserError(f"{directory} has not been gathered (no {results.output_paths(directory)['runs']}); "
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
    for name, figure in FIGURES.items():
        if walk != (figure.data == "randomwalk"):
            continue
        try:
            figure.check(sweep)
        except UserError as error:
            drawn.skipped[name] = str(error)
            continue
        drawn.paths[name] = figure.plot(sweep, files=files)
    return drawn
