"""Artificially imbalanced rotation (Figure 16, Appendix J).

To test whether imbalanced rotation itself hurts (and not some other
difference between optimizers), a modified RV-AdamW scales the rotation of a
fraction of the neurons of every layer by a factor f: in mode "slow" the
affected neurons rotate f times slower, in mode "split" half of them rotate f
times slower and half f times faster. The paper's portion p is the fraction
left unaffected; RunConfig.imbalance_portion is the affected fraction 1 − p,
as in the official code. For each setting the weight decay is swept, which
moves η̂_r of all neurons while leaving the update size of biases and gains
alone, and the best λ is reported. Reduced-width networks (neurons removed
instead of slowed down) are the reference.

Paper scale (official appx_J_6): pre-activation ResNet-18 (BatchNorm) on a
90/10 split of CIFAR-10, RV-AdamW with lr 0.1, batch 256, the CIFAR recipe
of Table 4, λ = 0.01·2^k:
- factor 10, affected fraction 0..0.5 ("slow") or 0.1..0.5 ("split"), k = −5..7;
- affected fraction 0.5, factor 2..10 in both modes, k = −5..7;
- widths 57, 51, 44, 38 (0.9..0.6 of 64) and 32 (half width, reported in the
  paper's text at 93.7% but absent from the scripts), balanced, k = −3..3.
The split is seeded by 0 for all three training seeds (data_seed = 0), and the
ResNet-18 is the official cifar_resnet's, whose pre-activation projection
shortcut has its own norm (model option shortcut_norm).
"""

from __future__ import annotations

from rotsweep.experiments import TINY_FULL_EVAL, Experiment, Sweep, axis, product
from rotsweep.presets import PAPER_PRESET_SOURCES, PRESETS


def imbalance(modes: list[str], portions: list[float], factors: list[float]):
    """The imbalance axes: mode, affected fraction of neurons, factor."""
    return (axis("imbalance_mode", modes), axis("imbalance_portion", portions), axis("imbalance_factor", factors))


def widths(values: list[int], options: dict | None = None):
    """Narrower balanced networks: `width` channels in the stem and first stage, doubled at every stage."""
    return axis("width", values, lambda width: {"model_options": {**(options or {}), "width": width}})


PAPER_WEIGHT_DECAYS = [0.01 * 2**k for k in range(-5, 8)]
PAPER_WIDTH_WEIGHT_DECAYS = [0.01 * 2**k for k in range(-3, 4)]

# The official cifar_resnet's pre-activation ResNet-18, with its own-norm projection shortcut.
PAPER_MODEL_OPTIONS = {"shortcut_norm": True}

PAPER = Sweep(
    base={**PRESETS["c10-resnet20-adamw-b128"], "model": "resnet18", "model_options": PAPER_MODEL_OPTIONS,
          "val_split": True, "data_seed": 0, "batch_size": 256, "lr": 0.1, "rotational": True},
    points=[
        # Figure 16 Right-1: portion at factor 10. Fraction 0 is the balanced RV-AdamW.
        *product(*imbalance(["slow"], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], [10.0]),
                 axis("weight_decay", PAPER_WEIGHT_DECAYS)),
        *product(*imbalance(["split"], [0.1, 0.2, 0.3, 0.4, 0.5], [10.0]), axis("weight_decay", PAPER_WEIGHT_DECAYS)),
        # Figure 16 Right-2: factor at half of the neurons (factor 10 repeats a point above: kept once).
        *product(*imbalance(["slow", "split"], [0.5], [2.0, 3.0, 5.0, 8.0, 10.0]),
                 axis("weight_decay", PAPER_WEIGHT_DECAYS)),
        # Figure 16 Right-3: narrower balanced networks.
        *product(widths([57, 51, 44, 38, 32], PAPER_MODEL_OPTIONS), axis("weight_decay", PAPER_WIDTH_WEIGHT_DECAYS)),
    ],
    seeds=(0, 1, 2),
    sources=PAPER_PRESET_SOURCES["c10-resnet20-adamw-b128"] | {
        "seed": "epfml/REQ appx_J_6: seeds 0, 1, 2",
        "model": "Appendix K: ResNet-18 (epfml/REQ appx_J_6: pre-activation cifar_resnet, BatchNorm)",
        "model_options": "epfml/REQ cifar_resnet: pre-activation projection shortcut conv1×1(N_sc(x)); widths "
                         "57, 51, 44, 38 of appx_J_6 downscaled, 32 from the paper's text (not scripted)",
        "val_split": "Appendix K: 90/10 train/val split",
        "data_seed": "epfml/REQ appx_J_6: the split seed is 0 for every training seed",
        "batch_size": "Appendix K: batch 256",
        "lr": "Appendix K: η = 0.1",
        "weight_decay": "epfml/REQ appx_J_6: λ = 0.01·2^k, k = −5..7 (widths: k = −3..3)",
        "rotational": "Figure 16: RV-AdamW with speed control (epfml/REQ appx_J_6: rvcadamw)",
        "imbalance_mode": "epfml/REQ appx_J_6: is_double (slow) / triple (split)",
        "imbalance_portion": "epfml/REQ appx_J_6: control_group_percentage (the affected fraction, 1 − the paper's p)",
        "imbalance_factor": "epfml/REQ appx_J_6: speed f",
    },
)

# Tiny: balanced, half of the neurons 10× slower, half split 3× and 10× slower/faster,
# and half the width, each at three λ (the best λ moves with the imbalance).
TINY_WEIGHT_DECAYS = [1e-2, 1e-1, 1.0]

TINY = Sweep(
    base={**PRESETS["tiny-resnet20-adamw"], **TINY_FULL_EVAL, "model": "resnet18", "val_split": True, "lr": 0.1,
          "rotational": True},
    points=[
        *product(*imbalance(["slow"], [0.0, 0.5], [10.0]), axis("weight_decay", TINY_WEIGHT_DECAYS)),
        *product(*imbalance(["split"], [0.5], [3.0, 10.0]), axis("weight_decay", TINY_WEIGHT_DECAYS)),
        *product(widths([4]), axis("weight_decay", TINY_WEIGHT_DECAYS)),  # half of the tiny width 8
    ],
    seeds=(0,),
)

EXPERIMENT = Experiment(
    name="imbalance",
    figures="16",
    description="RV-AdamW with a portion of neurons rotated f× slower/faster vs narrower nets; λ tuned per setting",
    sweeps={"resnet18": {"paper": PAPER, "tiny": TINY}},
)
