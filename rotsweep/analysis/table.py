"""Tables of a sweep's final and best metrics: mean ± std over seeds, the best setting marked.

Read from SWEEP/results/runs.parquet only (written by `rotsweep gather`). Only finished runs
(status done) count, as in the figures (figures.summarize): a cell is the mean and the sample
standard deviation (ddof 1) over its finished seeds; a cell without any shows its state.

Two layouts:
- settings (any sweep): one row per variant (figures.add_variants) and value of the `by`
  fields (default: lr and weight_decay where they vary), with the final and the best value
  of the metric over training (runs.parquet's final_M, best_M). The best setting of each
  variant, by the mean final value, is marked.
- methods (the zero-shot experiment): the layout of the paper's Tables 2 and 3, one row per
  baseline recipe (dataset, model, optimizer, batch size) and a column per method: the
  baseline, its rotational variant (RV) at the baseline's hyperparameters (zero-shot), and the
  RV with a retuned λ (few-shot). Beside each cell stands the paper's published value where
  the sweep runs the paper's recipe (PUBLISHED: same dataset, model, optimizer, batch size and
  metric); tiny sweeps (synthetic data) reproduce none.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rotsweep.analysis import figures, results
from rotsweep.errors import UserError

FORMATS = ("md", "latex", "csv", "json")
BEST_MARK = "*"
METHODS = ("baseline", "RV zero-shot", "RV few-shot")
# A row of Tables 2 and 3: the recipe, as RunConfig values (batch = batch_size × accumulation).
RECIPE_FIELDS = ("dataset", "model", "optimizer", "batch")


@dataclass(frozen=True)
class Published:
    """A value of the paper's Tables 2 and 3, as printed (mean±std over three seeds, or one run)."""

    value: str
    source: str  # table and row


def _published_row(table: str, row: str, metric: str, baseline: str, zero_shot: str, few_shot: str | None) -> dict:
    values = dict(zip(METHODS, (baseline, zero_shot, few_shot)))
    return {"metric": metric, "cells": {method: Published(value, f"{table}, {row}")
                                        for method, value in values.items() if value is not None}}


# The paper's Tables 2 and 3, keyed by RECIPE_FIELDS. Metric: the rotsweep metric the column
# reports (the zero-shot runs evaluate on the test set, as the tables do). DeiT and the IWSLT
# transformer are not implemented, so their rows are absent.
PUBLISHED = {
    ("cifar10", "resnet20", "adamw", 128): _published_row(
        "Table 2", "CIFAR-10 ResNet-20 b128", "val_top1", "92.2±0.2", "92.4±0.3", None),
    ("cifar10", "resnet20", "adamw", 2048): _published_row(
        "Table 2", "CIFAR-10 ResNet-20 b2048", "val_top1", "91.5±0.3", "91.4±0.3", "92.2±0.3"),
    ("wikitext", "gpt2", "adamw", 165): _published_row(
        "Table 2", "Wikitext GPT2-124M 165×512", "val_perplexity", "19.6±0.1", "19.0±0.2", None),
    ("openwebtext", "gpt2", "adamw", 480): _published_row(
        "Table 2", "OpenWebText GPT2-124M 480×1024", "val_loss", "3.18±0.02", "3.18±0.01", None),
    ("cifar10", "resnet20", "sgdm", 128): _published_row(
        "Table 3", "CIFAR-10 ResNet-20 SGD b128", "val_top1", "92.7±0.1", "92.4±0.2", None),
    ("cifar10", "resnet20", "sgdm", 2048): _published_row(
        "Table 3", "CIFAR-10 ResNet-20 SGD b2048", "val_top1", "92.0±0.2", "92.0±0.3", None),
    ("cifar10", "resnet20", "lion", 128): _published_row(
        "Table 3", "CIFAR-10 ResNet-20 Lion b128", "val_top1", "92.1±0.2", "91.9±0.2", None),
    ("cifar10", "resnet20", "lion", 2048): _published_row(
        "Table 3", "CIFAR-10 ResNet-20 Lion b2048", "val_top1", "91.8±0.3", "91.5±0.3", "91.8±0.2"),
    ("imagenet", "resnet50", "sgdm", 256): _published_row(
        "Table 3", "Imagenet-1k ResNet-50 SGD b256", "val_top1", "77.4", "77.3", None),
}


@dataclass
class Table:
    """A table ready to print: its rows (one dict each, JSON-ready numbers) and the columns to show."""

    title: str
    columns: list[str]
    rows: list[dict]
    notes: list[str]
    digits: int  # decimals of the printed numbers (JSON keeps them unrounded)


# --- Cells -----------------------------------------------------------------------------------


def _cell(values: pd.Series) -> dict:
    """Mean, std (ddof 1; None for one seed) and count of the finite values: one table cell."""
    values = values[np.isfinite(values.to_numpy(float))].astype(float)
    count = len(values)
    return {"mean": float(values.mean()) if count else None,
            "std": float(values.std(ddof=1)) if count > 1 else None, "seeds": count}


def _text(cell: dict, digits: int) -> str:
    """"92.20 ± 0.31 (3)": mean ± std (seeds); one seed has no std; no finished seed prints "–"."""
    if not cell["seeds"]:
        return "–"
    if cell["std"] is None:
        return f"{cell['mean']:.{digits}f} (1)"
    return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f} ({cell['seeds']})"


def _digits(metric: figures.Metric) -> int:
    """Decimals as the paper prints them: accuracy (%) and perplexity 1, losses 2; one more here,
    so that tiny sweeps' small differences show."""
    return 2 if metric.name in ("val_top1", "val_perplexity") else 3


def _improves(value: float, than: float, metric: figures.Metric) -> bool:
    return value > than if metric.higher_is_better else value < than


def _finished(runs: pd.DataFrame) -> pd.Series:
    return runs["status"] == "done"


# --- Layouts ---------------------------------------------------------------------------------


def _default_by(runs: pd.DataFrame) -> list[str]:
    return [name for name in ("lr", "weight_decay") if runs[name].nunique() > 1]


def settings_table(runs: pd.DataFrame, metric: figures.Metric, by: list[str] | None = None) -> Table:
    """One row per variant × `by` values: final and best metric, mean ± std over finished seeds;
    the best setting of each variant (by the mean final value) marked."""
    by = _default_by(runs) if by is None else list(by)
    unknown = [name for name in by if name not in results.CONFIG_TYPES]
    if unknown:
        raise UserError(f"cannot group by {', '.join(unknown)}: not a RunConfig field; "
                        f"choose among {', '.join(results.CONFIG_TYPES)}")
    keys = ["variant", *dict.fromkeys(by)]
    best_column = "best_" + metric.name if "best_" + metric.name in runs.columns else None
    rows = []
    for values, group in runs.groupby(keys, sort=True):
        done = group[_finished(group)]
        row = dict(zip(keys, (value.item() if hasattr(value, "item") else value for value in values)))
        row["final"] = _cell(done[metric.column])
        row["best"] = _cell(done[best_column]) if best_column else None
        row["runs"] = len(group)
        row["statuses"] = dict(sorted(group["status"].value_counts().items()))
        rows.append(row)
    order = {variant: index for index, variant in enumerate(figures.variant_order(runs))}
    rows.sort(key=lambda row: order[row["variant"]])  # groupby sorted the values; variants in figure order
    for variant in order:
        scored = [row for row in rows if row["variant"] == variant and row["final"]["seeds"]]
        if scored:
            pick = max if metric.higher_is_better else min
            winner = pick(scored, key=lambda row: row["final"]["mean"])
            for row in rows:
                if row["variant"] == variant:
                    row["best_setting"] = row is winner
    for row in rows:
        row.setdefault("best_setting", False)
    columns = [*keys, f"final {metric.name}", *([f"best {metric.name}"] if best_column else []), "runs"]
    notes = [f"{metric.label}: mean ± std (finished seeds), {BEST_MARK} the best setting of each variant "
             f"by the mean final value"]
    return Table(f"{metric.name} by {', '.join(keys)}", columns, rows, notes, _digits(metric))


def method_of(runs: pd.DataFrame) -> pd.Series:
    """Each run's method in Tables 2 and 3: the baseline (weight decay), or its RV at the baseline's λ
    (zero-shot) or at another λ (few-shot). A recipe without a baseline run: its RVs are zero-shot."""
    recipe = runs[list(RECIPE_FIELDS)].astype(str).agg("|".join, axis=1)
    baseline_wd = runs.loc[~runs["rotational"]].groupby(recipe[~runs["rotational"]])["weight_decay"].first()
    own = recipe.map(baseline_wd)
    zero_shot = own.isna() | np.isclose(runs["weight_decay"], own.fillna(0).astype(float), rtol=1e-12, atol=0)
    return pd.Series(np.where(~runs["rotational"], METHODS[0], np.where(zero_shot, METHODS[1], METHODS[2])),
                     index=runs.index)


def methods_table(runs: pd.DataFrame, metric: figures.Metric) -> Table:
    """Tables 2 and 3: a row per recipe, mean ± std of the final metric per method, the paper's
    value beside it where the sweep runs the paper's recipe with the paper's metric."""
    runs = runs.assign(batch=runs["batch_size"] * runs["accumulation"])
    runs = runs.assign(method=method_of(runs))
    rows = []
    for recipe, group in runs.groupby(list(RECIPE_FIELDS), sort=True):
        recipe = tuple(value.item() if hasattr(value, "item") else value for value in recipe)
        published = PUBLISHED.get(recipe)
        paper = published["cells"] if published and published["metric"] == metric.name else {}
        row = dict(zip(RECIPE_FIELDS, recipe))
        better = None
        for method in METHODS:
            runs_of = group[group["method"] == method]
            cell = _cell(runs_of.loc[_finished(runs_of), metric.column]) if len(runs_of) else None
            if cell is not None and method in paper:
                cell["paper"] = paper[method].value
                cell["paper_source"] = paper[method].source
            row[method] = cell
            if cell and cell["seeds"] and (better is None or _improves(cell["mean"], row[better]["mean"], metric)):
                better = method  # a tie keeps the earlier method (the baseline first)
        row["best_method"] = better
        rows.append(row)
    notes = [f"{metric.label} (final value): mean ± std (finished seeds); {BEST_MARK} the best method of each row",
             "paper: the published value (Table 2: AdamW; Table 3: SGD and Lion) where this sweep runs that recipe"]
    return Table(f"{metric.name}: baseline vs rotational variant (Tables 2, 3)", [*RECIPE_FIELDS, *METHODS],
                 rows, notes, _digits(metric))


def build(sweep: str | os.PathLike, by: list[str] | None = None, metric: str | None = None) -> Table:
    """The sweep's table: the methods layout for the zero-shot experiment (unless `by` is given),
    else the settings layout."""
    runs = figures.load_runs(sweep)
    if runs.empty:
        raise UserError(f"{sweep} has no runs with a config in its results; run `rotsweep gather {sweep}` "
                        "after the runs have started")
    chosen = figures.pick_metric(runs, metric)
    if by is None and set(runs["experiment"].dropna()) == {"zero-shot"}:
        return methods_table(runs, chosen)
    return settings_table(runs, chosen, by)


# --- Rendering -------------------------------------------------------------------------------


def _shown(row: dict, column: str, digits: int) -> str:
    """A row's value in `column` as text: cells as mean ± std (paper value), marks on the best."""
    name = column.split(" ")[0]
    if column in METHODS:
        cell = row[column]
        if cell is None:
            return "n/a"
        text = _text(cell, digits) + (f" {BEST_MARK}" if row.get("best_method") == column else "")
        return text + (f" [paper {cell['paper']}]" if "paper" in cell else "")
    if name in ("final", "best"):
        cell = row[name]
        return _text(cell, digits) + (f" {BEST_MARK}" if name == "final" and row["best_setting"] else "")
    value = row[column]
    return figures._number(value) if isinstance(value, float) else str(value)


def _grid(table: Table, digits: int) -> list[list[str]]:
    return [[_shown(row, column, digits) for column in table.columns] for row in table.rows]


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                          ("±", r"$\pm$"), ("–", "--"), ("ℓ", r"$\ell$"), ("×", r"$\times$")):
        text = text.replace(char, escaped)
    return text


def render(table: Table, form: str) -> str:
    """The table as Markdown, LaTeX (booktabs), CSV or JSON (numbers unrounded)."""
    if form not in FORMATS:
        raise UserError(f"unknown table format {form!r}; choose one of {', '.join(FORMATS)}")
    if form == "json":
        return json.dumps({"title": table.title, "columns": table.columns, "rows": table.rows, "notes": table.notes},
                          indent=2, sort_keys=True, default=_json_default)
    grid = _grid(table, table.digits)
    if form == "csv":
        return pd.DataFrame(grid, columns=table.columns).to_csv(index=False).rstrip("\n")
    if form == "md":
        lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
        lines += ["| " + " | ".join(cells) + " |" for cells in grid]
        return "\n".join([f"**{table.title}**", "", *lines, "", *(f"_{note}_" for note in table.notes)])
    lines = [r"\begin{tabular}{" + "l" * len(table.columns) + "}", r"\toprule",
             " & ".join(_latex_escape(column) for column in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(cell) for cell in cells) + r" \\" for cells in grid]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join([f"% {table.title}", *(f"% {note}" for note in table.notes), *lines])


def _json_default(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def format_table(sweep: str | os.PathLike, by: list[str] | None = None, metric: str | None = None,
                 form: str = "md") -> str:
    """`rotsweep table`: build the table and render it (a bad format is refused before reading)."""
    if form not in FORMATS:
        raise UserError(f"unknown table format {form!r}; choose one of {', '.join(FORMATS)}")
    return render(build(sweep, by, metric), form)
