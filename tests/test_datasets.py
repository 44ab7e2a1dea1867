"""The dataset loaders on tiny files in the real formats, through the real torchvision classes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from fake_data import CIFAR10_CLASSES, FakeArrays, write_cifar10_tree, write_mnist_tree

from boundary_cli.data.cifar import load_cifar10
from boundary_cli.data.digits import load_digits
from boundary_cli.data.images import ImageData
from boundary_cli.data.mnist import IDX_FILES, load_fashion_mnist, load_mnist
from boundary_cli.errors import BoundaryError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def assert_matches(data: ImageData, written: FakeArrays, channels: int) -> None:
    """Shapes, dtypes, range and values of loaded data equal what the fake writer put on disk."""
    for x, y, raw_x, raw_y in [
        (data.train_x, data.train_y, written.train_x, written.train_y),
        (data.test_x, data.test_y, written.test_x, written.test_y),
    ]:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(raw_x), channels, raw_x.shape[1], raw_x.shape[2])
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert torch.equal(y, torch.from_numpy(raw_y))
        raw = raw_x if raw_x.ndim == 4 else raw_x[..., None]  # (N, H, W, C)
        for n, h, w, c in [(0, 0, 0, 0), (1, 5, 7, channels - 1), (len(raw) - 1, raw.shape[1] - 1, 3, 0)]:
            assert float(x[n, c, h, w]) == np.float32(raw[n, h, w, c]) / np.float32(255.0)
        assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(raw).permute(0, 3, 1, 2))
    assert data.value_range == (0.0, 1.0) and data.variant.name == "none"


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns, hashlib.md5(p.read_bytes()).hexdigest())
        for p in sorted(folder.iterdir())
    }


def no_network(*args: object, **kwargs: object) -> None:
    raise URLError("[Errno -3] Temporary failure in name resolution")


# ---------------------------------------------------------------- digits


def test_digits_split_sizes_range_and_stratification(tmp_path: Path) -> None:
    data = load_digits(tmp_path, tmp_path)
    assert data.name == "digits" and data.classes == [str(i) for i in range(10)]
    assert data.train_x.shape == (1297, 1, 8, 8) and data.test_x.shape == (500, 1, 8, 8)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert float(data.train_x.min()) == 0.0 and float(data.train_x.max()) == 1.0
    all_y = torch.cat([data.train_y, data.test_y])
    total = torch.bincount(all_y, minlength=10).double()
    for y, n in [(data.train_y, 1297), (data.test_y, 500)]:
        proportional = total * n / len(all_y)
        assert (torch.bincount(y, minlength=10) - proportional).abs().max() <= 1.0
    assert data.value_range == (0.0, 1.0) and data.variant.name == "none"


def test_digits_split_is_deterministic_and_seeded(tmp_path: Path) -> None:
    a, b = load_digits(tmp_path, tmp_path), load_digits(tmp_path, tmp_path)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    c = load_digits(tmp_path, tmp_path, split_seed=1)
    assert not torch.equal(a.test_x, c.test_x)
    assert load_digits(tmp_path, tmp_path, test_size=300).test_x.shape[0] == 300


# ---------------------------------------------------------------- MNIST


def test_mnist_loads_tiny_tree(tmp_path: Path) -> None:
    written = write_mnist_tree(tmp_path, n_train=40, n_test=20)
    data = load_mnist(tmp_path, tmp_path / "cache")
    assert data.name == "mnist" and data.classes == [str(i) for i in range(10)]
    assert_matches(data, written, channels=1)


@pytest.mark.parametrize("gz", [False, True], ids=["empty", "only-gz"])
def test_mnist_missing_files_is_one_line_boundary_error(tmp_path: Path, gz: bool) -> None:
    if gz:  # torchvision reads only the uncompressed files
        write_mnist_tree(tmp_path, gz=True)
    with pytest.raises(BoundaryError) as info:
        load_mnist(tmp_path, tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "MNIST" / "raw") in message
    assert all(name in message for name in IDX_FILES)
    assert "dataset.download" in message and "BOUNDARY_DATA_DIR" in message


def test_mnist_download_without_network_is_boundary_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", no_network)
    with pytest.raises(BoundaryError) as info:
        load_mnist(tmp_path, tmp_path / "cache", download=True)
    message = str(info.value)
    assert "\n" not in message and "could not download" in message and "name resolution" in message


def test_mnist_download_true_with_files_present_does_not_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", no_network)
    written = write_mnist_tree(tmp_path)
    assert_matches(load_mnist(tmp_path, tmp_path / "cache", download=True), written, channels=1)


def test_mnist_malformed_file_is_boundary_error(tmp_path: Path) -> None:
    write_mnist_tree(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x07garbage")
    with pytest.raises(BoundaryError, match="could not read"):
        load_mnist(tmp_path, tmp_path / "cache")


# ---------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_prefers_data_dir(tmp_path: Path) -> None:
    written = write_mnist_tree(tmp_path / "data", folder="FashionMNIST", seed=1)
    write_mnist_tree(tmp_path / "system", flat=True, gz=True, seed=2)
    data = load_fashion_mnist(tmp_path / "data", tmp_path / "cache", system_dir=tmp_path / "system")
    assert data.name == "fashion_mnist" and data.classes[0] == "T-shirt/top" and len(data.classes) == 10
    assert_matches(data, written, channels=1)
    assert not (tmp_path / "cache").exists()


def test_fashion_mnist_from_debian_style_dir_decompresses_once(tmp_path: Path) -> None:
    system = tmp_path / "system"
    written = write_mnist_tree(system, flat=True, gz=True, n_train=30, n_test=10)
    for p in system.iterdir():
        p.chmod(0o444)
    before = snapshot(system)
    cache = tmp_path / "cache"

    data = load_fashion_mnist(tmp_path / "data", cache, system_dir=system)
    assert_matches(data, written, channels=1)
    raw = cache / "datasets" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(IDX_FILES)  # no temporary files left behind
    first = snapshot(raw)

    again = load_fashion_mnist(tmp_path / "data", cache, system_dir=system)
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)
    assert snapshot(raw) == first
    assert snapshot(system) == before
    assert not (tmp_path / "data").exists()


def test_fashion_mnist_completes_partial_cache(tmp_path: Path) -> None:
    system = tmp_path / "system"
    written = write_mnist_tree(system, flat=True, gz=True)
    load_fashion_mnist(tmp_path / "data", tmp_path / "cache", system_dir=system)
    raw = tmp_path / "cache" / "datasets" / "FashionMNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").unlink()
    kept = (raw / "train-images-idx3-ubyte").stat().st_mtime_ns
    assert_matches(load_fashion_mnist(tmp_path / "data", tmp_path / "cache", system_dir=system), written, channels=1)
    assert (raw / "train-images-idx3-ubyte").stat().st_mtime_ns == kept


def test_fashion_mnist_missing_everywhere_names_all_places(tmp_path: Path) -> None:
    system = tmp_path / "no-such-system-dir"
    with pytest.raises(BoundaryError) as info:
        load_fashion_mnist(tmp_path / "data", tmp_path / "cache", system_dir=system)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "data" / "FashionMNIST" / "raw") in message and str(system) in message
    assert "apt-get install dataset-fashion-mnist" in message and "dataset.download=true" in message


def test_fashion_mnist_download_without_network_is_boundary_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", no_network)
    with pytest.raises(BoundaryError, match="could not download"):
        load_fashion_mnist(tmp_path / "data", tmp_path / "cache", download=True, system_dir=None)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_real_debian_files(tmp_path: Path) -> None:
    data = load_fashion_mnist(tmp_path / "data", tmp_path / "cache", system_dir=DEBIAN_FASHION)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(data.train_y), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(data.test_y), torch.full((10,), 1000))
    assert 0.0 <= float(data.train_x.min()) and float(data.train_x.max()) == 1.0


# ---------------------------------------------------------------- CIFAR-10


def test_cifar10_tiny_tree_loads_without_integrity_check(tmp_path: Path) -> None:
    original = torchvision.datasets.cifar.check_integrity
    written = write_cifar10_tree(tmp_path, n_train_per_batch=8, n_test=20)
    data = load_cifar10(tmp_path, tmp_path / "cache", check_integrity=False)
    assert data.name == "cifar10" and data.classes == CIFAR10_CLASSES
    assert_matches(data, written, channels=3)
    assert torchvision.datasets.cifar.check_integrity is original  # the bypass is undone


def test_cifar10_tiny_tree_fails_md5_check(tmp_path: Path) -> None:
    write_cifar10_tree(tmp_path)
    with pytest.raises(BoundaryError) as info:
        load_cifar10(tmp_path, tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message and "md5" in message and "dataset.check_integrity=false" in message


def test_cifar10_missing_file_is_boundary_error_even_without_integrity_check(tmp_path: Path) -> None:
    write_cifar10_tree(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(BoundaryError) as info:
        load_cifar10(tmp_path, tmp_path / "cache", check_integrity=False)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "cifar-10-batches-py") in message
    assert "missing data_batch_3" in message and "dataset.download" in message


def test_cifar10_download_without_network_is_boundary_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", no_network)
    with pytest.raises(BoundaryError) as info:
        load_cifar10(tmp_path, tmp_path / "cache", download=True)
    assert "\n" not in str(info.value) and "could not download CIFAR-10" in str(info.value)


def test_cifar10_unreadable_batch_is_boundary_error(tmp_path: Path) -> None:
    write_cifar10_tree(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(BoundaryError, match="could not read CIFAR-10"):
        load_cifar10(tmp_path, tmp_path / "cache", check_integrity=False)


# ---------------------------------------------------------------- fake data


@pytest.mark.parametrize("writer", [write_mnist_tree, write_cifar10_tree])
def test_fake_images_are_learnable(tmp_path: Path, writer: Callable[..., FakeArrays]) -> None:
    """A nearest-class-mean classifier on the fake pixels is far above chance: the patterns carry the label."""
    w = writer(tmp_path, seed=3, n_test=200)
    train_x = w.train_x.reshape(len(w.train_x), -1).astype(np.float64)
    test_x = w.test_x.reshape(len(w.test_x), -1).astype(np.float64)
    means = np.stack([train_x[w.train_y == k].mean(axis=0) for k in range(10)])
    predicted = ((test_x[:, None, :] - means[None]) ** 2).sum(axis=-1).argmin(axis=1)
    assert (predicted == w.test_y).mean() > 0.8
