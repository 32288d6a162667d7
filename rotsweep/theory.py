"""Table 1 and Table 6 of the paper as code: the rotational equilibrium of a random walk.

Notation (paper §3): η learning rate, λ weight decay (the ℓ2 coefficient for
Adam+ℓ2), C the dimension of one weight vector (a neuron's fan-in), α the SGDM
momentum, β1 and β2 the Adam/Lion moment coefficients. For a scale-invariant
weight ω, g̃ = ‖ω‖·g is the gradient a unit-norm weight would get (eq. 6). Its
statistics are the only inputs that are not hyperparameters:

    grad_sq   E‖g̃‖²                (SGDM's norm; `rms_update` takes E‖g‖² instead)
    grad_l1   ⟨1, sqrt(E[g̃²])⟩     (Adam+ℓ2, eq. 91: the sum over coordinates of
                                    each coordinate's RMS gradient)

Every prediction follows from three quantities per optimizer, so the module is
organised around them (Figure 2R, eq. 8):

- E‖u‖², the squared total update contribution of one step's gradient: momentum
  spreads a gradient over many steps, u is the sum of all of them (eq. 12, 46,
  69, 81). Its square root is Table 6's RMS diffusion rate τ̂_g.
- s, the shrink: the fraction of E‖ω‖² that one step's weight decay removes.
  That weight decay removes the fraction d of the norm in total (d = ηλ, or
  ηλ/(1−α) for SGDM, eq. 12, 47), so E‖ω‖² → (1−d)²·E‖ω‖² and s = 2d − d².
  Table 1 drops d² (the "ηλ ≪ 2" step of eq. 18, 50, 73); `exact=True` keeps
  it. For Adam+ℓ2 the decay is divided by sqrt(v) like the gradient, which
  makes s depend on the norm and the gradient size (eq. 86-88).
- f, the step fraction E‖Δ_g ω‖² / E‖u‖²: how much of a gradient's total
  contribution one step applies. It depends only on β1, β2, α (eq. 21, 54, 63).

In equilibrium the weight decay balances the gradient, s·‖ω̂‖² = E‖u‖² (eq. 8
with u ⊥ ω), which gives

    ‖ω̂‖ = sqrt(E‖u‖² / s)    η̂_g = sqrt(f·E‖u‖²)    η̂_r = η̂_g/‖ω̂‖ = sqrt(f·s)
    τ̂_g = sqrt(E‖u‖²)        τ̂_r = τ̂_g/‖ω̂‖ = sqrt(s)

For AdamW, SGDM and Lion s does not depend on the norm, so η̂_r depends on the
hyperparameters only ("balanced rotation"); for SGDM E‖u‖² ∝ 1/‖ω‖² (eq. 49)
and for Adam+ℓ2 s ∝ ‖ω‖, which turn the square root of ‖ω̂‖ into a fourth and
a cube root. Table 6 lists τ̂ for SGDM and AdamW only; the Lion and Adam+ℓ2
values here follow from the same definition with E‖u‖² of eq. 69 and eq. 81.

When Table 1 holds: besides the random walk, it assumes that weight decay does not
act while momentum is still applying a gradient (u and d are taken at full size).
That is good when ηλ times the momentum's memory is small: measured in the random
walk of rotsweep.randomwalk, AdamW's norm is 0.6% under Table 1 at ηλ = 1e-3 and
4-5% under at ηλ = 1e-2 (β1 = 0.9); Lion's with ηλ = 5e-4 and β2 = 0.999 (a memory
of 1000 steps) is 14% under, with β2 = 0.99 within 1.5%.

Corrected typos of the paper: eq. 21 and 93 read (1−β1)/(1+β2) where Table 1's
(1−β1)/(1+β1) is right (Σ_k β1^{2k}(1−β1)²); eq. 69 lacks the square on η
(E‖u‖² = 2η²C/(πK), which is what eq. 72-73 use).

All formulas are plain arithmetic, so the functions take Python floats (fast:
the rotational optimizer evaluates η̂_r at every step) and numpy arrays alike
(broadcast, e.g. over an η × λ grid for heatmap contours, or over neurons).
"""

from __future__ import annotations

import math

import numpy as np

from rotsweep.errors import UserError

OPTIMIZERS = ("adamw", "adam-l2", "sgdm", "lion")
# As the paper writes them: in figures, tables, reports and the status table alike.
OPTIMIZER_NAMES = {"adamw": "AdamW", "adam-l2": "Adam+ℓ2", "sgdm": "SGDM", "lion": "Lion"}

ADAM_BETA2 = 0.999  # Appendix K: AdamW with β1 = 0.9, β2 = 0.999 unless stated
# Lion's β2 everywhere in rotsweep (presets, `predict`, the random walk): 0.99, the value of
# the official appx_J_2 scripts that produced Table 3 (epfml/REQ, timm Lion betas (0.9, 0.99)).
# Appendix K says "β2 = 0.999 exclusively"; at 0.999 the random walk's rotation is 1.16× and
# its norm 0.86× of Table 1 (see "When Table 1 holds" above), at 0.99 both within 1.5%.
LION_BETA2 = 0.99

# Table 1 holds while weight decay removes at most this fraction of the norm during the
# momentum's memory (see `table1_warning`).
MEMORY_DECAY_LIMIT = 0.1

_INPUTS = {
    "dim": "C, the dimension of one weight vector",
    "grad_sq": "E‖g̃‖², the mean squared gradient norm of a unit-norm weight",
    "grad_l1": "⟨1, sqrt(E[g̃²])⟩, the sum of the coordinates' RMS gradients of a unit-norm weight",
}


def _check_optimizer(optimizer: str) -> None:
    if optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


def _needs(value, name: str, optimizer: str, what: str, meaning: str | None = None) -> None:
    if value is None:
        raise UserError(f"{what} for {optimizer} needs {name} ({meaning or _INPUTS[name]})")


def lion_factor(beta1: float, beta2: float):
    """K = E‖n‖²/E‖g‖² for Lion's sign argument n = β1·m + (1−β1)·g (eq. 63)."""
    return (1 - beta1) ** 2 + beta1**2 * (1 - beta2) / (1 + beta2)


def _step_fraction(optimizer, *, beta1, beta2, momentum):
    """f = E‖Δ_g ω‖² / E‖u‖² for gradients uncorrelated over time."""
    if optimizer == "sgdm":
        # Steps (eq. 54) η²E‖g‖²/(1−α²) against the contribution η²E‖g‖²/(1−α)² (eq. 46).
        return (1 - momentum) / (1 + momentum)
    if optimizer == "lion":
        # Steps η²C (‖sign(n)‖² = C, eq. 64) against 2η²C/(πK) (eq. 69).
        return math.pi * lion_factor(beta1, beta2) / 2
    # Adam: steps Σ_k ((1−β1)β1^k)²·η²C = η²C(1−β1)/(1+β1) (eq. 20-21) against η²C (eq. 12).
    return (1 - beta1) / (1 + beta1)


def _update_contribution_sq(optimizer, lr, *, dim, beta1, beta2, momentum, grad_sq):
    """E‖u‖², the squared total update contribution of one step's gradient.

    For SGDM `grad_sq` is E‖g‖² of the weight as it is (not of a unit-norm one).
    """
    if optimizer == "sgdm":
        return lr**2 * grad_sq / (1 - momentum) ** 2  # eq. 46
    if optimizer == "lion":
        return 2 * lr**2 * dim / (math.pi * lion_factor(beta1, beta2))  # eq. 69 (with η²)
    return lr**2 * dim  # eq. 12 and eq. 81: E[g_k²/v_k] = 1 per coordinate


def _shrink(optimizer, lr, weight_decay, norm, *, momentum, dim, grad_l1, exact):
    """s, the fraction of E‖ω‖² that one step's weight decay removes, for a weight of that norm."""
    if optimizer == "adam-l2":
        # Eq. 86 sums to s = Σ_k 2ηλ/sqrt(v_k) · ω_k²/‖ω‖², with sqrt(v_k) = sqrt(E[g̃_k²])/‖ω‖
        # (eq. 88) and the coordinates in their equilibrium proportions ω_k² ∝ sqrt(E[g̃_k²])
        # (eq. 89). Eq. 85 cancels the d² term exactly, so there is nothing for `exact` to add.
        return 2 * lr * weight_decay * dim * norm / grad_l1
    decay = lr * weight_decay / (1 - momentum) if optimizer == "sgdm" else lr * weight_decay
    return 2 * decay - decay**2 if exact else 2 * decay


def rms_update(optimizer, lr, *, dim=None, beta1=0.9, beta2=0.999, momentum=0.9, grad_sq=None):
    """η̂_g = sqrt(E‖Δ_g p‖²), the RMS update of any parameter (Table 1, first row).

    AdamW, Adam+ℓ2: η·sqrt(C(1−β1)/(1+β1)) (eq. 21); Lion: η·sqrt(C) (eq. 74);
    SGDM: η·sqrt(E‖g‖²/(1−α²)) (eq. 54) with `grad_sq` = E‖g‖² of the parameter
    itself. β2 is accepted for a uniform signature; it cancels for Lion.
    """
    _check_optimizer(optimizer)
    if optimizer == "sgdm":
        _needs(grad_sq, "grad_sq", optimizer, "the RMS update", "E‖g‖², the parameter's mean squared gradient")
    else:
        _needs(dim, "dim", optimizer, "the RMS update")
    hyper = dict(beta1=beta1, beta2=beta2, momentum=momentum)
    contribution_sq = _update_contribution_sq(optimizer, lr, dim=dim, grad_sq=grad_sq, **hyper)
    return (_step_fraction(optimizer, **hyper) * contribution_sq) ** 0.5


def equilibrium_norm(optimizer, lr, weight_decay, *, dim=None, beta1=0.9, beta2=0.999, momentum=0.9,
                     grad_sq=None, grad_l1=None, exact=False):
    """‖ω̂‖, the equilibrium norm of a scale-invariant weight (Table 1, last row), for λ > 0.

    AdamW: sqrt(ηC/(2λ − ηλ²)) (eq. 18); Lion: sqrt(2ηC/(πK(2λ − ηλ²))) (eq. 73);
    SGDM: (η·E‖g̃‖²/(2λ(1−α) − ηλ²))^(1/4) with `grad_sq` = E‖g̃‖² (eq. 50);
    Adam+ℓ2: (η/(2λ)·⟨1, sqrt(E[g̃²])⟩)^(1/3) with `grad_l1` (eq. 91).
    Table 1 drops the ηλ² terms; `exact=True` keeps them.
    """
    _check_optimizer(optimizer)
    what = "the equilibrium norm"
    hyper = dict(beta1=beta1, beta2=beta2, momentum=momentum)
    if optimizer == "sgdm":
        _needs(grad_sq, "grad_sq", optimizer, what)
        # E‖u‖² ∝ E‖g‖² = E‖g̃‖²/‖ω‖² (eq. 49): s·‖ω̂‖² = E‖u‖² is a fourth power of ‖ω̂‖.
        unit_contribution_sq = _update_contribution_sq(optimizer, lr, dim=dim, grad_sq=grad_sq, **hyper)
        shrink = _shrink(optimizer, lr, weight_decay, None, momentum=momentum, dim=dim, grad_l1=None,
                         exact=exact)
        return (unit_contribution_sq / shrink) ** 0.25
    _needs(dim, "dim", optimizer, what)
    contribution_sq = _update_contribution_sq(optimizer, lr, dim=dim, grad_sq=None, **hyper)
    if optimizer == "adam-l2":
        _needs(grad_l1, "grad_l1", optimizer, what)
        # s ∝ ‖ω‖: s·‖ω̂‖² = E‖u‖² is a third power of ‖ω̂‖.
        unit_shrink = _shrink(optimizer, lr, weight_decay, 1.0, momentum=momentum, dim=dim,
                              grad_l1=grad_l1, exact=exact)
        return (contribution_sq / unit_shrink) ** (1 / 3)
    shrink = _shrink(optimizer, lr, weight_decay, None, momentum=momentum, dim=dim, grad_l1=None,
                     exact=exact)
    return (contribution_sq / shrink) ** 0.5


def expected_rotation(optimizer, lr, weight_decay, *, beta1=0.9, beta2=0.999, momentum=0.9, dim=None,
                      grad_l1=None, exact=False):
    """η̂_r, the expected angular update per step in equilibrium, in radians (Table 1).

    AdamW: sqrt(2ηλ(1−β1)/(1+β1)); SGDM: sqrt(2ηλ/(1+α)); Lion: sqrt(πηλK) with
    K = (1−β1)² + β1²(1−β2)/(1+β2). These need the hyperparameters only and are
    sqrt(f·s) (module docstring). With `exact=True` 2ηλ becomes 2ηλ − η²λ² for
    AdamW and Lion (from eq. 18 and 73) and 2ηλ/(1+α) becomes
    (2ηλ(1−α) − η²λ²)/(1−α²) for SGDM (from eq. 50 and 54).
    Adam+ℓ2: (2η²λ/⟨1, sqrt(E[g̃²])⟩)^(1/3)·sqrt(C(1−β1)/(1+β1)) (eq. 94), which
    needs `dim` and `grad_l1`; `exact` does not change it (eq. 85-86).
    """
    _check_optimizer(optimizer)
    norm = None
    if optimizer == "adam-l2":
        norm = equilibrium_norm(optimizer, lr, weight_decay, dim=dim, beta1=beta1, beta2=beta2,
                                momentum=momentum, grad_l1=grad_l1)
    shrink = _shrink(optimizer, lr, weight_decay, norm, momentum=momentum, dim=dim, grad_l1=grad_l1,
                     exact=exact)
    return (_step_fraction(optimizer, beta1=beta1, beta2=beta2, momentum=momentum) * shrink) ** 0.5


def weight_decay_for_rotation(optimizer, lr, eta_r, *, beta1=0.9, beta2=0.999, momentum=0.9):
    """The λ whose equilibrium rotation at learning rate `lr` is `eta_r` (Table 1, solved for λ).

    η̂_r² = f·s is proportional to λ wherever it needs the hyperparameters only
    (AdamW: λ = η̂_r²(1+β1)/(2η(1−β1)); SGDM: λ = η̂_r²(1+α)/(2η); Lion:
    λ = η̂_r²/(πηK)), so λ = η̂_r² / η̂_r(λ = 1)². Adam+ℓ2's η̂_r also depends on
    the gradient (eq. 94): no λ gives one rotation for every layer.
    """
    _check_optimizer(optimizer)
    if optimizer == "adam-l2":
        raise UserError("η̂_r of adam-l2 depends on each layer's gradient norms (Table 1, eq. 94), so no single "
                        "weight decay gives it; sweep weight_decay or eta_lambda instead")
    if not eta_r > 0:
        raise UserError(f"eta_r={eta_r} must be a positive rotation in radians per step")
    per_unit_decay = expected_rotation(optimizer, lr, 1.0, beta1=beta1, beta2=beta2, momentum=momentum)
    return eta_r**2 / per_unit_decay**2


def predict(optimizer, lr, weight_decay, *, dim=None, beta1=0.9, beta2=0.999, momentum=0.9, grad_sq=None,
            grad_l1=None, exact=False) -> dict:
    """All equilibrium predictions: eta_g, eta_r, norm (Table 1), tau_g, tau_r (Table 6).

    Arguments as for `equilibrium_norm` (`grad_sq` is E‖g̃‖² of a unit-norm weight).
    The rotations eta_r and tau_r need the hyperparameters only (Adam+ℓ2 also `dim`
    and `grad_l1`). The sizes eta_g, norm and tau_g also need `dim` (AdamW, Lion,
    Adam+ℓ2) or `grad_sq` (SGDM); without it they are left out, so that a caller
    without gradient statistics still gets the rotations. For SGDM, eta_g and
    tau_g are for the weight at its equilibrium norm, E‖g‖² = E‖g̃‖²/‖ω̂‖² (eq. 6).
    """
    _check_optimizer(optimizer)
    hyper = dict(beta1=beta1, beta2=beta2, momentum=momentum)
    eta_r = expected_rotation(optimizer, lr, weight_decay, dim=dim, grad_l1=grad_l1, exact=exact, **hyper)
    gain = _step_fraction(optimizer, **hyper) ** -0.5  # τ/η̂, the same for sizes and rotations
    result = {"eta_r": eta_r, "tau_r": eta_r * gain}
    if (grad_sq if optimizer == "sgdm" else dim) is None:
        return result
    norm = equilibrium_norm(optimizer, lr, weight_decay, dim=dim, grad_sq=grad_sq, grad_l1=grad_l1,
                            exact=exact, **hyper)
    weight_grad_sq = grad_sq / norm**2 if optimizer == "sgdm" else None
    eta_g = rms_update(optimizer, lr, dim=dim, grad_sq=weight_grad_sq, **hyper)
    result.update(eta_g=eta_g, norm=norm, tau_g=eta_g * gain)
    return {key: result[key] for key in ("eta_g", "eta_r", "norm", "tau_g", "tau_r") if key in result}


def diffusion_rates(optimizer, lr, weight_decay, *, dim=None, beta1=0.9, beta2=0.999, momentum=0.9,
                    grad_sq=None, grad_l1=None, exact=False):
    """(τ̂_g, τ̂_r): the RMS and rotational diffusion rates of Table 6.

    τ̂_g = sqrt(E‖u‖²) and τ̂_r = τ̂_g/‖ω̂‖, the total update contribution of one
    step's gradient: SGDM η·sqrt(E‖g‖²)/(1−α) and sqrt(2ηλ/(1−α)); AdamW η·sqrt(C)
    and sqrt(2ηλ). Lion (η·sqrt(2C/(πK)), sqrt(2ηλ)) and Adam+ℓ2 (η·sqrt(C),
    η·sqrt(C)/‖ω̂‖) are not in Table 6; they follow from eq. 69 and eq. 81.
    Arguments and inputs as for `equilibrium_norm`; τ̂_g for SGDM is at ‖ω̂‖.
    """
    rates = predict(optimizer, lr, weight_decay, dim=dim, beta1=beta1, beta2=beta2, momentum=momentum,
                    grad_sq=grad_sq, grad_l1=grad_l1, exact=exact)
    if "tau_g" not in rates:
        name = "grad_sq" if optimizer == "sgdm" else "dim"
        _needs(None, name, optimizer, "the diffusion rates")
    return rates["tau_g"], rates["tau_r"]


def default_beta2(optimizer: str) -> float:
    """β2 when none is given: Lion's official 0.99 (LION_BETA2), else Adam's 0.999."""
    return LION_BETA2 if optimizer == "lion" else ADAM_BETA2


def momentum_memory(optimizer, *, beta1, beta2, momentum) -> float:
    """Steps over which the optimizer keeps applying one step's gradient: 1/(1−β) of its momentum.

    The gradient reaches the update through β1 for Adam (eq. 20), through α for
    SGDM (eq. 45) and, for Lion, through m, an EMA with β2 (eq. 56).
    """
    beta = {"sgdm": momentum, "lion": beta2}.get(optimizer, beta1)
    return 1 / (1 - beta)


def table1_warning(optimizer, lr, weight_decay, *, beta1, beta2, momentum) -> str | None:
    """Why Table 1 may not hold for these hyperparameters, or None.

    Table 1 takes a gradient's whole update contribution u and the weight decay
    d = ηλ at full size, i.e. it assumes the momentum has applied a gradient
    before weight decay shrinks the weight noticeably. Over the momentum's
    memory M = 1/(1−β) steps weight decay removes about ηλ·M of the norm. The
    criterion ηλ·M > MEMORY_DECAY_LIMIT = 0.1 is where the measured random walk
    (rotsweep.randomwalk) leaves Table 1 by more than a few percent: AdamW
    ηλ·M = 0.01 → norm 0.6% under, 0.1 → 4-5% under; Lion ηλ·M = 0.05 (β2 = 0.99)
    → within 1.5%, 0.5 (β2 = 0.999) → norm 14% under, rotation 16% over.
    """
    memory = momentum_memory(optimizer, beta1=beta1, beta2=beta2, momentum=momentum)
    decayed = lr * weight_decay * memory
    if decayed <= MEMORY_DECAY_LIMIT:
        return None
    name = {"sgdm": "momentum", "lion": "β2"}.get(optimizer, "β1")
    return (f"Table 1 assumes the momentum forgets faster than weight decay shrinks the weight, but here "
            f"ηλ·1/(1−{name}) = {decayed:.3g} > {MEMORY_DECAY_LIMIT} (a memory of {memory:.0f} steps): expect "
            f"the norm below and the rotation above the prediction by several percent or more"
            + ("; the official Lion runs use β2 = 0.99" if optimizer == "lion" and beta2 > LION_BETA2 else ""))


def predict_cli(optimizer, *, lr, weight_decay, dim, beta1, beta2, momentum, grad_norm) -> dict:
    """Validate the flags of `rotsweep predict` and return `predict`'s dictionary.

    `grad_norm` is G̃ = sqrt(E‖g̃‖²) of a unit-norm weight. SGDM uses E‖g̃‖² = G̃².
    Adam+ℓ2 assumes coordinates of equal size, so ⟨1, sqrt(E[g̃²])⟩ = sqrt(C)·G̃
    (the remark after eq. 91); with unequal coordinates this overestimates it.

    What is required is what η̂_r needs: nothing beyond the hyperparameters for
    AdamW, SGDM and Lion, --dim and --grad-norm for Adam+ℓ2. Without --dim (AdamW,
    Lion) or --grad-norm (SGDM) the output has eta_r and tau_r only; --grad-norm
    is ignored by AdamW and Lion and --dim by SGDM. beta2=None is `default_beta2`.
    Where Table 1's assumption fails (`table1_warning`) the dictionary also has
    a "warning".
    """
    if optimizer not in OPTIMIZERS:
        raise UserError(f"unknown --optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if beta2 is None:
        beta2 = default_beta2(optimizer)
    if not 0 < lr < math.inf:
        raise UserError(f"--lr must be a finite number > 0, got {lr}")
    if not 0 < weight_decay < math.inf:
        raise UserError(f"--weight-decay must be a finite number > 0 (without it there is no equilibrium), "
                        f"got {weight_decay}")
    for flag, value in (("--beta1", beta1), ("--beta2", beta2), ("--momentum", momentum)):
        if not 0 <= value < 1:
            raise UserError(f"{flag} must be in [0, 1), got {value}")
    if dim is not None and dim < 1:
        raise UserError(f"--dim must be a positive integer, got {dim}")
    if grad_norm is not None and not 0 < grad_norm < math.inf:
        raise UserError(f"--grad-norm must be a finite number > 0, got {grad_norm}")
    if optimizer == "adam-l2":
        if grad_norm is None:
            raise UserError("adam-l2 needs --grad-norm (sqrt(E‖g̃‖²) of a unit-norm weight): "
                            "its equilibrium depends on the gradient size")
        if dim is None:
            raise UserError("adam-l2 needs --dim (C, the fan-in of one neuron)")
    grad_sq = grad_norm**2 if optimizer == "sgdm" and grad_norm is not None else None
    grad_l1 = dim**0.5 * grad_norm if optimizer == "adam-l2" else None
    result = predict(optimizer, lr, weight_decay, dim=None if optimizer == "sgdm" else dim, beta1=beta1,
                     beta2=beta2, momentum=momentum, grad_sq=grad_sq, grad_l1=grad_l1)
    warning = table1_warning(optimizer, lr, weight_decay, beta1=beta1, beta2=beta2, momentum=momentum)
    return result | ({"warning": warning} if warning else {})


def transient(optimizer, lr, weight_decay, *, dim=None, norm0, steps=None, beta1=0.9, beta2=0.999,
              momentum=0.9, grad_sq=None, grad_l1=None) -> dict:
    """Expected norm and rotation over time under a learning-rate / weight-decay schedule.

    The recurrence of eq. 15, E‖ω_{i+1}‖² = (1 − s_i)·E‖ω_i‖² + E‖u_i‖², with each
    step's own η_i and λ_i (module docstring: s = 2d − d², not Table 1's 2d). It
    models each step's total update contribution as if applied at once, so it is
    an approximation when the norm changes quickly compared to the momentum
    (the remark after eq. 18). Its fixed point for a constant schedule is
    `equilibrium_norm(..., exact=True)`.

    `lr` and `weight_decay` are floats or arrays with one value per step (a float
    with an array is broadcast; two floats need `steps`). `norm0` is the initial
    norm, a float or an array (e.g. per neuron); the gradient statistics are
    constants, or arrays that broadcast with `norm0`. Returns arrays of shape
    (steps, *norm0.shape): "norm", sqrt(E‖ω_i‖²) before step i, and "rotation",
    the predicted angular update of step i, sqrt(E‖Δ_g ω_i‖²)/norm (η̂_g/‖ω‖ for
    AdamW; for SGDM with E‖g‖² = E‖g̃‖²/‖ω‖²).
    """
    _check_optimizer(optimizer)
    if optimizer == "sgdm":
        _needs(grad_sq, "grad_sq", optimizer, "the transient")
    else:
        _needs(dim, "dim", optimizer, "the transient")
    if optimizer == "adam-l2":
        _needs(grad_l1, "grad_l1", optimizer, "the transient")
    lr, weight_decay = np.broadcast_arrays(np.asarray(lr, dtype=float), np.asarray(weight_decay, dtype=float))
    if lr.ndim == 0:
        if steps is None:
            raise UserError("transient needs steps= when lr and weight_decay are both constants")
        lr, weight_decay = np.full(steps, float(lr)), np.full(steps, float(weight_decay))
    if lr.ndim != 1:
        raise UserError(f"transient takes one lr / weight_decay value per step, got shape {lr.shape}")

    hyper = dict(beta1=beta1, beta2=beta2, momentum=momentum)
    step_fraction = _step_fraction(optimizer, **hyper)
    norm_sq = np.asarray(norm0, dtype=float) ** 2
    norms, rotations = [], []
    for eta, lam in zip(lr, weight_decay):
        norm = norm_sq**0.5
        weight_grad_sq = grad_sq / norm_sq if optimizer == "sgdm" else None
        contribution_sq = _update_contribution_sq(optimizer, eta, dim=dim, grad_sq=weight_grad_sq, **hyper)
        norms.append(norm)
        rotations.append((step_fraction * contribution_sq) ** 0.5 / norm)
        shrink = _shrink(optimizer, eta, lam, norm, momentum=momentum, dim=dim, grad_l1=grad_l1, exact=True)
        norm_sq = (1 - shrink) * norm_sq + contribution_sq
    return {"norm": np.array(norms), "rotation": np.array(rotations)}
