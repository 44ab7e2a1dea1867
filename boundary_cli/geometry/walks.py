"""Fixed-length normalised-gradient walks across the decision boundary (Decision-Flip-Experiments §2.3).

One batched walk serves every variant. A row is (image, target). At each step the model's class at
the current point is recorded; the row stops when its stop test holds, otherwise it moves by
``eta · g / ‖g‖``:

========== ======================================= ==================================
mode       direction (g = ∇ cross-entropy)          stops when the class at x ...
========== ======================================= ==================================
targeted   descend the loss of target t            ... is t
untargeted ascend the loss of the source class     ... differs from the source class
flipstop   descend the loss of target t            ... differs from the source class
========== ======================================= ==================================

The source class is the model's prediction at the starting image, never a ground-truth label.
Rows whose target is the source class (the "own slot") are not walked: status ``own``, distance 0.
Unlike the reference, every row has a hard ``max_steps`` cap (status ``capped``), and a row whose
gradient is exactly zero stops (status ``zero_grad``). Distances are reported both as L2 and as
squared L2 (the reference plots squared distances labelled "L2"); the step length quantises them:
the last step overshoots the boundary by up to ``eta``.

At most ``batch_rows`` rows are in flight; a finished row leaves the batch and a pending row takes
its place. Per step and row: one forward and one input-gradient backward, one host sync per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from boundary_cli.geometry.rows import RowState, input_gradients_only, rows_for_budget

WALK_MODES = ("targeted", "untargeted", "flipstop")
STATUSES = ("flipped", "capped", "zero_grad", "own")
FLIPPED, CAPPED, ZERO_GRAD, OWN = range(4)
# Input-sized buffers per row in flight: the iterate, its gradient, the copies made when rows join
# or leave, the starting image and the end point.
WALK_BUFFERS = 6


@dataclass(frozen=True)
class WalkParams:
    """The settings of a walk (see the module doc), checked on construction.

    Attributes:
        mode: ``targeted``, ``untargeted`` or ``flipstop``.
        eta: step length (L2, pixel units), > 0.
        max_steps: steps after which a row gives up (status ``capped``), >= 0.
        clip: optional (low, high) box every step is clamped to.
    """

    mode: str = "targeted"
    eta: float = 0.05
    max_steps: int = 1000
    clip: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.mode not in WALK_MODES:
            raise ValueError(f"unknown walk mode {self.mode!r}; valid: {', '.join(WALK_MODES)}")
        if not self.eta > 0:
            raise ValueError(f"eta must be > 0, got {self.eta}")
        if self.max_steps < 0:
            raise ValueError(f"need max_steps >= 0, got {self.max_steps}")
        if self.clip is not None:
            object.__setattr__(self, "clip", tuple(float(v) for v in self.clip))

    def key(self) -> dict[str, Any]:
        """Every setting, for a cache key (each one changes the result)."""
        return asdict(self)


@dataclass
class WalkResult:
    """Per-row outputs of a walk; leading shape ``(R,)`` for :func:`walk`, ``(N, T)`` for
    :func:`walk_to_classes`.

    Attributes:
        x_end: (..., C, H, W) the point where the row stopped, or None when not kept.
        l2: (...) Euclidean distance from the start to ``x_end``, pixel units.
        l2_sq: (...) its square (what the reference plots as "L2").
        steps: (...) int64 steps taken.
        status: (...) int64 code into :data:`STATUSES` (flipped, capped, zero_grad, own).
        source: (...) int64 class the model gives the starting image.
        target: (...) int64 target class (the source class for untargeted rows).
        end_class: (...) int64 class at ``x_end``.
        first_exit: (...) int64 first class other than the source met along the walk, -1 if none.
        first_exit_step: (...) int64 step at which it was met, -1 if never.
        visited: (..., K) bool, classes predicted at any point of the walk (the source included).
        n_forward: forwards summed over rows (one per row-step).
        n_backward: input-gradient backwards summed over rows (one per row-step that moved or tried).
    """

    x_end: Tensor | None
    l2: Tensor
    l2_sq: Tensor
    steps: Tensor
    status: Tensor
    source: Tensor
    target: Tensor
    end_class: Tensor
    first_exit: Tensor
    first_exit_step: Tensor
    visited: Tensor
    n_forward: int = 0
    n_backward: int = 0


def status_names(status: Tensor) -> list[str]:
    """Status codes (any shape) as words from :data:`STATUSES`, flattened in row order."""
    return [STATUSES[int(s)] for s in status.reshape(-1)]


@dataclass
class _Rows(RowState):
    """Walk rows in flight, kept row-local and written back only when a row finishes (fewer small
    ops per step: the long tail of a walk runs at batch size ~1, where they would dominate)."""

    row: Tensor  # (A,) int64 index into the rows of the run
    x: Tensor  # (A, C, H, W) the current point
    source: Tensor  # (A,) int64 class at the start (-1 until the first forward)
    target: Tensor  # (A,) int64 target class (the source class for untargeted rows)
    steps: Tensor  # (A,) int64 steps taken
    first_exit: Tensor  # (A,) int64 first class other than the source met, -1 if none
    first_exit_step: Tensor  # (A,) int64 step at which it was met, -1 if never
    visited: Tensor  # (A, K) bool classes met


def _walk_rows(
    model: nn.Module,
    x: Tensor,
    row_image: Tensor,
    row_target: Tensor | None,
    params: WalkParams,
    *,
    batch_rows: int,
    keep_points: bool,
    progress: Callable[[int], None] | None,
) -> WalkResult:
    """The shared core: walk rows starting at ``x[row_image]`` toward ``row_target`` (None for
    untargeted). Outputs have leading shape (R,)."""
    mode, eta, max_steps, clip = params.mode, params.eta, params.max_steps, params.clip
    n_rows, dev = int(row_image.shape[0]), x.device
    with torch.no_grad():
        n_classes = int(model(x[:1]).shape[1])
    if row_target is not None and row_target.numel() and (int(row_target.min()) < 0 or int(row_target.max()) >= n_classes):
        raise ValueError(f"targets must lie in [0, {n_classes - 1}]")

    def longs(n: int, fill: int = 0) -> Tensor:
        return torch.full((n,), fill, dtype=torch.long, device=dev)

    steps, status, source, target, end_class = (longs(n_rows) for _ in range(5))
    first_exit, first_exit_step = longs(n_rows, -1), longs(n_rows, -1)
    visited = torch.zeros((n_rows, n_classes), dtype=torch.bool, device=dev)
    x_end = torch.empty((n_rows, *x.shape[1:]), dtype=x.dtype, device=dev) if keep_points else None
    l2 = torch.zeros(n_rows, dtype=x.dtype, device=dev)

    def pending(lo: int, hi: int) -> _Rows:
        """Rows lo..hi-1 as they join; their source class is set by the first forward."""
        new, n = torch.arange(lo, hi, device=dev), hi - lo
        return _Rows(row=new, x=x[row_image[new]], source=longs(n, -1),
                     target=row_target[new] if row_target is not None else longs(n, 0), steps=longs(n, 0),
                     first_exit=longs(n, -1), first_exit_step=longs(n, -1),
                     visited=torch.zeros((n, n_classes), dtype=torch.bool, device=dev))

    rows = pending(0, 0)
    next_row, n_fwd, n_bwd = 0, 0, 0
    sign = 1.0 if mode == "untargeted" else -1.0
    view = (-1, *([1] * (x.ndim - 1)))

    with input_gradients_only(model):
        while next_row < n_rows or len(rows) > 0:
            take = min(batch_rows - len(rows), n_rows - next_row)
            n_old = len(rows)
            if take > 0:
                rows.extend(pending(next_row, next_row + take))
                next_row += take

            xi = rows.x.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = model(xi)
                pred = logits.detach().argmax(dim=1)
                if take > 0:  # a new row's source class: the prediction at its starting image
                    rows.source[n_old:] = pred[n_old:]
                    if mode == "untargeted":
                        rows.target[n_old:] = pred[n_old:]
                (g,) = torch.autograd.grad(F.cross_entropy(logits, rows.target, reduction="sum"), xi)
            n_fwd += len(rows)
            n_bwd += len(rows)

            src, tgt, st = rows.source, rows.target, rows.steps
            rows.visited.scatter_(1, pred.unsqueeze(1), True)
            left = (pred != src) & (rows.first_exit < 0)
            rows.first_exit = torch.where(left, pred, rows.first_exit)
            rows.first_exit_step = torch.where(left, st, rows.first_exit_step)
            gnorm = g.flatten(1).norm(dim=1)
            done = ((pred == tgt) if mode == "targeted" else (pred != src)) | (st >= max_steps) | (gnorm == 0)
            if take > 0 and mode != "untargeted":
                done[n_old:] |= tgt[n_old:] == src[n_old:]  # the own slot is not walked

            fin = done.nonzero().squeeze(1)  # the one host sync of the step
            if fin.numel():
                end = rows.take(fin)
                r, p, t, s_, k = end.row, pred[fin], end.target, end.source, end.steps
                code = torch.full_like(k, ZERO_GRAD)
                code = torch.where(k >= max_steps, CAPPED, code)
                code = torch.where((t == p) if mode == "targeted" else (p != s_), FLIPPED, code)
                if mode != "untargeted":
                    code = torch.where((k == 0) & (t == s_), OWN, code)
                steps[r], status[r], source[r], target[r], end_class[r] = k, code, s_, t, p
                first_exit[r], first_exit_step[r], visited[r] = end.first_exit, end.first_exit_step, end.visited
                l2[r] = (end.x - x[row_image[r]]).flatten(1).norm(dim=1)
                if x_end is not None:
                    x_end[r] = end.x
                if progress is not None:
                    progress(int(fin.numel()))
                keep = (~done).nonzero().squeeze(1)
                rows.keep(keep)
                g, gnorm = g[keep], gnorm[keep]
            if len(rows) == 0:
                continue
            rows.x = rows.x.detach().addcmul_(g, (sign * eta / gnorm).view(view))
            if clip is not None:
                rows.x.clamp_(*clip)
            rows.steps = rows.steps + 1

    return WalkResult(x_end, l2, l2 * l2, steps, status, source, target, end_class, first_exit, first_exit_step,
                      visited, n_fwd, n_bwd)


def _check(x: Tensor, batch_rows: int) -> None:
    if x.ndim < 2:
        raise ValueError(f"x must be (B, ...), got shape {tuple(x.shape)}")
    if batch_rows < 1:
        raise ValueError(f"need batch_rows >= 1, got {batch_rows}")


def walk(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None = None,
    params: WalkParams = WalkParams(),
    *,
    batch_rows: int = 1024,
    keep_points: bool = True,
    progress: Callable[[int], None] | None = None,
) -> WalkResult:
    """Walk every image of ``x`` until its stop test holds (see the module doc for the modes).

    Args:
        model: classifier ``(B, C, H, W) -> (B, K)`` in eval mode; left untouched.
        x: (B, C, H, W) starting images in the model's input units.
        target: (B,) int64 target classes; required for ``targeted`` and ``flipstop``, ignored
            for ``untargeted``.
        params: mode, step length, step cap and box, see :class:`WalkParams`.
        batch_rows: rows in flight at once (memory budget, see :func:`batch_rows_for_budget`).
        keep_points: return the end points (else ``x_end`` is None).
        progress: called with the number of rows that just finished.

    Returns:
        :class:`WalkResult` with leading shape (B,).
    """
    _check(x, batch_rows)
    mode = params.mode
    if mode != "untargeted" and target is None:
        raise ValueError(f"mode={mode} needs a target per image")
    rows = torch.arange(x.shape[0], device=x.device)
    tgt = None if mode == "untargeted" else torch.as_tensor(target, dtype=torch.long, device=x.device).view(-1)
    if tgt is not None and tgt.shape[0] != x.shape[0]:
        raise ValueError(f"need one target per image: {tgt.shape[0]} targets for {x.shape[0]} images")
    return _walk_rows(model, x, rows, tgt, params, batch_rows=batch_rows, keep_points=keep_points,
                      progress=progress)


def walk_to_classes(
    model: nn.Module,
    x: Tensor,
    classes: Tensor | None = None,
    params: WalkParams = WalkParams(),
    *,
    batch_rows: int = 1024,
    keep_points: bool = True,
    progress: Callable[[int], None] | None = None,
) -> WalkResult:
    """Walk every image toward every class of ``classes`` (default: all K classes) in one batch.

    Rows are (image, target) pairs; the own slot (target = the image's predicted class) is not
    walked and has status ``own`` and distance 0. Arguments are those of :func:`walk`;
    ``params.mode`` is ``targeted`` or ``flipstop``.

    Returns:
        :class:`WalkResult` with leading shape (N, T), T = ``len(classes)``, ``x_end`` (N, T, C, H, W).
    """
    _check(x, batch_rows)
    if params.mode == "untargeted":
        raise ValueError("walk_to_classes needs a targeted mode (targeted or flipstop)")
    if classes is None:
        with torch.no_grad():
            classes = torch.arange(int(model(x[:1]).shape[1]), device=x.device)
    classes = torch.as_tensor(classes, dtype=torch.long, device=x.device).view(-1)
    n, t = x.shape[0], classes.shape[0]
    rows = torch.arange(n, device=x.device).repeat_interleave(t)
    res = _walk_rows(model, x, rows, classes.repeat(n), params, batch_rows=batch_rows, keep_points=keep_points,
                     progress=progress)
    for f in fields(WalkResult):
        v = getattr(res, f.name)
        if isinstance(v, Tensor):
            setattr(res, f.name, v.view(n, t, *v.shape[1:]))
    return res


def nearest_flip(status: Tensor, distance: Tensor) -> tuple[Tensor, Tensor]:
    """The closest successful flip among each image's walks to several targets.

    Args:
        status: (..., T) int64 status codes of the walks of each image (e.g. ``WalkResult.status``
            of :func:`walk_to_classes`, (N, T)).
        distance: (..., T) their distances (L2, squared L2, or any other).

    Returns:
        (slot, dist): (...) int64 index into T of the nearest walk with status ``flipped`` (the own
        slot and failed walks excluded; -1 when none flipped) and (...) its distance (inf when none).
    """
    d = torch.where(status == FLIPPED, distance, torch.full_like(distance, float("inf")))
    dist, slot = d.min(dim=-1)
    return torch.where(torch.isfinite(dist), slot, torch.full_like(slot, -1)), dist


def batch_rows_for_budget(model: nn.Module, example: Tensor, budget_bytes: int, max_rows: int = 4096) -> int:
    """How many walk rows fit in ``budget_bytes``: the activations autograd saves for one forward
    of ``example`` (1, C, H, W) plus :data:`WALK_BUFFERS` input-sized buffers per row."""
    return rows_for_budget(model, example, WALK_BUFFERS, budget_bytes, max_rows)
