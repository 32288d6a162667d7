"""Figures over any axes (issue 11 point 5), on a sweep-file sweep trained for real.

examples/eta-lambda-tiny.toml: an optimizer variant axis (AdamW / RV-AdamW) and an lr axis,
with weight decay derived from η·λ = 5e-3, shortened to 12 steps and gathered. The lr × λ
heatmap of such a sweep is a diagonal: its cells lie on one η̂_r contour of Table 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.contour import ContourSet
from PIL import Image

from rotsweep import theory
from rotsweep.analysis import figures, gather
from rotsweep.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sweep(eta_lambda_file_sweep) -> Path:
    return eta_lambda_file_sweep


def test_the_sweep_is_a_line_of_constant_eta_lambda(sweep):
    runs = figures.load_runs(sweep)
    assert sorted(runs["variant"].unique()) == ["AdamW", "RV-AdamW"]
    assert np.allclose(runs["lr"] * runs["weight_decay"], 5e-3)
    assert figures.numeric_axes(sweep, runs) == ["lr", "weight_decay"]


def test_lr_sweep_defaults_to_lr_and_one_line_per_variant(sweep):
    runs = figures.load_runs(sweep)
    fig = figures.draw_lr_sweep(runs)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "peak learning rate η (log scale)"
    done = runs[runs["status"] == "done"]
    for line in ax.get_lines():
        if line.get_label() in ("AdamW", "RV-AdamW"):
            mine = done[done["variant"] == line.get_label()].sort_values("lr")
            np.testing.assert_allclose(line.get_xdata(), mine["lr"])
            np.testing.assert_allclose(line.get_ydata(), mine["final_val_top1"])
    plt.close(fig)


def test_lr_sweep_over_weight_decay_and_by_field(sweep):
    runs = figures.load_runs(sweep, axes=("weight_decay",), by=["rotational"])
    assert sorted(runs["variant"].unique()) == ["AdamW", "RV-AdamW"]  # the part that names `rotational`
    metric, table, points = figures.lr_sweep_points(runs, x="weight_decay")
    done = runs[runs["status"] == "done"]
    expected = done.groupby(["variant", "weight_decay"])["final_val_top1"].max()
    got = points[points["state"] == "done"].set_index(["variant", "weight_decay"])["mean"]
    np.testing.assert_allclose(got.sort_index(), expected.sort_index())
    fig = figures.draw_lr_sweep(runs, x="weight_decay")
    assert fig.axes[0].get_xlabel() == "weight decay λ (log scale)"
    plt.close(fig)
    by_seed = figures.load_runs(sweep, by=["seed", "model"])
    assert set(by_seed["variant"]) == {"seed 0, resnet20"}


def test_heatmap_over_lr_and_weight_decay_has_table_1_contours_on_the_adamw_panel(sweep):
    runs = figures.load_runs(sweep)
    with pytest.raises(UserError, match="grid"):  # a line, not a grid: not in `plot all`
        figures.heatmap_cells(runs)
    metric, cells, panels = figures.heatmap_cells(runs, x="lr", y="weight_decay", full_grid=False)
    assert panels == ["AdamW", "RV-AdamW"] and len(cells) == len(runs)
    fig = figures.draw_heatmap(runs, x="lr", y="weight_decay", full_grid=False)
    adamw = [ax for ax in fig.axes if ax.get_title() == "AdamW"][0]
    config = figures.run_config(runs[runs["variant"] == "AdamW"].iloc[0])
    lrs = sorted(runs["lr"].unique())
    weight_decays = sorted(runs["weight_decay"].unique(), reverse=True)
    (contours,) = [c for c in adamw.collections if isinstance(c, ContourSet)]
    checked = 0
    for level, segments in zip(contours.levels, contours.allsegs):
        for points in segments:
            lr = figures.cell_value(points[:, 0], lrs)
            wd = figures.cell_value(points[:, 1], weight_decays)
            np.testing.assert_allclose(theory.expected_rotation("adamw", lr, wd, beta1=config.beta1), 10**level,
                                       rtol=1e-6)
            checked += len(points)
    assert checked > 0
    # Every run of the line has the same η̂_r: the diagonal cells lie on one contour.
    rotation = theory.expected_rotation("adamw", runs["lr"].to_numpy(), runs["weight_decay"].to_numpy(),
                                        beta1=config.beta1)
    np.testing.assert_allclose(rotation, rotation[0])
    plt.close(fig)


def test_bad_axes_are_one_line_errors(sweep):
    runs = figures.load_runs(sweep)
    with pytest.raises(UserError, match=r"no column learning_rate in runs.parquet .*lr") as error:
        figures.lr_sweep_points(runs, x="learning_rate")
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="both lr"):
        figures.heatmap_cells(runs, x="lr", y="lr")
    with pytest.raises(UserError, match="no column optimiser"):
        figures.load_runs(sweep, by=["optimiser"])


def test_cli_draws_heatmap_and_lr_sweep_over_the_given_axes(sweep):
    def rotsweep(*args):
        return subprocess.run([sys.executable, "-m", "rotsweep.cli", *args], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})

    done = rotsweep("plot", "heatmap", str(sweep), "--x", "lr", "--y", "weight_decay", "--format", "png")
    assert done.returncode == 0, done.stderr
    png = sweep / "figures" / "heatmap-x-lr-y-weight_decay.png"
    assert done.stdout.strip() == str(png)
    with Image.open(png) as image:
        assert image.size[0] > 600
    done = rotsweep("plot", "lr-sweep", str(sweep), "--by", "optimizer", "--format", "png")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sweep / "figures" / "lr_sweep-by-optimizer.png")
    done = rotsweep("plot", "lr-sweep", str(sweep), "--x", "nonsense")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no column nonsense" in done.stderr


def test_defaults_come_from_the_sweeps_own_grid(tmp_path):
    """The stored imbalance sweep trains every run at one lr: lr-sweep and heatmap take its own axes."""
    import shutil

    sweep = tmp_path / "imbalance"
    shutil.copytree(REPO / "tests" / "fixtures" / "figure-numbers" / "sweeps" / "imbalance", sweep)
    runs = figures.load_runs(sweep)
    assert runs["lr"].nunique() == 1
    axes = figures.numeric_axes(sweep, runs)
    assert axes[0] == "weight_decay" and "lr" not in axes
    (png,) = figures.plot_lr_sweep(sweep, files=figures.FigureFiles(("png",), 60))
    assert png.name == "lr_sweep-x-weight_decay.png"
    x, y = figures.heatmap_axes(sweep, runs)
    assert (x, y) == tuple(axes[:2])
    (png,) = figures.plot_heatmap(sweep, files=figures.FigureFiles(("png",), 60))
    assert png.name == f"heatmap-x-{x}-y-{y}.png"
    # `plot all` keeps the paper's axes: no lr × λ grid and one lr, so neither figure.
    drawn = figures.plot_all(sweep, figures.FigureFiles(("png",), 60))
    assert {"heatmap", "lr-sweep"} <= set(drawn.skipped)


def test_curves_and_dynamics_grouped_by_any_field(tmp_path):
    """--by on the stored eta-lambda sweep (AdamW and RV-AdamW at 5 lr, 2 seeds)."""
    import shutil

    sweep = tmp_path / "eta-lambda"
    shutil.copytree(REPO / "tests" / "fixtures" / "figure-numbers" / "sweeps" / "eta-lambda", sweep)
    # One group (every run has the same model): the dynamics figure shows that group's best run.
    layers, chosen, weights = figures.dynamics_selection(sweep, by=["model"])
    runs = figures.load_runs(sweep, by=["model"])
    done = runs[runs["status"] == "done"]
    best = done.groupby(["lr", "weight_decay"])["final_val_top1"].mean().idxmax()
    assert len(chosen) == 1 and (chosen["lr"].item(), chosen["weight_decay"].item()) == best
    # By seed: a line per seed, each at its own best (lr, λ).
    by_seed = figures.load_runs(sweep, by=["seed"])
    chosen_runs, _ = figures.curve_runs(by_seed, gather.read_results(sweep, "curves"))
    assert sorted(chosen_runs["variant"].unique()) == ["seed 0", "seed 1"]
    for seed, group in chosen_runs.groupby("seed"):
        mine = done[done["seed"] == seed]
        assert group["final_val_top1"].max() == mine["final_val_top1"].max()
    fig = figures.draw_curves(by_seed, gather.read_results(sweep, "curves"))
    assert "over 2 runs" in fig._suptitle.get_text()  # AdamW and RV-AdamW of one seed, not 2 seeds
    (png,) = figures.plot_curves(sweep, by=["seed"], files=figures.FigureFiles(("png",), 60))
    assert png.name == "curves-by-seed.png"
