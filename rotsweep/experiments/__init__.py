"""The paper's experiments as grids of RunConfigs, at paper scale and at tiny scale.

    exp = get_experiment("warmup")
    exp.runs("gpt2")                 # the 30 runs of Figure 5 (Middle)
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
experiments/…). Where the paper's text and those scripts disagree, the
scripts win (they produced the paper's numbers), and the experiment's
docstring records the disagreement. Every paper sweep carries, for each
RunConfig field its runs set away from the default, where the value comes
from (`Sweep.sources`, shown by `rotsweep experiments --json`), so a recipe
can be audited without reading code. Tiny scale keeps every axis
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
from dataclasses import dataclass, field
from typing import Any

from rotsweep.config import RunConfig
from rotsweep.errors import UserError

SCALES = ("paper", "tiny")

# Tiny sweeps compare final accuracies a few points apart: they evaluate on the
# whole validation split rather than the tiny presets' few batches.
TINY_FULL_EVAL = {"eval_batches": None}


@dataclass(frozen=True)
class Axis:
    """One swept quantity: the values reported by `axes()` and the RunConfig changes each one makes.

    labels: where one value labels a point on several axes at once (a zipped
    axis of a sweep file: lr and batch size moving together), the labels of
    each value; None means {name: value}.
    eta_lambda: set for an lr axis along a line of constant η·λ (`along_eta_lambda`),
    so that a sweep file can write the axis as it was meant (rotsweep.sweepfile).
    """

    name: str
    values: tuple
    changes: tuple[dict, ...]
    labels: tuple[dict, ...] | None = None
    eta_lambda: float | None = None

    def label(self, index: int) -> dict:
        return dict(self.labels[index]) if self.labels is not None else {self.name: self.values[index]}


def axis(name: str, values: Iterable, changes: Callable[[Any], dict] | None = None) -> Axis:
    """An axis whose value sets the field `name`, or the fields returned by `changes(value)`.

    `axis("width", [32, 64], lambda w: {"model_options": {"width": w}})` sweeps
    a model option; `along_eta_lambda` sweeps lr along a line of constant η·λ.
    """
    values = tuple(values)
    make = changes or (lambda value: {name: value})
    return Axis(name, values, tuple(make(value) for value in values))


def weight_decay_at_eta_lambda(eta_lambda: float, lr: float) -> float:
    """λ = η·λ / η: the weight decay that keeps AdamW's η̂_r = sqrt(2ηλ(1−β1)/(1+β1)) fixed (Table 1)."""
    return eta_lambda / lr


def along_eta_lambda(eta_lambda: float, lrs: Iterable[float]) -> Axis:
    """The lr axis along which λ = eta_lambda / η (Figure 4): a line of constant η̂_r for AdamW."""
    lrs = tuple(lrs)
    changes = tuple({"lr": lr, "weight_decay": weight_decay_at_eta_lambda(eta_lambda, lr)} for lr in lrs)
    return Axis("lr", lrs, changes, eta_lambda=eta_lambda)


def choice(name: str, options: Mapping[str, dict]) -> Axis:
    """An axis of named settings, e.g. {"AdamW": {...}, "RV-AdamW": {"rotational": True, ...}}."""
    return Axis(name, tuple(options), tuple(dict(changes) for changes in options.values()))


@dataclass(frozen=True)
class Point:
    """One grid point: its position on the axes, and the RunConfig fields it sets.

    seeds: the point's default seeds where the official scripts ran it with other
    seeds than the rest of its sweep (e.g. the OpenWebText rows of Table 2: 42-44).
    """

    labels: dict
    changes: dict
    seeds: tuple[int, ...] | None = None
    # The axes of the product this point belongs to (None for a point made by hand): lets
    # rotsweep.sweepfile print a sweep as the products it was written as.
    grid: tuple[Axis, ...] | None = field(default=None, compare=False, repr=False)


def sources(*parts: Mapping[str, str]) -> dict[str, str]:
    """Merge {field: where its value comes from} dicts; a field cited differently keeps every citation."""
    merged: dict[str, list[str]] = {}
    for part in parts:
        for name, source in part.items():
            if source not in merged.setdefault(name, []):
                merged[name].append(source)
    return {name: " | ".join(texts) for name, texts in merged.items()}


def with_seeds(points: list[Point], seeds: tuple[int, ...]) -> list[Point]:
    """The same points, run by default with `seeds` instead of their sweep's."""
    return [Point(point.labels, point.changes, tuple(seeds), point.grid) for point in points]


def product(*axes: Axis) -> list[Point]:
    """Every combination of the axes' values, the last axis varying fastest."""
    points = []
    for combination in itertools.product(*(range(len(a.values)) for a in axes)):
        labels, changes = {}, {}
        for a, index in zip(axes, combination):
            labels.update(a.label(index))
            changes.update(a.changes[index])
        points.append(Point(labels, changes, grid=axes))
    return points


@dataclass(frozen=True)
class Sweep:
    """One model at one scale: a base configuration, the points swept over it, the default seeds.

    sources: for paper sweeps, where each RunConfig field that the runs set away
    from its default comes from (paper section / table / figure, official script).
    """

    base: dict
    points: list[Point]
    seeds: tuple[int, ...]
    sources: dict[str, str] = field(default_factory=dict)

    def runs(self, seeds: Sequence[int] | None = None) -> list[RunConfig]:
        """One RunConfig per seed and point (seed outermost, so that a partial sweep holds whole grids).

        seeds=None runs every point with its default seeds (its own, else the
        sweep's); given seeds replace them for every point. Duplicates (two
        points that make the same configuration) are removed, keeping the
        first: a run is its RunConfig.
        """
        if seeds is not None and not tuple(seeds):
            raise UserError("no seeds given: the sweep would be empty; pass at least one, e.g. --seeds 0")
        point_seeds = [tuple(seeds) if seeds is not None else (point.seeds or self.seeds) for point in self.points]
        runs: dict[str, RunConfig] = {}
        for k in range(max(map(len, point_seeds), default=0)):
            for point, its_seeds in zip(self.points, point_seeds):
                if k < len(its_seeds):
                    config = RunConfig.from_dict({**self.base, **point.changes, "seed": its_seeds[k]})
                    runs.setdefault(config.run_id, config)
        return list(runs.values())

    def default_seeds(self) -> list[int]:
        """Every seed some point runs with by default, in order of first use."""
        return list(dict.fromkeys(seed for point in self.points for seed in (point.seeds or self.seeds)))

    def non_default_fields(self) -> list[str]:
        """The RunConfig fields (other than seed) that some default run sets away from the field's default."""
        defaults = RunConfig(steps=1).to_dict()
        defaults["steps"] = None  # a RunConfig needs a length; the field's own default is None
        names = {name for config in self.runs() for name, value in config.to_dict().items()
                 if value != defaults[name]}
        return sorted(names - {"seed"})

    def swept_fields(self) -> set[str]:
        """The RunConfig fields that differ between the points: fixing one would collapse an axis."""
        defaults = {name: value for name, value in RunConfig(steps=1).to_dict().items() if name != "steps"}
        swept = set()
        for name in {name for point in self.points for name in point.changes}:
            values = {repr({**defaults, **self.base, **point.changes}.get(name)) for point in self.points}
            if len(values) > 1:
                swept.add(name)
        return swept

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
                    "seeds": sweep.default_seeds(),
                    "runs": len(sweep.runs()),
                    **({"sources": {name: sweep.sources.get(name, "MISSING")
                                    for name in ["seed", *sweep.non_default_fields()]}} if scale == "paper" else {}),
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
