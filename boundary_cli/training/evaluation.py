"""Loss, accuracy and predictions of a classifier on a whole tensor, in batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, *, batch_size: int = 1024, device: torch.device | str = "cpu") -> Tensor:
    """Logits of ``model`` for x (N, C, H, W), computed in batches on ``device``: (N, K) on CPU."""
    out = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1024,
             device: torch.device | str = "cpu") -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode on x (N, C, H, W), y (N,)."""
    was_training = model.training
    model.eval()
    try:
        logits = predict(model, x, batch_size=batch_size, device=device)
    finally:
        model.train(was_training)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())
