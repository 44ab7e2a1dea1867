"""Plain per-sample DeepFool, written line by line from METHODS §1.5, for tests and benchmarks.

This is the yardstick the batched :mod:`boundary_cli.geometry.deepfool` is checked and timed
against. It shares no code with it: one image at a time, a Python loop over the candidates, and a
subspace given as a dense orthonormal basis ``Sp`` (D × d) built from scipy's inverse DCT. It works
in the dtype of the image it is given (float64 for exact comparisons).
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import torch
from torch import Tensor, nn

from boundary_cli.geometry.dct import DCTBlock
from boundary_cli.geometry.deepfool import INVARIANT_RTOL


def dense_block_basis(n: int, channels: int, block: DCTBlock, dtype: torch.dtype = torch.float32) -> Tensor:
    """Dense orthonormal basis of a DCT block: (C·n·n, C·K²), channel-major like ``x.flatten()``.

    Column (c, i, j) is the image, zero on every channel but c, whose channel c is the inverse
    orthonormal DCT (scipy) of a Dirac at (offset+i, offset+j). Computed in float64, returned as ``dtype``.
    """
    k, a = block.block, block.offset
    cols = []
    for c in range(channels):
        for i in range(k):
            for j in range(k):
                coef = np.zeros((n, n))
                coef[a + i, a + j] = 1.0
                img = np.zeros((channels, n, n))
                img[c] = scipy.fft.idctn(coef, norm="ortho")
                cols.append(img.reshape(-1))
    return torch.tensor(np.stack(cols, axis=1), dtype=dtype)


def deepfool_single(
    model: nn.Module,
    x: Tensor,
    basis: Tensor | None = None,
    *,
    candidates: int = 10,
    overshoot: float = 0.02,
    max_iter: int = 100,
) -> tuple[Tensor, int, int, int]:
    """DeepFool on one image x (C, H, W), in full space or in the span of ``basis`` (D, d).

    Returns ``((1 + overshoot) r, iterations, k0, k_adv)``. A zero projected gradient for every
    candidate (below ``INVARIANT_RTOL`` of the full one) stops the loop and returns an infinite
    perturbation, as the batched version does. Computes in ``x.dtype`` (the basis is cast to it).
    """
    shape = x.shape
    if basis is not None:
        basis = basis.to(dtype=x.dtype, device=x.device)
    with torch.no_grad():
        logits0 = model(x.unsqueeze(0))[0]
    order = torch.argsort(logits0, descending=True)[:candidates]
    k0 = int(order[0])
    r = torch.zeros_like(x)
    x_i = x.clone()
    it, k_adv = 0, k0
    while k_adv == k0 and it < max_iter:
        xg = x_i.unsqueeze(0).requires_grad_(True)
        fs = model(xg)[0]
        best, w = float("inf"), None
        for n_k, k in enumerate(order[1:]):
            diff = fs[k] - fs[k0]
            (w_k,) = torch.autograd.grad(diff, xg, retain_graph=n_k < len(order) - 2)
            w_k = w_k[0].flatten()
            den = w_k.norm() if basis is None else (basis.T @ w_k).norm()
            if basis is not None and den <= INVARIANT_RTOL * w_k.norm():
                den = torch.zeros((), dtype=x.dtype)
            val = float(diff.detach().abs() / den) if den > 0 else float("inf")
            if val < best:
                best, w = val, w_k
        if w is None:
            return torch.full_like(x, float("inf")), it + 1, k0, k0
        if basis is not None:
            w = basis @ (basis.T @ w)
        r_i = max(best, 1e-4) * (w / w.norm()).view(shape)
        r = r + r_i
        x_i = x_i + r_i
        with torch.no_grad():
            k_adv = int(model((x + (1 + overshoot) * r).unsqueeze(0))[0].argmax())
        it += 1
    return (1 + overshoot) * r, it, k0, k_adv
