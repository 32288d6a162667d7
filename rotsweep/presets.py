"""Named run configurations: the paper's recipes (Table 4, Appendix K) and tiny CPU versions.

Paper presets reproduce the recipes of the paper's Table 4 and the figure
details of Appendix K, as the official code (epfml/REQ, experiments/) runs them.
Tiny presets keep the code path (same models, optimizers, schedules,
measurements) but use a small model and a synthetic data set, so that a run
finishes in seconds to a minute on two CPU cores.
"""

from __future__ import annotations

from rotsweep.config import RunConfig
from rotsweep.errors import UserError

# CIFAR-10 recipe (D-1): cosine per update, 5 warmup epochs from 1e-6, min lr 1e-5, 200 epochs, fp32.
_CIFAR = dict(dataset="cifar10", schedule="cosine", warmup_epochs=5.0, min_lr=1e-5, epochs=200.0,
              eval_interval=1000, dynamics_interval=100, checkpoint_interval=2000)
_RESNET20_C10 = dict(_CIFAR, model="resnet20")

# ImageNet ResNet-50 recipe (D-2): SGDM, 90 epochs, fp16, label smoothing 0.1 (timm's default).
_RESNET50_I1K = dict(model="resnet50", dataset="imagenet", optimizer="sgdm", lr=0.1, weight_decay=1e-4,
                     batch_size=256, epochs=90.0, schedule="cosine", warmup_epochs=5.0, min_lr=1e-5,
                     precision="fp16", label_smoothing=0.1, channels_last=True, eval_interval=5000,
                     dynamics_interval=100, checkpoint_interval=5000)

# Wikitext GPT2-124M (D-5, llm-baselines): 55 x 3 micro-batches of 512 tokens, 15k steps, one-cycle.
_GPT2_WIKI = dict(model="gpt2", dataset="wikitext", block_size=512, model_options={"dropout": 0.2},
                  optimizer="adamw", lr=5e-3, weight_decay=0.5, beta2=0.95, batch_size=55, accumulation=3,
                  steps=15000, schedule="onecycle", precision="bf16", eval_interval=200, eval_batches=24,
                  dynamics_interval=50, checkpoint_interval=1000)

# OpenWebText GPT2-124M (D-6, nanoGPT): 12 x 40 micro-batches of 1024 tokens, 5k steps, cosine to 0.
_GPT2_OWT = dict(model="gpt2", dataset="openwebtext", block_size=1024, optimizer="adamw", lr=4.8e-3,
                 weight_decay=0.1, beta2=0.95, batch_size=12, accumulation=40, steps=5000, schedule="cosine",
                 min_lr=0.0, warmup_steps=250, grad_clip=1.0, precision="bf16", eval_interval=250,
                 eval_batches=200, dynamics_interval=25, checkpoint_interval=500)

PAPER_PRESETS: dict[str, dict] = {
    # Table 4, CIFAR-10 ResNet-20 (zero-shot settings; few-shot where the paper tuned it).
    "c10-resnet20-sgdm-b128": dict(_RESNET20_C10, optimizer="sgdm", lr=0.5, weight_decay=1e-4, batch_size=128),
    "c10-resnet20-sgdm-b2048": dict(_RESNET20_C10, optimizer="sgdm", lr=4.8, weight_decay=1e-4, batch_size=2048),
    "c10-resnet20-adamw-b128": dict(_RESNET20_C10, optimizer="adamw", lr=5e-2, weight_decay=1e-2, batch_size=128),
    "c10-resnet20-adamw-b2048": dict(_RESNET20_C10, optimizer="adamw", lr=0.16, weight_decay=1e-2, batch_size=2048),
    # Appendix K: "For Lion we used beta1 = 0.9 and beta2 = 0.999 exclusively".
    "c10-resnet20-lion-b128": dict(_RESNET20_C10, optimizer="lion", lr=5e-4, weight_decay=1.0, batch_size=128),
    "c10-resnet20-lion-b2048": dict(_RESNET20_C10, optimizer="lion", lr=1.6e-2, weight_decay=1.0, batch_size=2048),
    # Table 4, ImageNet ResNet-50 with SGDM.
    "i1k-resnet50-sgdm": _RESNET50_I1K,
    # Table 4, GPT2-124M on Wikitext and OpenWebText with AdamW.
    "wiki-gpt2-adamw": _GPT2_WIKI,
    "owt-gpt2-adamw": _GPT2_OWT,
    # Figure 3 / 13: constant lr, no warmup, 100k steps, dense dynamics.
    "fig3-resnet50-sgdm": dict(_RESNET50_I1K, schedule="constant", warmup_epochs=0.0, epochs=None, steps=100_000,
                               dynamics_interval=10),
    "fig3-gpt2-ws-adamw": dict(_GPT2_OWT, lr=6e-4, schedule="constant", warmup_steps=0, steps=100_000,
                               weight_standardization=True, gain=True, dynamics_interval=10),
}

# Tiny presets: seconds to a minute on two CPU cores. Synthetic data sets are learnable
# (a teacher network's labels, a Markov chain's tokens), so the loss curves mean something.
# Synthetic images at 16x16: four times cheaper than 32x32 and learned faster by the tiny nets.
_TINY_IMAGES = dict(dataset="synthetic-images", dataset_options={"image_size": 16})
_TINY = dict(tiny=True, steps=300, schedule="cosine", warmup_steps=30, eval_interval=50, eval_batches=8,
             dynamics_interval=5, checkpoint_interval=100, train_log_interval=10)

TINY_PRESETS: dict[str, dict] = {
    "tiny-resnet20-adamw": dict(_TINY, **_TINY_IMAGES, model="resnet20", optimizer="adamw",
                                lr=1e-2, weight_decay=5e-2, batch_size=64),
    "tiny-resnet20-sgdm": dict(_TINY, **_TINY_IMAGES, model="resnet20", optimizer="sgdm",
                               lr=0.1, weight_decay=5e-4, batch_size=64),
    "tiny-gpt2-adamw": dict(_TINY, model="gpt2", dataset="synthetic-text", optimizer="adamw", lr=3e-3,
                            weight_decay=0.1, beta2=0.95, batch_size=16, block_size=32),
}

PRESETS: dict[str, dict] = {**PAPER_PRESETS, **TINY_PRESETS}


def preset(name: str, **overrides) -> RunConfig:
    """The RunConfig of a named preset, with field overrides."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return RunConfig.from_dict({**PRESETS[name], **overrides})
