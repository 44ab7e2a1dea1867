"""Label noise for the mislabeled-sample benchmark (influenciae's, METHODS.md §5.4): each training
label is replaced, with probability ``rate``, by a class drawn uniformly from the other classes.

The noise is drawn once from its own seed (the reference re-draws the wrong class every epoch, an
unseeded ``tf.random`` inside its data pipeline; not reproduced here), and it is a
:class:`~boundary_cli.data.modifier.DataModifier`, so the noisy model is stored under a key of its
own and never stands in for the clean one.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from boundary_cli.data.images import ImageData
from boundary_cli.data.modifier import DataModifier


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
    other = torch.randint(0, n_classes - 1, (len(labels),), generator=gen)
    y = labels.cpu().long()
    other = other + (other >= y).long()  # uniform over the n_classes - 1 classes that are not y
    noisy = u < rate
    return torch.where(noisy, other, y).to(labels.device), noisy.to(labels.device)


def label_noise(rate: float, seed: int) -> DataModifier:
    """The modifier that gives the training split :func:`noisy_labels` (the test split stays clean)."""
    def apply(data: ImageData) -> ImageData:
        y, _ = noisy_labels(data.train_y, data.num_classes, rate, seed)
        return replace(data, train_y=y)

    return DataModifier(name="label_noise", params=dict(rate=float(rate), seed=int(seed)), apply=apply)
