"""The Appendix F random walk reaches Table 1's equilibrium; its rotational variants start there.

The paper's hyperparameters (the CLI default) take 15k-40k steps to settle, so
the equilibrium tests use shorter runs with settings that settle faster:

- AdamW: Adam's second moment (β2 = 0.999) remembers the gradient size of ~1000
  steps ago, so a norm far from equilibrium takes thousands of steps to settle
  whatever lr and λ are. lr/λ is chosen so that the equilibrium norm
  sqrt(ηC/2λ) = sqrt(0.004·128/1.5) = 0.584 is near the initial 0.578, with
  ηλ = 3e-3 (relaxation time 1/(2ηλ) ≈ 170 steps): a wrong prediction would
  show as a drift of the norm during the 2000 steps.
- SGDM: λ 4× the paper's (relaxation 1/(4ηλ/(1−α)) = 125 steps).
- Lion: the paper's values, 3000 steps (β2 = 0.99: the momentum forgets in ~100).
- Adam+ℓ2: lr 4× and λ 8× the paper's; its relaxation rate 1.5·η²C/‖ω̂‖² grows
  as η^(4/3)·λ^(2/3), 25× faster.

Larger ηλ is not free: Table 1 assumes the weight decay does not act during the
momentum's lifetime, which biases the norm by ~1% at these values.
"""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from rotsweep import randomwalk, theory
from rotsweep.cli import app

FAST = {
    "adamw": dict(steps=2000, lr=4e-3, weight_decay=0.75),
    "sgdm": dict(steps=1500, lr=0.5, weight_decay=4e-4),
    "lion": dict(steps=3000),
    "adam-l2": dict(steps=3000, lr=3.1e-3, weight_decay=1e-3),
}


@pytest.mark.parametrize("optimizer", theory.OPTIMIZERS)
def test_equilibrium_matches_table1(optimizer):
    result = randomwalk.run(optimizer, **FAST[optimizer])
    for key in ("eta_r", "norm", "eta_g"):
        assert result[f"{key}_measured"] == pytest.approx(result[f"{key}_predicted"], rel=0.05), key


@pytest.mark.parametrize("optimizer", theory.OPTIMIZERS)
def test_rotational_variant_rotates_at_eta_r_from_the_first_step(optimizer, tmp_path):
    result = randomwalk.run(optimizer, steps=300, rotational=True, out=tmp_path)
    table = pd.read_parquet(tmp_path / "dynamics.parquet")
    assert list(table.columns) == ["step", "param", "stat", "reduction", "neuron", "value"]

    def series(stat, reduction):
        rows = table[(table.stat == stat) & (table.reduction == reduction)].sort_values("step")
        return rows.value.to_numpy()

    # Averaged over the neurons. The first step turns every neuron by atan(η̂_r). Then the
    # RMS tracker (β = 0.9, a 10-step memory) follows the inner optimizer's own warm-up of
    # its update size (Adam's bias correction, SGDM's momentum build-up): measured here,
    # RV-AdamW turns 0.67·η̂_r at step 10 and is within 5% from step 50, RV-SGDM 1.09·η̂_r
    # at step 10, RV-Lion is exact throughout. The baseline takes thousands of steps.
    eta_r = series("angular_update", "mean")
    assert eta_r[0] == pytest.approx(np.arctan(result["eta_r_predicted"]), rel=1e-3)
    steps = np.sort(table.step.unique())
    np.testing.assert_allclose(eta_r[steps >= 100], result["eta_r_predicted"], rtol=0.05)
    np.testing.assert_allclose(series("norm", "rms"), result["norm_predicted"], rtol=1e-6)
    # Adam+ℓ2's variant takes AdamW's η̂_r (Appendix J); the others their own.
    hyper = randomwalk.PAPER_HYPERPARAMETERS[optimizer]
    beta1, beta2 = hyper.get("betas", (0.9, 0.999))
    eta_r_from = "adamw" if optimizer == "adam-l2" else optimizer
    assert result["eta_r_predicted"] == pytest.approx(theory.expected_rotation(
        eta_r_from, hyper["lr"], hyper["weight_decay"], beta1=beta1, beta2=beta2, momentum=0.9))
    assert json.loads((tmp_path / "randomwalk.json").read_text()) == pytest.approx(result)


def test_same_seed_same_walk():
    first, second = (randomwalk.run("sgdm", steps=40, seed=3) for _ in range(2))
    third = randomwalk.run("sgdm", steps=40, seed=4)
    for key in ("eta_r_measured", "norm_measured", "grad_norm_tilde"):
        assert first[key] == second[key] != third[key]


def test_loss_scale_scales_the_gradient_but_not_adamw():
    # AdamW is invariant to the gradient scale (up to ε), so the walk is the same; g̃ doubles.
    one, two = (randomwalk.run("adamw", steps=40, loss_scale=s) for s in (1.0, 2.0))
    assert two["grad_norm_tilde"] == pytest.approx(2 * one["grad_norm_tilde"], rel=1e-4)
    assert two["grad_l1_tilde"] == pytest.approx(2 * one["grad_l1_tilde"], rel=1e-4)
    assert two["norm_measured"] == pytest.approx(one["norm_measured"], rel=1e-4)


def test_report_lists_measured_and_predicted():
    result = randomwalk.run("lion", steps=40)  # the fewest that measure: one record in the last quarter
    report = randomwalk.format_report(result)
    assert report.splitlines()[0].startswith("lion: 40 steps")
    assert f"{result['eta_r_measured']:.5g}" in report and f"{result['norm_predicted']:.5g}" in report


runner = CliRunner()


def test_cli_json(tmp_path):
    result = runner.invoke(app, ["randomwalk", "--optimizer", "sgdm", "--steps", "40", "--rotational", "--json",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    values = json.loads(result.stdout)
    assert {"optimizer", "steps", "rotational", "eta_r_measured", "eta_r_predicted", "norm_measured",
            "norm_predicted"} <= set(values)
    assert (values["optimizer"], values["steps"], values["rotational"]) == ("sgdm", 40, True)


@pytest.mark.parametrize("args, flag", [
    (["--optimizer", "adam"], "--optimizer"),
    (["--optimizer", "adamw", "--steps", "3"], "--steps"),
])
def test_cli_errors(args, flag):
    result = runner.invoke(app, ["randomwalk", *args])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and flag in result.stderr
