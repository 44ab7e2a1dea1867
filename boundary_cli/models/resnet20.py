"""ResNet20 v1 of the lcr reference (the Keras ``resnet_v1`` of depth 20, as a PyTorch module)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from boundary_cli.models.inputs import check_size

MIN_SIZE = 8
WIDTHS = (16, 32, 64)
BLOCKS_PER_STAGE = 3


def keras_batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with Keras' defaults: epsilon 1e-3 and moving averages kept with momentum 0.99
    (PyTorch's ``momentum`` is the weight of the new batch: 1 − 0.99)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class ResidualBlock(nn.Module):
    """Keras ``resnet_v1`` block: conv3x3-BN-ReLU, conv3x3-BN, plus a ``shortcut`` (identity, or a 1x1 conv
    with bias and no BN when the shape changes), then ReLU of the sum;
    x (B, in_planes, H, W) -> (B, planes, ceil(H/stride), ceil(W/stride)), non-negative.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1)
        self.bn1 = keras_batch_norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
        self.bn2 = keras_batch_norm(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """conv3x3 16-BN-ReLU, three stages ``layer1..3`` of 3 :class:`ResidualBlock` (16/32/64 filters, stride 2
    at the first block of stages 2 and 3), global average pooling (the reference's AvgPool 8 at 32x32) and a
    linear head; x (B, C, H, W) -> logits (B, num_classes).

    Convolutions and the head have Keras' he_normal weights (fan_in) and zero biases; BN starts at
    gamma 1, beta 0, with Keras' epsilon and moving-average momentum (:func:`keras_batch_norm`). Padding is PyTorch's symmetric ``padding=1``, so on even sizes a stride-2 conv samples
    the pixels Keras' asymmetric 'same' padding shifts by one; the layout, shapes and parameter count
    (273,066 for 3x32x32 and 10 classes) are the reference's.

    ``tap_layers``: the nine residual block outputs, post-ReLU, (B, 16, H, W) x3, (B, 32, H/2, W/2) x3,
    (B, 64, H/4, W/4) x3 (sizes rounded up).
    """

    tap_layers = ("layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1", "layer2.2",
                  "layer3.0", "layer3.1", "layer3.2")

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, WIDTHS[0], 3, padding=1)
        self.bn1 = keras_batch_norm(WIDTHS[0])
        self.layer1 = _stage(WIDTHS[0], WIDTHS[0], stride=1)
        self.layer2 = _stage(WIDTHS[0], WIDTHS[1], stride=2)
        self.layer3 = _stage(WIDTHS[1], WIDTHS[2], stride=2)
        self.linear = nn.Linear(WIDTHS[2], num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = out.mean(dim=(2, 3))  # global average pooling (vmap-friendly, unlike adaptive_avg_pool2d)
        return self.linear(out)


def _stage(in_planes: int, planes: int, stride: int) -> nn.Sequential:
    blocks = [ResidualBlock(in_planes, planes, stride)]
    blocks += [ResidualBlock(planes, planes) for _ in range(BLOCKS_PER_STAGE - 1)]
    return nn.Sequential(*blocks)


def resnet20(in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """Build a :class:`ResNet20` for images (B, in_channels, H, W) with H, W >= 8, giving logits (B, num_classes).

    Raises BoundaryError for images smaller than 8x8.
    """
    check_size("resnet20", image_size, minimum=MIN_SIZE)
    return ResNet20(in_channels, num_classes)
