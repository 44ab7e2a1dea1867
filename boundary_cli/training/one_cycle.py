"""The reference recipe of hold-me-tight: SGD with a triangular one-cycle learning rate."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from boundary_cli.data.images import ImageData
from boundary_cli.training.loop import EpochHook, LoopHooks, fit_epochs


@dataclass
class OneCycleSGD:
    """SGD(momentum, weight decay), cross-entropy, gradient-norm clipping, no augmentation.

    The learning rate changes every iteration, linearly from 0 to ``lr_max`` at epoch
    ``floor(peak_fraction * epochs)`` (the reference's ``⌊2E/5⌋``; the exact fraction when that
    floors to 0) and back to 0 at the end. Defaults are the reference recipe (30 epochs, batch 128,
    peak 0.21, momentum 0.9, weight decay 5e-4, clip 0.5).
    """

    epochs: int = 30
    batch_size: int = 128
    lr_max: float = 0.21
    peak_fraction: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    grad_clip: float | None = 0.5

    def lr_at(self, t: float) -> float:
        """Learning rate at fractional epoch t in [0, epochs]."""
        peak = math.floor(self.peak_fraction * self.epochs) or self.peak_fraction * self.epochs
        return float(np.interp(t, [0, peak, self.epochs], [0, self.lr_max, 0]))

    def fit(self, model: nn.Module, data: ImageData, *, seed: int, device: torch.device,
            progress: bool | None = None, on_epoch: EpochHook | None = None,
            hooks: LoopHooks | None = None) -> pd.DataFrame:
        """Train ``model`` (already on ``device``) on data.train_x (N, C, H, W) / data.train_y (N,),
        reshuffled every epoch from ``seed``; evaluate on the test set after every epoch and then call
        ``on_epoch(epoch, model, optimizer)`` when given, with the caller's ``hooks`` (see
        :func:`~boundary_cli.training.loop.fit_epochs`).

        Returns the training curve, one row per epoch: epoch, lr, train_loss, train_accuracy,
        test_loss, test_accuracy, seconds.
        """
        opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=self.momentum,
                              weight_decay=self.weight_decay)
        return fit_epochs(model, data, opt, epochs=self.epochs, batch_size=self.batch_size, seed=seed,
                          device=device, progress=progress, lr_at=self.lr_at, grad_clip=self.grad_clip,
                          shuffle=True, on_epoch=on_epoch, hooks=hooks, perturb=self.perturbation(data, seed, device))

    def perturbation(self, data: ImageData, seed: int, device: torch.device
                     ) -> Callable[[nn.Module, Tensor, Tensor], Tensor] | None:
        """What is added to every training batch: nothing here (adversarial recipes override this)."""
        return None
