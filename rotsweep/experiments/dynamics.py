"""Measuring the update dynamics of real networks (Figures 3 and 13).

With a constant learning rate, each scale-invariant layer's weight norm and
average angular update should settle at the equilibrium of Table 1: for SGDM
η̂_r = sqrt(2ηλ/(1+α)), for AdamW η̂_r = sqrt(2ηλ(1−β1)/(1+β1)), whatever the
gradient norm. Layers that are not scale-invariant (the final FC layer, the
linear layers of a transformer) deviate through the radial component of their
gradient (§3.4); Weight Standardization makes GPT2's linear layers
scale-invariant and brings them onto the prediction (Figure 13).

Paper scale: 100k steps at a constant lr without warmup, dynamics recorded
every 10 steps: ResNet-50 on ImageNet with SGDM (lr 0.1, λ 1e-4), and
GPT2-124M on OpenWebText with AdamW (lr 6e-4, λ 0.1) with Weight
Standardization and gains (Figure 3) and without (Figure 13).

Where the paper's text and the official scripts (5_1_A rn50.sh,
gpt2_small.sh) differ: the ResNet-50 is timm's pre-activation resnetv2_50
(the paper says ResNet-50), and rotsweep follows the script; the run without
WS uses seed 42 and the WS run nanoGPT's default 1337, as scripted. rn50.sh
trains 50 epochs (about 250k steps at batch 256); rotsweep keeps the paper's
100k steps, the length Figure 3 shows.
"""

from __future__ import annotations

from rotsweep.experiments import Experiment, Point, Sweep, choice, product, with_seeds
from rotsweep.presets import PAPER_PRESET_SOURCES, PRESETS

# Weight Standardization with the learnable per-neuron gain it comes with, or plain linear layers.
WEIGHT_STANDARDIZATION = {
    "WS": {"weight_standardization": True, "gain": True},
    "none": {"weight_standardization": False, "gain": False},
}

# Tiny: constant lr, 600 steps, dynamics every 2 steps, and η·λ large enough
# (2e-3 for SGDM, 5e-3 for AdamW) that the norms settle within the first ~150
# steps and the rest of the run is in equilibrium (measured: SGDM conv layers at
# 0.8-0.9 of η̂_r, WS GPT2 linear layers at 0.92-1.03, without WS 0.95-2.4).
ONE_RUN = [Point({}, {})]  # the base configuration as it is

_TINY_CONSTANT = {"schedule": "constant", "warmup_steps": 0, "steps": 600, "dynamics_interval": 2}

EXPERIMENT = Experiment(
    name="dynamics",
    figures="3, 13",
    description="constant-lr runs with dense per-layer norm and rotation against Table 1's equilibrium",
    sweeps={
        "gpt2": {
            "paper": Sweep(
                base=PRESETS["fig3-gpt2-ws-adamw"],
                # epfml/REQ 5_1_A gpt2_small.sh: the WS run (Figure 3) keeps nanoGPT's default seed
                # 1337, the run without WS (Figure 13) passes seed 42.
                points=[*product(choice("weight_standardization", {"WS": WEIGHT_STANDARDIZATION["WS"]})),
                        *with_seeds(product(choice("weight_standardization",
                                                   {"none": WEIGHT_STANDARDIZATION["none"]})), (42,))],
                seeds=(1337,),
                sources=PAPER_PRESET_SOURCES["fig3-gpt2-ws-adamw"] | {
                    "seed": "epfml/REQ 5_1_A gpt2_small.sh: WS run nanoGPT's default 1337, no-WS run 42",
                    "weight_standardization": "Figure 3: WS; Figure 13: none (Appendix K)",
                    "gain": PAPER_PRESET_SOURCES["fig3-gpt2-ws-adamw"]["gain"],
                },
            ),
            "tiny": Sweep(
                base={**PRESETS["tiny-gpt2-adamw"], **_TINY_CONSTANT, "lr": 1e-2, "weight_decay": 0.5},
                points=product(choice("weight_standardization", WEIGHT_STANDARDIZATION)),
                seeds=(0,),
            ),
        },
        "resnet50": {
            "paper": Sweep(base=PRESETS["fig3-resnet50-sgdm"], points=ONE_RUN, seeds=(0,),
                           sources=PAPER_PRESET_SOURCES["fig3-resnet50-sgdm"]
                           | {"seed": "epfml/REQ 5_1_A rn50.sh: seed 0"}),
            "tiny": Sweep(
                base={**PRESETS["tiny-resnet20-sgdm"], "model": "resnet50", **_TINY_CONSTANT,
                      "lr": 0.1, "weight_decay": 2e-2},
                points=ONE_RUN,
                seeds=(0,),
            ),
        },
    },
)
