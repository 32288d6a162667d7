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
neurons are a seeded random choice instead of the leading rows.

How it is computed: d ⊥ (p − p̄) after line 12, so ‖(p − p̄) − s·d‖² =
‖p − p̄‖² + s²‖d‖², and lines 16-18 become one update p ← a·p + b·d + c with
per-neuron a, b, c from the current (measured) ‖p − p̄‖: the norm is exact again
after every step. For AdamW, torch's fused Adam kernel computes d and the
moments in one pass. On the CPU each tensor goes through in chunks of whole
neurons that fit in the cache, with one reused scratch buffer: the dozen passes
over a chunk then cost little more than one trip through memory, where
torch._foreach_* ops over whole tensors make a trip (and allocate fresh memory)
per pass. benchmarks/bench_optim.py measures the result.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.optim.adam import adam as torch_adam
from torch.optim.adamw import adamw as torch_adamw
from torch.optim.sgd import sgd as torch_sgd

from rotsweep import theory
from rotsweep.errors import UserError
from rotsweep.optim.lion import lion

INNERS = ("adamw", "adam-l2", "sgdm", "lion")
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
    in the state dict.
    """

    def __init__(self, params, inner: str = "adamw", *, lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), momentum: float = 0.9, eps: float = 1e-8,
                 per_neuron: bool = True, zero_mean: bool = True, rms_beta: float = 0.9,
                 rotational_eps: float = 1e-8, eta_r: float | None = None, eta_r_from: str | None = None,
                 imbalance_mode: str | None = None, imbalance_portion: float = 0.5, imbalance_factor: float = 10.0,
                 imbalance_seed: int = 0):
        if inner not in INNERS:
            raise UserError(f"unknown inner optimizer {inner!r}; choose one of {', '.join(INNERS)}")
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
        self._scratch = {}  # (device, dtype) -> reused buffer for one chunk's projected direction
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
            rotational = [p for p in with_grad if self._is_rotational(group, p)]
            if rotational:
                eta_r = self._eta_r(group)
                for p in rotational:
                    self._rotational_step(group, p, eta_r)
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

    def _rotational_step(self, group: dict, p: torch.Tensor, eta_r: float) -> None:
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0  # a Python int: read at every step for the bias corrections without a device sync
            for name in _MOMENTS[self.inner]:
                state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["rms_sq"] = torch.zeros_like(state["norm"])  # ν of line 14, one per neuron
        state["step"] += 1
        step = state["step"]

        per_neuron = group["per_neuron"]
        rows = _neuron_rows(p, per_neuron)
        grad = _neuron_rows(p.grad, per_neuron, layout=p, writable=False)
        moments = [_neuron_rows(state[name], per_neuron, layout=p) for name in _MOMENTS[self.inner]]
        n_neurons, width = rows.shape
        chunk = max(1, _CPU_CHUNK_ELEMENTS // width) if p.device.type == "cpu" else n_neurons
        scratch = self._scratch_buffer(p, min(chunk, n_neurons) * width)
        speed = state.get("rotation_speed")
        rms_beta = group["rms_beta"]
        for start in range(0, n_neurons, chunk):
            part = slice(start, start + chunk)
            out = scratch[: rows[part].numel()].view(-1, width)
            direction, unit = _DIRECTIONS[self.inner](rows[part], grad[part], [m[part] for m in moments], out,
                                                      group, step)
            _rotate(rows[part], direction, out, state["norm"][part], state["rms_sq"][part],
                    None if speed is None else speed[part], unit=unit, eta_r=eta_r, rms_beta=rms_beta,
                    rms_correction=1 - rms_beta**step, eps=group["rotational_eps"], zero_mean=group["zero_mean"])

    def _scratch_buffer(self, like: torch.Tensor, numel: int) -> torch.Tensor:
        key = (like.device, like.dtype)
        buffer = self._scratch.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = self._scratch[key] = torch.empty(numel, device=like.device, dtype=like.dtype)
        return buffer


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


# ------------------------------------------------------ inner update directions
# Each computes d = Δ_g p/(−η·unit) for a chunk of neuron rows (lines 9-11), updates the
# inner optimizer's moments in place, and returns (d, unit). d is `out` (the scratch rows)
# or a moment buffer, which the caller must not change; `unit` is a factor common to the
# whole tensor (a sign, or Adam+ℓ2's bias corrections), which thus costs no pass over d.


def _adamw_direction(p, grad, moments, out, group, step):
    exp_avg, exp_avg_sq = moments
    beta1, beta2 = group["betas"]
    # torch's fused Adam kernel (the one behind torch.optim.Adam(fused=True)) on a zeroed
    # stand-in parameter with lr 1 and no weight decay leaves out = −m̂/(sqrt(v̂) + ε) and
    # updates the moments: one pass over memory instead of six element-wise ops.
    out.zero_()
    torch._fused_adam_([out], [grad], [exp_avg], [exp_avg_sq], [], [torch.full((), float(step), device=out.device)],
                       lr=1.0, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=group["eps"], amsgrad=False,
                       maximize=False)
    return out, -1.0


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


_DIRECTIONS = {
    "adamw": _adamw_direction,
    "adam-l2": _adam_l2_direction,
    "sgdm": _sgdm_direction,
    "lion": _lion_direction,
}


def _rotate(rows, direction, out, norm, rms_sq, speed, *, unit, eta_r, rms_beta, rms_correction, eps, zero_mean):
    """Lines 12-18 for a chunk of neurons: rotate each row of `rows` in place.

    rows, direction, out: [k, C] (out may be direction); norm, rms_sq, speed: [k].
    The true direction is unit·direction; ν (rms_sq) is kept in those true units.
    Square roots are pow(x, 0.5): torch.sqrt on the CPU starts worker threads
    from 2048 elements on, which costs milliseconds when the cores are busy.
    """
    width = rows.shape[1]
    p_sq = torch.linalg.vector_norm(rows, dim=1).square_()
    dot = torch.linalg.vecdot(direction, rows)
    if zero_mean:
        p_mean, d_mean = rows.mean(dim=1), direction.mean(dim=1)
        p_sq -= width * p_mean.square()  # ‖p − p̄‖²
        dot -= width * d_mean * p_mean  # ⟨d − d̄, p − p̄⟩
    radial = dot / p_sq
    # Line 12: out ← d − radial·(p − p̄) − d̄, orthogonal to p − p̄ and to 1.
    torch.addcmul(direction, rows, radial.neg().unsqueeze(1), out=out)
    if zero_mean:
        out.sub_((d_mean - radial * p_mean).unsqueeze(1))
    perp_sq = torch.linalg.vector_norm(out, dim=1).square_()
    rms_sq.mul_(rms_beta).add_(perp_sq, alpha=(1 - rms_beta) * unit**2)  # line 14
    # Line 16's step along `out`: η̂_r·n/(RMS + ε) in true units, times unit for out's.
    size = eta_r * unit * norm / ((rms_sq / rms_correction).pow_(0.5) + eps)
    if speed is not None:
        size *= speed
    # Lines 16-18: p ← n·q/‖q‖ with q = (p − p̄) − size·out, and ‖q‖² = ‖p − p̄‖² + size²·‖out‖².
    scale = norm * torch.rsqrt(p_sq + size.square() * perp_sq)
    rows.mul_(scale.unsqueeze(1)).addcmul_(out, (-scale * size).unsqueeze(1))
    if zero_mean:
        rows.sub_((scale * p_mean).unsqueeze(1))
