"""Figures drawn from the results of real tiny runs (rotsweep.train), gathered as `rotsweep gather` does.

One session fixture trains two small sweeps and runs the random walks, once:
- adam-vs-adamw: Adam+ℓ2 on a 2 × 2 lr × λ grid plus a λ = 0 cell; AdamW at one lr and at 1e30
  (which diverges) × two λ, one cell with two seeds;
- imbalance: balanced RV-AdamW at two λ, every imbalanced setting and narrower network at one;
- randomwalk: the Appendix F walk of every optimizer, shortened.
The tests compare what each figure draws with the tables and with rotsweep.theory.
"""

from __future__ import annotations

import math
import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.contour import ContourSet
from PIL import Image

from rotsweep import randomwalk, store, theory, train
from rotsweep.analysis import figures, gather
from rotsweep.errors import UserError
from rotsweep.experiments import get_experiment
from rotsweep.models import build_model
from rotsweep.schedule import learning_rate

SHORT = dict(steps=6, eval_interval=3, eval_batches=1, batch_size=16, dynamics_interval=1, train_log_interval=2,
             checkpoint_interval=1000)


def tiny_runs(experiment: str, model: str) -> list:
    """The experiment's tiny runs, shortened."""
    return [config.replace(**SHORT) for config in get_experiment(experiment).runs(model, scale="tiny")]


def swept(configs, field: str) -> list:
    return sorted({getattr(config, field) for config in configs})


def make_sweep(root, experiment: str, model: str, configs) -> os.PathLike:
    """Train the runs into a sweep directory with a manifest, as `rotsweep launch` lays it out, and gather."""
    sweep = root / f"{experiment}-{model}-tiny"
    for config in configs:
        train.run(config, store.run_dir(sweep, config.run_id))
    store.write_manifest(sweep, {"experiment": experiment, "model": model, "scale": "tiny", "seeds": None,
                                 "overrides": [], "runs": [config.run_id for config in configs]})
    gather.gather(sweep)
    return sweep


@pytest.fixture(scope="session")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    # Whatever the tiny grids are: Adam+ℓ2 at its two smallest lr × its smallest and largest λ,
    # AdamW at its smallest lr (and 1e30) × its two smallest λ.
    runs = tiny_runs("adam-vs-adamw", "resnet18")
    adam_l2 = [config for config in runs if config.optimizer == "adam-l2"]
    lrs, weight_decays = swept(adam_l2, "lr")[:2], swept(adam_l2, "weight_decay")
    adam_l2 = [c for c in adam_l2 if c.lr in lrs and c.weight_decay in (weight_decays[0], weight_decays[-1])]
    adamw = [config for config in runs if config.optimizer == "adamw"]
    adamw = [c for c in adamw if c.lr == swept(adamw, "lr")[0] and c.weight_decay in swept(adamw, "weight_decay")[:2]]
    grid = [*adam_l2, adam_l2[0].replace(weight_decay=0.0), *adamw, adamw[0].replace(seed=1),
            *(config.replace(lr=1e30) for config in adamw)]
    # Balanced RV-AdamW at two λ; every imbalanced setting and narrower network at the second.
    runs = tiny_runs("imbalance", "resnet18")
    first, second = swept(runs, "weight_decay")[:2]
    imbalanced = [c for c in runs if (c.weight_decay in (first, second) and c.imbalance_portion == 0
                                      and not c.model_options) or (c.weight_decay == second and (
                                          c.imbalance_portion > 0 or c.model_options))]
    walks = root / "randomwalk"
    for optimizer in theory.OPTIMIZERS:
        randomwalk.run(optimizer, steps=200, out=walks / optimizer)
    return {
        "heatmap": make_sweep(root, "adam-vs-adamw", "resnet18", grid),
        "imbalance": make_sweep(root, "imbalance", "resnet18", imbalanced),
        "randomwalk": walks,
        "root": root,
    }


def runs_table(sweep) -> pd.DataFrame:
    return gather.read_results(sweep, "runs")


def assert_images(paths, name):
    png, pdf = paths
    assert (png.name, pdf.name) == (f"{name}.png", f"{name}.pdf")
    with Image.open(png) as image:
        image.verify()
        assert image.format == "PNG" and min(image.size) > 300
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000


def texts(ax) -> list[str]:
    return [text.get_text() for text in ax.texts]


# --- Heatmap ----------------------------------------------------------------------------------


def test_heatmap_cells_best_cell_and_marks_follow_the_runs(sweeps):
    sweep = sweeps["heatmap"]
    runs = runs_table(sweep)
    fig = figures.draw_heatmap(figures.load_runs(sweep))
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["Adam+ℓ2", "AdamW"]

    done = runs[runs["status"] == "done"]
    for ax, optimizer in zip(panels, ("adam-l2", "adamw")):
        mine = runs[runs["optimizer"] == optimizer]
        lrs = sorted(mine["lr"].unique())
        weight_decays = sorted(mine["weight_decay"].unique(), reverse=True)
        means = done[done["optimizer"] == optimizer].groupby(["weight_decay", "lr"])["final_val_top1"].mean()
        # Every finished cell has its mean written in it, at its place on the grid.
        written = {(t.get_position()[1], t.get_position()[0]): t.get_text() for t in ax.texts}
        for (wd, lr), value in means.items():
            spot = (weight_decays.index(wd) + 0.5, lrs.index(lr) + 0.5)
            assert written[spot] == f"{value:.1f}"
        # The best cell is the argmax of the data.
        (best,) = [patch for patch in ax.patches if patch.get_gid() == "best-cell"]
        wd, lr = means.idxmax()
        assert best.get_xy() == (lrs.index(lr), weight_decays.index(wd))
        # Cells whose runs all diverged say so, and nothing else does.
        diverged = mine.groupby(["weight_decay", "lr"])["status"].agg(lambda s: (s == "diverged").all())
        assert texts(ax).count("div.") == diverged.sum() == (2 if optimizer == "adamw" else 0)
    # The AdamW cell with two seeds shows their mean.
    two = done[done["seed"] == 1]
    two = done[(done["lr"] == two["lr"].item()) & (done["weight_decay"] == two["weight_decay"].item())
               & (done["optimizer"] == "adamw")]
    assert len(two) == 2 and f"{two['final_val_top1'].mean():.1f}" in texts(panels[1])
    plt.close(fig)


def contour_points(ax):
    (contours,) = [c for c in ax.collections if isinstance(c, ContourSet)]
    for level, segments in zip(contours.levels, contours.allsegs):
        for segment in segments:
            yield level, segment


def test_heatmap_contours_are_table_1s_rotation(sweeps):
    runs = figures.load_runs(sweeps["heatmap"])
    fig = figures.draw_heatmap(runs)
    adam_l2, adamw = [ax for ax in fig.axes if ax.get_title()]

    config = figures.run_config(runs[runs["optimizer"] == "adamw"].iloc[0])

    def grid(optimizer):  # columns left to right, rows (λ > 0) top to bottom
        mine = runs[(runs["optimizer"] == optimizer) & (runs["weight_decay"] > 0)]
        return sorted(mine["lr"].unique()), sorted(mine["weight_decay"].unique(), reverse=True)

    lrs, weight_decays = grid("adamw")
    assert lrs[-1] == 1e30
    checked = 0
    for level, points in contour_points(adamw):
        lr = figures.cell_value(points[:, 0], lrs)
        wd = figures.cell_value(points[:, 1], weight_decays)
        expected = theory.expected_rotation("adamw", lr, wd, beta1=config.beta1, beta2=config.beta2)
        np.testing.assert_allclose(expected, 10**level, rtol=1e-6)
        checked += len(points)
    assert checked > 0

    # Adam+ℓ2: contours of η²λ, and none in the λ = 0 row (the third row, y in [2, 3]).
    lrs, weight_decays = grid("adam-l2")
    checked = 0
    for level, points in contour_points(adam_l2):
        assert points[:, 1].max() <= len(weight_decays) + 1e-9
        lr = figures.cell_value(points[:, 0], lrs)
        wd = figures.cell_value(points[:, 1], weight_decays)
        np.testing.assert_allclose(lr**2 * wd, 10**level, rtol=1e-6)
        checked += len(points)
    assert checked > 0
    plt.close(fig)


def test_cell_value_is_log_linear_through_the_cell_centres():
    values = [1e-3, 4e-3, 1.6e-2]
    np.testing.assert_allclose(figures.cell_value([0.5, 1.5, 2.5], values), values)
    np.testing.assert_allclose(figures.cell_value([1.0, 0.0, 3.0], values), [2e-3, 5e-4, 3.2e-2])


# --- lr sweep, curves -------------------------------------------------------------------------


def test_lr_sweep_one_line_per_variant_at_its_best_weight_decay(sweeps):
    sweep = sweeps["heatmap"]
    runs = runs_table(sweep)
    fig = figures.draw_lr_sweep(figures.load_runs(sweep))
    (ax,) = fig.axes
    lines = {container.get_label(): container.lines[0] for container in ax.containers}
    assert set(lines) == {"AdamW", "Adam+ℓ2"}

    done = runs[runs["status"] == "done"]
    for label, optimizer in (("AdamW", "adamw"), ("Adam+ℓ2", "adam-l2")):
        best = done[done["optimizer"] == optimizer].groupby(["lr", "weight_decay"])["final_val_top1"].mean()
        best = best.groupby("lr").max()
        np.testing.assert_allclose(lines[label].get_xdata(), best.index)
        np.testing.assert_allclose(lines[label].get_ydata(), best.to_numpy())
    # The diverged learning rate is marked at its lr, at the axis's bad end: below every finished point
    # (top-1, higher is better), inside the bottom tenth of the axes.
    marked = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
    assert len(marked) == 1 and len(marked[0].get_offsets()) == 1
    fig.canvas.draw()
    x, y = marked[0].get_offset_transform().transform(marked[0].get_offsets())[0]  # in display units
    assert ax.transData.inverted().transform((x, y))[0] == pytest.approx(1e30)
    assert 0 <= ax.transAxes.inverted().transform((x, y))[1] < 0.1
    lowest = min(ax.transData.transform((lr, value))[1] for line in lines.values()
                 for lr, value in zip(line.get_xdata(), line.get_ydata()))
    assert y < lowest
    plt.close(fig)


def test_curves_show_each_variant_at_its_best_run(sweeps):
    sweep = sweeps["heatmap"]
    fig = figures.draw_curves(figures.load_runs(sweep), gather.read_results(sweep, "curves"))
    train_ax, val_ax = [ax for ax in fig.axes if ax.get_title()]
    assert len(train_ax.get_lines()) == len(val_ax.get_lines()) == 2  # AdamW and Adam+ℓ2
    curves = gather.read_results(sweep, "curves")
    best_adam_l2 = runs_table(sweep).query("optimizer == 'adam-l2' and status == 'done'")
    best_adam_l2 = best_adam_l2.loc[best_adam_l2["final_val_top1"].idxmax(), "run_id"]
    expected = curves.query("run_id == @best_adam_l2 and split == 'val' and metric == 'loss'")["value"]
    assert any(np.allclose(line.get_ydata(), expected) for line in val_ax.get_lines())
    plt.close(fig)


# --- Dynamics ---------------------------------------------------------------------------------


def finished_run(sweep, optimizer: str) -> pd.Series:
    """A finished seed-0 run of the optimizer at its largest λ."""
    runs = runs_table(sweep).query("optimizer == @optimizer and status == 'done' and seed == 0")
    return runs.sort_values("weight_decay").iloc[-1]


def weight_names(sweep, run_id):
    dynamics = gather.read_results(sweep, "dynamics")
    return list(dict.fromkeys(dynamics.query("run_id == @run_id and stat == 'angular_update'")["param"]))


def test_dynamics_per_layer_with_the_predicted_rotation(sweeps):
    sweep = sweeps["heatmap"]
    adamw, adam_l2 = finished_run(sweep, "adamw"), finished_run(sweep, "adam-l2")
    weights = weight_names(sweep, adamw["run_id"])

    layers, chosen, names = figures.dynamics_selection(sweep, [adamw["run_id"], adam_l2["run_id"]])
    assert names == weights
    dynamics = figures.read_dynamics(sweep, chosen["run_id"].tolist(), names)
    fig = figures.draw_dynamics(chosen, names, dynamics, layers, gather.read_results(sweep, "curves"))
    norm_adamw, norm_l2, angle_adamw, angle_l2 = fig.axes[:4]
    # One measured line per weight; AdamW's rotation panel adds Table 1's η̂_r at the scheduled lr, its
    # norm panel the equilibrium and transient norms per weight (Adam+ℓ2's need gradient statistics).
    assert len(norm_l2.get_lines()) == len(angle_l2.get_lines()) == len(weights)
    assert len(norm_adamw.get_lines()) == 3 * len(weights)
    prediction = angle_adamw.get_lines()[len(weights)]  # after the measured lines, before the transients
    config = figures.run_config(adamw)
    steps = prediction.get_xdata()
    lrs = [learning_rate(config, int(step), config.steps, config.warmup_steps) for step in steps]
    expected = theory.expected_rotation("adamw", np.array(lrs), config.weight_decay, beta1=config.beta1,
                                        beta2=config.beta2)
    np.testing.assert_allclose(prediction.get_ydata(), expected)
    assert "gradient statistics" in angle_l2.get_legend().get_title().get_text()
    plt.close(fig)

    with pytest.raises(UserError, match="runs with dynamics: .*" + adamw["run_id"]):
        figures.plot_dynamics(sweep, run_ids=["nosuchrun"])
    with pytest.raises(UserError, match="recorded weights: .*" + weights[0]):
        figures.plot_dynamics(sweep, layers=["no.such.weight"])


def test_dynamics_draws_the_transient_from_the_gathered_fan_ins(sweeps):
    sweep = sweeps["heatmap"]
    run = finished_run(sweep, "adamw")
    config = figures.run_config(run)
    # The fan-ins gather carried over from the recorder are those of the model itself.
    model = build_model(config.model, tiny=True, **config.model_options)
    fan_ins = {name: param[0].numel() for name, param in model.named_parameters() if param.dim() >= 2}
    gathered = gather.read_results(sweep, "layers").query("run_id == @run.run_id")
    assert dict(zip(gathered["param"], gathered["fan_in"])) == {p: fan_ins[p] for p in gathered["param"]}

    layers, chosen, names = figures.dynamics_selection(sweep, [run["run_id"]])
    dynamics = figures.read_dynamics(sweep, [run["run_id"]], names)
    fig = figures.draw_dynamics(chosen, names, dynamics, layers, gather.read_results(sweep, "curves"))
    norm_ax, angle_ax = fig.axes[:2]
    # Per weight: measured, equilibrium ‖ω̂‖ (dotted), transient (dashed) in the norm panel.
    assert len(norm_ax.get_lines()) == 3 * len(names)
    first = names[0]
    norm0 = dynamics.query("param == @first and stat == 'norm' and reduction == 'rms' and step == 0")["value"].item()
    lrs = figures.Schedule.of(run).lrs(range(config.steps))
    expected = theory.transient("adamw", lrs, config.weight_decay, dim=fan_ins[first], norm0=norm0,
                                beta1=config.beta1, beta2=config.beta2)
    transient = norm_ax.get_lines()[len(names) + 1]  # after the measured lines: weight 0's dotted, then dashed
    np.testing.assert_allclose(transient.get_ydata(), expected["norm"][transient.get_xdata().astype(int)])
    plt.close(fig)


def test_neuron_dynamics_of_one_weight(sweeps):
    sweep = sweeps["heatmap"]
    run = finished_run(sweep, "adamw")
    weight = weight_names(sweep, run["run_id"])[1]
    dynamics = figures.read_dynamics(sweep, [run["run_id"]], [weight])
    chosen = figures.load_runs(sweep).query("run_id == @run.run_id")
    fig = figures.draw_neuron_dynamics(chosen, weight, dynamics, gather.read_results(sweep, "curves"))
    norm_ax, angle_ax = fig.axes[:2]
    sampled = dynamics.query("stat == 'norm' and reduction == 'sample'")["neuron"].nunique()
    # Example neurons, then the mean; the rotation panel ends with the prediction.
    assert len(norm_ax.get_lines()) == min(6, sampled) + 1
    mean = dynamics.query("stat == 'norm' and reduction == 'mean'").sort_values("step")["value"]
    np.testing.assert_allclose(norm_ax.get_lines()[-1].get_ydata(), mean)
    # The rotation panel ends with Table 1's AdamW η̂_r = sqrt(2ηλ(1−β1)/(1+β1)) at the scheduled lr.
    prediction = angle_ax.get_lines()[-1]
    config = figures.run_config(run)
    steps = prediction.get_xdata()
    assert len(steps) > 1
    lrs = np.array([learning_rate(config, int(step), config.steps, config.warmup_steps) for step in steps])
    expected = np.sqrt(2 * lrs * config.weight_decay * (1 - config.beta1) / (1 + config.beta1))
    np.testing.assert_allclose(prediction.get_ydata(), expected, rtol=1e-12)
    plt.close(fig)


# --- Imbalance, random walk -------------------------------------------------------------------


def test_imbalance_points_are_the_best_weight_decay_of_each_setting(sweeps):
    sweep = sweeps["imbalance"]
    runs = runs_table(sweep)
    fig = figures.draw_imbalance(figures.load_runs(sweep))
    portion_ax, factor_ax, width_ax = [ax for ax in fig.axes if ax.get_title()]
    done = runs[runs["status"] == "done"]
    imbalanced = done[done["imbalance_portion"] > 0]
    assert portion_ax.get_title() == f"portion p, at factor f = {imbalanced['imbalance_factor'].max():g}"
    portion = imbalanced["imbalance_portion"].max()  # the tiny grid sweeps the factor at one portion
    assert factor_ax.get_title() == f"factor f, at portion p = {1 - portion:.0%}"
    balanced = done[(done["imbalance_portion"] == 0) & (done["model_options"] == "{}")]["final_val_top1"].max()
    (reference,) = [line for line in portion_ax.get_lines() if line.get_linestyle() == ":"]
    assert reference.get_ydata()[0] == pytest.approx(balanced)

    # Right-2: each mode's line runs from the balanced RV (f = 1) through its factors.
    split = imbalanced.query("imbalance_mode == 'split' and imbalance_portion == @portion")
    split = split.sort_values("imbalance_factor")
    lines = {tuple(c.lines[0].get_xdata()): c.lines[0].get_ydata() for c in factor_ax.containers}
    np.testing.assert_allclose(lines[(1.0, *split["imbalance_factor"])], [balanced, *split["final_val_top1"]])
    narrow = done[done["model_options"].str.contains("width")]["final_val_top1"]
    np.testing.assert_allclose(width_ax.containers[0].lines[0].get_ydata(), narrow)
    plt.close(fig)


def table1(result: dict) -> dict:
    """Table 1 for a random walk's hyperparameters, C = 128: what needs no gradient statistics.

    η̂_r: SGDM sqrt(2ηλ/(1+α)), AdamW sqrt(2ηλ(1−β1)/(1+β1)), Lion sqrt(πηλK) with
    K = (1−β1)² + β1²(1−β2)/(1+β2). ‖ω̂‖: AdamW sqrt(ηC/(2λ)), Lion sqrt(ηC/(πλK)).
    η̂_g per coordinate: AdamW and Adam+ℓ2 η·sqrt((1−β1)/(1+β1)), Lion η.
    """
    eta, lam, beta1, beta2, alpha = (result[key] for key in ("lr", "weight_decay", "beta1", "beta2", "momentum"))
    k = (1 - beta1) ** 2 + beta1**2 * (1 - beta2) / (1 + beta2)
    c = randomwalk.FAN_IN
    return {
        "sgdm": {"eta_r": math.sqrt(2 * eta * lam / (1 + alpha))},
        "adamw": {"eta_r": math.sqrt(2 * eta * lam * (1 - beta1) / (1 + beta1)), "norm": math.sqrt(eta * c / (2 * lam)),
                  "eta_g": eta * math.sqrt((1 - beta1) / (1 + beta1))},
        "adam-l2": {"eta_g": eta * math.sqrt((1 - beta1) / (1 + beta1))},
        "lion": {"eta_r": math.sqrt(math.pi * eta * lam * k), "norm": math.sqrt(eta * c / (math.pi * lam * k)),
                 "eta_g": eta},
    }[result["optimizer"]]


def test_randomwalk_figure_draws_table_1(sweeps):
    directory = sweeps["randomwalk"]
    walks = figures.read_randomwalks(directory)
    assert [result["optimizer"] for result, _ in walks] == ["sgdm", "adamw", "adam-l2", "lion"]
    fig = figures.draw_randomwalk(walks)
    grid = np.array(fig.axes[:12]).reshape(3, 4)
    checked = 0
    for column, (result, _) in enumerate(walks):
        assert result["lr"] == randomwalk.PAPER_HYPERPARAMETERS[result["optimizer"]]["lr"]
        panels = dict(zip(("norm", "eta_r", "eta_g"), grid[:, column]))
        for key, ax in panels.items():
            assert len(ax.get_lines()) == 4 + 1 + 1  # four neurons, the layer average, the prediction
            drawn = ax.get_lines()[-1].get_ydata()
            # Table 1 where it needs only hyperparameters; elsewhere (SGDM's norm and η̂_g, Adam+ℓ2's
            # η̂_r and norm) the prediction from the gradient statistics the walk measured.
            want = table1(result).get(key, result[f"{key}_predicted"])
            checked += key in table1(result)
            np.testing.assert_allclose(drawn, want, rtol=1e-9)
    assert checked == 1 + 3 + 1 + 3
    plt.close(fig)


# --- Every figure, finding sweeps, missing data ------------------------------------------------


def test_plot_all_writes_every_figure_each_sweep_supports(sweeps):
    # plot_all calls each plot_* function: this checks their files.
    drawn = figures.plot_all(sweeps["heatmap"])
    assert set(drawn.paths) == {"heatmap", "lr-sweep", "curves", "dynamics", "dynamics-neurons"}
    assert "imbalance experiment" in drawn.skipped["imbalance"]
    drawn.paths.update(figures.plot_all(sweeps["imbalance"]).paths)
    walk = figures.plot_all(sweeps["randomwalk"])
    assert set(walk.paths) == {"randomwalk"} and not walk.skipped
    drawn.paths.update(walk.paths)
    for name, paths in drawn.paths.items():
        assert_images(paths, name.replace("-", "_"))
        assert paths[0].parent.name == "figures"


def test_find_sweep_takes_the_newest_sweep_with_the_data(sweeps, tmp_path):
    root = sweeps["root"]
    assert figures.find_sweep("heatmap", root) == sweeps["heatmap"]
    assert figures.find_sweep("imbalance", root) == sweeps["imbalance"]
    assert figures.find_sweep("randomwalk", root) == sweeps["randomwalk"]
    # Both have dynamics: the one gathered last wins.
    for name, age in (("heatmap", 100), ("imbalance", 200)):
        runs = gather.output_paths(sweeps[name])["runs"]
        os.utime(runs, (runs.stat().st_atime, runs.stat().st_mtime - age))
    assert figures.find_sweep("dynamics", root) == sweeps["heatmap"]
    with pytest.raises(UserError, match="adam-vs-adamw"):
        figures.find_sweep("heatmap", tmp_path)
    with pytest.raises(UserError, match="rotsweep randomwalk"):
        figures.find_sweep("randomwalk", tmp_path)


def test_missing_data_names_the_experiment_that_makes_it(sweeps, tmp_path):
    with pytest.raises(UserError, match="adam-vs-adamw") as error:  # one lr: no lr × λ grid
        figures.plot_heatmap(sweeps["imbalance"], x="lr", y="weight_decay")
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="the imbalance experiment"):
        figures.plot_imbalance(sweeps["heatmap"])
    with pytest.raises(UserError, match="rotsweep gather"):
        figures.plot_lr_sweep(tmp_path)
    with pytest.raises(UserError, match="rotsweep randomwalk --optimizer"):
        figures.plot_randomwalk(tmp_path)
    with pytest.raises(UserError, match="unknown metric"):
        figures.plot_lr_sweep(sweeps["heatmap"], metric="accuracy")


def test_run_config_of_every_row_has_the_rows_run_id(sweeps):
    for sweep in (sweeps["heatmap"], sweeps["imbalance"]):
        for _, row in runs_table(sweep).iterrows():
            assert figures.run_config(row).run_id == row["run_id"]
