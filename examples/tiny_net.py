"""A network and a data set of your own, run by rotsweep (see "Your own model and data" in the README).

    model = "tiny_net:build"      build(config, *, num_classes, vocab_size) -> nn.Module
    dataset = "tiny_net:blobs"    blobs(config, *, seed, data_dir, device) -> a rotsweep.data.Dataset

rotsweep finds this module next to the sweep file that names it (or in the working
directory), records that directory in the sweep, and imports it from there on every
node and in every later relaunch.

TinyConvNet: three 3x3 convolutions, each followed by BatchNorm, so every conv weight
is scale-invariant: the setting where weight decay and the lr balance into the
rotational equilibrium the paper studies (its η·λ story). With rotsweep's default rule
the conv and linear weights (ndim >= 2) are decayed and, under a rotational variant,
rotational per output channel; biases and BatchNorm's affine parameters are not.
`decayed_parameters` below says the same explicitly except for the classifier, which
is left undecayed when model_options = {decay_head = false}.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TinyConvNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 8, decay_head: bool = True):
        super().__init__()
        channels = [3, width, 2 * width, 2 * width]
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1, bias=False)
                                   for i, (c_in, c_out) in enumerate(zip(channels, channels[1:])))
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in channels[1:])
        self.head = nn.Linear(channels[-1], num_classes)
        self.decay_head = decay_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(x)))
        return self.head(x.mean((2, 3)))

    def decayed_parameters(self) -> list[str]:
        """The tensors weight decay acts on (and a rotational variant rotates): the conv weights, maybe the head's."""
        return [f"convs.{i}.weight" for i in range(len(self.convs))] + (["head.weight"] if self.decay_head else [])


def build(config, *, num_classes: int | None, vocab_size: int | None) -> nn.Module:
    """rotsweep's model builder: the run's RunConfig, and the class count of its data set."""
    if num_classes is None:
        raise ValueError("TinyConvNet classifies images; pair it with an image data set")
    return TinyConvNet(num_classes, **config.model_options)


class Blobs:
    """Images of `num_classes` smooth colour templates under noise: learnable, in memory, fixed by a seed.

    The Dataset contract of rotsweep.data: kind, num_classes, vocab_size, train_size,
    eval_splits, and three methods. Batch k of train_batches depends only on (seed, k),
    so a run resumed at step k sees exactly the batches an uninterrupted one would.
    """

    kind = "image"
    vocab_size = None
    eval_splits = ("val",)

    def __init__(self, *, seed: int, device: torch.device, num_classes: int = 10, image_size: int = 16,
                 num_train: int = 2048, num_val: int = 512, noise: float = 1.5):
        generator = torch.Generator().manual_seed(seed)
        coarse = torch.randn(num_classes, 3, 4, 4, generator=generator)
        templates = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)

        def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            labels = torch.randint(num_classes, (n,), generator=generator)
            images = templates[labels] + noise * torch.randn(n, 3, image_size, image_size, generator=generator)
            return images.to(device), labels.to(device)

        self.num_classes = num_classes
        self.train_images, self.train_labels = draw(num_train)
        self.val_images, self.val_labels = draw(num_val)
        self.train_size = num_train
        self.device = device

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.train_size // batch_size

    def train_batches(self, batch_size: int, *, seed: int, start_step: int = 0):
        steps = self.steps_per_epoch(batch_size)
        epoch, first = divmod(start_step, steps)
        while True:
            order = torch.randperm(self.train_size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            for k in range(first, steps):
                index = order[k * batch_size : (k + 1) * batch_size].to(self.device)
                yield self.train_images[index], self.train_labels[index]
            epoch, first = epoch + 1, 0

    def eval_batches(self, batch_size: int, *, split: str = "val", max_batches: int | None = None):
        count = math.ceil(len(self.val_labels) / batch_size)
        for k in range(count if max_batches is None else min(count, max_batches)):
            yield self.val_images[k * batch_size : (k + 1) * batch_size], self.val_labels[k * batch_size : (k + 1) * batch_size]


def blobs(config, *, seed: int, data_dir, device: torch.device) -> Blobs:
    """rotsweep's data set builder: options from dataset_options (num_classes, image_size, ...)."""
    return Blobs(seed=seed, device=device, **config.dataset_options)
