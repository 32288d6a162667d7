"""rotsweep.data: every format read from small files written here in the real layout."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rotsweep.data import DATASET_NAMES, data_root, load_dataset
from rotsweep.data.cifar import CIFAR10_MEAN, CIFAR10_STD, crop_and_flip, random_crop_flip
from rotsweep.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, random_resized_crop_box
from rotsweep.data.synthetic import markov_chain, markov_entropy_rate
from rotsweep.data.tokens import _pieces, prepare_text
from rotsweep.errors import UserError



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny, and on a busy shared machine OpenMP threads that
    spin-wait for each other make every torch op milliseconds slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------
# Fixtures in the real on-disk formats.


def _pickle_batch(path, images: np.ndarray, labels: list[int], label_key: str, **extra) -> None:
    """One batch as in the CIFAR python archives: a dict with (N, 3072) uint8 'data'."""
    batch = {"batch_label": path.name, label_key: labels, "data": images.reshape(len(images), -1), "filenames": [f"img_{i}.png" for i in range(len(images))], **extra}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


@pytest.fixture
def cifar10_root(tmp_path):
    """100 training images in data_batch_1..5 (20 each) and 20 test images."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images = rng.integers(0, 256, (120, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 120).tolist()
    for i in range(5):
        _pickle_batch(folder / f"data_batch_{i + 1}", images[20 * i : 20 * i + 20], labels[20 * i : 20 * i + 20], "labels")
    _pickle_batch(folder / "test_batch", images[100:], labels[100:], "labels")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": 20, "num_vis": 3072}, f, protocol=2)
    return tmp_path, images, np.array(labels)


@pytest.fixture
def cifar100_root(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    images = rng.integers(0, 256, (60, 3, 32, 32), dtype=np.uint8)
    fine = rng.integers(0, 100, 60).tolist()
    coarse = [label // 5 for label in fine]
    _pickle_batch(folder / "train", images[:50], fine[:50], "fine_labels", coarse_labels=coarse[:50])
    _pickle_batch(folder / "test", images[50:], fine[50:], "fine_labels", coarse_labels=coarse[50:])
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}, f, protocol=2)
    return tmp_path, images, np.array(fine)


COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


@pytest.fixture
def imagenet_root(tmp_path):
    """3 classes; 4 train and 2 val JPEGs each, of mixed sizes; each class a solid colour."""
    from PIL import Image

    sizes = [(40, 30), (30, 50), (64, 64), (100, 20)]
    for label, colour in enumerate(COLOURS):
        wnid = f"n0000000{label}"
        for split, count in (("train", 4), ("val", 2)):
            folder = tmp_path / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", sizes[i], colour).save(folder / f"{wnid}_{i}.JPEG", "JPEG", quality=95)
    return tmp_path


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ----------------------------------------------------------------------------
# CIFAR


def test_cifar10_reads_images_and_labels_exactly(cifar10_root):
    root, images, labels = cifar10_root
    ds = load_dataset("cifar10", data_dir=root)
    assert (ds.kind, ds.num_classes, ds.vocab_size, ds.train_size) == ("image", 10, None, 100)
    assert torch.equal(ds.train_images, torch.from_numpy(images[:100]))
    assert torch.equal(ds.train_labels, torch.from_numpy(labels[:100]))
    # Without a split the test set is evaluated during training, normalised with the paper's constants.
    (x, y), *rest = list(ds.eval_batches(32, split="test"))
    assert rest == [] and x.dtype == torch.float32 and x.shape == (20, 3, 32, 32)
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    expected = (torch.from_numpy(images[100:]).float() / 255 - mean) / std
    torch.testing.assert_close(x, expected)
    assert torch.equal(y, torch.from_numpy(labels[100:]))
    _assert_same_batches(list(ds.eval_batches(32, split="val")), list(ds.eval_batches(32, split="test")))


def test_cifar100_reads_fine_labels(cifar100_root):
    root, images, fine = cifar100_root
    ds = load_dataset("cifar100", data_dir=root)
    assert (ds.num_classes, ds.train_size) == (100, 50)
    assert torch.equal(ds.train_images, torch.from_numpy(images[:50]))
    assert torch.equal(ds.train_labels, torch.from_numpy(fine[:50]))
    test_labels = torch.cat([y for _, y in ds.eval_batches(7, split="test")])
    assert torch.equal(test_labels, torch.from_numpy(fine[50:]))


def test_val_split_is_disjoint_seeded_and_matches_torch_random_split(cifar10_root):
    root, images, _ = cifar10_root
    all_images = torch.from_numpy(images[:100]).flatten(1)

    def split_indices(seed):
        ds = load_dataset("cifar10", data_dir=root, seed=seed, val_split=True)
        assert sum(len(y) for _, y in ds.eval_batches(16, split="val")) == 10 and ds.train_size == 90
        # Each image (random bytes, so unique) found by exact comparison.
        where = lambda part: sorted(int((all_images == img.flatten()).all(1).nonzero()) for img in part)
        return where(ds.train_images), where(ds.eval_sets["val"][0])

    train, val = split_indices(0)
    assert not set(train) & set(val) and sorted(train + val) == list(range(100))
    subsets = torch.utils.data.random_split(range(100), [0.9, 0.1], generator=torch.Generator().manual_seed(0))
    assert (train, val) == (sorted(subsets[0].indices), sorted(subsets[1].indices))
    assert split_indices(0) == (train, val)
    assert split_indices(1)[1] != val


def test_cifar_missing_files_give_one_line_errors(tmp_path, cifar10_root):
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", data_dir=tmp_path / "nowhere")
    message = str(err.value)
    assert "\n" not in message
    assert "CIFAR-10 not found" in message and "cifar-10-batches-py/data_batch_1..5 and test_batch" in message
    assert str(tmp_path / "nowhere") in message and "ROTSWEEP_DATA_DIR" in message
    with pytest.raises(UserError, match=r"CIFAR-100 not found: expected .*cifar-100-python/train and test"):
        load_dataset("cifar100", data_dir=tmp_path / "nowhere")
    root, _, _ = cifar10_root
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UserError, match="CIFAR-10 not found"):
        load_dataset("cifar10", data_dir=root)


def test_corrupt_cifar_batch_is_a_user_error(cifar10_root):
    root, _, _ = cifar10_root
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="test_batch is not a CIFAR python batch"):
        load_dataset("cifar10", data_dir=root)


# ----------------------------------------------------------------------------
# Augmentation


def test_crop_and_flip_geometry():
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    n = len(images)
    centre = torch.full((n,), 4)
    no, yes = torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)
    assert torch.equal(crop_and_flip(images, centre, centre, no, padding=4), images)
    assert torch.equal(crop_and_flip(images, centre, centre, yes, padding=4), images.flip(-1))
    # Offset (0, 0): the image moves 4 pixels down and right, zeros come in at the top and left.
    shifted = crop_and_flip(images, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), no, padding=4)
    assert torch.equal(shifted[:, :, 4:, 4:], images[:, :, :4, :4])
    assert (shifted[:, :, :4, :] == 0).all() and (shifted[:, :, :, :4] == 0).all()


def test_random_crop_flip_gives_a_padded_crop_of_each_image():
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = F.pad(images, (4, 4, 4, 4))
    seen = set()
    for i in range(len(images)):
        matches = [
            (top, left, flip)
            for top in range(9)
            for left in range(9)
            for flip in (False, True)
            if torch.equal(out[i], (lambda c: c.flip(-1) if flip else c)(padded[i, :, top : top + 32, left : left + 32]))
        ]
        assert len(matches) == 1  # pixels are never 0, so the crop is identified uniquely
        seen.add(matches[0])
    assert len({flip for _, _, flip in seen}) == 2 and len({(t, l) for t, l, _ in seen}) > 20


# ----------------------------------------------------------------------------
# Training batches: determinism, epochs and exact resume (on the tensor sets)


def test_train_batches_are_deterministic_and_resume_exactly(cifar10_root):
    root, _, _ = cifar10_root
    ds = load_dataset("cifar10", data_dir=root)
    assert ds.steps_per_epoch(32) == 3  # 100 // 32: the last partial batch is dropped
    full = _take(ds.train_batches(32, seed=5), 8)
    _assert_same_batches(full, _take(ds.train_batches(32, seed=5), 8))
    # Resuming at step 4 (mid-epoch 1) gives batches 4..7 without generating 0..3.
    _assert_same_batches(full[4:], _take(ds.train_batches(32, seed=5, start_step=4), 4))
    other = next(ds.train_batches(32, seed=6))
    assert not torch.equal(other[0], full[0][0])
    x, y = full[0]
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_each_epoch_is_a_fresh_permutation():
    ds = load_dataset("synthetic-images", num_train=96, num_val=8, num_test=8, image_size=8)
    batches = _take(ds.train_batches(32, seed=0), 6)  # two epochs of 3 batches, no augmentation
    flat = ds.normalize(ds.train_images).flatten(1)
    orders = []
    for epoch in (batches[:3], batches[3:]):
        x = torch.cat([b[0] for b in epoch]).flatten(1)
        order = [int((flat == row).all(1).nonzero()[0]) for row in x]
        assert sorted(order) == list(range(96))
        orders.append(order)
    assert orders[0] != orders[1]


def test_bad_batch_size_and_split_are_user_errors(cifar10_root):
    root, _, _ = cifar10_root
    ds = load_dataset("cifar10", data_dir=root)
    with pytest.raises(UserError, match="batch size 101"):
        ds.steps_per_epoch(101)
    with pytest.raises(UserError, match="no evaluation split 'train'"):
        list(ds.eval_batches(8, split="train"))


def test_eval_batches_cover_the_split_and_stop_at_max_batches(cifar10_root):
    root, images, _ = cifar10_root
    ds = load_dataset("cifar10", data_dir=root)
    batches = list(ds.eval_batches(8, split="test"))
    assert [len(y) for _, y in batches] == [8, 8, 4]
    assert len(list(ds.eval_batches(8, split="test", max_batches=2))) == 2
    _assert_same_batches(batches, list(ds.eval_batches(8, split="test")))


# ----------------------------------------------------------------------------
# ImageNet


def test_imagenet_folder_train_and_eval(imagenet_root):
    ds = load_dataset("imagenet", data_dir=imagenet_root, num_workers=0, image_size=16)
    assert (ds.kind, ds.num_classes, ds.train_size) == ("image", 3, 12)
    x, y = next(ds.train_batches(4, seed=0))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    # Each class is a solid colour, so every crop of it is that colour, normalised.
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for image, label in zip(x, y):
        colour = (torch.tensor(COLOURS[label]).view(3, 1, 1) / 255 - mean) / std
        torch.testing.assert_close(image, colour.expand_as(image), atol=0.1, rtol=0)
    evals = list(ds.eval_batches(4, split="val"))
    assert [len(y) for _, y in evals] == [4, 2]
    assert torch.cat([y for _, y in evals]).tolist() == [0, 0, 1, 1, 2, 2]
    assert evals[0][0].shape == (4, 3, 16, 16)


def test_imagenet_batches_do_not_depend_on_workers_and_resume_exactly(imagenet_root):
    ds0 = load_dataset("imagenet", data_dir=imagenet_root, num_workers=0, image_size=16)
    ds2 = load_dataset("imagenet", data_dir=imagenet_root, num_workers=2, image_size=16)
    assert ds0.steps_per_epoch(5) == 2
    full = _take(ds0.train_batches(5, seed=3), 5)
    _assert_same_batches(full, _take(ds2.train_batches(5, seed=3), 5))
    _assert_same_batches(full[3:], _take(ds0.train_batches(5, seed=3, start_step=3), 2))
    # Every epoch is a permutation of the training labels (4 of each class, 10 of 12 used).
    for epoch in (full[0:2], full[2:4]):
        counts = torch.bincount(torch.cat([y for _, y in epoch]), minlength=3)
        assert counts.sum() == 10 and counts.max() <= 4


def test_imagenet_val_split_and_missing_error(imagenet_root, tmp_path):
    ds = load_dataset("imagenet", data_dir=imagenet_root, val_split=True, num_workers=0, image_size=16)
    assert ds.train_size == 11 and len(ds.eval_sets["val"][0]) == 1
    assert not set(ds.train_paths.tolist()) & set(ds.eval_sets["val"][0].tolist())
    (imagenet_root / "imagenet" / "val" / "n99999999").mkdir()
    with pytest.raises(UserError, match=r"val/ has class folders that train/ lacks \(n99999999"):
        load_dataset("imagenet", data_dir=imagenet_root)
    with pytest.raises(UserError) as err:
        load_dataset("imagenet", data_dir=tmp_path / "none")
    assert "\n" not in str(err.value)
    assert f"ImageNet not found: expected {tmp_path / 'none' / 'imagenet'}/train/<wnid>/*.JPEG and" in str(err.value)


def test_random_resized_crop_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    areas, ratios = [], []
    for _ in range(2000):
        left, top, right, bottom = random_resized_crop_box(300, 200, rng)
        assert 0 <= left < right <= 300 and 0 <= top < bottom <= 200
        w, h = right - left, bottom - top
        areas.append(w * h / (300 * 200))
        ratios.append(w / h)
    # Rounding w and h to pixels moves the share and the ratio a little; a
    # 3:2 image holds at most 266×200 = 0.89 of its area at a ratio of 4/3.
    assert 0.075 <= min(areas) < 0.1 and 0.85 < max(areas) <= 0.89
    assert 0.74 <= min(ratios) < 0.8 and 1.28 < max(ratios) <= 4 / 3 + 0.02
    # A strip too thin for any allowed ratio falls back to the centred 4:3 crop.
    assert random_resized_crop_box(1000, 10, rng) == (493, 0, 506, 10)


# ----------------------------------------------------------------------------
# Token files


def _write_bin(folder, name, tokens):
    folder.mkdir(parents=True, exist_ok=True)
    np.asarray(tokens, dtype=np.uint16).tofile(folder / name)


def test_token_bins_give_shifted_windows(tmp_path):
    stream = np.arange(5000) % 50000
    _write_bin(tmp_path / "openwebtext", "train.bin", stream)
    _write_bin(tmp_path / "openwebtext", "val.bin", stream[:1000] + 7)
    ds = load_dataset("openwebtext", data_dir=tmp_path, block_size=16)
    assert (ds.kind, ds.vocab_size, ds.num_classes, ds.train_size, ds.eval_splits) == ("text", 50257, None, 5000, ("val",))
    x, y = next(ds.train_batches(4, seed=0))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    # Windows of consecutive tokens of the file, and y is x shifted by one.
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(x - x[:, :1], torch.arange(16).expand(4, 16))
    assert ds.steps_per_epoch(4) == 5000 // 64


def test_token_batches_resume_and_eval_windows_are_fixed(tmp_path):
    rng = np.random.default_rng(0)
    _write_bin(tmp_path / "wikitext", "train.bin", rng.integers(0, 50257, 3000))
    _write_bin(tmp_path / "wikitext", "val.bin", rng.integers(0, 50257, 801))
    _write_bin(tmp_path / "wikitext", "test.bin", rng.integers(0, 50257, 500))
    ds = load_dataset("wikitext", data_dir=tmp_path, block_size=8)
    assert ds.eval_splits == ("val", "test")
    full = _take(ds.train_batches(3, seed=1), 6)
    _assert_same_batches(full, _take(ds.train_batches(3, seed=1), 6))
    _assert_same_batches(full[2:], _take(ds.train_batches(3, seed=1, start_step=2), 4))
    evals = list(ds.eval_batches(16, split="val"))
    _assert_same_batches(evals, list(ds.eval_batches(16, split="val")))
    _assert_same_batches(evals[:2], list(ds.eval_batches(16, split="val", max_batches=2)))
    # The eval windows tile val.bin: 100 disjoint windows of 8 (+1 target) tokens, in a shuffled order.
    val = torch.from_numpy(np.fromfile(tmp_path / "wikitext" / "val.bin", dtype=np.uint16).astype(np.int64))
    x = torch.cat([x for x, _ in evals])
    assert len(x) == 100
    tiles = val[:800].view(100, 8)
    assert sorted(int((tiles == row).all(1).nonzero()[0]) for row in x) == list(range(100))
    assert not torch.equal(x, tiles)
    # Seeded: another data-set seed samples other windows first.
    other = load_dataset("wikitext", data_dir=tmp_path, block_size=8, seed=1)
    assert not torch.equal(next(iter(other.eval_batches(16)))[0], evals[0][0])


def test_token_errors(tmp_path):
    with pytest.raises(UserError) as err:
        load_dataset("openwebtext", data_dir=tmp_path)
    assert "\n" not in str(err.value)
    assert f"openwebtext not found: expected {tmp_path}/openwebtext/train.bin and val.bin" in str(err.value)
    with pytest.raises(UserError, match="wikitext not found"):
        load_dataset("wikitext", data_dir=tmp_path)
    _write_bin(tmp_path / "openwebtext", "train.bin", np.arange(100))
    (tmp_path / "openwebtext" / "val.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(UserError, match="odd number of bytes"):
        load_dataset("openwebtext", data_dir=tmp_path)
    _write_bin(tmp_path / "openwebtext", "val.bin", np.arange(10))
    with pytest.raises(UserError, match="fewer than one window"):
        load_dataset("openwebtext", data_dir=tmp_path, block_size=16)


# ----------------------------------------------------------------------------
# prepare_text


def _test_encoding():
    """A real tiktoken Encoding built offline: GPT-2's pre-tokeniser, bytes plus a few merges."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = {bytes([i]): i for i in range(256)}
    for merge in [b"th", b"the", b" t", b" the", b"\n\n", b"  ", b"   ", b" \n", b"  \n", b"in", b"ing"]:
        ranks[merge] = len(ranks)
    return tiktoken.Encoding("test-bytes", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": len(ranks)})


TEXT = "The thing in the theatre.\n\nthe  end  \n then\n   indented\n\n\nThe last thing\nthe end.\r\nthe end\n"


def test_prepare_text_round_trip_and_val_tail(tmp_path):
    enc = _test_encoding()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(TEXT * 20, newline="")
    (docs / "b.txt").write_text("the second thing\n" * 30, newline="")
    (docs / ".hidden").write_text("skipped")
    counts = prepare_text(docs, tmp_path / "out", val_fraction=0.1, encoding=enc)
    train = np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "out" / "val.bin", dtype=np.uint16)
    assert counts == {"train": len(train), "val": len(val)}
    assert len(val) == int(0.1 * (len(train) + len(val)))
    stream = np.concatenate([train, val]).tolist()
    # Documents in sorted order, each followed by <|endoftext|>, tokenised exactly as tiktoken does.
    eot = enc.eot_token
    assert stream == enc.encode_ordinary(TEXT * 20) + [eot] + enc.encode_ordinary("the second thing\n" * 30) + [eot]
    (tmp_path / "out").rename(tmp_path / "wikitext")
    ds = load_dataset("wikitext", data_dir=tmp_path, block_size=8)
    assert ds.vocab_size == enc.n_vocab == 268 and ds.train_size == len(train)


def test_prepare_text_separate_val_and_test_files(tmp_path):
    enc = _test_encoding()
    for name, text in [("train.txt", TEXT * 5), ("valid.txt", "the val\n"), ("test.txt", "the test\n")]:
        (tmp_path / name).write_text(text, newline="")
    counts = prepare_text([tmp_path / "train.txt"], tmp_path / "out", val_files=[tmp_path / "valid.txt"], test_files=[tmp_path / "test.txt"], encoding=enc)
    test = np.fromfile(tmp_path / "out" / "test.bin", dtype=np.uint16).tolist()
    assert test == enc.encode_ordinary("the test\n") + [enc.eot_token] and counts["test"] == len(test)
    assert counts["train"] == len(enc.encode_ordinary(TEXT * 5)) + 1


def test_text_pieces_tokenise_like_the_whole_text(tmp_path):
    enc = _test_encoding()
    path = tmp_path / "t.txt"
    path.write_text(TEXT * 30, newline="")
    whole = enc.encode_ordinary(TEXT * 30)
    for piece_chars in (1, 40):  # 1: cut at every place the rule allows
        pieces = list(_pieces(path, piece_chars=piece_chars))
        assert len(pieces) > 20 and "".join(pieces) == TEXT * 30
        assert sum((enc.encode_ordinary(p) for p in pieces), []) == whole
    # The test text does hold places where a cut would change the tokens:
    assert enc.encode_ordinary("end  \n") + enc.encode_ordinary("The") != enc.encode_ordinary("end  \nThe")
    assert enc.encode_ordinary("x\n\n") + enc.encode_ordinary("The") != enc.encode_ordinary("x\n\nThe")


GPT2_FORMAT_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "gpt2-bpe"


def test_prepare_text_with_a_bpe_in_gpt2_format(tmp_path, monkeypatch):
    """GPT-2's encoding as tiktoken builds it, from a small vocab.bpe + encoder.json in GPT-2's format.

    The real GPT-2 files are downloaded on first use, which this offline machine
    cannot do; the fixture (tests/fixtures/gpt2-bpe/make.py) goes through the
    same loader, tiktoken's data_gym_to_mergeable_bpe_ranks, with GPT-2's
    pre-tokeniser and <|endoftext|> as the last id.
    """
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the files where they are, cache nothing
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(GPT2_FORMAT_FIXTURE / "vocab.bpe"),
                                            encoder_json_file=str(GPT2_FORMAT_FIXTURE / "encoder.json"))
    encoder = json.loads((GPT2_FORMAT_FIXTURE / "encoder.json").read_text(encoding="utf-8"))
    enc = tiktoken.Encoding("gpt2-format-fixture", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": encoder["<|endoftext|>"]})
    assert enc.eot_token == enc.n_vocab - 1 == len(ranks)  # as GPT-2's 50256 of 50257

    (tmp_path / "a.txt").write_text("Hello world, this is text.\n" * 100)
    counts = prepare_text(tmp_path / "a.txt", tmp_path / "openwebtext", val_fraction=0.05, encoding=enc)
    ids = np.concatenate([np.fromfile(tmp_path / "openwebtext" / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    # Each word is one token of encoder.json; "Ġ" is GPT-2's character for a leading space, "Ċ" for "\n".
    line = [encoder[token] for token in ("Hello", "Ġworld", ",", "Ġthis", "Ġis", "Ġtext", ".", "Ċ")]
    assert ids.tolist() == line * 100 + [encoder["<|endoftext|>"]]
    assert counts == {"train": 801 - counts["val"], "val": int(0.05 * 801)}
    meta = json.loads((tmp_path / "openwebtext" / "meta.json").read_text())
    assert meta["vocab_size"] == enc.n_vocab
    assert load_dataset("openwebtext", data_dir=tmp_path, block_size=8).vocab_size == enc.n_vocab


def test_prepare_text_bad_inputs(tmp_path):
    enc = _test_encoding()
    with pytest.raises(UserError, match="does not exist"):
        prepare_text(tmp_path / "missing.txt", tmp_path / "out", encoding=enc)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="is not UTF-8 text"):
        prepare_text(tmp_path / "latin1.txt", tmp_path / "out", encoding=enc)
    (tmp_path / "tiny.txt").write_text("")  # just <|endoftext|>
    with pytest.raises(UserError, match="too few to hold out"):
        prepare_text(tmp_path / "tiny.txt", tmp_path / "out", encoding=enc)
    assert not (tmp_path / "out" / "train.bin").exists()  # nothing half-written is left behind


# ----------------------------------------------------------------------------
# Synthetic sets


def test_synthetic_images_are_seeded_balanced_and_learnable():
    small = dict(num_train=256, num_val=16, num_test=16, image_size=8)
    again, other = load_dataset("synthetic-images", seed=0, **small), load_dataset("synthetic-images", seed=1, **small)
    assert torch.equal(load_dataset("synthetic-images", seed=0, **small).train_images, again.train_images)
    assert not torch.equal(again.train_images, other.train_images)

    ds = load_dataset("synthetic-images", seed=0, image_size=16)
    assert ds.train_images.shape == (4096, 3, 16, 16) and ds.num_classes == 10
    shares = torch.bincount(ds.train_labels, minlength=10) / ds.train_size
    assert shares.min() > 0.05 and shares.max() < 0.2

    # Logistic regression on the pixels, 300 Adam steps: far above the 10% of guessing.
    torch.manual_seed(0)
    model = torch.nn.Linear(3 * 16 * 16, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _, (x, y) in zip(range(300), ds.train_batches(128, seed=0)):
        loss = F.cross_entropy(model(x.flatten(1)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        correct = sum(int((model(x.flatten(1)).argmax(1) == y).sum()) for x, y in ds.eval_batches(256, split="val"))
    assert correct / 1024 > 0.4


def test_synthetic_text_has_low_entropy_and_a_bigram_model_reaches_it():
    ds = load_dataset("synthetic-text", seed=0, block_size=32)
    assert (ds.kind, ds.vocab_size, ds.train_size, ds.eval_splits) == ("text", 128, 1 << 20, ("val", "test"))
    again = load_dataset("synthetic-text", seed=0, block_size=32)
    assert np.array_equal(ds.tokens["train"], again.tokens["train"])
    floor = markov_entropy_rate(*markov_chain(128, 4, seed=0))
    assert floor < 0.35 * math.log(128)
    # Bigram counts from train.bin predict val.bin at the entropy rate: there is something to learn.
    train, val = ds.tokens["train"].astype(np.int64), ds.tokens["val"].astype(np.int64)
    counts = np.ones((128, 128))
    np.add.at(counts, (train[:-1], train[1:]), 1)
    log_p = np.log(counts / counts.sum(1, keepdims=True))
    val_loss = -log_p[val[:-1], val[1:]].mean()
    assert abs(val_loss - floor) < 0.1
    x, y = next(ds.train_batches(8, seed=0))
    assert x.shape == (8, 32) and torch.equal(x[:, 1:], y[:, :-1])


# ----------------------------------------------------------------------------
# load_dataset itself


def test_load_dataset_rejects_unknown_names_and_options(monkeypatch, tmp_path):
    assert set(DATASET_NAMES) == {"cifar10", "cifar100", "imagenet", "openwebtext", "wikitext", "synthetic-images", "synthetic-text"}
    with pytest.raises(UserError, match="unknown data set 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(UserError, match=r"unknown option\(s\) num_workers for data set 'cifar10'; its options are: none"):
        load_dataset("cifar10", num_workers=4)
    with pytest.raises(UserError, match="its options are: num_train, num_val"):
        load_dataset("synthetic-images", colour=True)


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("ROTSWEEP_DATA_DIR", str(tmp_path / "env"))
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("ROTSWEEP_DATA_DIR")
    assert str(data_root()).endswith(".cache/rotsweep/data")
