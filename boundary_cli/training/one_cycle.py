"""The reference recipe of hold-me-tight: SGD with a triangular one-cycle learning rate."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from boundary_cli.data.images import ImageData
from boundary_cli.training.evaluation import evaluate

log = logging.getLogger(__name__)


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
            progress: bool | None = None) -> pd.DataFrame:
        """Train ``model`` (already on ``device``) on data.train_x/train_y; evaluate on the test set
        after every epoch.

        Returns the training curve, one row per epoch: epoch, lr, train_loss, train_accuracy,
        test_loss, test_accuracy, seconds.
        """
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=self.momentum,
                              weight_decay=self.weight_decay)
        x, y = data.train_x, data.train_y
        n = x.shape[0]
        steps = math.ceil(n / self.batch_size)
        rows = []
        bar = tqdm(range(self.epochs), desc=f"training {data.name}", unit="epoch",
                   disable=None if progress is None else not progress)
        for epoch in bar:
            start = time.perf_counter()
            model.train()
            order = torch.randperm(n, generator=gen)
            loss_sum, correct = 0.0, 0
            for b in range(steps):
                idx = order[b * self.batch_size : (b + 1) * self.batch_size]
                xb = x[idx].to(device).contiguous(memory_format=torch.channels_last)
                yb = y[idx].to(device)
                for group in opt.param_groups:
                    group["lr"] = self.lr_at(epoch + (b + 1) / steps)
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
                opt.step()
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == yb).sum())
            model.eval()
            test_loss, test_acc = evaluate(model, data.test_x, data.test_y, device=device)
            rows.append(dict(epoch=epoch + 1, lr=self.lr_at(epoch + 1), train_loss=loss_sum / n,
                             train_accuracy=correct / n, test_loss=test_loss, test_accuracy=test_acc,
                             seconds=time.perf_counter() - start))
            bar.set_postfix(loss=f"{loss_sum / n:.3f}", test_acc=f"{test_acc:.3f}")
            if bar.disable:  # no terminal (SLURM logs, pipes): a line per epoch instead of the bar
                log.info("epoch %d/%d: train loss %.4f, train accuracy %.4f, test accuracy %.4f (%.1f s)",
                         epoch + 1, self.epochs, loss_sum / n, correct / n, test_acc, rows[-1]["seconds"])
        model.eval()
        return pd.DataFrame(rows)
