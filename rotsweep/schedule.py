"""Learning-rate schedules of the paper's recipes, as a pure function of the step.

- cosine: min + (max - min) * ((1 + cos(pi t / T)) / 2) ** power, stepped per
  update (timm's --sched-on-updates). power = 2 is the paper's "cos^2" for
  rotational variants, whose rotation scales with sqrt(lr) and so follows a
  plain cosine.
- constant: max.
- onecycle: torch's OneCycleLR with cosine annealing, as in the Wikitext runs:
  from max/div_factor up to max over pct_start * T steps, then down to
  max/(div_factor * final_div_factor), both halves cosine-shaped.
- Linear warmup over the first warmup steps, in one of two styles
  (RunConfig.warmup_style):
  - "timm" (the CIFAR and ImageNet recipes): from warmup_start_lr towards the
    peak lr; warmup overlaps the schedule (it is not prepended), so the cosine
    is measured from step 0;
  - "nanogpt" (the OpenWebText recipe, nanoGPT's get_lr as run by epfml/REQ
    5_2 warmup and 5_1_B gpt2_owt.py): lr·t/warmup from 0, then the cosine
    (cosine schedule only) over the remaining steps,
    min + (max − min)·(1 + cos(π·(t − warmup)/(T − warmup)))/2.

Being a function of the step (not an object with state) makes resuming from a
checkpoint exact: the lr at step t is the same whether or not the run was
interrupted.
"""

from __future__ import annotations

import math

import numpy as np

from rotsweep.config import RunConfig


def _cosine_interpolation(start: float, end: float, fraction: float) -> float:
    """Cosine-shaped move from start (fraction 0) to end (fraction 1)."""
    return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2


def learning_rate(config: RunConfig, step: int, total_steps: int, warmup_steps: int) -> float:
    """The learning rate applied by optimizer step `step` (0-based) of `total_steps`."""
    peak = config.lr
    fraction = min(step / max(total_steps, 1), 1.0)
    if config.warmup_style == "nanogpt":
        if step < warmup_steps:
            return peak * step / warmup_steps
        # The cosine starts where warmup ends and spans the remaining steps.
        fraction = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    if config.schedule == "constant":
        lr = peak
    elif config.schedule == "cosine":
        lr = config.min_lr + (peak - config.min_lr) * ((1 + math.cos(math.pi * fraction)) / 2) ** config.lr_power
    else:  # onecycle, step for step as torch.optim.lr_scheduler.OneCycleLR(anneal_strategy="cos")
        rise_end = config.onecycle_pct_start * total_steps - 1
        fall_end = total_steps - 1
        start = peak / config.onecycle_div_factor
        end = start / config.onecycle_final_div_factor
        if step <= rise_end:
            lr = _cosine_interpolation(start, peak, step / max(rise_end, 1e-12))
        else:
            lr = _cosine_interpolation(peak, end, min((step - rise_end) / max(fall_end - rise_end, 1e-12), 1.0))
    if step < warmup_steps:
        # timm's warmup: a straight line from warmup_start_lr towards the peak lr.
        lr = config.warmup_start_lr + (peak - config.warmup_start_lr) * step / warmup_steps
    return lr


def learning_rates(config: RunConfig, total_steps: int, warmup_steps: int) -> np.ndarray:
    """The whole schedule, one value per optimizer step (for predictions and plots)."""
    return np.array([learning_rate(config, t, total_steps, warmup_steps) for t in range(total_steps)])
