"""rotsweep.dynamics: the stable angle, every stat against a direct float64 computation,
reductions, fixed neuron samples, interval, biases, tied weights, missing gradients."""

import math

import pandas as pd
import pytest
import torch
from torch import nn

from rotsweep.dynamics import COLUMNS, DynamicsRecorder, angle_between
from rotsweep.errors import UserError


# ----- the stable angle ---------------------------------------------------------------


def rotated_pair(theta, n=512, scale=(1.0, 1.0), seed=0):
    """float32 vectors a, b at angle theta (built in float64 from an orthonormal pair)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, 2, dtype=torch.float64, generator=gen))
    u, v = q[:, 0], q[:, 1]
    a = scale[0] * u
    b = scale[1] * (math.cos(theta) * u + math.sin(theta) * v)
    return a.float(), b.float()


def reference_angle(a, b, dim=None):
    """The angle between float32 tensors computed in float64 with the half-angle formula."""
    a, b = a.double(), b.double()
    a_hat = a / torch.linalg.vector_norm(a, dim=dim, keepdim=True)
    b_hat = b / torch.linalg.vector_norm(b, dim=dim, keepdim=True)
    diff = torch.linalg.vector_norm(a_hat - b_hat, dim=dim)
    total = torch.linalg.vector_norm(a_hat + b_hat, dim=dim)
    return 2 * torch.atan2(diff, total)


@pytest.mark.parametrize("theta", [1e-6, 1e-4])
def test_small_angles_are_accurate_in_float32(theta):
    for seed in range(5):
        a, b = rotated_pair(theta, seed=seed, scale=(1.7, 1.7 * (1 - 1e-4)))
        exact = reference_angle(a, b).item()
        # Rounding the construction to float32 moves the angle by far less than theta.
        assert exact == pytest.approx(theta, rel=1e-2)
        assert angle_between(a, b).item() == pytest.approx(exact, rel=2e-6)
        assert angle_between(b, a).item() == pytest.approx(exact, rel=2e-6)
    # The test can fail: acos of the float32 cosine is far off at these angles.
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).clamp(-1, 1)
    assert abs(torch.acos(cosine).item() - exact) > 0.1 * exact


def test_small_rotation_under_large_rescaling():
    # Comparing weights many steps apart: the norm changed a lot, the direction barely.
    a, b = rotated_pair(1e-6, scale=(1.0, 2.7))
    assert angle_between(a, b).item() == pytest.approx(reference_angle(a, b).item(), rel=2e-6)


@pytest.mark.parametrize("theta", [1.0, math.pi / 2, math.pi - 1e-3, math.pi - 1e-6])
def test_large_angles_are_accurate(theta):
    a, b = rotated_pair(theta, scale=(0.3, 2.0))
    exact = reference_angle(a, b).item()
    assert exact == pytest.approx(theta, abs=1e-6)
    assert angle_between(a, b).item() == pytest.approx(exact, abs=3e-7)


def test_angle_per_row_and_of_whole_tensor():
    thetas = [1e-5, 1e-3, 0.5, 2.0]
    pairs = [rotated_pair(t, n=64, seed=i) for i, t in enumerate(thetas)]
    a = torch.stack([p[0] for p in pairs])
    b = torch.stack([p[1] for p in pairs])
    torch.testing.assert_close(angle_between(a, b, dim=1), reference_angle(a, b, dim=1).float())
    torch.testing.assert_close(
        angle_between(a.T, b.T, dim=0), reference_angle(a, b, dim=1).float()
    )
    whole = angle_between(a, b)
    assert whole.shape == ()
    assert whole.item() == pytest.approx(reference_angle(a.flatten(), b.flatten()).item(), rel=1e-6)


def test_angle_with_zero_vectors():
    zero, x = torch.zeros(3), torch.tensor([1.0, 2.0, 3.0])
    assert angle_between(zero, zero).item() == 0.0
    assert angle_between(zero, x).item() == pytest.approx(math.pi / 2)
    assert angle_between(x, zero).item() == pytest.approx(math.pi / 2)


THETAS = [1e-6, 1e-4, 1.0, math.pi / 2, math.pi - 1e-3]


def test_recorder_angles_are_accurate_from_tiny_to_near_pi():
    # One weight whose rows an "optimizer" rotates by known angles (and shrinks by
    # 1e-4, like weight decay): the recorder's in-place float32 path must resolve them.
    pairs = [rotated_pair(t, n=256, seed=i, scale=(1.0, 1 - 1e-4)) for i, t in enumerate(THETAS)]
    weight = nn.Parameter(torch.stack([a for a, _ in pairs]))
    after = torch.stack([b for _, b in pairs])
    weight.grad = torch.randn_like(weight)
    rec = DynamicsRecorder([("w", weight)], interval=1, sample_neurons=len(THETAS))
    rec.before_step(0)
    with torch.no_grad():
        weight.copy_(after)
    rec.after_step(0)

    rows = rec.drain()
    rows = rows[rows.stat == "angular_update"]
    got = rows[rows.reduction == "sample"].sort_values("neuron").value.tolist()
    before = torch.stack([a for a, _ in pairs])
    exact = reference_angle(before, after, dim=1)
    for theta, value, truth in zip(THETAS, got, exact.tolist()):
        assert truth == pytest.approx(theta, rel=1e-2)
        tolerance = dict(rel=2e-6) if theta < 1e-3 else dict(abs=3e-7)
        assert value == pytest.approx(truth, **tolerance), theta
    layer = rows[rows.reduction == "layer"].value.item()
    whole = reference_angle(before.flatten(), after.flatten()).item()
    assert layer == pytest.approx(whole, abs=3e-7)


# ----- the recorder on a small model --------------------------------------------------


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3)  # neurons: 6 rows of 18
        self.fc1 = nn.Linear(6, 20)
        self.fc2 = nn.Linear(20, 20)  # fc2 and fc3 share one stacked buffer
        self.fc3 = nn.Linear(20, 20)
        self.norm = nn.LayerNorm(20)
        self.head = nn.Linear(20, 3)
        self.unused = nn.Linear(4, 4)  # never gets a gradient

    def forward(self, x):
        x = self.conv(x).mean((2, 3))
        x = self.fc1(x).relu()
        x = self.fc3(self.fc2(x).relu()).relu()
        return self.head(self.norm(x))


def backward(model, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 2, 5, 5, generator=gen)
    target = torch.randn(16, 3, generator=gen)
    model.zero_grad(set_to_none=True)
    nn.functional.mse_loss(model(x), target).backward()


def run(model, optimizer, recorder, steps):
    """Train `steps` steps; return {step: {name: (pre, post, grad)}} in float64 for the recorded ones."""
    seen = {}
    for step in range(steps):
        backward(model, seed=step)
        pre = {n: p.detach().double().clone() for n, p in model.named_parameters()}
        grads = {n: None if p.grad is None else p.grad.double() for n, p in model.named_parameters()}
        recorder.before_step(step)
        optimizer.step()
        recorder.after_step(step)
        if recorder.should_record(step):
            seen[step] = {
                n: (pre[n], p.detach().double().clone(), grads[n])
                for n, p in model.named_parameters()
            }
    return seen


def direct_stats(pre, post, grad):
    """Per-neuron and whole-tensor stats of one weight, straight from the definitions."""
    a, b, g = pre.flatten(1), post.flatten(1), grad.flatten(1)
    per_neuron = {
        "norm": a.norm(dim=1),
        "angular_update": reference_angle(a, b, dim=1),
        "rms_update": (b - a).norm(dim=1) / math.sqrt(a.shape[1]),
        "grad_norm": g.norm(dim=1),
        "radial": (a * g).sum(1) / a.norm(dim=1) ** 2,
    }
    layer = {
        "norm": a.norm(),
        "angular_update": reference_angle(a.flatten(), b.flatten()),
        "rms_update": (b - a).norm() / math.sqrt(a.numel()),
        "grad_norm": g.norm(),
        "radial": (a * g).sum() / a.norm() ** 2,
    }
    return per_neuron, layer


def rows_of(frame, step, param, stat):
    sel = frame[(frame.step == step) & (frame.param == param) & (frame.stat == stat)]
    return dict(zip(sel.reduction, sel.value)), sel[sel.reduction == "sample"]


OPTIMIZERS = {
    "sgdm": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_every_stat_matches_a_direct_computation(optimizer):
    torch.manual_seed(0)
    model = Tiny()
    opt = OPTIMIZERS[optimizer](model.parameters())
    rec = DynamicsRecorder(model.named_parameters(), interval=2, sample_neurons=5, seed=3)
    seen = run(model, opt, rec, steps=5)
    frame = rec.drain()
    assert sorted(frame.step.unique()) == [0, 2, 4]

    checked = 0
    for step, tensors in seen.items():
        for name in ("conv.weight", "fc1.weight", "fc2.weight", "fc3.weight", "head.weight"):
            per_neuron, layer = direct_stats(*tensors[name])
            for stat, values in per_neuron.items():
                got, samples = rows_of(frame, step, name, stat)
                expected = {
                    "layer": layer[stat],
                    "mean": values.mean(),
                    "rms": values.square().mean().sqrt(),
                    "std": values.std(correction=0),
                    "min": values.min(),
                    "max": values.max(),
                }
                expected.update(zip(samples.neuron, values[samples.neuron.tolist()]))
                got.update(zip(samples.neuron, samples.value))
                # radial = <a, g>/|a|^2 may cancel: compare it on the scale |g|/|a|.
                scale = (per_neuron["grad_norm"] / per_neuron["norm"]).max().item()
                atol = 1e-6 * scale if stat == "radial" else 1e-9
                for key, value in expected.items():
                    assert got[key] == pytest.approx(value.item(), rel=2e-5, abs=atol), (
                        step, name, stat, key
                    )
                assert len(samples) == min(5, values.numel())
                # The reductions agree with each other and with the samples.
                assert got["rms"] ** 2 == pytest.approx(got["mean"] ** 2 + got["std"] ** 2, rel=1e-5)
                assert got["min"] <= samples.value.min() <= samples.value.max() <= got["max"]
                checked += 1
    assert checked == 3 * 5 * 5


def test_biases_and_gains_only_get_their_rms_update():
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rec = DynamicsRecorder(model.named_parameters(), interval=1)
    seen = run(model, opt, rec, steps=2)
    frame = rec.drain()
    for name in ("conv.bias", "fc2.bias", "norm.weight", "norm.bias"):
        rows = frame[frame.param == name]
        assert set(zip(rows.stat, rows.reduction, rows.neuron)) == {("rms_update", "layer", -1)}
        for step, value in zip(rows.step, rows.value):
            pre, post, _ = seen[step][name]
            assert value == pytest.approx(((post - pre).norm() / math.sqrt(pre.numel())).item(), rel=1e-5)


def test_a_model_of_gains_only():
    norm = nn.LayerNorm(5)
    rec = DynamicsRecorder(norm.named_parameters(), interval=1)
    norm(torch.randn(3, 5)).pow(3).sum().backward()
    rec.before_step(0)
    torch.optim.SGD(norm.parameters(), lr=0.1).step()
    rec.after_step(0)
    frame = rec.drain()
    assert list(frame.param) == ["weight", "bias"] and set(frame.stat) == {"rms_update"}
    assert (frame.value > 0).all()


def test_parameters_without_gradient_are_recorded_without_grad_rows():
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    rec = DynamicsRecorder(model.named_parameters(), interval=1, sample_neurons=2)
    run(model, opt, rec, steps=2)
    frame = rec.drain()
    unused = frame[frame.param == "unused.weight"]
    assert set(unused.stat) == {"norm", "angular_update", "rms_update", "fan_in"}
    assert (unused[unused.stat.isin(["angular_update", "rms_update"])].value == 0).all()  # AdamW skipped it
    assert (unused[unused.stat == "norm"].value > 0).all()
    bias = frame[frame.param == "unused.bias"]
    assert list(bias.stat) == ["rms_update"] * 2 and (bias.value == 0).all()
    # Every parameter with a gradient still has its gradient rows.
    assert set(frame[frame.param == "fc1.weight"].stat) == {
        "norm", "angular_update", "rms_update", "grad_norm", "radial", "fan_in"
    }


def test_fan_in_rows_give_each_weights_neuron_size():
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = DynamicsRecorder(model.named_parameters(), interval=1, sample_neurons=2)
    run(model, opt, rec, steps=3)
    fan_in = rec.drain().query("stat == 'fan_in'")
    expected = {name: p[0].numel() for name, p in model.named_parameters() if p.ndim >= 2}
    assert set(fan_in.param) == set(expected) and len(fan_in) == 3 * len(expected)
    assert all(row.value == expected[row.param] for row in fan_in.itertuples())
    assert set(fan_in.reduction) == {"layer"} and set(fan_in.neuron) == {-1}


def test_interval_is_respected():
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = DynamicsRecorder(model.named_parameters(), interval=3)
    assert [s for s in range(10) if rec.should_record(s)] == [0, 3, 6, 9]
    run(model, opt, rec, steps=10)
    assert sorted(rec.table().step.unique()) == [0, 3, 6, 9]
    rec.after_step(4)  # not a recorded step: nothing happens
    with pytest.raises(RuntimeError, match="before_step"):
        rec.after_step(12)


def test_sampled_neurons_are_fixed_and_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.Linear(64, 64))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def sampled(rec):
        rows = rec.drain()
        rows = rows[(rows.reduction == "sample") & (rows.stat == "norm")]
        per_step = rows.groupby("step").apply(lambda r: tuple(zip(r.param, r.neuron)))
        assert per_step.nunique() == 1  # the same neurons at every step
        return per_step.iloc[0]

    def train(rec):
        for step in range(4):
            model(torch.randn(4, 8)).sum().backward()
            rec.before_step(step)
            opt.step()
            rec.after_step(step)
            opt.zero_grad()

    rec = DynamicsRecorder(model.named_parameters(), interval=1, sample_neurons=4, seed=0)
    train(rec)
    first = sampled(rec)
    assert len(first) == 8
    state = rec.state_dict()
    assert {n: v.tolist() for n, v in state["samples"].items()} == {
        n: [r for p, r in first if p == n] for n in ("0.weight", "1.weight")
    }

    other = DynamicsRecorder(model.named_parameters(), interval=1, sample_neurons=4, seed=1)
    train(other)
    assert sampled(other) != first  # another seed, other neurons...
    resumed = DynamicsRecorder(model.named_parameters(), interval=1, sample_neurons=4, seed=1)
    resumed.load_state_dict(state)
    train(resumed)
    assert sampled(resumed) == first  # ...until the checkpoint's are restored

    # Samples depend on (seed, name) only: recording fewer tensors changes none.
    alone = DynamicsRecorder([("1.weight", model[1].weight)], sample_neurons=4, seed=0)
    assert alone.state_dict()["samples"]["1.weight"].tolist() == state["samples"]["1.weight"].tolist()


def test_load_state_dict_rejects_another_model_or_config():
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 16))
    state = DynamicsRecorder(model.named_parameters()).state_dict()
    with pytest.raises(UserError, match="same model"):
        DynamicsRecorder([("0.weight", model[0].weight)]).load_state_dict(state)
    with pytest.raises(UserError, match="interval"):
        DynamicsRecorder(model.named_parameters(), interval=5).load_state_dict(state)


def test_tied_weights_appear_once():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    named = list(model.named_parameters(remove_duplicate=False))
    assert len(named) == 2
    rec = DynamicsRecorder(named, interval=1)
    head(emb(torch.tensor([1, 2, 3]))).sum().backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec.before_step(0)
    opt.step()
    rec.after_step(0)
    frame = rec.drain()
    assert set(frame.param) == {"emb.weight"}
    assert len(frame) == 5 * (6 + 10) + 1  # 5 stats x (layer + 5 reductions + all 10 rows sampled), fan_in


def test_table_columns_dtypes_and_drain():
    model = nn.Linear(3, 4)
    rec = DynamicsRecorder(model.named_parameters(), interval=1, sample_neurons=2)
    empty = rec.table()
    assert tuple(empty.columns) == COLUMNS and len(empty) == 0

    model(torch.randn(2, 3)).sum().backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec.before_step(0)
    opt.step()
    rec.after_step(0)
    for frame in (empty, rec.table()):
        assert frame["step"].dtype == "int64"
        assert frame["neuron"].dtype == "int64"
        assert frame["value"].dtype == "float64"
        for column in ("param", "stat", "reduction"):
            assert pd.api.types.is_string_dtype(frame[column])
    assert len(rec.table()) == 5 * (6 + 2) + 1 + 1  # weight stats, bias rms_update, weight fan_in
    assert len(rec.drain()) == 5 * (6 + 2) + 1 + 1
    assert len(rec.table()) == 0  # drained


@pytest.mark.parametrize("kwargs", [{"interval": 0}, {"interval": 2.5}, {"sample_neurons": -1}])
def test_bad_settings_are_user_errors(kwargs):
    with pytest.raises(UserError, match=next(iter(kwargs))):
        DynamicsRecorder(nn.Linear(2, 2).named_parameters(), **kwargs)
    with pytest.raises(UserError, match="no parameters"):
        DynamicsRecorder([])
    mixed = [("a", nn.Parameter(torch.zeros(2, 2))), ("b", nn.Parameter(torch.zeros(2, 2).double()))]
    with pytest.raises(UserError, match="one dtype"):
        DynamicsRecorder(mixed)
