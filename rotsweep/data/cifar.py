"""CIFAR-10 and CIFAR-100, held whole on the training device.

The files are the python archives from https://www.cs.toronto.edu/~kriz/cifar.html,
unpacked: cifar-10-batches-py/data_batch_1..5 + test_batch, and
cifar-100-python/train + test. Each is a pickled dict whose "data" is an
(N, 3072) uint8 array (the red, green and blue 32×32 planes of an image, row
by row) and whose "labels" (CIFAR-10) or "fine_labels" (CIFAR-100) are ints.

The whole set (150 MB) lives on the device as one uint8 tensor, as in
airbench: a batch is an index into it, and augmentation and normalisation are
a few tensor operations on the batch, never a Python loop over images.

The recipe is the paper's (the vendored timm train.py of epfml/REQ, CIFAR-10 runs):
- augmentation: pad 4 pixels with zeros, take a random 32×32 crop, flip
  horizontally with probability 1/2 (torchvision's RandomCrop(32, padding=4)
  and RandomHorizontalFlip);
- normalisation: per-channel mean and std below, applied after augmentation,
  so the padding is black as in torchvision;
- val_split: the paper's `--val-split train[0.9:]-S` is a torch random_split
  of the 50,000 training images into 90% / 10% with a generator seeded by S.
  We draw the same permutation, so the held-out images are the paper's.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from rotsweep.data import check_batch_size, check_eval_split, epochs_from, seeded_generator
from rotsweep.errors import UserError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

CROP_PADDING = 4


@dataclass(frozen=True)
class _Archive:
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    url: str


_ARCHIVES = {
    "cifar10": _Archive(
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        10,
        CIFAR10_MEAN,
        CIFAR10_STD,
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": _Archive(
        "CIFAR-100",
        "cifar-100-python",
        ("train",),
        ("test",),
        "fine_labels",
        100,
        CIFAR100_MEAN,
        CIFAR100_STD,
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}


def require_cifar(name: str, root: Path) -> None:
    """A one-line UserError unless the archive's files are in root."""
    archive = _ARCHIVES[name]
    folder = root / archive.folder
    missing = [f for f in archive.train_files + archive.test_files if not (folder / f).is_file()]
    if missing:
        expected = f"{folder}/{_describe(archive.train_files)} and {_describe(archive.test_files)}"
        raise UserError(
            f"{archive.title} not found: expected {expected}; download {archive.url}, "
            f"unpack it in {root} or point --data-dir / $ROTSWEEP_DATA_DIR at the directory holding {archive.folder}"
        )


def load_cifar(name: str, root: Path, *, seed: int, val_split: bool, device: torch.device, block_size=None) -> "ImageTensorDataset":
    require_cifar(name, root)
    archive = _ARCHIVES[name]
    folder = root / archive.folder
    train = _read_batches(folder, archive.train_files, archive.label_key)
    test = _read_batches(folder, archive.test_files, archive.label_key)
    evals = {"test": test}
    if val_split:
        train, evals["val"] = split_90_10(*train, seed=seed)
    else:
        # Without a split the paper evaluates on the test set during training.
        evals["val"] = test
    return ImageTensorDataset(
        name,
        train,
        {split: evals[split] for split in ("val", "test")},
        num_classes=archive.num_classes,
        mean=archive.mean,
        std=archive.std,
        augment=True,
        device=device,
    )


def _describe(files: tuple[str, ...]) -> str:
    # data_batch_1..5 rather than five names.
    if len(files) > 1 and files[0].endswith("_1"):
        return f"{files[0]}..{len(files)}"
    return " ".join(files)


def _read_batches(folder: Path, files: tuple[str, ...], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for file in files:
        path = folder / file
        try:
            with open(path, "rb") as f:
                # The archives were pickled by Python 2; latin1 turns its byte
                # strings into str keys and leaves the numpy arrays intact.
                batch = pickle.load(f, encoding="latin1")
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            targets = np.asarray(batch[label_key], dtype=np.int64)
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError) as err:
            raise UserError(f"{path} is not a CIFAR python batch ({type(err).__name__}: {err}); download the archive again") from None
        if len(targets) != len(data):
            raise UserError(f"{path} has {len(data)} images but {len(targets)} labels; download the archive again")
        images.append(data)
        labels.append(targets)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def split_90_10(images, labels, *, seed: int):
    """(train, val) with the index sets of torch.utils.data.random_split(ds, [0.9, 0.1], seeded generator).

    images and labels are tensors or numpy arrays (ImageNet keeps paths in one).
    """
    n = len(labels)
    # A numpy index array selects rows of both kinds, even when it holds one element.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    n_train = n - n // 10  # random_split gives the rounding remainder to the first part
    train_idx, val_idx = order[:n_train], order[n_train:]
    return (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])


class ImageTensorDataset:
    """An image set held as uint8 tensors on the device (CIFAR and the synthetic images)."""

    kind = "image"
    vocab_size = None

    def __init__(
        self,
        name: str,
        train: tuple[torch.Tensor, torch.Tensor],
        evals: dict[str, tuple[torch.Tensor, torch.Tensor]],
        *,
        num_classes: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: bool,
        device: torch.device,
    ):
        self.name = name
        self.num_classes = num_classes
        self.augment = augment
        self.device = device
        self.train_images, self.train_labels = (t.to(device) for t in train)
        self.train_size = len(self.train_labels)
        self.eval_sets = {split: (x.to(device), y.to(device)) for split, (x, y) in evals.items()}
        self.eval_splits = tuple(evals)
        # Scaled by 255 so that normalising a uint8 batch is one subtract and one divide.
        self._mean = 255 * torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self._std = 255 * torch.tensor(std, device=device).view(1, -1, 1, 1)

    def steps_per_epoch(self, batch_size: int) -> int:
        return check_batch_size(batch_size, self.train_size, "images")

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32, standardised per channel."""
        return (images.float() - self._mean) / self._std

    def train_batches(self, batch_size: int, *, seed: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        steps = self.steps_per_epoch(batch_size)
        for epoch, first in epochs_from(start_step, steps):
            order = torch.randperm(self.train_size, generator=seeded_generator("shuffle", seed, epoch)).to(self.device)
            for i in range(first, steps):
                index = order[i * batch_size : (i + 1) * batch_size]
                images = self.train_images[index]
                if self.augment:
                    images = random_crop_flip(images, seeded_generator("augment", seed, epoch * steps + i))
                yield self.normalize(images), self.train_labels[index]

    def eval_batches(self, batch_size: int, *, split: str = "val", max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        check_eval_split(split, self.eval_splits, self.name)
        images, labels = self.eval_sets[split]
        starts = range(0, len(labels), batch_size)  # the last batch may be smaller: every image counts
        for start in starts[:max_batches]:
            yield self.normalize(images[start : start + batch_size]), labels[start : start + batch_size]


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = CROP_PADDING) -> torch.Tensor:
    """Pad-and-crop plus horizontal flip, each image with its own offsets; randomness from `generator` (CPU)."""
    n = len(images)
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return crop_and_flip(images, top.to(images.device), left.to(images.device), flip.to(images.device), padding)


def crop_and_flip(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, padding: int) -> torch.Tensor:
    """Image i is the crop at (top[i], left[i]) of itself zero-padded by `padding`, mirrored where flip[i].

    One gather does both: row r of crop i is padded row top[i] + r, and column
    c is padded column left[i] + c, or left[i] + (W-1-c) when flipped, since
    reading the columns backwards is the mirror image. (A gather over flat
    pixel indices is several times faster on CPU than indexing with row and
    column tensors.)
    """
    n, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = top[:, None] + torch.arange(height, device=images.device)
    cols = left[:, None] + torch.arange(width, device=images.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    pixels = rows[:, :, None] * (width + 2 * padding) + cols[:, None, :]  # (n, H, W) flat indices into a padded image
    pixels = pixels.view(n, 1, height * width).expand(n, channels, height * width)
    return padded.view(n, channels, -1).gather(2, pixels).view(n, channels, height, width)
