"""A small CNN for any image size >= 4 (the default model for scikit-learn's 8x8 digits)."""

from __future__ import annotations

from torch import Tensor, nn

from boundary_cli.errors import BoundaryError
from boundary_cli.models.inputs import check_size

MIN_SIZE = 4


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class GlobalAvgPool(nn.Module):
    """Mean over the spatial dims, (B, C, H, W) -> (B, C, 1, 1); unlike nn.AdaptiveAvgPool2d it has a
    batching rule under torch.func.vmap (stacked mutants)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


class SmallCNN(nn.Module):
    """Two stages of two 3x3 conv-BN-ReLU (``width`` then ``2*width`` channels) split by a 2x2 max-pool,
    global average pooling and a linear head; x (B, C, H, W) -> logits (B, num_classes).

    ``tap_layers``: the first conv-BN-ReLU (B, w, H, W), the max-pool (B, w, H/2, W/2), the third
    conv-BN-ReLU (B, 2w, H/2, W/2) and the global average (B, 2w, 1, 1), all post-activation.
    """

    tap_layers = ("features.2", "features.6", "features.9", "features.13")

    def __init__(self, in_channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, width),
            *_conv_bn_relu(width, width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(width, 2 * width),
            *_conv_bn_relu(2 * width, 2 * width),
            GlobalAvgPool(),
        )
        self.linear = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.features(x).flatten(1))


def small_cnn(in_channels: int, num_classes: int, image_size: tuple[int, int], width: int = 32) -> nn.Module:
    """Build a :class:`SmallCNN` for images (B, in_channels, H, W) with H, W >= 4, giving logits (B, num_classes).

    ``width`` is the number of channels of the first stage (the second has twice as many). Raises
    BoundaryError for images smaller than 4x4.
    """
    check_size("small_cnn", image_size, minimum=MIN_SIZE)
    if int(width) < 1:
        raise BoundaryError(f"model small_cnn needs width >= 1; got {width}")
    return SmallCNN(in_channels, num_classes, int(width))
