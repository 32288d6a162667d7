"""Under CI a skipped test fails (tests/conftest.py), unless its reason names hardware absent here."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

PROBE = '''
import pytest

def test_that_skips():
    pytest.skip("the data set is not cached")

@pytest.mark.skipif(True, reason="needs CUDA, which this machine lacks")
def test_that_needs_cuda():
    pass

@pytest.mark.xfail(reason="a known failure")
def test_known_failure():
    assert False

def test_that_passes():
    pass
'''


def run_probe(tmp_path: Path, ci: str | None) -> str:
    for name in ("conftest.py", "mutations.py"):
        shutil.copy(TESTS / name, tmp_path / name)
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    if ci is not None:
        env["CI"] = ci
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return result.stdout.strip().splitlines()[-1]


def test_skips_fail_in_ci_except_for_absent_hardware(tmp_path):
    assert run_probe(tmp_path, "true").startswith("1 failed, 1 passed, 1 skipped, 1 xfailed")


def test_outside_ci_skips_are_skips(tmp_path):
    assert run_probe(tmp_path, None).startswith("1 passed, 2 skipped, 1 xfailed")
    assert run_probe(tmp_path, "false").startswith("1 passed, 2 skipped, 1 xfailed")
