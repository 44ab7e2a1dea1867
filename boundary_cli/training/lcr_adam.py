"""The lcr reference's own ResNet20 recipe: the Keras ``cifar10_resnet.py`` example (METHODS §3.2).

Adam with a step-decayed learning rate, batch 32, a random shift and horizontal flip drawn per image,
the per-pixel training mean subtracted (``model.normalization=pixel_mean``, which ``training=lcr_adam``
selects) and Keras' L2 1e-4 on the conv kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from boundary_cli.data.images import ImageData
from boundary_cli.errors import BoundaryError
from boundary_cli.training.loop import EpochHook, LoopHooks, fit_epochs

AUGMENT_SEED_OFFSET = 1_000_003  # the augmentation draws from seed + this, apart from the loop's shuffling


def shift_flip(x: Tensor, shifts: Tensor, flips: Tensor) -> Tensor:
    """Translate and mirror each image of x (B, C, H, W) on its own -> (B, C, H, W).

    ``shifts`` (B, 2) holds (dy, dx) in pixels, any real values: ``out[b, :, i, j] = x[b, :, i - dy, j - dx]``,
    bilinear between pixels, and a position outside the image takes the nearest edge pixel (Keras'
    ``fill_mode='nearest'`` with its order-1 interpolation, i.e. ``scipy.ndimage.shift(order=1, mode='nearest')``).
    Then the images where ``flips`` (B,) bool is true are mirrored left-right (Keras flips after the shift).
    """
    b, _, h, w = x.shape
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = -2 * shifts[:, 1].to(x) / max(w - 1, 1)  # align_corners=True: pixel j sits at 2j/(w-1) - 1
    theta[:, 1, 2] = -2 * shifts[:, 0].to(x) / max(h - 1, 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return torch.where(flips.to(x.device).view(b, 1, 1, 1), out.flip(-1), out)


def draw_shift_flip(batch: int, image_size: tuple[int, int], max_shift: float, flip: bool,
                    generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One random transform per image, on the CPU from ``generator``: shifts (batch, 2) = (dy, dx) uniform
    in [-max_shift * H, max_shift * H) x [-max_shift * W, max_shift * W) pixels (Keras' float
    width/height_shift_range) and flips (batch,) bool, each true with probability 1/2 (all false
    without ``flip``)."""
    size = torch.tensor([float(image_size[0]), float(image_size[1])])
    shifts = (torch.rand(batch, 2, generator=generator) * 2 - 1) * max_shift * size
    flips = torch.rand(batch, generator=generator) < 0.5
    return shifts, flips if flip else torch.zeros_like(flips)


def shift_flip_perturbation(shift: float, flip: bool, seed: int, center: Tensor | None = None
                            ) -> Callable[[nn.Module, Tensor, Tensor], Tensor] | None:
    """Per-image random shift and flip as a training loop's ``perturb(model, xb, yb)``: what is added to
    each batch, ``shift_flip(x - c) + c - x`` with ``c`` = ``center`` (C, H, W) or 0, the transforms
    drawn from a CPU generator seeded with ``seed + AUGMENT_SEED_OFFSET`` (see :func:`draw_shift_flip`).
    None when both are off."""
    if not shift and not flip:
        return None
    gen = torch.Generator().manual_seed(int(seed) + AUGMENT_SEED_OFFSET)

    def perturb(_net: nn.Module, xb: Tensor, _yb: Tensor) -> Tensor:
        shifts, flips = draw_shift_flip(xb.shape[0], xb.shape[-2:], shift, flip, gen)
        if center is None:
            return shift_flip(xb, shifts, flips) - xb
        return shift_flip(xb - center, shifts, flips) + center - xb

    return perturb


def conv_kernel_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups for Keras' L2 on convolution kernels only: [the kernels of every
    ``nn.Conv2d`` with ``weight_decay``, every other trainable parameter with 0]."""
    kernels = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad]
    chosen = {id(p) for p in kernels}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    return [dict(params=kernels, weight_decay=weight_decay), dict(params=rest, weight_decay=0.0)]


@dataclass
class LcrAdam:
    """Adam (``lr``, ``betas``, ``eps``; Keras' defaults), cross-entropy, batches reshuffled every epoch.

    Learning rate: Keras' ``lr_schedule(epoch)`` is called with the 0-based epoch index and multiplies
    ``lr`` by the factor of the last entry of ``decay_after`` the index is strictly greater than. With
    the defaults, 1-based epochs (as in training.csv) 1-81 run at 1e-3, 82-121 at 1e-4, 122-161 at
    1e-5, 162-181 at 1e-6 and 182-200 at 5e-7. The rate is constant within an epoch. (The example's
    ReduceLROnPlateau never acts: the scheduler resets the rate at every epoch start.)

    Weight decay ``weight_decay`` = 2 x Keras' L2 factor 1e-4 (the gradient of λ‖w‖² is 2λw), coupled
    as in Keras (added to the gradient before Adam), on the kernels of ``nn.Conv2d`` layers only (the
    1x1 shortcuts included); biases, BatchNorm and the dense head get none, as in the reference, whose
    Dense layer has no regulariser.

    Augmentation (``shift`` > 0 or ``flip``): every training image gets its own transform, drawn from a
    CPU generator seeded with ``seed + AUGMENT_SEED_OFFSET``; see :func:`draw_shift_flip` and
    :func:`shift_flip`. As Keras shifted the mean-subtracted images, the shift acts on ``x - m``
    (m: the per-pixel mean of the training images), so the edge fill replicates mean-subtracted
    pixels: the batch becomes ``shift_flip(x - m) + m``.

    Not reproduced: Keras' Adam puts eps outside the bias correction (a difference of order eps), and
    the Keras example's ModelCheckpoint (best test accuracy); the final epoch's weights are kept.
    """

    epochs: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    decay_after: Sequence[int] = (80, 120, 160, 180)
    decay_factors: Sequence[float] = (1e-1, 1e-2, 1e-3, 5e-4)
    betas: Sequence[float] = (0.9, 0.999)
    eps: float = 1e-7
    weight_decay: float = 2e-4
    shift: float = 0.1
    flip: bool = True
    shuffle: bool = True

    def __post_init__(self) -> None:
        name = type(self).__name__
        self.decay_after = tuple(int(a) for a in self.decay_after)
        self.decay_factors = tuple(float(f) for f in self.decay_factors)
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.decay_after) != len(self.decay_factors) or list(self.decay_after) != sorted(set(self.decay_after)):
            raise BoundaryError(f"training recipe {name} needs increasing decay_after epochs and one decay factor "
                                f"each; got {list(self.decay_after)} and {list(self.decay_factors)}")
        if len(self.betas) != 2:
            raise BoundaryError(f"training recipe {name} needs two betas; got {list(self.betas)}")
        if not 0 <= self.shift < 1:
            raise BoundaryError(f"training recipe {name} needs shift in [0, 1) (a fraction of the image size); "
                                f"got {self.shift}")

    def lr_of_epoch(self, epoch: int) -> float:
        """Learning rate of 1-based epoch ``epoch`` (Keras' ``lr_schedule(epoch - 1)``)."""
        factor = 1.0
        for after, f in zip(self.decay_after, self.decay_factors):
            if epoch - 1 > after:
                factor = f
        return self.lr * factor

    def parameter_groups(self, model: nn.Module) -> list[dict]:
        """[conv kernels with ``weight_decay``, every other trainable parameter with 0]."""
        return conv_kernel_groups(model, self.weight_decay)

    def fit(self, model: nn.Module, data: ImageData, *, seed: int, device: torch.device,
            progress: bool | None = None, on_epoch: EpochHook | None = None,
            hooks: LoopHooks | None = None) -> pd.DataFrame:
        """Train ``model`` (already on ``device``) on data.train_x (N, C, H, W) / data.train_y (N,);
        evaluate on the test set after every epoch and then call ``on_epoch(epoch, model, optimizer)``
        when given, with the caller's ``hooks`` (see :func:`~boundary_cli.training.loop.fit_epochs`; train loss and accuracy are those of the
        augmented batches, as Keras reports them).

        Returns the training curve, one row per epoch: epoch, lr, train_loss, train_accuracy,
        test_loss, test_accuracy, seconds.
        """
        opt = torch.optim.Adam(self.parameter_groups(model), lr=self.lr, betas=self.betas, eps=self.eps)
        # t in (e - 1, e] during 1-based epoch e, so ceil(t) is the epoch of the step
        return fit_epochs(model, data, opt, epochs=self.epochs, batch_size=self.batch_size, seed=seed,
                          device=device, progress=progress, lr_at=lambda t: self.lr_of_epoch(math.ceil(t)),
                          shuffle=self.shuffle, on_epoch=on_epoch, hooks=hooks, perturb=self.perturbation(data, seed, device))

    def perturbation(self, data: ImageData, seed: int, device: torch.device
                     ) -> Callable[[nn.Module, Tensor, Tensor], Tensor] | None:
        """The augmentation as what is added to each batch: ``shift_flip(x - m) + m - x`` (None when off)."""
        return shift_flip_perturbation(self.shift, self.flip, seed, center=data.train_x.mean(dim=0).to(device))
