"""The benefit of Weight Standardization (Figure 7).

Layer Normalization makes a layer scale-invariant as a whole but not each of
its neurons, so neurons whose weights have different norms rotate at different
speeds. Weight Standardization makes every neuron scale-invariant on its own,
and the equilibrium of Table 1 then balances their rotation, like the
rotational variant does by construction. Figure 7 Left compares the final
accuracy of the three over the peak learning rate; Figure 7 Right shows the
per-neuron angular updates of one layer for the baseline and for WS, which is
why every run records per-neuron dynamics (a sample of neurons plus the
mean / std over all neurons of each layer).

Paper scale (official 5_3 WS scripts): pre-activation ResNet-18 with
LayerNorm (GroupNorm with one group) on a 90/10 split of CIFAR-100, batch 256,
the CIFAR recipe of Table 4 (5 warmup epochs, cosine, 200 epochs), SGDM with
λ = 5e-4 over eleven peak learning rates, seeds 42, 43, 44. Variants: the LN
baseline; LN + WS (no gain); the rotational SGDM (β = 0.99). The network is
the official cifar_resnet's pre-activation ResNet-18, whose projection
shortcut normalises its input with its own norm and no ReLU before the 1×1
conv (model option shortcut_norm; timm's ResNetV2 instead takes the block's
relu(N_1(x))). The 90/10 split is seeded by the training seed, as in 5_3 WS.
"""

from __future__ import annotations

from rotsweep.experiments import TINY_FULL_EVAL, Experiment, Sweep, axis, choice, product
from rotsweep.presets import PAPER_PRESET_SOURCES, PRESETS

VARIANTS = {
    "LN": {},
    "LN+WS": {"weight_standardization": True},
    "LN+RV": {"rotational": True, "rv_beta": 0.99},
}

LRS = [0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0]

PAPER = Sweep(
    base={**PRESETS["c10-resnet20-sgdm-b128"], "model": "resnet18-ln", "model_options": {"shortcut_norm": True},
          "dataset": "cifar100", "val_split": True, "batch_size": 256, "weight_decay": 5e-4},
    points=product(choice("variant", VARIANTS), axis("lr", LRS)),
    seeds=(42, 43, 44),
    sources=PAPER_PRESET_SOURCES["c10-resnet20-sgdm-b128"] | {
        "seed": "epfml/REQ 5_3 WS: seeds 42, 43, 44",
        "model": "Figure 7: LN ResNet-18 (epfml/REQ 5_3 WS: pre-activation cifar_resnet with GroupNorm(1))",
        "model_options": "epfml/REQ cifar_resnet: pre-activation projection shortcut conv1×1(N_sc(x)), own norm, no ReLU",
        "dataset": "Figure 7: CIFAR-100",
        "val_split": "epfml/REQ 5_3 WS: 90/10 split seeded by the run seed (--val-split train[0.9:]-S)",
        "batch_size": "epfml/REQ 5_3 WS: batch 256",
        "weight_decay": "epfml/REQ 5_3 WS: λ = 5e-4",
        "lr": "epfml/REQ 5_3 WS: eleven lrs 0.01..3.0",
        "weight_standardization": "Figure 7: LN+WS (epfml/REQ WSConv2d/WSLinear, gain=False)",
        "rotational": "Figure 7: LN+RV (epfml/REQ rvwrapper, inner sgdm)",
        "rv_beta": "epfml/REQ 5_3 WS: update_norm_decay_factor 0.99 (Appendix K: β = 0.99)",
    },
)

# Tiny: λ ten times the paper's, so that SGDM's equilibrium (which is what balances
# the neurons of WS) is reached within 300 steps.
TINY = Sweep(
    base={**PRESETS["tiny-resnet20-sgdm"], **TINY_FULL_EVAL, "model": "resnet18-ln", "val_split": True,
          "weight_decay": 5e-3},
    points=product(choice("variant", VARIANTS), axis("lr", [0.05, 0.2, 0.8])),
    seeds=(0,),
)

EXPERIMENT = Experiment(
    name="weight-std",
    figures="7",
    description="LayerNorm ResNet-18 on CIFAR-100 over lr: baseline, +WS, RV; per-neuron rotation",
    sweeps={"resnet18-ln": {"paper": PAPER, "tiny": TINY}},
)
