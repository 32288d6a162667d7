"""Paper fidelity (issue 9): each paper-scale recipe is the one that produced the paper's numbers.

Every test checks a value against the paper or the official code (epfml/REQ, named in
the test), and failed before the fix it is named after. Where the paper's text and the
official scripts disagree, the scripts win (they produced the numbers).
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from rotsweep import store, theory, train
from rotsweep.config import RunConfig
from rotsweep.errors import UserError
from rotsweep.experiments import EXPERIMENTS, describe_experiments, get_experiment
from rotsweep.models import build_model, param_groups
from rotsweep.optim import build_optimizer
from rotsweep.presets import PAPER_PRESETS, preset
from rotsweep.randomwalk import PAPER_HYPERPARAMETERS
from rotsweep.schedule import learning_rate


def paper_runs(experiment: str, model: str) -> list[RunConfig]:
    return get_experiment(experiment).runs(model, "paper")


# --- 1. Wikitext GPT-2: llm_baselines decays (and so rotates) only the Linear weights -----------


def decayed_names(config: RunConfig) -> set[str]:
    """Names of the tensors the run's optimizer decays and, for an RV, rotates."""
    with torch.device("meta"):
        model = build_model("gpt2", tiny=True, gain=config.gain, **config.model_options)
    names = {id(p): name for name, p in model.named_parameters()}
    groups = param_groups(model, config.weight_decay, config.weight_decay_on)
    return {names[id(p)] for group in groups if group["weight_decay"] > 0 for p in group["params"]}


def test_wikitext_runs_decay_the_linear_weights_but_not_embeddings_or_the_tied_head():
    # epfml/REQ llm_baselines (5_1_B Wikitext, appx_J_3): nn.Linear weights decayed, lm_head.weight
    # (= wte) removed from the decay set; wpe and the LayerNorms get λ = 0.
    wiki = [r for r in paper_runs("eta-lambda", "gpt2") + paper_runs("zero-shot", "gpt2") if r.dataset == "wikitext"]
    assert wiki
    for config in wiki:
        decayed = decayed_names(config)
        assert decayed == {name for name in decayed_names(config) if name.endswith(
            ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"))}
        assert len(decayed) == 4 * 2  # four Linear layers in each of the two tiny blocks
        assert not {"transformer.wte.weight", "transformer.wpe.weight"} & decayed  # wte is lm_head


def test_openwebtext_runs_still_decay_every_matrix_as_nanogpt_does():
    # nanoGPT configure_optimizers: every parameter with dim >= 2, the tied wte/lm_head and wpe included.
    for config in paper_runs("warmup", "gpt2"):
        assert {"transformer.wte.weight", "transformer.wpe.weight"} <= decayed_names(config)  # wte is lm_head


def test_an_rv_leaves_the_undecayed_embeddings_non_rotational():
    model = build_model("gpt2", tiny=True, gain=True)
    optimizer = build_optimizer("adamw", param_groups(model, 0.5, "linear"), lr=1e-3, weight_decay=0.5,
                                rotational=True)
    rotational = {p for group in optimizer.param_groups for p in group["params"]
                  if optimizer._is_rotational(group, p)}
    assert model.lm_head.weight not in rotational and model.transformer.wpe.weight not in rotational
    assert model.transformer.h[0].mlp.c_fc.weight in rotational


# --- 2. Table 2's Wikitext numbers are on the test split -------------------------------------


def write_tokens(folder, splits: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True)
    for split, tokens in splits.items():
        tokens.astype(np.uint16).tofile(folder / f"{split}.bin")
    (folder / "meta.json").write_text(json.dumps({"vocab_size": 64}))


def test_table2_wikitext_rows_evaluate_on_the_test_split(tmp_path):
    # Table 2 caption: "Test set performance"; epfml/REQ 5_1_B Wikitext scripts pass --is-test-split.
    wiki_rows = [r for r in paper_runs("zero-shot", "gpt2") if r.dataset == "wikitext"]
    assert wiki_rows and {r.eval_split for r in wiki_rows} == {"test"}
    # Figure 14 (appx_J_3) keeps the validation split.
    assert {r.eval_split for r in paper_runs("eta-lambda", "gpt2")} == {"val"}

    # A run with eval_split=test measures the test file: swapping the two files and evaluating
    # "val" instead gives the same loss.
    rng = np.random.default_rng(0)
    train_tokens = np.arange(4000) % 7  # a text the model learns quickly ...
    held_out = {"a": rng.integers(0, 64, 600), "b": np.arange(600) % 7}  # ... unlike "a"
    write_tokens(tmp_path / "x" / "wikitext", {"train": train_tokens, "val": held_out["a"], "test": held_out["b"]})
    write_tokens(tmp_path / "y" / "wikitext", {"train": train_tokens, "val": held_out["b"], "test": held_out["a"]})
    base = preset("tiny-gpt2-adamw", dataset="wikitext", block_size=16, batch_size=4, steps=20, eval_batches=None,
                  eval_interval=0, dynamics_interval=0, checkpoint_interval=0, warmup_steps=0, lr=1e-2)
    losses = {}
    for name, data, split in (("test-of-x", "x", "test"), ("val-of-y", "y", "val"), ("val-of-x", "x", "val")):
        config = base.replace(eval_split=split)
        assert train.run(config, tmp_path / name, data_dir=tmp_path / data) == "done"
        metrics = pd.read_parquet(tmp_path / name / store.METRICS_FILE)
        losses[name] = metrics[(metrics["split"] == "val") & (metrics["metric"] == "loss")]["value"].iloc[-1]
    assert losses["test-of-x"] == pytest.approx(losses["val-of-y"], rel=1e-5)
    assert losses["val-of-x"] > losses["test-of-x"] + 1.0  # the random text is much harder


def test_a_run_on_the_test_split_without_test_bin_is_a_one_line_error(tmp_path):
    write_tokens(tmp_path / "wikitext", {"train": np.arange(400) % 64, "val": np.arange(100) % 64})
    config = preset("tiny-gpt2-adamw", dataset="wikitext", block_size=16, steps=1, eval_split="test")
    with pytest.raises(UserError, match="wikitext has no 'test' split to evaluate on .*set eval_split=val"):
        train.run(config, tmp_path / "run", data_dir=tmp_path)


# --- 3. Lion's β2 is 0.99 everywhere ----------------------------------------------------------


def test_lion_uses_the_official_beta2_everywhere():
    # epfml/REQ appx_J_2 Lion scripts: timm Lion betas (0.9, 0.99) (Appendix K says 0.999).
    lion_presets = [values for values in PAPER_PRESETS.values() if values.get("optimizer") == "lion"]
    assert lion_presets and all(preset_values["beta2"] == 0.99 for preset_values in lion_presets)
    lion_runs = [r for scale in ("paper", "tiny") for r in get_experiment("zero-shot").runs("resnet20", scale)
                 if r.optimizer == "lion"]
    assert lion_runs and {r.beta2 for r in lion_runs} == {0.99}
    assert PAPER_HYPERPARAMETERS["lion"]["betas"] == (0.9, 0.99)


def test_predict_for_lion_defaults_to_beta2_099():
    # Table 1, Lion: η̂_r = sqrt(π·η·λ·K), K = (1−β1)² + β1²(1−β2)/(1+β2) (eq. 63).
    lr, weight_decay = 5e-4, 1.0
    k = 0.1**2 + 0.9**2 * 0.01 / 1.99
    result = theory.predict_cli("lion", lr=lr, weight_decay=weight_decay, dim=None, beta1=0.9, beta2=None,
                                momentum=0.9, grad_norm=None)
    assert result["eta_r"] == pytest.approx(math.sqrt(math.pi * lr * weight_decay * k), rel=1e-12)
    assert "warning" not in result  # ηλ/(1−β2) = 0.05: Table 1 holds (random walk within 1.5%)


def test_predict_warns_when_the_momentum_outlives_the_weight_decay():
    # At β2 = 0.999 the momentum remembers 1000 steps, over which ηλ = 5e-4 removes half the norm:
    # the random walk lands 14% under Table 1's norm (theory module docstring).
    result = theory.predict_cli("lion", lr=5e-4, weight_decay=1.0, dim=None, beta1=0.9, beta2=0.999,
                                momentum=0.9, grad_norm=None)
    assert "ηλ·1/(1−β2) = 0.5 > 0.1" in result["warning"]
    # AdamW at the paper's CIFAR settings (ηλ = 5e-4, memory 10 steps) does not warn.
    assert "warning" not in theory.predict_cli("adamw", lr=5e-2, weight_decay=1e-2, dim=None, beta1=0.9,
                                               beta2=None, momentum=0.9, grad_norm=None)


def test_predict_cli_prints_the_warning_on_stderr():
    from typer.testing import CliRunner

    from rotsweep.cli import app

    result = CliRunner().invoke(app, ["predict", "--optimizer", "lion", "--lr", "5e-4", "--weight-decay", "1",
                                      "--beta2", "0.999"])
    assert result.exit_code == 0
    assert "warning: Table 1 assumes the momentum forgets faster" in result.stderr
    assert "warning" not in result.stdout


# --- 4. fp16 runs record unscaled gradients ----------------------------------------------------


def test_fp16_and_fp32_runs_record_the_same_gradient_norms(tmp_path):
    # All ResNet-50 runs are fp16 without clipping (Table 4): the recorder must read g, not 65536·g.
    recorded = {}
    for precision in ("fp32", "fp16"):
        config = preset("tiny-gpt2-adamw", steps=2, precision=precision, dynamics_interval=1, eval_interval=0,
                        checkpoint_interval=0, warmup_steps=0)
        assert train.run(config, tmp_path / precision) == "done"
        dynamics = pd.read_parquet(tmp_path / precision / store.DYNAMICS_DIR)
        rows = dynamics[(dynamics["stat"] == "grad_norm") & (dynamics["reduction"] == "layer")]
        recorded[precision] = rows.set_index(["step", "param"])["value"].sort_index()
    assert len(recorded["fp32"]) >= 2 * 10
    # fp16 autocast rounds activations to 11 significant bits: within 1e-2, not a factor 65536.
    ratio = recorded["fp16"] / recorded["fp32"]
    assert ratio.notna().all() and np.allclose(ratio, 1.0, atol=1e-2), ratio


# --- 5. Figure 3's ResNet-50 is pre-activation -------------------------------------------------


def test_figure3_resnet50_is_the_pre_activation_resnetv2():
    # epfml/REQ 5_1_A rn50.sh: --model resnetv2_50 (timm's pre-activation ResNetV2).
    (config,) = paper_runs("dynamics", "resnet50")
    assert config.model_options == {"pre_activation": True}
    with torch.device("meta"):
        model = build_model(config.model, tiny=True, **config.model_options)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.stem)  # ResNetV2: no norm in the stem
    assert model.final_norm is not None  # ... and a norm + ReLU before pooling
    assert model.blocks[0].norms[0].num_features == model.blocks[0].convs[0].in_channels  # norm before conv


# --- 6. The 90/10 split is seeded on its own ----------------------------------------------------


def split_seed(config: RunConfig) -> int:
    return config.seed if config.data_seed is None else config.data_seed


@pytest.mark.parametrize("experiment, model", [("eta-lambda", "resnet20"), ("imbalance", "resnet18")])
def test_lr_vs_wd_and_imbalance_fix_the_split_at_seed_0(experiment, model):
    # epfml/REQ 5_2 lr-vs-wd and appx_J_6: --val-split train[0.9:]-0 for training seeds 0, 1, 2.
    runs = paper_runs(experiment, model)
    assert {r.seed for r in runs} == {0, 1, 2}
    assert {split_seed(r) for r in runs} == {0}


def test_weight_std_keeps_the_split_seeded_by_the_run_seed():
    # epfml/REQ 5_3 WS: --val-split train[0.9:]-S with S the training seed.
    assert all(split_seed(r) == r.seed for r in paper_runs("weight-std", "resnet18-ln"))


def test_the_data_seed_fixes_the_data_and_not_the_training(tmp_path):
    def held_out(seed, data_seed):
        config = preset("tiny-resnet20-adamw", val_split=True, seed=seed, data_seed=data_seed)
        data = train.Trainer(config, tmp_path, torch.device("cpu"), None, lambda message: None).data
        return next(iter(data.eval_batches(64)))[0]

    assert torch.equal(held_out(1, 0), held_out(2, 0))
    assert not torch.equal(held_out(1, None), held_out(2, None))
    assert torch.equal(held_out(0, 0), held_out(0, None))  # None means the run seed
    assert RunConfig(steps=1, seed=0, data_seed=0).run_id == RunConfig(steps=1, seed=0).run_id


# --- 7. The pre-activation ResNet-18's projection shortcut has its own norm ---------------------


def test_cifar_resnet_projection_shortcut_is_conv_of_its_own_norm():
    # epfml/REQ timm/models/cifar_resnet.py, pre-activation: shortcut = conv1x1(N_sc(x)), no ReLU,
    # for the ResNet-18 of Figures 7 (weight-std) and 16 (imbalance).
    for experiment, model_name in (("weight-std", "resnet18-ln"), ("imbalance", "resnet18")):
        assert all(r.model_options.get("shortcut_norm") for r in paper_runs(experiment, model_name))
    torch.manual_seed(0)
    model = build_model("resnet18-ln", tiny=True, shortcut_norm=True)
    block = next(b for b in model.blocks if b.shortcut is not None)
    norm_sc, conv_sc = block.shortcut
    assert isinstance(norm_sc, nn.GroupNorm) and norm_sc.num_channels == conv_sc.in_channels
    with torch.no_grad():
        for p in norm_sc.parameters():  # non-trivial affine, so that a missing norm would show
            p.uniform_(0.5, 1.5)
        x = torch.randn(2, block.convs[0].in_channels, 8, 8)
        branch = block.convs[1](torch.relu(block.norms[1](block.convs[0](torch.relu(block.norms[0](x))))))
        assert torch.allclose(block(x), branch + conv_sc(norm_sc(x)), atol=1e-5)
        # ... which is not timm ResNetV2's conv1x1(relu(N1(x))).
        assert not torch.allclose(block(x), branch + conv_sc(torch.relu(block.norms[0](x))), atol=1e-3)


# --- 8. Smaller recipe differences ----------------------------------------------------------------


def nanogpt_get_lr(it, *, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """karpathy/nanoGPT train.py get_lr (the version vendored by epfml/REQ), written out here."""
    if it < warmup_iters:
        return learning_rate * it / warmup_iters
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * decay_ratio)) * (learning_rate - min_lr)


def test_openwebtext_runs_warm_up_as_nanogpt():
    warmed = [r for r in paper_runs("warmup", "gpt2") + paper_runs("zero-shot", "gpt2")
              if r.dataset == "openwebtext" and r.warmup_steps > 0]
    assert warmed and {r.warmup_style for r in warmed} == {"nanogpt"}
    config = warmed[0]
    for step in (0, 1, 125, 249, 250, 251, 2000, 4999):
        expected = nanogpt_get_lr(step, learning_rate=config.lr, warmup_iters=250, lr_decay_iters=5000,
                                  min_lr=config.min_lr)
        assert learning_rate(config, step, 5000, 250) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_rv_warmup_sweep_has_the_extra_lr_of_the_official_script():
    # epfml/REQ 5_2 warmup GPT: lr = 6e-4 × {1, 0.5, 2, 4, 8, 16, 32} (+64 for the RV).
    runs = paper_runs("warmup", "gpt2")
    assert any(r.rotational and math.isclose(r.lr, 6e-4 * 64) for r in runs)
    assert not any(not r.rotational and math.isclose(r.lr, 6e-4 * 64) for r in runs)


def test_resnet50_zero_shot_warms_up_one_epoch_as_the_official_script():
    # epfml/REQ appx_J_2 RN50: --warmup-epochs 1 (Table 4 says 5; the script produced Table 3).
    assert {r.warmup_epochs for r in paper_runs("zero-shot", "resnet50")} == {1.0}


def test_openwebtext_zero_shot_seeds_and_figure13_seed():
    # epfml/REQ 5_1_B gpt2_owt.py: seeds 42, 43, 44; 5_1_A gpt2_small.sh: the no-WS run has seed 42.
    runs = paper_runs("zero-shot", "gpt2")
    assert {r.seed for r in runs if r.dataset == "openwebtext"} == {42, 43, 44}
    assert {r.seed for r in runs if r.dataset == "wikitext"} == {0, 1, 2}
    seeds = {r.weight_standardization: r.seed for r in paper_runs("dynamics", "gpt2")}
    assert seeds == {True: 1337, False: 42}


# --- Recipes as data you can check --------------------------------------------------------------


def test_every_non_default_field_of_a_paper_recipe_says_where_it_comes_from():
    for entry in describe_experiments():
        for model, scales in entry["per_model"].items():
            sources = scales["paper"]["sources"]
            sweep = EXPERIMENTS[entry["name"]].sweep(model, "paper")
            assert set(sources) == {"seed", *sweep.non_default_fields()}, (entry["name"], model)
            for name, source in sources.items():
                assert source != "MISSING", (entry["name"], model, name)
                assert "shared" not in source and "official-code-facts" not in source


def test_disagreements_between_paper_and_code_are_recorded_where_the_values_are_set():
    sources = {(e["name"], m): s["paper"]["sources"] for e in describe_experiments() for m, s in e["per_model"].items()}
    assert "Appendix K says 0.999" in sources[("zero-shot", "resnet20")]["beta2"]
    assert "Table 4 says 5" in sources[("zero-shot", "resnet50")]["warmup_epochs"]
    assert "the paper says ResNet-50" in sources[("dynamics", "resnet50")]["model_options"]
    assert "--is-test-split" in sources[("zero-shot", "gpt2")]["eval_split"]


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("weight_decay_on", "embeddings", "weight_decay_on='embeddings' is not one of matrices, linear"),
    ("eval_split", "tset", "eval_split='tset' is not one of val, test"),
    ("warmup_style", "karpathy", "warmup_style='karpathy' is not one of timm, nanogpt"),
])
def test_new_recipe_fields_reject_unknown_values(field, value, message):
    with pytest.raises(UserError, match=message):
        RunConfig(steps=1, **{field: value})


def test_shortcut_norm_is_only_for_pre_activation():
    with pytest.raises(UserError, match="shortcut_norm=True is a pre-activation variant"):
        build_model("resnet18", tiny=True, pre_activation=False, shortcut_norm=True)
    with pytest.raises(UserError, match="model resnet20 has no option 'shortcut_norm'"):
        build_model("resnet20", tiny=True, shortcut_norm=True)
