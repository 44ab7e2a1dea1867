"""Overfitting single training points with Adam (Decision-Flip-Experiments "train again", §2.5).

``independent``: every point starts from the base weights (the reference's variant B). The points
of a batch are trained at once as stacked copies of the parameters: the loss is the sum of each
copy's loss on its own point, so each copy's gradient is its own point's gradient, and Adam acts
elementwise, so one Adam over the stacked tensors is exactly an independent Adam per point (the
Adam case of :class:`~boundary_cli.training.stacked_optimizer.StackedOptimizer`). ``sequential``: one copy trained point after point without restoring (variant A, cumulative).

The Adam state each overfit starts from is the training run's (``adam_state``: moments and step
count at the checkpoint, as the reference's ``Saver.restore`` gives), or zero when None (a fresh
Adam, whose first step is about ``lr · sign(g)`` on every parameter with a gradient).

Training runs in eval mode: a single example has no batch statistics, so BatchNorm uses its running
statistics and dropout is off (the reference model has neither).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from boundary_cli.training.optimizer_state import adam_slots, seed_adam
from boundary_cli.training.stacked_optimizer import StackedOptimizer


class WithParams(nn.Module):
    """``model`` evaluated with other parameters: x (B, C, H, W) -> logits (B, K)."""

    def __init__(self, model: nn.Module, params: dict[str, Tensor]) -> None:
        super().__init__()
        self.model = model
        self.params = {k: v.detach() for k, v in params.items()}
        self.buffers_ = dict(model.named_buffers())

    def forward(self, x: Tensor) -> Tensor:
        return functional_call(self.model, {**self.params, **self.buffers_}, (x,))


def _adam(params, lr: float, betas: tuple[float, float], eps: float) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps)


def overfit_independent(model: nn.Module, x: Tensor, y: Tensor, *, steps: int = 100, lr: float = 1e-3,
                        betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                        adam_state: dict | None = None) -> dict[str, Tensor]:
    """Train a copy of ``model``'s parameters on each point alone, all copies at once.

    Args:
        model: base classifier (left untouched); used in eval mode.
        x: (P, C, H, W) points; y: (P,) their labels.
        steps: Adam steps per point.
        adam_state: the training run's optimizer state
            (:func:`~boundary_cli.training.optimizer_state.named_optimizer_state`); every copy starts
            from its moments and step count. None: a fresh Adam.

    Returns:
        ``{name: (P, *shape)}`` the overfit parameters of each point's copy.
    """
    was_training = model.training
    model.eval()
    try:
        stacked, _ = stack_module_state([model] * x.shape[0])
        stacked = {k: v.detach().clone().requires_grad_(True) for k, v in stacked.items()}
        buffers = dict(model.named_buffers())

        def one(params: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
            logits = functional_call(model, {**params, **buffers}, (xi.unsqueeze(0),))
            return F.cross_entropy(logits, yi.unsqueeze(0))

        losses = torch.func.vmap(one)
        copies = x.shape[0]
        opt = StackedOptimizer(copies, kinds="adam", lr=lr, betas=betas, eps=eps)
        if adam_state is not None:
            for name, slot in adam_slots(adam_state, dict(model.named_parameters())).items():
                p = stacked[name]
                m, v = (slot[k].to(p.device, p.dtype).unsqueeze(0).expand(copies, *p.shape[1:])
                        for k in ("exp_avg", "exp_avg_sq"))
                opt.load_adam(name, float(slot["step"]), m, v)
        names = list(stacked)
        for _ in range(steps):
            grads = torch.autograd.grad(losses(stacked, x, y).sum(), [stacked[k] for k in names], allow_unused=True)
            opt.step(stacked, dict(zip(names, grads)))
        return {k: v.detach() for k, v in stacked.items()}
    finally:
        model.train(was_training)


def overfit_sequential(model: nn.Module, x: Tensor, y: Tensor, *, steps: int = 100, lr: float = 1e-3,
                       betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                       adam_state: dict | None = None, progress: Callable[[int], None] | None = None) -> nn.Module:
    """A copy of ``model`` trained on point 0 alone for ``steps`` Adam steps, then on point 1, ...
    without restoring weights or the Adam state in between (x (P, C, H, W), y (P,)); the Adam state
    starts from ``adam_state`` (restored once, as the reference's variant A) or fresh when None.
    Returns the copy in eval mode."""
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(True)
    opt = _adam(list(net.parameters()), lr, betas, eps)
    if adam_state is not None:
        params = dict(net.named_parameters())
        seed_adam(opt, params, adam_slots(adam_state, params))
    for i in range(x.shape[0]):
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]).backward()
            opt.step()
        if progress is not None:
            progress(1)
    return net


def points_per_batch(model: nn.Module, budget_bytes: int) -> int:
    """Stacked copies that fit in ``budget_bytes``: each holds parameters, gradients and two Adam
    moments (activations of one image are small beside them)."""
    n_params = sum(p.numel() * p.element_size() for p in model.parameters())
    return max(1, int(budget_bytes // (5 * n_params)))
