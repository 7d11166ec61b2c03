"""Datasets: Fashion-MNIST from Debian's package, splits, batching, and one-line errors."""

from __future__ import annotations

import gzip
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from slimkit.data import (
    DATASETS,
    FASHION_MNIST_DIR,
    DataBundle,
    DataError,
    ImageTensorDataset,
    _split_indices,
    load_data,
    make_loader,
)

needs_fmnist = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"{FASHION_MNIST_DIR} missing: apt-get install dataset-fashion-mnist",
)


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """An IDX file as in the MNIST distribution: magic (0, 0, uint8 code, ndim), dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def write_fake_fmnist(directory: Path, compress: bool, n_train: int = 40, n_test: int = 12) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress)


@pytest.fixture(scope="module")
def fmnist() -> DataBundle:
    start = time.perf_counter()
    bundle = load_data("fashion-mnist", data_dir=None, input_size=(3, 32, 32))
    # The brief is < 2 s; the bound is loose so that a busy CI machine does not flake, while a
    # regression to per-sample decoding (tens of seconds) still fails.
    assert time.perf_counter() - start < 6
    return bundle


@needs_fmnist
def test_fashion_mnist_sizes(fmnist: DataBundle) -> None:
    assert fmnist.num_classes == 10
    assert fmnist.in_chans_source == 1
    assert fmnist.val is not None
    assert len(fmnist.val) == 5000  # the paper's CIFAR hold-out, carved from train
    assert len(fmnist.train) + len(fmnist.val) == 60000
    assert len(fmnist.test) == 10000
    assert "Fashion-MNIST" in fmnist.description and "SYNTHETIC" not in fmnist.description


@needs_fmnist
def test_fashion_mnist_val_split_is_deterministic_per_seed(fmnist: DataBundle) -> None:
    same = load_data("fashion-mnist", data_dir=None, input_size=(3, 32, 32), seed=0)
    other = load_data("fashion-mnist", data_dir=None, input_size=(3, 32, 32), seed=1)
    assert isinstance(fmnist.val, ImageTensorDataset)
    assert isinstance(same.val, ImageTensorDataset) and isinstance(other.val, ImageTensorDataset)
    assert torch.equal(same.val.images, fmnist.val.images)
    assert not torch.equal(other.val.images, fmnist.val.images)


def test_split_is_disjoint_and_covers_the_train_set() -> None:
    labels = torch.arange(600) % 10
    train, val = _split_indices(labels, 50, 10, seed=3, stratified=False, class_names=[])
    assert len(val) == 50 and len(train) == 550
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert set(train.tolist()) | set(val.tolist()) == set(range(600))
    again, _ = _split_indices(labels, 50, 10, seed=3, stratified=False, class_names=[])
    assert torch.equal(train, again)

    names = [str(c) for c in range(10)]
    _, strat = _split_indices(labels, 53, 10, seed=3, stratified=True, class_names=names)
    counts = torch.bincount(labels[strat], minlength=10)
    assert counts.sum() == 53 and counts.max() - counts.min() <= 1  # 50 images/class style


@needs_fmnist
def test_batches_have_requested_size_and_repeat_gray_to_three_channels(fmnist: DataBundle) -> None:
    x, y = next(iter(make_loader(fmnist.train, 16, shuffle=True, seed=0)))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    # Normalized with the dataset's statistics: roughly zero mean, unit spread.
    assert abs(x.mean().item()) < 0.5 and 0.5 < x.std().item() < 1.5


def test_native_size_batch_is_the_normalized_raw_image(tmp_path: Path) -> None:
    write_fake_fmnist(tmp_path, compress=False)
    bundle = load_data("fashion-mnist", data_dir=str(tmp_path), input_size=(1, 28, 28), val_size=0)
    assert bundle.val is None
    assert isinstance(bundle.train, ImageTensorDataset)
    x, y = bundle.train.batch(torch.arange(4))
    raw = bundle.train.images[:4].float() / 255
    torch.testing.assert_close(x * 0.3530 + 0.2860, raw)
    assert y.tolist() == [0, 1, 2, 3]


def test_gz_and_plain_idx_files_load_the_same(tmp_path: Path) -> None:
    (tmp_path / "gz").mkdir()
    (tmp_path / "plain").mkdir()
    write_fake_fmnist(tmp_path / "gz", compress=True)
    write_fake_fmnist(tmp_path / "plain", compress=False)
    a = load_data("fashion-mnist", data_dir=str(tmp_path / "gz"), input_size=(1, 28, 28), val_size=8)
    b = load_data("fashion-mnist", data_dir=str(tmp_path / "plain"), input_size=(1, 28, 28), val_size=8)
    assert isinstance(a.train, ImageTensorDataset) and isinstance(b.train, ImageTensorDataset)
    assert len(a.train) == 32 and len(a.test) == 12
    assert torch.equal(a.train.images, b.train.images)


def test_loader_shuffle_is_seeded_and_advances_per_epoch() -> None:
    bundle = load_data("synthetic", data_dir=None, input_size=(3, 16, 16), val_size=0)
    first = make_loader(bundle.train, 64, shuffle=True, seed=5)
    second = make_loader(bundle.train, 64, shuffle=True, seed=5)
    epoch0 = [y for _, y in first]
    assert [torch.equal(a, b) for a, b in zip(epoch0, (y for _, y in second))] == [True] * 8
    epoch1 = [y for _, y in first]  # the epoch advanced: a new order
    assert not torch.equal(torch.cat(epoch0), torch.cat(epoch1))
    assert torch.equal(torch.sort(torch.cat(epoch0)).values, torch.sort(torch.cat(epoch1)).values)
    first.set_epoch(0)
    assert torch.equal(torch.cat([y for _, y in first]), torch.cat(epoch0))


def test_augment_keeps_shape_changes_pixels_and_is_seeded() -> None:
    bundle = load_data("synthetic", data_dir=None, input_size=(3, 32, 32), val_size=0)
    plain = next(iter(make_loader(bundle.train, 32, shuffle=False)))[0]
    aug_a = next(iter(make_loader(bundle.train, 32, shuffle=False, seed=1, augment=True)))[0]
    aug_b = next(iter(make_loader(bundle.train, 32, shuffle=False, seed=1, augment=True)))[0]
    assert aug_a.shape == plain.shape == (32, 3, 32, 32)
    assert torch.equal(aug_a, aug_b)
    assert not torch.equal(aug_a, plain)


def test_drop_last_and_length() -> None:
    bundle = load_data("synthetic", data_dir=None, input_size=(1, 8, 8), synthetic_size=100, val_size=0)
    assert len(make_loader(bundle.train, 32, shuffle=False)) == 4
    loader = make_loader(bundle.train, 32, shuffle=False, drop_last=True)
    assert len(loader) == 3 and [len(y) for _, y in loader] == [32, 32, 32]


def test_synthetic_is_labelled_and_deterministic() -> None:
    a = load_data("synthetic", data_dir=None, input_size=(3, 32, 32), num_classes_hint=7, seed=2)
    b = load_data("synthetic", data_dir=None, input_size=(3, 32, 32), num_classes_hint=7, seed=2)
    assert a.description.startswith("SYNTHETIC random tensors — for speed tests only")
    assert a.num_classes == 7
    assert isinstance(a.train, ImageTensorDataset) and isinstance(b.train, ImageTensorDataset)
    assert int(a.train.labels.max()) < 7
    assert torch.equal(a.train.images, b.train.images)
    # The held-out images are not among the training images.
    assert a.val is not None and isinstance(a.val, ImageTensorDataset)
    train_rows = {row.numpy().tobytes() for row in a.train.images}
    assert not any(row.numpy().tobytes() in train_rows for row in a.val.images)


def test_missing_fashion_mnist_dir_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_data("fashion-mnist", data_dir=str(tmp_path / "nope"), input_size=(3, 32, 32))
    message = str(info.value)
    assert "\n" not in message
    assert "Fashion-MNIST not found" in message and "apt-get install dataset-fashion-mnist" in message
    assert isinstance(info.value, ValueError)


def test_missing_cifar_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="CIFAR-10 not found") as info:
        load_data("cifar10", data_dir=str(tmp_path), input_size=(3, 32, 32))
    assert "cifar-10-batches-py" in str(info.value) and "\n" not in str(info.value)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(DataError) as info:
        load_data("mnist-ish", data_dir=None, input_size=(3, 32, 32))
    assert all(name in str(info.value) for name in DATASETS)


def test_val_size_larger_than_train_is_an_error() -> None:
    with pytest.raises(DataError, match="val_size"):
        load_data("synthetic", data_dir=None, input_size=(3, 8, 8), synthetic_size=16, val_size=16)


def test_imagefolder_missing_split_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="val"):
        load_data(f"imagefolder:{tmp_path}", data_dir=None, input_size=(3, 32, 32))


def test_imagefolder_loads_splits_per_class_and_resizes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("ant", "bee"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    bundle = load_data(f"imagefolder:{tmp_path}", data_dir=None, input_size=(1, 24, 24), val_size=2)
    assert bundle.num_classes == 2 and bundle.in_chans_source == 3
    assert bundle.val is not None and len(bundle.val) == 2 and len(bundle.train) == 6
    assert len(bundle.test) == 4
    val_labels = sorted(label for _, label in bundle.val)
    assert val_labels == [0, 1]  # one held out per class
    for augment in (False, True):
        x, y = next(iter(make_loader(bundle.train, 4, shuffle=True, seed=0, augment=augment)))
        assert x.shape == (4, 1, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    # The default hold-out is 50 per class, more than this tiny tree has: a clear error.
    with pytest.raises(DataError, match="val-size"):
        load_data(f"imagefolder:{tmp_path}", data_dir=None, input_size=(3, 32, 32))
