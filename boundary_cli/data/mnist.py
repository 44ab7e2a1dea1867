"""MNIST and Fashion-MNIST through torchvision.

Fashion-MNIST is also found where Debian's ``dataset-fashion-mnist`` package installs it, as four flat
gzipped files; those are decompressed once into the cache, in the layout torchvision expects.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from torchvision.datasets import MNIST, FashionMNIST

from boundary_cli.data.images import ImageData
from boundary_cli.data.sources import (
    data_dir_hint,
    download_errors,
    missing_files,
    not_found_error,
    one_line,
    to_image_data,
)
from boundary_cli.errors import BoundaryError
from boundary_cli.io import atomic_path

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def _load_idx(cls: type[MNIST], name: str, root: Path, download: bool, classes: Sequence[str]) -> ImageData:
    folder = root / cls.__name__ / "raw"
    try:
        if download:
            with download_errors(cls.__name__, folder):
                train = cls(root=root, train=True, download=True)
        else:
            train = cls(root=root, train=True)
        test = cls(root=root, train=False)
    except (AssertionError, ValueError, RuntimeError) as err:  # torchvision asserts on malformed IDX headers
        raise BoundaryError(
            f"could not read the {cls.__name__} IDX files in {folder}{os.sep}: {one_line(err)}"
        ) from err
    return to_image_data(name, train.data, train.targets, test.data, test.targets, classes)


def load_mnist(data_dir: Path | str, cache_dir: Path | str, download: bool = False) -> ImageData:
    """Load MNIST from ``<data_dir>/MNIST/raw/`` (the four uncompressed IDX files) as (N, 1, 28, 28) images.

    With ``download=True`` missing files are fetched by torchvision first. Missing files without
    download, or a failed download, raise a one-line BoundaryError that says where the loader looked and
    how to get the data. ``cache_dir`` is unused.
    """
    data_dir = Path(data_dir)
    raw = data_dir / "MNIST" / "raw"
    if not download and missing_files(raw, IDX_FILES):
        raise not_found_error(
            "MNIST",
            [(raw, IDX_FILES)],
            [
                "set dataset.download=true",
                f"put the four uncompressed IDX files in {raw}{os.sep}",
                data_dir_hint("MNIST/raw"),
            ],
        )
    return _load_idx(MNIST, "mnist", data_dir, download, [str(i) for i in range(10)])


def _decompress_into(source_dir: Path, dest_dir: Path, names: Sequence[str]) -> None:
    """Gunzip ``<source_dir>/<name>.gz`` to ``<dest_dir>/<name>`` for each name not already there, atomically."""
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            dest = dest_dir / name
            if dest.is_file():
                continue
            with atomic_path(dest) as tmp, gzip.open(source_dir / f"{name}.gz", "rb") as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise BoundaryError(
            f"could not decompress Fashion-MNIST from {source_dir}{os.sep} into {dest_dir}{os.sep}: {one_line(err)}. "
            f"Set paths.cache_dir to a writable folder"
        ) from err


def load_fashion_mnist(
    data_dir: Path | str,
    cache_dir: Path | str,
    download: bool = False,
    system_dir: Path | str | None = DEBIAN_FASHION_MNIST_DIR,
) -> ImageData:
    """Load Fashion-MNIST as (N, 1, 28, 28) images from the first place that has all four files.

    The places are, in order: ``<data_dir>/FashionMNIST/raw/`` with the uncompressed IDX files; then
    ``system_dir`` with the four flat ``*-ubyte.gz`` files that Debian's ``dataset-fashion-mnist``
    installs, which are decompressed once into ``<cache_dir>/datasets/FashionMNIST/raw/`` and read from
    there (``system_dir`` itself is never written); then a torchvision download into ``data_dir`` when
    ``download=True``. Otherwise a one-line BoundaryError names every place looked in and how to get the data.
    """
    data_dir = Path(data_dir)
    raw = data_dir / "FashionMNIST" / "raw"
    classes = FashionMNIST.classes
    if not missing_files(raw, IDX_FILES):
        return _load_idx(FashionMNIST, "fashion_mnist", data_dir, False, classes)
    places: list[tuple[Path, Sequence[str]]] = [(raw, IDX_FILES)]
    if system_dir is not None:
        system_dir = Path(system_dir)
        gz_names = [f"{name}.gz" for name in IDX_FILES]
        places.append((system_dir, gz_names))
        if not missing_files(system_dir, gz_names):
            cache_root = Path(cache_dir) / "datasets"
            _decompress_into(system_dir, cache_root / "FashionMNIST" / "raw", IDX_FILES)
            return _load_idx(FashionMNIST, "fashion_mnist", cache_root, False, classes)
    if download:
        return _load_idx(FashionMNIST, "fashion_mnist", data_dir, True, classes)
    raise not_found_error(
        "Fashion-MNIST",
        places,
        [
            "apt-get install dataset-fashion-mnist",
            f"put the four uncompressed IDX files in {raw}{os.sep}",
            "set dataset.download=true",
            data_dir_hint("FashionMNIST/raw"),
        ],
    )
