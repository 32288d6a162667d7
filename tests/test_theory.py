"""Table 1 / Table 6 predictions against hand-computed values, their invariants, and `rotsweep predict`."""

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from rotsweep import theory
from rotsweep.cli import app
from rotsweep.errors import UserError

# Inputs under which every optimizer has everything it needs.
STATS = dict(dim=64, grad_sq=2.5, grad_l1=6.0)


def approx(expected):
    return pytest.approx(expected, rel=1e-12)


def test_adamw_by_hand():
    # η=0.05, λ=0.1, β1=0.8, C=200: (1−β1)/(1+β1) = 0.2/1.8 = 1/9, 2ηλ = 0.01.
    kw = dict(beta1=0.8, dim=200)
    assert theory.expected_rotation("adamw", 0.05, 0.1, beta1=0.8) == approx(math.sqrt(0.01 / 9))  # = 1/30
    assert theory.rms_update("adamw", 0.05, **kw) == approx(0.05 * math.sqrt(200 / 9))  # 0.2357
    assert theory.equilibrium_norm("adamw", 0.05, 0.1, **kw) == approx(math.sqrt(50))  # sqrt(0.05·200/0.2)
    # Exact (eq. 18): 2λ − ηλ² = 0.2 − 0.0005 = 0.1995, 2ηλ − η²λ² = 0.01 − 0.000025 = 0.009975.
    assert theory.equilibrium_norm("adamw", 0.05, 0.1, exact=True, **kw) == approx(math.sqrt(10 / 0.1995))
    assert theory.expected_rotation("adamw", 0.05, 0.1, beta1=0.8, exact=True) == approx(math.sqrt(0.009975 / 9))
    # Table 6: τ_g = η·sqrt(C) = 0.05·sqrt(200), τ_r = sqrt(2ηλ) = 0.1.
    assert theory.diffusion_rates("adamw", 0.05, 0.1, **kw) == (approx(0.05 * math.sqrt(200)), approx(0.1))


def test_sgdm_by_hand():
    # η=0.1, λ=0.01, α=0.5: η̂_r = sqrt(2·0.001/1.5) = sqrt(1/750).
    assert theory.expected_rotation("sgdm", 0.1, 0.01, momentum=0.5) == approx(math.sqrt(1 / 750))
    # η̂_g with E‖g‖² = 9: 0.1·sqrt(9/(1 − 0.25)) = 0.1·sqrt(12).
    assert theory.rms_update("sgdm", 0.1, momentum=0.5, grad_sq=9.0) == approx(0.1 * math.sqrt(12))
    # ‖ω̂‖ with E‖g̃‖² = 4: (0.1·4 / (2·0.01·0.5))^(1/4) = 40^(1/4); exact: 0.4/(0.01 − 0.1·0.01²) = 0.4/0.00999.
    assert theory.equilibrium_norm("sgdm", 0.1, 0.01, momentum=0.5, grad_sq=4.0) == approx(40**0.25)
    assert theory.equilibrium_norm("sgdm", 0.1, 0.01, momentum=0.5, grad_sq=4.0, exact=True) == approx(
        (0.4 / 0.00999) ** 0.25)
    # Exact η̂_r (eq. 50 with 54): (2ηλ(1−α) − η²λ²)/(1−α²) = (0.001 − 0.000001)/0.75.
    assert theory.expected_rotation("sgdm", 0.1, 0.01, momentum=0.5, exact=True) == approx(
        math.sqrt(0.000999 / 0.75))
    # Table 6: τ_r = sqrt(2ηλ/(1−α)) = sqrt(0.004); τ_g = η·sqrt(E‖g‖²)/(1−α) at ‖ω̂‖: E‖g‖² = 4/sqrt(40).
    tau_g, tau_r = theory.diffusion_rates("sgdm", 0.1, 0.01, momentum=0.5, grad_sq=4.0)
    assert tau_r == approx(math.sqrt(0.004))
    assert tau_g == approx(0.1 * math.sqrt(4 / math.sqrt(40)) / 0.5)


def test_lion_by_hand():
    # β1=β2=0.5: K = 0.25 + 0.25·0.5/1.5 = 1/3. η=0.003, λ=1: η̂_r = sqrt(π·0.003/3) = sqrt(0.001π).
    kw = dict(beta1=0.5, beta2=0.5)
    assert theory.lion_factor(0.5, 0.5) == approx(1 / 3)
    assert theory.expected_rotation("lion", 0.003, 1.0, **kw) == approx(math.sqrt(0.001 * math.pi))
    # C=100: η̂_g = 0.003·10 = 0.03; ‖ω̂‖ = sqrt(0.003·100/π)·sqrt(3) = sqrt(0.9/π).
    assert theory.rms_update("lion", 0.003, dim=100, **kw) == approx(0.03)
    assert theory.equilibrium_norm("lion", 0.003, 1.0, dim=100, **kw) == approx(math.sqrt(0.9 / math.pi))
    # Exact (eq. 73): 2ηC/(πK(2λ − ηλ²)) = 0.6·3/(π·1.997).
    assert theory.equilibrium_norm("lion", 0.003, 1.0, dim=100, exact=True, **kw) == approx(
        math.sqrt(1.8 / (math.pi * 1.997)))
    # Official-code defaults β=(0.9, 0.99): K = 0.01 + 0.81·0.01/1.99.
    k = 0.01 + 0.81 * 0.01 / 1.99
    assert theory.expected_rotation("lion", 1e-3, 1.0, beta1=0.9, beta2=0.99) == approx(math.sqrt(math.pi * 1e-3 * k))


def test_adam_l2_by_hand():
    # η=0.001, λ=0.0005: η/(2λ) = 1, so ‖ω̂‖ = (1·⟨1, sqrt(E[g̃²])⟩)^(1/3) = 8^(1/3) = 2.
    kw = dict(beta1=0.8, dim=36, grad_l1=8.0)
    assert theory.equilibrium_norm("adam-l2", 0.001, 0.0005, **kw) == approx(2.0)
    # η̂_g = 0.001·sqrt(36/9) = 0.002, so η̂_r = 0.001; eq. 94: (2·1e-6·5e-4/8)^(1/3)·sqrt(36/9) = 5e-4·2.
    assert theory.rms_update("adam-l2", 0.001, beta1=0.8, dim=36) == approx(0.002)
    assert theory.expected_rotation("adam-l2", 0.001, 0.0005, **kw) == approx(0.001)
    # The ℓ2 term's square cancels exactly (eq. 85-86): exact and Table 1 agree.
    assert theory.expected_rotation("adam-l2", 0.001, 0.0005, exact=True, **kw) == approx(0.001)
    # Diffusion (eq. 81, not in Table 6): τ_g = η·sqrt(C) = 0.006, τ_r = τ_g/‖ω̂‖ = 0.003.
    assert theory.diffusion_rates("adam-l2", 0.001, 0.0005, **kw) == (approx(0.006), approx(0.003))


@pytest.mark.parametrize("optimizer", theory.OPTIMIZERS)
@pytest.mark.parametrize("exact", [False, True])
def test_rotation_is_rms_update_over_norm(optimizer, exact):
    p = theory.predict(optimizer, 0.02, 0.3, exact=exact, **STATS)
    assert p["eta_r"] == approx(p["eta_g"] / p["norm"])
    assert p["tau_r"] == approx(p["tau_g"] / p["norm"])


@pytest.mark.parametrize("optimizer", theory.OPTIMIZERS)
def test_exact_tends_to_table1_as_eta_lambda_vanishes(optimizer):
    gaps = []
    for lr in (1e-1, 1e-3, 1e-5):
        exact, table = (theory.predict(optimizer, lr, 0.5, exact=e, **STATS) for e in (True, False))
        gaps.append(max(abs(exact[k] / table[k] - 1) for k in ("eta_r", "norm")))
        decay = lr * 0.5 / (1 - 0.9) if optimizer == "sgdm" else lr * 0.5  # the d of the module docstring
        assert gaps[-1] <= decay  # the dropped term is d² against 2d
    if optimizer == "adam-l2":
        assert gaps == [0, 0, 0]
    else:
        assert gaps[0] > gaps[1] > gaps[2] > 0


@pytest.mark.parametrize("optimizer", theory.OPTIMIZERS)
def test_transient_fixed_point_is_the_exact_equilibrium(optimizer):
    lr, wd = 0.01, 0.2
    norm_hat = theory.equilibrium_norm(optimizer, lr, wd, exact=True, **STATS)
    run = theory.transient(optimizer, lr, wd, norm0=norm_hat, steps=50, **STATS)
    np.testing.assert_allclose(run["norm"], norm_hat, rtol=1e-12)
    eta_r_exact = theory.expected_rotation(optimizer, lr, wd, exact=True, dim=STATS["dim"], grad_l1=STATS["grad_l1"])
    np.testing.assert_allclose(run["rotation"], eta_r_exact, rtol=1e-12)


@pytest.mark.parametrize("optimizer", theory.OPTIMIZERS)
@pytest.mark.parametrize("start", [0.1, 10.0])
def test_transient_converges_to_the_equilibrium(optimizer, start):
    lr, wd = 0.01, 0.2
    norm_hat = theory.equilibrium_norm(optimizer, lr, wd, exact=True, **STATS)
    run = theory.transient(optimizer, lr, wd, norm0=start * norm_hat, steps=20_000, **STATS)
    assert run["norm"].shape == run["rotation"].shape == (20_000,)
    assert run["norm"][0] == approx(start * norm_hat)
    assert run["norm"][-1] == pytest.approx(norm_hat, rel=1e-6)
    # A small norm rotates fast and a large one slowly: the rotation approaches η̂_r from the other side.
    eta_r = theory.expected_rotation(optimizer, lr, wd, exact=True, dim=STATS["dim"], grad_l1=STATS["grad_l1"])
    assert (run["rotation"][0] > eta_r) == (start < 1)


def test_transient_follows_a_schedule_step_by_step():
    # AdamW, C=10, norm0=1: E‖ω_1‖² = (1 − 0.1·0.5)²·1 + 0.1²·10 = 0.9025 + 0.1 = 1.0025,
    # then with η=0.2: E‖ω_2‖² = (1 − 0.2·0.5)²·1.0025 + 0.2²·10 = 0.81·1.0025 + 0.4 = 1.212025.
    run = theory.transient("adamw", np.array([0.1, 0.2, 0.0]), 0.5, dim=10, norm0=1.0, beta1=0.0)
    np.testing.assert_allclose(run["norm"] ** 2, [1.0, 1.0025, 1.212025], rtol=1e-12)
    # β1=0: the rotation is η·sqrt(C)/‖ω‖.
    np.testing.assert_allclose(run["rotation"], [0.1 * 10**0.5, 0.2 * 10**0.5 / 1.0025**0.5, 0.0], rtol=1e-12)


def test_transient_broadcasts_over_neurons():
    norm0 = np.array([0.5, 1.0, 2.0])
    grad_sq = np.array([1.0, 2.0, 4.0])
    run = theory.transient("sgdm", 0.1, 1e-3, norm0=norm0, grad_sq=grad_sq, steps=30)
    assert run["norm"].shape == (30, 3)
    single = theory.transient("sgdm", 0.1, 1e-3, norm0=2.0, grad_sq=4.0, steps=30)
    np.testing.assert_allclose(run["norm"][:, 2], single["norm"], rtol=1e-14)


@pytest.mark.parametrize("optimizer", theory.OPTIMIZERS)
def test_vectorised_over_a_grid(optimizer):
    lr, wd = np.meshgrid(np.logspace(-4, -1, 5), np.logspace(-3, 0, 4))
    grid = theory.expected_rotation(optimizer, lr, wd, dim=STATS["dim"], grad_l1=STATS["grad_l1"])
    assert grid.shape == (4, 5)
    for index in np.ndindex(grid.shape):
        scalar = theory.expected_rotation(optimizer, float(lr[index]), float(wd[index]), dim=STATS["dim"],
                                          grad_l1=STATS["grad_l1"])
        assert grid[index] == approx(scalar)
    norms = theory.equilibrium_norm(optimizer, lr, wd, **STATS)
    assert norms.shape == (4, 5) and np.all(np.isfinite(norms))


@pytest.mark.parametrize("optimizer", ["adamw", "sgdm", "lion"])
def test_hyperparameter_only_rotation_stays_a_python_float(optimizer):
    # The rotational optimizer calls this every step with the scheduled lr.
    assert type(theory.expected_rotation(optimizer, 0.01, 0.1)) is float


@pytest.mark.parametrize("call, name", [
    (lambda: theory.expected_rotation("adam-l2", 0.01, 0.1, grad_l1=1.0), "dim"),
    (lambda: theory.expected_rotation("adam-l2", 0.01, 0.1, dim=8), "grad_l1"),
    (lambda: theory.equilibrium_norm("sgdm", 0.01, 0.1), "grad_sq"),
    (lambda: theory.equilibrium_norm("adamw", 0.01, 0.1), "dim"),
    (lambda: theory.rms_update("lion", 0.01), "dim"),
    (lambda: theory.rms_update("sgdm", 0.01), "grad_sq"),
    (lambda: theory.diffusion_rates("adamw", 0.01, 0.1), "dim"),
    (lambda: theory.transient("adam-l2", 0.01, 0.1, dim=8, norm0=1.0, steps=3), "grad_l1"),
    (lambda: theory.transient("adamw", 0.01, 0.1, dim=8, norm0=1.0), "steps"),
])
def test_missing_inputs_name_the_argument(call, name):
    with pytest.raises(UserError, match=name):
        call()


def test_unknown_optimizer():
    with pytest.raises(UserError, match="adamw, adam-l2, sgdm, lion"):
        theory.expected_rotation("adam", 0.01, 0.1)


def test_predict_without_sizes_keeps_the_rotations():
    assert set(theory.predict("adamw", 0.01, 0.1)) == {"eta_r", "tau_r"}
    assert set(theory.predict("sgdm", 0.01, 0.1)) == {"eta_r", "tau_r"}
    assert set(theory.predict("lion", 0.01, 0.1, dim=4)) == {"eta_g", "eta_r", "norm", "tau_g", "tau_r"}


# ---- rotsweep predict ----------------------------------------------------------------------------

runner = CliRunner()


def predict_cli(*args):
    return runner.invoke(app, ["predict", *args])


def test_cli_json_adam_l2():
    # C=36, --grad-norm 4/3: ⟨1, sqrt(E[g̃²])⟩ = sqrt(36)·4/3 = 8, so the adam-l2 hand example above.
    result = predict_cli("--optimizer", "adam-l2", "--lr", "0.001", "--weight-decay", "0.0005", "--dim", "36",
                         "--beta1", "0.8", "--grad-norm", str(4 / 3), "--json")
    assert result.exit_code == 0, result.output
    values = json.loads(result.stdout)
    assert set(values) == {"eta_g", "eta_r", "norm", "tau_g", "tau_r"}
    assert values["norm"] == approx(2.0)
    assert values["eta_g"] == approx(0.002)
    assert values["eta_r"] == approx(0.001)
    assert values["tau_r"] == approx(0.003)


def test_cli_json_sgdm_uses_grad_norm_squared():
    result = predict_cli("--optimizer", "sgdm", "--lr", "0.1", "--weight-decay", "0.01", "--momentum", "0.5",
                         "--grad-norm", "2", "--json")
    assert result.exit_code == 0, result.output
    values = json.loads(result.stdout)
    assert values["norm"] == approx(40**0.25)  # E‖g̃‖² = 4, as in test_sgdm_by_hand
    assert values["eta_r"] == approx(math.sqrt(1 / 750))
    assert values == pytest.approx(theory.predict("sgdm", 0.1, 0.01, momentum=0.5, grad_sq=4.0), rel=1e-12)


def test_cli_optional_flags_leave_out_what_they_feed():
    result = predict_cli("--optimizer", "adamw", "--lr", "0.05", "--weight-decay", "0.1", "--beta1", "0.8", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"eta_r": approx(1 / 30), "tau_r": approx(0.1)}
    result = predict_cli("--optimizer", "sgdm", "--lr", "0.1", "--weight-decay", "0.01", "--json")
    assert set(json.loads(result.stdout)) == {"eta_r", "tau_r"}


def test_cli_text_output():
    result = predict_cli("--optimizer", "lion", "--lr", "0.003", "--weight-decay", "1", "--dim", "100",
                         "--beta1", "0.5", "--beta2", "0.5")
    assert result.exit_code == 0, result.output
    assert "eta_g  0.03\n" in result.stdout


@pytest.mark.parametrize("args, flag", [
    (["--optimizer", "adam", "--lr", "0.1", "--weight-decay", "0.1"], "--optimizer"),
    (["--optimizer", "adamw", "--lr", "0", "--weight-decay", "0.1"], "--lr"),
    (["--optimizer", "adamw", "--lr", "-1", "--weight-decay", "0.1"], "--lr"),
    (["--optimizer", "adamw", "--lr", "0.1", "--weight-decay", "-0.1"], "--weight-decay"),
    (["--optimizer", "adamw", "--lr", "0.1", "--weight-decay", "0"], "--weight-decay"),
    (["--optimizer", "adamw", "--lr", "0.1", "--weight-decay", "0.1", "--beta1", "1"], "--beta1"),
    (["--optimizer", "lion", "--lr", "0.1", "--weight-decay", "0.1", "--beta2", "-0.5"], "--beta2"),
    (["--optimizer", "sgdm", "--lr", "0.1", "--weight-decay", "0.1", "--momentum", "1.5"], "--momentum"),
    (["--optimizer", "adamw", "--lr", "0.1", "--weight-decay", "0.1", "--dim", "0"], "--dim"),
    (["--optimizer", "sgdm", "--lr", "0.1", "--weight-decay", "0.1", "--grad-norm", "0"], "--grad-norm"),
    (["--optimizer", "adam-l2", "--lr", "0.1", "--weight-decay", "0.1", "--dim", "8"], "--grad-norm"),
    (["--optimizer", "adam-l2", "--lr", "0.1", "--weight-decay", "0.1", "--grad-norm", "1"], "--dim"),
])
def test_cli_errors_are_one_line_naming_the_flag(args, flag):
    result = predict_cli(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0]
