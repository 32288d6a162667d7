"""Synthetic data sets for tiny-scale runs: learnable, generated in memory, fixed by a seed.

A tiny run should show the same phenomena as a paper run in a minute on a
CPU, so its data must have something to learn: a loss curve on random labels
only measures memorisation. Both sets are a known function of the seed.

synthetic-images. Smooth random colour images (Gaussian noise on a coarse
grid, upsampled, plus fine noise, squashed into 0..255) labelled by a fixed
random teacher: average-pool the image to a 4×4 grid, apply a random
two-layer ReLU network, take the argmax. The teacher's logits are
standardised per class over the generated images first, which keeps every
class between about 0.6 and 1.3 times its fair share. A CNN (or even
logistic regression on the pixels) fits the labels well above chance within
a few hundred steps, and they are not trivially separable. There is no
augmentation by default: the teacher looks at where colour sits in the
image, so a flip or shift may change the label.

synthetic-text. Token sequences from a fixed random Markov chain: from each
token the next is one of `branching` successors, drawn with random
probabilities. Its entropy rate is at most log(branching) (1.4 nats for 4)
against log(vocab_size) (4.9 nats for 128) for guessing, so a tiny GPT's
loss has a long way to fall and a known floor, `markov_entropy_rate`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rotsweep.data import seed_sequence, seeded_generator
from rotsweep.data.cifar import ImageTensorDataset
from rotsweep.data.tokens import TokenDataset
from rotsweep.errors import UserError

TEACHER_GRID = 4  # the teacher sees the image average-pooled to TEACHER_GRID × TEACHER_GRID
TEACHER_WIDTH = 64


def load_synthetic_images(
    name: str,
    root: Path,
    *,
    seed: int,
    val_split: bool,
    device: torch.device,
    block_size=None,
    num_train: int = 4096,
    num_val: int = 1024,
    num_test: int = 1024,
    image_size: int = 32,
    num_classes: int = 10,
    augment: bool = False,
) -> ImageTensorDataset:
    if image_size % TEACHER_GRID or image_size < 2 * TEACHER_GRID:
        raise UserError(f"synthetic image_size must be a multiple of {TEACHER_GRID} and at least {2 * TEACHER_GRID} (got {image_size})")
    sizes = {"train": num_train, "val": num_val, "test": num_test}
    images, labels = make_teacher_images(sum(sizes.values()), image_size=image_size, num_classes=num_classes, seed=seed)
    parts, start = {}, 0
    for split, n in sizes.items():
        parts[split] = (images[start : start + n], labels[start : start + n])
        start += n
    # Normalise with the training set's own channel statistics.
    pixels = parts["train"][0].float().div(255)
    return ImageTensorDataset(
        name,
        parts["train"],
        {"val": parts["val"], "test": parts["test"]},
        num_classes=num_classes,
        mean=tuple(pixels.mean((0, 2, 3)).tolist()),
        std=tuple(pixels.std((0, 2, 3)).tolist()),
        augment=augment,
        device=device,
    )


def make_teacher_images(n: int, *, image_size: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n uint8 images (n, 3, S, S) and their teacher labels (n,) int64."""
    g = seeded_generator("synthetic images", seed)
    coarse = torch.randn(n, 3, image_size // 4, image_size // 4, generator=g)
    smooth = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    fine = torch.randn(n, 3, image_size, image_size, generator=g)
    # In place: these tensors are large and allocating each step costs more than computing it.
    images = smooth.add_(fine, alpha=0.25).mul_(1.5).sigmoid_().mul_(255).round_().to(torch.uint8)

    # The teacher: a random two-layer ReLU network on the pooled image.
    inputs = 3 * TEACHER_GRID**2
    w1 = torch.randn(TEACHER_WIDTH, inputs, generator=g) / math.sqrt(inputs)
    b1 = 0.5 * torch.randn(TEACHER_WIDTH, generator=g)
    w2 = torch.randn(num_classes, TEACHER_WIDTH, generator=g) / math.sqrt(TEACHER_WIDTH)
    pooled = F.avg_pool2d(images.float(), image_size // TEACHER_GRID).flatten(1).div(255).sub(0.5).mul(4)
    logits = F.relu(pooled @ w1.T + b1) @ w2.T
    # A random network favours a few classes; standardising each logit over
    # the data set gives every class a comparable share.
    logits = (logits - logits.mean(0)) / logits.std(0)
    return images, logits.argmax(1)


def load_synthetic_text(
    name: str,
    root: Path,
    *,
    seed: int,
    val_split: bool,
    device: torch.device,
    block_size: int | None = None,
    vocab_size: int = 128,
    branching: int = 4,
    num_train_tokens: int = 1 << 20,
    num_eval_tokens: int = 1 << 16,
) -> TokenDataset:
    """Markov-chain text; val and test have num_eval_tokens each. block_size defaults to 64."""
    if not 2 <= vocab_size <= 1 << 16:
        raise UserError(f"synthetic text vocab_size must be between 2 and 65536 (tokens are uint16; got {vocab_size})")
    if not 1 <= branching <= vocab_size:
        raise UserError(f"synthetic text branching must be between 1 and vocab_size={vocab_size} (got {branching})")
    successors, probabilities = markov_chain(vocab_size, branching, seed=seed)
    tokens = {
        split: sample_markov_chain(successors, probabilities, n, seed=seed, stream=i)
        for i, (split, n) in enumerate([("train", num_train_tokens), ("val", num_eval_tokens), ("test", num_eval_tokens)])
    }
    return TokenDataset(name, tokens, vocab_size=vocab_size, block_size=block_size or 64, seed=seed, device=device)


def markov_chain(vocab_size: int, branching: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """successors (V, branching) token ids and their probabilities (V, branching), rows summing to 1."""
    rng = np.random.default_rng(seed_sequence("markov chain", seed))
    successors = np.stack([rng.choice(vocab_size, size=branching, replace=False) for _ in range(vocab_size)])
    probabilities = rng.dirichlet(np.ones(branching), size=vocab_size)
    return successors, probabilities


def sample_markov_chain(successors: np.ndarray, probabilities: np.ndarray, num_tokens: int, *, seed: int, stream: int, num_chains: int = 256) -> np.ndarray:
    """num_tokens uint16 tokens: num_chains independent runs of the chain, laid end to end.

    Running the chains side by side keeps the Python loop to
    num_tokens / num_chains steps; the joins add one unlikely transition per
    run, a negligible blur of the statistics.
    """
    rng = np.random.default_rng(seed_sequence("markov text", seed, stream))
    vocab_size, _ = successors.shape
    length = -(-num_tokens // num_chains)  # ceil
    cumulative = probabilities.cumsum(1)
    runs = np.empty((num_chains, length), dtype=np.uint16)
    state = rng.integers(0, vocab_size, num_chains)
    for t in range(length):
        runs[:, t] = state
        # Inverse-CDF sampling: the chosen successor is the first whose cumulative probability exceeds u.
        u = rng.random(num_chains)[:, None]
        choice = np.minimum((u > cumulative[state]).sum(1), successors.shape[1] - 1)
        state = successors[state, choice]
    return runs.reshape(-1)[:num_tokens]


def markov_entropy_rate(successors: np.ndarray, probabilities: np.ndarray) -> float:
    """Entropy of the next token given the current one, under the stationary distribution, in nats."""
    vocab_size = len(successors)
    transition = np.zeros((vocab_size, vocab_size))
    np.put_along_axis(transition, successors, probabilities, axis=1)
    # The long-run share of each token for chains started uniformly at random,
    # as sample_markov_chain starts them; averaging the iterates makes this
    # converge even if the chain is periodic.
    share = np.full(vocab_size, 1 / vocab_size)
    stationary = np.zeros(vocab_size)
    for _ in range(1000):
        share = share @ transition
        stationary += share / 1000
    row_entropy = -(probabilities * np.log(np.where(probabilities > 0, probabilities, 1))).sum(1)
    return float(stationary @ row_entropy)
