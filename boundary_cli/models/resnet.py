"""ResNet18 with the CIFAR stem (kuangliu pytorch-cifar) or the ImageNet stem (hold-me-tight's MNIST ResNet18),
and torchvision's ResNet-50 (hold-me-tight's ImageNet model; robustness-library checkpoints use its keys)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from boundary_cli.errors import BoundaryError
from boundary_cli.models.inputs import check_size
from boundary_cli.models.torchvision_zoo import published_state_dict

MIN_SIZE = 8
RESNET50_MIN_SIZE = 32  # five stride-2 steps take 32x32 to 1x1 at layer4; below that the stem pads more than it sees
STEMS = ("cifar", "imagenet")


class BasicBlock(nn.Module):
    """kuangliu's BasicBlock: two 3x3 conv-BN, plus an identity or 1x1 conv-BN ``shortcut``;
    x (B, in_planes, H, W) -> (B, planes, H/stride, W/stride)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """kuangliu's ResNet18 (3x3 stem, stages 64/128/256/512, strides 1/2/2/2) with global average pooling
    instead of ``avg_pool2d(4)`` (the same for 32x32); x (B, C, H, W) -> logits (B, num_classes).

    ``tap_layers``: the four residual stages, (B, 64, H, W) to (B, 512, H/8, W/8), post-ReLU.
    """

    tap_layers = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, 2, stride=1)
        self.layer2 = self._make_layer(128, 2, stride=2)
        self.layer3 = self._make_layer(256, 2, stride=2)
        self.layer4 = self._make_layer(512, 2, stride=2)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (num_blocks - 1):
            blocks.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = out.mean(dim=(2, 3))  # global average pooling (vmap-friendly, unlike adaptive_avg_pool2d)
        return self.linear(out)


class ImageNetResNet18(tv_resnet.ResNet):
    """torchvision's ResNet18 with ``conv1`` a 7x7 stride-2 conv on ``in_channels`` (hold-me-tight's MNIST
    ResNet18); x (B, C, H, W) -> logits (B, num_classes).

    ``tap_layers``: the four residual stages, (B, 64, H/4, W/4) to (B, 512, H/32, W/32) (sizes rounded up),
    post-ReLU.
    """

    tap_layers = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(tv_resnet.BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)


def resnet18(in_channels: int, num_classes: int, image_size: tuple[int, int], stem: str = "cifar") -> nn.Module:
    """Build ResNet18 for images (B, in_channels, H, W) with H, W >= 8, giving logits (B, num_classes).

    ``stem="cifar"``: kuangliu's CIFAR ResNet18 (keys conv1, bn1, layer1..4 with ``shortcut``, linear).
    ``stem="imagenet"``: torchvision's ResNet18 with ``conv1`` replaced by a 7x7 stride-2 conv on
    ``in_channels`` (hold-me-tight's MNIST ResNet18; keys conv1, bn1, layer*.downsample, fc).
    Raises BoundaryError for an unknown stem or images smaller than 8x8.
    """
    if stem not in STEMS:
        raise BoundaryError(f"model resnet18 has no stem {stem!r}; valid stems: {', '.join(STEMS)}")
    check_size("resnet18", image_size, minimum=MIN_SIZE)
    if stem == "cifar":
        return CifarResNet18(in_channels, num_classes)
    return ImageNetResNet18(in_channels, num_classes)


class ImageNetResNet50(tv_resnet.ResNet):
    """torchvision's ResNet-50 (Bottleneck x [3, 4, 6, 3], same state-dict keys), with ``conv1`` a 7x7 stride-2
    conv on ``in_channels`` when that is not 3; x (B, C, H, W) -> logits (B, num_classes).

    ``tap_layers``: the four residual stages, (B, 256, H/4, W/4) to (B, 2048, H/32, W/32) (sizes rounded up),
    post-ReLU.
    """

    tap_layers = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(tv_resnet.Bottleneck, [3, 4, 6, 3], num_classes=num_classes)
        if in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)


def resnet50(in_channels: int, num_classes: int, image_size: tuple[int, int], pretrained: bool = False) -> nn.Module:
    """Build torchvision's ResNet-50 for images (B, in_channels, H, W) with H, W >= 32, giving logits
    (B, num_classes); keys as torchvision's (conv1, bn1, layer1..4 with downsample, fc), so torchvision,
    hold-me-tight and robustness-library state dicts load. ``pretrained=True`` loads torchvision's
    ``ResNet50_Weights.IMAGENET1K_V1`` (hold-me-tight's ``resnet50(pretrained=True)``) from
    ``$TORCH_HOME/hub/checkpoints``, downloading it when absent; it needs 3 channels and 1000 classes.
    Raises BoundaryError for small images, a pretrained net of another shape, or weights that cannot be had.
    """
    check_size("resnet50", image_size, minimum=RESNET50_MIN_SIZE)
    if pretrained and (in_channels, num_classes) != (3, 1000):
        raise BoundaryError(
            f"model resnet50 with pretrained=true is the ImageNet net (3 channels, 1000 classes), but the dataset "
            f"has {in_channels} channel(s) and {num_classes} classes; set model.pretrained=false"
        )
    net = ImageNetResNet50(in_channels, num_classes)
    if pretrained:
        weights = tv_resnet.ResNet50_Weights.IMAGENET1K_V1
        net.load_state_dict(published_state_dict(weights, "ResNet-50 (pretrained=true)"))
    return net
