"""Optimizers of the paper: AdamW, Adam+ℓ2, SGDM, Lion, and their rotational variants.

`build_optimizer` is the single entry point for training code:

    adamw    torch.optim.AdamW                       decoupled weight decay (eq. 11)
    adam-l2  torch.optim.Adam(weight_decay=λ)        ℓ2-regularisation through the moments (eq. 76-78)
    sgdm     torch.optim.SGD(momentum, weight_decay) no dampening (eq. 44-45)
    lion     rotsweep.optim.Lion                     decoupled weight decay (eq. 55-57)

and with rotational=True the rotational variant of the same optimizer
(`RotationalWrapper`, Algorithm 1; its functional core is `rotational_update`).
Param groups may carry their own weight_decay (0 for biases and gains) and a
"rotational" key (None: the default rule, weight decay > 0 and ndim >= 2).
"""

from __future__ import annotations

import inspect

import torch

from rotsweep.errors import UserError
from rotsweep.optim.lion import Lion, lion
from rotsweep.optim.rotational import IMBALANCES, IMPLS, INNERS, RotationalWrapper, rotational_update

OPTIMIZERS = INNERS
# The options of the rotational variants beyond the hyperparameters every optimizer takes.
ROTATIONAL_OPTIONS = tuple(name for name, parameter in inspect.signature(RotationalWrapper).parameters.items()
                           if parameter.kind is inspect.Parameter.KEYWORD_ONLY
                           and name not in ("lr", "weight_decay", "betas", "momentum", "eps"))

__all__ = ["OPTIMIZERS", "ROTATIONAL_OPTIONS", "IMBALANCES", "IMPLS", "Lion", "lion", "RotationalWrapper",
           "rotational_update", "build_optimizer"]


def build_optimizer(name: str, params_or_groups, *, lr: float, weight_decay: float = 0.0,
                    betas: tuple[float, float] = (0.9, 0.999), momentum: float = 0.9, eps: float = 1e-8,
                    rotational: bool = False, **rotational_options) -> torch.optim.Optimizer:
    """The optimizer `name` (see the module docstring), or its rotational variant.

    rotational_options go to RotationalWrapper (per_neuron, zero_mean, rms_beta,
    rotational_eps, eta_r, eta_r_from, imbalance_mode, ..., and impl: how the
    step is computed, "chunked", "grouped", "compiled" or "kernel"). The plain AdamW and Adam
    use torch's fused kernel when every parameter is a floating-point tensor on
    the CPU or a GPU.
    """
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    unknown = sorted(set(rotational_options) - set(ROTATIONAL_OPTIONS))
    if unknown:
        raise UserError(f"unknown optimizer option(s) {', '.join(unknown)}; "
                        f"the rotational variants take {', '.join(ROTATIONAL_OPTIONS)}")
    if rotational:
        return RotationalWrapper(params_or_groups, name, lr=lr, weight_decay=weight_decay, betas=betas,
                                 momentum=momentum, eps=eps, **rotational_options)
    if rotational_options:
        raise UserError(f"{', '.join(sorted(rotational_options))} only apply to rotational variants; "
                        "pass rotational=True or leave them out")
    groups = _materialised_groups(params_or_groups)
    if name in ("adamw", "adam-l2"):
        adam_class = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        fused = True if _fused_kernel_fits(groups) else None  # None: torch's own default
        return adam_class(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)
    if name == "sgdm":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, dampening=0, weight_decay=weight_decay)
    return Lion(groups, lr=lr, betas=betas, weight_decay=weight_decay)


def _materialised_groups(params_or_groups) -> list[dict]:
    """Param groups with their parameters in lists, so that generators can be read twice."""
    items = list(params_or_groups)
    if items and isinstance(items[0], dict):
        return [dict(group, params=list(group["params"])) for group in items]
    return [{"params": items}]


def _fused_kernel_fits(groups: list[dict]) -> bool:
    tensors = [p[1] if isinstance(p, tuple) else p for group in groups for p in group["params"]]
    return all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors)
