"""The paper's experiments as grids of RunConfigs, at paper scale and at tiny scale.

    exp = get_experiment("warmup")
    exp.runs("gpt2")                 # the 28 runs of Figure 5 (Middle)
    exp.runs("gpt2", scale="tiny")   # the same axes, fewer points, on a CPU
    exp.axes("gpt2", "paper")        # {"optimizer": ["AdamW", "RV-AdamW"],
                                     #  "warmup": ["250 steps", "none"], "lr": [3e-4, ...]}

An experiment names the figures it reproduces and, for every model it accepts
and every scale, one Sweep: a base configuration, the grid points swept over
it and the default seeds. A grid point is a set of RunConfig field changes
labelled by the values of the axes it sits on. Most grids are Cartesian
products of axes (`product`); where the paper's grid is not one (Adam+ℓ2 and
AdamW sweep different weight decays, Figure 16 has five sub-grids) a sweep's
points are the concatenation of several products.

Paper scale uses the exact values of the official scripts (epfml/REQ,
experiments/, one folder per section of the paper). Tiny scale keeps every axis
that carries a comparison of the paper (optimizer vs its rotational variant,
warmup on/off, WS on/off, ...) with fewer points, the tiny models and the
synthetic data sets, so that each experiment runs in minutes on two cores.

Axis names are RunConfig fields where one field is swept ("lr",
"weight_decay", "imbalance_portion", ...) and short names for named settings
that change several fields ("optimizer": "AdamW" / "RV-AdamW", "warmup",
"variant"). The first model an experiment lists is the one its figures are
usually drawn for (the demo's).

Each experiment lives in its own module below; this file holds the small
vocabulary they share (Axis, Point, Sweep, Experiment) and the registry.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rotsweep.config import RunConfig
from rotsweep.errors import UserError

SCALES = ("paper", "tiny")

# Tiny sweeps compare final accuracies a few points apart: they evaluate on the
# whole validation split rather than the tiny presets' few batches.
TINY_FULL_EVAL = {"eval_batches": None}


@dataclass(frozen=True)
class Axis:
    """One swept quantity: the values reported by `axes()` and the RunConfig changes each one makes."""

    name: str
    values: tuple
    changes: tuple[dict, ...]


def axis(name: str, values: Iterable, changes: Callable[[Any], dict] | None = None) -> Axis:
    """An axis whose value sets the field `name`, or the fields returned by `changes(value)`.

    `axis("lr", lrs, lambda lr: {"lr": lr, "weight_decay": 5e-4 / lr})` sweeps
    the learning rate along a line of constant η·λ (Figure 4).
    """
    values = tuple(values)
    make = changes or (lambda value: {name: value})
    return Axis(name, values, tuple(make(value) for value in values))


def choice(name: str, options: Mapping[str, dict]) -> Axis:
    """An axis of named settings, e.g. {"AdamW": {...}, "RV-AdamW": {"rotational": True, ...}}."""
    return Axis(name, tuple(options), tuple(dict(changes) for changes in options.values()))


@dataclass(frozen=True)
class Point:
    """One grid point: its position on the axes, and the RunConfig fields it sets."""

    labels: dict
    changes: dict


def product(*axes: Axis) -> list[Point]:
    """Every combination of the axes' values, the last axis varying fastest."""
    points = []
    for combination in itertools.product(*(zip(a.values, a.changes) for a in axes)):
        labels, changes = {}, {}
        for a, (value, value_changes) in zip(axes, combination):
            labels[a.name] = value
            changes.update(value_changes)
        points.append(Point(labels, changes))
    return points


@dataclass(frozen=True)
class Sweep:
    """One model at one scale: a base configuration, the points swept over it, the default seeds."""

    base: dict
    points: list[Point]
    seeds: tuple[int, ...]

    def runs(self, seeds: Sequence[int] | None = None) -> list[RunConfig]:
        """One RunConfig per seed and point (seed outermost, so that a partial sweep holds whole grids).

        Duplicates (two points that make the same configuration) are removed,
        keeping the first: a run is its RunConfig.
        """
        seeds = self.seeds if seeds is None else tuple(seeds)
        if not seeds:
            raise UserError("no seeds given: the sweep would be empty; pass at least one, e.g. --seeds 0")
        runs: dict[str, RunConfig] = {}
        for seed in seeds:
            for point in self.points:
                config = RunConfig.from_dict({**self.base, **point.changes, "seed": seed})
                runs.setdefault(config.run_id, config)
        return list(runs.values())

    def axes(self) -> dict[str, list]:
        """The values each axis takes: numbers ascending, named settings in the order declared."""
        axes: dict[str, list] = {}
        for point in self.points:
            for name, value in point.labels.items():
                values = axes.setdefault(name, [])
                if value not in values:
                    values.append(value)
        for values in axes.values():
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                values.sort()
        return axes


@dataclass(frozen=True)
class Experiment:
    """A figure (or table) of the paper: the models it accepts and a Sweep per model and scale."""

    name: str
    figures: str  # e.g. "5, 15" or "Tables 2, 3"
    description: str
    sweeps: dict[str, dict[str, Sweep]]  # model -> scale -> Sweep; the first model is the demo's

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.sweeps)

    def sweep(self, model: str, scale: str = "paper") -> Sweep:
        if model not in self.sweeps:
            raise UserError(
                f"experiment {self.name} does not accept model {model!r}; choose one of: {', '.join(self.models)}"
            )
        if scale not in SCALES:
            raise UserError(f"unknown scale {scale!r}; choose one of: {', '.join(SCALES)}")
        return self.sweeps[model][scale]

    def runs(self, model: str, scale: str = "paper", seeds: Sequence[int] | None = None) -> list[RunConfig]:
        """The distinct runs of this experiment; seeds=None means the sweep's default seeds."""
        return self.sweep(model, scale).runs(seeds)

    def axes(self, model: str, scale: str = "paper") -> dict[str, list]:
        return self.sweep(model, scale).axes()


# The experiments import the vocabulary above from this package, so they are
# imported only once it is defined.
from rotsweep.experiments import (  # noqa: E402
    adam_vs_adamw,
    dynamics,
    eta_lambda,
    imbalance,
    warmup,
    weight_std,
    zero_shot,
)

EXPERIMENTS: dict[str, Experiment] = {
    experiment.name: experiment
    for experiment in (
        eta_lambda.EXPERIMENT,
        warmup.EXPERIMENT,
        adam_vs_adamw.EXPERIMENT,
        weight_std.EXPERIMENT,
        imbalance.EXPERIMENT,
        zero_shot.EXPERIMENT,
        dynamics.EXPERIMENT,
    )
}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise UserError(f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def describe_experiments() -> list[dict]:
    """Every experiment with, per model and scale, its axes, default seeds and run count (JSON-ready)."""
    described = []
    for experiment in EXPERIMENTS.values():
        per_model = {
            model: {
                scale: {
                    "axes": sweep.axes(),
                    "seeds": list(sweep.seeds),
                    "runs": len(sweep.runs()),
                }
                for scale, sweep in scales.items()
            }
            for model, scales in experiment.sweeps.items()
        }
        described.append({
            "name": experiment.name,
            "figures": experiment.figures,
            "description": experiment.description,
            "models": list(experiment.models),
            "per_model": per_model,
        })
    return described
