"""The paper's networks by name, their parameter counts, and their weight-decay groups.

    model = build_model("resnet18", num_classes=100, pre_activation=True, weight_standardization=True)
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay=0.1), lr=1e-3)

Every model is written out in plain torch (resnet.py, vgg.py, gpt.py); every
conv and linear layer is a norms.Conv2d / norms.Linear, so Weight
Standardization and per-neuron gains (norms.py) are one switch for all of them.
`tiny=True` gives the same code at a width and depth that trains on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from rotsweep import usercode
from rotsweep.errors import UserError
from rotsweep.models import gpt, resnet, vgg


@dataclass(frozen=True)
class _Model:
    build: Callable[..., nn.Module]
    task: str  # "image": (N, 3, H, W) -> (N, classes) | "text": (N, T) tokens -> (N, T, vocab)
    description: str
    tiny: str  # what tiny=True shrinks (see the builder)
    options: tuple[str, ...]  # the keyword options build_model accepts for this model


_RESNET_OPTIONS = ("width", "pre_activation")
_RESNET18_OPTIONS = (*_RESNET_OPTIONS, "shortcut_norm")

_MODELS: dict[str, _Model] = {
    "resnet20": _Model(
        resnet.resnet20, "image",
        "ResNet-20 for CIFAR: post-activation BasicBlocks 3x3, widths 16/32/64, BatchNorm",
        "width 8, one block per stage", _RESNET_OPTIONS,
    ),
    "resnet18": _Model(
        resnet.resnet18, "image",
        "ResNet-18 for CIFAR: 3x3 stem, BasicBlocks [2,2,2,2], widths 64-512, BatchNorm; "
        "pre-activation unless pre_activation=False; shortcut_norm=True: the official cifar_resnet's "
        "projection shortcut (own norm, no ReLU)", "width 8, one block per stage", _RESNET18_OPTIONS,
    ),
    "resnet18-ln": _Model(
        resnet.resnet18_ln, "image",
        "ResNet-18 for CIFAR with LayerNorm (GroupNorm, 1 group) for every BatchNorm; pre-activation "
        "unless pre_activation=False; shortcut_norm as for resnet18", "width 8, one block per stage", _RESNET18_OPTIONS,
    ),
    "resnet50": _Model(
        resnet.resnet50, "image",
        "ResNet-50 for ImageNet (v1.5): Bottlenecks [3,4,6,3], BatchNorm, 1000 classes; post-activation "
        "unless pre_activation=True (ResNetV2, as in the Fig. 3 run)",
        "width 8, one bottleneck per stage", _RESNET_OPTIONS,
    ),
    "vgg13": _Model(
        vgg.vgg13, "image",
        "VGG-13 for CIFAR without normalisation, 1x1-conv 512-512 pre-logits",
        "three stages of one conv, widths 8/16/32, 32 features", (),
    ),
    "gpt2": _Model(
        gpt.gpt2, "text",
        "GPT2-124M in nanoGPT's layout: 12 layers, 12 heads, 768 wide, no biases, tied embeddings",
        "2 layers, 2 heads, 64 wide, vocabulary 256, context 64", ("dropout",),
    ),
}
MODEL_NAMES = tuple(_MODELS)


def _check_option(model: str, name: str, value: Any) -> None:
    """Raise UserError unless `value` is a valid value of the keyword option `name`."""
    if name in ("pre_activation", "shortcut_norm"):
        valid = isinstance(value, bool)
        expected = "true or false"
    elif name == "width":
        valid = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        expected = "a positive integer (channels of the first stage)"
    else:  # dropout
        valid = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
        expected = "a probability in [0, 1)"
    if not valid:
        raise UserError(f"model {model}: option {name}={value!r} is invalid, expected {expected}")


def _positive_or_none(model: str, name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise UserError(f"model {model}: {name}={value!r} is invalid, expected a positive integer")


def check_model(name: str, options: dict) -> None:
    """The checks of build_model that need no tensors: the name and the model's options.

    A user builder ("package.module:function", rotsweep.usercode) is imported; its
    options are its own to check.
    """
    if usercode.is_import_path(name):
        usercode.import_builder(name, "model")
        return
    if name not in _MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    entry = _MODELS[name]
    for option, value in options.items():
        if option not in entry.options:
            valid = ", ".join(entry.options) or "none"
            raise UserError(f"model {name} has no option {option!r}; its options: {valid}")
        _check_option(name, option, value)


def build_model(
    name: str,
    *,
    num_classes: int | None = None,
    vocab_size: int | None = None,
    block_size: int | None = None,
    weight_standardization: bool = False,
    gain: bool = False,
    tiny: bool = False,
    **options: Any,
) -> nn.Module:
    """Build a model by name; None means the model's default (10 classes, 1000 for ResNet-50, ...)."""
    check_model(name, options)
    entry = _MODELS[name]
    for flag, value in (("weight_standardization", weight_standardization), ("gain", gain), ("tiny", tiny)):
        if not isinstance(value, bool):
            raise UserError(f"model {name}: {flag}={value!r} is invalid, expected true or false")
    weights = dict(weight_standardization=weight_standardization, gain=gain)

    if entry.task == "image":
        for unused, value in (("vocab_size", vocab_size), ("block_size", block_size)):
            if value is not None:
                raise UserError(f"model {name} takes images; {unused} is only for gpt2")
        _positive_or_none(name, "num_classes", num_classes)
        if num_classes is not None:
            options["num_classes"] = num_classes
        return entry.build(tiny=tiny, **weights, **options)

    if num_classes is not None:
        raise UserError(f"model {name} takes tokens; num_classes is only for image models")
    _positive_or_none(name, "vocab_size", vocab_size)
    _positive_or_none(name, "block_size", block_size)
    return entry.build(vocab_size=vocab_size, block_size=block_size, tiny=tiny, **weights, **options)


def model_for_run(config, *, num_classes: int | None, vocab_size: int | None) -> nn.Module:
    """The network of a run (a RunConfig): a built-in by name, or the user's builder (rotsweep.usercode).

    num_classes / vocab_size are the data set's. A user builder is called as
    build(config, num_classes=..., vocab_size=...) and must return an nn.Module with parameters.
    """
    if not usercode.is_import_path(config.model):
        return build_model(
            config.model, num_classes=num_classes, vocab_size=vocab_size, block_size=config.block_size,
            weight_standardization=config.weight_standardization, gain=config.gain, tiny=config.tiny,
            **config.model_options,
        )
    model = usercode.call_builder(config.model, "model", config, num_classes=num_classes, vocab_size=vocab_size)
    if not isinstance(model, nn.Module):
        raise UserError(f"model builder {config.model!r} returned a {type(model).__name__}, not a torch.nn.Module; "
                        f"return the network ({usercode.MODEL_SIGNATURE})")
    if not any(True for _ in model.parameters()):
        raise UserError(f"model builder {config.model!r} returned a {type(model).__name__} without parameters; "
                        "return a network with trainable weights")
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars; a tied tensor (GPT's wte = lm_head) counts once."""
    return sum(p.numel() for p in model.parameters())


def describe_models(tiny: bool = False) -> list[dict]:
    """Name, parameter count, task and a description of every model, at its default size."""
    described = []
    for name, entry in _MODELS.items():
        # On the meta device tensors have shapes but no storage, so even
        # GPT2-124M is built (and "initialised") in milliseconds.
        with torch.device("meta"):
            model = build_model(name, tiny=tiny)
        described.append(dict(
            name=name, params=count_parameters(model), task=entry.task,
            description=entry.description + (f"; tiny: {entry.tiny}" if tiny else ""),
        ))
    return described


WEIGHT_DECAY_RULES = ("matrices", "linear")


def param_groups(model: nn.Module, weight_decay: float, decay_on: str = "matrices") -> list[dict]:
    """Two optimizer groups: the decayed tensors with `weight_decay`, the rest with 0.

    decay_on picks the decayed tensors, as the paper's code bases do:
    - "matrices": every tensor with ndim >= 2 (conv, linear and embedding weights;
      timm and nanoGPT, including GPT's tied wte/lm_head and wpe);
    - "linear": the weights of Linear layers, except one tied to an embedding
      (llm_baselines' GPT-2, used for the Wikitext runs: its optimizer groups put
      nn.Linear weights in the decay set, then remove lm_head.weight, which is wte;
      embeddings and LayerNorms get λ = 0).
    Biases, norm affine parameters and gains are never decayed. A model may name its
    decayed tensors itself instead: a method `decayed_parameters()` returning names
    from `named_parameters()` (rotsweep.usercode) replaces the rule. The rotational
    optimizers make exactly the decayed tensors rotational (official rule:
    rotational iff weight_decay != 0 and dim > 1). Each tensor appears once,
    even when it is shared (GPT's tied embedding).
    """
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise UserError(f"weight_decay={weight_decay!r} is invalid, expected a number >= 0")
    if decay_on not in WEIGHT_DECAY_RULES:
        raise UserError(f"weight_decay_on={decay_on!r} is invalid, expected one of {', '.join(WEIGHT_DECAY_RULES)}")
    if callable(getattr(model, "decayed_parameters", None)):
        decayed = _named_decayed(model)
    elif decay_on == "matrices":
        decayed = {id(p) for p in model.parameters() if p.dim() >= 2}
    else:
        linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
        embedding = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        decayed = linear - embedding
    decay, no_decay = [], []
    for param in model.parameters():
        (decay if id(param) in decayed else no_decay).append(param)
    groups = [dict(params=decay, weight_decay=float(weight_decay)), dict(params=no_decay, weight_decay=0.0)]
    return [group for group in groups if group["params"]]


def _named_decayed(model: nn.Module) -> set[int]:
    """The tensors named by the model's own decayed_parameters() (ids), each name checked."""
    named = dict(model.named_parameters())
    names = model.decayed_parameters()
    if isinstance(names, str):
        names = [names]
    names = list(names)
    unknown = [name for name in names if name not in named]
    if unknown:
        raise UserError(f"{type(model).__name__}.decayed_parameters() names {unknown[0]!r}, which is not one of its "
                        f"named_parameters() (e.g. {', '.join(list(named)[:3])}); return those names")
    return {id(named[name]) for name in names}
