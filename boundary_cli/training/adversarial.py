"""L2 PGD adversarial training (Madry et al.) on the reference one-cycle SGD recipe (hold-me-tight §1.8)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from boundary_cli.data.images import ImageData
from boundary_cli.errors import BoundaryError
from boundary_cli.geometry.pgd import constraint_projection, pgd_l2
from boundary_cli.training.one_cycle import OneCycleSGD


@dataclass(kw_only=True)
class AdversarialOneCycleSGD(OneCycleSGD):
    """:class:`OneCycleSGD` (same optimizer, schedule, clipping and defaults) trained on L2 PGD
    adversarial examples: every mini-batch x is replaced by ``x + delta``, delta from
    :func:`~boundary_cli.geometry.pgd.pgd_l2` against the current weights.

    ``epsilon``: L2 radius in pixel units of the training data. ``steps``: PGD steps T.
    ``step_size``: alpha, None for ``2.5 * epsilon / steps``. ``random_start``: start each attack
    uniformly in the ball (seeded from the training seed). ``dykstra_iters``: Dykstra iterations of
    the flipped-data projection. The constraint set follows ``data.variant``: Dykstra through its
    orthogonal map where it has one (see :func:`~boundary_cli.geometry.pgd.constraint_projection`).
    """

    epsilon: float
    steps: int = 7
    step_size: float | None = None
    random_start: bool = True
    dykstra_iters: int = 20

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not self.epsilon > 0:
            raise BoundaryError(f"training recipe {name} needs epsilon > 0; got {self.epsilon}")
        if self.steps < 1:
            raise BoundaryError(f"training recipe {name} needs steps >= 1; got {self.steps}")
        if self.step_size is not None and not self.step_size > 0:
            raise BoundaryError(f"training recipe {name} needs step_size > 0 (or null for 2.5*epsilon/steps); "
                                f"got {self.step_size}")
        if self.dykstra_iters < 1:
            raise BoundaryError(f"training recipe {name} needs dykstra_iters >= 1; got {self.dykstra_iters}")

    @property
    def alpha(self) -> float:
        """The PGD step size actually used."""
        return self.step_size if self.step_size is not None else 2.5 * self.epsilon / self.steps

    def perturbation(self, data: ImageData, seed: int, device: torch.device
                     ) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
        """The PGD perturbation of each training batch against the current weights, inside the
        constraint set of ``data.variant``, random starts seeded from ``seed``. Training loss and
        accuracy in the curve are then those of the adversarial batches; the test columns stay clean."""
        project = constraint_projection(data.value_range, self.epsilon, self.dykstra_iters,
                                        orthogonal=data.variant.orthogonal_map)
        gen = torch.Generator(device=device).manual_seed(seed)

        def perturb(net: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
            return pgd_l2(net, xb, yb, eps=self.epsilon, steps=self.steps, step_size=self.alpha,
                          random_start=self.random_start, project=project, generator=gen)

        return perturb
