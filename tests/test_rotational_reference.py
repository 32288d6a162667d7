"""Algorithm 1 recomputed by hand in float64, step for step, against the rotational wrapper.

test_optim.py checks rates and norms: the RMS tracker makes the rotation rate
≈ η̂_r whatever the direction, so those tests cannot see a wrong direction. Here
every line of Algorithm 1 (the inner update direction, the projections of line
12, the RMS tracker of line 14 with its bias correction, the step of line 16
and the renormalisation of line 18) and Table 1's η̂_r are written out again
independently, in float64, and the wrapper's new weights must match them
elementwise after each of several steps with a changing lr. Everything goes
through the public API (build_optimizer, param_groups, imbalance_masks), so the
tests guard whatever implementation of the wrapper lands.
"""

import math

import pandas as pd
import pytest
import torch

from rotsweep import store, train
from rotsweep.optim import build_optimizer
from rotsweep.presets import preset

INNERS = ("adamw", "adam-l2", "sgdm", "lion")
# A changing lr, as a schedule sets it between steps: η̂_r must follow it at every step.
LRS = (0.02, 0.01, 0.03, 0.005, 0.015, 0.02)
WEIGHT_DECAY = 0.1
# Deliberately not the defaults, so that a hyperparameter that does not arrive shows.
BETAS = (0.8, 0.95)
MOMENTUM = 0.85
EPS = 1e-6
RMS_BETA = 0.85
ROTATIONAL_EPS = 1e-8
# float32 wrapper against float64 reference: each step moves elements by ~1e-2 here.
TOLERANCE = 2e-5


def table1_eta_r(optimizer: str, lr: float, weight_decay: float = WEIGHT_DECAY) -> float:
    """η̂_r of Table 1, written out: AdamW sqrt(2ηλ(1−β1)/(1+β1)), SGDM sqrt(2ηλ/(1+α)),
    Lion sqrt(πηλ)·sqrt((1−β1)² + β1²(1−β2)/(1+β2))."""
    beta1, beta2 = BETAS
    if optimizer == "adamw":
        return math.sqrt(2 * lr * weight_decay * (1 - beta1) / (1 + beta1))
    if optimizer == "sgdm":
        return math.sqrt(2 * lr * weight_decay / (1 + MOMENTUM))
    assert optimizer == "lion"
    return math.sqrt(math.pi * lr * weight_decay) * math.sqrt((1 - beta1) ** 2 + beta1**2 * (1 - beta2) / (1 + beta2))


class Algorithm1:
    """One weight tensor under Algorithm 1 in float64; `p` holds its neurons as rows."""

    def __init__(self, weight: torch.Tensor, inner: str, *, per_neuron: bool, zero_mean: bool,
                 speed: torch.Tensor, eta_r: float | None = None, weight_decay: float = WEIGHT_DECAY):
        self.shape, self.weight_decay = weight.shape, weight_decay
        self.inner, self.zero_mean, self.speed, self.fixed_eta_r = inner, zero_mean, speed.unsqueeze(1), eta_r
        p = weight.double().reshape(weight.shape[0] if per_neuron else 1, -1)
        self.n = p.norm(dim=1, keepdim=True)  # line 1: n_p ← ‖p‖
        if zero_mean:  # lines 2-4: p ← n_p·(p − p̄)/‖p − p̄‖
            p = p - p.mean(dim=1, keepdim=True)
            p = self.n * p / p.norm(dim=1, keepdim=True)
        self.p = p
        self.m = torch.zeros_like(p)  # the inner optimizer's first moment (SGDM: momentum buffer)
        self.v = torch.zeros_like(p)  # the Adam second moment
        self.nu = torch.zeros_like(self.n)  # the RMS tracker of line 14
        self.t = 0

    def weight(self) -> torch.Tensor:
        return self.p.reshape(self.shape)

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        """Lines 9-11: d = Δ_g p/(−η), the inner optimizer's update without its weight decay, divided by −η
        (so d points the way the gradient does, and line 16 subtracts it)."""
        beta1, beta2, t = *BETAS, self.t
        if self.inner in ("adamw", "adam-l2"):
            # Adam+ℓ2 (eq. 76-78): the second moment is of g + λp; the λp part of the first
            # moment is Δ_λ p, which Algorithm 1 does not use.
            seen = g if self.inner == "adamw" else g + self.weight_decay * self.p
            self.m = beta1 * self.m + (1 - beta1) * g
            self.v = beta2 * self.v + (1 - beta2) * seen**2
            return (self.m / (1 - beta1**t)) / ((self.v / (1 - beta2**t)).sqrt() + EPS)
        if self.inner == "sgdm":  # eq. 44 without its ℓ2 term, no dampening
            self.m = MOMENTUM * self.m + g
            return self.m
        d = torch.sign(beta1 * self.m + (1 - beta1) * g)  # Lion, eq. 55-56
        self.m = beta2 * self.m + (1 - beta2) * g
        return d

    def step(self, g: torch.Tensor, lr: float) -> None:
        self.t += 1
        d = self.direction(g.double().reshape(self.p.shape))
        p = self.p
        d = d - (d * p).sum(dim=1, keepdim=True) / (p * p).sum(dim=1, keepdim=True) * p  # line 12: d ⊥ p
        if self.zero_mean:
            d = d - d.mean(dim=1, keepdim=True)  # line 12: d ⊥ 1
        self.nu = RMS_BETA * self.nu + (1 - RMS_BETA) * (d * d).sum(dim=1, keepdim=True)  # line 14
        eta_r = self.fixed_eta_r if self.fixed_eta_r is not None else table1_eta_r(
            "adamw" if self.inner == "adam-l2" else self.inner, lr, self.weight_decay)
        rms = (self.nu / (1 - RMS_BETA**self.t)).sqrt()
        p = p - eta_r * self.speed * self.n * d / (rms + ROTATIONAL_EPS)  # line 16 (times the imbalance factor)
        self.p = self.n * p / p.norm(dim=1, keepdim=True)  # line 18


def neuron_speeds(optimizer, n_neurons: int, index: int = 0) -> torch.Tensor:
    """1/f for the slow neurons of parameter `index`, f for its fast ones, 1 for the rest (Appendix J, Figure 16)."""
    speed = torch.ones(n_neurons, dtype=torch.float64)
    mask = optimizer.imbalance_masks().get(index)
    if mask is not None:
        speed[mask["slow"]] = 1 / mask["factor"]
        speed[mask["fast"]] = mask["factor"]
    return speed


def run_both(inner, *, per_neuron=True, zero_mean=True, imbalance=None, eta_r=None, seed=0, impl=None):
    """Yield (wrapper weight, reference) after construction and after each step of LRS (impl: the wrapper's)."""
    generator = torch.Generator().manual_seed(seed)
    # Conv-shaped: a neuron is a filter of 3·2·2 weights; + 0.3 gives the rows a mean to remove.
    weight = torch.nn.Parameter(torch.randn(8, 3, 2, 2, generator=generator) + 0.3)
    grads = [torch.randn(weight.shape, generator=generator) for _ in LRS]
    initial = weight.detach().clone()
    options = dict(per_neuron=per_neuron, zero_mean=zero_mean, rms_beta=RMS_BETA, rotational_eps=ROTATIONAL_EPS)
    if inner == "adam-l2":
        options["eta_r_from"] = "adamw"  # Appendix J: Adam+ℓ2's direction, AdamW's η̂_r
    if imbalance:
        options.update(imbalance_mode=imbalance, imbalance_portion=0.5, imbalance_factor=3.0)
    if eta_r is not None:
        options["eta_r"] = eta_r
    optimizer = build_optimizer(inner, [weight], rotational=True, lr=LRS[0], weight_decay=WEIGHT_DECAY,
                                betas=BETAS, momentum=MOMENTUM, eps=EPS, impl=impl, **options)
    speed = neuron_speeds(optimizer, 8) if per_neuron else torch.ones(1, dtype=torch.float64)
    reference = Algorithm1(initial, inner, per_neuron=per_neuron, zero_mean=zero_mean, speed=speed, eta_r=eta_r)
    yield weight.detach(), reference
    for lr, grad in zip(LRS, grads):
        for group in optimizer.param_groups:
            group["lr"] = lr
        weight.grad = grad.clone()
        optimizer.step()
        reference.step(grad, lr)
        yield weight.detach(), reference


VARIANTS = [  # (per_neuron, zero_mean, imbalance)
    (True, True, None),
    (True, False, None),
    (False, True, None),
    (False, False, None),
    (True, True, "slow"),
    (True, False, "split"),
]


@pytest.mark.parametrize("per_neuron, zero_mean, imbalance", VARIANTS)
@pytest.mark.parametrize("inner", INNERS)
def test_each_step_is_algorithm_1(inner, per_neuron, zero_mean, imbalance):
    start = None
    for step, (weight, reference) in enumerate(run_both(inner, per_neuron=per_neuron, zero_mean=zero_mean,
                                                        imbalance=imbalance)):
        start = weight.clone() if start is None else start
        error = (weight.double() - reference.weight()).abs().max().item()
        assert error < TOLERANCE, f"step {step}: max |wrapper − Algorithm 1| = {error:.3g}"
    # The comparison has teeth: the weights moved by far more than the tolerance.
    assert (weight - start).abs().max().item() > 100 * TOLERANCE


# The other implementations (the tests above run the CPU's default, chunked): every inner optimizer
# with imbalanced neurons, and per-tensor rotation without centring. (Each compiled variant costs a
# compilation, so not every combination.)
IMPL_CASES = [(inner, (True, True, "slow")) for inner in INNERS] + [("adamw", (False, False, None))]


@pytest.mark.parametrize("inner, variant", IMPL_CASES)
@pytest.mark.parametrize("impl", ["grouped", "compiled", "kernel"])
def test_each_implementation_is_algorithm_1(impl, inner, variant):
    per_neuron, zero_mean, imbalance = variant
    for step, (weight, reference) in enumerate(run_both(inner, per_neuron=per_neuron, zero_mean=zero_mean,
                                                        imbalance=imbalance, impl=impl)):
        error = (weight.double() - reference.weight()).abs().max().item()
        assert error < TOLERANCE, f"{impl}, step {step}: max |wrapper − Algorithm 1| = {error:.3g}"


def test_imbalanced_neurons_are_chosen():
    """The imbalanced variants above really have slow (and fast) neurons to get right."""
    for imbalance, fast in (("slow", 0), ("split", 2)):
        weight = torch.nn.Parameter(torch.randn(8, 12))
        optimizer = build_optimizer("adamw", [weight], rotational=True, lr=0.01, weight_decay=0.1,
                                    imbalance_mode=imbalance, imbalance_portion=0.5, imbalance_factor=3.0)
        speed = neuron_speeds(optimizer, 8)
        assert ((speed == 1 / 3).sum().item(), (speed == 3).sum().item()) == (4 if imbalance == "slow" else 2, fast)


@pytest.mark.parametrize("inner", INNERS)
def test_several_tensors_and_groups_each_follow_algorithm_1(inner):
    """Tensors of different shapes share a group; groups differ in λ and zero_mean; neurons are imbalanced.

    An implementation that steps many tensors at once must still give each its own neurons,
    norms, RMS tracker, imbalanced neurons and its group's η̂_r. (Imbalance needs per_neuron for
    every group; per-tensor rotation is checked above. The bias, outside Ω, is test_optim.py's.)
    """
    generator = torch.Generator().manual_seed(3)
    shapes = [(6, 5), (8, 3, 2, 2), (10, 4), (4, 6)]
    weights = [torch.nn.Parameter(torch.randn(shape, generator=generator) + 0.2) for shape in shapes]
    bias = torch.nn.Parameter(torch.randn(6, generator=generator))
    initial = [w.detach().clone() for w in weights]
    groups = [  # (its params, weight decay, zero_mean)
        ([0, 1], 0.1, True),
        ([2], 0.05, False),
        ([3], 0.2, True),
    ]
    options = dict(eta_r_from="adamw") if inner == "adam-l2" else {}
    optimizer = build_optimizer(
        inner, [{"params": [weights[i] for i in members], "weight_decay": wd, "zero_mean": zero_mean}
                for members, wd, zero_mean in groups]
        + [{"params": [bias], "weight_decay": 0.0}],
        rotational=True, lr=LRS[0], betas=BETAS, momentum=MOMENTUM, eps=EPS, rms_beta=RMS_BETA,
        rotational_eps=ROTATIONAL_EPS, imbalance_mode="split", imbalance_portion=0.5, imbalance_factor=3.0,
        **options)
    references = {}
    for members, wd, zero_mean in groups:
        for i in members:
            references[i] = Algorithm1(initial[i], inner, per_neuron=True, zero_mean=zero_mean,
                                       speed=neuron_speeds(optimizer, shapes[i][0], index=i), weight_decay=wd)
    for lr in LRS:
        for group in optimizer.param_groups:
            group["lr"] = lr
        grads = [torch.randn(w.shape, generator=generator) for w in weights]
        for weight, grad in zip(weights, grads):
            weight.grad = grad.clone()
        bias.grad = torch.randn(6, generator=generator)
        optimizer.step()
        for i, reference in references.items():
            reference.step(grads[i], lr)
            error = (weights[i].detach().double() - reference.weight()).abs().max().item()
            assert error < TOLERANCE, f"tensor {shapes[i]}: max |wrapper − Algorithm 1| = {error:.3g}"


@pytest.mark.parametrize("inner", ["sgdm", "lion"])
def test_an_explicit_eta_r_replaces_table_1(inner):
    for weight, reference in run_both(inner, eta_r=0.02, seed=1):
        assert (weight.double() - reference.weight()).abs().max().item() < TOLERANCE


# ------------------------------------------------------------ it descends


@pytest.mark.parametrize("inner", INNERS)
def test_rotational_steps_descend_a_scale_invariant_loss(inner):
    """loss = −Σ_rows ⟨p/‖p‖, target⟩ depends on each neuron's direction only; rotating must lower it."""
    generator = torch.Generator().manual_seed(2)
    weight = torch.nn.Parameter(torch.randn(16, 10, generator=generator))
    target = torch.nn.functional.normalize(torch.randn(16, 10, generator=generator), dim=1)
    target = target - target.mean(dim=1, keepdim=True)  # reachable with centred rows

    def loss():
        return -(torch.nn.functional.normalize(weight, dim=1) * target).sum()

    options = dict(eta_r_from="adamw") if inner == "adam-l2" else {}
    optimizer = build_optimizer(inner, [weight], rotational=True, lr=0.05, weight_decay=0.1, **options)
    start = loss().item()
    for _ in range(100):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < start - 0.5 * (start - (-target.norm(dim=1).sum().item()))  # half way to the optimum


@pytest.mark.parametrize("name", ["tiny-resnet20-adamw", "tiny-gpt2-adamw"])
def test_tiny_rotational_run_learns(tmp_path, name):
    """As test_train.py requires of the AdamW baselines: the training loss falls by at least 20%."""
    config = preset(name, steps=200, rotational=True)
    assert train.run(config, tmp_path) == "done"
    metrics = pd.read_parquet(tmp_path / store.METRICS_FILE)
    loss = metrics[(metrics["split"] == "train") & (metrics["metric"] == "loss")]["value"].to_numpy()
    assert loss[-1] < 0.8 * loss[0], loss
