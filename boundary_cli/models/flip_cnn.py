"""The small CNN of the Decision-Flip-Experiments reference (its CIFAR network and its MNIST twin)."""

from __future__ import annotations

from torch import Tensor, nn

from boundary_cli.errors import BoundaryError
from boundary_cli.models.inputs import check_size

MIN_SIZE = 4
FORMS = ("auto", "cifar", "mnist")


def _conv_relu(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2), nn.ReLU())


def _linear_relu(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU())


class FlipCNN(nn.Module):
    """conv0 32@3x3-ReLU, ``pool0`` 2x2, conv1 64@3x3-ReLU, ``pool1`` 2x2, (``cifar`` form only: conv2
    128@1x1-ReLU), flatten, ``dense1`` 1024-ReLU, ``dense2`` 128-ReLU, ``logits``; convolutions keep the
    size ('same' padding) and the pools floor it, so x (B, C, H, W) -> logits (B, num_classes) through
    (B, 32, H/2, W/2), (B, 64, H/4, W/4), (B, 1024), (B, 128).

    ``tap_layers`` are the submodules whose outputs the experiments read; each is post-activation.
    """

    tap_layers = ("pool0", "pool1", "dense1", "dense2")

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int], cifar: bool) -> None:
        super().__init__()
        h, w = image_size[0] // 4, image_size[1] // 4
        self.conv0 = _conv_relu(in_channels, 32, 3)
        self.pool0 = nn.MaxPool2d(2)
        self.conv1 = _conv_relu(32, 64, 3)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = _conv_relu(64, 128, 1) if cifar else nn.Identity()
        self.dense1 = _linear_relu((128 if cifar else 64) * h * w, 1024)
        self.dense2 = _linear_relu(1024, 128)
        self.logits = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool1(self.conv1(self.pool0(self.conv0(x))))
        out = self.conv2(out).flatten(1)
        return self.logits(self.dense2(self.dense1(out)))


def flip_cnn(in_channels: int, num_classes: int, image_size: tuple[int, int], form: str = "auto") -> nn.Module:
    """Build a :class:`FlipCNN` for images (B, in_channels, H, W) with H, W >= 4, giving logits (B, num_classes).

    ``form="cifar"`` is the reference's CIFAR network (with the 1x1 conv2 of 128 channels),
    ``form="mnist"`` its MNIST twin (without conv2); ``auto`` takes the MNIST form for 1-channel images
    and the CIFAR form otherwise. Raises BoundaryError for an unknown form or images smaller than 4x4.
    """
    if form not in FORMS:
        raise BoundaryError(f"model flip_cnn has no form {form!r}; valid forms: {', '.join(FORMS)}")
    check_size("flip_cnn", image_size, minimum=MIN_SIZE)
    cifar = form == "cifar" or (form == "auto" and in_channels != 1)
    return FlipCNN(in_channels, num_classes, image_size, cifar)
