"""The random walk of Appendix F.2 (Figure 9): measured equilibrium against Table 1.

The simple system (eq. 95) is one linear layer between two fixed random gains,
with batch normalization making every row (neuron) of W scale-invariant:

    f(X) = γ_out ⊙ BN(W (γ_in ⊙ X)),   X ∈ R^{C×B},  W ∈ R^{K×C},  B = 32, C = K = 128

W starts as torch's default for nn.Linear (uniform in ±1/sqrt(C)), γ_in and γ_out
are N(0, 1) and fixed, X is drawn fresh from N(0, 1) at every step, and instead
of a loss the output gradient is drawn i.i.d. from N(0, (s/(KB))²) (s: an
optional loss scale, 1 by default). Nothing is learned: every gradient is noise,
which is exactly the random walk Table 1 is derived for, and the gains give
each neuron and input channel a different gradient size, as a real network
would.

`run` trains W with the paper's hyperparameters for the optimizer (Appendix F,
"Details of Figure 9"), records the dynamics with rotsweep.dynamics, and
compares the means over the last quarter of the steps with the predictions:

    eta_r   mean over neurons of each neuron's angular update per step
    norm    layer RMS of the neuron norms, sqrt(mean_k ‖ω_k‖²)

The predictions are per neuron, with C = 128. SGDM's norm and everything of
Adam+ℓ2 depend on the gradient of a unit-norm neuron, g̃_k = ‖ω_k‖·g_k (eq. 6);
`run` measures E[g̃_k²] per weight over the same last quarter and feeds it to
the formulas, then averages the predictions over neurons like the measurements.
With `rotational=True` the optimizer is its rotational variant (Algorithm 1),
which keeps every neuron at its initial norm and rotates it by η̂_r from the
first step on, up to a warm-up of tens of steps: its RMS tracker follows the
inner optimizer's own warm-up of the update size (Adam's bias correction,
momentum building up); see tests/test_randomwalk.py.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rotsweep import theory
from rotsweep.config import MAX_STEPS
from rotsweep.dynamics import DynamicsRecorder
from rotsweep.errors import UserError
from rotsweep.optim import build_optimizer
from rotsweep.store import check_output_dir, write_json, write_parquet

BATCH, FAN_IN, NEURONS = 32, 128, 128  # B, C, K of Appendix F.2

# Appendix F, details of Figure 9: SGDM and Lion use the CIFAR-10 ResNet-20 settings at batch
# size 128 (Table 4), AdamW and Adam+ℓ2 the best ResNet-18 settings of Figure 6L (Appendix K).
# Lion's β2 is 0.99, the value the official code ran those ResNet-20 settings with (Appendix K
# says 0.999). It matters here: Table 1's Lion formula counts the whole total update
# contribution of a gradient, but with β2 = 0.999 the momentum keeps applying a gradient for
# ~1000 steps while weight decay (ηλ = 5e-4) shrinks the weight on a ~2000-step scale, so much
# of the contribution is decayed away before it lands. Measured with β2 = 0.999 (15000 steps):
# norm 0.86× and η_r 1.16× of Table 1; with β2 = 0.99 both within 1.5%.
PAPER_HYPERPARAMETERS = {
    "adamw": dict(lr=1.25e-2, weight_decay=8e-2, betas=(0.9, 0.999)),
    "adam-l2": dict(lr=7.813e-4, weight_decay=1.25e-4, betas=(0.9, 0.999)),
    "sgdm": dict(lr=0.5, weight_decay=1e-4, momentum=0.9),
    "lion": dict(lr=5e-4, weight_decay=1.0, betas=(0.9, theory.LION_BETA2)),
}
# Steps to reach equilibrium from torch's initialization: the paper's 15k, except Adam+ℓ2,
# whose largest neurons relax on a ~10k-step scale here (rate 1.5·η²C/‖ω̂‖², from eq. 86).
DEFAULT_STEPS = {"adamw": 15_000, "adam-l2": 40_000, "sgdm": 15_000, "lion": 15_000}
RECORD_INTERVAL = 10
# The last quarter of the steps must hold at least one record to measure anything.
MIN_STEPS = 4 * RECORD_INTERVAL


class SimpleSystem:
    """f(X) = γ_out ⊙ BN(W(γ_in ⊙ X)) (eq. 95), driven by random inputs and output gradients."""

    def __init__(self, seed: int, loss_scale: float = 1.0):
        self.generator = torch.Generator().manual_seed(seed)
        bound = 1 / math.sqrt(FAN_IN)  # nn.Linear's default initialization
        self.weight = torch.nn.Parameter((torch.rand(NEURONS, FAN_IN, generator=self.generator) * 2 - 1) * bound)
        self.gamma_in = torch.randn(FAN_IN, generator=self.generator)
        self.gamma_out = torch.randn(NEURONS, generator=self.generator)
        # B averages the loss over the batch, K gives the size of softmax-cross-entropy derivatives.
        self.output_grad_std = loss_scale / (NEURONS * BATCH)

    def backward(self) -> None:
        """Set weight.grad to the gradient of one random step."""
        x = torch.randn(BATCH, FAN_IN, generator=self.generator)  # the C × B input, batch first
        features = F.batch_norm((x * self.gamma_in) @ self.weight.T, None, None, training=True)
        output_grad = torch.randn(BATCH, NEURONS, generator=self.generator) * self.output_grad_std
        self.weight.grad = None
        (features * self.gamma_out).backward(output_grad)


def run(optimizer: str, *, steps: int | None = None, rotational: bool = False, out: str | Path | None = None,
        seed: int = 0, lr: float | None = None, weight_decay: float | None = None,
        loss_scale: float = 1.0) -> dict:
    """Run the random walk and compare its last-quarter averages with Table 1.

    `steps` defaults to DEFAULT_STEPS[optimizer]. `lr` and `weight_decay` replace
    the paper's values (tests use larger ones to reach equilibrium in fewer
    steps); `loss_scale` multiplies the output gradients. The rotational Adam+ℓ2
    is the variant of Appendix J with AdamW's η̂_r: Adam+ℓ2's own η̂_r differs
    between neurons (it depends on their gradients), and an RV rotates all
    neurons alike. With `out`, writes out/dynamics.parquet (the long
    table of rotsweep.dynamics, every RECORD_INTERVAL steps) and out/randomwalk.json (the returned
    dictionary).
    """
    if optimizer not in theory.OPTIMIZERS:
        raise UserError(f"unknown --optimizer {optimizer!r}; choose one of {', '.join(theory.OPTIMIZERS)}")
    steps = DEFAULT_STEPS[optimizer] if steps is None else steps
    if not MIN_STEPS <= steps <= MAX_STEPS:
        raise UserError(f"--steps must be between {MIN_STEPS} (the measurement averages the records of the last "
                        f"quarter, taken every {RECORD_INTERVAL} steps) and {MAX_STEPS:,}; got {steps}")
    if out is not None:
        check_output_dir(out)  # before minutes of simulation
    hyper = dict(PAPER_HYPERPARAMETERS[optimizer])
    hyper.update({k: v for k, v in dict(lr=lr, weight_decay=weight_decay).items() if v is not None})
    eta_r_from = "adamw" if rotational and optimizer == "adam-l2" else optimizer

    # Every op here is tiny: intra-op threads only add synchronisation, which on a busy
    # machine made a step 150x slower (0.8 ms against 120 ms per step, measured).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        measured = _simulate(optimizer, hyper, steps=steps, rotational=rotational, eta_r_from=eta_r_from,
                             seed=seed, loss_scale=loss_scale)
    finally:
        torch.set_num_threads(threads)
    table, unit_grad_sq, initial_norms, wall_s = measured

    first_measured = steps - steps // 4
    late = table[(table.step >= first_measured) & (table.param == "weight")]

    def late_mean(stat: str, reduction: str) -> float:
        return float(late.loc[(late.stat == stat) & (late.reduction == reduction), "value"].mean())

    # Per-neuron predictions (arrays over K where the gradient enters), reduced like the measurements.
    grad_sq = unit_grad_sq.sum(axis=1)  # E‖g̃_k‖²
    grad_l1 = np.sqrt(unit_grad_sq).sum(axis=1)  # ⟨1, sqrt(E[g̃_k²])⟩
    (beta1, beta2), momentum = hyper.get("betas", (0.9, 0.999)), hyper.get("momentum", 0.9)  # unused ones: defaults
    predicted = theory.predict(eta_r_from, hyper["lr"], hyper["weight_decay"], dim=FAN_IN, beta1=beta1,
                               beta2=beta2, momentum=momentum, grad_sq=grad_sq, grad_l1=grad_l1)
    if rotational:  # the RV holds every neuron at its initial norm n_k and moves it by η̂_r·n_k
        norms = initial_norms
        eta_g = predicted["eta_r"] * initial_norms
    else:
        norms, eta_g = predicted["norm"], predicted["eta_g"]

    result = {
        "optimizer": optimizer,
        "steps": steps,
        "rotational": rotational,
        "lr": hyper["lr"],
        "weight_decay": hyper["weight_decay"],
        "beta1": beta1,
        "beta2": beta2,
        "momentum": momentum,
        "eta_r_measured": late_mean("angular_update", "mean"),
        "eta_r_predicted": float(np.mean(predicted["eta_r"])),
        "norm_measured": late_mean("norm", "rms"),
        "norm_predicted": float(np.sqrt(np.mean(np.square(norms)))),
        # Per coordinate, ‖ω_k' − ω_k‖/sqrt(C) averaged over neurons, like the dynamics table's rms_update.
        "eta_g_measured": late_mean("rms_update", "mean"),
        "eta_g_predicted": float(np.mean(eta_g) / math.sqrt(FAN_IN)),
        "eta_r_from": eta_r_from,
        "grad_norm_tilde": float(np.sqrt(np.mean(grad_sq))),  # RMS over neurons of sqrt(E‖g̃_k‖²)
        "grad_l1_tilde": float(np.mean(grad_l1)),  # mean over neurons of ⟨1, sqrt(E[g̃_k²])⟩
        "wall_s": wall_s,
    }
    if out is not None:
        write_parquet(Path(out) / "dynamics.parquet", table)
        # JSON has no NaN or infinity: a value that is not a number is written as null.
        write_json(Path(out) / "randomwalk.json",
                   {key: None if isinstance(value, float) and not math.isfinite(value) else value
                    for key, value in result.items()})
    return result


def _simulate(optimizer, hyper, *, steps, rotational, eta_r_from, seed, loss_scale):
    """The training loop: (dynamics table, E[g̃²] per weight over the last quarter, initial neuron norms, seconds)."""
    system = SimpleSystem(seed, loss_scale)
    weight = system.weight
    initial_norms = weight.detach().norm(dim=1).double().numpy()
    options = dict(eta_r_from=eta_r_from) if rotational else {}
    opt = build_optimizer(optimizer, [weight], rotational=rotational, **hyper, **options)
    recorder = DynamicsRecorder([("weight", weight)], interval=RECORD_INTERVAL, seed=seed)

    first_measured = steps - steps // 4
    unit_grad_sq = torch.zeros_like(weight)
    start = time.perf_counter()
    for step in range(steps):
        system.backward()
        if step >= first_measured:  # g̃_k = ‖ω_k‖·g_k (eq. 6, 87)
            with torch.no_grad():
                unit_grad_sq += (weight.grad * weight.norm(dim=1, keepdim=True)).square()
        recorder.before_step(step)
        opt.step()
        recorder.after_step(step)
    wall_s = time.perf_counter() - start
    unit_grad_sq = (unit_grad_sq / (steps - first_measured)).double().numpy()
    return recorder.table(), unit_grad_sq, initial_norms, wall_s


def format_report(result: dict) -> str:
    """A short table of measured against predicted equilibrium values."""
    name = ("RV-" if result["rotational"] else "") + result["optimizer"]
    lines = [
        f"{name}: {result['steps']} steps, lr {result['lr']:g}, weight decay {result['weight_decay']:g} "
        f"(means over the last quarter)",
        f"{'':8}{'measured':>12}{'predicted':>12}{'ratio':>8}",
    ]
    for key in ("eta_r", "norm", "eta_g"):
        got, want = result[f"{key}_measured"], result[f"{key}_predicted"]
        lines.append(f"{key:8}{got:12.5g}{want:12.5g}{got / want:8.3f}")
    lines.append(f"unit-norm gradient: RMS ‖g̃‖ {result['grad_norm_tilde']:.4g}, "
                 f"⟨1, sqrt(E[g̃²])⟩ {result['grad_l1_tilde']:.4g}")
    return "\n".join(lines)
