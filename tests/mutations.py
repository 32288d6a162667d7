"""Deliberate bugs in the rotational optimizer, which the guarding tests must catch.

Each mutation breaks one step of Algorithm 1 by monkeypatching the code under
test (never by editing files). tests/test_mutations.py runs the guarding tests
in a subprocess with ROTSWEEP_MUTATION=<name>; tests/conftest.py then calls
`apply(name)` before any test runs. Every mutation must make at least one test
fail, and the "control" (the same patching machinery, no bug) must pass.

    name                 what it breaks (Algorithm 1 / Table 1)          how
    control              nothing: `_rotate` rewritten plainly below      rotational._rotate
    flip-direction       d → −d: the step climbs the loss (lines 9-11)   wraps rotational._DIRECTIONS
    drop-projection      no d ← d − ⟨d, p⟩/‖p‖²·p (line 12)              rotational._rotate
    drop-renormalisation no p ← n·p/‖p‖: the norm drifts (line 18)      rotational._rotate
    swap-rms-beta        ν ← (1−β)·ν + β·‖d‖² (line 14)                 rotational._rotate
    wrong-eta-r-formula  another optimizer's Table 1 η̂_r               theory.expected_rotation

The mutation points are the wrapper's private seams, as of this writing:
_DIRECTIONS[inner](rows, grad, moments, out, group, step) -> (d, unit), where
the true direction is unit·d, and _rotate(rows, direction, out, norm, rms_sq,
speed, *, unit, eta_r, rms_beta, rms_correction, eps, zero_mean), which does
lines 12-18 in place for a chunk of neuron rows. When the optimizer's
internals change, re-point the table here; the "control" entry checks that the
plain rewrite of `_rotate` below still agrees with the real one.
"""

from __future__ import annotations

import functools

import pytest

from rotsweep import theory
from rotsweep.optim import rotational

ENV = "ROTSWEEP_MUTATION"


def _rotate(rows, direction, out, norm, rms_sq, speed, *, unit, eta_r, rms_beta, rms_correction, eps, zero_mean,
            project=True, renormalise=True, swap_beta=False):
    """Lines 12-18 of Algorithm 1 for a chunk of rows, plainly, with one step optionally broken."""
    d = unit * direction
    p = rows - rows.mean(dim=1, keepdim=True) if zero_mean else rows.clone()
    if zero_mean:
        d = d - d.mean(dim=1, keepdim=True)
    if project:
        d = d - (d * p).sum(dim=1, keepdim=True) / (p * p).sum(dim=1, keepdim=True) * p
    keep, new = (1 - rms_beta, rms_beta) if swap_beta else (rms_beta, 1 - rms_beta)
    rms_sq.mul_(keep).add_((d * d).sum(dim=1), alpha=new)
    size = eta_r * norm / ((rms_sq / rms_correction).sqrt() + eps)
    if speed is not None:
        size = size * speed
    q = p - size.unsqueeze(1) * d
    if renormalise:
        q = norm.unsqueeze(1) * q / q.norm(dim=1, keepdim=True)
    rows.copy_(q)


def _flip_directions(patch: pytest.MonkeyPatch) -> None:
    def flipped(original, *args, **kwargs):
        direction, unit = original(*args, **kwargs)
        return direction, -unit

    for inner, original in list(rotational._DIRECTIONS.items()):
        patch.setitem(rotational._DIRECTIONS, inner, functools.partial(flipped, original))


def _wrong_eta_r_formula(patch: pytest.MonkeyPatch) -> None:
    original = theory.expected_rotation
    other = {"adamw": "sgdm", "sgdm": "adamw", "lion": "adamw", "adam-l2": "adamw"}

    def wrong(optimizer, *args, **kwargs):
        return original(other[optimizer], *args, **kwargs)

    patch.setattr(theory, "expected_rotation", wrong)


def _replace_rotate(**broken):
    return lambda patch: patch.setattr(rotational, "_rotate", functools.partial(_rotate, **broken))


MUTATIONS = {
    "control": _replace_rotate(),
    "flip-direction": _flip_directions,
    "drop-projection": _replace_rotate(project=False),
    "drop-renormalisation": _replace_rotate(renormalise=False),
    "swap-rms-beta": _replace_rotate(swap_beta=True),
    "wrong-eta-r-formula": _wrong_eta_r_formula,
}

# {mutation: outcome}, filled by tests/test_mutations.py and printed at the end of the session.
RESULTS: dict[str, str] = {}

_patch = pytest.MonkeyPatch()  # never undone: a mutated test process ends with its tests


def apply(name: str) -> None:
    if name not in MUTATIONS:
        raise ValueError(f"unknown mutation {name!r} in ${ENV}; choose one of {', '.join(MUTATIONS)}")
    MUTATIONS[name](_patch)
