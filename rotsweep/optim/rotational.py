"""Rotational variants (RVs) of AdamW, Adam+ℓ2, SGDM and Lion: Algorithm 1 and Appendix I.

An RV replaces weight decay on the rotational set Ω by direct control of each
neuron's rotation. A neuron p is a slice along dim 0 (a Linear output row, a
Conv filter, an Embedding vector), or the whole tensor with per_neuron=False.
With p̄ the mean of p's elements (zero_mean; without it p̄ = d̄ = 0):

    at construction  n ← ‖p‖;  p ← n·(p − p̄)/‖p − p̄‖                  lines 1-4
    at every step    d ← the inner optimizer's update direction, Δ_g p/(−η)   lines 9-11
                     d ← d − ⟨d, p⟩/‖p‖²·p − d̄·1                        line 12
                     ν ← β·ν + (1−β)·‖d‖²                                line 14
                     p ← p − η̂_r·n·d/(sqrt(ν/(1−β^t)) + ε)               line 16
                     p ← n·p/‖p‖                                         line 18

so each neuron turns by η̂_r radians per step on average and keeps its norm n.
η̂_r is Table 1's equilibrium rotation (rotsweep.theory.expected_rotation) of the
inner optimizer at the group's *current* lr and weight decay, so an lr schedule
acts on η̂_r ∝ sqrt(η); a group may instead fix `eta_r`. Ω is chosen per param
group: group["rotational"], or by default the tensors with weight decay > 0 and
ndim >= 2. Parameters outside Ω (biases, gains) get exactly the inner
optimizer's update, from torch's own AdamW/Adam/SGD functional code or `lion`.

Variants from Appendix J: Adam+ℓ2's direction with AdamW's η̂_r (inner="adam-l2",
eta_r_from="adamw"; Adam+ℓ2's own η̂_r needs gradient statistics), and
imbalanced rotation (Figure 16): a seeded random portion of each tensor's
neurons turns f× slower ("slow"), or half of that portion f× slower and half f×
faster ("split"). As in the official code ν tracks the unscaled direction, so
those neurons turn by ≈ η̂_r/f and ≈ f·η̂_r (for small angles).

Where this differs from the official code (epfml/REQ): parameters without a
gradient are skipped instead of crashing; the projection divides by the current
‖p − p̄‖² (the stored n² up to rounding); the mean of p is removed at every
step too, so rounding never lets the mean or the norm drift; the imbalanced
neurons are a seeded random choice instead of the leading rows; a neuron whose
projected direction is below the rounding error of its sums (d along p − p̄, or
constant) does not turn, as in exact arithmetic, where the official code would
turn it by η̂_r along the rounding noise.

How it is computed: d ⊥ (p − p̄) after line 12, so ‖(p − p̄) − s·d‖² =
‖p − p̄‖² + s²‖d‖², and lines 12-18 become one update p ← a·p + b·d + c with
per-neuron a, b, c from five per-neuron sums over p and the raw direction
(Σp², Σp·d, Σd², Σp, Σd): the projected direction is never stored, and the norm
is exact again after every step (see _rotation). Fused AdamW makes one pass
over memory per step (reads p, g, m, v; writes p, m, v); the floor here is two:
one for the direction and the sums, one for the update (impl="kernel" makes both
per row while the row is in the cache, so it goes through memory once).

`rotational_update` is the functional core over lists of tensors (the shape of
torch/optim/adam.py); `RotationalWrapper` holds the state and param groups. It
has four implementations (`impl`), all giving the same numbers up to float
rounding:

    chunked    (default on the CPU) each tensor in chunks of whole neurons that
               fit in the cache, eagerly: torch's fused Adam kernel (where torch
               has it, public ops otherwise) writes d for a chunk, then five
               reductions and two element-wise ops; one trip through memory and
               about ten passes over the chunk in the cache
    grouped    (default on other devices) tensors with the same shape and step
               stacked, so a shape group costs a handful of kernel launches
               instead of a handful per tensor
    compiled   the floor: each tensor whole through two functions compiled by
               torch.compile into one loop over the rows each, the first for
               the sums (and ν), the second for the moments and the update; d is
               recomputed in the second instead of stored, so no buffer of the
               tensor's size is allocated. The first step pays the compilation
               (cached on disk by torch for later processes); if it fails, the
               chunked code runs instead
    kernel     (CPU, float32, contiguous) the floor reached: rotational_kernel.cpp,
               a C++ loop over the neuron rows (split among threads) that makes
               both passes per row, the second while the row is in the cache:
               pass 1 writes the new moments, keeps d in a row-sized buffer and
               sums; pass 2 writes p. So it reads p, g and the moments from
               memory once and writes them once, like fused AdamW (inductor
               would not keep a row in the cache between the two loops of
               "compiled"). Built at the first use by torch's cpp_extension (g++,
               ninja; ~30 s once per machine, cached in torch's extension
               directory); if that fails, a warning and the chunked code. Other
               tensors (other dtypes or devices, rows wider than 2^16 elements)
               take the chunked path

benchmarks/bench_optim.py measures them against torch's AdamW. On this project's
2-core test machine with one thread (four runs, load 2-4), the median step's CPU
time over fused AdamW's was 1.00-1.21 for kernel at GPT2-124M's shapes (1.13-1.40
at a 6x384 GPT's), 2.0-2.3 for compiled and 3.3-3.7 for chunked.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.optim.adam import adam as torch_adam
from torch.optim.adamw import adamw as torch_adamw
from torch.optim.sgd import sgd as torch_sgd

from rotsweep import theory
from rotsweep.errors import UserError
from rotsweep.optim.lion import lion

INNERS = ("adamw", "adam-l2", "sgdm", "lion")
IMPLS = ("chunked", "grouped", "compiled", "kernel")
# impl=None takes this variable's value when set (a run's optimizers are built by rotsweep.train, so
# this is how `rotsweep train` and the jobs of `rotsweep launch`, which inherit the environment,
# choose the kernel: ROTSWEEP_RV_IMPL=kernel). How a step is computed is not what a run computes
# (every impl gives Algorithm 1's numbers up to float rounding), so it is not part of the run_id.
IMPL_ENV = "ROTSWEEP_RV_IMPL"


def default_impl(device: torch.device) -> str:
    """The impl of impl=None on `device`: $ROTSWEEP_RV_IMPL, else chunked on the CPU and grouped elsewhere."""
    chosen = os.environ.get(IMPL_ENV)
    if chosen:
        if chosen not in IMPLS:
            raise UserError(f"{IMPL_ENV}={chosen!r} is not an implementation of the rotational step; set it to "
                            f"one of {', '.join(IMPLS)} or unset it")
        return chosen
    return "chunked" if device.type == "cpu" else "grouped"
# Optimizers whose Table 1 η̂_r needs hyperparameters only (Adam+ℓ2's also needs gradient statistics).
ETA_R_FORMULAS = ("adamw", "sgdm", "lion")
IMBALANCES = ("slow", "split")

# The inner optimizer's state for a rotational parameter: only what Δ_g p needs (Δ_λ p is never used).
_MOMENTS = {
    "adamw": ("exp_avg", "exp_avg_sq"),
    "adam-l2": ("exp_avg", "exp_avg_sq"),
    "sgdm": ("momentum_buffer",),
    "lion": ("exp_avg",),
}

# On the CPU a chunk has this many elements: its grad, moments, weights and
# scratch (~5 × 4 MB in float32) stay in a 32 MB L3 cache across the passes of
# one chunk (of 2^18 to 2^22, 2^20 was fastest on GPT2-124M's shapes here).
# Other devices take whole tensors: there kernel launches cost more than memory
# traffic.
_CPU_CHUNK_ELEMENTS = 2**20


class RotationalWrapper(torch.optim.Optimizer):
    """The rotational variant of `inner` (Algorithm 1; see the module docstring).

    The keyword arguments are the defaults of the param-group keys: lr,
    weight_decay, betas (adamw, adam-l2, lion), momentum (sgdm), eps (adamw,
    adam-l2), rotational (True/False, None for the default rule), per_neuron,
    zero_mean, rms_beta (β of the RMS tracker), rotational_eps (ε of line 16),
    eta_r (None: Table 1's η̂_r) and eta_r_from (whose Table 1 formula gives η̂_r;
    None: the inner optimizer's). imbalance_mode ("slow", "split" or None),
    imbalance_portion, imbalance_factor (f) and imbalance_seed apply to all
    rotational tensors; the chosen neurons are in `imbalance_masks()` and saved
    in the state dict. impl chooses how the rotational step is computed
    ("chunked", "grouped", "compiled", "kernel"; None: default_impl, i.e.
    $ROTSWEEP_RV_IMPL or chunked on the CPU, grouped on other devices); see the
    module docstring.
    """

    def __init__(self, params, inner: str = "adamw", *, lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), momentum: float = 0.9, eps: float = 1e-8,
                 per_neuron: bool = True, zero_mean: bool = True, rms_beta: float = 0.9,
                 rotational_eps: float = 1e-8, eta_r: float | None = None, eta_r_from: str | None = None,
                 imbalance_mode: str | None = None, imbalance_portion: float = 0.5, imbalance_factor: float = 10.0,
                 imbalance_seed: int = 0, impl: str | None = None):
        if inner not in INNERS:
            raise UserError(f"unknown inner optimizer {inner!r}; choose one of {', '.join(INNERS)}")
        if impl not in (None, *IMPLS):
            raise UserError(f"unknown impl {impl!r}; choose one of {', '.join(IMPLS)} or None")
        if imbalance_mode not in (None, *IMBALANCES):
            raise UserError(f"unknown imbalance_mode {imbalance_mode!r}; choose one of {', '.join(IMBALANCES)} or None")
        if imbalance_mode and not (0 <= imbalance_portion <= 1 and imbalance_factor >= 1):
            raise UserError(f"imbalance needs 0 <= imbalance_portion <= 1 and imbalance_factor >= 1, "
                            f"got {imbalance_portion} and {imbalance_factor}")
        self.inner = inner
        self.imbalance_mode = imbalance_mode
        self.imbalance_portion = imbalance_portion
        self.imbalance_factor = imbalance_factor
        self.imbalance_seed = imbalance_seed
        self.impl = impl
        self._scratch = {}  # reused scratch buffers of rotational_update
        defaults = dict(lr=lr, weight_decay=weight_decay, betas=tuple(betas), momentum=momentum, eps=eps,
                        rotational=None, per_neuron=per_neuron, zero_mean=zero_mean, rms_beta=rms_beta,
                        rotational_eps=rotational_eps, eta_r=eta_r, eta_r_from=eta_r_from)
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ setup

    def add_param_group(self, param_group: dict) -> None:
        """Add a group, then centre its rotational weights and record their norms (lines 1-4)."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_group(group)
        first_index = sum(len(g["params"]) for g in self.param_groups[:-1])  # as in state_dict()
        for index, p in enumerate(group["params"], start=first_index):
            if self._is_rotational(group, p):
                self._check_rotational(group, p)
                self._start_rotating(group, p, index)

    @staticmethod
    def _is_rotational(group: dict, p: torch.Tensor) -> bool:
        if group["rotational"] is not None:
            return bool(group["rotational"])
        return group["weight_decay"] > 0 and p.ndim >= 2

    def _check_rotational(self, group: dict, p: torch.Tensor) -> None:
        shape = tuple(p.shape)
        if group["per_neuron"] and p.ndim < 2:
            raise UserError(f"a rotational tensor of shape {shape} has no neurons along dim 0; "
                            "set rotational=False for its group or per_neuron=False")
        if group["eta_r"] is None:
            if self.inner == "adam-l2" and group["eta_r_from"] is None:
                raise UserError("the rotational Adam+ℓ2 needs eta_r_from='adamw' (Appendix J) or an explicit "
                                "eta_r: its own η̂_r depends on gradient statistics")
            if group["weight_decay"] <= 0:
                raise UserError(f"a rotational tensor of shape {shape} is in a group with weight_decay "
                                f"{group['weight_decay']}, so η̂_r = 0; give it weight decay or an explicit eta_r")
        if self.imbalance_mode and not group["per_neuron"]:
            raise UserError("imbalanced rotation chooses neurons, so it needs per_neuron=True")

    @torch.no_grad()
    def _start_rotating(self, group: dict, p: torch.Tensor, index: int) -> None:
        rows = _neuron_rows(p, group["per_neuron"])
        norm = torch.linalg.vector_norm(rows, dim=1)
        if group["zero_mean"]:
            rows.sub_(rows.mean(dim=1, keepdim=True))
            centred = torch.linalg.vector_norm(rows, dim=1)
            rows.mul_((norm / centred).unsqueeze(1))
        else:
            centred = norm
        if bool((centred == 0).any()):
            raise UserError(f"a rotational tensor of shape {tuple(p.shape)} has neurons that are zero"
                            f"{' after centring' if group['zero_mean'] else ''}, which cannot be rotated; "
                            "initialise it randomly or set rotational=False for its group")
        state = self.state[p]
        state["norm"] = norm
        if self.imbalance_mode:
            state["rotation_speed"] = self._imbalanced_speeds(rows.shape[0], index).to(p)

    def _imbalanced_speeds(self, n_neurons: int, index: int) -> torch.Tensor:
        """Per-neuron factor on the rotation: 1/f for slow neurons, f for fast ones, 1 for the rest.

        The neurons are a random choice fixed by the seed and the parameter's index.
        """
        chosen = torch.from_numpy(np.random.default_rng([self.imbalance_seed, index]).permutation(n_neurons))
        speed = torch.ones(n_neurons)
        factor = self.imbalance_factor
        if self.imbalance_mode == "slow":
            speed[chosen[: int(self.imbalance_portion * n_neurons)]] = 1 / factor
        else:
            half = int(self.imbalance_portion / 2 * n_neurons)
            speed[chosen[:half]] = 1 / factor
            speed[chosen[half: 2 * half]] = factor
        return speed

    def imbalance_masks(self) -> dict:
        """{param name (if the groups have names) or index: {"slow": neuron indices, "fast": ..., "factor": f}}."""
        masks, index = {}, 0
        for group in self.param_groups:
            names = group.get("param_names")
            for i, p in enumerate(group["params"]):
                speed = self.state[p].get("rotation_speed") if p in self.state else None
                if speed is not None:
                    masks[names[i] if names else index] = {
                        "slow": torch.nonzero(speed < 1).flatten(),
                        "fast": torch.nonzero(speed > 1).flatten(),
                        "factor": self.imbalance_factor,
                    }
                index += 1
        return masks

    # ------------------------------------------------------------------- step

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            with_grad = [p for p in group["params"] if p.grad is not None]
            self._plain_step(group, [p for p in with_grad if not self._is_rotational(group, p)])
            self._rotational_step(group, [p for p in with_grad if self._is_rotational(group, p)])
        return loss

    def _eta_r(self, group: dict) -> float:
        if group["eta_r"] is not None:
            return float(group["eta_r"])
        beta1, beta2 = group["betas"]
        return float(theory.expected_rotation(group["eta_r_from"] or self.inner, group["lr"], group["weight_decay"],
                                              beta1=beta1, beta2=beta2, momentum=group["momentum"]))

    def _plain_step(self, group: dict, params: list[torch.Tensor]) -> None:
        """The unchanged inner optimizer (Algorithm 1, line 21), by torch's own code where it has one."""
        if not params:
            return
        grads = [p.grad for p in params]
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        if self.inner in ("adamw", "adam-l2"):
            for p, state in zip(params, states):
                if not state:  # torch.optim.Adam's layout, so its functional code can run on it
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            functional = torch_adamw if self.inner == "adamw" else torch_adam
            functional(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
                       [s["step"] for s in states], amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
                       weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)
        elif self.inner == "sgdm":
            buffers = [state.get("momentum_buffer") for state in states]
            torch_sgd(params, grads, buffers, weight_decay=group["weight_decay"], momentum=group["momentum"],
                      lr=group["lr"], dampening=0.0, nesterov=False, maximize=False)
            for state, buffer in zip(states, buffers):  # torch's sgd creates the buffers on the first step
                state["momentum_buffer"] = buffer
        else:
            for p, state in zip(params, states):
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            lion(params, grads, [s["exp_avg"] for s in states], lr=group["lr"], beta1=beta1, beta2=beta2,
                 weight_decay=group["weight_decay"])

    def _rotational_step(self, group: dict, params: list[torch.Tensor]) -> None:
        """Lines 9-18 for the rotational tensors of a group that have a gradient."""
        if not params:
            return
        states = [self.state[p] for p in params]
        for p, state in zip(params, states):
            if "step" not in state:
                state["step"] = 0  # a Python int: read at every step for the bias corrections without a device sync
                for name in _MOMENTS[self.inner]:
                    state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["rms_sq"] = torch.zeros_like(state["norm"])  # ν of line 14, one per neuron
            state["step"] += 1
        beta1, beta2 = group["betas"]
        rotational_update(
            params, [p.grad for p in params], [[state[name] for name in _MOMENTS[self.inner]] for state in states],
            [state["norm"] for state in states], [state["rms_sq"] for state in states],
            [state.get("rotation_speed") for state in states], [state["step"] for state in states],
            inner=self.inner, eta_r=self._eta_r(group), beta1=beta1, beta2=beta2, momentum=group["momentum"],
            eps=group["eps"], weight_decay=group["weight_decay"], per_neuron=group["per_neuron"],
            zero_mean=group["zero_mean"], rms_beta=group["rms_beta"], rotational_eps=group["rotational_eps"],
            impl=self.impl or default_impl(params[0].device), scratch=self._scratch)


def _check_group(group: dict) -> None:
    if group["eta_r_from"] not in (None, *ETA_R_FORMULAS):
        raise UserError(f"eta_r_from must be one of {', '.join(ETA_R_FORMULAS)} (or None for the inner optimizer's), "
                        f"got {group['eta_r_from']!r}")
    if not 0 <= group["rms_beta"] < 1:
        raise UserError(f"rms_beta must be in [0, 1), got {group['rms_beta']}")
    if group["rotational_eps"] < 0 or group["lr"] < 0 or group["weight_decay"] < 0:
        raise UserError("lr, weight_decay and rotational_eps must be >= 0, got "
                        f"{group['lr']}, {group['weight_decay']}, {group['rotational_eps']}")
    if group["eta_r"] is not None and group["eta_r"] < 0:
        raise UserError(f"eta_r must be >= 0, got {group['eta_r']}")


def _neuron_rows(tensor: torch.Tensor, per_neuron: bool, layout: torch.Tensor | None = None,
                 writable: bool = True) -> torch.Tensor:
    """`tensor` as [neurons, elements]: one row per index of dim 0, or a single row.

    Elements go in the memory order of `layout` (the parameter; default the tensor
    itself), so the rows of a channels-last weight and of its state are views:
    in-place changes of the rows change the tensor. All that is done to rows is
    per-row sums and element-wise ops, which do not care about the order within
    a row. A read-only tensor (the gradient) is copied if its layout differs.
    """
    strides = (tensor if layout is None else layout).stride()
    first = (0,) if per_neuron else ()
    order = first + tuple(sorted(range(len(first), tensor.ndim), key=lambda dim: -strides[dim]))
    n_rows = tensor.shape[0] if per_neuron else 1
    permuted = tensor.permute(order)
    return permuted.view(n_rows, -1) if writable else permuted.reshape(n_rows, -1)


# ------------------------------------------------------------ the functional core


def rotational_update(params: list[torch.Tensor], grads: list[torch.Tensor], moments: list[list[torch.Tensor]],
                      norms: list[torch.Tensor], rms_sqs: list[torch.Tensor], speeds: list[torch.Tensor | None],
                      steps: list[int], *, inner: str, eta_r: float, beta1: float, beta2: float, momentum: float,
                      eps: float, weight_decay: float, per_neuron: bool, zero_mean: bool, rms_beta: float,
                      rotational_eps: float, impl: str = "chunked", scratch: dict | None = None) -> None:
    """Lines 9-18 of Algorithm 1 on every tensor of `params`, in place (see the module docstring).

    Per tensor: its gradient; its inner optimizer's state, the tensors named in
    _MOMENTS[inner] (updated in place); its neuron norms n; ν (rms_sq, updated in
    place); the imbalance speed factors or None; its step count t, counting this
    step. The scalars are the param group's hyperparameters and η̂_r (eta_r).
    scratch: a dict the caller keeps so that the chunked paths reuse their
    scratch buffer from call to call (None: a fresh one per call).
    """
    if impl not in IMPLS:
        raise UserError(f"unknown impl {impl!r}; choose one of {', '.join(IMPLS)}")
    pieces = [_Piece(rows=_neuron_rows(p, per_neuron), grad=_neuron_rows(g, per_neuron, layout=p, writable=False),
                     moments=[_neuron_rows(m, per_neuron, layout=p) for m in ms], norm=norm, rms_sq=rms_sq,
                     speed=speed, step=step)
              for p, g, ms, norm, rms_sq, speed, step in zip(params, grads, moments, norms, rms_sqs, speeds, steps)]
    hyper = dict(betas=(beta1, beta2), momentum=momentum, eps=eps, weight_decay=weight_decay)
    rotation = dict(eta_r=eta_r, rms_beta=rms_beta, eps=rotational_eps, zero_mean=zero_mean)
    if impl == "grouped":
        for group in _shape_groups(pieces):
            _update_stacked(inner, group, hyper, rotation)
    elif impl == "compiled":
        _update_compiled(inner, pieces, hyper, rotation, {} if scratch is None else scratch)
    elif impl == "kernel":
        _update_kernel(inner, pieces, hyper, rotation, {} if scratch is None else scratch)
    else:
        _update_chunked(inner, pieces, hyper, rotation, _rotate, {} if scratch is None else scratch)


class _Piece(NamedTuple):
    """One tensor's (or a stack of tensors') neuron rows [k, C] with their state; norm, rms_sq, speed: [k]."""
    rows: torch.Tensor
    grad: torch.Tensor
    moments: list[torch.Tensor]
    norm: torch.Tensor
    rms_sq: torch.Tensor
    speed: torch.Tensor | None
    step: int

    def chunk(self, start: int, stop: int) -> "_Piece":
        """Neurons start to stop (views)."""
        part = slice(start, stop)
        return _Piece(self.rows[part], self.grad[part], [m[part] for m in self.moments], self.norm[part],
                      self.rms_sq[part], None if self.speed is None else self.speed[part], self.step)


def _update(inner: str, piece: _Piece, out: torch.Tensor, hyper: dict, rotation: dict, rotate) -> None:
    """Lines 9-18 for the rows of `piece`; out: scratch rows of the same shape."""
    direction, unit = _DIRECTIONS[inner](piece.rows, piece.grad, piece.moments, out, hyper, piece.step)
    rotate(piece.rows, direction, out, piece.norm, piece.rms_sq, piece.speed, unit=unit,
           rms_correction=1 - rotation["rms_beta"] ** piece.step, **rotation)


def _update_chunked(inner: str, pieces: list[_Piece], hyper: dict, rotation: dict, rotate, scratch: dict) -> None:
    """Tensor by tensor; on the CPU in chunks of whole neurons that stay in the cache.

    scratch: {(device, dtype): buffer}, one buffer for all chunks, grown as needed.
    """
    for piece in pieces:
        n_neurons, width = piece.rows.shape
        chunk = max(1, _CPU_CHUNK_ELEMENTS // width) if piece.rows.device.type == "cpu" else n_neurons
        key = (piece.rows.device, piece.rows.dtype)
        if key not in scratch or scratch[key].numel() < min(chunk, n_neurons) * width:
            scratch[key] = piece.rows.new_empty(min(chunk, n_neurons) * width)
        for start in range(0, n_neurons, chunk):
            part = piece.chunk(start, start + chunk)
            _update(inner, part, scratch[key][: part.rows.numel()].view(-1, width), hyper, rotation, rotate)


def _shape_groups(pieces: list[_Piece]) -> list[list[_Piece]]:
    """The pieces that can be stacked: same row shape, device, dtype and step, all with or all without speeds."""
    groups = {}
    for piece in pieces:
        key = (piece.rows.shape, piece.rows.device, piece.rows.dtype, piece.step, piece.speed is None)
        groups.setdefault(key, []).append(piece)
    return list(groups.values())


def _update_stacked(inner: str, group: list[_Piece], hyper: dict, rotation: dict) -> None:
    """One shape group at once: its rows stacked into one [n·k, C] piece, updated, and copied back.

    A single tensor is updated where it is, without copies.
    """
    if len(group) == 1:
        _update(inner, group[0], torch.empty_like(group[0].rows), hyper, rotation, _rotate)
        return
    stacked = _Piece(
        rows=torch.cat([piece.rows for piece in group]),
        grad=torch.cat([piece.grad for piece in group]),
        moments=[torch.cat(ms) for ms in zip(*(piece.moments for piece in group))],
        norm=torch.cat([piece.norm for piece in group]),
        rms_sq=torch.cat([piece.rms_sq for piece in group]),
        speed=None if group[0].speed is None else torch.cat([piece.speed for piece in group]),
        step=group[0].step,
    )
    _update(inner, stacked, torch.empty_like(stacked.rows), hyper, rotation, _rotate)
    k = group[0].rows.shape[0]
    written = [stacked.rows, *stacked.moments, stacked.rms_sq]
    targets = [[piece.rows for piece in group], *zip(*(piece.moments for piece in group)),
               [piece.rms_sq for piece in group]]
    _copy_all([t for ts in targets for t in ts], [part for w in written for part in w.split(k)])


def _copy_all(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """target.copy_(source) for each pair: one kernel launch with torch's private foreach op where torch has it."""
    if _FOREACH_COPY is not None:
        _FOREACH_COPY(targets, sources)
    else:
        for target, source in zip(targets, sources):
            target.copy_(source)


_FOREACH_COPY = getattr(torch, "_foreach_copy_", None)  # private torch API (torch.optim's own multi-tensor code)


# ------------------------------------------------------ inner update directions
# Each computes d = Δ_g p/(−η·unit) for a chunk of neuron rows (lines 9-11), updates the
# inner optimizer's moments in place, and returns (d, unit). d is `out` (the scratch rows)
# or a moment buffer, which the caller must not change; `unit` is a factor common to the
# whole tensor (a sign, or Adam's bias corrections), which thus costs no pass over d.


def _adamw_direction(p, grad, moments, out, group, step):
    exp_avg, exp_avg_sq = moments
    beta1, beta2 = group["betas"]
    if _FUSED_ADAM is not None and out.device.type in _FUSED_ADAM_DEVICES:
        # torch's fused Adam kernel (the one behind torch.optim.Adam(fused=True)) on a zeroed
        # stand-in parameter with lr 1 and no weight decay leaves out = −m̂/(sqrt(v̂) + ε) and
        # updates the moments: one pass over memory instead of five element-wise ops.
        out.zero_()
        _FUSED_ADAM([out], [grad], [exp_avg], [exp_avg_sq], [], [torch.full((), float(step), device=out.device)],
                    lr=1.0, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=group["eps"], amsgrad=False,
                    maximize=False)
        return out, -1.0
    # The same with public ops (eq. 7-9): m̂/(sqrt(v̂) + ε) = m/(sqrt(v)/sqrt(1−β2^t) + ε) / (1−β1^t).
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    torch.pow(exp_avg_sq, 0.5, out=out).div_(math.sqrt(1 - beta2**step)).add_(group["eps"])  # pow: see _rotate
    torch.div(exp_avg, out, out=out)
    return out, 1 / (1 - beta1**step)


def _adam_l2_direction(p, grad, moments, out, group, step):
    exp_avg, exp_avg_sq = moments
    beta1, beta2 = group["betas"]
    exp_avg.lerp_(grad, 1 - beta1)
    # Adam+ℓ2 (eq. 76-78) divides by the second moment of the regularised gradient g + λp; its
    # first moment would add λp to the direction, which is the Δ_λ p that an RV leaves out.
    regularised = torch.add(grad, p, alpha=group["weight_decay"], out=out)
    exp_avg_sq.mul_(beta2).addcmul_(regularised, regularised, value=1 - beta2)
    # m̂/(sqrt(v̂) + ε) = m/(sqrt(v) + ε·sqrt(1−β2^t)) · sqrt(1−β2^t)/(1−β1^t)
    bias2 = math.sqrt(1 - beta2**step)
    torch.pow(exp_avg_sq, 0.5, out=out).add_(group["eps"] * bias2)  # pow, not sqrt: see _rotate
    torch.div(exp_avg, out, out=out)
    return out, bias2 / (1 - beta1**step)


def _sgdm_direction(p, grad, moments, out, group, step):
    (momentum_buffer,) = moments
    momentum_buffer.mul_(group["momentum"]).add_(grad)  # eq. 44 without its ℓ2 term, no dampening
    return momentum_buffer, 1.0


def _lion_direction(p, grad, moments, out, group, step):
    (exp_avg,) = moments
    beta1, beta2 = group["betas"]
    torch.lerp(exp_avg, grad, 1 - beta1, out=out).sign_()  # eq. 55
    exp_avg.lerp_(grad, 1 - beta2)  # eq. 56
    return out, 1.0


# torch's private fused Adam kernel, where this torch has it (it is not public API); the devices
# it runs on are those of build_optimizer's fused AdamW. Without it the public ops above run.
_FUSED_ADAM = getattr(torch, "_fused_adam_", None)
_FUSED_ADAM_DEVICES = ("cpu", "cuda")

_DIRECTIONS = {
    "adamw": _adamw_direction,
    "adam-l2": _adam_l2_direction,
    "sgdm": _sgdm_direction,
    "lion": _lion_direction,
}


def _rotate(rows, direction, out, norm, rms_sq, speed, *, unit, eta_r, rms_beta, rms_correction, eps, zero_mean):
    """Lines 12-18 for a chunk of neurons: rotate each row of `rows` in place (see _rotation).

    rows, direction, out: [k, C] (out may be direction; it is overwritten); norm, rms_sq, speed: [k].
    The true direction is unit·direction; ν (rms_sq) is kept in those true units.
    """
    a, b, shift = _rotation(rows, direction, norm, rms_sq, speed, unit=unit, eta_r=eta_r, rms_beta=rms_beta,
                            rms_correction=rms_correction, eps=eps, zero_mean=zero_mean)
    if shift is not None:
        torch.addcmul(shift.unsqueeze(1), direction, b.unsqueeze(1), out=out)
    else:
        torch.mul(direction, b.unsqueeze(1), out=out)
    torch.addcmul(out, rows, a.unsqueeze(1), out=rows)


def _rotation(rows, direction, norm, rms_sq, speed, *, unit, eta_r, rms_beta, rms_correction, eps, zero_mean):
    """Lines 12-18 as one update per row, p ← a·p + b·d + shift: returns a, b, shift ([k]; shift None
    without centring) and updates ν (rms_sq) in place.

    With c = p − p̄ and e = d − d̄, line 12 is d⊥ = e − r·c with r = ⟨e, c⟩/‖c‖², so
    ‖d⊥‖² = ‖e‖² − r·⟨e, c⟩ (Pythagoras). Lines 16-18 with step s, p ← n·(c − s·d⊥)/‖c − s·d⊥‖
    and ‖c − s·d⊥‖² = ‖c‖² + s²‖d⊥‖², are then p ← a·p + b·d − a·p̄ − b·d̄ with
    m = n/‖c − s·d⊥‖, a = m·(1 + s·r), b = −m·s: five sums per row and one update pass.
    Square roots are pow(x, 0.5): torch.sqrt on the CPU starts worker threads
    from 2048 elements on, which costs milliseconds when the cores are busy.
    """
    width = rows.shape[1]
    p_sq, dot, d_sq = _row_products(rows, direction)
    # Where d⊥ is below the rounding error of these sums (d along p − p̄ or constant), it is taken as
    # 0, as exact arithmetic would give: b·d then cancels the mean and radial parts exactly.
    negligible = _ROUNDING_MARGIN * torch.finfo(rows.dtype).eps * d_sq
    if zero_mean:
        p_mean, d_mean = rows.mean(dim=1), direction.mean(dim=1)
        p_sq = p_sq - width * p_mean.square()  # ‖c‖²
        dot = dot - width * p_mean * d_mean  # ⟨e, c⟩
        d_sq = d_sq - width * d_mean.square()  # ‖e‖²
    radial = dot / p_sq
    perp_sq = d_sq - radial * dot  # ‖d⊥‖²
    perp_sq = torch.where(perp_sq > negligible, perp_sq, 0.0)
    # Line 14. (Not add_'s alpha: torch.compile 2.13 miscomputes a float alpha that varies between calls.)
    rms_sq.mul_(rms_beta).add_(perp_sq * ((1 - rms_beta) * unit * unit))
    # Line 16's step s along d⊥: η̂_r·n/(RMS + ε) in true units, times unit for direction's.
    size = eta_r * unit * norm / ((rms_sq / rms_correction).pow(0.5) + eps)
    if speed is not None:
        size = size * speed
    size = torch.where(perp_sq > 0, size, 0.0)  # no step along a d⊥ that is only rounding error
    scale = norm * torch.rsqrt(p_sq + size.square() * perp_sq)
    a, b = scale * (1 + size * radial), -scale * size
    return a, b, (-a * p_mean - b * d_mean) if zero_mean else None


# How many float roundings of Σd² the formula for ‖d⊥‖² may accumulate before it is noise.
_ROUNDING_MARGIN = 64


def _row_products(rows, direction):
    """Σp², Σp·d and Σd² of each row.

    Eagerly, vector_norm is torch's fastest reduction on the CPU; compiled, plain
    sums of products fuse with the means into one sweep over the rows.
    """
    if torch.compiler.is_compiling():
        return (rows * rows).sum(dim=1), (rows * direction).sum(dim=1), (direction * direction).sum(dim=1)
    vector_norm = torch.linalg.vector_norm
    return (vector_norm(rows, dim=1).square_(), torch.linalg.vecdot(direction, rows),
            vector_norm(direction, dim=1).square_())


# ------------------------------------------------------------- impl="compiled"
# Two functions of whole tensors, each compiled by torch.compile into one loop over the rows:
# _sums reads p, g and the moments and gives each row's a, b, shift and new ν; _apply reads them
# again, recomputes d, and writes the moments, ν and p ← a·p + b·d + shift. d is never stored. A
# step thus reads p, g and the moments twice and writes them once (fused AdamW: once and once),
# and no buffer of a tensor's size is allocated. On this project's 2-core test machine each of the
# two loops takes about as long as fused AdamW's whole step (both are bound by memory traffic),
# so the step costs about twice fused AdamW's; see benchmarks/bench_optim.py.


def _direction_values(inner: str, p, grad, moments, hyper: dict, adam_scale: float):
    """Lines 9-11 as values, for compiling: (d, new moments), with unit·d the inner optimizer's
    Δ_g p/(−η), as _DIRECTIONS computes in place. adam_scale: sqrt(1 − β2^t) (Adam's bias correction)."""
    beta1, beta2 = hyper["betas"]
    if inner in ("adamw", "adam-l2"):
        exp_avg, exp_avg_sq = moments
        seen = grad if inner == "adamw" else grad + hyper["weight_decay"] * p  # Adam+ℓ2: see _adam_l2_direction
        m = exp_avg.lerp(grad, 1 - beta1)
        v = exp_avg_sq * beta2 + seen * seen * (1 - beta2)
        if inner == "adamw":
            return m / (v.pow(0.5) * (1 / adam_scale) + hyper["eps"]), (m, v)  # a product: cheaper than /
        return m / (v.pow(0.5) + hyper["eps"] * adam_scale), (m, v)
    if inner == "sgdm":
        (momentum_buffer,) = moments
        new = momentum_buffer * hyper["momentum"] + grad
        return new, (new,)
    (exp_avg,) = moments
    return exp_avg.lerp(grad, 1 - beta1).sign(), (exp_avg.lerp(grad, 1 - beta2),)


def _unit(inner: str, hyper: dict, step: int) -> tuple[float, float]:
    """The factor between d and the true direction and sqrt(1 − β2^t), as _DIRECTIONS use them."""
    beta1, beta2 = hyper["betas"]
    adam_scale = math.sqrt(1 - beta2**step)
    if inner == "adamw":
        return 1 / (1 - beta1**step), adam_scale
    if inner == "adam-l2":
        return adam_scale / (1 - beta1**step), adam_scale
    return 1.0, adam_scale


def _sums(inner, rows, grad, moments, norm, rms_sq, speed, hyper, rotation, unit, adam_scale, rms_correction):
    """The per-row a, b, shift of _rotation (shift: zeros without centring) and the new ν; changes nothing."""
    direction, _ = _direction_values(inner, rows, grad, moments, hyper, adam_scale)
    new_rms_sq = rms_sq.clone()
    a, b, shift = _rotation(rows, direction, norm, new_rms_sq, speed, unit=unit, rms_correction=rms_correction,
                            **rotation)
    return a, b, torch.zeros_like(a) if shift is None else shift, new_rms_sq


def _apply(inner, rows, grad, moments, rms_sq, a, b, shift, new_rms_sq, hyper, adam_scale):
    """Writes the step: the inner optimizer's moments, ν, and p ← a·p + b·d + shift, in place."""
    direction, new_moments = _direction_values(inner, rows, grad, moments, hyper, adam_scale)
    for moment, new in zip(moments, new_moments):
        moment.copy_(new)
    rms_sq.copy_(new_rms_sq)
    rows.copy_(rows * a.unsqueeze(1) + direction * b.unsqueeze(1) + shift.unsqueeze(1))


# Inductor's settings: never store d in a buffer (by default it does, as d is read several times):
# recomputing it costs less than writing and reading it back from memory.
_INDUCTOR_OPTIONS = {"realize_reads_threshold": 1000, "realize_cpu_opcount_threshold": 1000,
                     "realize_cpu_acc_reads_threshold": 1000}
_compiled = None  # (sums, apply) through torch.compile, made at the first use; False if compiling failed


def _update_compiled(inner: str, pieces: list[_Piece], hyper: dict, rotation: dict, scratch: dict) -> None:
    """impl="compiled": each tensor whole through the two compiled functions.

    The compilation is paid once per process (dynamic shapes: one kernel for every
    tensor shape; the step's scalars are arguments, so no step or lr compiles again)
    and torch caches the kernels on disk for later processes. If it fails (no C++
    compiler, a backend torch lacks), a warning says why and the chunked eager code
    runs instead, for the rest of the process.
    """
    global _compiled
    if _compiled is None:
        _compiled = tuple(torch.compile(function, dynamic=True, fullgraph=True, options=_INDUCTOR_OPTIONS)
                          for function in (_sums, _apply))
    for index, piece in enumerate(pieces):
        if _compiled is False:
            return _update_chunked(inner, pieces[index:], hyper, rotation, _rotate, scratch)
        sums, apply = _compiled
        unit, adam_scale = _unit(inner, hyper, piece.step)
        rms_correction = 1 - rotation["rms_beta"] ** piece.step
        try:
            coefficients = sums(inner, piece.rows, piece.grad, piece.moments, piece.norm, piece.rms_sq,
                                piece.speed, hyper, rotation, unit, adam_scale, rms_correction)
            apply(inner, piece.rows, piece.grad, piece.moments, piece.rms_sq, *coefficients, hyper, adam_scale)
        except Exception as error:  # noqa: BLE001 - whatever breaks the compiler, the eager code still works
            # torch wraps the compiler's own error (BackendCompilerFailed.inner_exception): report that one.
            while (inner_error := getattr(error, "inner_exception", None) or error.__cause__) is not None:
                error = inner_error
            warnings.warn(f"torch.compile of the rotational step failed, so it runs eagerly: "
                          f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}")
            _compiled = False
            return _update_chunked(inner, pieces[index:], hyper, rotation, _rotate, scratch)


# --------------------------------------------------------------- impl="kernel"
# rotational_kernel.cpp does lines 9-18 row by row: one pass over a row for the new moments, d
# (kept in a row-sized buffer) and the five sums, then the row's a, b, shift and ν, then a second
# pass p ← a·p + b·d + shift while the row is still in the cache. A step thus reads p, g and the
# moments from memory once and writes them once, as fused AdamW does. It is built with torch's
# cpp_extension (g++ and ninja) at the first use and cached in torch's extension directory, so
# later processes on the machine load it in a fraction of a second.

_KERNEL_SOURCE = Path(__file__).with_name("rotational_kernel.cpp")
_KERNEL_INNERS = {"adamw": 0, "adam-l2": 1, "sgdm": 2, "lion": 3}  # rotational_kernel.cpp's enum Inner
# Rows wider than this (per-tensor rotation of a big tensor) would not fit in the cache with their
# d buffer, and the buffer would cost a tensor's size of memory: they take the chunked path.
_KERNEL_MAX_WIDTH = 2**16
_kernel = None  # the built extension module, made at the first use; False if building it failed


def _load_kernel():
    """Build (or load the cached build of) rotational_kernel.cpp; raises whatever the build raises.

    -march=native makes the build specific to this CPU's instruction set, so the CPU's flags are
    part of the extension's name: a home directory shared by different machines keeps one
    build per instruction set. -fopenmp: at::parallel_for is OpenMP in headers (without it the
    rows run on one thread), and `omp simd` lets g++ vectorise the sums (a float reduction in
    another order) without -ffast-math's licence over the rest. The OpenMP runtime is the one
    torch has loaded already (same soname), so there is one thread pool.
    """
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # the pip package's ninja, where the environment's bin is not on PATH
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    flags = ""
    if Path("/proc/cpuinfo").exists():
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    name = "rotsweep_rotational_" + hashlib.sha256(flags.encode()).hexdigest()[:12]
    return cpp_extension.load(name=name, sources=[str(_KERNEL_SOURCE)],
                              extra_cflags=["-O3", "-march=native", "-fopenmp", "-fno-math-errno"],
                              extra_ldflags=["-fopenmp"], verbose=False)


def _kernel_supports(piece: _Piece) -> bool:
    tensors = [piece.rows, piece.grad, *piece.moments, piece.norm, piece.rms_sq]
    if piece.speed is not None:
        tensors.append(piece.speed)
    return (piece.rows.shape[1] <= _KERNEL_MAX_WIDTH
            and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors))


def _update_kernel(inner: str, pieces: list[_Piece], hyper: dict, rotation: dict, scratch: dict) -> None:
    """impl="kernel": each float32, contiguous CPU tensor through rotational_kernel.cpp, the rest chunked.

    If the kernel cannot be built (no C++ compiler, no ninja), a warning says why, once, and
    the chunked code runs instead, for the rest of the process.
    """
    global _kernel
    if _kernel is None:
        try:
            _kernel = _load_kernel()
        except Exception as error:  # noqa: BLE001 - whatever breaks the build, the eager code still works
            warnings.warn(f"building the rotational step's C++ kernel failed, so it runs eagerly: "
                          f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}")
            _kernel = False
    unsupported = []
    for piece in pieces:
        if _kernel is False or not _kernel_supports(piece):
            unsupported.append(piece)
            continue
        unit, adam_scale = _unit(inner, hyper, piece.step)
        second_moment = piece.moments[1] if len(piece.moments) > 1 else piece.rows.new_empty(0)
        _kernel.step_rows(_KERNEL_INNERS[inner], piece.rows, piece.grad, piece.moments[0], second_moment,
                          piece.norm, piece.rms_sq, piece.speed, hyper["betas"][0], hyper["betas"][1],
                          hyper["momentum"], hyper["eps"], hyper["weight_decay"], adam_scale, unit,
                          rotation["eta_r"], rotation["rms_beta"], 1 - rotation["rms_beta"] ** piece.step,
                          rotation["eps"], rotation["zero_mean"])
    if unsupported:
        _update_chunked(inner, unsupported, hyper, rotation, _rotate, scratch)
