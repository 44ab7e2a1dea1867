"""Tight margins: shrink DeepFool's perturbation to the smallest one found that still changes the label.

DeepFool's distance is an upper bound on the distance to the decision boundary, and not a tight one
(its overshoot alone adds 2%). The refinement starts from DeepFool's perturbation ``δ`` of a row and
keeps every iterate in the set DeepFool's perturbation lives in: the row's DCT block (the full space
being the block (0, n)) and, when ``clip`` is set, the box ``clip`` (applied after the subspace
projection, as DeepFool does: with a box and a block at once the box wins, so the perturbation lies
in the block up to the clipping). Two steps:

* **bisect**: along the segment from x to ``x + δ``, a bracketing search (false position on the
  logit gap, Illinois rule) between the largest ``t`` known not to change the label (0) and the
  smallest known to change it (1), ``bisect_steps`` tests, returning ``t_hi · δ``. Two forwards plus
  one per step and row, no gradient. Removes the overshoot and any overstep; on an affine model it
  gives the exact distance in a step or two (each step cuts the excess by about 1e3).
* **descent**: a projected minimum-norm descent in the manner of FMN (Pintor et al., NeurIPS 2021),
  started at the bisected point. Per step: the logit difference ``d = f_k0 - max_{j≠k0} f_j`` and its
  input gradient ``g`` at ``x + δ``; the norm bound ``ε`` shrinks by ``(1 - γ)`` (from
  ``min(ε, ‖δ‖)``) when ``x + δ`` changes the label and grows by ``(1 + γ)`` when it does not; ``δ``
  steps by ``α ε`` along ``-P g / ‖P g‖`` (P the projection onto the block), is projected onto the
  ε-ball, the block and the box. ``α`` and ``γ`` decay from their initial to their final value on a
  cosine schedule over ``steps``. The smallest ``δ`` at which the label was seen changed is kept. A
  row leaves the batch after ``steps`` steps, or once its best norm has not improved by ``tol``
  (relative) for ``patience`` steps, or when ``P g`` vanishes; a pending row takes its place.

Every perturbation returned was tested by a forward pass of ``x + δ`` and changes the model's label
at x (the prediction, not the ground truth), so the refined margin is an upper bound on the distance
to the boundary that is never above DeepFool's. Rows whose DeepFool run did not end with a label
change (not converged, or unable to move) are left alone and flagged ``refined=False``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from boundary_cli.geometry.adv_lib_attacks import ADV_LIB_METHODS, adv_lib_attack, check_fits
from boundary_cli.geometry.dct import block_indicator, idct2, masked_dct2
from boundary_cli.geometry.precision import model_precision
from boundary_cli.geometry.rows import RowState, input_gradients_only

REFINE_METHODS = ("none", "bisect", "descent")
ALL_METHODS = REFINE_METHODS + ADV_LIB_METHODS  # adv-lib's attacks: full space, clipped to [0, 1] only


@dataclass(frozen=True)
class RefineParams:
    """The settings of a refinement (see the module docstring), checked on construction.

    Attributes:
        method: ``none`` (DeepFool's margin only), ``bisect``, ``descent`` (bisect, then descend), or
            one of adv-lib's attacks (bisect, then the attack; FMN starts at the bisected point, the
            others at x; the smaller verified perturbation of the two is kept).
        bisect_steps: tests on the segment to DeepFool's point (see :func:`bisect_to_boundary`).
        steps: at most this many descent steps per row (an adv-lib attack's iterations).
        alpha: initial descent step, relative to the norm bound ε.
        alpha_final: final descent step, relative to ε (cosine schedule in between).
        gamma: initial factor by which ε shrinks or grows per step.
        gamma_final: final such factor.
        patience: a row leaves once its best norm has not improved by ``tol`` for this many steps.
        tol: relative improvement of the best norm that counts for ``patience``.
    """

    method: str = "descent"
    bisect_steps: int = 6
    steps: int = 30
    alpha: float = 1.0
    alpha_final: float = 0.01
    gamma: float = 0.1
    gamma_final: float = 0.001
    patience: int = 20
    tol: float = 1e-3

    def __post_init__(self) -> None:
        if self.method not in ALL_METHODS:
            raise ValueError(f"unknown refinement {self.method!r}; valid: {', '.join(ALL_METHODS)}")
        if self.bisect_steps < 1 or self.steps < 0 or self.patience < 1:
            raise ValueError("need bisect_steps >= 1, steps >= 0 and patience >= 1")
        if not (0 < self.alpha_final <= self.alpha) or not (0 < self.gamma_final <= self.gamma < 1):
            raise ValueError("need 0 < alpha_final <= alpha and 0 < gamma_final <= gamma < 1")
        if not 0 <= self.tol < 1:
            raise ValueError(f"need 0 <= tol < 1, got {self.tol}")

    def key(self) -> dict:
        """What changes a result, for a cache key: everything that the method uses."""
        if self.method == "none":
            return {"method": "none"}
        if self.method == "bisect":
            return {"method": "bisect", "bisect_steps": self.bisect_steps}
        if self.method in ADV_LIB_METHODS:
            return {"method": self.method, "bisect_steps": self.bisect_steps, "steps": self.steps}
        return asdict(self)


@dataclass
class RefineResult:
    """Per-row outputs of :func:`refine`, leading shape (R,).

    Attributes:
        perturbation: (R, C, H, W) the smallest verified perturbation (NaN where not refined), or None.
        margin: (R,) its L2 norm (``margin_min``); NaN where the row was not refined.
        margin_bisect: (R,) the L2 norm after bisection alone; NaN where not refined.
        refined: (R,) bool, DeepFool's point changed the label, so the row was refined.
        steps: (R,) int64 descent steps run (0 for ``bisect``).
        adv_label: (R,) int64 label at ``x + perturbation`` (-1 where not refined).
        n_forward: forwards summed over rows.
        n_backward: input-gradient backward passes summed over rows.
    """

    perturbation: Tensor | None
    margin: Tensor
    margin_bisect: Tensor
    refined: Tensor
    steps: Tensor
    adv_label: Tensor
    n_forward: int = 0
    n_backward: int = 0


def _norms(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1)


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def _labels(model: nn.Module, x: Tensor, tf32: bool) -> Tensor:
    with torch.no_grad(), model_precision(tf32):
        return model(x).argmax(dim=1)


def _logit_gap(logits: Tensor, label: Tensor) -> Tensor:
    """d = f_label - max_{j != label} f_j per row of logits (B, K): > 0 keeps the label, < 0 changes it."""
    own = logits.gather(1, label[:, None]).squeeze(1)
    return own - logits.scatter(1, label[:, None], float("-inf")).amax(dim=1)


def bisect_to_boundary(model: nn.Module, x: Tensor, delta: Tensor, label: Tensor, steps: int, *,
                       tf32: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Shrink each perturbation along its segment to where the label changes, by a bracketing search.

    The bracket [lo, hi] of t on ``x + t·delta`` starts at [0, 1]: the label holds at lo and has
    changed at hi (checked). Each step tests one t inside the bracket and moves the end whose side
    it is on. The t tested is the false-position estimate from the logit gap
    ``d = f_label - max_{j≠label} f_j`` at both ends (the Illinois rule halves the gap at an end that
    stays twice, so the bracket shrinks from both sides), nudged towards hi by 1e-3 of its distance to hi;
    a plain halving where that estimate is undefined. On a model that is affine along the segment
    the first step lands on the boundary; every step is at least as good as no step, and the
    returned t is always a tested point that changes the label.

    Args:
        model: classifier in eval mode.
        x: (B, C, H, W) inputs; ``delta`` (B, C, H, W) perturbations with finite entries.
        label: (B,) the model's label at x.
        steps: tests inside the bracket.

    Returns:
        (t (B,), adversarial (B,) bool, adv_label (B,)): ``t · delta`` changes the label where
        ``adversarial`` (checked at t = 1 first; rows where it does not keep t = 1 and False).
    """
    with torch.no_grad(), model_precision(tf32):
        logits_hi = model(x + delta)
        d_lo = _logit_gap(model(x), label)
    adv_label = logits_hi.argmax(dim=1)
    adversarial = adv_label != label
    d_hi = _logit_gap(logits_hi, label)
    lo = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    hi = torch.ones_like(lo)
    last = torch.zeros(len(x), dtype=torch.long, device=x.device)  # which end moved last: +1 hi, -1 lo
    for _ in range(steps):
        width = hi - lo
        den = d_lo - d_hi
        fp = lo + width * d_lo / den
        ok = torch.isfinite(fp) & (den > 0) & (fp > lo) & (fp < hi)
        t = torch.where(ok, fp + 1e-3 * (hi - fp), (lo + hi) / 2)
        with torch.no_grad(), model_precision(tf32):
            logits = model(x + _bcast(t, x) * delta)
        k = logits.argmax(dim=1)
        d = _logit_gap(logits, label)
        flipped = adversarial & (k != label)
        held = adversarial & ~flipped
        # Illinois: an end that stays while the other moves twice in a row has its gap halved
        d_lo = torch.where(flipped & (last == 1), d_lo / 2, d_lo)
        d_hi = torch.where(held & (last == -1), d_hi / 2, d_hi)
        hi, d_hi = torch.where(flipped, t, hi), torch.where(flipped, d, d_hi)
        lo, d_lo = torch.where(held, t, lo), torch.where(held, d, d_lo)
        last = torch.where(flipped, 1, torch.where(held, -1, last))
        adv_label = torch.where(flipped, k, adv_label)
    return hi, adversarial, adv_label


@dataclass
class _Descent(RowState):
    """Rows of a descent in flight."""

    row: Tensor  # (A,) int64 index into the rows of the run
    x: Tensor  # (A, C, H, W)
    label: Tensor  # (A,) int64 label at x
    delta: Tensor  # (A, C, H, W) current iterate
    eps: Tensor  # (A,) norm bound
    best: Tensor  # (A, C, H, W) smallest perturbation seen changing the label
    best_norm: Tensor  # (A,)
    best_label: Tensor  # (A,) int64 label at x + best
    mark: Tensor  # (A,) best norm at the last improvement by more than tol
    since: Tensor  # (A,) int64 steps since that improvement
    k: Tensor  # (A,) int64 steps run
    done: Tensor  # (A,) bool
    block: Tensor | None  # (A, 2) int64 DCT block (offset, size); None: full space, no projection


def _cosine(start: float, end: float, k: Tensor, total: int) -> Tensor:
    frac = k.to(torch.float32) / max(total, 1)
    return end + (start - end) * 0.5 * (1 + torch.cos(math.pi * frac.clamp(max=1.0)))


def descend(model: nn.Module, x: Tensor, start: Tensor, label: Tensor, params: RefineParams, *,
            clip: tuple[float, float] | None = None, row_block: Tensor | None = None,
            row_sample: Tensor | None = None, batch_rows: int = 1024, tf32: bool = False, progress: Callable[[int], None] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """The descent step of the refinement (module docstring), on rows that start adversarial.

    Args:
        model: classifier in eval mode.
        x: (R, C, H, W) the rows' inputs, or (B, C, H, W) samples with ``row_sample`` (R,) naming each
            row's sample; ``start`` (R, C, H, W) perturbations that change the label.
        label: (R,) the model's label at x.
        params: ``steps``, ``alpha``, ``gamma``, ``patience``, ``tol`` of :class:`RefineParams`.
        clip: optional (low, high) box for ``x + δ``.
        row_block: (R, 2) int64 (offset, size) DCT block per row, or None for the full space.
        batch_rows: rows in flight at once.

    Returns:
        (best (R, C, H, W), best_norm (R,), best_label (R,), steps (R,) int64, n_forward); the number
        of backward passes equals n_forward.
    """
    p = params
    n_rows = len(x) if row_sample is None else len(row_sample)
    dev, n_img = x.device, x.shape[-1]
    best = start.clone()
    best_norm = _norms(start)
    best_label = torch.full((n_rows,), -1, dtype=torch.long, device=dev)
    steps = torch.zeros(n_rows, dtype=torch.long, device=dev)
    n_fwd = 0

    def pending(lo: int, hi: int) -> _Descent:
        d = start[lo:hi]
        nrm = _norms(d)
        z = torch.zeros(hi - lo, dtype=torch.long, device=dev)
        xs = x[lo:hi] if row_sample is None else x[row_sample[lo:hi]]
        return _Descent(row=torch.arange(lo, hi, device=dev), x=xs, label=label[lo:hi], delta=d.clone(),
                        eps=nrm.clone(), best=d.clone(), best_norm=nrm.clone(), best_label=torch.full_like(z, -1),
                        mark=nrm.clone(), since=z, k=z.clone(), done=torch.zeros_like(z, dtype=torch.bool),
                        block=None if row_block is None else row_block[lo:hi])

    rows = pending(0, 0)
    next_row = 0
    with input_gradients_only(model):
        while next_row < n_rows or len(rows) > 0:
            take = min(batch_rows - len(rows), n_rows - next_row)
            if take > 0:
                rows.extend(pending(next_row, next_row + take))
                next_row += take
            mask = None if rows.block is None else block_indicator(rows.block[:, 0], rows.block[:, 1], n_img,
                                                                    dtype=x.dtype)
            xi = (rows.x + rows.delta).requires_grad_(True)
            with torch.enable_grad(), model_precision(tf32):
                logits = model(xi)
                own = logits.gather(1, rows.label[:, None]).squeeze(1)
                others = logits.scatter(1, rows.label[:, None], float("-inf"))
                (g,) = torch.autograd.grad((own - others.amax(dim=1)).sum(), xi)
            n_fwd += len(rows)
            pred = logits.detach().argmax(dim=1)
            adv = pred != rows.label
            nrm = _norms(rows.delta)
            better = adv & (nrm < rows.best_norm)
            rows.best = torch.where(_bcast(better, rows.best), rows.delta, rows.best)
            rows.best_norm = torch.where(better, nrm, rows.best_norm)
            rows.best_label = torch.where(better, pred, rows.best_label)
            moved = rows.best_norm < rows.mark * (1 - p.tol)
            rows.mark = torch.where(moved, rows.best_norm, rows.mark)
            rows.since = torch.where(moved, 0, rows.since + 1)

            pg = g if mask is None else idct2(masked_dct2(g, mask))
            gnorm = _norms(pg)
            rows.done = (rows.k >= p.steps) | (rows.since > p.patience) | ~(gnorm > 0) | ~torch.isfinite(gnorm)
            gamma = _cosine(p.gamma, p.gamma_final, rows.k, p.steps).to(x.dtype)
            alpha = _cosine(p.alpha, p.alpha_final, rows.k, p.steps).to(x.dtype)
            rows.eps = torch.where(adv, torch.minimum(rows.eps, nrm) * (1 - gamma), rows.eps * (1 + gamma))
            step = _bcast(alpha * rows.eps / gnorm.clamp_min(1e-30), pg) * pg
            d = rows.delta - step
            d = d * _bcast((rows.eps / _norms(d).clamp_min(1e-30)).clamp(max=1.0), d)
            if mask is not None:
                d = idct2(masked_dct2(d, mask))
            if clip is not None:
                d = (rows.x + d).clamp(*clip) - rows.x
            rows.delta = torch.where(_bcast(rows.done, d), rows.delta, d)
            rows.k = rows.k + (~rows.done).long()

            fin = rows.done.nonzero().squeeze(1)
            if fin.numel():
                out = rows.take(fin)
                best[out.row], best_norm[out.row], best_label[out.row] = out.best, out.best_norm, out.best_label
                steps[out.row] = out.k
                rows.keep((~rows.done).nonzero().squeeze(1))
                if progress is not None:
                    progress(int(fin.numel()))
    return best, best_norm, best_label, steps, n_fwd


def refine(model: nn.Module, x: Tensor, start: Tensor, label: Tensor, params: RefineParams, *,
           clip: tuple[float, float] | None = None, row_block: Tensor | None = None,
           row_sample: Tensor | None = None, batch_rows: int = 1024, keep_perturbation: bool = False,
           tf32: bool = False,
           progress: Callable[[int], None] | None = None) -> RefineResult:
    """Refine DeepFool's perturbations to the smallest verified ones found (see the module docstring).

    Args:
        model: classifier ``(B, C, H, W) -> (B, K)`` in eval mode; left untouched.
        x: (R, C, H, W) each row's input; or (B, C, H, W) samples, with ``row_sample``.
        start: (R, C, H, W) DeepFool's perturbation per row (non-finite rows: DeepFool could not move).
        label: (R,) int64 the model's label at x (DeepFool's ``prediction``).
        params: :class:`RefineParams`; ``method`` none returns NaN margins and refines nothing.
        clip: the box DeepFool used (None: unclipped).
        row_block: (R, 2) int64 DCT block (offset, size) per row; None: full space without projection.
        row_sample: (R,) int64 index into x of each row's sample (rows of many subspaces share their
            sample without copies); None: row r is x[r].
        batch_rows: rows in flight at once.
        keep_perturbation: return the refined perturbations.
        tf32: run the model in TF32 (as DeepFool's ``tf32``).
        progress: called with the number of rows that just finished a step of the refinement.

    Returns:
        :class:`RefineResult` with leading shape (R,).
    """
    n, dev = len(start), x.device

    def xr(rows: Tensor) -> Tensor:
        return x[rows] if row_sample is None else x[row_sample[rows]]

    if params.method in ADV_LIB_METHODS:
        check_fits(params.method, clip)
        if row_block is not None and not bool((row_block[:, 0] == 0).all() & (row_block[:, 1] == x.shape[-1]).all()):
            raise ValueError(f"adv-lib's {params.method} works in the full input space only, not in DCT blocks")
    nan = torch.full((n,), float("nan"), dtype=start.dtype, device=dev)
    margin, margin_bisect = nan.clone(), nan.clone()
    refined = torch.zeros(n, dtype=torch.bool, device=dev)
    steps = torch.zeros(n, dtype=torch.long, device=dev)
    adv_label = torch.full((n,), -1, dtype=torch.long, device=dev)
    perturbation = torch.full_like(start, float("nan")) if keep_perturbation else None
    if params.method == "none" or n == 0:
        return RefineResult(perturbation, margin, margin_bisect, refined, steps, adv_label)

    finite = torch.isfinite(start.flatten(1)).all(dim=1)
    cand = finite.nonzero().squeeze(1)
    n_fwd = n_bwd = 0
    t = torch.ones(len(cand), dtype=x.dtype, device=dev)
    ok = torch.zeros(len(cand), dtype=torch.bool, device=dev)
    lab = torch.zeros(len(cand), dtype=torch.long, device=dev)
    with input_gradients_only(model):
        for part in torch.arange(len(cand), device=dev).split(batch_rows):
            rows = cand[part]
            t[part], ok[part], lab[part] = bisect_to_boundary(model, xr(rows), start[rows], label[rows],
                                                              params.bisect_steps, tf32=tf32)
            n_fwd += len(rows) * (params.bisect_steps + 2)
            if progress is not None and params.method == "bisect":
                progress(len(rows))
    good = cand[ok]
    delta = _bcast(t[ok], start) * start[good]
    margin_bisect[good] = _norms(delta)
    refined[good] = True
    best, best_norm, best_label = delta, margin_bisect[good], lab[ok]
    if params.method == "descent" and params.steps > 0 and len(good):
        best, best_norm, found, steps[good], fwd = descend(
            model, x, delta, label[good], params, clip=clip,
            row_block=None if row_block is None else row_block[good],
            row_sample=good if row_sample is None else row_sample[good], batch_rows=batch_rows, tf32=tf32,
            progress=progress)
        best_label = torch.where(found >= 0, found, best_label)
        n_fwd, n_bwd = n_fwd + fwd, n_bwd + fwd
    elif params.method in ADV_LIB_METHODS and params.steps > 0 and len(good):
        best, best_norm, best_label = best.clone(), best_norm.clone(), best_label.clone()
        for part in torch.arange(len(good), device=dev).split(batch_rows):
            xs, ys = xr(good[part]), label[good[part]]
            d = adv_lib_attack(model, xs, ys, params.method, steps=params.steps, start=best[part])
            k = _labels(model, xs + d, tf32)
            nrm = _norms(d)
            keep = (k != ys) & torch.isfinite(nrm) & (nrm < best_norm[part])
            best[part] = torch.where(_bcast(keep, d), d, best[part])
            best_norm[part] = torch.where(keep, nrm, best_norm[part])
            best_label[part] = torch.where(keep, k, best_label[part])
            n_fwd += len(part)  # the check; adv-lib's own passes are not counted
            if progress is not None:
                progress(len(part))
    margin[good] = best_norm
    adv_label[good] = best_label
    if perturbation is not None:
        perturbation[good] = best
    return RefineResult(perturbation, margin, margin_bisect, refined, steps, adv_label, n_fwd, n_bwd)
