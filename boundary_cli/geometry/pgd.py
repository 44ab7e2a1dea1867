"""L2 projected gradient ascent (Madry et al.'s PGD) and the projections its constraint sets need.

A perturbation ``delta`` of a batch ``x`` (B, C, H, W) must lie in the L2 ball of radius ``eps``
(per sample) and keep the image valid. For raw data "valid" is a pixel box; for frequency-flipped
data ``u = dct_flip(x_raw)`` it is the flipped box ``{delta : low <= dct_flip(u + delta) <= high}``,
whose intersection with the ball is projected onto by Dykstra's algorithm (hold-me-tight §1.8).
Every projection acts per sample; the attack takes gradients with respect to ``delta`` only, never
the model's parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from boundary_cli.geometry.dct import dct_flip

Projection = Callable[[Tensor, Tensor], Tensor]
_TINY = 1e-12


def _sample_norms(t: Tensor) -> Tensor:
    """Per-sample L2 norms of t (B, ...), shaped (B, 1, ..., 1) for broadcasting."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


def project_l2_ball(delta: Tensor, eps: float) -> Tensor:
    """Euclidean projection of each sample of ``delta`` (B, C, H, W) onto the L2 ball of radius
    ``eps``: rows with norm above ``eps`` are shrunk radially to norm ``eps``, others are kept.
    Returns a tensor shaped like ``delta``.
    """
    return delta * (eps / _sample_norms(delta).clamp_min(_TINY)).clamp(max=1.0)


def project_box(delta: Tensor, x: Tensor, low: float, high: float) -> Tensor:
    """Euclidean projection of ``delta`` (B, C, H, W) onto ``{d : low <= x + d <= high}`` for the
    images ``x`` (B, C, H, W): an element-wise clip of ``delta`` to ``[low - x, high - x]``. When x
    lies in the box, every entry moves towards 0, so the result's norm never exceeds ``delta``'s.
    """
    return torch.clamp(delta, min=low - x, max=high - x)


def project_flipped_box(delta: Tensor, u: Tensor, low: float = 0.0, high: float = 1.0) -> Tensor:
    """Euclidean projection of ``delta`` (B, C, H, W) onto ``{d : low <= dct_flip(u + d) <= high}``
    for the flipped images ``u = dct_flip(x_raw)`` (B, C, H, W).

    dct_flip is orthogonal and its own inverse, so the set is the image under dct_flip of the box
    ``[low - x_raw, high - x_raw]`` and its projection is
    ``dct_flip(clip(dct_flip(delta), low - dct_flip(u), high - dct_flip(u)))``.
    """
    raw = dct_flip(u)
    return _clip_flipped(delta, low - raw, high - raw)


def _clip_flipped(delta: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    return dct_flip(torch.clamp(dct_flip(delta), min=lower, max=upper))


def dykstra(v: Tensor, proj_a: Callable[[Tensor], Tensor], proj_b: Callable[[Tensor], Tensor],
            n_iter: int = 20) -> Tensor:
    """Dykstra's alternating projections: approximates the Euclidean projection of ``v`` onto
    ``A ∩ B`` for closed convex sets A, B given by their projections (any shape, typically
    (B, C, H, W) with per-sample sets). Iterates ``z = P_A(y + p); p = y + p - z;
    y = P_B(z + q); q = z + q - y`` from ``y = v, p = q = 0`` ``n_iter`` times and returns y,
    which lies in B exactly and in A up to the convergence of the iteration.
    """
    y = v
    p = torch.zeros_like(v)
    q = torch.zeros_like(v)
    for _ in range(n_iter):
        z = proj_a(y + p)
        p = y + p - z
        y = proj_b(z + q)
        q = z + q - y
    return y


class OrthogonalMap(Protocol):
    """An orthogonal linear map of images (B, C, H, W) and its inverse (its transpose)."""

    def apply(self, x: Tensor) -> Tensor: ...

    def inverse(self, x: Tensor) -> Tensor: ...


def constraint_projection(value_range: tuple[float, float], eps: float, dykstra_iters: int = 20, *,
                          orthogonal: OrthogonalMap | None = None,
                          raw_range: tuple[float, float] = (0.0, 1.0)) -> Projection:
    """The projection ``project(delta, x) -> delta`` (both (B, C, H, W)) PGD uses on a data set.

    * ``orthogonal`` None: L2 ball, then clip ``x + delta`` to ``value_range`` (the robustness
      library's convention; not the exact projection onto the intersection, but feasible for both
      sets). For data that is no box (a low-pass subspace) an approximation: the adversarial image
      may leave the set.
    * ``orthogonal`` a map T: x are mapped images ``T(x_raw)``; Dykstra (``dykstra_iters``
      iterations) between the ball and the image under T of the box of raw pixels in ``raw_range``
      (``value_range``, the mapped data's range, is not used), run in the raw-pixel domain (the same
      iterates mapped by the orthogonal T), followed by a radial shrink into the ball. Both sets
      contain 0, so the shrink keeps the box constraint and the result satisfies both exactly even
      before Dykstra has converged.
    """
    low, high = value_range
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if orthogonal is None:
        def project(delta: Tensor, x: Tensor) -> Tensor:
            return project_box(project_l2_ball(delta, eps), x, low, high)
    else:
        raw_low, raw_high = raw_range
        m = orthogonal

        def project(delta: Tensor, x: Tensor) -> Tensor:
            # T is orthogonal and maps the ball onto itself, so Dykstra runs on the raw-pixel side,
            # where the box is a plain clip: two maps per call instead of two per iteration
            raw = m.inverse(x)
            lower, upper = raw_low - raw, raw_high - raw
            d = dykstra(m.inverse(delta), lambda v: project_l2_ball(v, eps), lambda v: v.clamp(lower, upper),
                        dykstra_iters)
            return project_l2_ball(m.apply(d), eps)
    return project


def random_ball(shape: torch.Size, eps: float, *, device: torch.device, dtype: torch.dtype = torch.float32,
                generator: torch.Generator | None = None) -> Tensor:
    """Samples (shape[0] of them, each ``shape[1:]``) drawn uniformly from the L2 ball of radius
    ``eps``: a Gaussian direction times ``eps * U^(1/d)``, d the per-sample dimension. In high
    dimension almost all of them lie close to the sphere.
    """
    g = torch.randn(shape, device=device, dtype=dtype, generator=generator)
    d = g[0].numel()
    u = torch.rand((shape[0],) + (1,) * (len(shape) - 1), device=device, dtype=dtype, generator=generator)
    return g / _sample_norms(g).clamp_min(_TINY) * eps * u.pow(1.0 / d)


def pgd_l2(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, steps: int, step_size: float,
           random_start: bool = True, project: Projection | None = None,
           generator: torch.Generator | None = None) -> Tensor:
    """L2 PGD: the perturbation delta (B, C, H, W) that approximately maximises the cross-entropy of
    ``model(x + delta)`` against labels ``y`` (B,) for inputs ``x`` (B, C, H, W).

    Starts from 0 or, with ``random_start``, from a point uniform in the eps-ball (see
    :func:`random_ball`; ``generator`` must live on x's device), projected; then ``steps`` times
    ``delta <- project(delta + step_size * g / ‖g‖, x)`` with g the per-sample input gradient
    (rows with a zero gradient stay put). ``project(delta, x)`` defaults to the L2 ball alone; see
    :func:`constraint_projection`. The model runs in eval mode during the attack (BatchNorm uses and
    keeps its running statistics; dropout is off) and gets its previous mode back; only gradients
    with respect to delta are taken, so no parameter's ``.grad`` changes. Returns a detached tensor.
    """
    if project is None:
        def project(delta: Tensor, x: Tensor) -> Tensor:
            return project_l2_ball(delta, eps)
    x = x.detach()
    if random_start:
        delta = project(random_ball(x.shape, eps, device=x.device, dtype=x.dtype, generator=generator), x)
    else:
        delta = torch.zeros_like(x)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for _ in range(steps):
                d = delta.detach().requires_grad_(True)
                # summed, not averaged: the per-sample gradient does not shrink with the batch size
                loss = F.cross_entropy(model(x + d), y, reduction="sum")
                (g,) = torch.autograd.grad(loss, d)
                step = g / _sample_norms(g).clamp_min(_TINY)
                delta = project(delta + step_size * step, x)
    finally:
        model.train(was_training)
    return delta.detach()
