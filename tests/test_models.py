"""rotsweep.models: shapes, parameter counts against the references, WS / gain invariants, groups, errors."""

import pytest
import torch
from torch import nn

from rotsweep.errors import UserError
from rotsweep.models import MODEL_NAMES, build_model, count_parameters, describe_models, norms, param_groups


def gpt2_params(n_layer, n_embd, vocab, block):
    """nanoGPT's GPT-2 without biases: per block 12·d² (attention 4d², MLP 8d²) + two LayerNorm weights."""
    return n_layer * (12 * n_embd**2 + 2 * n_embd) + vocab * n_embd + block * n_embd + n_embd


# Reference parameter counts (10 classes for the CIFAR nets, 1000 for ResNet-50).
REFERENCE_PARAMS = {
    # He et al. 2016 (0.27M) with 1×1-conv + BN shortcuts, as the official cifar_rn20:
    # stem 432+32, stage 1 3·(2·2304+64), stage 2 14528+2·18560, stage 3 57728+2·73984, fc 650.
    "resnet20": 272_474,
    # kuangliu/pytorch-cifar PreActResNet18 (11,171,146) + the final norm before pooling (2·512).
    "resnet18": 11_171_146 + 1024,
    "resnet18-ln": 11_171_146 + 1024,  # GroupNorm has the same per-channel affine parameters as BatchNorm
    "resnet50": 25_557_032,  # torchvision resnet50
    # VGG-13 "B" convs with biases (9,404,992) + two 1×1 convs 512→512 + linear 512→10.
    "vgg13": 9_404_992 + 2 * (512 * 512 + 512) + 5130,
    # All parameters, tied wte = lm_head once, wpe included: 124,373,760. nanoGPT prints 123.59M
    # here because it subtracts wpe; we count what the optimizer updates and the recorder measures.
    "gpt2": gpt2_params(12, 768, 50304, 1024),
}


def sample_input(model_name, model, tiny):
    """A small batch: 2 images (64×64 for ResNet-50, else 32×32), or 2×16 tokens (1×16 for GPT2-124M)."""
    if model_name == "gpt2":
        return torch.randint(0, model.cfg.vocab_size, (2 if tiny else 1, 16))
    side = 64 if model_name == "resnet50" and not tiny else 32
    return torch.randn(2, 3, side, side)


def check_forward_backward(name, model, x):
    out = model(x)
    if name == "gpt2":
        assert out.shape == (*x.shape, model.cfg.vocab_size)
    else:
        assert out.shape == (x.shape[0], 1000 if name == "resnet50" else 10)  # the default classes
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_full_model_matches_reference_count_and_runs(name):
    torch.manual_seed(0)
    model = build_model(name)
    assert count_parameters(model) == REFERENCE_PARAMS[name]
    check_forward_backward(name, model, sample_input(name, model, tiny=False))


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("reparam", [{}, {"weight_standardization": True}, {"gain": True},
                                     {"weight_standardization": True, "gain": True}])
def test_tiny_model_runs_with_every_weight_option(name, reparam):
    torch.manual_seed(0)
    model = build_model(name, tiny=True, **reparam)
    assert count_parameters(model) < 0.1 * REFERENCE_PARAMS[name]
    check_forward_backward(name, model, sample_input(name, model, tiny=True))


def test_post_activation_resnet18_matches_the_classic_count():
    # kuangliu/pytorch-cifar ResNet18 (post-activation, 1×1-conv + BN shortcuts).
    assert count_parameters(build_model("resnet18", pre_activation=False)) == 11_173_962


def test_pre_activation_resnet50_matches_resnetv2_50():
    # timm resnetv2_50 (pre-activation bottlenecks, final norm), the network of the Fig. 3 run.
    assert count_parameters(build_model("resnet50", pre_activation=True)) == 25_549_352


def test_describe_models_counts_what_build_model_builds():
    for tiny in (False, True):
        described = describe_models(tiny=tiny)
        assert [d["name"] for d in described] == list(MODEL_NAMES)
        for d in described:
            assert set(d) == {"name", "params", "task", "description"}
            assert d["task"] == ("text" if d["name"] == "gpt2" else "image")
            if tiny:
                assert d["params"] == count_parameters(build_model(d["name"], tiny=True))
            else:
                assert d["params"] == REFERENCE_PARAMS[d["name"]]


def test_options_reach_the_model():
    model = build_model("resnet18", width=32, num_classes=100)
    assert (model.fc.in_features, model.fc.out_features) == (256, 100)
    assert build_model("resnet50", tiny=True, num_classes=7).fc.out_features == 7
    model = build_model("gpt2", tiny=True, vocab_size=50, block_size=8, dropout=0.1)
    assert model.lm_head.weight.shape == (50, 64) and model.transformer.wpe.weight.shape == (8, 64)


def test_layernorm_resnet_has_no_batch_statistics():
    torch.manual_seed(0)
    model = build_model("resnet18-ln", tiny=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.num_groups == 1 for m in model.modules() if isinstance(m, nn.GroupNorm))
    x = torch.randn(4, 3, 16, 16)
    # Each sample is normalised on its own: train and eval agree, and a sample's
    # output does not depend on the rest of the batch.
    train_out = model(x)
    model.eval()
    torch.testing.assert_close(model(x), train_out)
    torch.testing.assert_close(model(x[:1]), train_out[:1])


# ---- GPT -------------------------------------------------------------------

def test_gpt_is_causal_and_tied():
    torch.manual_seed(0)
    model = build_model("gpt2", tiny=True).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert count_parameters(model) == gpt2_params(2, 64, 256, 64)
    tokens = torch.randint(0, 256, (1, 12))
    changed = tokens.clone()
    changed[0, 7] = (tokens[0, 7] + 1) % 256
    a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])  # the past does not see the future
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_gpt_init_scales_and_dropout():
    torch.manual_seed(0)
    model = build_model("gpt2", tiny=True, dropout=0.5)
    std = lambda p: p.detach().std().item()  # noqa: E731
    assert std(model.transformer.h[0].mlp.c_fc.weight) == pytest.approx(0.02, rel=0.05)
    assert std(model.transformer.h[0].mlp.c_proj.weight) == pytest.approx(0.02 / 2, rel=0.05)  # 1/sqrt(2·2 layers)
    tokens = torch.randint(0, 256, (2, 16))
    assert not torch.allclose(model(tokens), model(tokens))  # dropout active in training
    model.eval()
    torch.testing.assert_close(model(tokens), model(tokens))


def test_gpt_rejects_a_sequence_longer_than_its_context():
    model = build_model("gpt2", tiny=True, block_size=8)
    with pytest.raises(UserError, match="block_size 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


# ---- Weight Standardization and gains --------------------------------------

def reparameterized_layers(model):
    return [m for m in model.modules() if isinstance(m, (norms.Conv2d, norms.Linear))]


def test_every_conv_and_linear_is_reparameterizable():
    for name in MODEL_NAMES:
        model = build_model(name, tiny=True, weight_standardization=True)
        plain = [m for m in model.modules() if type(m) in (nn.Conv2d, nn.Linear)]
        assert not plain and all(m.standardize for m in reparameterized_layers(model))


@pytest.mark.parametrize("name", ["vgg13", "gpt2", "resnet20"])
def test_standardized_weight_is_centred_with_the_init_scale_times_gain(name):
    torch.manual_seed(0)
    model = build_model(name, tiny=True, weight_standardization=True, gain=True)
    with torch.no_grad():
        for layer in reparameterized_layers(model):
            layer.weight.mul_(torch.rand_like(layer.weight) + 0.5).add_(0.1)  # train-like drift: not centred
            layer.gain.uniform_(0.5, 2.0)
    for layer in reparameterized_layers(model):
        w = norms.effective_weight(layer).detach().flatten(1)
        raw = layer.weight.detach().flatten(1)
        expected_std = layer.init_std * layer.gain.detach() * raw.std(1, correction=0) / (raw.std(1, correction=0) + norms.EPS)
        torch.testing.assert_close(w.mean(1), torch.zeros(len(w)), atol=1e-6, rtol=0)
        torch.testing.assert_close(w.std(1, correction=0), expected_std, rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", ["vgg13", "gpt2"])  # no normalisation after the layers: the scale matters
def test_standardization_keeps_the_function_at_initialisation(name):
    torch.manual_seed(0)
    plain = build_model(name, tiny=True).eval()
    torch.manual_seed(0)
    standardized = build_model(name, tiny=True, weight_standardization=True).eval()
    with torch.no_grad():  # WS centres each neuron; the plain model matches once centred too
        for layer in reparameterized_layers(plain):
            layer.weight.sub_(layer.weight.flatten(1).mean(1).view(-1, *[1] * (layer.weight.dim() - 1)))
    x = sample_input(name, plain, tiny=True)
    torch.testing.assert_close(standardized(x), plain(x), rtol=1e-4, atol=1e-5)


def test_standardized_output_ignores_the_scale_and_mean_of_each_neuron():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for ws in (True, False):
        model = build_model("vgg13", tiny=True, weight_standardization=ws).eval()
        before = model(x)
        with torch.no_grad():
            for layer in reparameterized_layers(model):
                factors = torch.rand(layer.weight.shape[0]) * 10 + 0.1  # one factor per neuron
                layer.weight.mul_(factors.view(-1, *[1] * (layer.weight.dim() - 1))).add_(0.3)
        if ws:
            torch.testing.assert_close(model(x), before, rtol=1e-3, atol=1e-5)
        else:  # sanity: without WS the same change does matter
            assert not torch.allclose(model(x), before, rtol=1e-2)


def test_standardized_gradient_is_orthogonal_to_each_neuron_and_to_ones():
    """Scale and shift invariance imply ⟨∇ω, ω⟩ = 0 and ⟨∇ω, 1⟩ = 0 for every neuron (paper eq. 5, App. B)."""
    torch.manual_seed(0)
    model = build_model("gpt2", tiny=True, weight_standardization=True)
    tokens = torch.randint(0, 256, (2, 16))
    nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
    # lm_head is left out: its weight is also the raw token embedding (tied), and the
    # embedding lookup is not standardised, so those rows are not scale-invariant.
    for layer in [m for m in reparameterized_layers(model) if m is not model.lm_head]:
        w, g = layer.weight.detach().flatten(1), layer.weight.grad.flatten(1)
        # Not exactly 0: the ε added to the std leaks ~ε/std ≈ 1e-3 of scale dependence.
        assert (nn.functional.cosine_similarity(g, w, dim=1).abs() < 2e-3).all()
        assert (g.sum(1).abs() <= 1e-4 * g.norm(dim=1) * g.shape[1] ** 0.5 + 1e-12).all()
    plain = build_model("gpt2", tiny=True)  # sanity: not orthogonal without WS
    nn.functional.cross_entropy(plain(tokens).flatten(0, 1), tokens.flatten()).backward()
    w, g = plain.transformer.h[0].mlp.c_fc.weight.detach(), plain.transformer.h[0].mlp.c_fc.weight.grad
    assert nn.functional.cosine_similarity(g, w, dim=1).abs().max() > 0.1


def test_standardization_state_survives_a_reload_and_weight_stays_the_parameter():
    torch.manual_seed(0)
    model = build_model("vgg13", tiny=True, weight_standardization=True, gain=True).eval()
    names = dict(model.named_parameters())
    assert "head.weight" in names and "head.gain" in names and "head.init_std" in model.state_dict()
    assert not any("parametrizations" in n for n in names)
    torch.manual_seed(1)
    other = build_model("vgg13", tiny=True, weight_standardization=True, gain=True).eval()
    other.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(other(x), model(x))


def test_gain_without_standardization_scales_each_neuron():
    torch.manual_seed(0)
    layer = norms.Linear(5, 3, gain=True)
    x = torch.randn(4, 5)
    before = layer(x)
    torch.testing.assert_close(before, nn.functional.linear(x, layer.weight, layer.bias))
    with torch.no_grad():
        layer.gain[1] = 3.0
    after = layer(x)
    bias = layer.bias.detach()
    torch.testing.assert_close(after[:, 1] - bias[1], 3 * (before[:, 1] - bias[1]))
    torch.testing.assert_close(after[:, [0, 2]], before[:, [0, 2]])


# ---- Parameter groups ------------------------------------------------------

@pytest.mark.parametrize("name", MODEL_NAMES)
def test_param_groups_cover_every_parameter_once_with_the_right_decay(name):
    model = build_model(name, tiny=True, weight_standardization=True, gain=True)
    groups = param_groups(model, weight_decay=0.05)
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len(list(model.parameters()))
    for group in groups:
        for p in group["params"]:
            assert group["weight_decay"] == (0.05 if p.dim() >= 2 else 0.0)
    assert sum(p.numel() for g in groups for p in g["params"]) == count_parameters(model)
    gains = {id(m.gain) for m in reparameterized_layers(model)}
    assert gains <= {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}


def test_param_groups_list_the_tied_embedding_once():
    model = build_model("gpt2", tiny=True)
    decay = param_groups(model, 0.1)[0]["params"]
    assert sum(p is model.lm_head.weight for p in decay) == 1
    assert any(p is model.transformer.wpe.weight for p in decay)


# ---- Errors ----------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda: build_model("resnet34"), "resnet20, resnet18, resnet18-ln, resnet50, vgg13, gpt2"),
    (lambda: build_model("resnet20", dropout=0.1), "its options: width, pre_activation"),
    (lambda: build_model("vgg13", width=8), "its options: none"),
    (lambda: build_model("resnet18", pre_activation="no"), "pre_activation='no' is invalid"),
    (lambda: build_model("resnet18", width=0), "width=0 is invalid"),
    (lambda: build_model("gpt2", dropout=1.5), "dropout=1.5 is invalid"),
    (lambda: build_model("resnet20", vocab_size=100), "vocab_size is only for gpt2"),
    (lambda: build_model("gpt2", num_classes=10), "num_classes is only for image models"),
    (lambda: build_model("gpt2", vocab_size=-3), "vocab_size=-3 is invalid"),
    (lambda: build_model("resnet20", weight_standardization="yes"), "weight_standardization='yes'"),
    (lambda: param_groups(nn.Linear(2, 2), -0.1), "weight_decay=-0.1 is invalid"),
])
def test_bad_input_is_a_user_error_naming_the_fix(call, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        call()
