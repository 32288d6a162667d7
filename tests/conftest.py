"""Test-wide settings.

One torch thread: the tests use tiny tensors, where a second OpenMP thread only
adds synchronisation, and on a shared or loaded 2-core machine spinning OpenMP
threads slow tiny ops down by orders of magnitude.

$ROTSWEEP_MUTATION=<name> applies one deliberate bug of tests/mutations.py
before the tests run (tests/test_mutations.py sets it in a subprocess).
"""

import os

import torch

import mutations

torch.set_num_threads(1)


def pytest_configure(config):
    if os.environ.get(mutations.ENV):
        mutations.apply(os.environ[mutations.ENV])


def pytest_terminal_summary(terminalreporter):
    if mutations.RESULTS:
        terminalreporter.section("mutation check (tests/mutations.py)")
        for name, outcome in mutations.RESULTS.items():
            terminalreporter.write_line(f"{name:22} {outcome}")
