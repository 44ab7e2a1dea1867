"""A zoo of small models over activation_analysis's hyper-parameter grid (METHODS.md §4.2), trained
many at a time.

The grid has 2 · 4⁶ = 8,192 points (optimizer, lr, weight decay, epochs, seed, init, batch size).
Members that differ only in their epochs share one training run (trained to the largest, a snapshot
at each epoch asked for); runs with the same batch size train together as stacked parameters
(:func:`~boundary_cli.training.stacked.fit_stacked`), or one after another (``mode="loop"``, the same
result: on a CPU small nets can train faster that way). A member's initial weights come from
``torch.manual_seed(seed)`` and its init; its batch order from its seed (see
:func:`~boundary_cli.training.stacked.member_order`).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from boundary_cli.training.stacked import fit_stacked, stack_members
from boundary_cli.training.stacked_optimizer import StackedOptimizer

log = logging.getLogger(__name__)

GRID: dict[str, tuple] = dict(
    optimizer=("sgd", "adam"),
    lr=(5e-3, 1e-2, 5e-2, 1e-1),
    weight_decay=(0.0, 5e-2, 1e-1, 2e-1),
    epochs=(1, 2, 3, 4),
    seed=(0, 1, 2, 42),
    init=("xavier_uniform", "normal", "kaiming_uniform", "default"),
    batch_size=(32, 64, 128, 256),
)
GRID_SIZE = 8192


@dataclass(frozen=True)
class Member:
    """One grid point: how one zoo model is trained."""

    optimizer: str
    lr: float
    weight_decay: float
    epochs: int
    seed: int
    init: str
    batch_size: int

    def run(self) -> tuple:
        """Everything but the epochs: members with the same run share one training trajectory."""
        return (self.optimizer, self.lr, self.weight_decay, self.seed, self.init, self.batch_size)


def grid_members(grid: dict[str, Sequence] = GRID) -> list[Member]:
    """Every point of ``grid`` in a fixed order (itertools.product over its keys in Member's order)."""
    keys = [f for f in Member.__dataclass_fields__]
    return [Member(**dict(zip(keys, values))) for values in itertools.product(*(grid[k] for k in keys))]


def draw_members(size: int, seed: int, grid: dict[str, Sequence] = GRID) -> list[Member]:
    """``size`` distinct grid points drawn uniformly from ``seed`` (all of them, in grid order, when
    ``size`` is the grid's size). Raises ValueError for a size of 0 or beyond the grid."""
    members = grid_members(grid)
    if not 1 <= size <= len(members):
        raise ValueError(f"a zoo size must be in 1..{len(members)} (the grid's points), got {size}")
    if size == len(members):
        return members
    pick = torch.randperm(len(members), generator=torch.Generator().manual_seed(int(seed)))[:size]
    return [members[i] for i in sorted(pick.tolist())]


def _optimizer(runs: Sequence[tuple]) -> StackedOptimizer:
    return StackedOptimizer(len(runs), kinds=[r[0] for r in runs], lr=[r[1] for r in runs],
                            weight_decay=[r[2] for r in runs])


def train_zoo(build: Callable[[str, int], nn.Module], members: Sequence[Member], x: Tensor, y: Tensor, *,
              mode: str = "stacked", max_stack: int = 64,
              progress: Callable[[int], None] | None = None) -> dict[Member, dict[str, Tensor]]:
    """Train every member on x (N, C, H, W) / y (N,) (on the device the models and x are on) and
    return ``{member: {parameter name: tensor}}``.

    ``build(init, seed)`` returns a fresh model in eval mode with that init after
    ``torch.manual_seed(seed)``. ``mode``: ``stacked`` (up to ``max_stack`` runs of one batch size at
    once), ``loop`` (one run at a time; the same arithmetic) or ``auto`` (:func:`faster_mode`).
    ``progress(k)`` after k more members are done.
    """
    if mode not in ("stacked", "loop", "auto"):
        raise ValueError(f"zoo training mode must be stacked, loop or auto, got {mode!r}")
    if mode == "auto":
        mode = faster_mode(build, x, y, members, max_stack)
        log.info("zoo: training %s (measured faster here)", "stacked" if mode == "stacked" else "one run at a time")
    by_run: dict[tuple, list[Member]] = {}
    for m in members:
        by_run.setdefault(m.run(), []).append(m)
    by_batch: dict[int, list[tuple]] = {}
    for run in by_run:
        by_batch.setdefault(run[5], []).append(run)
    out: dict[Member, dict[str, Tensor]] = {}
    width = max_stack if mode == "stacked" else 1
    for batch_size, runs in sorted(by_batch.items()):
        for lo in range(0, len(runs), width):
            group = runs[lo:lo + width]
            start = time.perf_counter()
            models = [build(r[4], r[3]).to(x.device) for r in group]
            params, buffers = stack_members(models)
            wanted = sorted({m.epochs for r in group for m in by_run[r]})
            kept = fit_stacked(models[0], params, x, y, _optimizer(group), [r[3] for r in group],
                               batch_size=batch_size, epochs=wanted[-1], snapshots=wanted, buffers=buffers)
            for i, r in enumerate(group):
                for m in by_run[r]:
                    out[m] = {k: v[i].clone() for k, v in kept[m.epochs].items()}
            done = sum(len(by_run[r]) for r in group)
            log.debug("zoo: %d runs of batch %d (%d members) in %.1f s", len(group), batch_size, done,
                      time.perf_counter() - start)
            if progress is not None:
                progress(done)
    return out


def faster_mode(build: Callable[[str, int], nn.Module], x: Tensor, y: Tensor, members: Sequence[Member],
                max_stack: int = 64, probe_images: int = 512) -> str:
    """``stacked`` or ``loop``, whichever trains one epoch of up to ``max_stack`` of these runs on the
    first ``probe_images`` images faster (measured; a GPU is taken to favour stacking without a
    probe)."""
    if x.device.type != "cpu":
        return "stacked"
    runs = list({m.run(): m for m in members}.values())[:max_stack]
    probe = [Member(r.optimizer, r.lr, r.weight_decay, 1, r.seed, r.init, r.batch_size) for r in runs]
    xs, ys = x[:probe_images], y[:probe_images]
    times = {}
    for mode in ("stacked", "loop"):
        start = time.perf_counter()
        train_zoo(build, probe, xs, ys, mode=mode, max_stack=max_stack)
        times[mode] = time.perf_counter() - start
    return min(times, key=times.get)


def member_record(m: Member) -> dict:
    """The member's hyper-parameters as a plain dict (for tables and store keys)."""
    return asdict(m)
