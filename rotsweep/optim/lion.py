"""Lion (Chen et al., 2023) with decoupled weight decay, as written in the paper (App. D):

    v_t = sign(β1·m_{t−1} + (1−β1)·g_t)          (55)
    m_t = β2·m_{t−1} + (1−β2)·g_t                 (56)
    p_t = p_{t−1} − η·(v_t + λ·p_{t−1})           (57)

`lion` is the functional core over lists of tensors (torch._foreach_* ops, the
shape of torch.optim's multi-tensor AdamW); the `Lion` class only keeps state
and param groups. The rotational wrapper uses `lion` for its non-rotational
parameters.
"""

from __future__ import annotations

import torch

from rotsweep.errors import UserError


def lion(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor], *,
         lr: float, beta1: float, beta2: float, weight_decay: float) -> None:
    """One Lion step (eq. 55-57) on every tensor of `params`, in place."""
    if not params:
        return
    # lerp(m, g, 1−β1) = β1·m + (1−β1)·g, the argument of the sign in eq. 55.
    directions = torch._foreach_lerp(exp_avgs, grads, 1 - beta1)
    torch._foreach_sign_(directions)
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_add_(params, directions, alpha=-lr)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta2)  # eq. 56, after the sign used m_{t−1}


class Lion(torch.optim.Optimizer):
    """Lion with decoupled weight decay (eq. 55-57). Defaults are Chen et al.'s."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0):
        if lr < 0 or weight_decay < 0:
            raise UserError(f"Lion needs lr >= 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}")
        if not all(0 <= beta < 1 for beta in betas):
            raise UserError(f"Lion needs betas in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if not self.state[p]:
                    self.state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            beta1, beta2 = group["betas"]
            lion(params, [p.grad for p in params], [self.state[p]["exp_avg"] for p in params],
                 lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"])
        return loss
