"""Batched DeepFool, in the full input space or inside DCT block subspaces (hold-me-tight §1.5).

Semantics are exactly those of the reference per-sample algorithm: the candidate classes are the
top-k of the logits at x and stay fixed; each iteration takes the gradient at ``x + r``, picks the
candidate with the smallest ``|f_k - f_0| / ‖P w_k‖`` (P the projection onto the subspace, identity
in full space), steps by ``max(that ratio, 1e-4)`` along the unit vector ``P w_k / ‖P w_k‖``, and
stops when ``x + (1 + overshoot) r`` changes the label. The margin is ``‖(1 + overshoot) r‖``, in
the pixel units of x. Rows that reach ``max_iter`` keep their margin and are flagged
``converged=False``; rows whose (projected) gradients all vanish cannot move and get margin inf,
also flagged. A projected gradient counts as vanished below ``INVARIANT_RTOL`` times its full norm.

Rows are (sample, subspace) pairs. At most ``batch_rows`` are in flight; a finished row leaves the
batch and the next pending row takes its place, so the batch stays full until the work runs out.
Per iteration and row: one forward with gradients, K'-1 vector-Jacobian products (K' candidates)
and one forward without gradients for the stop test. The only host sync retires finished rows and
refills the batch, once every ``sync_every`` iterations; in between, finished rows ride along frozen.

The settings are one frozen record, :class:`DeepFoolParams`; its :meth:`~DeepFoolParams.key` is
what a cache of results must key on.

Precision: the model's forwards and backwards run in full IEEE float32 unless ``tf32=True`` asks for
TF32 (faster on Ampere+ GPUs; a scope around the model calls only, restored afterwards); the DCT
projection always runs in IEEE float32 (:mod:`boundary_cli.geometry.precision`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from boundary_cli.geometry.dct import DCTBlock, block_indicator, idct2, masked_dct2
from boundary_cli.geometry.precision import model_precision
from boundary_cli.geometry.rows import RowState, input_gradients_only, rows_for_budget

VJP_METHODS = ("loop", "batched")
MIN_STEP = 1e-4
INVARIANT_RTOL = 1e-5  # ‖P w‖ <= this × ‖w‖ counts as zero (float32 DCT rounding is ~1e-6)
KEY_FIELDS = ("candidates", "overshoot", "max_iter", "clip", "tf32")  # what changes a result
OPTIONAL_KEY_FIELDS = {"min_step": MIN_STEP, "eps_gap": None}  # part of the key only when not at their default


@dataclass(frozen=True)
class DeepFoolParams:
    """The settings of a DeepFool run (see :func:`deepfool`), checked on construction.

    Attributes:
        candidates: K', the number of top classes at x considered (fixed for the whole run; capped
            at the number of classes).
        overshoot: the stop test and the returned perturbation use ``(1 + overshoot) r``.
        max_iter: iterations before a row gives up (flagged ``converged=False``).
        clip: optional (low, high) box; iterates and the result are clamped to it.
        tf32: run the model's forwards and backwards with TF32 matmuls and convolutions (CUDA,
            Ampere+); False keeps them in full float32. The DCT projection is float32 either way.
            Restored after each model call; nothing is set process-wide.
        vjp: how the K'-1 input gradients are taken, see :func:`difference_grads`.
        sync_every: iterations between the host syncs that retire finished rows and refill the
            batch; in between, finished rows stay frozen in the batch (their compute is wasted, and
            counted), so the GPU never waits for the host. 1 retires rows after every iteration.
        min_step: smallest step ratio taken (hold-me-tight's 1e-4); 0 takes the ratio as it is.
        eps_gap: also stop a row whose top-two logit gap at the stop point is at most this (None:
            never). With ``overshoot=0, min_step=0, eps_gap=1e-6`` this is influenciae's
            SampleBoundaryCalculator (:func:`sample_boundary_params`); such a row sits on the
            boundary without having crossed it, so it is ``converged=False`` unless its label changed.
    """

    candidates: int = 10
    overshoot: float = 0.02
    max_iter: int = 100
    clip: tuple[float, float] | None = None
    tf32: bool = False
    vjp: str = "loop"
    sync_every: int = 1
    min_step: float = MIN_STEP
    eps_gap: float | None = None

    def __post_init__(self) -> None:
        if self.candidates < 2 or self.max_iter < 1 or self.overshoot < 0 or self.sync_every < 1:
            raise ValueError("need candidates >= 2, max_iter >= 1, sync_every >= 1 and overshoot >= 0")
        if self.min_step < 0 or (self.eps_gap is not None and self.eps_gap < 0):
            raise ValueError("need min_step >= 0 and eps_gap >= 0 (or None)")
        if self.vjp not in VJP_METHODS:
            raise ValueError(f"unknown VJP method {self.vjp!r}; valid: {', '.join(VJP_METHODS)}")
        if self.clip is not None:
            object.__setattr__(self, "clip", tuple(float(v) for v in self.clip))

    def key(self) -> dict[str, Any]:
        """The settings that change a result, for a cache key: all but ``vjp`` and ``sync_every``
        (which change rounding at most, see tests/test_deepfool.py); ``min_step`` and ``eps_gap``
        only when set away from their defaults, so keys from before they existed stay valid."""
        out = {name: value for name, value in asdict(self).items() if name in KEY_FIELDS}
        out.update({k: getattr(self, k) for k, default in OPTIONAL_KEY_FIELDS.items() if getattr(self, k) != default})
        return out


def sample_boundary_params(max_iter: int = 100, eps: float = 1e-6, candidates: int = 10) -> DeepFoolParams:
    """influenciae's SampleBoundaryCalculator as DeepFool settings: no overshoot, no clipping, no
    minimum step, and the ``eps`` gap stop (METHODS.md §5.3); its score is the margin."""
    return DeepFoolParams(candidates=candidates, overshoot=0.0, max_iter=max_iter, clip=None, min_step=0.0,
                          eps_gap=eps)


@dataclass
class DeepFoolResult:
    """Per-row outputs of DeepFool. Leading shape ``(B,)`` for :func:`deepfool`, ``(S, B)`` for
    :func:`deepfool_subspaces` (S = subspaces, full space first when included).

    Attributes:
        perturbation: (..., C, H, W) ``x_adv - x`` with ``x_adv = x + (1 + overshoot) r`` (clipped
            when clipping is on; inf for rows that could not move), or None when not kept.
        margin: (...) L2 norm of the perturbation, pixel units; inf when the row could not move.
        margin_linf: (...) L-inf norm of the perturbation.
        iterations: (...) int64 iterations run.
        converged: (...) bool, True when ``adv_label != prediction``.
        prediction: (...) int64 label the model gives x (not the ground truth).
        adv_label: (...) int64 label the model gives ``x + perturbation``.
        n_forward: forwards summed over rows (two per row-iteration).
        n_backward: vector-Jacobian products summed over rows (K'-1 per row-iteration).
    """

    perturbation: Tensor | None
    margin: Tensor
    margin_linf: Tensor
    iterations: Tensor
    converged: Tensor
    prediction: Tensor
    adv_label: Tensor
    n_forward: int = 0
    n_backward: int = 0


@dataclass
class _Rows(RowState):
    """DeepFool rows in flight. A row that is done stays, frozen (``active`` false), until the next
    sync point retires it; its flags and label are kept from the iteration it finished."""

    row: Tensor  # (A,) int64 index into the rows of the run
    x: Tensor  # (A, C, H, W) its sample
    r: Tensor  # (A, C, H, W) the step sum so far
    it: Tensor  # (A,) int64 iterations run
    cand: Tensor  # (A, K') int64 candidate classes, column 0 the label at x
    active: Tensor  # (A,) bool, not done yet
    flipped: Tensor  # (A,) bool, the label changed when it finished
    stuck: Tensor  # (A,) bool, it could not move
    k_end: Tensor  # (A,) int64 label at the end
    block: Tensor | None  # (A, 2) int64 DCT block (offset, size); None: full space, no projection


def difference_grads(logits: Tensor, x: Tensor, cand: Tensor, method: str = "loop") -> Tensor:
    """Gradients of the candidate logit differences with respect to the input.

    Args:
        logits: (B, K) logits computed from ``x`` with the graph kept.
        x: (B, C, H, W) input that requires grad.
        cand: (B, K') candidate classes, column 0 the current label k0.
        method: ``loop`` (K'-1 calls of ``torch.autograd.grad`` with ``retain_graph``) or
            ``batched`` (one vmapped backward with ``is_grads_batched=True``).

    Returns:
        (K'-1, B, C, H, W) with entry j = ∇x (f_{cand[:, j+1]} - f_{cand[:, 0]}). Valid as
        per-sample gradients only when rows do not interact (eval mode).
    """
    n_diff = cand.shape[1] - 1
    if method == "loop":
        sel = logits.gather(1, cand)
        diffs = sel[:, 1:] - sel[:, :1]
        out = torch.empty((n_diff, *x.shape), dtype=x.dtype, device=x.device)
        for j in range(n_diff):
            (out[j],) = torch.autograd.grad(diffs[:, j].sum(), x, retain_graph=j < n_diff - 1)
        return out
    if method == "batched":
        v = torch.zeros((n_diff, *logits.shape), dtype=logits.dtype, device=logits.device)
        v.scatter_(2, cand[:, 1:].T.unsqueeze(-1), 1.0)
        v.scatter_(2, cand[:, :1].T.expand(n_diff, -1).unsqueeze(-1), -1.0)
        (g,) = torch.autograd.grad(logits, x, grad_outputs=v, is_grads_batched=True)
        return g
    raise ValueError(f"unknown VJP method {method!r}; valid: {', '.join(VJP_METHODS)}")


def _deepfool_rows(
    model: nn.Module,
    x: Tensor,
    row_sample: Tensor,
    row_block: Tensor | None,
    params: DeepFoolParams,
    *,
    batch_rows: int,
    keep_perturbation: bool,
    progress: Callable[[int], None] | None,
) -> DeepFoolResult:
    """The shared core: DeepFool on rows ``x[row_sample]``. ``row_block`` (R, 2) holds each row's
    DCT block as (offset, size), (0, n) being the full space; None runs every row in full space
    without any projection. Outputs have leading shape (R,)."""
    p = params
    n_rows = int(row_sample.shape[0])
    dev = x.device
    n_img = x.shape[-1]
    with torch.no_grad(), model_precision(p.tf32):
        n_classes = int(model(x[:1]).shape[1])
    kc = min(p.candidates, n_classes)
    if kc < 2:
        raise ValueError("DeepFool needs at least two candidate classes")
    inf = torch.tensor(float("inf"), device=dev)

    margin = torch.empty(n_rows, dtype=x.dtype, device=dev)
    margin_linf = torch.empty(n_rows, dtype=x.dtype, device=dev)
    iterations = torch.zeros(n_rows, dtype=torch.long, device=dev)
    converged = torch.zeros(n_rows, dtype=torch.bool, device=dev)
    prediction = torch.zeros(n_rows, dtype=torch.long, device=dev)
    adv_label = torch.zeros(n_rows, dtype=torch.long, device=dev)
    perturbation = torch.empty((n_rows, *x.shape[1:]), dtype=x.dtype, device=dev) if keep_perturbation else None

    def pending(lo: int, hi: int) -> _Rows:
        """Rows lo..hi-1 as they join; their candidates are set by the first forward."""
        xs = x[row_sample[lo:hi]]

        def zeros(*shape: int, dtype: torch.dtype = torch.long) -> Tensor:
            return torch.zeros(shape, dtype=dtype, device=dev)

        n = hi - lo
        return _Rows(row=torch.arange(lo, hi, device=dev), x=xs, r=torch.zeros_like(xs), it=zeros(n),
                     cand=zeros(n, kc), active=torch.ones(n, dtype=torch.bool, device=dev),
                     flipped=zeros(n, dtype=torch.bool), stuck=zeros(n, dtype=torch.bool), k_end=zeros(n),
                     block=None if row_block is None else row_block[lo:hi])

    def stop_point(xa: Tensor, ra: Tensor) -> Tensor:
        xs = xa + (1.0 + p.overshoot) * ra
        return xs if p.clip is None else xs.clamp(*p.clip)

    rows = pending(0, 0)
    next_row, n_fwd, n_bwd = 0, 0, 0
    shape1 = (-1, *([1] * (x.ndim - 1)))

    with input_gradients_only(model):
        while next_row < n_rows or len(rows) > 0:
            n_old = len(rows)
            take = min(batch_rows - n_old, n_rows - next_row)
            if take > 0:
                rows.extend(pending(next_row, next_row + take))
                next_row += take
            n_act = len(rows)
            ar = torch.arange(n_act, device=dev)
            mask = None if rows.block is None else block_indicator(rows.block[:, 0], rows.block[:, 1], n_img,
                                                                    dtype=x.dtype)

            for step in range(p.sync_every):  # no host sync in here
                xi = rows.x + rows.r
                if p.clip is not None:
                    xi = xi.clamp(*p.clip)
                xi.requires_grad_(True)
                with torch.enable_grad(), model_precision(p.tf32):
                    logits = model(xi)
                    if take > 0 and step == 0:  # a new row's candidates: top-k of the logits at x (r = 0)
                        rows.cand[n_old:] = logits[n_old:].detach().topk(kc, dim=1).indices
                    grads = difference_grads(logits, xi, rows.cand, p.vjp)
                sel = logits.detach().gather(1, rows.cand)
                diffs = (sel[:, 1:] - sel[:, :1]).T.abs()  # (K'-1, A)

                den = grads.flatten(2).norm(dim=2)
                if mask is not None:
                    coef = masked_dct2(grads, mask)
                    full, den = den, coef.flatten(2).norm(dim=2)
                    # below this the projection is rounding noise: the block is blind to that gradient
                    den = torch.where(den > INVARIANT_RTOL * full, den, 0.0)
                ratio = torch.nan_to_num(diffs / den, nan=float("inf"))
                best, jstar = ratio.min(dim=0)
                w = grads[jstar, ar] if mask is None else idct2(coef[jstar, ar])
                wnorm = den[jstar, ar]
                stuck = ~(torch.isfinite(best) & (wnorm > 0))
                scale = torch.where(stuck | ~rows.active, 0.0, best.clamp_min(p.min_step) / wnorm.clamp_min(1e-30))
                rows.r = rows.r + scale.view(shape1) * w
                if p.clip is not None:
                    rows.r = (rows.x + rows.r).clamp(*p.clip) - rows.x

                with torch.no_grad(), model_precision(p.tf32):
                    stop_logits = model(stop_point(rows.x, rows.r))
                k_adv = stop_logits.argmax(dim=1)
                rows.it = rows.it + rows.active.long()
                flipped = k_adv != rows.cand[:, 0]
                newly = rows.active & (flipped | (rows.it >= p.max_iter) | stuck)
                if p.eps_gap is not None:
                    top2 = stop_logits.topk(2, dim=1).values
                    newly = newly | (rows.active & (top2[:, 0] - top2[:, 1] <= p.eps_gap))
                rows.flipped = torch.where(newly, flipped, rows.flipped)
                rows.stuck = torch.where(newly, stuck, rows.stuck)
                rows.k_end = torch.where(newly, k_adv, rows.k_end)
                rows.active = rows.active & ~newly
                n_fwd += 2 * n_act
                n_bwd += (kc - 1) * n_act

            fin = (~rows.active).nonzero().squeeze(1)  # the one host sync per sync_every iterations
            if fin.numel() == 0:
                continue
            done = rows.take(fin)
            g, st = done.row, done.stuck
            delta = stop_point(done.x, done.r) - done.x
            margin[g] = torch.where(st, inf, delta.flatten(1).norm(dim=1))
            margin_linf[g] = torch.where(st, inf, delta.flatten(1).abs().amax(dim=1))
            iterations[g] = done.it
            converged[g] = done.flipped
            prediction[g] = done.cand[:, 0]
            adv_label[g] = done.k_end
            if perturbation is not None:
                perturbation[g] = torch.where(st.view(shape1), inf, delta)
            rows.keep(rows.active.nonzero().squeeze(1))
            if progress is not None:
                progress(int(fin.numel()))

    return DeepFoolResult(perturbation, margin, margin_linf, iterations, converged, prediction, adv_label,
                          n_fwd, n_bwd)


def _check(x: Tensor, batch_rows: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if batch_rows < 1:
        raise ValueError(f"need batch_rows >= 1, got {batch_rows}")


def deepfool(
    model: nn.Module,
    x: Tensor,
    params: DeepFoolParams = DeepFoolParams(),
    *,
    subspace: DCTBlock | None = None,
    batch_rows: int = 1024,
    keep_perturbation: bool = True,
    progress: Callable[[int], None] | None = None,
) -> DeepFoolResult:
    """Minimal L2 perturbation that changes the model's label, per sample, by DeepFool.

    Args:
        model: any classifier ``(B, C, H, W) -> (B, K)`` in eval mode; left untouched (no parameter
            change, no stored grads).
        x: (B, C, H, W) inputs in the model's input units.
        params: candidates, overshoot, max_iter, clip, precision and execution choices, see
            :class:`DeepFoolParams`.
        subspace: None for the full space, or a DCT block (needs square images): the perturbation
            then lies in that block.
        batch_rows: rows in flight at once (memory budget, see :func:`batch_rows_for_budget`).
        keep_perturbation: return the (B, C, H, W) perturbations (else None).
        progress: called with the number of rows that just finished.

    Returns:
        :class:`DeepFoolResult` with leading shape (B,).
    """
    _check(x, batch_rows)
    rows = torch.arange(x.shape[0], device=x.device)
    blocks = None if subspace is None else _block_table([subspace], x).expand(len(rows), 2)
    return _deepfool_rows(model, x, rows, blocks, params, batch_rows=batch_rows,
                          keep_perturbation=keep_perturbation, progress=progress)


def deepfool_subspaces(
    model: nn.Module,
    x: Tensor,
    blocks: Sequence[DCTBlock],
    params: DeepFoolParams = DeepFoolParams(),
    *,
    include_full: bool = True,
    batch_rows: int = 1024,
    keep_perturbation: bool = False,
    progress: Callable[[int], None] | None = None,
) -> DeepFoolResult:
    """DeepFool for every sample in the full space and in each DCT block, batched over all pairs.

    Rows are (subspace, sample) pairs that share one batch, so one model call serves many
    subspaces; full-space rows are the block (0, n). Arguments are those of :func:`deepfool`.

    Returns:
        :class:`DeepFoolResult` with leading shape (S, B): S = ``len(blocks)`` plus one when
        ``include_full`` (row 0 is then the full space), B = samples.
    """
    _check(x, batch_rows)
    n = x.shape[0]
    table = _block_table(list(blocks), x)
    if include_full:
        table = torch.cat([torch.tensor([[0, x.shape[-1]]], device=x.device), table])
    if table.shape[0] == 0:
        raise ValueError("nothing to do: no blocks and include_full=False")
    samples = torch.arange(n, device=x.device).repeat(table.shape[0])
    res = _deepfool_rows(model, x, samples, table.repeat_interleave(n, dim=0), params, batch_rows=batch_rows,
                         keep_perturbation=keep_perturbation, progress=progress)
    for f in fields(DeepFoolResult):
        v = getattr(res, f.name)
        if isinstance(v, Tensor):
            setattr(res, f.name, v.view(-1, n, *v.shape[1:]))
    return res


def _block_table(blocks: list[DCTBlock], x: Tensor) -> Tensor:
    """(len(blocks), 2) int64 table of (offset, size), checked against square images x."""
    h, w = x.shape[-2:]
    if blocks and h != w:
        raise ValueError(f"DCT blocks need square images, got {h}x{w}")
    for b in blocks:
        if b.offset < 0 or b.offset + b.block > w:
            raise ValueError(f"block {b} does not fit {w}x{w} images")
    return torch.tensor([[b.offset, b.block] for b in blocks], dtype=torch.long,
                        device=x.device).view(-1, 2)


def batch_rows_for_budget(model: nn.Module, example: Tensor, candidates: int, budget_bytes: int,
                          max_rows: int = 4096) -> int:
    """How many DeepFool rows fit in ``budget_bytes``: the activations autograd saves for one
    forward of ``example`` (1, C, H, W) plus 2K'+8 input-sized buffers per row (the K'-1 gradients,
    their DCT coefficients, the iterates and their copies), K' = ``candidates``."""
    return rows_for_budget(model, example, 2 * candidates + 8, budget_bytes, max_rows)
