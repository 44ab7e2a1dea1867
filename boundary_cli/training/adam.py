"""The Decision-Flip-Experiments recipe: Adam at a constant learning rate, batches in file order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from boundary_cli.data.images import ImageData
from boundary_cli.errors import BoundaryError
from boundary_cli.training.loop import EpochHook, LoopHooks, fit_epochs


@dataclass
class AdamRecipe:
    """Adam (``lr``, ``betas``, ``eps``, ``weight_decay``), cross-entropy, no schedule, no clipping, no
    augmentation. ``shuffle=False`` (the reference) feeds the training set in file order every epoch,
    so the seed only sets the initial weights. ``betas`` may be any pair (a YAML list); it is kept as a
    tuple of floats.
    """

    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    betas: Sequence[float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    shuffle: bool = False

    def __post_init__(self) -> None:
        betas = tuple(float(b) for b in self.betas)
        if len(betas) != 2:
            raise BoundaryError(f"training recipe AdamRecipe needs two betas; got {list(betas)}")
        self.betas = betas

    def fit(self, model: nn.Module, data: ImageData, *, seed: int, device: torch.device,
            progress: bool | None = None, on_epoch: EpochHook | None = None,
            hooks: LoopHooks | None = None) -> pd.DataFrame:
        """Train ``model`` (already on ``device``) on data.train_x (N, C, H, W) / data.train_y (N,);
        evaluate on the test set after every epoch and then call ``on_epoch(epoch, model, optimizer)``
        when given, with the caller's ``hooks`` (see :func:`~boundary_cli.training.loop.fit_epochs`).

        Returns the training curve, one row per epoch: epoch, lr, train_loss, train_accuracy,
        test_loss, test_accuracy, seconds.
        """
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, betas=self.betas, eps=self.eps,
                               weight_decay=self.weight_decay)
        return fit_epochs(model, data, opt, epochs=self.epochs, batch_size=self.batch_size, seed=seed,
                          device=device, progress=progress, shuffle=self.shuffle, on_epoch=on_epoch, hooks=hooks)
