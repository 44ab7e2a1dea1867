"""What every torchvision-backed loader shares: not-found and download errors, and the conversion
of uint8 arrays into :class:`ImageData`."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from boundary_cli.data.images import ImageData, uint8_to_unit
from boundary_cli.errors import BoundaryError


def data_dir_hint(subfolder: str) -> str:
    """The last way to get a dataset in a not-found message: point the data directory elsewhere."""
    return f"set paths.data_dir (or env BOUNDARY_DATA_DIR) to a folder that holds {subfolder}{os.sep}"


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's text with whitespace collapsed to single spaces, cut to ``limit`` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def missing_files(folder: Path, names: Sequence[str]) -> list[str]:
    """The names in ``names`` that are not regular files in ``folder``."""
    return [name for name in names if not (folder / name).is_file()]


def not_found_error(dataset: str, places: Sequence[tuple[Path, Sequence[str]]], ways: Sequence[str]) -> BoundaryError:
    """A one-line error saying which files were looked for in which folders, and how to get them."""
    looked = []
    for folder, names in places:
        missing = missing_files(folder, names)
        which = "all missing" if len(missing) == len(names) else "missing " + ", ".join(missing)
        looked.append(f"{folder}{os.sep} for {', '.join(names)} ({which})")
    return BoundaryError(
        f"{dataset} files not found: looked in {'; and in '.join(looked)}. To get them: {', or '.join(ways)}."
    )


@contextmanager
def download_errors(dataset: str, folder: Path) -> Iterator[None]:
    """Turn a failed torchvision download (no network, bad mirror, bad checksum) into one BoundaryError."""
    try:
        yield
    except (OSError, RuntimeError) as err:  # URLError and socket timeouts are OSErrors
        raise BoundaryError(
            f"could not download {dataset} into {folder}{os.sep}: {one_line(err)}. Without network access, "
            f"copy the files there by hand and keep dataset.download=false"
        ) from err


def to_image_data(
    name: str, train_x: Tensor, train_y: Sequence[int] | Tensor, test_x: Tensor, test_y: Sequence[int] | Tensor,
    classes: Sequence[str],
) -> ImageData:
    """Build ImageData from uint8 (N, H, W[, C]) images and integer labels, as torchvision datasets hold them."""
    return ImageData(
        name=name,
        train_x=uint8_to_unit(train_x),
        train_y=torch.as_tensor(train_y, dtype=torch.int64),
        test_x=uint8_to_unit(test_x),
        test_y=torch.as_tensor(test_y, dtype=torch.int64),
        classes=list(classes),
    )
