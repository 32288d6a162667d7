"""Learning rate vs weight decay at a fixed product η·λ (Figures 4 and 14).

In equilibrium the expected angular update of a scale-invariant weight depends
on η and λ only through their product (Table 1): for AdamW
η̂_r = sqrt(2ηλ(1−β1)/(1+β1)). Sweeping η with λ = const/η therefore keeps
the equilibrium rotation fixed and changes only the transient (eq. 16: how
far and how fast the norm must travel to its equilibrium ‖ω̂‖ = sqrt(ηC/2λ))
and the update size of biases and gains (η̂_g ∝ η). The rotational variant
has no transient, so the part of the sensitivity that comes from the transient
is absent (Figure 4L, Figure 14); it is not insensitive: §5.2 notes that its
performance also varies quite a bit along η·λ = const, since η still sets the
updates of the biases and gains. Figure 4M/R show the norm and rotation over time for three
of the AdamW runs (η = 1e-4, 8.3e-3, 0.3).

Paper scale (official 5_2 lr-vs-wd and appx_J_3 scripts):
- resnet20: CIFAR-10 on a 90/10 split, AdamW and RV-AdamW, η·λ = 5e-4,
  fourteen learning rates, warmup from 0 and cosine down to 0.
- gpt2: Wikitext, η·λ = 2.5e-3; AdamW over seven learning rates and RV-AdamW
  (with per-neuron gains, the transformer is not scale-invariant) over eleven.

Where the paper's text and the official scripts differ, rotsweep follows the
scripts (they produced the figures):
- Appendix K describes the Table 4 recipe (warmup from 1e-6, min lr 1e-5);
  5_2 lr-vs-wd passes --warmup-lr 0 and --min-lr 0.
- The 90/10 split is seeded by 0 for all three training seeds
  (--val-split train[0.9:]-0): data_seed = 0.
- The Wikitext runs (llm_baselines) decay only the Linear weights; the tied
  embedding / output layer, wpe and LayerNorms get λ = 0 and are not
  rotational (weight_decay_on = "linear", set by the wiki-gpt2-adamw preset).
"""

from __future__ import annotations

from rotsweep.experiments import TINY_FULL_EVAL, Experiment, Sweep, along_eta_lambda, choice, product
from rotsweep.presets import PAPER_PRESET_SOURCES, PRESETS

ADAMW = {"optimizer": "adamw"}
RV_ADAMW = {"optimizer": "adamw", "rotational": True}
RV_ADAMW_GAIN = {**RV_ADAMW, "gain": True}


# --- ResNet-20 on CIFAR-10 (Figure 4) ---------------------------------------------------------

RESNET20_ETA_LAMBDA = 5e-4
RESNET20_LRS = [1e-6, 1e-5, 1e-4, 3e-4, 9e-4, 2.7e-3, 8.3e-3, 2.5e-2, 5e-2, 0.1, 0.3, 0.9, 2.7, 8.1]

RESNET20_PAPER = Sweep(
    # The Table 4 AdamW b128 recipe, but warmup starts from 0 and the cosine ends at 0.
    base={**PRESETS["c10-resnet20-adamw-b128"], "val_split": True, "data_seed": 0, "warmup_start_lr": 0.0,
          "min_lr": 0.0},
    points=product(
        choice("optimizer", {"AdamW": ADAMW, "RV-AdamW": RV_ADAMW}),
        along_eta_lambda(RESNET20_ETA_LAMBDA, RESNET20_LRS),
    ),
    seeds=(0, 1, 2),
    sources=PAPER_PRESET_SOURCES["c10-resnet20-adamw-b128"] | {
        "seed": "epfml/REQ 5_2 lr-vs-wd: seeds 0, 1, 2",
        "lr": "Appendix K: η·λ = 5e-4 fixed; the fourteen lrs of epfml/REQ 5_2 lr-vs-wd",
        "weight_decay": "Appendix K: λ = 5e-4/η",
        "rotational": "Figure 4: RV-AdamW (epfml/REQ 5_2 lr-vs-wd: rvwrapper, inner adamw)",
        "val_split": "Figure 4: validation accuracy on a 90/10 split (epfml/REQ 5_2 lr-vs-wd --val-split train[0.9:]-0)",
        "data_seed": "epfml/REQ 5_2 lr-vs-wd: the split seed is 0 for every training seed",
        "warmup_start_lr": "epfml/REQ 5_2 lr-vs-wd: --warmup-lr 0 (Table 4: 1e-6)",
        "min_lr": "epfml/REQ 5_2 lr-vs-wd: --min-lr 0 (Table 4 recipe: 1e-5)",
    },
)

# Tiny: at the paper's product the transient lasts ~1/ηλ = 2000 steps, longer
# than a tiny run; ten times larger, AdamW settles within the 300 steps.
RESNET20_TINY_ETA_LAMBDA = 5e-3
RESNET20_TINY = Sweep(
    base={**PRESETS["tiny-resnet20-adamw"], **TINY_FULL_EVAL, "val_split": True, "warmup_start_lr": 0.0, "min_lr": 0.0},
    points=product(
        choice("optimizer", {"AdamW": ADAMW, "RV-AdamW": RV_ADAMW}),
        along_eta_lambda(RESNET20_TINY_ETA_LAMBDA, [1e-4, 1e-3, 1e-2, 1e-1, 1.0]),
    ),
    seeds=(0,),
)

# --- GPT2-124M on Wikitext (Figure 14) ----------------------------------------------------------

GPT2_ETA_LAMBDA = 2.5e-3
GPT2_ADAMW_LRS = [2.7e-4, 8.3e-4, 2.5e-3, 5e-3, 1e-2, 3e-2, 9e-2]
GPT2_RV_LRS = [3e-5, 9e-5, 2.7e-4, 8.3e-4, 2.5e-3, 5e-3, 1e-2, 3e-2, 9e-2, 0.27, 0.81]

GPT2_PAPER = Sweep(
    base=PRESETS["wiki-gpt2-adamw"],
    points=[
        *product(choice("optimizer", {"AdamW": ADAMW}), along_eta_lambda(GPT2_ETA_LAMBDA, GPT2_ADAMW_LRS)),
        *product(choice("optimizer", {"RV-AdamW": RV_ADAMW_GAIN}), along_eta_lambda(GPT2_ETA_LAMBDA, GPT2_RV_LRS)),
    ],
    seeds=(0, 1, 2),
    sources=PAPER_PRESET_SOURCES["wiki-gpt2-adamw"] | {
        "seed": "epfml/REQ appx_J_3: seeds 0, 1, 2",
        "lr": "Appendix K: η·λ = 2.5e-3 fixed; the lrs of epfml/REQ appx_J_3 (seven AdamW, eleven RV)",
        "weight_decay": "Appendix K: λ = 2.5e-3/η",
        "rotational": "Figure 14: RV-AdamW (epfml/REQ appx_J_3: rvadamw)",
        "gain": "epfml/REQ appx_J_3: the RV runs use slinear (per-neuron gains)",
    },
)

# Tiny: the paper's product; from lr 1e-3 (where the RV's gains learn too slowly)
# to lr 1 (where AdamW's transient breaks training and the RV's does not exist).
GPT2_TINY = Sweep(
    base=PRESETS["tiny-gpt2-adamw"],
    points=product(
        choice("optimizer", {"AdamW": ADAMW, "RV-AdamW": RV_ADAMW_GAIN}),
        along_eta_lambda(GPT2_ETA_LAMBDA, [1e-3, 1e-2, 1e-1, 1.0]),
    ),
    seeds=(0,),
)

EXPERIMENT = Experiment(
    name="eta-lambda",
    figures="4, 14",
    description="lr sweep with η·λ fixed (so η̂_r fixed): AdamW vs RV-AdamW; norms and rotation over time",
    sweeps={
        "resnet20": {"paper": RESNET20_PAPER, "tiny": RESNET20_TINY},
        "gpt2": {"paper": GPT2_PAPER, "tiny": GPT2_TINY},
    },
)
