"""The normalisation layer and the two-part classifier (normalise, then the bare network)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """Map [0,1] pixels to the network's input scale: ``(x - mean) / std``.

    ``mean`` and ``std`` are each shape (C,) (per channel) or (C, H, W) (per pixel, e.g. the mean image of
    frequency-flipped data); they are stored as buffers shaped (1, C, 1, 1) or (1, C, H, W) so they broadcast
    over a batch (B, C, H, W). The output has the input's shape.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", _as_batch_shape(mean, "mean"))
        self.register_buffer("std", _as_batch_shape(std, "std"))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _as_batch_shape(value: Tensor, name: str) -> Tensor:
    value = torch.as_tensor(value, dtype=torch.float32).detach().clone()
    if value.dim() == 1:
        return value.view(1, -1, 1, 1)
    if value.dim() == 3:
        return value.unsqueeze(0)
    raise ValueError(f"Normalize {name} must have shape (C,) or (C, H, W), got {tuple(value.shape)}")


class Classifier(nn.Sequential):
    """``Classifier(normalize, net)``: x (B, C, H, W) in [0,1] pixel units -> logits (B, num_classes).

    The two children are named ``normalize`` and ``net``, so the state dict keys are ``normalize.mean``,
    ``normalize.std`` and ``net.<the bare network's keys>``; gradients and distances w.r.t. the input are
    therefore in pixel units.
    """

    def __init__(self, normalize: nn.Module, net: nn.Module) -> None:
        super().__init__()
        self.add_module("normalize", normalize)
        self.add_module("net", net)
