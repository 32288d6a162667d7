"""ResNets: ResNet-20 and ResNet-18 for CIFAR, their LayerNorm variant, ResNet-50 for ImageNet.

One residual block covers all four. Its branch is a short chain of convs,
each paired with a normalisation layer:

    BasicBlock  (ResNet-18/20):  3×3 conv (stride s), 3×3 conv
    Bottleneck  (ResNet-50):     1×1 conv, 3×3 conv (stride s), 1×1 conv to 4× the channels

    post-activation (He et al. 2016a):  y = relu(shortcut(x) + N_k(C_k(… relu(N_1(C_1(x))))))
    pre-activation  (He et al. 2016b):  y = shortcut(x̃) + C_k(relu(N_k(… C_2(relu(N_2(C_1(x̃))))))),
                                        x̃ = relu(N_1(x)), the identity shortcut takes x itself

The shortcut is the identity, or a strided 1×1 conv (+ norm when
post-activation) when the shape changes. Pre-activation nets end with a final
norm + ReLU before pooling.

Which variant each experiment of the paper used (official code: epfml/REQ,
its cifar_resnet.py and the experiments' scripts): ResNet-20 is post-activation;
ResNet-18 is pre-activation in the weight-standardization (Fig. 7) and
imbalance (Fig. 16) runs and post-activation in Adam vs AdamW (Fig. 6);
ResNet-50 is timm/torchvision's post-activation v1.5 (stride in the 3×3 conv)
in the warmup runs (Fig. 5) and the pre-activation ResNetV2-50 in the dynamics
run (Fig. 3).
The "LayerNorm" ResNet-18 of Fig. 7 replaces every BatchNorm by GroupNorm with
one group, which normalises each sample over (C, H, W): whole layers, not
single neurons, become scale-invariant.

Initialisation as in the official code: convs kaiming-normal (fan_out, ReLU),
norms 1/0, no zero-init of the last norm of a branch, the classifier keeps
PyTorch's default nn.Linear init.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rotsweep.models import norms


@dataclass(frozen=True)
class ResNetConfig:
    block: str  # "basic" | "bottleneck"
    depths: tuple[int, ...]  # blocks per stage; every stage after the first halves the resolution
    width: int  # channels of the stem and of the first stage's 3×3 convs, doubled at every stage
    num_classes: int
    stem: str  # "cifar": 3×3 conv | "imagenet": 7×7 conv stride 2, then 3×3 max-pool stride 2
    normalization: str = "batch"  # "batch" | "layer" (GroupNorm with one group)
    pre_activation: bool = False
    weight_standardization: bool = False
    gain: bool = False


def conv(cfg: ResNetConfig, c_in: int, c_out: int, kernel: int, stride: int = 1) -> norms.Conv2d:
    return norms.Conv2d(
        c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False,
        standardize=cfg.weight_standardization, gain=cfg.gain,
    )


def norm(cfg: ResNetConfig, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if cfg.normalization == "batch" else nn.GroupNorm(1, channels)


class Block(nn.Module):
    def __init__(self, cfg: ResNetConfig, c_in: int, planes: int, stride: int):
        super().__init__()
        self.pre_activation = cfg.pre_activation
        if cfg.block == "basic":
            c_out = planes
            shapes = [(c_in, planes, 3, stride), (planes, planes, 3, 1)]
        else:
            c_out = 4 * planes
            shapes = [(c_in, planes, 1, 1), (planes, planes, 3, stride), (planes, c_out, 1, 1)]
        self.convs = nn.ModuleList(conv(cfg, a, b, k, s) for a, b, k, s in shapes)
        # A norm sits after its conv (post-activation) or before it (pre-activation).
        self.norms = nn.ModuleList(norm(cfg, b if not self.pre_activation else a) for a, b, _, _ in shapes)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            projection = [conv(cfg, c_in, c_out, 1, stride)]
            if not self.pre_activation:
                projection.append(norm(cfg, c_out))
            self.shortcut = nn.Sequential(*projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_activation:
            pre = F.relu(self.norms[0](x))
            skip = x if self.shortcut is None else self.shortcut(pre)
            x = self.convs[0](pre)
            for conv_i, norm_i in zip(self.convs[1:], self.norms[1:]):
                x = conv_i(F.relu(norm_i(x)))
            return x + skip
        skip = x if self.shortcut is None else self.shortcut(x)
        for conv_i, norm_i in zip(self.convs[:-1], self.norms[:-1]):
            x = F.relu(norm_i(conv_i(x)))
        return F.relu(self.norms[-1](self.convs[-1](x)) + skip)


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.stem == "cifar":
            stem = [conv(cfg, 3, cfg.width, 3)]
        else:
            stem = [conv(cfg, 3, cfg.width, 7, stride=2)]
        if not cfg.pre_activation:  # pre-activation blocks normalise their own input
            stem += [norm(cfg, cfg.width), nn.ReLU()]
        if cfg.stem == "imagenet":
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)

        blocks, c_in = [], cfg.width
        for stage, depth in enumerate(cfg.depths):
            planes = cfg.width * 2**stage
            for i in range(depth):
                block = Block(cfg, c_in, planes, stride=2 if stage > 0 and i == 0 else 1)
                blocks.append(block)
                c_in = planes * (4 if cfg.block == "bottleneck" else 1)
        self.blocks = nn.Sequential(*blocks)
        self.final_norm = norm(cfg, c_in) if cfg.pre_activation else None
        self.fc = norms.Linear(c_in, cfg.num_classes, standardize=cfg.weight_standardization, gain=cfg.gain)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        norms.keep_init_scale(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(images))
        if self.final_norm is not None:
            x = F.relu(self.final_norm(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# The named networks. `tiny` keeps the code and shrinks width and depth for CPU runs.

def resnet20(num_classes: int = 10, *, tiny: bool = False, width: int | None = None,
             pre_activation: bool = False, **weight_options) -> ResNet:
    return ResNet(ResNetConfig(
        "basic", (1, 1, 1) if tiny else (3, 3, 3), width or (8 if tiny else 16), num_classes, "cifar",
        pre_activation=pre_activation, **weight_options,
    ))


def resnet18(num_classes: int = 10, *, tiny: bool = False, width: int | None = None,
             pre_activation: bool = True, normalization: str = "batch", **weight_options) -> ResNet:
    return ResNet(ResNetConfig(
        "basic", (1, 1, 1, 1) if tiny else (2, 2, 2, 2), width or (8 if tiny else 64), num_classes, "cifar",
        normalization=normalization, pre_activation=pre_activation, **weight_options,
    ))


def resnet18_ln(num_classes: int = 10, **options) -> ResNet:
    return resnet18(num_classes, normalization="layer", **options)


def resnet50(num_classes: int = 1000, *, tiny: bool = False, width: int | None = None,
             pre_activation: bool = False, **weight_options) -> ResNet:
    return ResNet(ResNetConfig(
        "bottleneck", (1, 1, 1, 1) if tiny else (3, 4, 6, 3), width or (8 if tiny else 64), num_classes,
        "imagenet", pre_activation=pre_activation, **weight_options,
    ))
