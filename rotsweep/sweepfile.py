"""Sweep files: a researcher's own grid, written in TOML, read into the experiments' vocabulary.

A sweep file describes one sweep the way rotsweep.experiments describes the
paper's: a base configuration, grid points over it, default seeds. It parses
into the same Axis / Point / Sweep, so launching, relaunching, status and
gather treat it exactly like a built-in experiment, and `rotsweep experiments
NAME --toml` prints every built-in as such a file (`to_toml`), which loads
back to the built-in's runs:

    name = "my-eta-lambda"             # the sweep directory is sweeps/NAME-MODEL-SCALE
    description = "AdamW vs RV-AdamW along eta*lambda = 5e-3"
    preset = "tiny-resnet20-adamw"     # optional: a named preset as the base (`rotsweep presets`)
    seeds = [0]

    [base]                             # RunConfig fields over the preset, for every run
    steps = 200
    eta_lambda = 5e-3                  # derived: weight_decay = 5e-3 / lr in each run

    [axes]                             # a product, the last axis varying fastest
    optimizer = [                      # named variants: a label and the fields it sets
      {label = "AdamW", optimizer = "adamw"},
      {label = "RV-AdamW", optimizer = "adamw", rotational = true},
    ]
    lr = {logspace = [1e-4, 1, 5]}     # 1e-4, 1e-3, 1e-2, 0.1, 1

An axis is one of:
    FIELD = [v1, v2, ...]                      the values of one RunConfig field
    FIELD = {logspace = [start, stop, n]}      n values from start to stop, evenly spaced in log
    FIELD = {linspace = [start, stop, n]}      n values evenly spaced (both rounded to 12 digits)
    NAME = [{label = ..., FIELD = ...}, ...]   named variants, each setting any fields
    NAME = {zip = {FIELD = [...], FIELD = [...]}}  fields moving together, one label each
Two derived quantities of the paper stand for the weight decay, in [base], a
grid's `set` or as an axis:
    eta_lambda    λ = eta_lambda / η: a line of constant η·λ, so of constant η̂_r for AdamW (Figure 4)
    eta_r         the λ that gives this equilibrium rotation η̂_r (Table 1) at each run's lr and
                  optimizer hyperparameters (AdamW, SGDM, Lion; not Adam+ℓ2, whose η̂_r depends on
                  the gradients)
Where a grid is not one product, [[grid]] blocks (each with `axes`, and optionally
`set`, fields for that block only, and `seeds`) are concatenated instead of [axes].
Scale blocks [paper] and [tiny] may each hold preset, base, seeds, axes, grid and
sources: for that scale they replace the top-level values (base is merged field by
field). A file with scale blocks has only those scales. A field that may be None
takes the string "none" (TOML has no null).

Every mistake is one UserError naming the file, the key and the fix, raised
while the file is read: before anything is written or submitted.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from pathlib import Path
from typing import Any

from rotsweep import theory
from rotsweep.config import FIELD_NAMES, RunConfig, field_value
from rotsweep.errors import UserError
from rotsweep.experiments import (
    SCALES,
    Axis,
    Experiment,
    Point,
    Sweep,
    weight_decay_at_eta_lambda,
    product,
)
from rotsweep.presets import PRESETS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SWEEP_KEYS = ("preset", "base", "seeds", "axes", "grid", "sources")
TOP_KEYS = ("name", "description", "scale", *SWEEP_KEYS, *SCALES)
GRID_KEYS = ("set", "axes", "seeds")
RANGES = ("logspace", "linspace")
# Quantities of the paper that a file may give instead of the weight decay itself.
DERIVED = ("eta_lambda", "eta_r")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FIELD_TYPES = typing.get_type_hints(RunConfig)
_DEFAULTS = {f.name: (f.default_factory() if f.default is dataclasses.MISSING else f.default)
             for f in dataclasses.fields(RunConfig)}


@dataclasses.dataclass(frozen=True)
class SweepFile:
    """A parsed sweep file: its name and, per scale it defines, the Sweep."""

    name: str
    description: str
    origin: str  # the path errors name
    text: str  # the file's content, recorded in the sweep directory (so later commands need no file)
    sweeps: dict[str, Sweep]
    default_scale: str

    def sweep(self, scale: str | None = None) -> Sweep:
        scale = scale or self.default_scale
        if scale not in SCALES:
            raise UserError(f"unknown scale {scale!r}; choose one of: {', '.join(SCALES)}")
        if scale not in self.sweeps:
            raise UserError(f"{self.origin} defines no {scale}-scale sweep (it has [{'], ['.join(self.sweeps)}]); "
                            f"add a [{scale}] block or choose scale {self.default_scale}")
        return self.sweeps[scale]

    def model(self, scale: str | None = None) -> str:
        """The model the runs train (several joined by "+"): names the sweep directory."""
        return "+".join(sorted({config.model for config in self.sweep(scale).runs()}))


def load(path: str | Path) -> SweepFile:
    """Read and check a sweep file; every mistake is a one-line UserError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"no sweep file {path}; check the path (or list the built-ins: rotsweep experiments)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read sweep file {path}: {error}") from None
    return parse(text, origin=str(path))


def parse(text: str, origin: str = "<sweep file>", grid: dict[str, Any] | None = None) -> SweepFile:
    """Parse the text of a sweep file (from a file, or as recorded in a sweep's manifest).

    grid: {axis name: axis} (as the file would write it) that replaces the axis of
    that name in every product of the file, or is added to every product.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{origin}: not valid TOML: {error}; fix the syntax there") from None
    if grid:
        _set_axes(data, grid)
    _known_keys(data, TOP_KEYS, origin, "")
    name = data.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise UserError(f"{origin}: name: {'missing' if name is None else f'{name!r} is not a valid name'}; "
                        'write e.g. name = "my-sweep" (letters, digits, ".", "_", "-")')
    description = data.get("description", "")
    if not isinstance(description, str):
        raise UserError(f"{origin}: description: expected a string, got {description!r}")

    shared = {key: data[key] for key in SWEEP_KEYS if key in data}
    blocks = [scale for scale in SCALES if scale in data]
    sweeps: dict[str, Sweep] = {}
    if not blocks:
        sweep = _sweep(shared, origin, "")
        sweeps = {scale: sweep for scale in SCALES}
    for scale in blocks:
        block = _table(data[scale], origin, scale)
        _known_keys(block, SWEEP_KEYS, origin, f"{scale}.")
        merged = {**shared, **block}
        if "base" in shared and "base" in block:
            merged["base"] = {**_table(shared["base"], origin, "base"), **_table(block["base"], origin, f"{scale}.base")}
        sweeps[scale] = _sweep(merged, origin, f"{scale}.")

    scale = data.get("scale", blocks[0] if len(blocks) == 1 else "paper")
    if scale not in sweeps:
        raise UserError(f"{origin}: scale: {scale!r} is not a scale the file defines; choose one of: {', '.join(sweeps)}")
    for which, sweep in sweeps.items():
        try:
            sweep.runs()  # every run must be a valid RunConfig before anything is written
        except UserError as error:
            raise UserError(f"{origin}: [{which}] runs: {error}") from None
    return SweepFile(name, description, origin, text, sweeps, scale)


def builtin(name: str, model: str, grid: dict[str, Any] | None = None) -> SweepFile:
    """A built-in experiment's sweeps for one model as a sweep file, with `grid`'s axes set."""
    from rotsweep.experiments import get_experiment

    experiment = get_experiment(name)
    experiment.sweep(model)  # a model the experiment does not accept: its own error
    return parse(to_toml(experiment, model), origin=f"the built-in experiment {name}", grid=grid)


def _set_axes(data: dict, grid: dict[str, Any]) -> None:
    """Put each of `grid`'s axes into every product of the file (replacing one of the same name)."""
    tables = [data] + [data[scale] for scale in SCALES if isinstance(data.get(scale), dict)]
    placed = False
    for table in tables:
        if isinstance(table.get("grid"), list):
            products = [block.setdefault("axes", {}) for block in table["grid"] if isinstance(block, dict)]
        elif isinstance(table.get("axes"), dict):
            products = [table["axes"]]
        else:
            continue
        for axes in products:
            axes.update(grid)
        placed = True
    if not placed:
        data["axes"] = dict(grid)


# --- Reading one sweep ---------------------------------------------------------------------


def _sweep(values: dict, origin: str, prefix: str) -> Sweep:
    base: dict = {}
    preset = values.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise UserError(f"{origin}: {prefix}preset: unknown preset {preset!r}{_did_you_mean(preset, PRESETS)}; "
                            "`rotsweep presets` lists them")
        base.update(PRESETS[preset])
    fields, base_derived = _settings(_table(values.get("base", {}), origin, f"{prefix}base"), origin, f"{prefix}base")
    base.update(fields)
    seeds = _seeds(values.get("seeds", [0]), origin, f"{prefix}seeds")
    sources = _table(values.get("sources", {}), origin, f"{prefix}sources")
    for key, text in sources.items():
        if not isinstance(text, str):
            raise UserError(f"{origin}: {prefix}sources.{key}: expected a string saying where the value comes from")

    if "axes" in values and "grid" in values:
        raise UserError(f"{origin}: {prefix}axes and {prefix}grid: give one product as [axes] or several as "
                        "[[grid]] blocks, not both")
    if "grid" in values:
        grids = values["grid"]
        if not isinstance(grids, list) or not grids or not all(isinstance(g, dict) for g in grids):
            raise UserError(f"{origin}: {prefix}grid: expected [[grid]] blocks (an array of tables), each with axes")
    else:
        grids = [{"axes": values.get("axes", {})}]

    points: list[Point] = []
    for number, grid in enumerate(grids, 1):
        where = f"{prefix}grid[{number}]" if "grid" in values else prefix.rstrip(".")
        points += _grid(grid, base, base_derived, origin, where)
    return Sweep(base=base, points=points, seeds=seeds, sources=dict(sources))


def _grid(grid: dict, base: dict, base_derived: dict, origin: str, where: str) -> list[Point]:
    """The points of one product: its axes over the block's `set`, derived weight decays resolved."""
    dot = f"{where}." if where else ""
    _known_keys(grid, GRID_KEYS, origin, dot)
    fixed, fixed_derived = _settings(_table(grid.get("set", {}), origin, f"{dot}set"), origin, f"{dot}set")
    axes_table = _table(grid.get("axes", {}), origin, f"{dot}axes")
    axes = [_axis(name, spec, origin, f"{dot}axes.{name}") for name, spec in axes_table.items()]
    seeds = _seeds(grid["seeds"], origin, f"{dot}seeds") if "seeds" in grid else None

    # Who sets what: two axes may not set one field, and a derived weight decay excludes a given one.
    setters: dict[str, str] = {}
    for a in axes:
        for name in sorted({_sets(key) for changes in a.changes for key in changes}):
            if name in setters:
                raise UserError(f"{origin}: {dot}axes: axes {setters[name]!r} and {a.name!r} both set {name!r}; "
                                "let one axis set it (zip them if they move together)")
            setters[name] = a.name
    derived_keys = {*base_derived, *fixed_derived, *(k for a in axes for ch in a.changes for k in ch if k in DERIVED)}
    if len(derived_keys) > 1:
        raise UserError(f"{origin}: {where or 'file'}: eta_lambda and eta_r both give the weight decay; keep one")
    # A weight decay in [base] (or the preset's) is the default that a derived one replaces.
    given = [f"{dot}set"] if "weight_decay" in fixed else []
    given += [f"{dot}axes.{a.name}" for a in axes if any("weight_decay" in ch for ch in a.changes)]
    if derived_keys and given:
        raise UserError(f"{origin}: {given[0]}: weight_decay is also given by {derived_keys.pop()}; "
                        "remove one of the two")

    points = []
    for point in product(*axes):
        changes = {**fixed, **fixed_derived, **point.changes}
        derived = {**base_derived, **{k: v for k, v in changes.items() if k in DERIVED}}
        changes = {k: v for k, v in changes.items() if k not in DERIVED}
        if derived:
            changes["weight_decay"] = _derived_weight_decay(derived, {**base, **changes}, origin, where)
        points.append(Point(point.labels, changes, seeds, point.grid))
    return points


def _derived_weight_decay(derived: dict, config: dict, origin: str, where: str) -> float:
    (name, value), = derived.items()
    setting = {**_DEFAULTS, **config}
    if name == "eta_lambda":
        return weight_decay_at_eta_lambda(value, setting["lr"])
    try:
        return theory.weight_decay_for_rotation(setting["optimizer"], setting["lr"], value, beta1=setting["beta1"],
                                                beta2=setting["beta2"], momentum=setting["momentum"])
    except UserError as error:
        raise UserError(f"{origin}: {where or 'file'}: eta_r: {error}") from None


def _axis(name: str, spec: Any, origin: str, where: str) -> Axis:
    if isinstance(spec, list):
        if not spec:
            raise UserError(f"{origin}: {where}: the axis is empty; give at least one value")
        if all(isinstance(item, dict) and "label" in item for item in spec):
            return _variants(name, spec, origin, where)
        if any(isinstance(item, dict) for item in spec) and _field_type(name) is not dict:
            raise UserError(f"{origin}: {where}: every variant needs a label; write "
                            '{label = "NAME", field = value, ...}')
        values = tuple(_value(name, item, origin, where) for item in spec)
        return Axis(name, values, tuple({name: value} for value in values))
    if isinstance(spec, dict):
        kinds = [key for key in (*RANGES, "zip") if key in spec]
        if len(kinds) != 1 or len(spec) != 1:
            raise UserError(f"{origin}: {where}: an axis table holds exactly one of logspace, linspace or zip, "
                            f"got {', '.join(spec) or 'nothing'}; e.g. {name} = {{logspace = [1e-4, 1, 5]}}")
        if kinds[0] == "zip":
            return _zipped(name, spec["zip"], origin, where)
        values = tuple(_value(name, value, origin, where) for value in _range(kinds[0], spec[kinds[0]], origin, where))
        return Axis(name, values, tuple({name: value} for value in values))
    raise UserError(f"{origin}: {where}: an axis needs a list of values, got {spec!r}; "
                    f"write {name} = [{_toml(spec)}, ...], or put a fixed value in [base]")


def _variants(name: str, items: list[dict], origin: str, where: str) -> Axis:
    labels, changes = [], []
    for item in items:
        label = item["label"]
        if not isinstance(label, (str, int, float)) or label in labels:
            problem = "repeats another" if label in labels else "must be a string or a number"
            raise UserError(f"{origin}: {where}: variant label {label!r} {problem}; give each variant its own label")
        fields, derived = _settings({k: v for k, v in item.items() if k != "label"}, origin, f"{where}[{label}]")
        labels.append(label)
        changes.append({**fields, **derived})
    return Axis(name, tuple(labels), tuple(changes))


def _zipped(name: str, columns: Any, origin: str, where: str) -> Axis:
    columns = _table(columns, origin, f"{where}.zip")
    lengths = {len(values) if isinstance(values, list) else -1 for values in columns.values()}
    if not columns or lengths != {next(iter(lengths))} or -1 in lengths or 0 in lengths:
        raise UserError(f"{origin}: {where}.zip: expected fields with non-empty lists of one length, "
                        f"e.g. zip = {{lr = [0.1, 0.2], batch_size = [128, 256]}}")
    checked = {field: [_value(field, v, origin, f"{where}.zip.{field}") for v in values]
               for field, values in columns.items()}
    rows = tuple(dict(zip(checked, row)) for row in zip(*checked.values()))
    return Axis(name, tuple(tuple(row.values()) for row in rows), rows, labels=rows)


def _range(kind: str, spec: Any, origin: str, where: str) -> list[float]:
    ok = (isinstance(spec, list) and len(spec) == 3 and all(_is_number(v) for v in spec[:2])
          and isinstance(spec[2], int) and not isinstance(spec[2], bool) and spec[2] >= 1)
    if not ok or (kind == "logspace" and not (spec[0] > 0 and spec[1] > 0)):
        raise UserError(f"{origin}: {where}.{kind}: expected [start, stop, count] with count ≥ 1"
                        + (" and positive start and stop" if kind == "logspace" else "")
                        + f", e.g. {kind} = [1e-4, 1, 5]")
    start, stop, count = spec
    if count == 1:
        return [float(start)]
    if kind == "logspace":
        low, high = math.log10(start), math.log10(stop)
        values = [10 ** (low + (high - low) * i / (count - 1)) for i in range(count)]
    else:
        values = [start + (stop - start) * i / (count - 1) for i in range(count)]
    return [float(f"{value:.12g}") for value in values]  # 1e-4, not 9.999999999999999e-05


def _settings(values: dict, origin: str, where: str) -> tuple[dict, dict]:
    """Split a table into checked RunConfig fields and derived weight decays (eta_lambda, eta_r)."""
    fields, derived = {}, {}
    for name, value in values.items():
        if name in DERIVED:
            derived[name] = _value(name, value, origin, f"{where}.{name}")
        else:
            fields[name] = _value(name, value, origin, f"{where}.{name}")
    if len(derived) > 1 or (derived and "weight_decay" in fields):
        given = ", ".join([*(["weight_decay"] if "weight_decay" in fields else []), *derived])
        raise UserError(f"{origin}: {where}: {given} all give the weight decay; keep one")
    return fields, derived


def _value(name: str, value: Any, origin: str, where: str) -> Any:
    """A value of field `name` (or of a derived quantity), checked against the field's type."""
    if name in DERIVED:
        # η·λ = 0 is no weight decay; a rotation of 0 would need λ = 0 too, but says nothing a target should.
        if not _is_number(value) or not (value >= 0 if name == "eta_lambda" else value > 0):
            kind = "a number ≥ 0" if name == "eta_lambda" else "a positive number"
            raise UserError(f"{origin}: {where}: {name} must be {kind}, got {value!r}")
        return float(value)
    if name == "seed":
        raise UserError(f"{origin}: {where}: the seeds are not a field to set or sweep here; "
                        "list them in seeds = [0, 1, ...] (or on the command line)")
    if name not in FIELD_NAMES:
        raise UserError(f"{origin}: {where}: unknown RunConfig field {name!r}{_did_you_mean(name, FIELD_NAMES)}; "
                        "`rotsweep presets --json` shows every field (or name a variant axis: a list of "
                        '{label = "...", field = value} tables)')
    if value == "none" and type(None) in typing.get_args(_FIELD_TYPES[name]) and str not in typing.get_args(
            _FIELD_TYPES[name]):
        return None
    try:
        return field_value(name, value)
    except UserError as error:
        raise UserError(f"{origin}: {where}: {error}") from None


def _seeds(seeds: Any, origin: str, where: str) -> tuple[int, ...]:
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise UserError(f"{origin}: {where}: expected a non-empty list of integers, e.g. seeds = [0, 1, 2]")
    return tuple(seeds)


def _table(value: Any, origin: str, where: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{origin}: {where}: expected a table, got {value!r}")
    return value


def _known_keys(table: dict, allowed: tuple[str, ...], origin: str, prefix: str) -> None:
    for key in table:
        if key not in allowed:
            raise UserError(f"{origin}: {prefix}{key}: unknown key{_did_you_mean(key, allowed)}; "
                            f"allowed here: {', '.join(allowed)}")


def _sets(key: str) -> str:
    """The RunConfig field a changes key sets: derived quantities set the weight decay."""
    return "weight_decay" if key in DERIVED else key


def _field_type(name: str) -> Any:
    return _FIELD_TYPES.get(name)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- Writing a built-in experiment as a file ------------------------------------------------


def to_toml(experiment: Experiment, model: str) -> str:
    """One model of a built-in experiment as a sweep file that loads back to the same runs."""
    lines = [
        f"# The built-in experiment {experiment.name} (paper: "
        f"{experiment.figures if experiment.figures[0].isalpha() else 'Figures ' + experiment.figures}), "
        f"model {model}.",
        "# Copy it, change it and launch it: rotsweep launch FILE.toml --scale tiny",
        f"name = {_toml(experiment.name)}",
        f"description = {_toml(experiment.description)}",
    ]
    for scale in SCALES:
        sweep = experiment.sweep(model, scale)
        lines += ["", f"[{scale}]", f"seeds = {_toml(list(sweep.seeds))}", "", f"[{scale}.base]"]
        lines += [f"{name} = {_toml(value)}" for name, value in sweep.base.items() if value != _DEFAULTS[name]]
        if sweep.sources:
            lines += ["", f"[{scale}.sources]"]
            lines += [f"{name} = {_toml(text)}" for name, text in sweep.sources.items()]
        for block in _blocks(sweep.points):
            lines += ["", f"[[{scale}.grid]]"]
            lines += _block_lines(scale, block)
    return "\n".join(lines) + "\n"


def _blocks(points: list[Point]) -> list[dict]:
    """Group points into the products they were made by; a point made by hand is a block of its own."""
    blocks, index = [], 0
    while index < len(points):
        point = points[index]
        if point.grid is not None:
            size = math.prod(len(a.values) for a in point.grid)
            group = points[index:index + size]
            made = product(*point.grid)
            if (len(group) == size and all(p.seeds == point.seeds for p in group)
                    and [(p.labels, p.changes) for p in group] == [(p.labels, p.changes) for p in made]):
                blocks.append({"axes": point.grid, "seeds": point.seeds, "set": {}})
                index += size
                continue
        # By hand: the point's labels as single-valued axes that set nothing, its changes as the block's set.
        labels = tuple(Axis(name, (value,), ({},)) for name, value in point.labels.items())
        blocks.append({"axes": labels, "seeds": point.seeds, "set": point.changes})
        index += 1
    return blocks


def _block_lines(scale: str, block: dict) -> list[str]:
    lines = [f"seeds = {_toml(list(block['seeds']))}"] if block["seeds"] else []
    fixed = dict(block["set"])
    axis_lines = []
    for a in block["axes"]:
        if a.eta_lambda is not None:
            fixed["eta_lambda"] = a.eta_lambda
            axis_lines.append(f"{a.name} = {_toml(list(a.values))}")
        elif a.labels is None and all(ch == {a.name: v} for v, ch in zip(a.values, a.changes)):
            axis_lines.append(f"{a.name} = {_toml(list(a.values))}")
        elif a.labels is not None and list(a.labels) == list(a.changes):
            columns = {name: [row[name] for row in a.labels] for name in a.labels[0]}
            axis_lines.append(f"{a.name} = {{zip = {_toml(columns)}}}")
        else:
            variants = [_toml({"label": value, **changes}) for value, changes in zip(a.values, a.changes)]
            one_line = len(variants) == 1
            axis_lines.append(f"{a.name} = [{variants[0]}]" if one_line
                              else f"{a.name} = [\n" + "".join(f"  {v},\n" for v in variants) + "]")
    if fixed:
        lines += [f"[{scale}.grid.set]"] + [f"{name} = {_toml(value)}" for name, value in fixed.items()]
    if axis_lines:
        lines += [f"[{scale}.grid.axes]"] + axis_lines
    return lines


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml(value: Any) -> str:
    """A TOML value; floats as repr, so they read back to the same float (and the same run_id)."""
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        keys = [key if _BARE_KEY.match(key) else _toml(key) for key in value]
        return "{" + ", ".join(f"{key} = {_toml(item)}" for key, item in zip(keys, value.values())) + "}"
    raise TypeError(f"no TOML form for {value!r}")
