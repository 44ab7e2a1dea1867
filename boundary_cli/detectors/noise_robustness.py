"""How robust each prediction of each zoo member is to Gaussian noise (activation_analysis's labels,
METHODS.md §4.3), batched over members × images × draws.

For member m and its image x: the share of the noisy copies ``x + scale · ε_i`` (i < D; the same
draws ε for every image and member, no clipping: the reference's parity) whose prediction is the
prediction at x, and the softmax alternative the reference mentions, the mean over draws of
KL(softmax at x ‖ softmax at the noisy copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap


@dataclass(frozen=True)
class NoiseRobustness:
    """Per member and image, leading shape (M, S): ``prediction`` int64 at the clean image, ``ratio``
    the share of noisy copies predicted the same, ``kl`` the mean KL divergence from the clean
    softmax to the noisy one."""

    prediction: Tensor
    ratio: Tensor
    kl: Tensor


def noise_draws(count: int, shape: tuple[int, ...], seed: int = 42) -> Tensor:
    """(count, *shape) standard normal draws from ``seed`` (the reference: ``torch.manual_seed(42)``)."""
    return torch.randn(count, *shape, generator=torch.Generator().manual_seed(int(seed)))


@torch.no_grad()
def noise_robustness(template: nn.Module, params: dict[str, Tensor], x: Tensor, noise: Tensor, *,
                     scale: float = 0.9, buffers: dict[str, Tensor] | None = None,
                     draws_per_call: int = 100) -> NoiseRobustness:
    """Robustness labels of M stacked members ``params`` ({name: (M, *shape)}) on their own images
    x (M, S, C, H, W), for the draws ``noise`` (D, C, H, W) scaled by ``scale``; ``template`` is the
    architecture in eval mode, evaluated functionally. ``draws_per_call`` bounds memory: each call
    holds M · S · draws_per_call images."""
    buffers = buffers or {}

    def logits(p: dict[str, Tensor], xb: Tensor) -> Tensor:
        return functional_call(template, {**p, **buffers}, (xb,))

    batched = vmap(logits)  # over members: (M, B, C, H, W) -> (M, B, K)
    m, s = x.shape[:2]
    clean = batched(params, x)
    pred = clean.argmax(-1)
    log_clean = clean.log_softmax(-1)
    keep = torch.zeros(m, s, dtype=torch.long, device=x.device)
    kl = torch.zeros(m, s, dtype=clean.dtype, device=x.device)
    noise = noise.to(x.device, x.dtype)
    for part in noise.split(draws_per_call):
        d = part.shape[0]
        noisy = (x.unsqueeze(2) + scale * part).flatten(1, 2)  # (M, S * d, C, H, W)
        out = batched(params, noisy).view(m, s, d, -1)
        keep += (out.argmax(-1) == pred.unsqueeze(-1)).sum(-1)
        log_noisy = out.log_softmax(-1)
        kl += (log_clean.exp().unsqueeze(2) * (log_clean.unsqueeze(2) - log_noisy)).sum(-1).sum(-1)
    total = noise.shape[0]
    return NoiseRobustness(pred, keep.to(clean.dtype) / total, kl / total)
