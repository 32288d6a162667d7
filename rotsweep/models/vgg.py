"""VGG-13 without normalisation, for CIFAR (paper App. H, Figure 12).

Without normalisation layers the weights are scale-sensitive: their gradient
has a radial component, which acts as an extra weight decay λ_u (§3.4, eq. 101)
and lets neurons rotate at different speeds. With weight_standardization=True
every conv and linear neuron becomes scale-invariant again, the comparison of
Figure 12.

Layout as in the official App. H runs (timm's vgg13, configuration "B"):

    features  [64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M]
              3×3 conv (with bias) + ReLU, M = 2×2 max-pool; 32×32 input → 1×1
    pre-logits two 1×1 convs 512 → 512 → 512, each + ReLU (the "FC" layers,
              num_features 512, feature window 1)
    head      global average pool, linear 512 → classes

Init as in timm: convs kaiming-normal (fan_out, ReLU), linear N(0, 0.01), biases 0.
"""

from __future__ import annotations

import torch
from torch import nn

from rotsweep.models import norms

VGG13_STAGES = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))
# Three pools, so that inputs down to 8×8 work.
TINY_STAGES = ((8,), (16,), (32,))


class VGG(nn.Module):
    def __init__(self, stages: tuple[tuple[int, ...], ...], num_features: int, num_classes: int,
                 weight_standardization: bool = False, gain: bool = False):
        super().__init__()
        reparam = dict(standardize=weight_standardization, gain=gain)
        layers, c_in = [], 3
        for widths in stages:
            for c_out in widths:
                layers += [norms.Conv2d(c_in, c_out, 3, padding=1, **reparam), nn.ReLU()]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pre_logits = nn.Sequential(
            norms.Conv2d(c_in, num_features, 1, **reparam), nn.ReLU(),
            norms.Conv2d(num_features, num_features, 1, **reparam), nn.ReLU(),
        )
        self.head = norms.Linear(num_features, num_classes, **reparam)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)
        norms.keep_init_scale(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pre_logits(self.features(images))
        return self.head(x.mean(dim=(2, 3)))


def vgg13(num_classes: int = 10, *, tiny: bool = False, **weight_options) -> VGG:
    if tiny:
        return VGG(TINY_STAGES, 32, num_classes, **weight_options)
    return VGG(VGG13_STAGES, 512, num_classes, **weight_options)
