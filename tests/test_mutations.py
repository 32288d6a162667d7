"""The mutation check: every deliberate bug of tests/mutations.py makes a guarding test fail.

Each mutation runs the guarding tests in a fresh `python -m pytest` with
$ROTSWEEP_MUTATION set (tests/conftest.py applies it). The "control" run uses
the same patching machinery without a bug and must pass, so a failure of a
mutated run is the bug's doing. Which test caught each mutation is printed at
the end of the test session (tests/conftest.py, pytest_terminal_summary).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mutations

ROOT = Path(__file__).resolve().parent.parent
# The guarding tests: Algorithm 1 by hand, and descent on a scale-invariant loss (seconds, not minutes).
GUARDS = ["tests/test_rotational_reference.py", "-k", "not tiny_rotational_run"]


def run_guards(mutation: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, **{mutations.ENV: mutation}, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *GUARDS],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_control_run_passes():
    result = run_guards("control")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    mutations.RESULTS["control"] = "all guarding tests pass"


@pytest.mark.parametrize("mutation", [name for name in mutations.MUTATIONS if name != "control"])
def test_mutation_is_caught(mutation):
    result = run_guards(mutation)
    # 1 = tests ran and some failed (2+ would be a crash or collection error, not a catch).
    assert result.returncode == 1, f"mutation {mutation} survived:\n" + result.stdout[-3000:] + result.stderr[-3000:]
    caught = re.findall(r"^FAILED (\S+)", result.stdout, flags=re.MULTILINE)
    assert caught, result.stdout[-3000:]
    mutations.RESULTS[mutation] = f"caught by {caught[0]}"


def test_an_unknown_mutation_is_an_error():
    with pytest.raises(ValueError, match="choose one of control, flip-direction"):
        mutations.apply("no-such-bug")
