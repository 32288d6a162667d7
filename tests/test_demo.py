"""The reduced demo end to end on the local executor, and running it again."""

from __future__ import annotations

import json
import math
import re
import time

import pytest

from rotsweep import launch
from rotsweep.demo import (DOES_NOT_SHOW, QUICK_EXPERIMENTS, QUICK_OVERRIDES, RANDOM_WALKS, SHOWS, finding_randomwalk,
                           run_demo, sweep_dir, walks_dir)
from rotsweep.errors import UserError

FINDINGS = {"randomwalk", "layer_spread", "no_transient", "warmup", "weight_standardization"}


def numbers_in(value) -> list[float]:
    """Every finite number in a JSON value."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers_in(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers_in(v)]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return [float(value)]
    return []


def walk(eta_r_ratio: float, norm_ratio: float) -> dict:
    return {"eta_r_measured": 0.01 * eta_r_ratio, "eta_r_predicted": 0.01, "norm_measured": 2.0 * norm_ratio,
            "norm_predicted": 2.0, "steps": 100}


def test_random_walk_verdict_is_five_percent_of_table_1():
    assert finding_randomwalk({"adamw": walk(1.04, 0.96), "sgdm": walk(0.97, 1.0)}).verdict == SHOWS
    off = finding_randomwalk({"adamw": walk(1.04, 0.96), "sgdm": walk(1.0, 1.06)})
    assert off.verdict == DOES_NOT_SHOW
    assert off.numbers["within_5_percent"] == {"adamw": True, "sgdm": False}
    assert off.numbers["ratios"]["sgdm"]["norm"] == pytest.approx(1.06)


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="executor"):
        run_demo(tmp_path, executor="cloud")
    with pytest.raises(UserError, match="max-parallel"):
        run_demo(tmp_path, max_parallel=0)


def test_quick_demo_end_to_end_then_again_submits_nothing(tmp_path):
    first = run_demo(tmp_path, quick=True, max_parallel=2, progress=False)
    total_runs = sum(len(launch.make_plan(experiment, model, scale="tiny", out=sweep_dir(tmp_path, experiment, model, True),
                                          overrides=QUICK_OVERRIDES).runs) for experiment, model in QUICK_EXPERIMENTS)
    assert first.submitted == total_runs
    for experiment, model in QUICK_EXPERIMENTS:
        counts = launch.sweep_status(sweep_dir(tmp_path, experiment, model, True))["counts"]
        assert set(counts) <= {"done", "diverged"}, (experiment, counts)

    # The report links every figure it names, and they exist: Figure 9 and one per sweep at least.
    report = (tmp_path / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert all((tmp_path / link).is_file() for link in links), links
    assert (walks_dir(tmp_path, True) / "figures" / "randomwalk.png").relative_to(tmp_path).as_posix() in links
    for experiment, model in QUICK_EXPERIMENTS:
        prefix = sweep_dir(tmp_path, experiment, model, True).relative_to(tmp_path).as_posix()
        assert any(link.startswith(prefix + "/figures/") for link in links), experiment
    assert "Wall time" in report

    # Every finding: the paper's claim, numbers, a verdict, and the verdict in the report.
    findings = json.loads((tmp_path / "findings.json").read_text())["findings"]
    assert set(findings) == FINDINGS
    for key, finding in findings.items():
        assert finding["verdict"] in (SHOWS, DOES_NOT_SHOW), key
        assert numbers_in(finding["numbers"]), key
        assert finding["paper"] in report and finding["measured"] in report
    # The random-walk verdict agrees with the walks' own files.
    ratios = [json.loads((walks_dir(tmp_path, True) / name / "randomwalk.json").read_text()) for name in RANDOM_WALKS]
    within = all(abs(r[f"{k}_measured"] / r[f"{k}_predicted"] - 1) <= 0.05 for r in ratios for k in ("eta_r", "norm"))
    assert findings["randomwalk"]["verdict"] == (SHOWS if within else DOES_NOT_SHOW)

    # Again: nothing is submitted or simulated again, and it takes a fraction of the first time.
    walk_files = {path: path.stat().st_mtime_ns for path in walks_dir(tmp_path, True).glob("*/randomwalk.json")}
    start = time.perf_counter()
    second = run_demo(tmp_path, quick=True, max_parallel=2, progress=False)
    again_s = time.perf_counter() - start
    assert second.submitted == 0
    assert {path: path.stat().st_mtime_ns for path in walk_files} == walk_files
    assert again_s < first.wall_s / 2, (again_s, first.wall_s)
    assert json.loads((tmp_path / "findings.json").read_text())["findings"].keys() == findings.keys()
