"""Training many small models at once as stacked parameters (a model zoo, activation_analysis §4.2).

M members share an architecture and a batch size; each has its own initial weights, optimizer kind,
learning rate, weight decay and batch order. Their parameters are stacked ``{name: (M, *shape)}``,
every step evaluates all members on their own mini-batches with ``torch.func.functional_call`` under
``vmap``, and one :class:`~boundary_cli.training.stacked_optimizer.StackedOptimizer` updates them.
The summed loss gives each member exactly its own gradient (the members share no parameter), so the
result equals training each member alone (tested). Members that differ only in their number of
epochs share one run: ask for snapshots at the epochs they need.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from boundary_cli.training.stacked_optimizer import StackedOptimizer


def member_order(n: int, seed: int, epoch: int) -> Tensor:
    """The order (n,) int64 in which a member with ``seed`` visits the training set in 1-based ``epoch``:
    a permutation from a generator seeded with (seed, epoch), so it does not depend on which other
    members train beside it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch)))


def stack_members(models: Sequence[nn.Module]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(parameters {name: (M, *shape)} detached copies, buffers of the first model) of M models of one
    architecture."""
    params, _ = stack_module_state(list(models))
    return {k: v.detach().clone() for k, v in params.items()}, {k: b.detach() for k, b in models[0].named_buffers()}


def fit_stacked(template: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor, optimizer: StackedOptimizer,
                seeds: Sequence[int], *, batch_size: int, epochs: int, snapshots: Sequence[int] = (),
                buffers: dict[str, Tensor] | None = None,
                on_epoch: Callable[[int], None] | None = None) -> dict[int, dict[str, Tensor]]:
    """Train the stacked members ``params`` ({name: (M, *shape)}, on x's device) on x (N, C, H, W), y (N,)
    for ``epochs`` epochs of mini-batches of ``batch_size`` (the last one smaller), member m visiting the
    data in :func:`member_order` (n, seeds[m], epoch), cross-entropy, ``template`` (any instance of the
    architecture, in eval mode: the zoo models have no dropout or BatchNorm) evaluated functionally.

    Returns ``{epoch: {name: (M, *shape)}}`` for every epoch in ``snapshots`` and the last one (copies).
    ``on_epoch(epoch)`` is called after each epoch.
    """
    n = x.shape[0]
    buffers = buffers or {}
    names = list(params)
    work = {k: v.clone().requires_grad_(True) for k, v in params.items()}

    def loss(p: dict[str, Tensor], xb: Tensor, yb: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(template, {**p, **buffers}, (xb,)), yb)

    losses = vmap(loss)
    kept: dict[int, dict[str, Tensor]] = {}
    steps = math.ceil(n / batch_size)
    for epoch in range(1, epochs + 1):
        order = torch.stack([member_order(n, s, epoch) for s in seeds]).to(x.device)  # (M, n)
        for b in range(steps):
            idx = order[:, b * batch_size:(b + 1) * batch_size]  # (M, B)
            total = losses(work, x[idx], y[idx]).sum()
            grads = torch.autograd.grad(total, [work[k] for k in names], allow_unused=True)
            optimizer.step(work, dict(zip(names, grads)))
        if epoch in snapshots or epoch == epochs:
            kept[epoch] = {k: v.detach().clone() for k, v in work.items()}
        if on_epoch is not None:
            on_epoch(epoch)
    return kept
