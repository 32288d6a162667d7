"""The demo's findings on small hand-built results tables: each verdict, and when it is not resolved.

Every table here has the columns gather writes (runs rows are built from real RunConfigs),
with numbers chosen so that each finding's comparison has a known sign on every seed, the
opposite sign, or a sign that changes from seed to seed. A finding that compared the wrong
way round, picked the wrong run, or ignored the spread over seeds fails one of these.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from rotsweep import demo
from rotsweep.analysis.gather import CONFIG_TYPES, JSON_FIELDS
from rotsweep.config import RunConfig
from rotsweep.demo import DOES_NOT_SHOW, NOT_RESOLVED, SHOWS, Effect
from rotsweep.presets import preset

SEEDS = (0, 1, 2)


def run_row(config: RunConfig, **columns) -> dict:
    """A runs.parquet row of a finished run: its config's columns (dicts as JSON, as gather stores them)."""
    row = {name: json.dumps(getattr(config, name), sort_keys=True, separators=(",", ":")) if name in JSON_FIELDS
           else getattr(config, name) for name in CONFIG_TYPES}
    row.update(run_id=config.run_id, status="done", total_steps=config.steps, warmup_total_steps=config.warmup_steps)
    row.update(columns)
    return row


# --- The verdict rule ----------------------------------------------------------------------


def t_cdf(t: float, dof: int) -> float:
    """Student's t CDF by integrating its density (Simpson's rule) from 0 to t."""
    x = np.linspace(0.0, t, 20001)
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    density = np.exp(log_norm - (dof + 1) / 2 * np.log1p(x**2 / dof))
    h = x[1] - x[0]
    integral = h / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())
    return 0.5 + integral


def test_t_quantiles_are_the_97_5_percent_points_of_student_t():
    assert demo.t_975(1) == pytest.approx(math.tan(math.pi * 0.475), abs=1e-3)  # Cauchy
    assert demo.t_975(2) == pytest.approx(0.95 * math.sqrt(2 / (4 * 0.975 * 0.025)), abs=1e-3)  # closed form
    for dof in range(1, 31):  # the table holds the quantile rounded to three decimals
        assert t_cdf(demo.t_975(dof) - 5e-4, dof) < 0.975 < t_cdf(demo.t_975(dof) + 5e-4, dof), dof
    assert demo.t_975(100) == demo.t_975(30)  # conservative beyond the table


def test_effect_margin_is_the_95_percent_confidence_half_width_over_seeds():
    values = {0: 0.30, 1: 0.20, 2: 0.26}
    effect = Effect(values, "nats")
    s = np.std(list(values.values()), ddof=1)
    assert effect.mean == pytest.approx(np.mean(list(values.values())))
    assert effect.spread == pytest.approx(s)
    assert effect.margin == pytest.approx(4.303 * s / math.sqrt(3), rel=1e-3)
    assert effect.verdict == SHOWS  # 0.253 > 0.125
    assert Effect({k: -v for k, v in values.items()}, "nats").verdict == DOES_NOT_SHOW
    # Same mean, seeds far apart: the interval contains zero.
    assert Effect({0: 0.9, 1: -0.4, 2: 0.26}, "nats").verdict == NOT_RESOLVED
    # One seed measures no noise, however large its effect; NaN seeds do not count.
    one = Effect({0: 5.0, 1: math.nan}, "nats")
    assert (one.n, one.margin, one.verdict) == (1, math.inf, NOT_RESOLVED)
    assert "one seed" in one.describe()


def test_effect_line_names_effect_spread_and_margin():
    text = Effect({0: 0.30, 1: 0.10, 2: 0.26}, "nats").describe()
    assert "effect +0.22 nats (mean of 3 seeds)" in text
    assert "spread over seeds 0.11" in text and "margin 0.26" in text


# --- Random walk (Figure 9) ----------------------------------------------------------------


def walk(eta_r_ratio: float, norm_ratio: float, beta2: float = 0.999) -> dict:
    return {"eta_r_measured": 0.01 * eta_r_ratio, "eta_r_predicted": 0.01, "norm_measured": 2.0 * norm_ratio,
            "norm_predicted": 2.0, "steps": 100, "beta2": beta2}


def walks(ratios_by_seed: dict[int, dict[str, tuple[float, float]]]) -> dict:
    return {seed: {name: walk(*ratios) for name, ratios in by_name.items()} for seed, by_name in ratios_by_seed.items()}


def test_random_walk_shows_within_tolerance_and_not_outside():
    inside = walks({0: {"adamw": (1.01, 0.99), "lion": (0.99, 1.01)}, 1: {"adamw": (1.012, 0.992), "lion": (0.985, 1.0)},
                    2: {"adamw": (1.008, 0.99), "lion": (0.99, 1.015)}})
    found = demo.finding_randomwalk(inside)
    assert found.verdict == SHOWS
    # The effect is the distance of the worst ratio inside the 5% tolerance.
    assert found.effect.per_seed[1] == pytest.approx(0.05 - 0.015)
    outside = walks({seed: {"adamw": (1.0, 1.0), "lion": (0.88 + 0.01 * seed, 1.0)} for seed in SEEDS})
    assert demo.finding_randomwalk(outside).verdict == DOES_NOT_SHOW
    # At the edge of the tolerance, seed to seed on both sides: not resolved.
    edge = walks({seed: {"adamw": (1.0, 1.0), "lion": (1.0, ratio)} for seed, ratio in zip(SEEDS, (1.03, 1.07, 1.05))})
    assert demo.finding_randomwalk(edge).verdict == NOT_RESOLVED


# --- Layer spread, Adam+ℓ2 vs AdamW (Figure 6) ---------------------------------------------


def layer_spread_tables(spread: dict[str, float], seed_shift: dict[int, float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per seed, two runs per optimizer. The better (top1 0.8) has four layers whose η_r span a factor
    exp(spread[optimizer]) (Adam+ℓ2's shifted by seed_shift[seed]); the worse (top1 0.5) spans the
    other optimizer's spread, so that picking the wrong run reverses the verdict."""
    runs, layers = [], []
    for seed in SEEDS:
        for optimizer, other in (("adamw", "adam-l2"), ("adam-l2", "adamw")):
            for top1, span in ((0.8, spread[optimizer] + seed_shift[seed] * (optimizer == "adam-l2")),
                               (0.5, spread[other])):
                config = preset("tiny-resnet20-adamw", model="resnet18", optimizer=optimizer, seed=seed,
                                lr=0.01 if top1 > 0.6 else 0.04)
                eta_r = 0.01 * np.exp(np.linspace(0.0, span, 4))  # four layers, max / min = exp(span)
                runs.append(run_row(config, final_val_top1=top1, imbalance_layers=float(np.std(np.log(eta_r)))))
                layers += [{"run_id": config.run_id, "param": f"layer{k}.weight", "eta_r": r} for k, r in enumerate(eta_r)]
    return pd.DataFrame(runs), pd.DataFrame(layers)


def test_layer_spread_shows_when_adam_l2_layers_spread_over_an_order_of_magnitude():
    runs, layers = layer_spread_tables({"adamw": 0.1, "adam-l2": 4.0}, {0: 0.0, 1: 0.3, 2: -0.2})
    found = demo.finding_layer_spread(runs, layers)
    assert found.verdict == SHOWS
    best = found.numbers["per_seed"][1]["adam-l2"]
    assert best["val_top1"] == 0.8 and best["max_over_min_layer_eta_r"] == pytest.approx(math.exp(4.3))
    # Per seed: the smaller of the difference in spread and log(max/min / 10).
    std = lambda span: float(np.std(np.linspace(0.0, span, 4)))  # noqa: E731
    assert found.effect.per_seed[0] == pytest.approx(min(std(4.0) - std(0.1), 4.0 - math.log(10)))


def test_layer_spread_does_not_show_when_adamw_spreads_more():
    runs, layers = layer_spread_tables({"adamw": 4.0, "adam-l2": 0.5}, {0: 0.0, 1: 0.1, 2: -0.1})
    assert demo.finding_layer_spread(runs, layers).verdict == DOES_NOT_SHOW


def test_layer_spread_needs_an_order_of_magnitude_and_is_not_resolved_at_its_edge():
    # Adam+ℓ2 spreads more than AdamW, but over 10× on one seed and less on the others.
    runs, layers = layer_spread_tables({"adamw": 0.1, "adam-l2": math.log(10)}, {0: 0.5, 1: -0.4, 2: 0.1})
    assert demo.finding_layer_spread(runs, layers).verdict == NOT_RESOLVED
    # Clearly under 10× on every seed: does not show, however much more it spreads than AdamW.
    runs, layers = layer_spread_tables({"adamw": 0.0, "adam-l2": math.log(4)}, {0: 0.0, 1: 0.05, 2: -0.05})
    assert demo.finding_layer_spread(runs, layers).verdict == DOES_NOT_SHOW


# --- No transient (Figure 4 M/R) -----------------------------------------------------------

ETA_LAMBDA = 5e-3


def eta_r_hat(lr: float) -> float:
    """Table 1, AdamW: sqrt(2ηλ(1−β1)/(1+β1)) with β1 = 0.9."""
    return math.sqrt(2 * lr * (ETA_LAMBDA / lr) * 0.1 / 1.9)


def transient_tables(early: dict[int, dict[str, float]]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Constant-lr runs of 100 steps at two lrs; early[seed][name] is the measured / η̂_r ratio over the first
    10 steps. Later steps, and a bias that gather does not measure, rotate at ratios that would reverse it."""
    runs, layers, dynamics = [], [], []
    for seed, ratio in early.items():
        for lr in (1e-3, 1e-1):
            for name, rotational in (("adamw", False), ("rv-adamw", True)):
                config = preset("tiny-resnet20-adamw", seed=seed, lr=lr, weight_decay=ETA_LAMBDA / lr,
                                rotational=rotational, schedule="constant", warmup_steps=0, steps=100)
                runs.append(run_row(config))
                layers += [{"run_id": config.run_id, "param": p, "eta_r": 1.0} for p in ("a.weight", "b.weight")]
                reverse = ratio["rv-adamw" if name == "adamw" else "adamw"]
                for step in range(0, 100, 5):
                    value = (ratio[name] if step <= 10 else reverse) * eta_r_hat(lr)
                    dynamics += [{"run_id": config.run_id, "step": step, "param": p, "stat": "angular_update",
                                  "reduction": "mean", "value": value} for p in ("a.weight", "b.weight")]
                    dynamics.append({"run_id": config.run_id, "step": step, "param": "a.bias", "stat": "angular_update",
                                     "reduction": "mean", "value": reverse * eta_r_hat(lr)})
    return pd.DataFrame(runs), pd.DataFrame(layers), pd.DataFrame(dynamics)


def test_no_transient_shows_when_the_rv_starts_at_eta_r_hat_and_adamw_does_not():
    found = demo.finding_no_transient(*transient_tables(
        {0: {"adamw": 0.1, "rv-adamw": 0.95}, 1: {"adamw": 0.2, "rv-adamw": 1.05}, 2: {"adamw": 0.15, "rv-adamw": 0.9}}))
    assert found.verdict == SHOWS
    assert found.numbers["early_ratio_by_seed"][0]["0.001"] == pytest.approx({"adamw": 0.1, "rv-adamw": 0.95})
    assert found.effect.per_seed[1] == pytest.approx(abs(math.log(0.2)) - abs(math.log(1.05)))


def test_no_transient_does_not_show_when_adamw_is_the_closer():
    found = demo.finding_no_transient(*transient_tables(
        {0: {"adamw": 0.95, "rv-adamw": 0.1}, 1: {"adamw": 1.05, "rv-adamw": 0.2}, 2: {"adamw": 0.9, "rv-adamw": 0.15}}))
    assert found.verdict == DOES_NOT_SHOW


def test_no_transient_counts_distance_either_side_and_is_not_resolved_when_seeds_disagree():
    # Rotating 3× too fast is as far from equilibrium as 3× too slow.
    fast = demo.finding_no_transient(*transient_tables({s: {"adamw": 3.0, "rv-adamw": 1.0 + 0.02 * s} for s in SEEDS}))
    assert fast.verdict == SHOWS
    mixed = demo.finding_no_transient(*transient_tables(
        {0: {"adamw": 0.3, "rv-adamw": 1.0}, 1: {"adamw": 1.0, "rv-adamw": 0.5}, 2: {"adamw": 0.8, "rv-adamw": 1.0}}))
    assert mixed.verdict == NOT_RESOLVED


# --- Warmup (Figure 5) ---------------------------------------------------------------------


def warmup_runs(increase: dict[int, dict[str, float]]) -> pd.DataFrame:
    """Per seed, optimizer and warmup on/off, three lrs; the best loss with warmup is 2.0, without it
    2.0 + increase[seed][name]. The other lrs are worse, a diverged run has the lowest loss of all."""
    rows = []
    for seed, by_name in increase.items():
        for name, rotational in (("adamw", False), ("rv-adamw", True)):
            for warmup in (30, 0):
                best = 2.0 + (by_name[name] if warmup == 0 else 0.0)
                for lr, loss in ((3e-3, best + 0.4), (1.2e-2, best), (4.8e-2, best + 0.1)):
                    config = preset("tiny-gpt2-adamw", seed=seed, lr=lr, warmup_steps=warmup, rotational=rotational,
                                    gain=rotational)
                    rows.append(run_row(config, final_val_loss=loss))
                config = preset("tiny-gpt2-adamw", seed=seed, lr=0.2, warmup_steps=warmup, rotational=rotational)
                rows.append(run_row(config, status="diverged", final_val_loss=0.5))
    return pd.DataFrame(rows)


def test_warmup_shows_when_adamw_loses_more_without_warmup():
    found = demo.finding_warmup(warmup_runs({0: {"adamw": 0.30, "rv-adamw": 0.05}, 1: {"adamw": 0.25, "rv-adamw": 0.02},
                                             2: {"adamw": 0.35, "rv-adamw": 0.06}}))
    assert found.verdict == SHOWS
    assert found.effect.per_seed[1] == pytest.approx(0.25 - 0.02)
    assert found.numbers["per_seed"][0]["adamw"]["best_val_loss_warmup"] == pytest.approx(2.0)
    assert found.numbers["mean_over_seeds"]["adamw"]["loss_increase_without_warmup"] == pytest.approx(0.30)


def test_warmup_does_not_show_when_the_rv_loses_more():
    found = demo.finding_warmup(warmup_runs({0: {"adamw": 0.05, "rv-adamw": 0.30}, 1: {"adamw": 0.02, "rv-adamw": 0.25},
                                             2: {"adamw": 0.06, "rv-adamw": 0.35}}))
    assert found.verdict == DOES_NOT_SHOW


def test_warmup_effect_within_seed_noise_is_not_resolved():
    # The case: AdamW loses 0.014 nats more on average, about the spread over seeds.
    found = demo.finding_warmup(warmup_runs({0: {"adamw": 0.05, "rv-adamw": 0.02}, 1: {"adamw": 0.03, "rv-adamw": 0.04},
                                             2: {"adamw": 0.06, "rv-adamw": 0.04}}))
    assert found.effect.mean == pytest.approx(0.0133, abs=1e-3)
    assert found.verdict == NOT_RESOLVED
    # One seed cannot resolve anything, however large its effect.
    assert demo.finding_warmup(warmup_runs({0: {"adamw": 1.0, "rv-adamw": 0.0}})).verdict == NOT_RESOLVED


# --- Weight Standardization (Figure 7) -----------------------------------------------------


def weight_std_runs(spread: dict[int, dict[float, tuple[float, float]]]) -> pd.DataFrame:
    """spread[seed][lr] = (baseline, WS) std over neurons of log η_r. The RV runs' spread is 0 (by
    construction) and would make any baseline look wider if taken for WS."""
    rows = []
    for seed, by_lr in spread.items():
        for lr, (baseline, ws) in by_lr.items():
            base = dict(seed=seed, lr=lr, model="resnet18-ln", weight_decay=5e-3)
            rows.append(run_row(preset("tiny-resnet20-sgdm", **base), imbalance_neurons=baseline))
            rows.append(run_row(preset("tiny-resnet20-sgdm", **base, weight_standardization=True), imbalance_neurons=ws))
            rows.append(run_row(preset("tiny-resnet20-sgdm", **base, rotational=True, rv_beta=0.99),
                                imbalance_neurons=5.0))
    return pd.DataFrame(rows)


def test_weight_standardization_shows_when_ws_narrows_the_spread_at_every_lr():
    found = demo.finding_weight_standardization(weight_std_runs(
        {seed: {0.05: (0.6 + 0.05 * seed, 0.2), 0.2: (0.5, 0.1 + 0.02 * seed)} for seed in SEEDS}))
    assert found.verdict == SHOWS
    assert found.effect.per_seed[2] == pytest.approx(min(0.7 - 0.2, 0.5 - 0.14))


def test_weight_standardization_does_not_show_when_one_lr_widens():
    found = demo.finding_weight_standardization(weight_std_runs(
        {seed: {0.05: (0.6, 0.2), 0.2: (0.3, 0.6 + 0.03 * seed)} for seed in SEEDS}))
    assert found.verdict == DOES_NOT_SHOW


def test_weight_standardization_not_resolved_when_seeds_disagree():
    found = demo.finding_weight_standardization(weight_std_runs(
        {0: {0.05: (0.6, 0.2)}, 1: {0.05: (0.3, 0.5)}, 2: {0.05: (0.5, 0.4)}}))
    assert found.verdict == NOT_RESOLVED


# --- Which runs the report counts as in equilibrium ----------------------------------------


def settles(**changes) -> bool:
    config = preset("tiny-resnet20-adamw", schedule="constant", warmup_steps=0, **changes)
    return demo.reaches_equilibrium(pd.Series(run_row(config)))


def test_reaches_equilibrium_follows_eq_16_before_the_window():
    # Constant lr, window from step 75 of 300: (1 − ηλ)^150 ≤ e^-3 exactly when ηλ ≥ 1 − e^(-3/150).
    threshold = 1 - math.exp(-3 / 150)
    assert settles(steps=300, lr=0.01, weight_decay=1.02 * threshold / 0.01)
    assert not settles(steps=300, lr=0.01, weight_decay=0.98 * threshold / 0.01)
    # SGDM: momentum multiplies the decay of a step by 1/(1−α).
    assert settles(steps=300, optimizer="sgdm", momentum=0.9, lr=0.01, weight_decay=0.15 * threshold / 0.01)
    assert not settles(steps=300, optimizer="sgdm", momentum=0.0, lr=0.01, weight_decay=0.15 * threshold / 0.01)
    # The RV is in equilibrium from the start; without weight decay, or with Adam+ℓ2, no run is here.
    assert settles(steps=300, lr=1e-4, weight_decay=1e-4, rotational=True)
    assert not settles(steps=300, lr=0.01, weight_decay=0.0)
    assert not settles(steps=300, optimizer="adam-l2", lr=0.01, weight_decay=10.0)
