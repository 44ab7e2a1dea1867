"""Label noise for the mislabeled-sample benchmark (influenciae's, METHODS.md §5.4): each training
label is replaced, with probability ``rate``, by a class drawn uniformly from the other classes.

By default the noise is drawn once from its own seed. The reference re-draws the wrong class of every
noisy point at every epoch (an unseeded ``tf.random`` inside its data pipeline; the noisy positions
stay fixed): ``redraw_each_epoch=True`` reproduces that, seeded. The noise is a
:class:`~boundary_cli.data.modifier.DataModifier`, so the noisy model is stored under a key of its
own and never stands in for the clean one.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from boundary_cli.data.images import ImageData
from boundary_cli.data.modifier import DataModifier
from boundary_cli.errors import BoundaryError

REDRAW_SEED_STRIDE = 100_003  # epoch e >= 2 draws its wrong classes from seed * stride + e


def _other_class(labels: Tensor, n_classes: int, gen: torch.Generator) -> Tensor:
    """For each label (N,) a class drawn uniformly from the n_classes - 1 others (N,) int64."""
    other = torch.randint(0, n_classes - 1, (len(labels),), generator=gen)
    return other + (other >= labels).long()


def noisy_labels(labels: Tensor, n_classes: int, rate: float, seed: int) -> tuple[Tensor, Tensor]:
    """Labels (N,) int64 with a share ``rate`` replaced (each point independently) by a uniformly
    drawn other class. Returns (new labels (N,), noisy (N,) bool). The same (labels, rate, seed)
    always give the same result; a larger rate with the same seed keeps every point a smaller rate
    made noisy (the selection thresholds one uniform draw per point) and its wrong class."""
    if not 0 <= rate <= 1:
        raise ValueError(f"the noise rate must be in [0, 1], got {rate}")
    if n_classes < 2:
        raise ValueError("label noise needs at least two classes")
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.rand(len(labels), generator=gen)
    y = labels.cpu().long()
    other = _other_class(y, n_classes, gen)
    noisy = u < rate
    return torch.where(noisy, other, y).to(labels.device), noisy.to(labels.device)


def redrawn_labels(labels: Tensor, n_classes: int, rate: float, seed: int, epoch: int) -> Tensor:
    """The labels (N,) of 1-based ``epoch`` when the wrong classes are drawn anew every epoch: the
    points :func:`noisy_labels` makes noisy stay noisy, each with a fresh uniform other class (epoch 1:
    exactly :func:`noisy_labels`' labels; every epoch fixed by (seed, epoch))."""
    given, noisy = noisy_labels(labels, n_classes, rate, seed)
    if epoch <= 1:
        return given
    gen = torch.Generator().manual_seed(int(seed) * REDRAW_SEED_STRIDE + int(epoch))
    y = labels.cpu().long()
    return torch.where(noisy.cpu(), _other_class(y, n_classes, gen), y).to(labels.device)


def label_noise(rate: float, seed: int, redraw_each_epoch: bool = False) -> DataModifier:
    """The modifier that gives the training split :func:`noisy_labels` (the test split stays clean);
    with ``redraw_each_epoch`` the loop trains on :func:`redrawn_labels` of each epoch (the key says so)."""
    def apply(data: ImageData) -> ImageData:
        y, noisy = noisy_labels(data.train_y, data.num_classes, rate, seed)
        if not noisy.any():  # before any training: a noisy model without noise would only waste the run
            raise BoundaryError(f"label noise rate {rate:g} with seed {seed} makes none of the {len(y)} training "
                                f"labels noisy (rate x N = {rate * len(y):.2f}); raise the rate or use more data")
        return replace(data, train_y=y)

    def labels_at(data: ImageData, epoch: int) -> Tensor:
        return redrawn_labels(data.train_y, data.num_classes, rate, seed, epoch)

    params = dict(rate=float(rate), seed=int(seed))
    if redraw_each_epoch:  # absent when off, so the store keys of models trained before stay valid
        params["redraw_each_epoch"] = True
    return DataModifier(name="label_noise", params=params, apply=apply,
                        labels_at=labels_at if redraw_each_epoch else None)
