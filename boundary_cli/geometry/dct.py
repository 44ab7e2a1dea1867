"""Orthonormal 2-D DCT on the last two dims, frequency flip, low-pass, and diagonal DCT blocks.

Everything here acts per channel on tensors shaped (..., H, W). The DCT is the matrix product
``D_H X D_Wᵀ`` with the orthonormal DCT-II matrix, so it is exact, differentiable and runs on any
device. A DCT block subspace is never built as a dense basis: projecting onto it means keeping a
``block × block`` window of coefficients (a mask in the DCT domain); in batches the mask is the
outer product of a per-row frequency indicator with itself, never materialised.

Every matmul here runs in full IEEE float32 (or the input's wider dtype), whatever the process-wide
TF32 setting: the projection decides when a block is blind to a gradient (``INVARIANT_RTOL`` in
:mod:`~boundary_cli.geometry.deepfool`), and TF32's 10-bit mantissa would bias small projections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from boundary_cli.geometry.precision import ieee_matmul


@lru_cache(maxsize=64)
def _dct_matrix(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(device=device, dtype=dtype)  # cached per device: no host-to-device copy per call


def dct_matrix(n: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """The (n, n) orthonormal DCT-II matrix ``D[k, i] = a_k cos(pi (2i+1) k / 2n)``.

    ``a_0 = sqrt(1/n)``, ``a_k = sqrt(2/n)``; ``D @ D.T`` is the identity, so the inverse
    transform (DCT-III) is ``D.T``. Built in float64 and cast, so float32 results are exact to
    rounding.
    """
    return _dct_matrix(n, dtype, torch.device(device))


def _matrices(x: Tensor) -> tuple[Tensor, Tensor]:
    return (
        dct_matrix(x.shape[-2], dtype=x.dtype, device=x.device),
        dct_matrix(x.shape[-1], dtype=x.dtype, device=x.device),
    )


def dct2(x: Tensor) -> Tensor:
    """Orthonormal 2-D DCT-II of ``x`` (..., H, W) over its last two dims; same shape out.

    Equals ``scipy.fft.dctn(x, type=2, axes=(-2, -1), norm="ortho")``.
    """
    dh, dw = _matrices(x)
    with ieee_matmul():
        return dh @ x @ dw.T


def idct2(c: Tensor) -> Tensor:
    """Inverse of :func:`dct2`: coefficients (..., H, W) -> image (..., H, W)."""
    dh, dw = _matrices(c)
    with ieee_matmul():
        return dh.T @ c @ dw


def dct_flip(x: Tensor) -> Tensor:
    """Frequency flip: coefficient (k1, k2) moves to (H-1-k1, W-1-k2); x (..., H, W).

    ``IDCT(flip(DCT(x)))``: orthogonal and an involution (``dct_flip(dct_flip(x)) == x``). Low
    frequencies become high ones, so a flipped image is no longer in [0, 1].
    """
    return idct2(torch.flip(dct2(x), dims=(-2, -1)))


def low_pass(x: Tensor, bandwidth: int, mode: str = "square") -> Tensor:
    """Keep only low DCT frequencies of ``x`` (..., H, W); an orthogonal projection.

    ``mode="square"`` keeps coefficients with ``k1 < bandwidth and k2 < bandwidth`` (the intended
    filter). ``mode="rows_only"`` keeps ``k1 < bandwidth`` for every ``k2``: what the original
    hold-me-tight code did by accident on 4-D tensors, offered for parity.
    """
    h, w = x.shape[-2:]
    if not 1 <= bandwidth <= min(h, w):
        raise ValueError(f"low-pass bandwidth must be in 1..{min(h, w)}, got {bandwidth}")
    mask = torch.zeros(h, w, dtype=x.dtype, device=x.device)
    if mode == "square":
        mask[:bandwidth, :bandwidth] = 1
    elif mode == "rows_only":
        mask[:bandwidth, :] = 1
    else:
        raise ValueError(f"low-pass mode must be 'square' or 'rows_only', got {mode!r}")
    return idct2(dct2(x) * mask)


@dataclass(frozen=True)
class DCTBlock:
    """The subspace spanned by DCT basis images with indices (offset+i, offset+j), 0 <= i, j < block.

    One copy per channel, so its dimension is ``channels * block**2`` (``dim``).
    """

    offset: int
    block: int
    dim: int

    @property
    def name(self) -> str:
        return f"dct_{self.offset}"

    def mask(self, n: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
        """The (n, n) 0/1 mask of this block in the DCT domain."""
        m = torch.zeros(n, n, dtype=dtype, device=device)
        m[self.offset : self.offset + self.block, self.offset : self.offset + self.block] = 1
        return m


def diagonal_blocks(n: int, block: int, step: int, channels: int = 1) -> list[DCTBlock]:
    """Square DCT blocks along the diagonal of an n×n image, low to high frequency.

    Offsets are ``0, step, 2*step, ...`` while ``offset + block <= n`` (hold-me-tight's subspace
    list): 28/8/1 gives 21 blocks, 32/8/2 gives 13, 8/4/1 gives 5, 224/16/16 gives 14.
    """
    if block < 1 or step < 1 or block > n:
        raise ValueError(f"need 1 <= block <= n and step >= 1, got n={n}, block={block}, step={step}")
    return [DCTBlock(a, block, channels * block * block) for a in range(0, n - block + 1, step)]


def block_indicator(offsets: Tensor, sizes: Tensor, n: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """0/1 frequency indicators of diagonal blocks: offsets, sizes (R,) -> (R, n).

    Row r is 1 on ``offsets[r] <= k < offsets[r] + sizes[r]``; the block's DCT-domain mask is the
    outer product ``u uᵀ`` and is never materialised. Offset 0 with size n is the full space.
    """
    k = torch.arange(n, device=offsets.device)
    u = (k >= offsets.unsqueeze(1)) & (k < (offsets + sizes).unsqueeze(1))
    return u.to(dtype)


def masked_dct2(x: Tensor, indicator: Tensor) -> Tensor:
    """DCT coefficients of x kept inside each row's block: x (..., R, C, n, n), indicator (R, n).

    Returns (..., R, C, n, n) = ``mask_r ⊙ dct2(x_r)`` with ``mask_r = u_r u_rᵀ``. Its norm is the
    norm of the orthogonal projection of x onto the block; ``idct2`` of it is that projection.
    """
    u = indicator.unsqueeze(-2)  # (R, 1, n): broadcast over channels
    return dct2(x) * u.unsqueeze(-1) * u.unsqueeze(-2)


def project(x: Tensor, block: DCTBlock) -> Tensor:
    """Orthogonal projection of x (..., n, n) onto one DCT block: ``idct2(mask ⊙ dct2(x))``."""
    n = x.shape[-1]
    if x.shape[-2] != n:
        raise ValueError(f"DCT blocks need square images, got {tuple(x.shape[-2:])}")
    return idct2(dct2(x) * block.mask(n, dtype=x.dtype, device=x.device))
