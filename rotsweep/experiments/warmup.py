"""The need for learning-rate warmup (Figures 5 and 15).

A standard optimizer starts far from equilibrium: early updates can rotate
weights much faster than η̂_r (the transient of eq. 16), and warmup keeps that
transient in check. A rotational variant (Algorithm 1) rotates every neuron by
η̂_r from the first step, so it should lose little when warmup is removed.
Each grid crosses the learning rate with warmup on/off for an optimizer and
its rotational variant.

Paper scale (official 5_2 warmup scripts):
- gpt2: OpenWebText (nanoGPT recipe, 5000 steps), lr = 6e-4·2^i for
  i = −1..5 (the RV also i = 6), warmup 250 steps or none, AdamW vs RV-AdamW
  with per-neuron gains: 7 × 2 + 8 × 2 = 30 runs (Figure 5 Left/Middle).
- resnet50: ImageNet, 10 epochs of batch 256 × 32 accumulated micro-batches
  (8192), lr = 0.1·2^i for i = 0..9, warmup 1 epoch or none, SGDM vs RV-SGDM
  (Figure 5 Right); plus the 90-epoch runs of Figure 15 at each optimizer's
  best learning rate.

Where the paper's text and the official scripts differ, rotsweep follows the
scripts (they produced the figures):
- gpt2: the RV sweep has one more learning rate, 6e-4·64 = 3.84e-2, than
  Appendix K's 6e-4·2^i, i = −1..5 (30 runs, not 28). Warmup is nanoGPT's
  (the owt-gpt2-adamw preset: linear from 0 over 250 steps, then the cosine
  over the remaining steps), not timm's overlapping warmup from 1e-6.
- resnet50: Appendix K names only the no-warmup setup; the script compares
  1 warmup epoch with none. Figure 15's text says 100 epochs; the script's
  long runs are 90.
"""

from __future__ import annotations

from rotsweep.experiments import TINY_FULL_EVAL, Experiment, Sweep, axis, choice, product
from rotsweep.presets import PAPER_PRESET_SOURCES, PRESETS

ADAMW = {"optimizer": "adamw"}
RV_ADAMW_GAIN = {"optimizer": "adamw", "rotational": True, "gain": True}
SGDM = {"optimizer": "sgdm"}
RV_SGDM = {"optimizer": "sgdm", "rotational": True}
NO_WARMUP = {"warmup_steps": 0, "warmup_epochs": 0.0}

# --- GPT2-124M on OpenWebText (Figure 5 Left/Middle) -----------------------------------------

GPT2_LRS = [6e-4 * 2**i for i in range(-1, 6)]  # 3e-4 ... 1.92e-2 (Appendix K)
GPT2_RV_LRS = [*GPT2_LRS, 6e-4 * 64]  # the official RV sweep has one more: 3.84e-2
GPT2_WARMUP = {"250 steps": {"warmup_steps": 250}, "none": NO_WARMUP}

GPT2_PAPER = Sweep(
    base=PRESETS["owt-gpt2-adamw"],
    points=[
        *product(choice("optimizer", {"AdamW": ADAMW}), choice("warmup", GPT2_WARMUP), axis("lr", GPT2_LRS)),
        *product(choice("optimizer", {"RV-AdamW": RV_ADAMW_GAIN}), choice("warmup", GPT2_WARMUP),
                 axis("lr", GPT2_RV_LRS)),
    ],
    seeds=(1337,),  # nanoGPT's default seed
    sources=PAPER_PRESET_SOURCES["owt-gpt2-adamw"] | {
        "seed": "epfml/REQ 5_2 warmup GPT: nanoGPT's default seed 1337",
        "lr": "Appendix K: 6e-4·2^i, i = −1..5; epfml/REQ 5_2 warmup GPT: the RV also 6e-4·64",
        "warmup_steps": "Figure 5L/M: warmup 250 iterations (Table 4) or none",
        "rotational": "Figure 5: RV-AdamW (epfml/REQ 5_2 warmup: rwsl config, rvwrapper inner adamw)",
        "gain": "epfml/REQ 5_2 warmup: rwsl config = rvwrapper + slinear (per-neuron gains)",
    },
)

GPT2_TINY = Sweep(
    base=PRESETS["tiny-gpt2-adamw"],
    points=product(
        choice("optimizer", {"AdamW": ADAMW, "RV-AdamW": RV_ADAMW_GAIN}),
        choice("warmup", {"30 steps": {"warmup_steps": 30}, "none": NO_WARMUP}),
        axis("lr", [3e-3 * 4**i for i in range(4)]),  # 3e-3 ... 0.192
    ),
    seeds=(0,),
)

# --- ResNet-50 on ImageNet (Figure 5 Right, Figure 15) --------------------------------------

RESNET50_LRS = [0.1 * 2**i for i in range(10)]  # 0.1 ... 51.2
ONE_EPOCH = {"warmup_epochs": 1.0}

RESNET50_PAPER = Sweep(
    # Short, large-batch training: 10 epochs of 256 × 32 = 8192 images per step.
    base={**PRESETS["i1k-resnet50-sgdm"], "accumulation": 32},
    points=[
        *product(
            choice("optimizer", {"SGDM": SGDM, "RV-SGDM": RV_SGDM}),
            choice("warmup", {"1 epoch": ONE_EPOCH, "none": NO_WARMUP}),
            axis("lr", RESNET50_LRS),
            axis("epochs", [10.0]),
        ),
        # Figure 15: the best lr of each (optimizer, warmup) in the short sweep, trained for 90 epochs.
        *product(choice("optimizer", {"SGDM": SGDM}), choice("warmup", {"1 epoch": ONE_EPOCH}),
                 axis("lr", [3.2]), axis("epochs", [90.0])),
        *product(choice("optimizer", {"SGDM": SGDM}), choice("warmup", {"none": NO_WARMUP}),
                 axis("lr", [0.2]), axis("epochs", [90.0])),
        *product(choice("optimizer", {"RV-SGDM": RV_SGDM}), choice("warmup", {"1 epoch": ONE_EPOCH, "none": NO_WARMUP}),
                 axis("lr", [6.4]), axis("epochs", [90.0])),
    ],
    seeds=(10,),
    sources=PAPER_PRESET_SOURCES["i1k-resnet50-sgdm"] | {
        "seed": "epfml/REQ 5_2 warmup RN50: seed 10",
        "accumulation": "Appendix K: 32 local accumulations of batches of 256 (8192)",
        "epochs": "Appendix K: 10 epochs; Figure 15: 90 epochs at the best lrs (epfml/REQ; the paper's text says 100)",
        "lr": "Appendix K: 0.1·2^i, i = 0..9; Figure 15: 3.2 (SGDM, warmup), 0.2 (SGDM, none), 6.4 (RV-SGDM)",
        "warmup_epochs": "epfml/REQ 5_2 warmup RN50: 1 epoch or none (Appendix K names only the no-warmup setup)",
        "rotational": "Figure 5R: RV-SGDM (epfml/REQ rvwrapper, inner sgdm)",
    },
)

# Tiny: the short sweep only (the long runs of Figure 15 are chosen from its results).
RESNET50_TINY = Sweep(
    base={**PRESETS["tiny-resnet20-sgdm"], **TINY_FULL_EVAL, "model": "resnet50"},
    points=product(
        choice("optimizer", {"SGDM": SGDM, "RV-SGDM": RV_SGDM}),
        choice("warmup", {"30 steps": {"warmup_steps": 30}, "none": NO_WARMUP}),
        axis("lr", [0.2 * 2**i for i in range(4)]),  # 0.2 ... 1.6
    ),
    seeds=(0,),
)

EXPERIMENT = Experiment(
    name="warmup",
    figures="5, 15",
    description="lr × warmup on/off: AdamW vs RV-AdamW (gpt2), SGDM vs RV-SGDM (resnet50)",
    sweeps={
        "gpt2": {"paper": GPT2_PAPER, "tiny": GPT2_TINY},
        "resnet50": {"paper": RESNET50_PAPER, "tiny": RESNET50_TINY},
    },
)
