"""One optimizer over M stacked members: parameters ``{name: (M, *shape)}``, each member with its own
optimizer kind (SGD or Adam), learning rate and weight decay.

What a zoo trained many models at a time needs (activation_analysis, METHODS.md §4.2: SGD without
momentum or Adam, per-run lr and L2), and what single-point overfitting uses (every member Adam with
one rate, the training run's moments). Each member's update is exactly what ``torch.optim.SGD`` /
``torch.optim.Adam`` (not AMSGrad, not decoupled) would do to that member alone: weight decay is
torch's coupled L2 (``g + wd·p``), Adam's bias corrections use the member's own step count. Members
whose gradient is None for a tensor are left as they are there (as torch skips a parameter without
a gradient).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

KINDS = ("sgd", "adam")


def _per_member(values: float | Sequence[float] | Tensor, m: int, what: str) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if t.numel() == 1:
        t = t.expand(m)
    if t.numel() != m:
        raise ValueError(f"{what}: one value or one per member ({m}), got {t.numel()}")
    return t.clone()


@dataclass
class StackedOptimizer:
    """SGD / Adam per member over stacked parameters.

    Args (all per member: one value for every member, or a sequence of M):
        kinds: ``"sgd"`` or ``"adam"``.
        lr, weight_decay: as torch's ``lr`` and ``weight_decay`` (coupled L2).
        momentum: SGD's momentum (the reference's runs: 0; dampening 0, no Nesterov).
        betas, eps: Adam's (shared by the members).
    """

    members: int
    kinds: str | Sequence[str] = "adam"
    lr: float | Sequence[float] | Tensor = 1e-3
    weight_decay: float | Sequence[float] | Tensor = 0.0
    momentum: float | Sequence[float] | Tensor = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    state: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = self.members
        kinds = [self.kinds] * m if isinstance(self.kinds, str) else list(self.kinds)
        bad = [k for k in kinds if k not in KINDS]
        if len(kinds) != m or bad:
            raise ValueError(f"kinds: one of {KINDS} per member ({m}); got {kinds}")
        self.is_adam = torch.tensor([k == "adam" for k in kinds])
        self.lr = _per_member(self.lr, m, "lr")
        self.weight_decay = _per_member(self.weight_decay, m, "weight_decay")
        self.momentum = _per_member(self.momentum, m, "momentum")
        self.betas = (float(self.betas[0]), float(self.betas[1]))

    def _slot(self, name: str, p: Tensor) -> dict[str, Tensor]:
        if name not in self.state:
            slot = dict(step=torch.zeros(self.members, dtype=torch.float64))
            if self.is_adam.any():
                slot.update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            if ((~self.is_adam) & (self.momentum != 0)).any():
                slot.update(momentum_buffer=torch.zeros_like(p))
            self.state[name] = slot
        return self.state[name]

    @torch.no_grad()
    def step(self, params: dict[str, Tensor], grads: dict[str, Tensor | None] | None = None) -> None:
        """Update every stacked tensor (M, *shape) of ``params`` in place from its gradient (``grads``
        by name, or each tensor's ``.grad`` when None)."""
        b1, b2 = self.betas
        for name, p in params.items():
            g = p.grad if grads is None else grads.get(name)
            if g is None:
                continue
            s = self._slot(name, p)
            view = (-1,) + (1,) * (p.dim() - 1)
            dev, dt = p.device, p.dtype
            lr, wd, mom = (t.to(dev, dt).view(view) for t in (self.lr, self.weight_decay, self.momentum))
            g = g + wd * p
            s["step"] += 1
            update = lr * g  # SGD without momentum
            if "momentum_buffer" in s:  # torch's first SGD step copies the gradient into the buffer
                buf = torch.where(s["step"].to(dev).view(view) > 1, mom * s["momentum_buffer"] + g, g)
                s["momentum_buffer"].copy_(buf)
                update = torch.where(mom != 0, lr * buf, update)
            if "exp_avg" in s:
                s["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
                s["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
                step = s["step"].to(dev)
                bc1 = (1 - b1 ** step).to(dt).view(view)
                bc2 = (1 - b2 ** step).to(dt).view(view)
                adam = (lr / bc1) * s["exp_avg"] / (s["exp_avg_sq"].sqrt() / bc2.sqrt() + self.eps)
                update = torch.where(self.is_adam.to(dev).view(view), adam, update)
            p.sub_(update)

    def load_adam(self, name: str, step: float | Tensor, exp_avg: Tensor, exp_avg_sq: Tensor) -> None:
        """Start ``name``'s Adam slots from stored ones: moments (M, *shape) and a step count (a
        scalar or (M,)) that the bias corrections continue from."""
        if exp_avg.shape[0] != self.members or exp_avg_sq.shape != exp_avg.shape:
            raise ValueError(f"stored moments of {name!r} need shape ({self.members}, ...), got "
                             f"{tuple(exp_avg.shape)} and {tuple(exp_avg_sq.shape)}")
        s = self._slot(name, exp_avg)
        s.update(exp_avg=exp_avg.clone().contiguous(), exp_avg_sq=exp_avg_sq.clone().contiguous(),
                 step=_per_member(step, self.members, "step"))
