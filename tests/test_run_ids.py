"""run_ids are a promise: the ids written by rotsweep 0.1.0 stay valid in every later version.

The ids below were computed by the first release (commit 2315405) and are written
literally. A fix that changes what a run computes must change exactly the ids of
the affected runs: such a run moves from PINNED to CHANGED_BY_FIX with the fix named.
Runs a fix leaves alone keep their 0.1.0 id (e.g. eta-lambda resnet20 seed 0, whose split
seed was already 0; the warmup sweeps' runs without warmup, whatever the warmup style).
"""

import dataclasses
from dataclasses import field

import pytest

from rotsweep import config as config_module
from rotsweep.config import FIRST_RELEASE_FIELDS, RunConfig
from rotsweep.experiments import EXPERIMENTS

# (experiment, model, scale, index into exp.runs(model, scale) in 0.1.0, run_id of 0.1.0). The test asks only
# that the id is still one of the sweep's runs, so a grid that gains points or seeds keeps its pins.
PINNED = [
    ("eta-lambda", "resnet20", "paper", 0, "be5dca098c49"),
    ("eta-lambda", "resnet20", "tiny", 0, "3b7e9aac60c8"),
    ("eta-lambda", "resnet20", "tiny", 5, "2c1e135fb1ef"),
    ("eta-lambda", "resnet20", "tiny", 9, "9462b3cfe797"),
    ("eta-lambda", "gpt2", "tiny", 0, "a1073b31ecc7"),
    ("eta-lambda", "gpt2", "tiny", 4, "967c56f7da7d"),
    ("eta-lambda", "gpt2", "tiny", 7, "a461e5ee1077"),
    ("warmup", "gpt2", "paper", 27, "70dcb3575c9b"),
    ("warmup", "gpt2", "tiny", 0, "bf07474b99e9"),
    ("warmup", "gpt2", "tiny", 8, "30b21c1e1825"),
    ("warmup", "gpt2", "tiny", 15, "b0c89a658f88"),
    ("warmup", "resnet50", "paper", 0, "e4fb44ce89f2"),
    ("warmup", "resnet50", "paper", 22, "02f217e8e5e0"),
    ("warmup", "resnet50", "paper", 43, "773e2f745c65"),
    ("warmup", "resnet50", "tiny", 0, "4d9184f70388"),
    ("warmup", "resnet50", "tiny", 8, "15b5e74ed6e2"),
    ("warmup", "resnet50", "tiny", 15, "2dc5a2b6ccb1"),
    ("adam-vs-adamw", "resnet18", "paper", 0, "0c9409e1d43a"),
    ("adam-vs-adamw", "resnet18", "paper", 132, "d09460d6f580"),
    ("adam-vs-adamw", "resnet18", "paper", 263, "6acd47c11838"),
    ("adam-vs-adamw", "resnet18", "tiny", 0, "96fad1b45c16"),
    ("adam-vs-adamw", "resnet18", "tiny", 9, "6dfaa2522deb"),
    ("adam-vs-adamw", "resnet18", "tiny", 17, "c9b3217f205c"),
    ("weight-std", "resnet18-ln", "tiny", 0, "231f4c373f07"),
    ("weight-std", "resnet18-ln", "tiny", 4, "dde49d309cde"),
    ("weight-std", "resnet18-ln", "tiny", 8, "2f4409b56ced"),
    ("imbalance", "resnet18", "tiny", 0, "21d12d24a66f"),
    ("imbalance", "resnet18", "tiny", 7, "5600c7a9e681"),
    ("imbalance", "resnet18", "tiny", 14, "828b96c87014"),
    ("zero-shot", "resnet20", "paper", 0, "33ec1a7c88b5"),
    ("zero-shot", "resnet20", "paper", 21, "6ad4801730f7"),
    ("zero-shot", "resnet20", "tiny", 0, "4f6a15534382"),
    ("zero-shot", "resnet20", "tiny", 3, "5af2e74fc148"),
    ("zero-shot", "resnet50", "tiny", 0, "af140ea7f09c"),
    ("zero-shot", "resnet50", "tiny", 1, "e35a9fd2af89"),
    ("zero-shot", "gpt2", "tiny", 0, "bf07474b99e9"),
    ("zero-shot", "gpt2", "tiny", 1, "30b21c1e1825"),
    ("dynamics", "gpt2", "paper", 0, "8634117723a2"),
    ("dynamics", "gpt2", "tiny", 0, "17cfd493915b"),
    ("dynamics", "gpt2", "tiny", 1, "a8d5d742fea5"),
    ("dynamics", "resnet50", "tiny", 0, "daf7a67d9f49"),
]


# Ids of 0.1.0 changed on purpose by the paper-fidelity fixes of issue 9 (numbered as there):
# (experiment, model, scale, run_id of 0.1.0, run_id now, the fix). The old id must be gone
# from the sweep and the new one in it; every other run of the sweep keeps its id (PINNED).
CHANGED_BY_FIX = [
    ("eta-lambda", "resnet20", "paper", "4ba0bb9ed4b6", "e8f2ca497ca8", "fix 6: split seed 0 for training seed 1 (epfml/REQ 5_2 lr-vs-wd)"),
    ("eta-lambda", "resnet20", "paper", "43b2ed923fe4", "45ea896b4281", "fix 6: split seed 0 for training seed 2 (epfml/REQ 5_2 lr-vs-wd)"),
    ("eta-lambda", "gpt2", "paper", "d764b240a36c", "d496474a5c63", "fix 1: Wikitext decays Linear weights only (llm_baselines)"),
    ("eta-lambda", "gpt2", "paper", "47cc1e28106c", "df16a35cc0ea", "fix 1: Wikitext decays Linear weights only (llm_baselines)"),
    ("eta-lambda", "gpt2", "paper", "d404b230a11f", "8efaef218e89", "fix 1: Wikitext decays Linear weights only (llm_baselines)"),
    ("warmup", "gpt2", "paper", "e9278cb0375c", "cb848d9642dc", "fix 8: nanoGPT warmup style (warmup 250 steps)"),
    ("warmup", "gpt2", "paper", "a1768624610e", "6a0b01015418", "fix 8: nanoGPT warmup style (warmup 250 steps)"),
    ("weight-std", "resnet18-ln", "paper", "22a9b4b24290", "11a37bee6adb", "fix 7: cifar_resnet projection shortcut (shortcut_norm)"),
    ("weight-std", "resnet18-ln", "paper", "777fa2db628e", "67118595f785", "fix 7: cifar_resnet projection shortcut (shortcut_norm)"),
    ("weight-std", "resnet18-ln", "paper", "35bdd72c80cd", "ad9e4bb53268", "fix 7: cifar_resnet projection shortcut (shortcut_norm)"),
    ("imbalance", "resnet18", "paper", "be10898fc7d1", "0e1fe803a6f2", "fix 7: shortcut_norm (its split seed 0 = its seed changes nothing)"),
    ("imbalance", "resnet18", "paper", "1dc8e7e38fcd", "2870b72f778c", "fixes 6, 7: split seed 0 for seed 1; shortcut_norm"),
    ("imbalance", "resnet18", "paper", "e1f2dfd96c53", "b86bf57c2d25", "fixes 6, 7: split seed 0 for seed 2; shortcut_norm"),
    ("zero-shot", "resnet20", "paper", "bb93664c94b7", "74f85173dde5", "fix 3: Lion β2 0.99 (epfml/REQ appx_J_2)"),
    ("zero-shot", "resnet20", "tiny", "ced59cb08c87", "0d3e96e3c15c", "fix 3: Lion β2 0.99 everywhere"),
    ("zero-shot", "resnet50", "paper", "4f245262169e", "d2345e37f2ac", "fix 8: ResNet-50 warmup 1 epoch (epfml/REQ appx_J_2 RN50)"),
    ("zero-shot", "resnet50", "paper", "0eda4fe0351c", "e318103438d2", "fix 8: ResNet-50 warmup 1 epoch (epfml/REQ appx_J_2 RN50)"),
    ("zero-shot", "gpt2", "paper", "d8c74de26945", "f9361071aa8b", "fixes 1, 2: Linear-only decay; Wikitext test split"),
    ("zero-shot", "gpt2", "paper", "2af60c7b27d8", "c7806e5889d7", "fix 8: OpenWebText seed 43 (was 1); nanoGPT warmup style"),
    ("zero-shot", "gpt2", "paper", "a907305c3edf", "25ef759fefbf", "fix 8: OpenWebText seed 44 (was 2); nanoGPT warmup style"),
    ("dynamics", "gpt2", "paper", "73e213ce86dd", "f79a0ccedef0", "fix 8: Figure 13 no-WS run's seed 42 (epfml/REQ 5_1_A gpt2_small.sh)"),
    ("dynamics", "resnet50", "paper", "04e4203ad9ce", "e39ef5630145", "fix 5: pre-activation ResNetV2-50 (epfml/REQ 5_1_A rn50.sh)"),
]


@pytest.mark.parametrize("experiment, model, scale, old_id, new_id, fix", CHANGED_BY_FIX,
                         ids=[f"{e}-{m}-{s}-{old}" for e, m, s, old, _, _ in CHANGED_BY_FIX])
def test_ids_changed_by_a_fix_moved_to_their_new_value(experiment, model, scale, old_id, new_id, fix):
    ids = {config.run_id for config in EXPERIMENTS[experiment].runs(model, scale)}
    assert old_id not in ids and new_id in ids, fix


@pytest.mark.parametrize("experiment, model, scale, index, run_id", PINNED,
                         ids=[f"{e}-{m}-{s}-{i}" for e, m, s, i, _ in PINNED])
def test_first_release_run_ids_are_unchanged(experiment, model, scale, index, run_id):
    assert run_id in {config.run_id for config in EXPERIMENTS[experiment].runs(model, scale)}


def test_pins_cover_every_experiment_and_scale():
    assert len(PINNED) >= 20
    covered = {(e, s) for e, _, s, _, _ in PINNED} | {(e, s) for e, _, s, _, _, _ in CHANGED_BY_FIX}
    assert covered == {(e, s) for e in EXPERIMENTS for s in ("paper", "tiny")}


def test_first_release_fields_are_all_still_fields():
    assert FIRST_RELEASE_FIELDS <= {f.name for f in dataclasses.fields(RunConfig)}


def test_a_new_field_at_its_default_changes_no_id(monkeypatch):
    """Add a field to RunConfig as a later version would: ids change only where it is set."""
    extended = dataclasses.make_dataclass(
        "RunConfig", [("split_seed_example", "int | None", field(default=None))], bases=(RunConfig,), frozen=True)
    monkeypatch.setattr(config_module, "_FIELDS", {f.name: f for f in dataclasses.fields(extended)})
    base = RunConfig(steps=10, lr=0.1)
    same = extended(steps=10, lr=0.1)
    assert same.run_id == base.run_id
    assert extended(steps=10, lr=0.1, split_seed_example=3).run_id != base.run_id
    # A first-release field is hashed even at its default, as 0.1.0 did.
    assert '"rv_beta":0.9' in base.canonical_json()
