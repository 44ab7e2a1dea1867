"""hold-me-tight's MNIST LeNet (same attribute names, so its state dicts load)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from boundary_cli.models.inputs import check_size


class LeNet(nn.Module):
    """conv(C->6, 5, pad 2)-ReLU-pool2, conv(6->16, 5)-ReLU-pool2, fc 400->120->84->num_classes;
    x (B, C, 28, 28) -> logits (B, num_classes).

    The pools and the ReLUs after fc1 and fc2 are parameter-free submodules, so ``tap_layers`` can read
    post-activation outputs, (B, 6, 14, 14), (B, 16, 5, 5), (B, 120), (B, 84), while the state-dict keys
    stay hold-me-tight's.
    """

    tap_layers = ("pool1", "pool2", "relu_fc1", "relu_fc2")

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu_fc1 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu_fc2 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool1(F.relu(self.conv1(x)))
        out = self.pool2(F.relu(self.conv2(out)))
        out = out.flatten(1)
        out = self.relu_fc1(self.fc1(out))
        out = self.relu_fc2(self.fc2(out))
        return self.fc3(out)


def lenet(in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """Build a :class:`LeNet` for images (B, in_channels, 28, 28), giving logits (B, num_classes).

    Raises BoundaryError for any other image size.
    """
    check_size("lenet", image_size, exact=28)
    return LeNet(in_channels, num_classes)
