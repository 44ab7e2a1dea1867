"""hold-me-tight's CIFAR-10 VGG19 without batch norm (same attribute names and initialisation)."""

from __future__ import annotations

import math

from torch import Tensor, nn

from boundary_cli.models.inputs import check_size

CFG_19: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                           512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class VGG(nn.Module):
    """``features`` (3x3 conv + ReLU per cfg entry, 2x2 max-pool per "M", then AvgPool2d(1)) and
    ``classifier`` (512-512-num_classes with dropout); x (B, C, 32, 32) -> logits (B, num_classes).

    ``tap_layers``: the five max-pools of ``features`` (VGG19 layout), (B, 64, 16, 16) to (B, 512, 1, 1).
    """

    tap_layers = ("features.4", "features.9", "features.18", "features.27", "features.36")

    def __init__(self, in_channels: int, num_classes: int, cfg: list[int | str] = CFG_19) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for entry in cfg:
            if entry == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(entry), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = int(entry)
        layers.append(nn.AvgPool2d(kernel_size=1, stride=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(),
            nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(),
            nn.Linear(512, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


def vgg19(in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """Build VGG19 (no batch norm) for images (B, in_channels, 32, 32), giving logits (B, num_classes).

    Raises BoundaryError for any other image size.
    """
    check_size("vgg19", image_size, exact=32)
    return VGG(in_channels, num_classes)
