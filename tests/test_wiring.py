"""RunConfig → optimizer: every optimizer field of a run reaches the optimizer that trains it.

The optimizer is built where training builds it (train.Trainer), and what it
holds is read back through its public interface (its type, its param groups,
the rotational wrapper's `inner` and `imbalance_masks()`). Each field is set to
a value other than its default, so a field that is dropped on the way shows as
its default. The grids of every experiment are checked too: the weight-std
experiment's rotational SGDM with β = 0.99, for instance.
"""

import dataclasses

import pytest
import torch

from rotsweep import train
from rotsweep.config import RunConfig
from rotsweep.experiments import EXPERIMENTS
from rotsweep.optim import Lion, RotationalWrapper
from rotsweep.presets import preset

# The fields of RunConfig that configure the optimizer (its "Optimizer" and "Rotational variant" blocks).
OPTIMIZER_FIELDS = ("optimizer", "lr", "weight_decay", "beta1", "beta2", "momentum", "eps", "rotational")
PLAIN_TYPES = {torch.optim.AdamW: "adamw", torch.optim.Adam: "adam-l2", torch.optim.SGD: "sgdm", Lion: "lion"}


def built_optimizer(config: RunConfig, tmp_path) -> torch.optim.Optimizer:
    trainer = train.Trainer(config, tmp_path, torch.device("cpu"), None, train.RunLog(tmp_path / "log.txt"))
    return trainer.optimizer


def observed(optimizer: torch.optim.Optimizer) -> dict:
    """What the optimizer holds for the weights (the first param group: weight decay, rotational)."""
    group = optimizer.param_groups[0]
    rotational = isinstance(optimizer, RotationalWrapper)
    name = optimizer.inner if rotational else PLAIN_TYPES[type(optimizer)]
    seen = {"optimizer": name, "rotational": rotational, "lr": group["lr"], "weight_decay": group["weight_decay"]}
    seen.update(hyperparameters(name, group))
    if rotational:
        seen.update(per_neuron=group["per_neuron"], zero_mean=group["zero_mean"], rms_beta=group["rms_beta"],
                    eta_r_from=group["eta_r_from"])
        masks = optimizer.imbalance_masks()
        first = group["params"][0].shape[0]
        mask = masks.get(0)
        seen["imbalance"] = None if mask is None else (len(mask["slow"]), len(mask["fast"]), mask["factor"], first)
    return seen


def hyperparameters(name: str, source) -> dict:
    """The inner optimizer's own hyperparameters: betas (Adam, Lion), eps (Adam), momentum (SGDM)."""
    if name == "sgdm":
        return {"momentum": source["momentum"]}
    if name == "lion":
        return {"betas": tuple(source["betas"])}
    return {"betas": tuple(source["betas"]), "eps": source["eps"]}


def expected(config: RunConfig, neurons: int) -> dict:
    """What the optimizer must hold for `config`, whose first weight tensor has `neurons` neurons."""
    want = {"optimizer": config.optimizer, "rotational": config.rotational, "lr": config.lr,
            "weight_decay": config.weight_decay}
    want.update(hyperparameters(config.optimizer, {"betas": (config.beta1, config.beta2), "eps": config.eps,
                                                   "momentum": config.momentum}))
    if config.rotational:
        want.update(per_neuron=config.rv_per_neuron, zero_mean=config.rv_zero_mean, rms_beta=config.rv_beta,
                    eta_r_from=config.rv_eta_r_from)
        want["imbalance"] = None
        if config.imbalance_portion > 0:  # Appendix J: a portion of the neurons, all slow or half slow half fast
            if config.imbalance_factor == 1:  # f = 1: the chosen neurons turn at the normal speed
                slow = fast = 0
            elif config.imbalance_mode == "slow":
                slow, fast = int(config.imbalance_portion * neurons), 0
            else:
                slow = fast = int(config.imbalance_portion / 2 * neurons)
            want["imbalance"] = (slow, fast, config.imbalance_factor, neurons)
    return want


BASE = preset("tiny-resnet20-adamw", steps=1)
RV = dict(rotational=True)
# One case per field: (the field, the changes that set it to a non-default value in a context where it matters).
CASES = [
    ("optimizer", dict(optimizer="sgdm")),
    ("optimizer", dict(optimizer="lion")),
    ("optimizer", dict(optimizer="adam-l2")),
    ("lr", dict(lr=0.0123)),
    ("weight_decay", dict(weight_decay=0.0456)),
    ("beta1", dict(beta1=0.85)),
    ("beta2", dict(beta2=0.97)),
    ("beta1", dict(optimizer="lion", beta1=0.8)),
    ("momentum", dict(optimizer="sgdm", momentum=0.8)),
    ("eps", dict(eps=1e-6)),
    ("rotational", dict(RV)),
    ("beta1", dict(RV, beta1=0.85, beta2=0.97)),
    ("momentum", dict(RV, optimizer="sgdm", momentum=0.8)),
    ("eps", dict(RV, eps=1e-6)),
    ("weight_decay", dict(RV, weight_decay=0.0456)),
    ("rv_per_neuron", dict(RV, rv_per_neuron=False)),
    ("rv_zero_mean", dict(RV, rv_zero_mean=False)),
    ("rv_beta", dict(RV, optimizer="sgdm", rv_beta=0.99)),  # the weight-std experiment's RV
    ("rv_eta_r_from", dict(RV, optimizer="adam-l2", rv_eta_r_from="adamw")),
    ("imbalance_portion", dict(RV, imbalance_portion=0.5, imbalance_factor=4.0)),
    ("imbalance_portion", dict(RV, imbalance_portion=0.25, imbalance_factor=4.0)),
    ("imbalance_factor", dict(RV, imbalance_portion=0.5, imbalance_factor=2.0)),
    ("imbalance_mode", dict(RV, imbalance_portion=0.5, imbalance_factor=4.0, imbalance_mode="slow")),
]


def test_every_optimizer_field_has_a_case():
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    meant_for_the_optimizer = set(OPTIMIZER_FIELDS) | {f for f in fields if f.startswith(("rv_", "imbalance_"))}
    assert meant_for_the_optimizer <= fields
    assert meant_for_the_optimizer <= {field for field, _ in CASES}


@pytest.mark.parametrize("field, changes", CASES, ids=[f"{field}:{changes[field]}" for field, changes in CASES])
def test_a_config_field_reaches_the_optimizer(tmp_path, field, changes):
    config = BASE.replace(**changes)
    assert getattr(config, field) != getattr(RunConfig(steps=1), field), "the case must leave the default"
    optimizer = built_optimizer(config, tmp_path)
    assert observed(optimizer) == expected(config, optimizer.param_groups[0]["params"][0].shape[0])


def test_the_seed_chooses_the_imbalanced_neurons(tmp_path):
    masks = [built_optimizer(BASE.replace(rotational=True, imbalance_portion=0.5, imbalance_factor=4.0, seed=seed), tmp_path / str(seed))
             .imbalance_masks() for seed in (0, 0, 1)]
    assert all(torch.equal(masks[0][key]["slow"], masks[1][key]["slow"]) for key in masks[0])
    assert not all(torch.equal(masks[0][key]["slow"], masks[2][key]["slow"]) for key in masks[0])


def optimizer_settings() -> list[dict]:
    """Each distinct optimizer setting in the grids of every experiment, at both scales."""
    settings = {}
    for experiment in EXPERIMENTS.values():
        for model, scales in experiment.sweeps.items():
            for scale, sweep in scales.items():
                for config in sweep.runs():
                    fields = {name: getattr(config, name) for name in OPTIMIZER_FIELDS + tuple(
                        f.name for f in dataclasses.fields(RunConfig) if f.name.startswith(("rv_", "imbalance_")))}
                    fields.pop("lr"), fields.pop("weight_decay")  # checked above; many values
                    settings.setdefault(tuple(sorted(fields.items(), key=str)), fields)
    return list(settings.values())


SETTINGS = optimizer_settings()


def test_the_weight_std_experiment_has_its_beta_0_99_rv():
    assert any(s["rotational"] and s["optimizer"] == "sgdm" and s["rv_beta"] == 0.99 for s in SETTINGS)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()
                                                                      if getattr(BASE, k) != v))
def test_every_experiments_optimizer_setting_reaches_the_optimizer(tmp_path, setting):
    config = BASE.replace(**setting, lr=0.01, weight_decay=0.05)
    optimizer = built_optimizer(config, tmp_path)
    assert observed(optimizer) == expected(config, optimizer.param_groups[0]["params"][0].shape[0])
