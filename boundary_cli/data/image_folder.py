"""``dataset=image_folder``: any torchvision ``ImageFolder`` tree (``<root>/<class>/<image>``) as the set
of images to measure, decoded per batch, with size and normalisation from the config.

There is no training split: such a dataset is measured with a model from ``model.checkpoint`` or
``model.pretrained=true``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from boundary_cli.data.images import ImageData
from boundary_cli.data.lazy import LazyImages, default_workers
from boundary_cli.data.sources import one_line
from boundary_cli.errors import BoundaryError

log = logging.getLogger(__name__)


INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
CROP_ONLY = "crop"


def eval_transform(image_size: int | Sequence[int], resize: int | str | None, channels: int,
                   interpolation: str = "bilinear") -> transforms.Compose:
    """Decode-time transform: optional grayscale, ``Resize(resize)`` (shorter side) then centre crop to
    ``image_size``; a plain resize to ``image_size`` when ``resize`` is None; only the centre crop when
    ``resize`` is ``"crop"`` (RobustBench's Crop288); then a (C, H, W) float tensor in [0, 1], never
    normalised (the model's first layer does that). ``interpolation`` names the resampling filter (one of
    INTERPOLATIONS; timm's data configs ask for bicubic). ImageNet's evaluation transform is
    ``resize=256, image_size=224``, bilinear."""
    h, w = _size(image_size)
    if str(interpolation).lower() not in INTERPOLATIONS:
        raise BoundaryError(f"dataset.loader.interpolation={interpolation!r} is not valid; use one of: "
                            f"{', '.join(INTERPOLATIONS)}")
    mode = transforms.InterpolationMode(str(interpolation).lower())
    steps: list = [transforms.Grayscale(1)] if channels == 1 else []
    if resize is None:
        steps.append(transforms.Resize((h, w), interpolation=mode))
    elif str(resize).lower() == CROP_ONLY:
        steps.append(transforms.CenterCrop((h, w)))
    else:
        steps += [transforms.Resize(int(resize), interpolation=mode), transforms.CenterCrop((h, w))]
    steps.append(transforms.ToTensor())
    return transforms.Compose(steps)


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = (int(v) for v in image_size)
    return h, w


def class_folders(folder: Path) -> list[str]:
    """Sub-folders of ``folder`` that hold at least one image file ImageFolder would read."""
    if not folder.is_dir():
        return []
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if any(f.suffix.lower() in IMG_EXTENSIONS for f in sub.rglob("*") if f.is_file()):
            found.append(sub.name)
    return found


def padded_classes(names: list[str], num_classes: int | None, dataset: str) -> list[str]:
    """Class names, padded with placeholders up to ``num_classes`` (a model trained on more classes
    than the tree holds, e.g. a few ImageNet classes). Labels index the folders found, in sorted order."""
    if num_classes is None or num_classes == len(names):
        return names
    if num_classes < len(names):
        raise BoundaryError(f"{dataset}: the tree has {len(names)} class folders but num_classes={num_classes}; "
                            f"set dataset.num_classes to at least {len(names)} (or null)")
    log.warning("%s: %d class folders found, the model has %d classes: labels are folder indices, so the "
                "'correct' column means something only if the folders are the model's first classes", dataset,
                len(names), num_classes)
    return names + [f"<class {i}>" for i in range(len(names), num_classes)]


def folder_data(name: str, dataset: ImageFolder, classes: list[str], channels: int,
                image_size: int | Sequence[int], workers: int | str) -> ImageData:
    """ImageData whose test images are ``dataset`` decoded per batch and whose training split is empty."""
    h, w = _size(image_size)
    n_workers = default_workers() if workers == "auto" else int(workers)
    test_x = LazyImages(dataset, (channels, h, w), workers=n_workers)
    empty = torch.empty((0, channels, h, w))
    return ImageData(name=name, train_x=empty, train_y=torch.empty(0, dtype=torch.int64), test_x=test_x,
                     test_y=torch.as_tensor(dataset.targets, dtype=torch.int64), classes=classes)


def load_image_folder(
    data_dir: Path | str, cache_dir: Path | str, download: bool = False, *, root: str | None = None,
    image_size: int | Sequence[int] = 224, resize: int | str | None = 256, channels: int = 3,
    num_classes: int | None = None, workers: int | str = "auto", interpolation: str = "bilinear",
) -> ImageData:
    """The images of an ImageFolder tree ``root`` (``<root>/<class>/<image>``; relative paths are taken
    from ``data_dir``), transformed by :func:`eval_transform` into (C, H, W) in [0, 1].

    ``num_classes`` pads the class list for a model with more outputs than the tree has folders. Raises a
    one-line BoundaryError when ``root`` is unset or holds no class folder with images. ``cache_dir`` and
    ``download`` are unused (nothing is fetched).
    """
    if channels not in (1, 3):
        raise BoundaryError(f"dataset.channels must be 1 or 3, got {channels!r}")
    if not root:
        raise BoundaryError("dataset=image_folder needs dataset.root=PATH: a folder with one sub-folder per "
                            "class holding its images (torchvision ImageFolder layout)")
    folder = Path(root).expanduser()
    if not folder.is_absolute():
        folder = Path(data_dir) / folder
    names = class_folders(folder)
    if not names:
        raise BoundaryError(f"no images found in {folder}{os.sep}: dataset.root must hold one sub-folder per class "
                            f"with image files ({', '.join(sorted(IMG_EXTENSIONS)[:5])}, ...) in it")
    try:
        ds = ImageFolder(str(folder), transform=eval_transform(image_size, resize, channels, interpolation))
    except (OSError, RuntimeError, FileNotFoundError) as err:
        raise BoundaryError(f"could not read the image folder {folder}{os.sep}: {one_line(err)}") from err
    classes = padded_classes(list(ds.classes), num_classes, "image_folder")
    return folder_data("image_folder", ds, classes, channels, image_size, workers)
