"""Every figure's table and the demo's findings give the numbers stored before the analysis code
was reshaped (issue 14: "the same numbers as before on the demo sweeps, against stored values").

tests/fixtures/figure-numbers/ holds small gathered sweeps of each of the demo's experiments and
random walks (trained for real by its make.py) and expected.json, what figure_numbers.compute
returned for them when make.py ran. Recomputing it from the same stored tables must give the
same tables, selections, predictions, findings, verdicts and report lines.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from figure_numbers import assert_same, compute  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "figure-numbers"


@pytest.fixture(scope="module")
def numbers():
    return compute(FIXTURE), json.loads((FIXTURE / "expected.json").read_text())


@pytest.mark.parametrize("part", ["heatmap", "lr_sweep", "curves", "dynamics", "imbalance", "randomwalk", "variants",
                                  "findings", "report_lines"])
def test_same_numbers_as_stored(numbers, part):
    actual, expected = numbers
    assert_same(actual[part], expected[part], part)


def test_the_stored_numbers_are_not_empty(numbers):
    _, expected = numbers
    assert len(expected["heatmap"]["cells"]) >= 8 and len(expected["heatmap"]["panels"]) == 2
    assert all(len(sweep["points"]) >= 2 for sweep in expected["lr_sweep"].values())
    assert any(run.get("eta_r_hat") for sweep in expected["dynamics"].values() for run in sweep["per_run"].values())
    assert set(expected["findings"]) == {"randomwalk", "layer_spread", "no_transient", "warmup",
                                         "weight_standardization"}
