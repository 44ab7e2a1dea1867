"""``dataset=imagenet``: the ILSVRC2012 validation set (50,000 images) from a local folder, decoded per
batch with the standard evaluation transform (resize 256, centre crop 224).

Two layouts are read, both the way torchvision reads them:
  * ``<root>/meta.bin`` + ``<root>/val/<wnid>/*.JPEG`` (torchvision ``ImageNet``, class names from meta.bin;
    torchvision writes meta.bin from the devkit archive and sorts the val archive into folders itself
    when ``ILSVRC2012_devkit_t12.tar.gz`` / ``ILSVRC2012_img_val.tar`` lie in ``<root>``);
  * ``<root>/val/<wnid>/*.JPEG`` without meta.bin (torchvision ``ImageFolder``; the wnids are the names).
Labels are the index of the wnid in sorted order, in both layouts the order of ImageNet's 1000 classes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from torchvision.datasets import ImageFolder, ImageNet

from boundary_cli.data.image_folder import (
    class_folders,
    eval_transform,
    folder_data,
    padded_classes,
)
from boundary_cli.data.images import ImageData
from boundary_cli.data.sources import one_line
from boundary_cli.errors import BoundaryError

META_FILE = "meta.bin"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
VAL_ARCHIVE = "ILSVRC2012_img_val.tar"
NUM_CLASSES = 1000


def imagenet_layout(root: Path) -> str:
    """``imagenet`` (meta.bin or the devkit, with val/ or the val archive), ``image_folder`` (val/<wnid>/),
    or ``missing``."""
    has_meta = (root / META_FILE).is_file() or (root / DEVKIT).is_file()
    has_val = bool(class_folders(root / "val")) or (root / VAL_ARCHIVE).is_file()
    if has_meta and has_val:
        return "imagenet"
    if class_folders(root / "val"):
        return "image_folder"
    return "missing"


def load_imagenet(
    data_dir: Path | str, cache_dir: Path | str, download: bool = False, *, root: str | None = None,
    image_size: int | Sequence[int] = 224, resize: int | str | None = 256, workers: int | str = "auto",
    interpolation: str = "bilinear",
) -> ImageData:
    """The ImageNet validation images as lazily decoded (3, 224, 224) tensors in [0, 1], labels 0..999.

    ``root`` defaults to ``<data_dir>/imagenet``. Raises a one-line BoundaryError naming both expected
    layouts when neither is there. ImageNet cannot be downloaded (it needs a licence), so ``download``
    only changes the message; ``cache_dir`` is unused.
    """
    folder = Path(root).expanduser() if root else Path(data_dir) / "imagenet"
    if not folder.is_absolute():
        folder = Path(data_dir) / folder
    layout = imagenet_layout(folder)
    if layout == "missing":
        raise BoundaryError(
            f"ImageNet validation images not found in {folder}{os.sep}: expected either {META_FILE} plus "
            f"val{os.sep}<wnid>{os.sep}*.JPEG (torchvision ImageNet layout) or val{os.sep}<wnid>{os.sep}*.JPEG "
            f"(ImageFolder layout, one folder per class). ImageNet is never downloaded (licence): get "
            f"{VAL_ARCHIVE} and {DEVKIT} from image-net.org into that folder, or set dataset.root "
            f"(or paths.data_dir / env BOUNDARY_DATA_DIR) to where it is"
        )
    transform = eval_transform(image_size, resize, 3, interpolation)
    try:
        if layout == "imagenet":
            ds = ImageNet(str(folder), split="val", transform=transform)
            names = [", ".join(c) if isinstance(c, (tuple, list)) else str(c) for c in ds.classes]
        else:
            ds = ImageFolder(str(folder / "val"), transform=transform)
            names = list(ds.classes)
    except (OSError, RuntimeError, ValueError) as err:
        raise BoundaryError(f"could not read ImageNet from {folder}{os.sep} ({layout} layout): {one_line(err)}") from err
    classes = padded_classes(names, NUM_CLASSES, "imagenet")
    return folder_data("imagenet", ds, classes, 3, image_size, workers)
