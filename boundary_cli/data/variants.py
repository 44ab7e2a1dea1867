"""Dataset variants (frequency flip, low-pass), their declared value ranges, input checks and the
normalisation statistics a model trained on them uses.

A variant transforms the whole train and test tensors once (image sets decoded per batch, such as
ImageNet, are transformed and checked batch by batch). Each variant is a linear map applied
per channel, ``Y = A_H X A_Wᵀ``; for inputs in [0, 1] its outputs lie in an exactly computable box,
which becomes the variant's declared range: data outside it is refused.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch
from torch import Tensor

from boundary_cli.data.images import ImageData
from boundary_cli.data.lazy import is_lazy
from boundary_cli.errors import BoundaryError
from boundary_cli.geometry.dct import dct_flip, dct_matrix, low_pass

VARIANTS = ("none", "flip", "low_pass")
LOW_PASS_MODES = ("square", "rows_only")
RANGE_TOL = 1e-4


def check_variant(variant: str, bandwidth: int | None, mode: str, image_size: int | None = None) -> None:
    """Raise BoundaryError for an unknown variant or low-pass setting (before any data is read)."""
    if variant not in VARIANTS:
        raise BoundaryError(f"unknown dataset.variant={variant!r}; valid: {', '.join(VARIANTS)}")
    if variant == "low_pass":
        if mode not in LOW_PASS_MODES:
            raise BoundaryError(f"unknown dataset.low_pass.mode={mode!r}; valid: {', '.join(LOW_PASS_MODES)}")
        if bandwidth is not None and (bandwidth < 1 or (image_size is not None and bandwidth > image_size)):
            raise BoundaryError(f"dataset.low_pass.bandwidth={bandwidth} must be between 1 and the image size"
                                f"{'' if image_size is None else f' ({image_size})'}")


def _axis_maps(variant: str, h: int, w: int, bandwidth: int, mode: str) -> tuple[Tensor, Tensor]:
    """The per-axis matrices (A_H, A_W) of a variant, float64."""
    def dct_domain(n: int, keep: Tensor) -> Tensor:
        d = dct_matrix(n, dtype=torch.float64)
        return d.T @ keep @ d

    if variant == "none":
        return torch.eye(h, dtype=torch.float64), torch.eye(w, dtype=torch.float64)
    if variant == "flip":
        return (dct_domain(h, torch.eye(h, dtype=torch.float64).flip(0)),
                dct_domain(w, torch.eye(w, dtype=torch.float64).flip(0)))
    keep_h = torch.diag((torch.arange(h) < bandwidth).double())
    keep_w = torch.diag((torch.arange(w) < bandwidth).double()) if mode == "square" else torch.eye(w, dtype=torch.float64)
    return dct_domain(h, keep_h), dct_domain(w, keep_w)


def declared_range(variant: str, h: int, w: int, bandwidth: int | None = None, mode: str = "square") -> tuple[float, float]:
    """Tight (low, high) bounds of the variant's output over all images with pixels in [0, 1].

    Output pixel (i, j) is ``sum_kl a_ik b_jl x_kl``; over the unit box its maximum is the sum of
    the positive products, ``pos(a)pos(b) + neg(a)neg(b)``, and its minimum the negative ones.
    """
    if variant == "none":
        return 0.0, 1.0
    a, b = _axis_maps(variant, h, w, bandwidth or h // 2, mode)
    pa, na = a.clamp_min(0).sum(1), (-a).clamp_min(0).sum(1)
    pb, nb = b.clamp_min(0).sum(1), (-b).clamp_min(0).sum(1)
    high = pa[:, None] * pb[None, :] + na[:, None] * nb[None, :]
    low = -(pa[:, None] * nb[None, :] + na[:, None] * pb[None, :])
    return float(low.min()), float(high.max())


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


def apply_variant(data: ImageData, variant: str, bandwidth: int | None = None, mode: str = "square") -> ImageData:
    """Check raw data, transform train and test tensors once, and check the result.

    Args:
        data: raw dataset, pixels in [0, 1].
        variant: ``none``, ``flip`` (dct_flip) or ``low_pass`` (keep DCT frequencies < bandwidth).
        bandwidth: low-pass cut-off; None means half the image size.
        mode: low-pass ``square`` or ``rows_only`` (parity with the original code's bug).

    Returns:
        A new ImageData with ``variant`` and ``value_range`` set.
    """
    h, w = data.image_size
    check_variant(variant, bandwidth, mode, min(h, w))
    bw = bandwidth or min(h, w) // 2
    if variant == "flip":
        fn = dct_flip
    else:
        def fn(t: Tensor) -> Tensor:
            return low_pass(t, bw, mode)
    if is_lazy(data.test_x):  # decoded per batch: the variant and the checks run on every batch
        value_range = (0.0, 1.0) if variant == "none" else declared_range(variant, h, w, bw, mode)
        raw_check = partial(check_values, value_range=(0.0, 1.0), what=f"a batch of {data.name} test images")
        if variant == "none":
            test_x = replace(data.test_x, check=raw_check)
        else:
            def transform(t: Tensor) -> Tensor:
                raw_check(t)
                return fn(t)
            test_x = data.test_x.with_transform(transform, partial(
                check_values, value_range=value_range, what=f"a batch of {data.name} test images ({variant})"))
        return replace(data, test_x=test_x, variant=variant, value_range=value_range)
    for split, x in (("train", data.train_x), ("test", data.test_x)):
        check_values(x, (0.0, 1.0), f"the {data.name} {split} set")
    if variant == "none":
        return data
    out = replace(data, train_x=fn(data.train_x), test_x=fn(data.test_x), variant=variant,
                  value_range=declared_range(variant, h, w, bw, mode))
    for split, x in (("train", out.train_x), ("test", out.test_x)):
        check_values(x, out.value_range, f"the {data.name} {split} set ({variant})")
    return out


def normalization_stats(data: ImageData, mean: list[float] | None, std: list[float] | None) -> tuple[Tensor, Tensor]:
    """Mean and std for the model's normalisation layer, shapes (C,) or (C, H, W).

    ``none``: the statistics the dataset config gives (those of the raw data), else the per-channel
    mean/std of the training tensor. ``flip``: the same statistics of the *unflipped* data (configured,
    or computed from the training tensor flipped back: the flip is an involution), with the mean turned
    into the flipped constant image ``dct_flip(mean)`` and std unchanged, so that normalising flipped
    data is exactly flipping normalised data (hold-me-tight's TransformFlippedLayer), on every dataset.
    ``low_pass``: the per-channel mean/std of the processed training tensor (the reference's
    ``proc_mean``/``proc_std``). A dataset without training images (decoded per batch, e.g. ImageNet
    val) uses the configured ones as given.
    """
    c, h, w = data.channels, *data.image_size
    x = data.train_x
    if data.variant == "flip" and (mean is None or std is None) and x.shape[0] > 0:
        raw = dct_flip(x)
        mean, std = raw.mean(dim=(0, 2, 3)).tolist(), raw.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
    if mean is not None and std is not None and data.variant in ("none", "flip"):
        m = torch.tensor(mean, dtype=torch.float32)
        s = torch.tensor(std, dtype=torch.float32)
        if m.shape != (c,) or s.shape != (c,):
            raise BoundaryError(f"dataset.mean/std must have {c} entries (one per channel), "
                                f"got {list(mean)} / {list(std)}")
        if data.variant == "flip":
            m = dct_flip(m.view(c, 1, 1).expand(c, h, w).contiguous())
        return m, s
    if x.shape[0] == 0:
        if mean is None or std is None:
            raise BoundaryError(f"{data.name} has no training images to take normalisation statistics from; "
                                f"set dataset.mean and dataset.std (one value per channel)")
        return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1e-6)
