"""The epoch loop every training recipe shares: mini-batches, cross-entropy, a test evaluation per epoch."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from boundary_cli.data.images import ImageData
from boundary_cli.training.evaluation import evaluate

log = logging.getLogger(__name__)

EpochHook = Callable[[int, nn.Module, torch.optim.Optimizer], None]  # (epoch, model, optimizer)
BatchHook = Callable[[int, Tensor, Tensor], None]  # (epoch, sample indices (B,), training logits (B, K))


@dataclass(frozen=True)
class LoopHooks:
    """What a caller of a training recipe adds to its epoch loop, whatever the recipe.

    ``on_batch(epoch, idx, logits)`` runs after every optimizer step with the 1-based epoch, the indices
    (B,) int64 of the batch's training samples and their logits (B, K) from the training forward
    (detached; train mode, on the perturbed or augmented batch when the recipe perturbs): the area
    under the margin is recorded this way. ``labels_at(epoch)`` gives the training labels (N,) int64 the
    loop trains on in 1-based ``epoch`` instead of data.train_y (the influenciae reference's label noise
    drawn anew every epoch).
    """

    on_batch: BatchHook | None = None
    labels_at: Callable[[int], Tensor] | None = None

CURVE_COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds")


def fit_epochs(model: nn.Module, data: ImageData, optimizer: torch.optim.Optimizer, *, epochs: int,
               batch_size: int, seed: int, device: torch.device, progress: bool | None,
               lr_at: Callable[[float], float] | None = None, grad_clip: float | None = None,
               shuffle: bool = True,
               on_epoch: EpochHook | None = None,
               perturb: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None,
               after_epoch: Callable[[dict], None] | None = None,
               hooks: LoopHooks | None = None) -> pd.DataFrame:
    """Train ``model`` (already on ``device``) with ``optimizer`` on data.train_x (N, C, H, W) and
    data.train_y (N,) for ``epochs`` epochs of mini-batches (channels_last), evaluating on the test set
    after each.

    ``shuffle``: a new permutation per epoch from a generator seeded with ``seed``; otherwise batches go
    in file order every epoch. ``lr_at(t)``, when given, sets the learning rate before each step, t
    being the fractional epoch at the step's end. ``grad_clip``: clip the gradient norm to it.
    ``on_epoch(epoch, model, optimizer)`` runs after each epoch's evaluation (epoch counted from 1,
    model in eval mode; the optimizer's state is what a checkpoint of the run keeps).
    ``perturb(model, xb, yb)``, when given, returns a perturbation (B, C, H, W) that is added to each
    mini-batch before the training forward (adversarial training; data augmentation, as augmented
    minus original batch, in training=lcr_adam; train_loss and train_accuracy are then those of the
    perturbed batches). ``after_epoch(row)`` gets each epoch's curve row (a dict of
    :data:`CURVE_COLUMNS`) before ``on_epoch``: a recipe's own schedule reacting to the training loss.
    ``hooks``: see :class:`LoopHooks`. ``progress``: tqdm bar on/off, None for
    on when stderr is a terminal; without a bar a log line per epoch. Returns the curve, one row per
    epoch with columns :data:`CURVE_COLUMNS`; ``lr`` is ``lr_at(epoch)`` or the optimizer's learning
    rate. The model is left in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    x, y = data.train_x, data.train_y
    n = x.shape[0]
    steps = math.ceil(n / batch_size)
    rows = []
    bar = tqdm(range(epochs), desc=f"training {data.name}", unit="epoch",
               disable=None if progress is None else not progress)
    for epoch in bar:
        start = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
        if hooks is not None and hooks.labels_at is not None:
            y = hooks.labels_at(epoch + 1)
        loss_sum, correct = 0.0, 0
        for b in range(steps):
            idx = order[b * batch_size : (b + 1) * batch_size]
            xb = x[idx].to(device).contiguous(memory_format=torch.channels_last)
            yb = y[idx].to(device)
            if perturb is not None:
                xb = xb + perturb(model, xb, yb)
            if lr_at is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(epoch + (b + 1) / steps)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            loss_sum += float(loss.detach()) * len(idx)
            if hooks is not None and hooks.on_batch is not None:
                hooks.on_batch(epoch + 1, idx, logits.detach())
            correct += int((logits.argmax(1) == yb).sum())
        model.eval()
        test_loss, test_acc = evaluate(model, data.test_x, data.test_y, device=device)
        lr = lr_at(epoch + 1) if lr_at is not None else float(optimizer.param_groups[0]["lr"])
        rows.append({"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / n, "train_accuracy": correct / n,
                     "test_loss": test_loss, "test_accuracy": test_acc, "seconds": time.perf_counter() - start})
        bar.set_postfix(loss=f"{loss_sum / n:.3f}", test_acc=f"{test_acc:.3f}")
        if bar.disable:  # no terminal (SLURM logs, pipes): a line per epoch instead of the bar
            log.info("epoch %d/%d: train loss %.4f, train accuracy %.4f, test accuracy %.4f (%.1f s)",
                     epoch + 1, epochs, loss_sum / n, correct / n, test_acc, rows[-1]["seconds"])
        if after_epoch is not None:
            after_epoch(rows[-1])
        if on_epoch is not None:
            on_epoch(epoch + 1, model, optimizer)
    model.eval()
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))
