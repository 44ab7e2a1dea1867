"""ConvNetCIFAR of the influenciae benchmark (METHODS.md §5.4): a keras-contrib ResNet v1 backbone with
no pooling, then Flatten, Dense 128, Dropout 0.4, LeakyReLU and a dense head."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from boundary_cli.models.inputs import check_size
from boundary_cli.models.resnet20 import keras_batch_norm

MIN_SIZE = 4
WIDTHS = (16, 32, 64)
BLOCKS_PER_STAGE = 3
KERAS_LEAKY_SLOPE = 0.3  # tf.keras.layers.LeakyReLU's default alpha


def conv_bn(in_planes: int, planes: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Conv (with bias, 'same'-style padding) then Keras BatchNorm: (B, in, H, W) -> (B, planes, ⌈H/s⌉, ⌈W/s⌉)."""
    return nn.Sequential(nn.Conv2d(in_planes, planes, kernel, stride=stride, padding=kernel // 2),
                         keras_batch_norm(planes))


class BasicBlockV1(nn.Module):
    """keras-contrib ``basic_block`` with ``residual_unit='v1'``: conv3x3-BN-ReLU (stride ``stride``),
    conv3x3-BN-ReLU, plus a shortcut (identity, or 1x1 conv + BN when the shape changes), summed with
    no activation after the sum; (B, in_planes, H, W) -> (B, planes, ⌈H/stride⌉, ⌈W/stride⌉)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.unit1 = conv_bn(in_planes, planes, 3, stride)
        self.unit2 = conv_bn(planes, planes, 3)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = conv_bn(in_planes, planes, 1, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.unit2(F.relu(self.unit1(x))))
        return out + self.shortcut(x)


class ConvNetCIFAR(nn.Module):
    """Stem conv3x3 16-BN-ReLU, three stages ``layer1..3`` of 3 :class:`BasicBlockV1` (16/32/64 filters,
    stride 2 at the first block of stages 2 and 3), a final BN-ReLU (``head_bn``), Flatten (64·⌈H/4⌉·⌈W/4⌉
    features: 4,096 at 32x32), ``dense`` Linear(·, 128), Dropout(``dropout``), LeakyReLU(``leaky_slope``)
    and ``linear`` Linear(128, num_classes); x (B, C, H, W) -> logits (B, num_classes).

    Initialisation as the reference: convolutions he_normal (fan_in) with zero biases, both dense
    layers Keras' default glorot_uniform with zero biases (its ``use_regu=False`` default), BN gamma 1,
    beta 0 with Keras' epsilon and momentum. 3x32x32 inputs and 10 classes give 798,442 trainable
    parameters (the reference's ≈0.8M; Keras also counts the 1,696 BN moving statistics). Padding is PyTorch's symmetric one (see :class:`~boundary_cli.models.resnet20.ResNet20`).

    ``tap_layers``: the nine residual block outputs and ``dense`` (B, 128), before dropout.
    """

    tap_layers = ("layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1", "layer2.2",
                  "layer3.0", "layer3.1", "layer3.2", "dense")

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int], width: int = 128,
                 dropout: float = 0.4, leaky_slope: float = KERAS_LEAKY_SLOPE) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, WIDTHS[0], 3)
        self.layer1 = _stage(WIDTHS[0], WIDTHS[0], stride=1)
        self.layer2 = _stage(WIDTHS[0], WIDTHS[1], stride=2)
        self.layer3 = _stage(WIDTHS[1], WIDTHS[2], stride=2)
        self.head_bn = keras_batch_norm(WIDTHS[2])
        h, w = (math.ceil(math.ceil(s / 2) / 2) for s in image_size)
        self.dense = nn.Linear(WIDTHS[2] * h * w, width)
        self.dropout = nn.Dropout(dropout)
        self.leaky_slope = float(leaky_slope)
        self.linear = nn.Linear(width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.stem(x))
        out = F.relu(self.head_bn(self.layer3(self.layer2(self.layer1(out)))))
        out = self.dense(out.flatten(1))
        return self.linear(F.leaky_relu(self.dropout(out), self.leaky_slope))


def _stage(in_planes: int, planes: int, stride: int) -> nn.Sequential:
    blocks = [BasicBlockV1(in_planes, planes, stride)]
    blocks += [BasicBlockV1(planes, planes) for _ in range(BLOCKS_PER_STAGE - 1)]
    return nn.Sequential(*blocks)


def convnet_cifar(in_channels: int, num_classes: int, image_size: tuple[int, int], width: int = 128,
                  dropout: float = 0.4, leaky_slope: float = KERAS_LEAKY_SLOPE) -> nn.Module:
    """Build a :class:`ConvNetCIFAR` for images (B, in_channels, H, W) with H, W >= 4, giving logits
    (B, num_classes). Raises BoundaryError for smaller images."""
    check_size("convnet_cifar", image_size, minimum=MIN_SIZE)
    return ConvNetCIFAR(in_channels, num_classes, tuple(image_size), width, dropout, leaky_slope)
