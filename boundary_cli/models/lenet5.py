"""The LeNet-5 of activation_analysis (METHODS.md §4.2): no padding and no normalisation, 28x28 inputs;
not hold-me-tight's ``lenet`` (which pads its first convolution: 400 features after pool2, not 256)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from boundary_cli.errors import BoundaryError
from boundary_cli.models.inputs import check_size

INITS = ("default", "xavier_uniform", "normal", "kaiming_uniform")


class LeNet5(nn.Module):
    """conv(C->6, 5)-ReLU-pool2 (24->12), conv(6->16, 5)-ReLU-pool2 (8->4), fc 256->120-ReLU->84-ReLU->
    num_classes; x (B, C, 28, 28) -> logits (B, num_classes).

    ``init`` re-draws the weights (not the biases) of the five layers: ``default`` (PyTorch's),
    ``xavier_uniform``, ``normal`` (N(0, 0.01²)) or ``kaiming_uniform`` (torch's function with its
    defaults), the reference's grid. ``tap_layers``: pool2 (B, 16, 4, 4) = 256 features, the post-ReLU
    fc1 (B, 120) and fc2 (B, 84), and the logits fc3 (B, num_classes): the meta-network's four tokens.
    """

    tap_layers = ("pool2", "relu_fc1", "relu_fc2", "fc3")

    def __init__(self, in_channels: int, num_classes: int, init: str = "default") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.relu_fc1 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu_fc2 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)
        reinit_weights(self, init)

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool1(F.relu(self.conv1(x)))
        out = self.pool2(F.relu(self.conv2(out)))
        out = self.relu_fc1(self.fc1(out.flatten(1)))
        out = self.relu_fc2(self.fc2(out))
        return self.fc3(out)


def reinit_weights(model: nn.Module, init: str) -> None:
    """Re-draw the weight of every Conv2d and Linear of ``model`` by ``init`` (one of :data:`INITS`;
    ``default`` keeps PyTorch's); biases are left as they are."""
    if init not in INITS:
        raise BoundaryError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
    if init == "default":
        return
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if init == "xavier_uniform":
                nn.init.xavier_uniform_(m.weight)
            elif init == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            else:
                nn.init.kaiming_uniform_(m.weight)


def lenet5(in_channels: int, num_classes: int, image_size: tuple[int, int], init: str = "default") -> nn.Module:
    """Build a :class:`LeNet5` for images (B, in_channels, 28, 28), giving logits (B, num_classes).

    Raises BoundaryError for any other image size or an unknown ``init``.
    """
    check_size("lenet5", image_size, exact=28)
    return LeNet5(in_channels, num_classes, init)
