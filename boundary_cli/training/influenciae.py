"""The influenciae benchmark's training procedures (``Cifar10TrainingProcedure``, METHODS.md §5.4):
its default Adam recipe and its ``force_overfit`` SGD recipe, for ConvNetCIFAR or any other model.

Both train with cross-entropy on batches of 128, a random horizontal flip and a random translation of
up to 10% of the height and width drawn per image (Keras' ``RandomTranslation(0.1, 0.1, 'nearest')``,
bilinear, edge pixels fill), and Keras' L2 1e-4 on the convolution kernels (torch weight decay 2e-4,
coupled, on kernels only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn

from boundary_cli.data.images import ImageData
from boundary_cli.errors import BoundaryError
from boundary_cli.training.lcr_adam import conv_kernel_groups, shift_flip_perturbation
from boundary_cli.training.loop import EpochHook, LoopHooks, fit_epochs

OPTIMIZERS = ("adam", "sgd")


@dataclass
class Plateau:
    """Keras' ``ReduceLROnPlateau`` (mode min, ``min_delta`` 1e-4) as a multiplier of the learning rate:
    after ``patience`` epochs without the monitored loss improving by ``min_delta`` on its best, the
    multiplier is cut by ``factor`` (the rate never below ``min_lr``) and ``cooldown`` epochs pass
    before waiting starts again."""

    factor: float
    patience: int
    cooldown: int
    min_lr: float
    min_delta: float = 1e-4
    multiplier: float = 1.0
    best: float = math.inf
    wait: int = 0
    cooling: int = 0

    def step(self, loss: float, lr: float) -> None:
        """Record one epoch's ``loss`` and the rate ``lr`` it ran at (after the multiplier)."""
        if self.cooling > 0:
            self.cooling -= 1
            self.wait = 0
        if loss < self.best - self.min_delta:
            self.best, self.wait = loss, 0
        elif self.cooling == 0:
            self.wait += 1
            if self.wait >= self.patience and lr > self.min_lr:
                self.multiplier *= max(lr * self.factor, self.min_lr) / lr
                self.cooling, self.wait = self.cooldown, 0


@dataclass
class InfluenciaeRecipe:
    """``optimizer='adam'`` (the reference's default): Adam(``lr`` 1e-3, Keras' eps 1e-7) for 60 epochs,
    the rate multiplied by ``decay_factor`` 0.5 once the 0-based epoch index reaches each of
    ``decay_at`` (10, 20, 30, 40, 50), so 1-based epochs 1-10 run at 1e-3, 11-20 at 5e-4, ... 51-60
    at 3.125e-5. ``optimizer='sgd'`` (its ``force_overfit``): SGD(``lr`` 0.1, momentum 0.9), the rate
    of 0-based epoch e being ``lr · (lr_final / lr)^(e / decay_epochs)`` (0.1 to 1e-4 over 200 epochs).
    The rate is constant within an epoch.

    ``plateau``: the reference also registers ``ReduceLROnPlateau(factor √0.1, patience 3, cooldown 1,
    min_lr 5e-7)`` for Adam, but its ``LearningRateScheduler`` sets the rate from the schedule at every
    epoch start, so a reduction never outlives its epoch: parity is ``plateau=false``. ``plateau=true``
    keeps the reductions (a multiplier on the schedule, :class:`Plateau`), monitoring the training loss
    (the reference monitored its test set's loss, which a benchmark must not train on).

    Augmentation (``shift`` > 0 or ``flip``): one transform per image from a CPU generator seeded with
    ``seed`` (see :func:`~boundary_cli.training.lcr_adam.shift_flip_perturbation`); the
    reference flips before it translates, this after: with a symmetric shift distribution the two
    draw the same transforms. Not reproduced: the reference's shuffle buffer of 1,000 images (batches
    are drawn from a full reshuffle every epoch here) and Keras' eps placement in Adam.
    """

    optimizer: str = "adam"
    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3
    decay_at: Sequence[int] = (10, 20, 30, 40, 50)
    decay_factor: float = 0.5
    lr_final: float = 1e-4
    decay_epochs: int = 200
    momentum: float = 0.9
    betas: Sequence[float] = (0.9, 0.999)
    eps: float = 1e-7
    plateau: bool = False
    plateau_factor: float = math.sqrt(0.1)
    plateau_patience: int = 3
    plateau_cooldown: int = 1
    plateau_min_lr: float = 5e-7
    weight_decay: float = 2e-4
    shift: float = 0.1
    flip: bool = True
    shuffle: bool = True

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.optimizer not in OPTIMIZERS:
            raise BoundaryError(f"training recipe {name}: optimizer must be one of {', '.join(OPTIMIZERS)}, "
                                f"got {self.optimizer!r}")
        self.decay_at = tuple(int(a) for a in self.decay_at)
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2:
            raise BoundaryError(f"training recipe {name} needs two betas; got {list(self.betas)}")
        if not 0 <= self.shift < 1:
            raise BoundaryError(f"training recipe {name} needs shift in [0, 1) (a fraction of the image size); "
                                f"got {self.shift}")
        if self.optimizer == "sgd" and not (self.lr > 0 and self.lr_final > 0 and self.decay_epochs > 0):
            raise BoundaryError(f"training recipe {name}: the sgd schedule needs lr, lr_final and decay_epochs > 0")

    def schedule(self, epoch: int) -> float:
        """The scheduled learning rate of 1-based ``epoch`` (without plateau reductions)."""
        e = epoch - 1
        if self.optimizer == "sgd":
            return self.lr * (self.lr_final / self.lr) ** (e / self.decay_epochs)
        return self.lr * self.decay_factor ** sum(e >= a for a in self.decay_at)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        groups = conv_kernel_groups(model, self.weight_decay)
        if self.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum)
        return torch.optim.Adam(groups, lr=self.lr, betas=self.betas, eps=self.eps)

    def fit(self, model: nn.Module, data: ImageData, *, seed: int, device: torch.device,
            progress: bool | None = None, on_epoch: EpochHook | None = None,
            hooks: LoopHooks | None = None) -> pd.DataFrame:
        """Train ``model`` (already on ``device``) on data.train_x (N, C, H, W) / data.train_y (N,);
        evaluate on the test set after every epoch and then call ``on_epoch(epoch, model, optimizer)``
        when given, with the caller's ``hooks`` (see :func:`~boundary_cli.training.loop.fit_epochs`;
        train loss and accuracy are those of the augmented batches).

        Returns the training curve, one row per epoch: epoch, lr, train_loss, train_accuracy,
        test_loss, test_accuracy, seconds.
        """
        plateau = Plateau(self.plateau_factor, self.plateau_patience, self.plateau_cooldown,
                          self.plateau_min_lr) if self.plateau else None

        def lr_at(t: float) -> float:  # t in (e - 1, e] during 1-based epoch e
            return self.schedule(math.ceil(t)) * (plateau.multiplier if plateau is not None else 1.0)

        def after_epoch(row: dict) -> None:
            if plateau is not None:
                plateau.step(float(row["train_loss"]), float(row["lr"]))

        return fit_epochs(model, data, self.make_optimizer(model), epochs=self.epochs, batch_size=self.batch_size,
                          seed=seed, device=device, progress=progress, lr_at=lr_at, shuffle=self.shuffle,
                          on_epoch=on_epoch, hooks=hooks, after_epoch=after_epoch,
                          perturb=self.perturbation(seed))

    def perturbation(self, seed: int) -> Callable[[nn.Module, Tensor, Tensor], Tensor] | None:
        """The augmentation as what is added to each batch, ``shift_flip(x) - x`` (None when off)."""
        return shift_flip_perturbation(self.shift, self.flip, seed)
