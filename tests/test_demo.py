"""The reduced demo end to end on the local executor, and running it again."""

from __future__ import annotations

import json
import math
import re
import time

import pytest

from rotsweep import launch
from rotsweep.demo import (FINDING_SEEDS, QUICK_EXPERIMENTS, QUICK_OVERRIDES, QUICK_SEEDS, RANDOM_WALK_TOLERANCE,
                           RANDOM_WALKS, VERDICTS, demo_sweeps, run_demo, sweep_dir, walk_dir, walks_dir)
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


def test_demo_sweeps_launch_the_findings_with_several_seeds(tmp_path):
    """The warmup and no-transient verdicts need at least three seeds (issue 9); every finding at least two."""
    sweeps = {sweep.experiment: sweep for sweep in demo_sweeps(tmp_path, quick=False)}
    assert len(sweeps["warmup"].seeds) >= 3 and len(sweeps["eta-lambda"].seeds) >= 3
    for experiment, seeds in FINDING_SEEDS.items():
        assert len(sweeps[experiment].plan().runs) == len(seeds) * len(launch.make_plan(
            experiment, sweeps[experiment].model, scale="tiny", out=tmp_path / "one", seeds=[0]).runs)
    assert sweeps["imbalance"].seeds is None  # figures only: the sweep's own seeds
    # The full demo runs the tiny sweeps as `rotsweep launch` does; the quick one shortens them.
    assert all(sweep.overrides == () for sweep in sweeps.values())
    quick = demo_sweeps(tmp_path, quick=True)
    assert all(run.config.steps == 60 and run.config.eval_batches == 4 for sweep in quick for run in sweep.plan().runs)


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="executor"):
        run_demo(tmp_path, executor="cloud")
    with pytest.raises(UserError, match="max-parallel"):
        run_demo(tmp_path, max_parallel=0)


def test_quick_demo_end_to_end_then_again_submits_nothing(tmp_path):
    first = run_demo(tmp_path, quick=True, max_parallel=2, progress=False)
    total_runs = sum(len(launch.make_plan(experiment, model, scale="tiny", out=sweep_dir(tmp_path, experiment, model, True),
                                          seeds=QUICK_SEEDS, overrides=QUICK_OVERRIDES).runs)
                     for experiment, model in QUICK_EXPERIMENTS)
    assert first.submitted == total_runs
    for experiment, model in QUICK_EXPERIMENTS:
        counts = launch.sweep_status(sweep_dir(tmp_path, experiment, model, True)).counts
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

    # Every finding: the paper's claim, numbers, a verdict from an effect measured on each seed, all in the report.
    findings = json.loads((tmp_path / "findings.json").read_text())["findings"]
    assert set(findings) == FINDINGS
    for key, finding in findings.items():
        assert finding["verdict"] in VERDICTS, key
        assert numbers_in(finding["numbers"]), key
        assert finding["paper"] in report and finding["measured"] in report
        assert "spread over seeds" in finding["measured"] and "margin" in finding["measured"], key
    # Each seed's random-walk effect comes from that seed's own walk files; Lion runs at the official β2.
    effect = findings["randomwalk"]["effect"]
    for seed in QUICK_SEEDS:
        walks = [json.loads((walk_dir(tmp_path, True, name, seed) / "randomwalk.json").read_text())
                 for name in RANDOM_WALKS]
        worst = max(abs(w[f"{k}_measured"] / w[f"{k}_predicted"] - 1) for w in walks for k in ("eta_r", "norm"))
        assert effect["per_seed"][str(seed)] == pytest.approx(RANDOM_WALK_TOLERANCE - worst)
    assert findings["randomwalk"]["numbers"]["beta2"]["lion"] == 0.99  # epfml/REQ's Lion runs (Table 3)
    # The report's equilibrium line says which runs it leaves out.
    assert "not in equilibrium" in report

    # Again: nothing is submitted or simulated again, and it takes a fraction of the first time.
    walk_files = {path: path.stat().st_mtime_ns for path in walks_dir(tmp_path, True).glob("*/randomwalk.json")}
    start = time.perf_counter()
    second = run_demo(tmp_path, quick=True, max_parallel=2, progress=False)
    again_s = time.perf_counter() - start
    assert second.submitted == 0
    assert {path: path.stat().st_mtime_ns for path in walk_files} == walk_files
    assert again_s < first.wall_s / 2, (again_s, first.wall_s)
    assert json.loads((tmp_path / "findings.json").read_text())["findings"].keys() == findings.keys()
