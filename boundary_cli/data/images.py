"""The in-memory form of every dataset: whole train and test tensors plus what describes them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from boundary_cli.data.variants import NONE, Variant


@dataclass
class ImageData:
    """A labelled image dataset held as tensors.

    Attributes:
        name: dataset name as in the config (``digits``, ``mnist``, ...).
        train_x: (N, C, H, W) float32 training images.
        train_y: (N,) int64 training labels.
        test_x: (M, C, H, W) float32 test images.
        test_y: (M,) int64 test labels.
        classes: class names, index = label.
        value_range: (low, high) every pixel value lies in; (0, 1) for raw data, wider for
            variants whose transform leaves the unit interval (frequency flip, low-pass).
        variant: the :class:`~boundary_cli.data.variants.Variant` applied (``str()`` gives its name).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: list[str]
    value_range: tuple[float, float] = (0.0, 1.0)
    variant: Variant = NONE

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def uint8_to_unit(images: Tensor) -> Tensor:
    """(N, H, W) or (N, H, W, C) uint8 -> (N, C, H, W) float32 in [0, 1]."""
    x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    return x.permute(0, 3, 1, 2).contiguous().float().div_(255.0)
