"""CIFAR-10 and CIFAR-100 through torchvision, read from the python-pickle files in
``<data_dir>/cifar-10-batches-py/`` and ``<data_dir>/cifar-100-python/``.

One loader serves both: torchvision's ``CIFAR100`` is ``CIFAR10`` with other file names (``train``, ``test``,
``meta``), ``fine_labels`` for ``labels`` and ``fine_label_names`` for the class names, all read from class
attributes, so :func:`_load_cifar` takes the torchvision class and the display name and nothing else differs.
"""

from __future__ import annotations

import os
import pickle
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import check_integrity as md5_ok

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


def _checksums(cifar: type[CIFAR10]) -> list[tuple[str, str]]:
    """(file name, official md5) of every file torchvision's ``cifar`` class reads: train, test, meta."""
    return [(name, md5) for name, md5 in cifar.train_list + cifar.test_list] + [
        (cifar.meta["filename"], cifar.meta["md5"])
    ]


def _files(cifar: type[CIFAR10]) -> tuple[str, ...]:
    return tuple(name for name, _ in _checksums(cifar))


CIFAR10_FILES = _files(CIFAR10)
CIFAR100_FILES = _files(CIFAR100)


def _failed_md5(cifar: type[CIFAR10], folder: Path) -> list[str]:
    return [name for name, md5 in _checksums(cifar) if not md5_ok(str(folder / name), md5)]


def _load_cifar(
    cifar: type[CIFAR10], title: str, data_dir: Path | str, download: bool, check_integrity: bool
) -> ImageData:
    """Load torchvision's ``cifar`` (CIFAR10 or CIFAR100) from ``data_dir``; ``title`` ("CIFAR-10") names it in
    messages and, lower-cased without the dash ("cifar10"), in the returned ImageData."""
    data_dir = Path(data_dir)
    folder = data_dir / cifar.base_folder
    files = _files(cifar)
    if missing_files(folder, files):
        if not download:
            raise not_found_error(
                title,
                [(folder, files)],
                [
                    "set dataset.download=true",
                    f"unpack {cifar.filename} into {data_dir}{os.sep} (it creates {cifar.base_folder}{os.sep})",
                    data_dir_hint(cifar.base_folder),
                ],
            )
        with download_errors(title, data_dir):
            cifar(root=data_dir, train=True, download=True)

    # torchvision offers no switch for its md5 check, and the real check_integrity would reject any tree
    # that is not byte-identical to the official one; file existence was checked above, so patching the
    # name in torchvision's cifar module (as torchvision's own tests do) for these two calls is enough.
    # CIFAR100 subclasses CIFAR10 and runs the same code there, so the one patch covers both.
    bypass = (
        nullcontext() if check_integrity
        else mock.patch("torchvision.datasets.cifar.check_integrity", return_value=True)
    )
    try:
        with bypass:
            train = cifar(root=data_dir, train=True)
            test = cifar(root=data_dir, train=False)
    except RuntimeError as err:
        failed = _failed_md5(cifar, folder) if check_integrity else []
        if failed:
            raise BoundaryError(
                f"{title} files in {folder}{os.sep} failed the md5 check against the official release: "
                f"{', '.join(failed)}. For a re-packed or subset tree set dataset.check_integrity=false"
            ) from err
        raise BoundaryError(f"could not read {title} from {folder}{os.sep}: {one_line(err)}") from err
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as err:
        raise BoundaryError(
            f"could not read {title} from {folder}{os.sep}: {type(err).__name__}: {one_line(err)}"
        ) from err
    name = title.lower().replace("-", "")
    return to_image_data(name, train.data, train.targets, test.data, test.targets, train.classes)


def load_cifar10(
    data_dir: Path | str, cache_dir: Path | str, download: bool = False, check_integrity: bool = True
) -> ImageData:
    """Load CIFAR-10 as (N, 3, 32, 32) images in [0, 1] with the class names from ``batches.meta``.

    All seven files (``data_batch_1..5``, ``test_batch``, ``batches.meta``) must exist; with
    ``download=True`` torchvision fetches them when any is missing. torchvision compares every file's md5
    with the official release; ``check_integrity=False`` skips that comparison so that re-packed or subset
    trees load. Missing files, a failed download, a failed md5 check or unreadable batches raise a one-line
    BoundaryError. ``cache_dir`` is unused.
    """
    return _load_cifar(CIFAR10, "CIFAR-10", data_dir, download, check_integrity)


def load_cifar100(
    data_dir: Path | str, cache_dir: Path | str, download: bool = False, check_integrity: bool = True
) -> ImageData:
    """Load CIFAR-100 as (N, 3, 32, 32) images in [0, 1] with its 100 fine labels and their names from ``meta``.

    The three files of ``<data_dir>/cifar-100-python/`` (``train``, ``test``, ``meta``) must exist; the
    coarse (20 superclass) labels are not read. Downloading, the md5 check, ``check_integrity=False`` and
    the one-line errors are as for :func:`load_cifar10`. ``cache_dir`` is unused.
    """
    return _load_cifar(CIFAR100, "CIFAR-100", data_dir, download, check_integrity)
