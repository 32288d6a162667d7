"""Token streams in nanoGPT's format, and `prepare_text` that makes them.

A data set is a directory with train.bin and val.bin (and test.bin for
Wikitext): flat arrays of uint16 token ids, GPT-2 BPE unless a meta.json
beside them says otherwise. This is the format of nanoGPT's
data/openwebtext/prepare.py and of llm_baselines' Wikitext-103 (the paper's
OpenWebText and Wikitext recipes in epfml/REQ), so files made by either can
be used as they are. The files are memory-mapped, never read whole.

A training batch is `batch_size` windows of block_size + 1 tokens at random
offsets (with replacement, as nanoGPT samples them): x is the first
block_size tokens and y the same window shifted by one. Evaluation cuts the
split into consecutive non-overlapping windows and visits them in an order
fixed by the data set's seed, so the first k batches are a fixed random
sample (the paper's "24 random batches") and all of them cover the split.
"""

from __future__ import annotations

import json
import os
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from rotsweep.data import check_eval_split, seeded_generator
from rotsweep.errors import UserError
from rotsweep.store import atomic_path, write_json

GPT2_VOCAB_SIZE = 50257  # tiktoken "gpt2": 50,256 BPE merges + <|endoftext|>

# Window lengths of the paper's recipes, used when the caller gives none.
DEFAULT_BLOCK_SIZE = {"openwebtext": 1024, "wikitext": 512}

_HOW_TO_MAKE = {
    "openwebtext": "make them with nanoGPT's data/openwebtext/prepare.py or `rotsweep prepare-text TEXT_DIR --out DIR/openwebtext`",
    "wikitext": "make them from wikitext-103-raw with `rotsweep prepare-text wiki.train.raw --val-file wiki.valid.raw --test-file wiki.test.raw --out DIR/wikitext`",
}


def require_token_files(name: str, root: Path) -> None:
    """A one-line UserError unless root/name holds train.bin and val.bin."""
    folder = root / name
    if not ((folder / "train.bin").is_file() and (folder / "val.bin").is_file()):
        raise UserError(
            f"{name} not found: expected {folder}/train.bin and val.bin (uint16 GPT-2 tokens); "
            f"{_HOW_TO_MAKE[name]} and set --data-dir or $ROTSWEEP_DATA_DIR to the directory holding {name}/"
        )


def load_token_files(name: str, root: Path, *, seed: int, val_split: bool, device: torch.device, block_size: int | None = None) -> "TokenDataset":
    require_token_files(name, root)
    folder = root / name
    splits = {split: folder / f"{split}.bin" for split in ("train", "val", "test")}
    if name != "wikitext" or not splits["test"].is_file():
        del splits["test"]
    meta = folder / "meta.json"
    vocab_size = json.loads(meta.read_text())["vocab_size"] if meta.is_file() else GPT2_VOCAB_SIZE
    arrays = {split: _memmap(path) for split, path in splits.items()}
    block_size = block_size or DEFAULT_BLOCK_SIZE[name]
    return TokenDataset(name, arrays, vocab_size=vocab_size, block_size=block_size, seed=seed, device=device)


def _memmap(path: Path) -> np.ndarray:
    if path.stat().st_size % 2:
        raise UserError(f"{path} has an odd number of bytes, so it is not an array of uint16 tokens; make it again")
    return np.memmap(path, dtype=np.uint16, mode="r")


class TokenDataset:
    """Random windows of a token stream (files on disk or arrays in memory)."""

    kind = "text"
    num_classes = None

    def __init__(self, name: str, tokens: dict[str, np.ndarray], *, vocab_size: int, block_size: int, seed: int, device: torch.device):
        for split, array in tokens.items():
            if len(array) < block_size + 1:
                raise UserError(f"{name} {split} has {len(array)} tokens, fewer than one window of block_size + 1 = {block_size + 1}")
        self.name = name
        self.tokens = tokens
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.seed = seed
        self.device = device
        self.train_size = len(tokens["train"])
        self.eval_splits = tuple(split for split in tokens if split != "train")

    def steps_per_epoch(self, batch_size: int) -> int:
        """Batches that together hold as many tokens as the training split (at least 1)."""
        return max(1, self.train_size // (batch_size * self.block_size))

    def train_batches(self, batch_size: int, *, seed: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        last_start = self.train_size - (self.block_size + 1)
        step = start_step
        while True:
            starts = torch.randint(0, last_start + 1, (batch_size,), generator=seeded_generator("windows", seed, step))
            yield self._windows(self.tokens["train"], starts.numpy())
            step += 1

    def eval_batches(self, batch_size: int, *, split: str = "val", max_batches: int | None = None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        check_eval_split(split, self.eval_splits, self.name)
        tokens = self.tokens[split]
        num_windows = (len(tokens) - 1) // self.block_size
        order = torch.randperm(num_windows, generator=seeded_generator(f"{split} windows", self.seed))
        starts = (order * self.block_size).numpy()
        for first in range(0, num_windows, batch_size)[:max_batches]:
            yield self._windows(tokens, starts[first : first + batch_size])

    def _windows(self, tokens: np.ndarray, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # One fancy index reads every window: rows are windows, columns offsets.
        windows = tokens[starts[:, None] + np.arange(self.block_size + 1)]
        windows = torch.from_numpy(windows.astype(np.int64))
        x, y = windows[:, :-1], windows[:, 1:]
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)


# ----------------------------------------------------------------------------
# Making train.bin / val.bin from text files.

# Characters per piece handed to the tokenizer: big enough to keep it busy,
# small enough that the token list of one batch of pieces fits in memory.
_PIECE_CHARS = 1 << 20
_PIECES_PER_BATCH = 16


def prepare_text(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.0005,
    val_files: Sequence[str | os.PathLike] = (),
    test_files: Sequence[str | os.PathLike] = (),
    encoding="gpt2",
) -> dict[str, int]:
    """Tokenise text files into out_dir/train.bin, val.bin [, test.bin] and meta.json.

    inputs are text files or directories (every file below them, in sorted
    order); each file is one document, followed by <|endoftext|> as nanoGPT
    does. The validation set is val_files if given, else the last
    val_fraction of the training tokens (nanoGPT holds out 0.0005 of the
    documents). encoding is a tiktoken encoding name or a tiktoken.Encoding;
    ids must fit in uint16. Returns the number of tokens in each file.
    """
    enc = _get_encoding(encoding)
    if enc.n_vocab > 1 << 16:
        raise UserError(f"encoding {enc.name} has {enc.n_vocab} tokens, too many for uint16 files; use one with at most 65536")
    if not val_files and not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must be between 0 and 1 (got {val_fraction}), or give validation files")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = {"train": _expand(inputs), "val": _expand(val_files), "test": _expand(test_files)}
    counts = {}
    with atomic_path(out_dir / "train.bin") as train_tmp:
        counts["train"] = _write_tokens(enc, sources["train"], train_tmp)
        if not sources["val"]:
            # Carve the validation tokens off the end of the training stream.
            n_val = max(1, int(counts["train"] * val_fraction))
            if n_val >= counts["train"]:
                raise UserError(f"the input holds only {counts['train']} tokens, too few to hold out a validation set")
            tail = np.fromfile(train_tmp, dtype=np.uint16, offset=2 * (counts["train"] - n_val))
            with atomic_path(out_dir / "val.bin") as val_tmp:
                tail.tofile(val_tmp)
            os.truncate(train_tmp, 2 * (counts["train"] - n_val))
            counts["train"] -= n_val
            counts["val"] = n_val
    for split in ("val", "test"):
        if sources[split]:
            with atomic_path(out_dir / f"{split}.bin") as tmp:
                counts[split] = _write_tokens(enc, sources[split], tmp)
    write_json(out_dir / "meta.json", {"encoding": enc.name, "vocab_size": enc.n_vocab, "tokens": counts})
    return counts


def _get_encoding(encoding):
    try:
        import tiktoken
    except ImportError:
        raise UserError("prepare-text needs tiktoken: pip install 'rotsweep[text]'") from None
    if isinstance(encoding, tiktoken.Encoding):
        return encoding
    try:
        return tiktoken.get_encoding(encoding)
    except ValueError as err:
        raise UserError(f"unknown tiktoken encoding {encoding!r} ({err})") from None
    except Exception as err:  # tiktoken downloads the BPE file on first use
        raise UserError(
            f"could not load tiktoken encoding {encoding!r} ({type(err).__name__}); it is downloaded on first use, "
            "so run once with network access or set TIKTOKEN_CACHE_DIR to a directory holding the cached file"
        ) from None


def _expand(paths) -> list[Path]:
    """Files named, and every non-hidden file below directories named, in a stable order."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"text input {path} does not exist")
    return files


def _write_tokens(enc, files: list[Path], out: Path) -> int:
    """Write the tokens of `files` to `out`, one document after another; returns how many."""
    eot = [enc.eot_token] if "<|endoftext|>" in enc.special_tokens_set else []
    written = 0
    with open(out, "wb") as f:
        for path in files:
            pieces = _pieces(path)
            while batch := list(islice(pieces, _PIECES_PER_BATCH)):
                # encode_ordinary reads "<|endoftext|>" inside the text as plain text, as nanoGPT does.
                for ids in enc.encode_ordinary_batch(batch):
                    written += _append(f, ids)
            written += _append(f, eot)
    return written


def _append(f, ids: list[int]) -> int:
    np.asarray(ids, dtype=np.uint16).tofile(f)
    return len(ids)


def _pieces(path: Path, piece_chars: int = _PIECE_CHARS) -> Iterator[str]:
    """The text of `path`, verbatim, in pieces that tokenise exactly as the whole text does.

    A piece ends with a line "...X\n" and the next starts with a non-space
    character Y. GPT-2's pre-tokeniser splits "X\nY" into X | "\n" | Y both
    inside one text and across the cut: no pre-token joins a newline to a
    following non-space character, and a lone newline between non-spaces is a
    token of its own. (A cut after "\n\n" would not be exact: at the end of a
    text the run becomes the single token "\n\n".)
    """
    piece: list[str] = []
    size = 0
    try:
        # newline="" keeps "\r\n" as it is in the file instead of translating it.
        with open(path, encoding="utf-8", newline="") as f:
            for line in f:
                if size >= piece_chars and _is_token_boundary(piece[-1], line):
                    yield "".join(piece)
                    piece, size = [], 0
                piece.append(line)
                size += len(line)
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); convert it or leave it out") from None
    if piece:
        yield "".join(piece)


def _is_token_boundary(line: str, next_line: str) -> bool:
    return len(line) >= 2 and line[-1] == "\n" and not line[-2].isspace() and not next_line[:1].isspace()
