"""RunConfig: everything that determines one training run, and its run_id.

A RunConfig is a frozen dataclass of plain values. Its canonical JSON (sorted
keys, floats written with repr) is hashed into the run_id, so the same
configuration has the same id on any machine, and two sweeps that contain the
same run share it. Things that do not change what is computed (the device, the
data directory, the output directory) are deliberately not part of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rotsweep.errors import UserError


# Longer than any run of the paper by a factor of 1000 (its longest has 100k steps, 200 epochs):
# beyond these a run would not end in any allocation, so the value is a typo.
MAX_STEPS = 100_000_000
MAX_EPOCHS = 100_000


@dataclass(frozen=True)
class RunConfig:
    # Model (see rotsweep.models.build_model).
    model: str = "resnet20"
    tiny: bool = False
    weight_standardization: bool = False
    gain: bool = False  # learnable per-neuron gain ("slinear" in the paper's code)
    model_options: dict = field(default_factory=dict)  # e.g. {"pre_activation": False, "dropout": 0.2}

    # Data (see rotsweep.data.load_dataset).
    dataset: str = "synthetic-images"
    dataset_options: dict = field(default_factory=dict)  # e.g. {"image_size": 16} for synthetic images
    val_split: bool = False  # 90/10 split of the training set, seeded by `seed`
    block_size: int | None = None  # text: tokens per sequence
    label_smoothing: float = 0.0

    # Optimizer (see rotsweep.optim.build_optimizer).
    optimizer: str = "adamw"  # adamw | adam-l2 | sgdm | lion
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    momentum: float = 0.9
    eps: float = 1e-8

    # Rotational variant (Algorithm 1) and its imbalanced form (Appendix J).
    rotational: bool = False
    rv_per_neuron: bool = True
    rv_zero_mean: bool = True
    rv_beta: float = 0.9
    rv_eta_r_from: str | None = None  # e.g. "adamw" for Adam+l2 directions with AdamW's rotation
    imbalance_portion: float = 0.0
    imbalance_factor: float = 1.0
    imbalance_mode: str = "split"  # slow | split

    # Learning-rate schedule (see rotsweep.schedule).
    schedule: str = "cosine"  # cosine | constant | onecycle
    lr_power: float = 1.0  # cosine raised to this power (2 = the paper's cos^2 for RVs)
    min_lr: float = 0.0
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    warmup_start_lr: float = 1e-6
    onecycle_pct_start: float = 0.02
    onecycle_div_factor: float = 1e2
    onecycle_final_div_factor: float = 1e4

    # Length and batching: `steps` optimizer steps, or `epochs` over the training set.
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 128
    accumulation: int = 1
    grad_clip: float = 0.0  # 0 = no clipping

    # Numerics and speed.
    precision: str = "fp32"  # fp32 | bf16 | fp16
    compile: bool = False
    channels_last: bool = False

    seed: int = 0

    # What is measured, and how often (in optimizer steps; 0 = never).
    train_log_interval: int = 10  # train loss is averaged over windows of this many steps
    eval_interval: int = 100
    eval_batches: int | None = None  # None = the whole evaluation split
    dynamics_interval: int = 10
    dynamics_sample_neurons: int = 16
    checkpoint_interval: int = 500

    # Fields added after the first release (see FIRST_RELEASE_FIELDS). Each default is what
    # runs computed before the field existed; the paper recipes that need another value set it.
    # Which tensors get weight decay (and so, by the default rule, are rotational in an RV):
    # "matrices" = every tensor with ndim >= 2 (timm, nanoGPT); "linear" = the weights of Linear
    # layers that are not tied to an embedding (llm_baselines: embeddings and the tied lm_head
    # get no decay). See models.param_groups.
    weight_decay_on: str = "matrices"
    # The split evaluated during training: "val", or "test" (llm_baselines' --is-test-split).
    # The metric rows keep the name "val" (the run's held-out evaluation), as CIFAR runs
    # without a 90/10 split do when they evaluate on the test set.
    eval_split: str = "val"
    # Seed of the data set itself (the 90/10 split; a synthetic set's task); None = `seed`.
    # The official lr-vs-wd and imbalance scripts fix the split at 0 while varying the seed.
    data_seed: int | None = None
    # Warmup shape. "timm": a line from warmup_start_lr that overlaps the schedule, measured
    # from step 0. "nanogpt": a line from 0 over the warmup steps, then the cosine over the
    # remaining steps (nanoGPT's get_lr).
    warmup_style: str = "timm"

    def __post_init__(self) -> None:
        # Every value torch would refuse mid-run, or would compute nonsense from, is refused
        # here: a RunConfig exists only if a run of it can be trained (and a dry run finds it).
        for name, kind in _FIELD_TYPES.items():
            value = getattr(self, name)
            if (kind is float or float in typing.get_args(kind)) and isinstance(value, float) \
                    and not math.isfinite(value):
                raise UserError(f"{name}={value} must be a finite number")
        if (self.steps is None) == (self.epochs is None):
            raise UserError("a run needs exactly one of `steps` or `epochs`; set one with --set steps=N")
        if self.steps is not None and not 1 <= self.steps <= MAX_STEPS:
            raise UserError(f"steps={self.steps} must be between 1 and {MAX_STEPS:,}")
        if self.epochs is not None and not 0 < self.epochs <= MAX_EPOCHS:
            raise UserError(f"epochs={self.epochs} must be positive and at most {MAX_EPOCHS:,}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"lr={self.lr} must be a positive number")
        if self.weight_decay < 0:
            raise UserError(f"weight_decay={self.weight_decay} must not be negative")
        if self.batch_size < 1 or self.accumulation < 1:
            raise UserError("batch_size and accumulation must be at least 1")
        # (lower bound, upper bound, upper bound included): ranges in which the optimizers,
        # the loss and the schedule are defined (torch refuses beta1 = 1, eps < 0, ...).
        ranges = {
            "beta1": (0.0, 1.0, False), "beta2": (0.0, 1.0, False), "momentum": (0.0, 1.0, False),
            "rv_beta": (0.0, 1.0, False), "eps": (0.0, math.inf, False),
            "label_smoothing": (0.0, 1.0, True), "imbalance_portion": (0.0, 1.0, True),
            "onecycle_pct_start": (0.0, 1.0, True), "grad_clip": (0.0, math.inf, False),
            "min_lr": (0.0, self.lr, True), "warmup_start_lr": (0.0, math.inf, False),
            "warmup_steps": (0, math.inf, False), "warmup_epochs": (0.0, math.inf, False),
            "seed": (0, 2**63 - 1, True), "eval_interval": (0, math.inf, False),
            "dynamics_interval": (0, math.inf, False), "checkpoint_interval": (0, math.inf, False),
            "dynamics_sample_neurons": (0, math.inf, False),
        }
        for name, (low, high, high_included) in ranges.items():
            value = getattr(self, name)
            if value < low or value > high or (value == high and not high_included):
                where = "lr" if name == "min_lr" else ("∞" if high == math.inf else str(high))
                raise UserError(f"{name}={value} must be in [{low}, {where}{']' if high_included else ')'}")
        # Positive: 0 would divide by zero (log windows) or freeze the schedule (lr_power 0 is
        # constant, a negative power makes a cosine lr grow far above its peak).
        for name in ("train_log_interval", "lr_power", "imbalance_factor", "onecycle_div_factor",
                     "onecycle_final_div_factor"):
            if not getattr(self, name) > 0:
                raise UserError(f"{name}={getattr(self, name)} must be positive")
        # A warmup longer than the run is allowed: the lr then rises linearly throughout, a
        # well-defined schedule that short test versions of the paper's recipes rely on.
        for name, limit in (("warmup_steps", MAX_STEPS), ("warmup_epochs", MAX_EPOCHS)):
            if getattr(self, name) > limit:
                raise UserError(f"{name}={getattr(self, name)} is longer than any run can be ({limit:,})")
        choices = {
            "optimizer": ("adamw", "adam-l2", "sgdm", "lion"),
            "schedule": ("cosine", "constant", "onecycle"),
            "precision": ("fp32", "bf16", "fp16"),
            "imbalance_mode": ("slow", "split"),
            "weight_decay_on": ("matrices", "linear"),
            "eval_split": ("val", "test"),
            "warmup_style": ("timm", "nanogpt"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        self._drop_no_op_values()  # after validation: an invalid value is an error even where it is a no-op

    def _drop_no_op_values(self) -> None:
        """Put later fields that change nothing here at their default (see _CHANGES_NOTHING)."""
        for name, changes_nothing in _CHANGES_NOTHING.items():
            if changes_nothing(self):
                object.__setattr__(self, name, _default(name))

    # --- identity -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def canonical_json(self) -> str:
        """Sorted keys, no whitespace, floats as repr: the same bytes on every machine.

        Holds every field of the first release, and each field added since only
        where it differs from its default (see FIRST_RELEASE_FIELDS).
        """
        values = {name: value for name, value in self.to_dict().items()
                  if name in FIRST_RELEASE_FIELDS or value != _default(name)}
        return json.dumps(values, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @property
    def run_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]

    @property
    def eta_lambda(self) -> float:
        return self.lr * self.weight_decay

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown RunConfig field(s): {', '.join(unknown)}; valid fields: {', '.join(sorted(known))}")
        return cls(**{name: _coerce(name, value) for name, value in values.items()})

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:  # ValueError: not JSON, not UTF-8
            raise UserError(f"cannot read run config {path}: {error}") from None
        if not isinstance(values, dict):
            raise UserError(f"run config {path} holds a JSON {type(values).__name__}, not an object of "
                            "RunConfig fields; give a run's config.json")
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> "RunConfig":
        return RunConfig.from_dict({**self.to_dict(), **changes})

    def with_overrides(self, assignments: list[str]) -> "RunConfig":
        """Apply `key=value` strings from the command line (values parsed as JSON when they can be)."""
        return self.replace(**parse_assignments(assignments))


_FIELD_TYPES = typing.get_type_hints(RunConfig)

# The run_id rule. The fields of rotsweep 0.1.0 are always part of the hashed JSON,
# as they were then. A field added later is hashed only when it differs from its
# default, and its default must reproduce what runs computed before it existed:
# then every run_id written by an earlier version stays valid, and a relaunch
# after an upgrade finds its finished runs. A fix that changes what some runs
# compute is a new field whose non-default value those runs take, so exactly
# their ids change. tests/test_run_ids.py pins ids of the first release.
FIRST_RELEASE_FIELDS = frozenset({
    "model", "tiny", "weight_standardization", "gain", "model_options",
    "dataset", "dataset_options", "val_split", "block_size", "label_smoothing",
    "optimizer", "lr", "weight_decay", "beta1", "beta2", "momentum", "eps",
    "rotational", "rv_per_neuron", "rv_zero_mean", "rv_beta", "rv_eta_r_from",
    "imbalance_portion", "imbalance_factor", "imbalance_mode",
    "schedule", "lr_power", "min_lr", "warmup_steps", "warmup_epochs", "warmup_start_lr",
    "onecycle_pct_start", "onecycle_div_factor", "onecycle_final_div_factor",
    "steps", "epochs", "batch_size", "accumulation", "grad_clip",
    "precision", "compile", "channels_last", "seed",
    "train_log_interval", "eval_interval", "eval_batches", "dynamics_interval",
    "dynamics_sample_neurons", "checkpoint_interval",
})


# Later fields whose value changes nothing in some configurations: there a RunConfig holds
# their default instead (see RunConfig._drop_no_op_values), so a recipe that sets them keeps
# the ids of the runs they do not change.
_CHANGES_NOTHING = {
    "data_seed": lambda config: config.data_seed == config.seed,  # None means the run seed
    "warmup_style": lambda config: config.warmup_steps == 0 and config.warmup_epochs == 0,  # no warmup
}


def _default(name: str) -> Any:
    field_ = _FIELDS[name]
    return field_.default_factory() if field_.default is dataclasses.MISSING else field_.default


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Check a value against the field's annotation; ints are accepted where floats are expected."""
    expected = _FIELD_TYPES[name]
    allowed = typing.get_args(expected) or (expected,)
    if value is None and type(None) in allowed:
        return None
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if any(isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in allowed if t is not type(None)):
        return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise UserError(f"RunConfig field {name!r} expects {names}, got {value!r}")


def field_value(name: str, value: Any) -> Any:
    """`value` as RunConfig field `name` holds it (an int where a float is expected becomes a float).

    A UserError names the field and the expected type when the value has the wrong
    type; `name` must be a field (see FIELD_NAMES).
    """
    return _coerce(name, value)


FIELD_NAMES = tuple(_FIELDS)


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """Parse ["lr=0.1", "model=resnet18", "tiny=true"] into a dict; a malformed item is a UserError."""
    values: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"malformed --set {item!r}: write key=value, e.g. --set lr=0.1")
        values[key] = _parse_value(raw.strip())
    return values


def _parse_value(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw  # a bare string such as resnet18
