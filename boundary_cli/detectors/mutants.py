"""Mutant models for the label change rate (lcr reference §3.3, §3.4, §3.8).

A mutant changes a few output channels (filters) of the model's conv layers: NAI negates them, GF
redraws them from the layer's per-position mean and standard deviation over output channels, NS
rotates filters within a layer. A mutant is stored as ``(operator, seed, channels)`` and its weights
are regenerated from that alone, so no weight copies are ever kept. Many mutants are evaluated at
once: only the weight tensors they change are stacked along a leading mutant axis and the model is
run through ``torch.func.functional_call`` under ``torch.func.vmap``; layers before the first
mutated one are computed once for all mutants.

A candidate is accepted when its accuracy on the acceptance inputs exceeds a threshold
(:func:`acceptance_threshold`): the reference's rule (``rule="reference"``) is a ratio of the
original model's accuracy for NAI and GF (``create_mutations``: > 0.9 x) and an absolute accuracy for
NS (``model_mutation.py``: > 0.73); ``rule="ratio"`` applies the ratio to every operator. Unlike the
reference, acceptance has a cap on the candidates tried (``max_attempts``) and never raises when too
few pass; the caller decides what to do with fewer mutants.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

OPERATORS = ("NAI", "GF", "NS")
NS_SHARE = 0.07  # NS rotates floor(0.07 * out_channels) filters per layer (model_mutation.py)
NS_MIN_ACCURACY = 0.73  # the reference accepts an NS mutant when its accuracy > 0.73 (model_mutation.py, CIFAR-10)
ACCEPT_RULES = ("reference", "ratio")
CANDIDATES_PER_ROUND = 32  # fewest candidates accept_mutants evaluates at once
MUTANT_METHODS = ("auto", "vmap", "loop")


@dataclass(frozen=True)
class Mutant:
    """One mutant: its operator, the seed it was drawn from and the (conv layer name, output channel)
    pairs it changes. For NS the order within a layer is the rotation order."""

    operator: str
    seed: int
    channels: tuple[tuple[str, int], ...]


@dataclass
class Acceptance:
    """Result of :func:`accept_mutants`.

    Attributes:
        accepted: the accepted mutants in attempt order (at most ``n_mutants``).
        log: one dict per candidate tried: operator, seed, n_channels, accuracy, accepted.
        original_accuracy: accuracy of the unmutated model on the acceptance inputs.
        attempts: candidates tried (counted up to the last one needed).
        threshold: the accuracy a candidate had to exceed (see :func:`acceptance_threshold`).
    """

    accepted: list[Mutant]
    log: list[dict]
    original_accuracy: float
    attempts: int
    threshold: float


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every ``nn.Conv2d`` of ``model`` as (name, module), in ``named_modules()`` order; names are
    relative to ``model`` (e.g. ``net.conv1``)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _check_operator(operator: str) -> None:
    if operator not in OPERATORS:
        raise ValueError(f"unknown mutation operator {operator!r}; expected one of {', '.join(OPERATORS)}")


def draw_mutant(model: nn.Module, operator: str, gamma: float, seed: int) -> Mutant:
    """Draw the channels of one mutant of ``model`` with ``torch.Generator().manual_seed(seed)``.

    NAI, GF: k = max(1, floor(gamma * C)) channels uniformly without replacement among all C output
    channels of all conv layers together (not per layer). The reference takes floor(gamma * C), which is 0
    (an unmutated copy) when gamma * C < 1, e.g. LeNet's C = 22 at gamma = 0.01; here such a mutant
    changes one channel, so one gamma mutates different shares of different models.
    NS: per conv layer with ``out`` channels, floor(0.07 * out) random channels in a random (rotation)
    order; layers where that is below 2 are skipped and ``gamma`` is unused (but still checked).
    Raises ValueError for an unknown operator, gamma outside (0, 1], a model without conv layers, or
    (NS) a model with no layer to rotate.
    """
    _check_operator(operator)
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1]; got {gamma}")
    layers = conv_layers(model)
    if not layers:
        raise ValueError("the model has no nn.Conv2d layer to mutate")
    gen = torch.Generator().manual_seed(int(seed))
    if operator == "NS":
        channels: list[tuple[str, int]] = []
        for name, conv in layers:
            n = math.floor(NS_SHARE * conv.out_channels)
            if n >= 2:
                channels += [(name, int(c)) for c in torch.randperm(conv.out_channels, generator=gen)[:n]]
        if not channels:
            raise ValueError(f"NS needs a conv layer with at least {math.ceil(2 / NS_SHARE)} output channels")
        return Mutant(operator, int(seed), tuple(channels))
    owners = [(name, c) for name, conv in layers for c in range(conv.out_channels)]
    # The epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from flooring to 28.
    k = max(1, math.floor(gamma * len(owners) + 1e-9))
    picked = torch.randperm(len(owners), generator=gen)[:k].sort().values
    return Mutant(operator, int(seed), tuple(owners[int(i)] for i in picked))


def _conv_weights(model: nn.Module) -> dict[str, tuple[str, Tensor]]:
    """conv layer name -> (its weight's name in ``named_parameters``, the weight detached)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {layer: (names[id(conv.weight)], conv.weight.detach()) for layer, conv in conv_layers(model)}


def _weight_changes(weights: dict[str, tuple[str, Tensor]], mutant: Mutant) -> dict[str, Tensor]:
    """The conv weights ``mutant`` changes, mutated, keyed by parameter name; regenerated from the
    mutant alone (GF draws its values in ``mutant.channels`` order from a generator seeded with
    ``mutant.seed``)."""
    _check_operator(mutant.operator)
    by_layer: dict[str, list[int]] = {}
    for layer, c in mutant.channels:
        if layer not in weights:
            raise ValueError(f"mutant names conv layer {layer!r}, which the model does not have")
        by_layer.setdefault(layer, []).append(int(c))
    gen = torch.Generator().manual_seed(mutant.seed) if mutant.operator == "GF" else None
    changes = {}
    for layer, chans in by_layer.items():
        pname, w = weights[layer]
        idx = torch.tensor(chans, device=w.device)
        new = w.clone()
        if mutant.operator == "NAI":
            new[idx] = -w[idx]
        elif mutant.operator == "NS":
            new[idx] = w[idx.roll(-1)]  # c1 gets c2's filter, ..., the last gets c1's
        else:
            mean, std = w.mean(0), w.std(0, correction=0)  # over output channels, per (in, kh, kw)
            # Drawn on the CPU in float32 so the values do not depend on the device.
            noise = torch.randn((len(chans), *w.shape[1:]), generator=gen).to(w)
            new[idx] = mean + std * noise
        changes[pname] = new
    return changes


def mutated_state(model: nn.Module, mutant: Mutant) -> dict[str, Tensor]:
    """The parameters of ``model`` (``named_parameters`` names) with ``mutant`` applied.

    Changed conv weights are new tensors (out, in, kh, kw); every other entry is the model's own
    parameter, detached (shared storage, so bit-identical; do not modify it in place). Biases are
    never changed. Raises ValueError for an unknown operator or a layer the model lacks.
    """
    changes = _weight_changes(_conv_weights(model), mutant)
    return {n: changes.get(n, p.detach()) for n, p in model.named_parameters()}


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm running statistics) for the block; every module's flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _device(model: nn.Module, x: Tensor) -> torch.device:
    p = next(model.parameters(), None)
    return x.device if p is None else p.device


def _activation_bytes(model: nn.Module, x1: Tensor) -> int:
    """Bytes of all leaf-module outputs (plus the input) for one input (1, C, H, W): an upper bound
    on what a forward keeps alive per input."""
    total = x1.numel() * x1.element_size()

    def hook(_module: nn.Module, _inputs: tuple, out: object) -> None:
        nonlocal total
        if isinstance(out, Tensor):
            total += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not any(True for _ in m.children())]
    try:
        model(x1)
    finally:
        for h in handles:
            h.remove()
    return total


def _predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """argmax of the unmutated model on x (N, C, H, W) -> (N,) int64 on x's device, eval mode."""
    device = _device(model, x)
    with torch.no_grad(), _eval_mode(model):
        return torch.cat([model(x[i:i + batch_size].to(device)).argmax(-1).to(x.device)
                          for i in range(0, x.shape[0], batch_size)])


def predict_mutants(
    model: nn.Module,
    mutants: Sequence[Mutant],
    x: Tensor,
    *,
    batch_size: int = 1024,
    budget_bytes: int = 2**30,
    progress: Callable[[int], None] | None = None,
    method: str = "auto",
) -> Tensor:
    """Predicted classes of every mutant on x (N, C, H, W) -> (M, N) int64 on x's device.

    ``method``: ``vmap`` (below), ``loop`` (per mutant, its changed conv weights are copied into the
    model, the inputs predicted in batches, the weights restored, also on error: M plain forwards) or
    ``auto``: vmap on CUDA, loop on CPU, where vmap's batched convolutions measured 2x slower than
    M plain forwards for LeNet (scripts/bench_lcr.py).

    Mutants are taken in chunks sized so that the stacked weights plus the activations of a batch
    of ``batch_size`` inputs fit ``budget_bytes`` (at least one mutant per chunk); each chunk stacks
    the weights its mutants change (m, ...) and runs ``vmap(functional_call)`` with in_dims (0, None)
    over input batches, every other parameter and all buffers shared, under no_grad, in eval mode.
    The model is left as it was (weights and train/eval flags). ``progress`` is called with the
    number of mutants each finished chunk held.
    """
    n = x.shape[0]
    out = torch.empty((len(mutants), n), dtype=torch.int64, device=x.device)
    if not mutants or n == 0:
        return out
    batch_size = max(1, int(batch_size))
    device = _device(model, x)
    weights = _conv_weights(model)
    originals = dict(weights.values())
    if method not in MUTANT_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(MUTANT_METHODS)}")
    if method == "auto":
        method = "vmap" if device.type == "cuda" else "loop"
    if method == "loop":
        params = dict(model.named_parameters())
        with torch.no_grad(), _eval_mode(model):
            for j, mutant in enumerate(mutants):
                changed = _weight_changes(weights, mutant)
                saved = {name: params[name].detach().clone() for name in changed}
                try:  # swap the changed weights in place (cheaper than functional_call per batch)
                    for name, value in changed.items():
                        params[name].copy_(value)
                    for i in range(0, n, batch_size):
                        xb = x[i:i + batch_size].to(device)
                        out[j, i:i + xb.shape[0]] = model(xb).argmax(-1).to(x.device)
                finally:
                    for name, value in saved.items():
                        params[name].copy_(value)
                if progress is not None:
                    progress(1)
        return out
    with torch.no_grad(), _eval_mode(model):
        # Per mutant: its changed weights, once as separate tensors and once stacked.
        weight_bytes = 2 * sum(w.numel() * w.element_size() for _, w in weights.values())
        act_bytes = 2 * _activation_bytes(model, x[:1].to(device)) * min(batch_size, n)
        chunk = max(1, min(len(mutants), int(budget_bytes) // (weight_bytes + act_bytes)))

        for start in range(0, len(mutants), chunk):
            group = mutants[start:start + chunk]
            changes = [_weight_changes(weights, m) for m in group]
            keys = sorted(set().union(*changes))
            stacked = {k: torch.stack([c.get(k, originals[k]) for c in changes]) for k in keys}
            del changes

            def run(params: dict[str, Tensor], xb: Tensor) -> Tensor:
                # Parameters not in ``params`` and all buffers are the model's own, shared by all mutants.
                return functional_call(model, params, (xb,)).argmax(-1)

            batched = vmap(run, in_dims=(0, None))
            for i in range(0, n, batch_size):
                xb = x[i:i + batch_size].to(device)
                if keys:
                    pred = batched(stacked, xb)
                else:  # mutants that change nothing predict like the model
                    pred = model(xb).argmax(-1).expand(len(group), -1)
                out[start:start + len(group), i:i + xb.shape[0]] = pred.to(x.device)
            del stacked
            if progress is not None:
                progress(len(group))
    return out


def acceptance_threshold(operator: str, original_accuracy: float, *, rule: str = "reference",
                         accept_ratio: float = 0.9, ns_min_accuracy: float = NS_MIN_ACCURACY) -> float:
    """The accuracy a candidate mutant must exceed (strictly) to be accepted.

    ``rule="reference"``: ``ns_min_accuracy`` for NS (an absolute accuracy, whatever the original's),
    ``accept_ratio * original_accuracy`` for NAI and GF. ``rule="ratio"``: ``accept_ratio *
    original_accuracy`` for every operator. Raises ValueError for an unknown operator or rule.
    """
    _check_operator(operator)
    if rule not in ACCEPT_RULES:
        raise ValueError(f"unknown acceptance rule {rule!r}; expected one of {', '.join(ACCEPT_RULES)}")
    if rule == "reference" and operator == "NS":
        return float(ns_min_accuracy)
    return float(accept_ratio) * float(original_accuracy)


def accept_mutants(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    operator: str,
    gamma: float,
    n_mutants: int = 100,
    max_attempts: int = 1000,
    accept_ratio: float = 0.9,
    rule: str = "reference",
    ns_min_accuracy: float = NS_MIN_ACCURACY,
    seed: int = 0,
    batch_size: int = 1024,
    budget_bytes: int = 2**30,
    progress: Callable[[int], None] | None = None,
) -> Acceptance:
    """Draw candidate mutants and keep those accurate enough on (x (N, C, H, W), y (N,)).

    Candidate ``attempt`` (0, 1, ...) is drawn with seed ``seed * 1_000_003 + attempt`` and accepted
    when its accuracy is > :func:`acceptance_threshold` (``rule``, ``accept_ratio``, ``ns_min_accuracy``;
    by default the reference's: NS > 0.73, NAI/GF > 0.9 x the original model's). Candidates are
    evaluated several at a time with :func:`predict_mutants`, but the result is cut at the
    ``n_mutants``-th acceptance in attempt order, so it does not depend on how many were evaluated
    together (nor on ``batch_size``). Stops after ``n_mutants`` acceptances or ``max_attempts`` candidates, without
    raising when too few pass. ``progress`` is called with the number of candidates just evaluated.
    Raises ValueError for an unknown operator or rule, or gamma outside (0, 1] (see :func:`draw_mutant`).
    """
    _check_operator(operator)
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1]; got {gamma}")
    acceptance_threshold(operator, 0.0, rule=rule)  # an unknown rule fails before any work
    y = y.to(x.device)
    original = float((_predict(model, x, batch_size) == y).double().mean()) if x.shape[0] else 0.0
    threshold = acceptance_threshold(operator, original, rule=rule, accept_ratio=accept_ratio,
                                     ns_min_accuracy=ns_min_accuracy)
    accepted: list[Mutant] = []
    log: list[dict] = []
    attempt = 0
    while len(accepted) < n_mutants and attempt < max_attempts:
        size = min(max_attempts - attempt, max(CANDIDATES_PER_ROUND, n_mutants - len(accepted)))
        cands = [draw_mutant(model, operator, gamma, seed * 1_000_003 + attempt + j) for j in range(size)]
        preds = predict_mutants(model, cands, x, batch_size=batch_size, budget_bytes=budget_bytes)
        accs = (preds == y).double().mean(1).tolist() if x.shape[0] else [0.0] * size
        for cand, acc in zip(cands, accs):
            ok = acc > threshold
            log.append(dict(operator=operator, seed=cand.seed, n_channels=len(cand.channels), accuracy=acc,
                            accepted=ok))
            attempt += 1
            if ok:
                accepted.append(cand)
                if len(accepted) == n_mutants:
                    break
        if progress is not None:
            progress(size)
    return Acceptance(accepted=accepted, log=log, original_accuracy=original, attempts=attempt, threshold=threshold)


def label_change_rate(mutant_preds: Tensor, original_pred: Tensor) -> Tensor:
    """Share of mutants whose prediction differs from the original model's: mutant_preds (M, N) and
    original_pred (N,) -> (N,) float32. The reference is the prediction, not the label. Raises
    ValueError for M = 0 or mismatched shapes."""
    if mutant_preds.dim() != 2 or original_pred.shape != mutant_preds.shape[1:]:
        raise ValueError(f"expected mutant_preds (M, N) and original_pred (N,); got {tuple(mutant_preds.shape)} "
                         f"and {tuple(original_pred.shape)}")
    if mutant_preds.shape[0] == 0:
        raise ValueError("the label change rate needs at least one mutant")
    return (mutant_preds != original_pred.to(mutant_preds.device)).float().mean(0)


def lcr_by_count(mutant_preds: Tensor, original_pred: Tensor, counts: Sequence[int]) -> dict[int, Tensor]:
    """:func:`label_change_rate` using the first k mutants (rows of mutant_preds (M, N)), for each k in
    ``counts``: {k: (N,) float}. Raises ValueError for k < 1 or k > M."""
    m = mutant_preds.shape[0]
    bad = [k for k in counts if not 1 <= int(k) <= m]
    if bad:
        raise ValueError(f"mutant counts must be in 1..{m}; got {bad}")
    return {int(k): label_change_rate(mutant_preds[:int(k)], original_pred) for k in counts}
