"""Pools of images the flip experiments walk from: slices of a split, and random images.

The reference compares the training and test images with two kinds of noise images of the same
shape: uniform in the pixel box, and per-pixel Gaussian with the training set's per-pixel mean and
standard deviation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

POOLS = ("train", "test", "uniform", "gaussian")


@dataclass
class Pool:
    """Images of one pool with where they came from.

    Attributes:
        name: ``train``, ``test``, ``uniform`` or ``gaussian``.
        x: (N, C, H, W) images.
        index: (N,) int64 index into the split (train/test), or 0..N-1 for random pools.
        label: (N,) int64 ground truth, -1 for random images.
    """

    name: str
    x: Tensor
    index: Tensor
    label: Tensor


def split_indices(n_available: int, n: int, *, start: int = 0, seed: int | None = None) -> Tensor:
    """Indices of ``n`` images of a split of ``n_available``: ``start, start+1, ...`` (the
    reference's first n) when ``seed`` is None, else a seeded random draw without replacement
    (sorted). Raises ValueError when the split is too small."""
    if n < 1 or start < 0:
        raise ValueError(f"need n >= 1 and start >= 0, got n={n}, start={start}")
    if seed is None:
        if start + n > n_available:
            raise ValueError(f"images {start}..{start + n - 1} asked for, but the split has {n_available}")
        return torch.arange(start, start + n)
    if n > n_available:
        raise ValueError(f"{n} images asked for, but the split has {n_available}")
    return torch.randperm(n_available, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def uniform_images(n: int, shape: tuple[int, ...], value_range: tuple[float, float], seed: int) -> Tensor:
    """(n, *shape) images with every pixel uniform in ``value_range``."""
    lo, hi = value_range
    gen = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand((n, *shape), generator=gen)


def gaussian_images(n: int, reference: Tensor, seed: int, clip: tuple[float, float] | None = None) -> Tensor:
    """(n, C, H, W) images with pixel p drawn from N(mean_p, std_p) of ``reference`` (N, C, H, W).

    ``clip`` clamps them to a box; the reference leaves them unclamped, so its first clipped step
    moves them into the box and that move counts as distance.
    """
    ref = reference.double()
    mean, std = ref.mean(dim=0), ref.std(dim=0)
    gen = torch.Generator().manual_seed(seed)
    x = (mean + std * torch.randn((n, *mean.shape), generator=gen, dtype=torch.float64)).float()
    return x.clamp(*clip) if clip is not None else x
