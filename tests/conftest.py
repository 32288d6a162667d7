"""Test-wide settings.

One torch thread: the tests use tiny tensors, where a second OpenMP thread only
adds synchronisation, and on a shared or loaded 2-core machine spinning OpenMP
threads slow tiny ops down by orders of magnitude.

In CI ($CI set, as .ci/run does) every test that can run on this machine must
run: a skip is reported as a failure, unless its reason names hardware the
machine does not have (HARDWARE_ABSENT_HERE, e.g. "needs CUDA").

$ROTSWEEP_MUTATION=<name> applies one deliberate bug of tests/mutations.py
before the tests run (tests/test_mutations.py sets it in a subprocess).
"""

import os
from pathlib import Path

import pytest
import torch

import mutations

torch.set_num_threads(1)

HARDWARE_ABSENT_HERE = ("CUDA",)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_configure(config):
    if os.environ.get(mutations.ENV):
        mutations.apply(os.environ[mutations.ENV])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not any(hardware in reason for hardware in HARDWARE_ABSENT_HERE):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test that can run on this machine must run: {reason}"


def pytest_terminal_summary(terminalreporter):
    if mutations.RESULTS:
        terminalreporter.section("mutation check (tests/mutations.py)")
        for name, outcome in mutations.RESULTS.items():
            terminalreporter.write_line(f"{name:22} {outcome}")


# examples/eta-lambda-tiny.toml (AdamW / RV-AdamW over lr at η·λ = 5e-3), its runs shortened to
# 12 steps, trained for real and gathered: the sweep-file sweep of test_figure_axes and test_report.
FILE_SWEEP_OVERRIDES = ["steps=12", "eval_interval=4", "eval_batches=1", "dynamics_interval=2",
                        "checkpoint_interval=1000"]


@pytest.fixture(scope="session")
def eta_lambda_file_sweep(tmp_path_factory):
    from rotsweep import launch, store, sweepfile, train
    from rotsweep.analysis import gather

    out = tmp_path_factory.mktemp("file-sweep") / "eta-lambda-tiny"
    plan = launch.make_file_plan(sweepfile.load(Path(__file__).resolve().parents[1] / "examples" /
                                                "eta-lambda-tiny.toml"), scale="tiny", out=out,
                                 overrides=FILE_SWEEP_OVERRIDES)
    for run in plan.runs:
        train.run(run.config, run.run_dir)
    store.write_manifest(out, {"experiment": plan.experiment, "model": plan.model, "scale": "tiny", "seeds": None,
                               "overrides": FILE_SWEEP_OVERRIDES, "axes": plan.axes,
                               "runs": [run.config.run_id for run in plan.runs]})
    gather.gather(out)
    return out
