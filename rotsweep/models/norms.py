"""Weight Standardization and per-neuron gains, as reparameterisations of Conv2d and Linear.

A neuron is one row of `weight.flatten(1)`: one output channel of a
convolution, one output feature of a linear layer. That is the unit whose
rotation the paper measures and the rotational optimizers control.

Weight Standardization (Qiao et al. 2019, a.k.a. centred weight normalisation,
Huang et al. 2017) computes the weight the layer applies from the raw weight ω
of every neuron:

    ŵ = s₀ · (ω − mean(ω)) / (std(ω) + ε)

which makes the output independent of the scale and of the mean of ω. Each
neuron is then scale-invariant (paper §2, eq. 4) so its gradient is orthogonal
to ω (eq. 5, App. B) and to the all-ones vector; this is what balances the
rotation of the neurons in §5.3 (Figure 7) and App. H (Figure 12).

s₀ is the scale the neuron was initialised with, recorded once by
`keep_init_scale` after the model's own initialisation (the official code's
`keep_init=True`, its default). Qiao et al. use s₀ = 1, which is harmless when
a normalisation layer follows the conv but blows up the signal of the
un-normalised VGG-13 (App. H), of the final classifier and of GPT-2 (Figure 3):
with s₀ = init scale, switching WS on leaves the function at initialisation
unchanged (up to centring) and only changes how the weights train.

The optional learnable gain γ (one per neuron, initialised to 1, 1-D so it gets
no weight decay and is never rotational) multiplies ŵ; without standardisation
it is the paper's "slinear" (App. I): ŵ = γ · ω, which lets an RV, whose
weight norms are fixed, still learn the output scale of each neuron.

Both are computed inside forward, so `.weight` stays the parameter the
optimizer updates and the dynamics recorder measures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Added to the std (as in the official code): keeps ŵ finite for a neuron whose
# weights are all equal, and is negligible against init-scale stds (~1e-2).
EPS = 1e-5


class Conv2d(nn.Conv2d):
    """nn.Conv2d with optional Weight Standardization and per-output-channel gain."""

    def __init__(self, *args, standardize: bool = False, gain: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        _add_reparameterization(self, standardize, gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, effective_weight(self), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", standardize={self.standardize}, gain={self.gain is not None}"


class Linear(nn.Linear):
    """nn.Linear with optional Weight Standardization and per-output-feature gain."""

    def __init__(self, *args, standardize: bool = False, gain: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        _add_reparameterization(self, standardize, gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, effective_weight(self), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", standardize={self.standardize}, gain={self.gain is not None}"


def _add_reparameterization(layer: nn.Conv2d | nn.Linear, standardize: bool, gain: bool) -> None:
    neurons = layer.weight.shape[0]
    like = dict(device=layer.weight.device, dtype=layer.weight.dtype)
    layer.standardize = standardize
    layer.gain = nn.Parameter(torch.ones(neurons, **like)) if gain else None
    if standardize:
        # A buffer, so it is saved in the state dict and a resumed run applies
        # the same scale (the official code re-measured it after every reload).
        layer.register_buffer("init_std", torch.ones(neurons, **like))


def _per_neuron(vector: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """View a vector with one entry per neuron so it broadcasts over the weight's rows."""
    return vector.view(-1, *([1] * (weight.dim() - 1)))


def _std_mean(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-neuron (std + EPS, mean); population std, i.e. RMS of the centred row."""
    std, mean = torch.std_mean(weight.flatten(1), dim=1, correction=0)
    return std + EPS, mean


def effective_weight(layer: Conv2d | Linear) -> torch.Tensor:
    """The weight the layer applies: ŵ = γ · s₀ · (ω − mean ω)/(std ω + ε), each factor only if enabled."""
    weight = layer.weight
    if layer.standardize:
        std, mean = _std_mean(weight)
        weight = (weight - _per_neuron(mean, weight)) * _per_neuron(layer.init_std / std, weight)
    if layer.gain is not None:
        weight = weight * _per_neuron(layer.gain, weight)
    return weight


@torch.no_grad()
def keep_init_scale(model: nn.Module) -> None:
    """Record s₀ = std + ε of every standardised neuron; call once, after the model's initialisation."""
    for module in model.modules():
        if isinstance(module, (Conv2d, Linear)) and module.standardize:
            module.init_std.copy_(_std_mean(module.weight)[0])
