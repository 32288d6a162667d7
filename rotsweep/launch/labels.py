"""How a run is named to a person: its variant (the optimizer as the paper names it) and a one-line description."""

from __future__ import annotations

import json

from rotsweep.theory import OPTIMIZER_NAMES

# The RunConfig fields a variant label shows; status lists the other fields that vary as swept values.
VARIANT_FIELDS = ("optimizer", "rotational")


def variant_label(config: dict) -> str:
    """The optimizer as the paper names it: AdamW, or RV-AdamW for its rotational variant (Algorithm 1)."""
    return ("RV-" if config["rotational"] else "") + OPTIMIZER_NAMES.get(config["optimizer"], config["optimizer"])


def describe_run(config: dict) -> str:
    """One line naming what distinguishes a run in a sweep."""
    name = variant_label(config)
    if config["warmup_steps"]:
        warmup = f"{config['warmup_steps']} steps"
    elif config["warmup_epochs"]:
        warmup = f"{config['warmup_epochs']:g} epochs"
    else:
        warmup = "none"
    extras = [label for flag, label in (("weight_standardization", "WS"), ("gain", "gain")) if config[flag]]
    if config["imbalance_portion"]:
        extras.append(f"{config['imbalance_mode']} p={config['imbalance_portion']:g} f={config['imbalance_factor']:g}")
    if config["model_options"]:
        extras.append(json.dumps(config["model_options"], sort_keys=True))
    return (f"{config['model']:<11s} {name:<12s} lr {config['lr']:<9.3g} wd {config['weight_decay']:<9.3g} "
            f"warmup {warmup:<10s} seed {config['seed']}  {' '.join(extras)}").rstrip()
