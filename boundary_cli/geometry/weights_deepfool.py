"""DeepFool in weight space: the smallest change of a model's parameters that flips its prediction on
one sample (influenciae's WeightsBoundaryCalculator, METHODS.md §5.2), batched over samples.

Per sample b, perturbed parameters ``θ + Δ_b`` for the chosen parameter tensors (all trainable ones
by default: every kernel and bias, BatchNorm's γ and β; running statistics fixed, model in eval
mode). The live model is never mutated: rows are evaluated with ``torch.func.functional_call`` on
the base parameters plus their own delta, vmapped over the rows.

Each iteration, per row with reference class c (the prediction at θ, or a given class):

    y = f(x_b; θ + (1 + overshoot) Δ_b)
    stop if argmax y ≠ c (``flip``) or top1(y) − top2(y) ≤ eps (``eps_gap``)
    G_k = ∂(y_k − y_c)/∂θ at θ + Δ_b for the candidates k ≠ c (all classes by default)
    k* = argmin_k |y_k − y_c| / ‖G_k‖;  Δ_b ← Δ_b + |y_k* − y_c| / ‖G_k*‖² · G_k*

(p = 2 only: the reference's step for p ≠ 2 uses the wrong exponent). A row that took ``max_iter``
steps gets one more evaluation, so ``stopped_by`` says whether its last point crossed (``flip``),
sits on the boundary (``eps_gap``) or neither (``max_steps``); rows whose every ‖G_k‖ vanishes stop
with ``zero_grad``. The distance is ‖(1 + overshoot) Δ_b‖₂ over the concatenated chosen parameters;
the reference's influence is its negative. With no overshoot (the reference's default) iterates
approach the boundary from one side and mostly stop by the eps gap, not by a flip.

The gradients and the logits at the iterate come from one forward per row; with the iterate's own
logits the stop test needs no second forward (unlike input-space DeepFool, there is no overshoot
point to test separately when overshoot is 0; with overshoot > 0 the test point is evaluated too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

STOPS = ("flip", "eps_gap", "max_steps", "zero_grad")


@dataclass(frozen=True)
class WeightDeepFoolParams:
    """Settings of :func:`weight_deepfool`, checked on construction.

    Attributes:
        max_iter: steps before a row gives up (the reference's ``step_nbr``, 100).
        eps: a row whose top-two logit gap is at most this sits on the boundary and stops.
        overshoot: the stop test and the returned distance use ``(1 + overshoot) Δ`` (0: reference).
        candidates: top-k classes at θ considered (None: all classes, the reference).
        norm: only 2 (the reference's other norms take a wrong step; refused).
    """

    max_iter: int = 100
    eps: float = 1e-6
    overshoot: float = 0.0
    candidates: int | None = None
    norm: float = 2.0

    def __post_init__(self) -> None:
        if self.norm != 2:
            raise ValueError(f"weight-space DeepFool supports the L2 norm only, got norm={self.norm} (the "
                             "reference's step for other norms uses the wrong exponent)")
        if self.max_iter < 1 or self.eps < 0 or self.overshoot < 0:
            raise ValueError("need max_iter >= 1, eps >= 0 and overshoot >= 0")
        if self.candidates is not None and self.candidates < 2:
            raise ValueError(f"need candidates >= 2 (or None: all classes), got {self.candidates}")


@dataclass
class WeightDeepFoolResult:
    """Per-sample outputs of :func:`weight_deepfool`, leading shape (B,).

    Attributes:
        distance: L2 norm of ``(1 + overshoot) Δ`` over the chosen parameters.
        iterations: int64 steps taken.
        stopped_by: int64 codes into :data:`STOPS`.
        reference: int64 the class moved away from (the prediction at θ unless given).
        adv_label: int64 the label at ``θ + (1 + overshoot) Δ``.
        n_forward: row forwards summed over rows.
        n_backward: row Jacobians (one per row and step; each covers the candidate classes).
    """

    distance: Tensor
    iterations: Tensor
    stopped_by: Tensor
    reference: Tensor
    adv_label: Tensor
    n_forward: int = 0
    n_backward: int = 0


def parameter_names(model: nn.Module, which: str | Sequence[str] = "all") -> list[str]:
    """Names of the parameter tensors to perturb: ``all`` (every trainable one), ``last_layer`` (those
    of the last module that owns parameters directly), or module names (their parameters).

    Raises ValueError for an unknown module name (listing the valid ones) or an empty selection.
    """
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if which == "all":
        names = trainable
    elif which == "last_layer":
        owners = [m for m, mod in model.named_modules() if any(True for _ in mod.parameters(recurse=False))]
        if not owners:
            raise ValueError("the model has no parameters")
        names = [n for n in trainable if n.rsplit(".", 1)[0] == owners[-1] or (owners[-1] == "" and "." not in n)]
    else:
        modules = dict(model.named_modules())
        wanted = [which] if isinstance(which, str) else list(which)
        unknown = [m for m in wanted if m not in modules]
        if unknown:
            valid = [m for m, mod in modules.items() if m and any(True for _ in mod.parameters(recurse=False))]
            raise ValueError(f"unknown module(s) {unknown}; modules with parameters: {', '.join(valid)}")
        names = [n for n in trainable if any(n == m or n.startswith(m + ".") for m in wanted)]
    if not names:
        raise ValueError(f"no trainable parameters selected by {which!r}")
    return names


def weight_deepfool(model: nn.Module, x: Tensor, params: WeightDeepFoolParams = WeightDeepFoolParams(), *,
                    names: Sequence[str] | None = None, reference: Tensor | None = None,
                    toward: Tensor | None = None, batch_rows: int = 64, progress: Callable[[int], None] | None = None) -> WeightDeepFoolResult:
    """Smallest L2 change of the parameters ``names`` that moves ``model``'s label on each sample away
    from its reference class, by DeepFool in weight space (see the module docstring).

    Args:
        model: classifier ``(B, C, H, W) -> (B, K)`` in eval mode; never modified.
        x: (B, C, H, W) samples.
        params: :class:`WeightDeepFoolParams`.
        names: parameter names to perturb (default: all trainable, see :func:`parameter_names`).
        reference: (B,) int64 class to move away from per sample (default: the prediction at θ).
        toward: (B,) bool; where True the row moves *toward* its reference class instead: each step
            takes the strongest other class k* and closes y_k* − y_c along ∇(y_c − y_k*); it stops
            when the reference class is the argmax (``flip``) or within eps of the top other class
            (``eps_gap``). For the signed distance against a label the model disagrees with.
        batch_rows: samples evaluated at once (each holds its own delta and a Jacobian of
            K' × |θ_names| floats).
        progress: called with the number of samples that just finished.

    Returns:
        :class:`WeightDeepFoolResult` with leading shape (B,).
    """
    if model.training:
        raise ValueError("weight-space DeepFool needs the model in eval mode (call model.eval())")
    p = params
    names = list(names) if names is not None else parameter_names(model)
    base = {n: t.detach() for n, t in model.named_parameters()}
    missing = [n for n in names if n not in base]
    if missing:
        raise ValueError(f"unknown parameter(s) {missing}")
    buffers = {n: t.detach() for n, t in model.named_buffers()}
    fixed = {n: t for n, t in base.items() if n not in names}
    n, dev = x.shape[0], x.device

    def logits_of(delta: dict[str, Tensor], xb: Tensor) -> Tensor:
        theta = {**fixed, **{k: base[k] + delta[k] for k in names}, **buffers}
        return functional_call(model, theta, (xb.unsqueeze(0),)).squeeze(0)

    def rival_gaps(delta: dict[str, Tensor], xb: Tensor, cb: Tensor) -> Tensor:
        y = logits_of(delta, xb)
        return y.index_select(0, cb[1:]) - y.index_select(0, cb[:1])  # (K'-1,): y_k - y_c

    batched_logits = vmap(logits_of)
    # the K'-1 VJPs of y_k - y_c per row: G_k directly, no full K-row Jacobian and no differences
    batched_grads = vmap(jacrev(rival_gaps))

    with torch.no_grad():
        first = torch.cat([model(part) for part in x.split(batch_rows)])
    k_all = first.shape[1]
    ref = first.argmax(1) if reference is None else reference.to(dev).long()
    kc = k_all if p.candidates is None else min(p.candidates, k_all)
    cand = first.topk(kc, dim=1).indices
    # the reference class first, then the other candidates (it may not be among the top k when given)
    others = torch.stack([row[row != c][: kc - 1] if (row == c).any() else row[: kc - 1]
                          for row, c in zip(cand, ref)]) if n else cand[:, : kc - 1]
    cand = torch.cat([ref[:, None], others], dim=1)

    distance = torch.zeros(n, dtype=x.dtype, device=dev)
    iterations = torch.zeros(n, dtype=torch.long, device=dev)
    stopped = torch.zeros(n, dtype=torch.long, device=dev)
    adv_label = torch.zeros(n, dtype=torch.long, device=dev)
    n_fwd = n_bwd = 0
    scale = 1.0 + p.overshoot

    toward = torch.zeros(n, dtype=torch.bool, device=dev) if toward is None else toward.to(dev).bool()
    i_flip, i_gap, i_max, i_zero = (STOPS.index(s) for s in ("flip", "eps_gap", "max_steps", "zero_grad"))
    # rows in flight: a finished row leaves and the next pending one takes its place, so every
    # vmapped call sees a full batch (the per-call overhead of vmap and jacrev is large on small models)
    rows = torch.zeros(0, dtype=torch.long, device=dev)
    delta = {k: torch.zeros((0, *base[k].shape), dtype=base[k].dtype, device=dev) for k in names}
    it = torch.zeros(0, dtype=torch.long, device=dev)
    next_row = 0
    while next_row < n or len(rows):
        take = min(batch_rows - len(rows), n - next_row)
        if take > 0:
            rows = torch.cat([rows, torch.arange(next_row, next_row + take, device=dev)])
            delta = {k: torch.cat([v, torch.zeros((take, *base[k].shape), dtype=v.dtype, device=dev)])
                     for k, v in delta.items()}
            it = torch.cat([it, torch.zeros(take, dtype=torch.long, device=dev)])
            next_row += take
        xb, cb, tw = x[rows], cand[rows], toward[rows]
        with torch.no_grad():
            test = batched_logits(delta if scale == 1 else {k: scale * v for k, v in delta.items()}, xb)
        n_fwd += len(rows)
        pred = test.argmax(1)
        own = test.gather(1, cb[:, :1]).squeeze(1)
        rival = test.scatter(1, cb[:, :1], float("-inf")).amax(dim=1)
        top2 = test.topk(2, dim=1).values
        flip = torch.where(tw, pred == cb[:, 0], pred != cb[:, 0])
        gap = torch.where(tw, (rival - own).abs() <= p.eps, (top2[:, 0] - top2[:, 1]) <= p.eps)
        code = torch.where(flip, i_flip, torch.where(gap, i_gap, i_max))
        done = flip | gap | (it >= p.max_iter)

        def finish(mask: Tensor) -> None:
            """Record the rows of the pool where ``mask`` holds and drop them from it (compacting every
            per-row tensor once, so the step below works on whole tensors without copies)."""
            nonlocal rows, it, delta, xb, cb, tw, test, pred, code
            fin = mask.nonzero().squeeze(1)
            if not fin.numel():
                return
            g = rows[fin]
            flat = torch.cat([delta[k][fin].flatten(1) for k in names], dim=1)
            distance[g] = scale * flat.norm(dim=1)
            iterations[g], stopped[g], adv_label[g] = it[fin], code[fin], pred[fin]
            keep = (~mask).nonzero().squeeze(1)
            rows, it, xb, cb, tw, test, pred, code = (t[keep] for t in (rows, it, xb, cb, tw, test, pred, code))
            delta = {k: v[keep] for k, v in delta.items()}
            if progress is not None:
                progress(int(fin.numel()))

        finish(done)
        if not len(rows):
            continue
        grads = batched_grads(delta, xb, cb)  # name -> (A, K'-1, *shape): G_k = ∇(y_k - y_c)
        with torch.no_grad():
            y = batched_logits(delta, xb) if p.overshoot > 0 else test
        n_bwd += len(rows)
        sel = y.gather(1, cb)
        diff = (sel[:, 1:] - sel[:, :1]).abs()  # (A, K'-1)
        pick = torch.arange(len(rows), device=dev)
        # ‖G_k‖ over all chosen tensors, without materialising squares of the (A, K'-1, P) gradients
        gn = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.flatten(2), dim=2)
                                                   for g in grads.values()]), dim=0)  # (A, K'-1)
        ratio = torch.where(gn > 0, diff / gn.clamp_min(1e-30), torch.full_like(diff, float("inf")))
        best, j = ratio.min(dim=1)
        if tw.any():  # toward the reference class: the strongest rival, stepping against its gradient
            j = torch.where(tw, sel[:, 1:].argmax(dim=1), j)
            rival_ok = gn.gather(1, j[:, None]).squeeze(1) > 0
            best = torch.where(tw, torch.where(rival_ok, 0.0, float("inf")), best)
        zero = ~torch.isfinite(best)
        coef = torch.where(zero, 0.0, diff[pick, j] / gn[pick, j].clamp_min(1e-30) ** 2)
        coef = torch.where(tw, -coef, coef)
        for k in names:
            gk = grads[k][pick, j]  # (A, *shape): the chosen G_k*
            delta[k].add_(coef.view(-1, *[1] * (gk.dim() - 1)).to(gk.dtype) * gk)
        it = it + (~zero).long()
        if zero.any():
            code = torch.where(zero, i_zero, code)
            finish(zero)
    return WeightDeepFoolResult(distance, iterations, stopped, cand[:, 0].clone(), adv_label, n_fwd, n_bwd)


def weight_rows_for_budget(model: nn.Module, example: Tensor, n_params: int, candidates: int, budget_bytes: int,
                           max_rows: int | None = None) -> int:
    """How many rows of :func:`weight_deepfool` fit in ``budget_bytes``: per row, the K'−1 = ``candidates`` − 1
    VJPs each keep the activations of one forward of ``example`` (1, C, H, W) and a gradient of the
    ``n_params`` perturbed parameters plus one temporary of that size; the row's delta and the copies
    made when rows join or leave add four more. Returns a count in [1, ``max_rows``]; ``max_rows`` None:
    64 on a CPU (more rows only cost cache there: LeNet ran 6.4 ms per point at 32-64 rows, 10 at 256),
    1024 elsewhere."""
    from boundary_cli.geometry.rows import saved_bytes_per_row

    if max_rows is None:
        max_rows = 64 if example.device.type == "cpu" else 1024
    size = example.element_size()
    k = max(1, candidates - 1)
    per_row = k * (saved_bytes_per_row(model, example) + 2 * n_params * size) + 4 * n_params * size
    return int(max(1, min(max_rows, budget_bytes // per_row)))


def last_layer_distance(features: Tensor, weight: Tensor, bias: Tensor | None, reference: Tensor) -> Tensor:
    """Closed form of weight-space DeepFool on the last linear layer ``z = W h + b``.

    Perturbing (W, b) by Δ changes z_k − z_c by ``(Δ_k − Δ_c)·[h; 1]``, so the smallest change that
    makes class k tie with the reference class c has norm ``(z_c − z_k) / (√2 ‖[h; 1]‖)``; the
    distance is its minimum over k ≠ c (negative where c is not the argmax: the model already
    disagrees). ``bias`` None drops the 1.

    Args:
        features: (B, D) inputs h of the layer.
        weight: (K, D); bias: (K,) or None.
        reference: (B,) int64 class c per sample.

    Returns:
        (B,) distances.
    """
    z = features @ weight.T + (0 if bias is None else bias)
    hn = features.pow(2).sum(1) + (0.0 if bias is None else 1.0)
    zc = z.gather(1, reference[:, None])
    gaps = (zc - z).scatter(1, reference[:, None], float("inf"))
    return gaps.min(dim=1).values / (2.0 * hn).sqrt()
