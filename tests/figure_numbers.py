"""The numbers every figure and the demo's findings compute from a set of gathered sweeps.

compute(ROOT) reads ROOT/sweeps/<experiment>/ (gathered sweeps) and ROOT/randomwalk/
(random-walk directories) and returns, as plain JSON values, the tables each figure draws
(the computation separated from the drawing) and the demo's findings and report lines.
tests/fixtures/figure-numbers/make.py stores them; tests/test_figure_numbers.py checks that
the code still computes the same.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from rotsweep import demo, store
from rotsweep.analysis import figures, gather


def records(table: pd.DataFrame) -> list[dict]:
    """A table's rows as JSON-safe dicts (NaN → None), in the table's order."""
    return demo._clean(table.reset_index(drop=True).astype(object).to_dict("records"))


def lr_sweep(runs: pd.DataFrame) -> dict:
    metric, table, points = figures.lr_sweep_points(runs)
    return {"metric": metric.name, "table": records(table), "points": records(points)}


def heatmap(runs: pd.DataFrame) -> dict:
    metric, cells, panels = figures.heatmap_cells(runs)
    contours = {}
    for variant in panels:  # η̂_r (Table 1) at every cell with λ > 0, what the contours are drawn from
        config = figures.run_config(runs[runs["variant"] == variant].iloc[0])
        mine = cells[(cells["variant"] == variant) & (cells["weight_decay"] > 0)]
        contours[variant] = [[wd, lr, float(gather.predicted_rotation(config.replace(weight_decay=float(wd)), lr))]
                             for wd, lr in zip(mine["weight_decay"], mine["lr"])]
    return {"metric": metric.name, "panels": panels, "cells": records(cells), "eta_r_hat": contours}


def curves(sweep: Path) -> dict:
    runs = figures.load_runs(sweep)
    chosen, losses = figures.curve_runs(runs, gather.read_results(sweep, "curves"))
    drawn = losses[losses["run_id"].isin(chosen["run_id"])]
    summary = drawn.groupby(["run_id", "split"])["value"].agg(["count", "sum"]).reset_index()
    return {"runs": chosen["run_id"].tolist(), "variants": chosen["variant"].tolist(), "losses": records(summary)}


def dynamics(sweep: Path) -> dict:
    layers, chosen, weights = figures.dynamics_selection(sweep)
    rows = gather.read_dynamics(sweep, chosen["run_id"].tolist(), pairs=figures.DRAWN_ROWS, params=weights)
    per_run = {}
    for _, run in chosen.iterrows():
        data = rows[rows["run_id"] == run["run_id"]]
        steps = np.sort(data["step"].unique())
        schedule = figures.Schedule.of(run)
        numbers = {"steps": steps.tolist(), "note": figures._prediction_note(schedule),
                   "drawn": records(data.groupby(["param", "stat"])["value"].agg(["count", "sum"]).reset_index())}
        if schedule is not None:
            numbers["eta_r_hat"] = schedule.rotation(steps).tolist()
            run_layers = layers[(layers["run_id"] == run["run_id"]) & layers["param"].isin(weights)]
            drawn = [w for w in weights if (data["param"] == w).any()]
            if len(run_layers) == len(drawn) and len(steps):
                first = data[(data["stat"] == "norm") & (data["reduction"] == "rms") & (data["step"] == steps[0])]
                norm0 = first.set_index("param")["value"].reindex(drawn).to_numpy(float)
                fan_in = run_layers.set_index("param")["fan_in"].reindex(drawn).to_numpy(float)
                sizes = schedule.sizes(fan_in, norm0, steps)
                numbers["sizes"] = None if sizes is None else {k: v.tolist() for k, v in sizes.items()}
        per_run[run["run_id"]] = numbers
    return {"runs": chosen["run_id"].tolist(), "weights": weights, "per_run": per_run,
            "neuron_weight": figures.neuron_weight(layers, weights)}


def imbalance(runs: pd.DataFrame) -> dict:
    metric, panels, reference = figures.imbalance_tables(runs)
    return {"metric": metric.name,
            "panels": [{"title": p.title, "xlabel": p.xlabel, "points": records(p.points), "balanced_x": p.balanced_x}
                       for p in panels],
            "reference": None if reference is None else demo._clean(reference.astype(object).to_dict())}


def random_walks(directory: Path) -> dict:
    walks = figures.read_randomwalks(directory)
    out = []
    for result, table in walks:
        table = table[table["param"] == table["param"].iloc[0]]
        picked = figures._spread_out(table[(table["stat"] == "grad_norm") & (table["reduction"] == "sample")], 4)
        out.append({"walk": {k: result[k] for k in sorted(figures.WALK_KEYS)}, "picked": picked.tolist()})
    return out


def walk_results(directory: Path) -> dict[int, dict[str, dict]]:
    """seed -> walk name -> randomwalk.json, as the demo collects them."""
    seeds = {0: directory, **{int(p.name.removeprefix("seed-")): p for p in directory.glob("seed-*")}}
    return {seed: {name: store.read_json(path / name / "randomwalk.json") for name in demo.RANDOM_WALKS}
            for seed, path in sorted(seeds.items())}


def compute(root: str | Path) -> dict:
    root = Path(root)
    sweeps = {path.name: path for path in sorted((root / "sweeps").iterdir())}
    runs = {name: figures.load_runs(path) for name, path in sweeps.items()}
    numbers = {
        "heatmap": heatmap(runs["adam-vs-adamw"]),
        "lr_sweep": {name: lr_sweep(runs[name]) for name in ("eta-lambda", "warmup", "weight-std")},
        "curves": {name: curves(sweeps[name]) for name in ("warmup", "eta-lambda")},
        "dynamics": {name: dynamics(sweeps[name]) for name in ("dynamics", "eta-lambda", "weight-std")},
        "imbalance": imbalance(runs["imbalance"]),
        "randomwalk": random_walks(root / "randomwalk"),
        "variants": {name: figures.variant_order(table) for name, table in runs.items()},
    }
    findings = demo.measure_findings(walk_results(root / "randomwalk"), sweeps)
    numbers["findings"] = demo._clean({f.key: {"verdict": f.verdict, "measured": f.line, "effect": f.effect.numbers(),
                                               "numbers": f.numbers} for f in findings})
    numbers["report_lines"] = {name: f"{demo.best_line(path)}; {demo.equilibrium_line(path)}"
                               for name, path in sweeps.items()}
    return demo._clean(numbers)


def assert_same(actual, expected, where: str = "") -> None:
    """Equal structure and text; floats equal to 1e-9 relative (the same code on the same inputs)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and sorted(actual) == sorted(expected), f"{where}: keys {sorted(actual)}"
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: length"
        for k, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{k}]")
    elif isinstance(expected, float) and not isinstance(actual, bool) and isinstance(actual, (int, float)):
        assert math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-12), f"{where}: {actual} != {expected}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"
