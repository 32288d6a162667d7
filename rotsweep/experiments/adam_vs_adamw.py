"""Adam+ℓ2 vs AdamW (Figure 6): balanced vs imbalanced rotation.

With AdamW the equilibrium rotation η̂_r = sqrt(2ηλ(1−β1)/(1+β1)) is the same
for every layer and neuron (Table 1). With Adam+ℓ2 the ℓ2 term is divided by
the gradient's second moment, so the equilibrium rotation depends on each
neuron's gradient norm and differs between layers (§3.3): rotation is
imbalanced. The experiment repeats the lr × λ heatmap of Loshchilov & Hutter
(2019, Figure 2) for both optimizers (Figure 6 Left, with η̂_r contours) and
records per-layer rotation (Figure 6 Right, the best run of each).

Paper scale (official 5_3_adam_vs_adamw): post-activation ResNet-18 on a
90/10 split of CIFAR-10, batch 256, 200 epochs, cosine without warmup;
lr = 0.2·2^i for i = −10..0; Adam+ℓ2 λ ∈ {0} ∪ 1e-3·2^i (i = −5..4),
121 runs; AdamW λ ∈ {0} ∪ 1e-2·2^i (i = −2..9), 143 runs. The official split
seed is 0, the same as the one training seed, so the default data_seed (the
run seed) gives the official split; with other --seeds, set data_seed=0.
"""

from __future__ import annotations

from rotsweep.experiments import TINY_FULL_EVAL, Experiment, Sweep, axis, choice, product
from rotsweep.presets import PAPER_PRESET_SOURCES, PRESETS

ADAM_L2 = {"optimizer": "adam-l2"}
ADAMW = {"optimizer": "adamw"}

LRS = [0.2 * 2**i for i in range(-10, 1)]
ADAM_L2_WEIGHT_DECAYS = [0.0] + [1e-3 * 2**i for i in range(-5, 5)]
ADAMW_WEIGHT_DECAYS = [0.0] + [1e-2 * 2**i for i in range(-2, 10)]

PAPER = Sweep(
    # The CIFAR recipe of Table 4 for a post-activation ResNet-18, without warmup.
    base={**PRESETS["c10-resnet20-adamw-b128"], "model": "resnet18", "model_options": {"pre_activation": False},
          "val_split": True, "batch_size": 256, "warmup_epochs": 0.0},
    points=[
        *product(choice("optimizer", {"Adam+L2": ADAM_L2}), axis("lr", LRS),
                 axis("weight_decay", ADAM_L2_WEIGHT_DECAYS)),
        *product(choice("optimizer", {"AdamW": ADAMW}), axis("lr", LRS),
                 axis("weight_decay", ADAMW_WEIGHT_DECAYS)),
    ],
    seeds=(0,),
    sources=PAPER_PRESET_SOURCES["c10-resnet20-adamw-b128"] | {
        "seed": "epfml/REQ 5_3_adam_vs_adamw: seed 0 (its split seed is 0 too, so `data_seed` is left to follow it)",
        "model": "Appendix K: ResNet-18 (epfml/REQ 5_3: cifar_resnet ResNet-18)",
        "model_options": "epfml/REQ 5_3: pre_activation=False (the only post-activation ResNet-18 of the paper)",
        "val_split": "Appendix K: 90/10 train/val split (epfml/REQ 5_3 --val-split train[0.9:]-0)",
        "batch_size": "epfml/REQ 5_3: batch 256",
        "warmup_epochs": "Appendix K: 200 epochs without warmup",
        "optimizer": "Figure 6: Adam+ℓ2 (torch Adam, ℓ2 on the decay group) and AdamW",
        "lr": "epfml/REQ 5_3 grid: lr = 0.2·2^i, i = −10..0",
        "weight_decay": "epfml/REQ 5_3 grid: Adam+ℓ2 {0} ∪ 1e-3·2^i (i = −5..4); AdamW {0} ∪ 1e-2·2^i (i = −2..9)",
    },
)

# Tiny: a 3 × 3 heatmap per optimizer. The AdamW λ are a hundred times the
# Adam+ℓ2 λ, as in the paper's grids, and reach ηλ ≥ 4e-3, where AdamW settles
# into its equilibrium within the 300 steps (the per-layer rotation of Figure 6R
# needs it; Adam+ℓ2's spread grows with λ instead).
TINY_LRS = [4e-3 * 4**i for i in range(3)]  # 4e-3, 1.6e-2, 6.4e-2
TINY = Sweep(
    base={**PRESETS["tiny-resnet20-adamw"], **TINY_FULL_EVAL, "model": "resnet18",
          "model_options": {"pre_activation": False}, "val_split": True, "warmup_steps": 0},
    points=[
        *product(choice("optimizer", {"Adam+L2": ADAM_L2}), axis("lr", TINY_LRS),
                 axis("weight_decay", [1e-4, 1e-3, 1e-2])),
        *product(choice("optimizer", {"AdamW": ADAMW}), axis("lr", TINY_LRS),
                 axis("weight_decay", [0.1, 1.0, 10.0])),
    ],
    seeds=(0,),
)

EXPERIMENT = Experiment(
    name="adam-vs-adamw",
    figures="6",
    description="lr × λ heatmaps of Adam+ℓ2 and AdamW with η̂_r contours; per-layer rotation of the best runs",
    sweeps={"resnet18": {"paper": PAPER, "tiny": TINY}},
)
