"""kuangliu's CIFAR DenseNet121 (same attribute names, so its state dicts load)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from boundary_cli.models.inputs import check_size


class Bottleneck(nn.Module):
    """BN-ReLU-1x1 conv (4g)-BN-ReLU-3x3 conv (g), concatenated in front of the input;
    x (B, C, H, W) -> (B, C + g, H, W)."""

    def __init__(self, in_planes: int, growth_rate: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth_rate, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv-2x2 average pool; x (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """kuangliu's DenseNet: 3x3 stem to 2g channels, four dense blocks with three transitions,
    BN-ReLU-avg_pool2d(4)-linear head; x (B, C, 32, 32) -> logits (B, num_classes).

    ``tap_layers``: the three transitions (B, 128, 16, 16), (B, 256, 8, 8), (B, 512, 4, 4) and the last
    dense block (B, 1024, 4, 4), before the head's BN-ReLU.
    """

    tap_layers = ("trans1", "trans2", "trans3", "dense4")

    def __init__(self, in_channels: int, num_classes: int, nblocks: tuple[int, ...] = (6, 12, 24, 16),
                 growth_rate: int = 32, reduction: float = 0.5) -> None:
        super().__init__()
        self.growth_rate = growth_rate
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=3, padding=1, bias=False)
        for i, n in enumerate(nblocks, start=1):
            setattr(self, f"dense{i}", self._make_dense(planes, n))
            planes += n * growth_rate
            if i < len(nblocks):
                out_planes = int(math.floor(planes * reduction))
                setattr(self, f"trans{i}", Transition(planes, out_planes))
                planes = out_planes
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, num_classes)

    def _make_dense(self, in_planes: int, nblock: int) -> nn.Sequential:
        layers = []
        for _ in range(nblock):
            layers.append(Bottleneck(in_planes, self.growth_rate))
            in_planes += self.growth_rate
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        out = self.trans1(self.dense1(out))
        out = self.trans2(self.dense2(out))
        out = self.trans3(self.dense3(out))
        out = self.dense4(out)
        out = F.avg_pool2d(F.relu(self.bn(out)), 4)
        return self.linear(out.flatten(1))


def densenet121(in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """Build kuangliu's DenseNet121 for images (B, in_channels, 32, 32), giving logits (B, num_classes).

    Raises BoundaryError for any other image size.
    """
    check_size("densenet121", image_size, exact=32)
    return DenseNet(in_channels, num_classes)
