"""ImageNet-1k from a class-per-folder tree, decoded by worker processes.

Layout: ROOT/imagenet/train/<wnid>/*.JPEG and ROOT/imagenet/val/<wnid>/*.JPEG.
The official validation archive is flat; sort it into class folders first
(the usual valprep.sh does this). Classes are the sorted folder names of
train/; val/ must use the same names.

The recipe is the paper's (the vendored timm train.py of epfml/REQ,
ResNet-50 ImageNet runs):
- training: RandomResizedCrop to 224 (area scale 0.08–1, aspect ratio 3/4–4/3,
  bilinear) and a horizontal flip with probability 1/2;
- evaluation: resize the shorter side to 256, centre crop 224;
- normalisation with the ImageNet mean and std, done on the device.

Images are decoded with Pillow by torch.utils.data.DataLoader workers and
travel as uint8, four times smaller than float32. Each image's crop and flip
come from a generator seeded by (seed, epoch, position in the epoch), so the
batches are the same whatever the number of workers, and a resumed run sees
exactly the batches it would have seen.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from rotsweep.data import check_batch_size, check_eval_split, epochs_from, seed_sequence, seeded_generator
from rotsweep.data.cifar import split_90_10
from rotsweep.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def require_imagenet(name: str, root: Path) -> None:
    """A one-line UserError unless root/imagenet has train/ and val/ class folders."""
    folder = root / "imagenet"
    expected = f"{folder}/train/<wnid>/*.JPEG and {folder}/val/<wnid>/*.JPEG"
    if not (folder / "train").is_dir() or not (folder / "val").is_dir():
        raise UserError(
            f"ImageNet not found: expected {expected} (class-per-folder; sort the flat val archive into class folders); "
            "set --data-dir or $ROTSWEEP_DATA_DIR to the directory holding imagenet/"
        )


def load_imagenet(
    name: str,
    root: Path,
    *,
    seed: int,
    val_split: bool,
    device: torch.device,
    block_size=None,
    num_workers: int | None = None,
    image_size: int = 224,
) -> "ImageFolderDataset":
    """num_workers: decoding processes (default: all cores, at most 8); image_size: the crop (eval resizes to 256/224 of it)."""
    require_imagenet(name, root)
    folder = root / "imagenet"
    classes = sorted(entry.name for entry in os.scandir(folder / "train") if entry.is_dir())
    strays = sorted({entry.name for entry in os.scandir(folder / "val") if entry.is_dir()} - set(classes))
    if strays:
        raise UserError(f"ImageNet val/ has class folders that train/ lacks ({', '.join(strays[:3])}...); both must use the same wnids")
    train = _list_images(folder, "train", classes)
    evals = {"test": _list_images(folder, "val", classes)}
    if not len(train[0]) or not len(evals["test"][0]):
        raise UserError(f"ImageNet has no images: expected {folder}/train/<wnid>/*.JPEG and {folder}/val/<wnid>/*.JPEG")
    if val_split:
        train, evals["val"] = split_90_10(*train, seed=seed)
    else:
        # As timm does, the official validation set is the set evaluated during training.
        evals["val"] = evals["test"]
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    return ImageFolderDataset(
        name,
        folder,
        train,
        {split: evals[split] for split in ("val", "test")},
        num_classes=len(classes),
        image_size=image_size,
        num_workers=num_workers,
        device=device,
    )


def _list_images(folder: Path, split: str, classes: list[str]) -> tuple[np.ndarray, torch.Tensor]:
    """(paths relative to folder, labels): each class folder's images in sorted order; a missing folder has none."""
    paths, labels = [], []
    for label, wnid in enumerate(classes):
        class_dir = folder / split / wnid
        if not class_dir.is_dir():
            continue
        names = sorted(e.name for e in os.scandir(class_dir) if e.name.lower().endswith(IMAGE_EXTENSIONS))
        paths += [f"{split}/{wnid}/{n}".encode() for n in names]
        labels += [label] * len(names)
    # A numpy array of bytes, not a list of str: 1.28M short paths take ~50 MB,
    # indexing by a permutation is one operation, and worker processes share
    # it without the copy-on-write that Python objects' reference counts cause.
    return np.array(paths, dtype=np.bytes_), torch.tensor(labels, dtype=torch.int64)


class ImageFolderDataset:
    """Image files listed in memory, decoded and augmented by DataLoader workers, normalised on the device."""

    kind = "image"
    vocab_size = None

    def __init__(
        self,
        name: str,
        folder: Path,
        train: tuple[np.ndarray, torch.Tensor],
        evals: dict[str, tuple[np.ndarray, torch.Tensor]],
        *,
        num_classes: int,
        image_size: int,
        num_workers: int,
        device: torch.device,
    ):
        self.name = name
        self.folder = folder
        self.num_classes = num_classes
        self.train_paths, self.train_labels = train
        self.train_size = len(self.train_labels)
        self.eval_sets = evals
        self.eval_splits = tuple(evals)
        self.image_size = image_size
        self.resize_size = round(image_size * 256 / 224)
        self.num_workers = num_workers
        self.device = device
        self._mean = 255 * torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self._std = 255 * torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def steps_per_epoch(self, batch_size: int) -> int:
        return check_batch_size(batch_size, self.train_size, "images")

    def train_batches(self, batch_size: int, *, seed: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        steps = self.steps_per_epoch(batch_size)
        for epoch, first in epochs_from(start_step, steps):
            order = torch.randperm(self.train_size, generator=seeded_generator("shuffle", seed, epoch)).numpy()
            # Position p of the epoch is image order[p]; we start at batch `first`.
            positions = range(first * batch_size, steps * batch_size)
            images = _TrainImages(self.folder, self.train_paths, order, seed, epoch, self.image_size)
            yield from self._load(images, positions, batch_size, self.train_labels[torch.from_numpy(order)])

    def eval_batches(self, batch_size: int, *, split: str = "val", max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        check_eval_split(split, self.eval_splits, self.name)
        paths, labels = self.eval_sets[split]
        num_batches = math.ceil(len(paths) / batch_size)
        if max_batches is not None:
            num_batches = min(num_batches, max_batches)
        positions = range(min(len(paths), num_batches * batch_size))
        yield from self._load(_EvalImages(self.folder, paths, self.resize_size, self.image_size), positions, batch_size, labels)

    def _load(self, images, positions: range, batch_size: int, labels: torch.Tensor):
        loader = DataLoader(
            images,
            batch_size=batch_size,
            sampler=positions,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        starts = range(positions.start, positions.stop, batch_size)
        for start, batch in zip(starts, loader):
            batch = batch.to(self.device, non_blocking=True)
            yield (batch.float() - self._mean) / self._std, labels[start : start + len(batch)].to(self.device)


class _TrainImages(torch.utils.data.Dataset):
    """Position p of one epoch: image order[p], randomly cropped and flipped with randomness from (seed, epoch, p)."""

    def __init__(self, folder: Path, paths: np.ndarray, order: np.ndarray, seed: int, epoch: int, size: int):
        self.folder, self.paths, self.order = folder, paths, order
        self.seed, self.epoch, self.size = seed, epoch, size

    def __len__(self):
        return len(self.order)

    def __getitem__(self, position: int) -> torch.Tensor:
        rng = np.random.default_rng(seed_sequence("augment", self.seed, self.epoch, position))
        image = _open_rgb(self.folder, self.paths[self.order[position]])
        box = random_resized_crop_box(image.width, image.height, rng)
        image = image.resize((self.size, self.size), Image.BILINEAR, box=box)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return _to_tensor(image)


class _EvalImages(torch.utils.data.Dataset):
    """Image i, shorter side resized to resize_size, centre crop of crop_size."""

    def __init__(self, folder: Path, paths: np.ndarray, resize_size: int, crop_size: int):
        self.folder, self.paths = folder, paths
        self.resize_size, self.crop_size = resize_size, crop_size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = _open_rgb(self.folder, self.paths[index])
        scale = self.resize_size / min(image.width, image.height)
        width, height = max(self.resize_size, round(image.width * scale)), max(self.resize_size, round(image.height * scale))
        image = image.resize((width, height), Image.BILINEAR)
        left, top = (width - self.crop_size) // 2, (height - self.crop_size) // 2
        return _to_tensor(image.crop((left, top, left + self.crop_size, top + self.crop_size)))


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a crop covering a random share of the area with a random aspect ratio.

    The area share is uniform in CROP_SCALE and the log aspect ratio uniform
    in log CROP_RATIO (Szegedy et al.'s Inception crop, torchvision's
    RandomResizedCrop). After ten draws that do not fit in the image, fall
    back to the largest centred crop whose ratio is within CROP_RATIO.
    """
    area = width * height
    for _ in range(10):
        target_area = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        w = round(math.sqrt(target_area * ratio))
        h = round(math.sqrt(target_area / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def _open_rgb(folder: Path, path: bytes) -> Image.Image:
    with Image.open(folder / path.decode()) as image:
        return image.convert("RGB")


def _to_tensor(image) -> torch.Tensor:
    """PIL RGB image -> uint8 (3, H, W)."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)
