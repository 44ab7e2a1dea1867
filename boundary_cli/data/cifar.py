"""CIFAR-10 through torchvision, read from the python-pickle batches in ``<data_dir>/cifar-10-batches-py/``."""

from __future__ import annotations

import os
import pickle
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

from torchvision.datasets import CIFAR10
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

CIFAR10_FILES = tuple(name for name, _ in CIFAR10.train_list + CIFAR10.test_list) + (CIFAR10.meta["filename"],)


def _failed_md5(folder: Path) -> list[str]:
    checks = CIFAR10.train_list + CIFAR10.test_list + [[CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
    return [name for name, md5 in checks if not md5_ok(str(folder / name), md5)]


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
    data_dir = Path(data_dir)
    folder = data_dir / CIFAR10.base_folder
    if missing_files(folder, CIFAR10_FILES):
        if not download:
            raise not_found_error(
                "CIFAR-10",
                [(folder, CIFAR10_FILES)],
                [
                    "set dataset.download=true",
                    f"unpack cifar-10-python.tar.gz into {data_dir}{os.sep} (it creates {CIFAR10.base_folder}{os.sep})",
                    data_dir_hint(CIFAR10.base_folder),
                ],
            )
        with download_errors("CIFAR-10", data_dir):
            CIFAR10(root=data_dir, train=True, download=True)

    # torchvision offers no switch for its md5 check, and the real check_integrity would reject any tree
    # that is not byte-identical to the official one; file existence was checked above, so patching the
    # name in torchvision's cifar module (as torchvision's own tests do) for these two calls is enough.
    bypass = (
        nullcontext() if check_integrity
        else mock.patch("torchvision.datasets.cifar.check_integrity", return_value=True)
    )
    try:
        with bypass:
            train = CIFAR10(root=data_dir, train=True)
            test = CIFAR10(root=data_dir, train=False)
    except RuntimeError as err:
        failed = _failed_md5(folder) if check_integrity else []
        if failed:
            raise BoundaryError(
                f"CIFAR-10 files in {folder}{os.sep} failed the md5 check against the official release: "
                f"{', '.join(failed)}. For a re-packed or subset tree set dataset.check_integrity=false"
            ) from err
        raise BoundaryError(f"could not read CIFAR-10 from {folder}{os.sep}: {one_line(err)}") from err
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as err:
        raise BoundaryError(
            f"could not read CIFAR-10 from {folder}{os.sep}: {type(err).__name__}: {one_line(err)}"
        ) from err
    return to_image_data("cifar10", train.data, train.targets, test.data, test.targets, train.classes)
