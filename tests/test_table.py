"""`rotsweep table` (issue 12, point 4) on a real zero-shot tiny sweep, launched locally with short
runs and two seeds, gathered, and checked against pandas computed here from runs.parquet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rotsweep.analysis import figures, table

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["--set", "steps=6", "--set", "eval_interval=3", "--set", "eval_batches=1", "--set", "warmup_steps=2",
         "--set", "checkpoint_interval=1000", "--set", "dynamics_interval=3"]


def rotsweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rotsweep.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_until_stopped(sweep: Path, timeout: float = 900.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = json.loads(rotsweep("status", sweep, "--json").stdout)
        states = [run["state"] for run in status["runs"]] if "runs" in status else []
        if states and all(state in ("done", "diverged", "failed") for state in states):
            return status
        assert time.monotonic() < deadline, f"sweep still running: {status}"
        time.sleep(3)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("table") / "zero-shot-gpt2-tiny"
    result = rotsweep("launch", "zero-shot", "--model", "gpt2", "--scale", "tiny", "--executor", "local",
                      "--out", directory, "--seeds", "0", "--seeds", "1", "--max-parallel", "2", *SHORT)
    assert result.returncode == 0, result.stderr
    wait_until_stopped(directory)
    result = rotsweep("gather", directory)
    assert result.returncode == 0, result.stderr
    return directory


def test_zero_shot_table_is_mean_and_std_over_seeds(sweep):
    runs = pd.read_parquet(sweep / "results" / "runs.parquet")
    assert (runs["status"] == "done").all() and runs["seed"].nunique() == 2
    # Independently: the baseline is the run without RV, the zero-shot RV shares its λ.
    expected = {}
    for rotational, group in runs.groupby("rotational"):
        values = group["final_val_loss"].to_numpy(float)
        expected["RV zero-shot" if rotational else "baseline"] = (values.mean(), values.std(ddof=1), len(values))

    result = rotsweep("table", sweep, "--format", "json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    (row,) = printed["rows"]
    assert (row["dataset"], row["model"], row["optimizer"]) == ("synthetic-text", "gpt2", "adamw")
    assert row["RV few-shot"] is None
    for method, (mean, std, seeds) in expected.items():
        assert row[method]["seeds"] == seeds == 2
        assert row[method]["mean"] == pytest.approx(mean, rel=1e-12)
        assert row[method]["std"] == pytest.approx(std, rel=1e-9)
        assert "paper" not in row[method]  # synthetic data reproduces no published value
    better = min(expected, key=lambda method: expected[method][0])
    assert row["best_method"] == better

    markdown = rotsweep("table", sweep)
    assert markdown.returncode == 0, markdown.stderr
    for method, (mean, std, seeds) in expected.items():
        assert f"{mean:.3f} ± {std:.3f} ({seeds})" in markdown.stdout
    assert "| dataset | model | optimizer | batch | baseline | RV zero-shot | RV few-shot |" in markdown.stdout


def test_published_values_stand_beside_the_paper_recipe(sweep):
    # The same runs relabelled as the paper's OpenWebText recipe (Table 2, 480×1024 tokens per step).
    runs = figures.load_runs(sweep).assign(dataset="openwebtext", batch_size=12, accumulation=40)
    printed = table.methods_table(runs, figures.METRICS["val_loss"])
    (row,) = printed.rows
    assert row["baseline"]["paper"] == "3.18±0.02" and row["RV zero-shot"]["paper"] == "3.18±0.01"
    assert "Table 2" in row["baseline"]["paper_source"] and "OpenWebText" in row["baseline"]["paper_source"]
    # Another metric than the paper's column: no published value beside it.
    other = table.methods_table(runs, figures.METRICS["train_loss"])
    assert "paper" not in other.rows[0]["baseline"]
    latex = table.render(printed, "latex")
    assert r"\toprule" in latex and r"$\pm$" in latex and "paper 3.18" in latex


def test_settings_table_by_field_and_csv(sweep):
    runs = pd.read_parquet(sweep / "results" / "runs.parquet")
    result = rotsweep("table", sweep, "--by", "seed", "--metric", "val_loss", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert len(rows) == len(runs)  # variant × seed: one run each
    for row in rows:
        run = runs[(runs["rotational"] == ("RV" in row["variant"])) & (runs["seed"] == row["seed"])]
        assert row["final"]["mean"] == pytest.approx(float(run["final_val_loss"].iloc[0]), rel=1e-12)
        assert row["best"]["mean"] == pytest.approx(float(run["best_val_loss"].iloc[0]), rel=1e-12)
        assert row["final"]["std"] is None
    for variant in {row["variant"] for row in rows}:
        mine = [row for row in rows if row["variant"] == variant]
        marked = [row for row in mine if row["best_setting"]]
        assert marked == [min(mine, key=lambda row: row["final"]["mean"])]
    csv = rotsweep("table", sweep, "--by", "seed", "--format", "csv")
    parsed = pd.read_csv(pd.io.common.StringIO(csv.stdout))
    assert list(parsed.columns[:2]) == ["variant", "seed"] and len(parsed) == len(runs)
    assert np.isin(["AdamW", "RV-AdamW"], parsed["variant"].map(lambda v: v.split(",")[0])).all()


def test_bad_group_field_is_one_line_error(sweep):
    result = rotsweep("table", sweep, "--by", "learning_rate")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "learning_rate" in result.stderr and "lr" in result.stderr


def test_cli_formats_are_the_librarys():
    from rotsweep import cli

    assert [choice.value for choice in cli.TableFormat] == list(table.FORMATS)
