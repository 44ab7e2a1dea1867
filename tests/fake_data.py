"""Writers of tiny dataset files in the real on-disk formats, for tests that run the real torchvision loaders.

Images are learnable rather than pure noise: class ``k`` lights cell ``k`` of a 4x4 grid over the image
(in a class-specific colour for RGB images) on a dim noise background, so a small network trained on a few
dozen images beats chance clearly. Labels cycle through the classes in a shuffled order, so every class
appears once there are at least as many images as classes.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

IDX_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_PALETTE = np.array(
    [[255, 40, 40], [40, 255, 40], [40, 40, 255], [255, 255, 40], [255, 40, 255],
     [40, 255, 255], [255, 150, 40], [150, 40, 255], [255, 255, 255], [120, 120, 120]],
    dtype=np.int64,
)


class FakeArrays(NamedTuple):
    """What a writer put on disk: uint8 images (N, H, W) or (N, H, W, 3), and int64 labels (N,)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def make_labels(n: int, rng: np.random.Generator, num_classes: int = 10) -> np.ndarray:
    """``n`` int64 labels, balanced across ``num_classes`` (counts differ by at most one), in random order."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def make_images(labels: np.ndarray, height: int, width: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 images (N, H, W) for ``channels=1`` or (N, H, W, C): noise plus a bright cell chosen by the label."""
    n = len(labels)
    images = rng.integers(0, 64, size=(n, height, width, channels), dtype=np.int64)
    ch, cw = height // 4, width // 4
    for i, label in enumerate(labels):
        r, c = (int(label) // 4) % 4, int(label) % 4
        colour = _PALETTE[int(label) % len(_PALETTE), :channels] if channels == 3 else np.array([255])
        cell = rng.integers(150, 256, size=(ch, cw, channels)) * colour // 255
        images[i, r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] = np.maximum(cell, 64)
    images = images.astype(np.uint8)
    return images[..., 0] if channels == 1 else images


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array (1 to 3 dims) as an IDX file; gzipped when ``path`` ends in ``.gz``."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 3:
        raise ValueError(f"IDX writer takes uint8 arrays with 1 to 3 dims, got {array.dtype} {array.shape}")
    payload = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    payload += array.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_mnist_tree(
    root: Path,
    folder: str = "MNIST",
    n_train: int = 40,
    n_test: int = 20,
    seed: int = 0,
    gz: bool = False,
    flat: bool = False,
    size: int = 28,
) -> FakeArrays:
    """Write the four MNIST-format IDX files and return what was written.

    By default they go to ``<root>/<folder>/raw/`` uncompressed, which is what torchvision's ``MNIST`` /
    ``FashionMNIST`` read (``folder="FashionMNIST"`` for the latter). ``gz=True`` writes ``*-ubyte.gz``
    instead; ``flat=True`` writes straight into ``root`` as Debian's ``dataset-fashion-mnist`` does.
    """
    rng = np.random.default_rng(seed)
    train_y, test_y = make_labels(n_train, rng), make_labels(n_test, rng)
    train_x, test_x = make_images(train_y, size, size, 1, rng), make_images(test_y, size, size, 1, rng)
    arrays = FakeArrays(train_x, train_y, test_x, test_y)
    target = Path(root) if flat else Path(root) / folder / "raw"
    values = {
        ("train", "images"): arrays.train_x,
        ("train", "labels"): arrays.train_y.astype(np.uint8),
        ("test", "images"): arrays.test_x,
        ("test", "labels"): arrays.test_y.astype(np.uint8),
    }
    for key, name in IDX_NAMES.items():
        write_idx(target / (name + (".gz" if gz else "")), values[key])
    return arrays


def _write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray, batch_label: str) -> None:
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3 * 32 * 32)  # R, G, B planes, row-major
    entry = {
        "batch_label": batch_label,
        "labels": [int(y) for y in labels],
        "data": np.ascontiguousarray(data, dtype=np.uint8),
        "filenames": [f"fake_{i:05d}.png" for i in range(len(images))],
    }
    with open(path, "wb") as f:
        pickle.dump(entry, f)


def write_cifar10_tree(root: Path, n_train_per_batch: int = 8, n_test: int = 20, seed: int = 0) -> FakeArrays:
    """Write ``<root>/cifar-10-batches-py/`` (5 train batches, test_batch, batches.meta) and return its contents.

    The files have the real pickle layout but not the real md5s, so torchvision's integrity check fails on
    them: load with ``check_integrity=False``. ``train_x`` is (5 * n_train_per_batch, 32, 32, 3) in batch order.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_y = make_labels(5 * n_train_per_batch, rng)
    train_x = make_images(train_y, 32, 32, 3, rng)
    for b in range(5):
        part = slice(b * n_train_per_batch, (b + 1) * n_train_per_batch)
        _write_cifar_batch(folder / f"data_batch_{b + 1}", train_x[part], train_y[part], f"training batch {b + 1} of 5")
    test_y = make_labels(n_test, rng)
    test_x = make_images(test_y, 32, 32, 3, rng)
    _write_cifar_batch(folder / "test_batch", test_x, test_y, "testing batch 1 of 1")
    meta = {"label_names": CIFAR10_CLASSES, "num_cases_per_batch": n_train_per_batch, "num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    return FakeArrays(train_x, train_y, test_x, test_y)


def corrupt_digits(data_dir: Path, cache_dir: Path, download: bool = False, corruption: str = "nan_pixel"):
    """scikit-learn digits with a defect, as a dataset loader (``dataset.loader._target_=fake_data.corrupt_digits``):
    ``nan_pixel`` puts a NaN into one test image, ``range`` scales the pixels to 0..16 (the raw digits range)."""
    from boundary_cli.data.digits import load_digits

    data = load_digits(data_dir, cache_dir, download)
    if corruption == "nan_pixel":
        data.test_x[3, 0, 2, 2] = float("nan")
    elif corruption == "range":
        data.train_x *= 16
        data.test_x *= 16
    else:
        raise ValueError(corruption)
    return data


def write_imagenet_tree(root: Path, wnids: tuple[str, ...] = ("n01440764", "n01443537", "n01484850"),
                        per_class: int = 2, with_meta: bool = True, seed: int = 0) -> dict:
    """A tiny ILSVRC2012 validation tree: ``root/val/<wnid>/*.JPEG`` of assorted sizes (so resize and crop
    matter), plus ``root/meta.bin`` in torchvision's format ``(wnid_to_classes, val_wnids)`` when
    ``with_meta``. Returns {"wnids", "files", "classes"}."""
    import torch
    from PIL import Image

    rng = np.random.default_rng(seed)
    files = []
    val_wnids = []
    for c, wnid in enumerate(wnids):
        folder = root / "val" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(240, 330)), int(rng.integers(240, 330))
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            pixels[..., c % 3] = 255 - c * 40  # class colour: a learnable signal
            path = folder / f"ILSVRC2012_val_{c * per_class + i + 1:08d}.JPEG"
            Image.fromarray(pixels).save(path, quality=90)
            files.append(path)
            val_wnids.append(wnid)
    classes = {wnid: (f"class {k}", f"synonym {k}") for k, wnid in enumerate(wnids)}
    if with_meta:
        torch.save((classes, val_wnids), root / "meta.bin")
    return {"wnids": wnids, "files": files, "classes": classes}
