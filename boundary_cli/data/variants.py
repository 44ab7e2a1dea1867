"""Dataset variants (frequency flip, low-pass) as objects: their transform, declared value range,
inverse where they have one, how normalisation statistics follow them, and the input checks.

A variant transforms the whole train and test tensors once (image sets decoded per batch, such as
ImageNet, are transformed and checked batch by batch). Each variant is a linear map applied
per channel, ``Y = A_H X A_Wᵀ``; for inputs in [0, 1] its outputs lie in an exactly computable box,
which becomes the variant's declared range: data outside it is refused. :func:`variant_from_config`
builds the variant from ``dataset.variant`` and ``dataset.low_pass`` once; nothing else reads the name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from boundary_cli.data.lazy import is_lazy
from boundary_cli.errors import BoundaryError
from boundary_cli.geometry.dct import dct_flip, dct_matrix, low_pass

if TYPE_CHECKING:  # images.py imports this module for ImageData's default variant
    from boundary_cli.data.images import ImageData

LOW_PASS_MODES = ("square", "rows_only")
RANGE_TOL = 1e-4


def _dct_domain(n: int, keep: Tensor) -> Tensor:
    """The (n, n) float64 matrix ``Dᵀ K D``: the map ``K`` applied to the DCT coefficients of an axis."""
    d = dct_matrix(n, dtype=torch.float64)
    return d.T @ keep @ d


@dataclass(frozen=True)
class Variant:
    """A dataset variant: a linear map of images (B, C, H, W) applied per channel, ``A_H X A_Wᵀ``.

    ``name`` is the ``dataset.variant`` spelling (``str(variant)`` gives it, for titles).
    ``orthogonal`` variants have an :meth:`inverse`, and a model trained on them is normalised
    with the raw data's statistics carried through the map (:func:`normalization_stats`); the
    others are normalised with the statistics of the transformed data.
    """

    name: ClassVar[str]
    orthogonal: ClassVar[bool] = False
    is_identity: ClassVar[bool] = False

    def __str__(self) -> str:
        return self.name

    def apply(self, x: Tensor) -> Tensor:
        """The transformed images, shaped like ``x`` (..., H, W)."""
        raise NotImplementedError

    def inverse(self, x: Tensor) -> Tensor:
        """The images ``x`` (..., H, W) mapped back (orthogonal variants only)."""
        raise ValueError(f"variant {self.name} is not invertible")

    def axis_maps(self, h: int, w: int) -> tuple[Tensor, Tensor]:
        """The per-axis matrices (A_H (h, h), A_W (w, w)), float64."""
        raise NotImplementedError

    def check_size(self, h: int, w: int) -> None:
        """Raise BoundaryError if the variant's settings do not fit images of size (h, w)."""

    def declared_range(self, h: int, w: int) -> tuple[float, float]:
        """Tight (low, high) bounds of the output over all (h, w) images with pixels in [0, 1].

        Output pixel (i, j) is ``sum_kl a_ik b_jl x_kl``; over the unit box its maximum is the sum of
        the positive products, ``pos(a)pos(b) + neg(a)neg(b)``, and its minimum the negative ones.
        """
        a, b = self.axis_maps(h, w)
        pa, na = a.clamp_min(0).sum(1), (-a).clamp_min(0).sum(1)
        pb, nb = b.clamp_min(0).sum(1), (-b).clamp_min(0).sum(1)
        high = pa[:, None] * pb[None, :] + na[:, None] * nb[None, :]
        low = -(pa[:, None] * nb[None, :] + na[:, None] * pb[None, :])
        return float(low.min()), float(high.max())

    @property
    def orthogonal_map(self) -> Variant | None:
        """The map (``apply``/``inverse``) PGD projects through onto the image of the raw pixel box;
        None where the declared box is clipped directly (the identity, whose box that is, and
        non-orthogonal variants, for which the box is an approximation)."""
        return self if self.orthogonal and not self.is_identity else None

    def carry_mean(self, mean: Tensor, h: int, w: int) -> Tensor:
        """The normalisation mean for transformed data given the raw data's per-channel ``mean`` (C,):
        the transformed constant image (C, H, W), so that normalising transformed data equals
        transforming normalised data (for a per-channel std)."""
        c = mean.shape[0]
        return self.apply(mean.view(c, 1, 1).expand(c, h, w).contiguous())


@dataclass(frozen=True)
class Identity(Variant):
    """``none``: the raw images."""

    name: ClassVar[str] = "none"
    orthogonal: ClassVar[bool] = True
    is_identity: ClassVar[bool] = True

    def apply(self, x: Tensor) -> Tensor:
        return x

    def inverse(self, x: Tensor) -> Tensor:
        return x

    def axis_maps(self, h: int, w: int) -> tuple[Tensor, Tensor]:
        return torch.eye(h, dtype=torch.float64), torch.eye(w, dtype=torch.float64)

    def declared_range(self, h: int, w: int) -> tuple[float, float]:
        return 0.0, 1.0

    def carry_mean(self, mean: Tensor, h: int, w: int) -> Tensor:
        return mean  # a constant image stays per channel, shape (C,)


@dataclass(frozen=True)
class Flip(Variant):
    """``flip``: :func:`~boundary_cli.geometry.dct.dct_flip`, orthogonal and its own inverse."""

    name: ClassVar[str] = "flip"
    orthogonal: ClassVar[bool] = True

    def apply(self, x: Tensor) -> Tensor:
        return dct_flip(x)

    def inverse(self, x: Tensor) -> Tensor:
        return dct_flip(x)

    def axis_maps(self, h: int, w: int) -> tuple[Tensor, Tensor]:
        return (_dct_domain(h, torch.eye(h, dtype=torch.float64).flip(0)),
                _dct_domain(w, torch.eye(w, dtype=torch.float64).flip(0)))


@dataclass(frozen=True)
class LowPass(Variant):
    """``low_pass``: keep DCT frequencies below ``bandwidth`` (None: half the smaller image side),
    in both axes (``square``) or along rows only (``rows_only``, parity with the original code's
    bug). A projection: idempotent, not invertible."""

    bandwidth: int | None = None
    mode: str = "square"
    name: ClassVar[str] = "low_pass"

    def __post_init__(self) -> None:
        if self.mode not in LOW_PASS_MODES:
            raise BoundaryError(f"unknown dataset.low_pass.mode={self.mode!r}; valid: {', '.join(LOW_PASS_MODES)}")
        if self.bandwidth is not None and self.bandwidth < 1:
            raise BoundaryError(f"dataset.low_pass.bandwidth={self.bandwidth} must be between 1 and the image size")

    def cutoff(self, h: int, w: int) -> int:
        """The bandwidth used for (h, w) images."""
        return self.bandwidth or min(h, w) // 2

    def apply(self, x: Tensor) -> Tensor:
        return low_pass(x, self.cutoff(*x.shape[-2:]), self.mode)

    def axis_maps(self, h: int, w: int) -> tuple[Tensor, Tensor]:
        bw = self.cutoff(h, w)
        keep_h = torch.diag((torch.arange(h) < bw).double())
        keep_w = torch.diag((torch.arange(w) < bw).double()) if self.mode == "square" else torch.eye(w, dtype=torch.float64)
        return _dct_domain(h, keep_h), _dct_domain(w, keep_w)

    def check_size(self, h: int, w: int) -> None:
        size = min(h, w)
        if self.bandwidth is not None and self.bandwidth > size:
            raise BoundaryError(f"dataset.low_pass.bandwidth={self.bandwidth} must be between 1 and the image size"
                                f" ({size})")


NONE = Identity()
FLIP = Flip()
VARIANTS = (Identity.name, Flip.name, LowPass.name)


def variant_from_config(name: str, low_pass: Mapping[str, Any] | None = None) -> Variant:
    """The variant ``dataset.variant=name``; ``low_pass`` (``bandwidth``, ``mode``: the
    ``dataset.low_pass`` node, a plain mapping or a DictConfig) is read only for ``low_pass``.
    Raises BoundaryError for an unknown name or low-pass setting (before any data is read)."""
    if name == LowPass.name:
        lp = low_pass or {}
        return LowPass(lp.get("bandwidth"), lp.get("mode", "square"))
    plain = {v.name: v for v in (NONE, FLIP)}
    if name not in plain:
        raise BoundaryError(f"unknown dataset.variant={name!r}; valid: {', '.join(VARIANTS)}")
    return plain[name]


def check_values(x: Tensor, value_range: tuple[float, float], what: str) -> None:
    """Refuse NaN/inf values and values outside ``value_range`` (with a small tolerance)."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise BoundaryError(f"{what} contains NaN or inf values ({bad} images); check the data files")
    lo, hi = value_range
    xmin, xmax = float(x.min()), float(x.max())
    if xmin < lo - RANGE_TOL or xmax > hi + RANGE_TOL:
        raise BoundaryError(f"{what} has values in [{xmin:.4g}, {xmax:.4g}], outside the range "
                            f"[{lo:.4g}, {hi:.4g}] its variant declares; inputs must be images in [0, 1] "
                            f"before the variant is applied")


def apply_variant(data: ImageData, variant: Variant) -> ImageData:
    """Check raw data, transform train and test tensors once, and check the result.

    Args:
        data: raw dataset, pixels in [0, 1], tensors (N, C, H, W).
        variant: from :func:`variant_from_config`.

    Returns:
        A new ImageData with ``variant`` and ``value_range`` set (``data`` itself for the identity).
    """
    h, w = data.image_size
    variant.check_size(h, w)
    value_range = variant.declared_range(h, w)
    if is_lazy(data.test_x):  # decoded per batch: the variant and the checks run on every batch
        raw_check = partial(check_values, value_range=(0.0, 1.0), what=f"a batch of {data.name} test images")
        if variant.is_identity:
            test_x = replace(data.test_x, check=raw_check)
        else:
            def transform(t: Tensor) -> Tensor:
                raw_check(t)
                return variant.apply(t)
            test_x = data.test_x.with_transform(transform, partial(
                check_values, value_range=value_range, what=f"a batch of {data.name} test images ({variant})"))
        return replace(data, test_x=test_x, variant=variant, value_range=value_range)
    for split, x in (("train", data.train_x), ("test", data.test_x)):
        check_values(x, (0.0, 1.0), f"the {data.name} {split} set")
    if variant.is_identity:
        return data
    out = replace(data, train_x=variant.apply(data.train_x), test_x=variant.apply(data.test_x), variant=variant,
                  value_range=value_range)
    for split, x in (("train", out.train_x), ("test", out.test_x)):
        check_values(x, out.value_range, f"the {data.name} {split} set ({variant})")
    return out


def normalization_stats(data: ImageData, mean: list[float] | None, std: list[float] | None) -> tuple[Tensor, Tensor]:
    """Mean and std for the model's normalisation layer, shapes (C,) or (C, H, W).

    Orthogonal variants (``none``, ``flip``): the statistics of the *raw* data, those the dataset
    config gives or else the per-channel mean/std of the training tensor mapped back (its
    :meth:`~Variant.inverse`), with the mean carried through the map (:meth:`~Variant.carry_mean`:
    the flipped constant image ``dct_flip(mean)`` for ``flip``) and std unchanged, so that
    normalising flipped data is exactly flipping normalised data (hold-me-tight's
    TransformFlippedLayer), on every dataset. ``low_pass``: the per-channel mean/std of the
    processed training tensor (the reference's ``proc_mean``/``proc_std``). A dataset without
    training images (decoded per batch, e.g. ImageNet val) uses the configured ones as given.
    """
    c, h, w = data.channels, *data.image_size
    x, variant = data.train_x, data.variant
    if variant.orthogonal:
        if (mean is None or std is None) and x.shape[0] > 0:
            raw = variant.inverse(x)
            mean, std = raw.mean(dim=(0, 2, 3)).tolist(), raw.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
        if mean is not None and std is not None:
            m = torch.tensor(mean, dtype=torch.float32)
            s = torch.tensor(std, dtype=torch.float32)
            if m.shape != (c,) or s.shape != (c,):
                raise BoundaryError(f"dataset.mean/std must have {c} entries (one per channel), "
                                    f"got {list(mean)} / {list(std)}")
            return variant.carry_mean(m, h, w), s
    if x.shape[0] == 0:
        if mean is None or std is None:
            raise BoundaryError(f"{data.name} has no training images to take normalisation statistics from; "
                                f"set dataset.mean and dataset.std (one value per channel)")
        return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1e-6)
