"""Data sets for training runs: one entry point, one contract.

    ds = load_dataset("cifar10", data_dir=..., seed=0, val_split=True, device="cuda")
    for step, (x, y) in zip(range(num_steps), ds.train_batches(256, seed=run_seed)):
        ...

Every data set, whatever its format, offers the same small surface (see
`Dataset` below): an infinite, deterministic stream of training batches that
can be restarted at any step without replaying the earlier ones (exact
kill-and-resume), and finite, deterministic evaluation batches.

Where the files live. `load_dataset` looks for data under one root directory:
the `data_dir` argument (the CLI's --data-dir), else the environment variable
ROTSWEEP_DATA_DIR, else ~/.cache/rotsweep/data. Each data set has a fixed
sub-directory there:

    cifar10       ROOT/cifar-10-batches-py/   (the unpacked python archive)
    cifar100      ROOT/cifar-100-python/
    imagenet      ROOT/imagenet/train/<wnid>/*.JPEG, ROOT/imagenet/val/<wnid>/*.JPEG
    openwebtext   ROOT/openwebtext/train.bin, val.bin   (nanoGPT's uint16 GPT-2 tokens)
    wikitext      ROOT/wikitext/train.bin, val.bin [, test.bin]

A missing data set is a one-line UserError naming the files expected and
where. The synthetic sets need no files: they are generated in memory.

Randomness. Nothing here uses global random state. Every random choice (the
90/10 split, an epoch's shuffle, a batch's crops, a text window) comes from a
generator seeded by a purpose name and integers such as (seed, epoch, step),
so any batch can be recomputed on its own and the result does not depend on
the device or on how many worker processes decode images.
"""

from __future__ import annotations

import inspect
import os
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np
import torch

from rotsweep import usercode
from rotsweep.errors import UserError

DATASET_NAMES = (
    "cifar10",
    "cifar100",
    "imagenet",
    "openwebtext",
    "wikitext",
    "synthetic-images",
    "synthetic-text",
)

DATA_DIR_ENV = "ROTSWEEP_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/rotsweep/data")


class Dataset(Protocol):
    """What the training loop may rely on, for every data set."""

    kind: str  # "image" or "text"
    num_classes: int | None  # image sets; None for text
    vocab_size: int | None  # text sets; None for images
    train_size: int  # training images, or training tokens
    eval_splits: tuple[str, ...]  # the names eval_batches accepts, e.g. ("val", "test")

    def train_batches(self, batch_size: int, *, seed: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Infinite; batch k depends only on (seed, k), so start_step=k resumes exactly."""
        ...

    def eval_batches(self, batch_size: int, *, split: str = "val", max_batches: int | None = None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """Finite and the same on every call; no augmentation."""
        ...

    def steps_per_epoch(self, batch_size: int) -> int: ...


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_split: bool = False,
    device: str | torch.device = "cpu",
    block_size: int | None = None,
    **options,
) -> Dataset:
    """Open data set `name` (one of DATASET_NAMES).

    seed fixes the data set itself: the 90/10 split, the synthetic task and the
    evaluation windows of text sets. The order of training batches and their
    augmentation are seeded separately, by `train_batches(seed=...)`.

    val_split holds out 10% of the training images as "val" (CIFAR, ImageNet);
    the other sets always have a separate validation set, so it changes nothing
    there. block_size is the window length of text sets (ignored by image sets;
    None takes the paper's value for the set). options are set-specific
    (ImageNet: num_workers, image_size; synthetic sets: sizes) and an unknown
    one is an error.
    """
    check_dataset(name, options)
    device = torch.device(device)
    return _loader(name)(
        name,
        data_root(data_dir),
        seed=seed,
        val_split=val_split,
        device=device,
        block_size=block_size,
        **options,
    )


def _loader(name: str):
    # Local imports: the modules import the helpers below from this package,
    # and opening CIFAR should not import Pillow.
    if name in ("cifar10", "cifar100"):
        from rotsweep.data.cifar import load_cifar as loader
    elif name == "imagenet":
        from rotsweep.data.imagenet import load_imagenet as loader
    elif name in ("openwebtext", "wikitext"):
        from rotsweep.data.tokens import load_token_files as loader
    elif name == "synthetic-images":
        from rotsweep.data.synthetic import load_synthetic_images as loader
    else:
        from rotsweep.data.synthetic import load_synthetic_text as loader
    return loader


def dataset_for_run(config, *, data_dir: str | os.PathLike | None = None,
                    device: str | torch.device = "cpu") -> Dataset:
    """The data set of a run (a RunConfig): a built-in by name, or the user's builder (rotsweep.usercode).

    Its own seed is data_seed, else seed. A user builder is called as
    build(config, seed=..., data_dir=<the data root>, device=...) and must return an
    object with the Dataset contract above.
    """
    seed = config.seed if config.data_seed is None else config.data_seed
    if not usercode.is_import_path(config.dataset):
        return load_dataset(config.dataset, data_dir=data_dir, seed=seed, val_split=config.val_split,
                            device=device, block_size=config.block_size, **config.dataset_options)
    data = usercode.call_builder(config.dataset, "dataset", config, seed=seed, data_dir=data_root(data_dir),
                                 device=torch.device(device))
    problem = _contract_problem(data)
    if problem:
        raise UserError(f"dataset builder {config.dataset!r} returned a {type(data).__name__} that {problem}; "
                        "return an object with the rotsweep.data.Dataset contract (see the README)")
    return data


def _contract_problem(data) -> str | None:
    """What `data` lacks of the Dataset contract (None if nothing): the part checkable without batches."""
    if getattr(data, "kind", None) not in ("image", "text"):
        return "has no kind \"image\" or \"text\""
    sizes = {"num_classes": getattr(data, "num_classes", "missing"), "vocab_size": getattr(data, "vocab_size", "missing")}
    needed = "num_classes" if data.kind == "image" else "vocab_size"
    if isinstance(sizes[needed], bool) or not isinstance(sizes[needed], int) or sizes[needed] < 1:
        return f"has no positive integer {needed} (a {data.kind} set needs it)"
    train_size = getattr(data, "train_size", None)
    if isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1:
        return "has no positive integer train_size"
    splits = getattr(data, "eval_splits", None)
    if not isinstance(splits, (tuple, list)) or not splits or not all(isinstance(s, str) for s in splits):
        return "has no eval_splits (a tuple of split names such as (\"val\",))"
    for method in ("train_batches", "eval_batches", "steps_per_epoch"):
        if not callable(getattr(data, method, None)):
            return f"has no method {method}"
    return None


def check_dataset(name: str, options: dict) -> None:
    """The checks of load_dataset that need no data: the name, the options and their types.

    A user builder ("package.module:function", rotsweep.usercode) is imported; its
    options are its own to check.
    """
    if usercode.is_import_path(name):
        usercode.import_builder(name, "dataset")
        return
    if name not in DATASET_NAMES:
        raise UserError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    _check_options(name, _loader(name), options)


def require_dataset(name: str, *, data_dir: str | os.PathLike | None = None) -> None:
    """Check that a data set's files are where load_dataset looks, without reading them.

    The launcher calls this before submitting paper-scale runs, so a missing data
    set is one line on the submitting machine, not a failed job on every node.
    A user builder's files are its own business (it is tried by usercode.try_builders).
    """
    if usercode.is_import_path(name):
        return
    if name not in DATASET_NAMES:
        raise UserError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    root = data_root(data_dir)
    if name in ("cifar10", "cifar100"):
        from rotsweep.data.cifar import require_cifar

        require_cifar(name, root)
    elif name == "imagenet":
        from rotsweep.data.imagenet import require_imagenet

        require_imagenet(name, root)
    elif name in ("openwebtext", "wikitext"):
        from rotsweep.data.tokens import require_token_files

        require_token_files(name, root)


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding all data sets: argument, else $ROTSWEEP_DATA_DIR, else ~/.cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return DEFAULT_DATA_DIR.expanduser()


def _check_options(name: str, loader, options: dict) -> None:
    # A loader's set-specific options are its keyword-only parameters beyond
    # the common ones, so its signature is the one list of what it accepts.
    common = {"seed", "val_split", "device", "block_size"}
    allowed = [
        p.name
        for p in inspect.signature(loader).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in common
    ]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        known = ", ".join(allowed) if allowed else "none"
        raise UserError(f"unknown option(s) {', '.join(unknown)} for data set {name!r}; its options are: {known}")
    for option, value in options.items():
        default = inspect.signature(loader).parameters[option].default
        if not _like_default(value, default):
            expected = "an integer or null" if default is None else type(default).__name__
            raise UserError(f"data set {name!r}: option {option}={value!r} is invalid, expected {expected}")


def _like_default(value, default) -> bool:
    """A set-specific option takes the type of its default (None: an optional count)."""
    if isinstance(value, bool) or isinstance(default, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if default is None:
        return value is None or isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


# ----------------------------------------------------------------------------
# Helpers shared by the data set modules.


def seed_sequence(purpose: str, *keys: int) -> np.random.SeedSequence:
    """Independent, reproducible randomness for (purpose, keys), e.g. ("shuffle", seed, epoch)."""
    return np.random.SeedSequence([zlib.crc32(purpose.encode()), *keys])


def seeded_generator(purpose: str, *keys: int) -> torch.Generator:
    """A CPU torch.Generator for (purpose, keys); CPU so results do not depend on the device."""
    state = seed_sequence(purpose, *keys).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def epochs_from(start_step: int, steps_per_epoch: int) -> Iterator[tuple[int, int]]:
    """(epoch, first batch within it) for epochs start_step//steps_per_epoch, +1, +2, ..."""
    epoch, first = divmod(start_step, steps_per_epoch)
    while True:
        yield epoch, first
        epoch, first = epoch + 1, 0


def check_batch_size(batch_size: int, train_size: int, unit: str) -> int:
    """Steps per epoch with the last partial batch dropped; a batch larger than the set is an error."""
    if batch_size < 1 or batch_size > train_size:
        raise UserError(f"batch size {batch_size} must be between 1 and the training set size ({train_size} {unit})")
    return train_size // batch_size


def check_eval_split(split: str, eval_splits: tuple[str, ...], name: str) -> None:
    if split not in eval_splits:
        raise UserError(f"{name} has no evaluation split {split!r}; it has: {', '.join(eval_splits)}")
