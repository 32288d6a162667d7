"""rotsweep.optim: Lion, the rotational wrapper (Algorithm 1) and build_optimizer.

Gradients are random and independent of the weights (the random walk of §3),
so the measured rotation must equal Table 1's η̂_r: the RMS tracker divides
each step by the recent RMS of the projected update.
"""

import io
import math
import warnings

import pytest
import torch

from rotsweep import theory
from rotsweep.errors import UserError
from rotsweep.optim import Lion, RotationalWrapper, build_optimizer
from rotsweep.optim import rotational as rotational_module

INNERS = ("adamw", "adam-l2", "sgdm", "lion")
HYPER = dict(lr=0.01, weight_decay=0.1, betas=(0.9, 0.99), momentum=0.9)


def angles(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Angle between matching rows, 2·atan2(‖â − b̂‖, ‖â + b̂‖): accurate for tiny angles too."""
    a = before.double().flatten(1)
    b = after.double().flatten(1)
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    return 2 * torch.atan2((a - b).norm(dim=1), (a + b).norm(dim=1))


def rv_options(inner: str) -> dict:
    return dict(eta_r_from="adamw") if inner == "adam-l2" else {}


def predicted_eta_r(inner: str, lr: float = HYPER["lr"]) -> float:
    return theory.expected_rotation("adamw" if inner == "adam-l2" else inner, lr, HYPER["weight_decay"],
                                    beta1=HYPER["betas"][0], beta2=HYPER["betas"][1], momentum=HYPER["momentum"])


def run(optimizer, params, steps: int, generator: torch.Generator, record=None):
    """`steps` steps with fresh N(0, 1) gradients; returns per-step row angles of `record`."""
    measured = []
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        before = None if record is None else record.detach().clone()
        optimizer.step()
        if record is not None:
            measured.append(angles(before, record.detach()))
    return torch.stack(measured) if measured else None


# ----------------------------------------------------------------- the RV itself


@pytest.mark.parametrize("inner", INNERS)
def test_rotational_invariants(inner):
    """Norms fixed to 1e-6, centred rows, and mean rotation η̂_r within 5%, for every inner optimizer."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(48, 40, generator=generator) + 0.5)
    initial_norm = weight.detach().norm(dim=1)
    optimizer = build_optimizer(inner, [weight], rotational=True, **HYPER, **rv_options(inner))

    assert torch.allclose(weight.detach().mean(dim=1), torch.zeros(48), atol=1e-6)
    assert torch.allclose(weight.detach().norm(dim=1), initial_norm, rtol=1e-6)

    rotation = run(optimizer, [weight], 400, generator, record=weight)
    assert torch.allclose(weight.detach().norm(dim=1), initial_norm, rtol=1e-6, atol=0)
    assert weight.detach().mean(dim=1).abs().max() < 1e-6 * initial_norm.min() / math.sqrt(40)
    # After the moments' transient (~1/(1−β) steps) the mean rotation is η̂_r.
    assert rotation[100:].mean().item() == pytest.approx(predicted_eta_r(inner), rel=0.05)


def test_each_step_restores_the_stored_norm_and_zero_mean():
    """Norm and mean are measured at every step, so rounding errors (here a big disturbance) never add up."""
    generator = torch.Generator().manual_seed(13)
    weight = torch.nn.Parameter(torch.randn(8, 16, generator=generator))
    optimizer = build_optimizer("adamw", [weight], rotational=True, **HYPER)
    stored = weight.detach().norm(dim=1)
    with torch.no_grad():
        weight.mul_(1.01).add_(0.1)
    run(optimizer, [weight], 1, generator)
    assert torch.allclose(weight.detach().norm(dim=1), stored, rtol=1e-6, atol=0)
    assert weight.detach().mean(dim=1).abs().max() < 1e-7


def test_first_step_rotates_by_eta_r_exactly():
    """Bias-corrected ν equals ‖d‖² after one step, so every neuron turns by atan(η̂_r), no transient."""
    generator = torch.Generator().manual_seed(1)
    weight = torch.nn.Parameter(torch.randn(16, 32, generator=generator))
    optimizer = build_optimizer("adamw", [weight], rotational=True, **HYPER)
    rotation = run(optimizer, [weight], 1, generator, record=weight)
    expected = math.atan(predicted_eta_r("adamw"))
    assert torch.allclose(rotation[0], torch.full((16,), expected, dtype=torch.float64), rtol=1e-4)


def test_conv_filters_are_neurons_also_channels_last():
    generator = torch.Generator().manual_seed(2)
    weight = torch.nn.Parameter(torch.randn(8, 6, 3, 3, generator=generator).to(memory_format=torch.channels_last))
    initial_norm = weight.detach().flatten(1).norm(dim=1)
    optimizer = build_optimizer("sgdm", [weight], rotational=True, **HYPER)
    rotation = run(optimizer, [weight], 300, generator, record=weight)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(weight.detach().flatten(1).norm(dim=1), initial_norm, rtol=1e-6, atol=0)
    assert weight.detach().flatten(1).mean(dim=1).abs().max() < 1e-6
    assert rotation[100:].mean().item() == pytest.approx(predicted_eta_r("sgdm"), rel=0.05)


def test_chunks_give_the_same_result_as_whole_tensors(monkeypatch):
    """On the CPU tensors go through in chunks of rows; 3 rows per chunk must change nothing."""
    def trajectory():
        generator = torch.Generator().manual_seed(3)
        weight = torch.nn.Parameter(torch.randn(10, 7, generator=generator))
        optimizer = build_optimizer("adamw", [weight], rotational=True, **HYPER)
        run(optimizer, [weight], 20, generator)
        return weight.detach().clone()

    whole = trajectory()
    monkeypatch.setattr(rotational_module, "_CPU_CHUNK_ELEMENTS", 21)
    assert torch.allclose(trajectory(), whole, rtol=1e-6, atol=1e-7)


def test_per_tensor_mode_keeps_the_tensor_norm_and_rotates_the_tensor():
    generator = torch.Generator().manual_seed(4)
    weight = torch.nn.Parameter(torch.randn(12, 20, generator=generator))
    initial_norm = weight.detach().norm()
    initial_rows = weight.detach().norm(dim=1)
    optimizer = build_optimizer("adamw", [weight], rotational=True, per_neuron=False, **HYPER)
    assert weight.detach().mean().abs() < 1e-6
    before = weight.detach().clone()
    rotation = []
    for _ in range(300):
        weight.grad = torch.randn(weight.shape, generator=generator)
        previous = weight.detach().clone().view(1, -1)
        optimizer.step()
        rotation.append(angles(previous, weight.detach().view(1, -1)))
    assert weight.detach().norm().item() == pytest.approx(initial_norm.item(), rel=1e-6)
    assert not torch.allclose(weight.detach().norm(dim=1), initial_rows, rtol=1e-2)  # rows are free
    assert torch.cat(rotation)[100:].mean().item() == pytest.approx(predicted_eta_r("adamw"), rel=0.05)
    assert not torch.equal(before, weight.detach())


def test_without_centring_the_mean_is_kept_and_can_change():
    generator = torch.Generator().manual_seed(5)
    weight = torch.nn.Parameter(torch.randn(16, 24, generator=generator) + 1.0)
    initial = weight.detach().clone()
    optimizer = build_optimizer("adamw", [weight], rotational=True, zero_mean=False, **HYPER)
    assert torch.equal(weight.detach(), initial)  # no centring at construction
    rotation = run(optimizer, [weight], 300, generator, record=weight)
    assert torch.allclose(weight.detach().norm(dim=1), initial.norm(dim=1), rtol=1e-6, atol=0)
    assert not torch.allclose(weight.detach().mean(dim=1), initial.mean(dim=1), atol=1e-2)
    assert rotation[100:].mean().item() == pytest.approx(predicted_eta_r("adamw"), rel=0.05)


def test_explicit_eta_r_overrides_table_1():
    generator = torch.Generator().manual_seed(6)
    weight = torch.nn.Parameter(torch.randn(32, 32, generator=generator))
    optimizer = build_optimizer("lion", [weight], rotational=True, eta_r=0.003, **HYPER)
    rotation = run(optimizer, [weight], 200, generator, record=weight)
    assert rotation[50:].mean().item() == pytest.approx(0.003, rel=0.05)


def test_lr_schedule_scales_eta_r_with_its_square_root():
    generator = torch.Generator().manual_seed(7)
    weight = torch.nn.Parameter(torch.randn(32, 32, generator=generator))
    optimizer = build_optimizer("adamw", [weight], rotational=True, **HYPER)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 if step < 150 else 0.25)
    measured = []
    for _ in range(300):
        weight.grad = torch.randn(weight.shape, generator=generator)
        before = weight.detach().clone()
        optimizer.step()
        scheduler.step()
        measured.append(angles(before, weight.detach()).mean().item())
    high, low = sum(measured[100:150]) / 50, sum(measured[250:]) / 50
    assert high == pytest.approx(predicted_eta_r("adamw"), rel=0.05)
    assert low == pytest.approx(predicted_eta_r("adamw", lr=HYPER["lr"] / 4), rel=0.05)
    assert high / low == pytest.approx(2.0, rel=0.05)


def test_parameters_without_gradient_are_skipped():
    generator = torch.Generator().manual_seed(8)
    used, unused = (torch.nn.Parameter(torch.randn(8, 8, generator=generator)) for _ in range(2))
    bias = torch.nn.Parameter(torch.randn(8, generator=generator))
    optimizer = build_optimizer("adamw", [{"params": [used, unused], "weight_decay": 0.1},
                                          {"params": [bias], "weight_decay": 0.0}], rotational=True, lr=0.01)
    unused_after_centring = unused.detach().clone()
    bias_before = bias.detach().clone()
    used.grad = torch.randn(8, 8, generator=generator)
    optimizer.step()
    assert torch.equal(unused.detach(), unused_after_centring)
    assert torch.equal(bias.detach(), bias_before)
    assert "step" not in optimizer.state[unused] and bias not in optimizer.state
    assert optimizer.state[used]["step"] == 1


# --------------------------------------------- non-rotational params are the inner optimizer


TORCH_EQUIVALENTS = {
    "adamw": lambda params, wd: torch.optim.AdamW(params, lr=0.01, betas=(0.9, 0.99), weight_decay=wd),
    "adam-l2": lambda params, wd: torch.optim.Adam(params, lr=0.01, betas=(0.9, 0.99), weight_decay=wd),
    "sgdm": lambda params, wd: torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=wd),
    "lion": lambda params, wd: Lion(params, lr=0.01, betas=(0.9, 0.99), weight_decay=wd),
}


@pytest.mark.parametrize("inner", INNERS)
def test_non_rotational_parameters_get_the_plain_inner_update(inner):
    """Biases (weight decay 0) and a matrix in a group marked rotational=False (weight decay 0.2)."""
    generator = torch.Generator().manual_seed(9)
    weight = torch.nn.Parameter(torch.randn(6, 5, generator=generator))
    bias = torch.nn.Parameter(torch.randn(6, generator=generator))
    plain_matrix = torch.nn.Parameter(torch.randn(4, 3, generator=generator))
    twins = [torch.nn.Parameter(p.detach().clone()) for p in (bias, plain_matrix)]
    optimizer = build_optimizer(inner, [{"params": [weight]}, {"params": [bias], "weight_decay": 0.0},
                                        {"params": [plain_matrix], "weight_decay": 0.2, "rotational": False}],
                                rotational=True, **HYPER, **rv_options(inner))
    reference = [TORCH_EQUIVALENTS[inner]([twins[0]], 0.0), TORCH_EQUIVALENTS[inner]([twins[1]], 0.2)]
    for _ in range(5):
        for p, twin in ((weight, None), (bias, twins[0]), (plain_matrix, twins[1])):
            p.grad = torch.randn(p.shape, generator=generator)
            if twin is not None:
                twin.grad = p.grad.clone()
        optimizer.step()
        for torch_optimizer in reference:
            torch_optimizer.step()
        assert torch.equal(bias.detach(), twins[0].detach())
        assert torch.equal(plain_matrix.detach(), twins[1].detach())


def test_lion_matches_a_hand_computed_step():
    generator = torch.Generator().manual_seed(10)
    p0 = torch.randn(5, 4, generator=generator)
    grads = [torch.randn(5, 4, generator=generator) for _ in range(3)]
    lr, beta1, beta2, wd = 0.01, 0.9, 0.99, 0.5
    param = torch.nn.Parameter(p0.clone())
    optimizer = Lion([param], lr=lr, betas=(beta1, beta2), weight_decay=wd)
    p, m = p0.double(), torch.zeros(5, 4, dtype=torch.float64)
    for g in grads:
        param.grad = g.clone()
        optimizer.step()
        g = g.double()
        v = torch.sign(beta1 * m + (1 - beta1) * g)  # eq. 55
        m = beta2 * m + (1 - beta2) * g  # eq. 56
        p = p - lr * (v + wd * p)  # eq. 57
        assert torch.allclose(param.detach().double(), p, rtol=0, atol=1e-6)
    assert torch.allclose(optimizer.state[param]["exp_avg"].double(), m, atol=1e-6)


def test_build_optimizer_gives_the_torch_baselines():
    params = [torch.nn.Parameter(torch.randn(3, 3))]
    adamw = build_optimizer("adamw", params, lr=0.1, weight_decay=0.01)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["fused"] is True
    adam = build_optimizer("adam-l2", params, lr=0.1, weight_decay=0.01)
    assert type(adam) is torch.optim.Adam and adam.defaults["weight_decay"] == 0.01
    sgd = build_optimizer("sgdm", params, lr=0.1, momentum=0.8, weight_decay=0.01)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.8 and sgd.defaults["dampening"] == 0
    lion = build_optimizer("lion", params, lr=0.1, betas=(0.9, 0.99), weight_decay=1.0)
    assert type(lion) is Lion and lion.defaults["betas"] == (0.9, 0.99)
    assert type(build_optimizer("sgdm", params, lr=0.1, rotational=True)) is RotationalWrapper


def test_special_adam_l2_rv_uses_adamw_eta_r_with_its_own_direction():
    """App. J: Adam+ℓ2's direction (second moment of g + λp) rotated by AdamW's η̂_r."""
    def trajectory(inner):
        generator = torch.Generator().manual_seed(11)
        weight = torch.nn.Parameter(torch.randn(32, 32, generator=generator))
        optimizer = build_optimizer(inner, [weight], rotational=True, eta_r_from="adamw", **HYPER)
        rotation = run(optimizer, [weight], 200, generator, record=weight)
        return weight.detach(), rotation[100:].mean().item()

    adam_l2, adam_l2_rotation = trajectory("adam-l2")
    adamw, adamw_rotation = trajectory("adamw")
    assert adam_l2_rotation == pytest.approx(predicted_eta_r("adamw"), rel=0.05)
    assert adamw_rotation == pytest.approx(predicted_eta_r("adamw"), rel=0.05)
    assert (adam_l2 - adamw).abs().max() > 0.1 * adamw.abs().max()  # same grads, other direction


# ----------------------------------------------------------------- imbalance


def imbalanced(kind, seed=0, factor=10.0):
    generator = torch.Generator().manual_seed(12)
    weights = [torch.nn.Parameter(torch.randn(200, 32, generator=generator)) for _ in range(2)]
    optimizer = build_optimizer("adamw", weights, rotational=True, eta_r=1e-3, imbalance_mode=kind,
                                imbalance_portion=0.5, imbalance_factor=factor, imbalance_seed=seed, **HYPER)
    return optimizer, weights, generator


def test_slow_neurons_rotate_f_times_slower():
    optimizer, weights, generator = imbalanced("slow")
    masks = optimizer.imbalance_masks()
    slow = masks[0]["slow"]
    assert len(slow) == 100 and len(masks[0]["fast"]) == 0 and masks[0]["factor"] == 10.0
    normal = torch.ones(200, dtype=torch.bool)
    normal[slow] = False
    rotation = run(optimizer, weights, 120, generator, record=weights[0])[20:].mean(dim=0)
    assert rotation[normal].mean().item() == pytest.approx(1e-3, rel=0.05)
    assert (rotation[slow].mean() / rotation[normal].mean()).item() == pytest.approx(0.1, rel=0.05)


def test_split_neurons_rotate_f_times_slower_and_faster():
    optimizer, weights, generator = imbalanced("split")
    mask = optimizer.imbalance_masks()[1]
    assert len(mask["slow"]) == len(mask["fast"]) == 50
    normal = torch.ones(200, dtype=torch.bool)
    normal[mask["slow"]] = normal[mask["fast"]] = False
    rotation = run(optimizer, weights, 120, generator, record=weights[1])[20:].mean(dim=0)
    assert (rotation[mask["slow"]].mean() / rotation[normal].mean()).item() == pytest.approx(0.1, rel=0.05)
    assert (rotation[mask["fast"]].mean() / rotation[normal].mean()).item() == pytest.approx(10, rel=0.05)


def test_imbalanced_neurons_are_random_seeded_and_saved():
    first, second, other = (imbalanced("slow", seed=seed)[0].imbalance_masks() for seed in (0, 0, 1))
    assert all(torch.equal(first[i]["slow"], second[i]["slow"]) for i in (0, 1))
    assert not torch.equal(first[0]["slow"], other[0]["slow"])
    assert not torch.equal(first[0]["slow"], first[1]["slow"])  # drawn per tensor
    assert not torch.equal(first[0]["slow"], torch.arange(100))  # not the leading rows
    optimizer = imbalanced("slow", seed=0)[0]
    assert "rotation_speed" in optimizer.state_dict()["state"][0]
    named = torch.nn.Linear(8, 8, bias=False)
    masks = build_optimizer("adamw", named.named_parameters(), rotational=True, lr=0.1, weight_decay=0.1,
                            imbalance_mode="split").imbalance_masks()
    assert list(masks) == ["weight"]


# ----------------------------------------------------------------- state dict


def make_model_and_optimizer(inner, seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.LayerNorm(10), torch.nn.Linear(10, 3))
    groups = [{"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": 0.1},
              {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = build_optimizer(inner, groups, rotational=True, imbalance_mode="split", imbalance_factor=2.0,
                                **HYPER, **rv_options(inner))
    return model, optimizer


def train(model, optimizer, steps, start):
    for step in range(start, start + steps):
        generator = torch.Generator().manual_seed(step)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()


@pytest.mark.parametrize("inner", INNERS)
def test_resuming_from_a_state_dict_is_bit_identical(inner):
    model, optimizer = make_model_and_optimizer(inner, seed=0)
    train(model, optimizer, 12, start=0)

    model_a, optimizer_a = make_model_and_optimizer(inner, seed=0)
    train(model_a, optimizer_a, 5, start=0)
    saved = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "optimizer": optimizer_a.state_dict()}, saved)
    saved.seek(0)
    checkpoint = torch.load(saved)
    model_b, optimizer_b = make_model_and_optimizer(inner, seed=1)  # different init, overwritten by the load
    model_b.load_state_dict(checkpoint["model"])
    optimizer_b.load_state_dict(checkpoint["optimizer"])
    train(model_b, optimizer_b, 7, start=5)

    for straight, resumed in zip(model.parameters(), model_b.parameters()):
        assert torch.equal(straight, resumed)


# ----------------------------------------------------------------- bad input


def test_user_errors():
    weight = torch.nn.Parameter(torch.randn(4, 4))
    with pytest.raises(UserError, match="adamw, adam-l2, sgdm, lion"):
        build_optimizer("adam", [weight], lr=0.1)
    with pytest.raises(UserError, match="per_neuron"):
        build_optimizer("adamw", [weight], lr=0.1, per_neuronal=True, rotational=True)
    with pytest.raises(UserError, match="rotational=True"):
        build_optimizer("adamw", [weight], lr=0.1, zero_mean=False)
    with pytest.raises(UserError, match="eta_r_from='adamw'"):
        build_optimizer("adam-l2", [weight], lr=0.1, weight_decay=0.1, rotational=True)
    with pytest.raises(UserError, match="weight_decay"):
        build_optimizer("adamw", [{"params": [weight], "rotational": True}], lr=0.1, rotational=True)
    with pytest.raises(UserError, match="no neurons"):
        build_optimizer("adamw", [{"params": [torch.nn.Parameter(torch.randn(4))], "rotational": True}],
                        lr=0.1, weight_decay=0.1, rotational=True)
    with pytest.raises(UserError, match="zero after centring"):
        build_optimizer("adamw", [torch.nn.Parameter(torch.ones(4, 4))], lr=0.1, weight_decay=0.1, rotational=True)
    with pytest.raises(UserError, match="per_neuron=True"):
        build_optimizer("adamw", [weight], lr=0.1, weight_decay=0.1, rotational=True, per_neuron=False,
                        imbalance_mode="slow")
    with pytest.raises(UserError, match="slow, split"):
        build_optimizer("adamw", [weight], lr=0.1, weight_decay=0.1, rotational=True, imbalance_mode="fast")
    with pytest.raises(UserError, match="eta_r_from"):
        build_optimizer("sgdm", [weight], lr=0.1, weight_decay=0.1, rotational=True, eta_r_from="adam-l2")
    with pytest.raises(UserError, match="rms_beta"):
        build_optimizer("sgdm", [weight], lr=0.1, weight_decay=0.1, rotational=True, rms_beta=1.0)
    # An explicit eta_r needs neither weight decay nor a formula.
    build_optimizer("adam-l2", [{"params": [weight], "rotational": True}], lr=0.1, rotational=True, eta_r=0.01)


# ----------------------------------------------------------------- implementations


SPEED_OPTIONS = {  # (per_neuron, zero_mean, imbalance_mode)
    "per-neuron centred": (True, True, None),
    "per-neuron uncentred": (True, False, None),
    "per-tensor centred": (False, True, None),
    "per-tensor uncentred": (False, False, None),
    "per-neuron imbalanced": (True, True, "split"),
}


def impl_trajectory(impl, inner, options, steps=6):
    """Parameters and state after each step: three same-shape matrices (one skips step 2, so its step count
    differs), a channels-last conv, a per-tensor-shaped vector group, and biases outside Ω."""
    per_neuron, zero_mean, imbalance_mode = options
    generator = torch.Generator().manual_seed(21)
    matrices = [torch.nn.Parameter(torch.randn(9, 7, generator=generator)) for _ in range(3)]
    conv = torch.nn.Parameter(torch.randn(6, 4, 3, 3, generator=generator).to(memory_format=torch.channels_last))
    bias = torch.nn.Parameter(torch.randn(9, generator=generator))
    params = [*matrices, conv, bias]
    optimizer = build_optimizer(inner, [{"params": [*matrices, conv]}, {"params": [bias], "weight_decay": 0.0}],
                                rotational=True, per_neuron=per_neuron, zero_mean=zero_mean,
                                imbalance_mode=imbalance_mode, imbalance_factor=3.0, impl=impl,
                                **HYPER, **rv_options(inner))
    history = []
    for step in range(steps):
        for p in params:
            p.grad = None if (step == 2 and p is matrices[1]) else torch.randn(p.shape, generator=generator)
        optimizer.step()
        states = [t for p in params for t in optimizer.state[p].values() if isinstance(t, torch.Tensor)]
        history.append([p.detach().clone() for p in params] + [t.clone() for t in states])
    return history


@pytest.mark.parametrize("options", SPEED_OPTIONS.values(), ids=SPEED_OPTIONS.keys())
@pytest.mark.parametrize("inner", INNERS)
def test_grouped_path_equals_the_chunked_path_step_for_step(inner, options, monkeypatch):
    """Stacked shape groups compute what chunks of 2 neurons do (CPU chunks forced small), up to float rounding."""
    monkeypatch.setattr(rotational_module, "_CPU_CHUNK_ELEMENTS", 2 * 36)
    chunked = impl_trajectory("chunked", inner, options)
    grouped = impl_trajectory("grouped", inner, options)
    for step, (expected, actual) in enumerate(zip(chunked, grouped)):
        assert len(expected) == len(actual)
        for e, a in zip(expected, actual):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6, msg=f"step {step + 1}")


def test_grouped_path_without_the_private_foreach_copy(monkeypatch):
    """The grouped path writes back with torch._foreach_copy_ where torch has it, else tensor by tensor."""
    options = SPEED_OPTIONS["per-neuron centred"]
    expected = impl_trajectory("grouped", "sgdm", options)
    monkeypatch.setattr(rotational_module, "_FOREACH_COPY", None)  # as on a torch without the private op
    for step_expected, step_actual in zip(expected, impl_trajectory("grouped", "sgdm", options)):
        assert all(torch.equal(e, a) for e, a in zip(step_expected, step_actual))


def test_compiled_path_equals_the_chunked_path():
    """torch.compile'd lines 12-18 (one sweep of sums, one update) give the eager numbers up to float rounding,
    also with Adam+ℓ2's `unit`, which changes from step to step."""
    options = SPEED_OPTIONS["per-neuron imbalanced"]
    for inner in ("adamw", "adam-l2", "lion"):
        chunked = impl_trajectory("chunked", inner, options)
        compiled = impl_trajectory("compiled", inner, options)
        for expected, actual in zip(chunked, compiled):
            for e, a in zip(expected, actual):
                torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_compiled_path_compiles_once_for_every_step_lr_and_shape(monkeypatch):
    """The step count, the lr (η̂_r) and the tensor shape are arguments of the compiled code, not constants:
    once compiled, later steps with other values run without compiling again (a recompile would raise under
    the "fail_on_recompile" stance, and the wrapper would fall back to the eager code with a warning)."""
    torch.compiler.reset()  # forget what other tests compiled
    monkeypatch.setattr(rotational_module, "_compiled", None)
    generator = torch.Generator().manual_seed(23)
    weights = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in ((8, 5), (12, 7))]
    optimizer = build_optimizer("adamw", weights, rotational=True, impl="compiled", **HYPER)
    for step in range(4):
        if step == 1:  # compiled at step 0
            torch.compiler.set_stance("fail_on_recompile")
        for group in optimizer.param_groups:
            group["lr"] = 0.01 * (step + 1)
        for weight in weights:
            weight.grad = torch.randn(weight.shape, generator=generator)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("error", message="torch.compile of the rotational step failed")
                optimizer.step()
        finally:
            torch.compiler.set_stance("default")
    assert rotational_module._compiled is not False


def assert_runs_the_chunked_code(impl: str, warning: str) -> None:
    """impl, unable to build, warns (matching `warning`) and then takes the very same steps as chunked."""
    options = SPEED_OPTIONS["per-neuron centred"]
    with pytest.warns(UserWarning, match=warning):
        fallen_back = impl_trajectory(impl, "adamw", options, steps=2)
    for expected, actual in zip(impl_trajectory("chunked", "adamw", options, steps=2), fallen_back):
        assert all(torch.equal(e, a) for e, a in zip(expected, actual))  # the very same eager code


def test_compiled_path_falls_back_to_the_eager_code_when_compiling_fails(monkeypatch):
    def broken_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(rotational_module, "_compiled", tuple(
        torch.compile(function, backend=broken_compiler, dynamic=True, fullgraph=True)
        for function in (rotational_module._sums, rotational_module._apply)))
    assert_runs_the_chunked_code("compiled", warning="runs eagerly: .*no C\\+\\+ compiler here")
    assert rotational_module._compiled is False


@pytest.mark.parametrize("options", SPEED_OPTIONS.values(), ids=SPEED_OPTIONS.keys())
@pytest.mark.parametrize("inner", INNERS)
def test_kernel_path_equals_the_chunked_path_step_for_step(inner, options):
    """rotational_kernel.cpp (moments, d and the sums in one pass per row, the update in a second) computes
    the chunked eager numbers, parameters and state, up to float rounding; the channels-last conv included."""
    chunked = impl_trajectory("chunked", inner, options)
    kernel = impl_trajectory("kernel", inner, options)
    assert rotational_module._kernel, "the kernel was not built, so the chunked code ran twice"
    for step, (expected, actual) in enumerate(zip(chunked, kernel)):
        for e, a in zip(expected, actual):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6, msg=f"step {step + 1}")


def test_kernel_path_sends_what_it_does_not_support_to_the_chunked_path(monkeypatch):
    """Rows wider than _KERNEL_MAX_WIDTH and float64 tensors take the chunked code: the very same numbers."""
    options = SPEED_OPTIONS["per-neuron centred"]  # rows of 7 elements (matrices) and 36 (the conv)
    expected = impl_trajectory("chunked", "adamw", options)
    chunked_rows = []
    update_chunked = rotational_module._update_chunked

    def recording(inner, pieces, *rest):
        chunked_rows.extend(tuple(piece.rows.shape) for piece in pieces)
        update_chunked(inner, pieces, *rest)

    monkeypatch.setattr(rotational_module, "_update_chunked", recording)
    monkeypatch.setattr(rotational_module, "_KERNEL_MAX_WIDTH", 10)  # the conv's rows are too wide
    actual = impl_trajectory("kernel", "adamw", options)
    assert set(chunked_rows) == {(6, 36)}
    for step_expected, step_actual in zip(expected, actual):
        assert torch.equal(step_actual[3], step_expected[3])  # the conv: chunked
        for e, a in zip(step_expected[:3], step_actual[:3]):  # the matrices: the kernel
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)

    weight = torch.nn.Parameter(torch.randn(5, 8, dtype=torch.float64))
    optimizer = build_optimizer("adamw", [weight], rotational=True, impl="kernel", **HYPER)
    weight.grad = torch.randn(5, 8, dtype=torch.float64)
    optimizer.step()
    assert chunked_rows[-1] == (5, 8)


def test_kernel_path_gives_the_same_bits_on_one_thread_and_on_two():
    """at::parallel_for splits the rows among threads (here into 4 tasks of 16 rows); each row's numbers are
    its own, so the split changes nothing, to the bit (a shared buffer or a lost row would)."""
    def trajectory(threads):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            generator = torch.Generator().manual_seed(24)
            weight = torch.nn.Parameter(torch.randn(64, 1024, generator=generator))
            optimizer = build_optimizer("adamw", [weight], rotational=True, impl="kernel", **HYPER)
            for _ in range(3):
                weight.grad = torch.randn(weight.shape, generator=generator)
                optimizer.step()
            return weight.detach(), optimizer.state[weight]
        finally:
            torch.set_num_threads(previous)

    (one, one_state), (two, two_state) = trajectory(1), trajectory(2)
    assert torch.equal(one, two)
    assert all(torch.equal(one_state[key], two_state[key]) for key in ("exp_avg", "exp_avg_sq", "rms_sq"))


def test_kernel_path_falls_back_to_the_eager_code_when_building_fails(monkeypatch):
    def no_compiler():
        raise OSError("g++: not found")

    monkeypatch.setattr(rotational_module, "_kernel", None)
    monkeypatch.setattr(rotational_module, "_load_kernel", no_compiler)
    assert_runs_the_chunked_code(
        "kernel", warning="C\\+\\+ kernel failed, so it runs eagerly: OSError: g\\+\\+: not found")
    assert rotational_module._kernel is False


def test_private_fused_adam_kernel_and_its_public_fallback_agree(monkeypatch):
    """RV-AdamW's direction comes from torch._fused_adam_ where torch has it, from public ops otherwise."""
    if rotational_module._FUSED_ADAM is None:
        pytest.skip("this torch has no torch._fused_adam_; the public ops run everywhere")
    options = SPEED_OPTIONS["per-neuron centred"]
    fused = impl_trajectory("chunked", "adamw", options)
    monkeypatch.setattr(rotational_module, "_FUSED_ADAM", None)  # as on a torch without the private kernel
    public = impl_trajectory("chunked", "adamw", options)
    for expected, actual in zip(fused, public):
        for e, a in zip(expected, actual):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["chunked", "grouped", "kernel"])
def test_a_direction_without_perpendicular_part_does_not_rotate(impl):
    """d along p − p̄ (row 0) or constant (row 1) has d⊥ = 0: exact arithmetic keeps those rows; rounding must not
    turn them by η̂_r in a random direction. The other rows still turn."""
    generator = torch.Generator().manual_seed(22)
    weight = torch.nn.Parameter(torch.randn(4, 64, generator=generator))
    optimizer = build_optimizer("sgdm", [weight], rotational=True, impl=impl, **HYPER)
    before = weight.detach().clone()
    weight.grad = torch.randn(4, 64, generator=generator)
    weight.grad[0] = 3 * before[0]
    weight.grad[1] = 0.5
    optimizer.step()
    turned = angles(before, weight.detach())
    assert turned[:2].max().item() < 1e-6
    assert turned[2:].min().item() == pytest.approx(math.atan(predicted_eta_r("sgdm")), rel=1e-3)
    assert torch.allclose(weight.detach().norm(dim=1), before.norm(dim=1), rtol=1e-6, atol=0)


def test_unknown_impl_is_a_user_error():
    with pytest.raises(UserError, match="unknown impl 'fast'; choose one of chunked, grouped, compiled, kernel"):
        build_optimizer("adamw", [torch.nn.Parameter(torch.randn(4, 4))], lr=0.1, weight_decay=0.1,
                        rotational=True, impl="fast")


def test_a_run_takes_its_rotational_step_from_the_impl_named_by_the_environment(monkeypatch, tmp_path):
    """ROTSWEEP_RV_IMPL=kernel reaches the optimizers rotsweep.train builds (and so every job, which
    inherits the environment): the kernel makes the run's steps, with the chunked run's numbers."""
    from rotsweep import store, train
    from rotsweep.presets import preset

    config = preset("tiny-resnet20-adamw", steps=6, eval_interval=6, rotational=True)
    assert train.run(config, tmp_path / "chunked") == "done"
    kernel_steps = []
    update_kernel = rotational_module._update_kernel

    def counting(*args):
        kernel_steps.append(1)
        update_kernel(*args)

    monkeypatch.setattr(rotational_module, "_update_kernel", counting)
    monkeypatch.setenv(rotational_module.IMPL_ENV, "kernel")
    assert train.run(config, tmp_path / "kernel") == "done"
    assert len(kernel_steps) == 6  # one call per optimizer step (the run's rotational tensors in one group)
    chunked, kernel = (store.read_metrics(tmp_path / name).to_pandas() for name in ("chunked", "kernel"))
    assert (chunked[["step", "split", "metric"]] == kernel[["step", "split", "metric"]]).all().all()
    torch.testing.assert_close(torch.tensor(kernel["value"].to_numpy()), torch.tensor(chunked["value"].to_numpy()),
                               rtol=1e-4, atol=1e-5)

    monkeypatch.setenv(rotational_module.IMPL_ENV, "fast")
    with pytest.raises(UserError, match=r"^ROTSWEEP_RV_IMPL='fast' is not an implementation of the rotational "
                                        r"step; set it to one of chunked, grouped, compiled, kernel or unset it$"):
        rotational_module.default_impl(torch.device("cpu"))
