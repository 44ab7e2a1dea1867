"""Layer conductance per unit or channel, computed for every path point in one batched pass (lcr §3.5, §3.8).

For an input x, a baseline b and n steps, the path points are ``x_j = b + (j/n)(x - b)``, j = 0..n. With
F the target logit and a a layer's output, the conductance of a unit is the right Riemann sum

    cond = Σ_{j=1..n} ∂F/∂a(x_j) · (a(x_j) − a(x_{j−1})),

the reference's rule. Summed over every unit of a layer that every input-to-output path goes through, it
tends to F(x) − F(b) as n grows (completeness).

Relation to captum 0.9's ``LayerConductance`` (same n, same target): captum always multiplies the gradient
at the *left* end of each step. Its ``riemann_trapezoid`` uses the grid k/n, so with the endpoints swapped
it is exactly ours negated: ``layer_conductance(model, x, [l], baseline=b, n_steps=n)`` equals
``-LayerConductance(model, l).attribute(b, baselines=x, target=t, n_steps=n, method="riemann_trapezoid")``.
Its ``riemann_right`` evaluates only α = k/(n+1), k = 1..n+1, so it leaves out the first step
[0, 1/(n+1)]; it equals ours negated with x := b + (x − b)/(n+1) and baseline := x.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from boundary_cli.geometry.rows import input_gradients_only
from boundary_cli.geometry.taps import resolve_layers

REDUCTIONS = ("mean", "sum", "none")


def predicted_logit_target(model: nn.Module, x: Tensor) -> Tensor:
    """The class the model predicts for each input: argmax of ``model(x)``, x (B, C, H, W) -> int64 (B,)."""
    with torch.no_grad():
        return model(x).argmax(dim=1)


def layer_conductance(
    model: nn.Module,
    x: Tensor,
    layers: Sequence[str],
    *,
    baseline: Tensor | float,
    n_steps: int = 10,
    target: Tensor | int | None = None,
    reduce: str = "mean",
    batch_size: int = 64,
) -> dict[str, Tensor]:
    """Conductance of the target logit through each unit of the named layers, right Riemann sum over n steps.

    ``model`` maps x (B, C, H, W) in pixel units to logits (B, K) and must be in eval mode. ``layers`` are
    layer names of :func:`~boundary_cli.geometry.taps.resolve_layers` (``input`` excluded): relative to
    ``model.net`` when the model has one (``Classifier``), so ``"layer3.2"`` and ``"net.layer3.2"`` are the
    same layer; the returned dict is keyed by the names as given.
    ``baseline`` broadcasts to x, e.g. zeros (C, H, W) (a black image) or the training mean image.
    ``target`` (B,) or an int picks the logit F; by default the class predicted at x. Each chunk of
    ``batch_size`` inputs forwards its chunk·(n_steps + 1) path points at once, with the parameters frozen
    (their ``requires_grad`` flags are restored afterwards), then runs one backward of Σ_{j≥1} F(x_j).
    Returns {name: conductance} on x's device: ``reduce="none"`` keeps the layer's own shape (B, ...);
    ``"mean"``/``"sum"`` average/sum a (B, C_l, H, W) output over its spatial dims to (B, C_l), and
    leave a (B, D) output as it is. A layer's output must be a tensor, produced once per forward.
    """
    if model.training:
        raise ValueError("layer_conductance needs the model in eval mode (call model.eval()): in training "
                         "mode BatchNorm and dropout make the path points of a batch depend on each other")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    if n_steps < 1 or batch_size < 1:
        raise ValueError(f"n_steps and batch_size must be >= 1, got {n_steps} and {batch_size}")
    names = [layers] if isinstance(layers, str) else list(layers)
    modules = {name: module for name, (_, module) in zip(names, resolve_layers(model, names, with_input=False))}
    try:
        base = torch.broadcast_to(torch.as_tensor(baseline, dtype=x.dtype, device=x.device), x.shape)
    except RuntimeError as err:
        raise ValueError(f"baseline of shape {tuple(torch.as_tensor(baseline).shape)} does not broadcast "
                         f"to x of shape {tuple(x.shape)}") from err
    if target is not None:
        target = torch.as_tensor(target, dtype=torch.long, device=x.device)
        if target.dim() == 0:
            target = target.expand(x.shape[0])
        if target.shape != (x.shape[0],):
            raise ValueError(f"target must have shape ({x.shape[0]},), got {tuple(target.shape)}")

    parts: dict[str, list[Tensor]] = {name: [] for name in names}
    with input_gradients_only(model), torch.enable_grad():
        for start in range(0, x.shape[0], batch_size):
            chunk = slice(start, start + batch_size)
            tgt = predicted_logit_target(model, x[chunk]) if target is None else target[chunk]
            conds = _chunk_conductance(model, modules, x[chunk], base[chunk], tgt, n_steps)
            for name, cond in conds.items():
                parts[name].append(_reduce(cond, reduce).to(x.device))
    return {name: torch.cat(parts[name]) for name in names}


def _chunk_conductance(model: nn.Module, modules: dict[str, nn.Module], x: Tensor, base: Tensor,
                       target: Tensor, n_steps: int) -> dict[str, Tensor]:
    """Unreduced conductance (b, ...) per layer for one chunk x (b, C, H, W); path points are step-major."""
    b = x.shape[0]
    alphas = torch.arange(n_steps + 1, device=x.device, dtype=x.dtype) / n_steps
    alphas = alphas.view(-1, *([1] * x.dim()))
    path = (base + alphas * (x - base)).flatten(0, 1).requires_grad_()  # ((n+1)·b, C, H, W)

    captured: dict[str, Tensor] = {}

    def capture(name: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> Tensor:
            if not isinstance(output, Tensor):
                raise ValueError(f"layer {name!r} returns {type(output).__name__}, not a tensor")
            if name in captured:
                raise ValueError(f"layer {name!r} runs more than once per forward (a shared module, e.g. "
                                 "torchvision's BasicBlock.relu); pick a module that runs once")
            captured[name] = output
            # The rest of the network gets a copy, so an in-place op downstream (ReLU(inplace=True))
            # cannot overwrite the captured activations or the tensor we differentiate against.
            return output.clone()
        return hook

    handles = [module.register_forward_hook(capture(name)) for name, module in modules.items()]
    try:
        logits = model(path)
    finally:
        for handle in handles:
            handle.remove()
    logits = logits.reshape(n_steps + 1, b, -1)
    # F(x_0) is left out of the sum: the right Riemann sum never needs the gradient at the baseline.
    total = logits[1:].gather(2, target.view(1, b, 1).expand(n_steps, b, 1)).sum()
    acts = [captured[name] for name in modules]
    grads = torch.autograd.grad(total, acts, allow_unused=True)

    conds = {}
    for name, act, grad in zip(modules, acts, grads):
        a = act.detach().view(n_steps + 1, b, *act.shape[1:])
        if grad is None:  # the layer does not reach the output
            conds[name] = torch.zeros_like(a[0])
            continue
        g = grad.view(n_steps + 1, b, *act.shape[1:])
        conds[name] = (g[1:] * (a[1:] - a[:-1])).sum(dim=0)
    return conds


def _reduce(cond: Tensor, reduce: str) -> Tensor:
    """(B, C_l, *spatial) -> (B, C_l) by spatial mean or sum; (B, D) and ``"none"`` unchanged."""
    if reduce == "none" or cond.dim() <= 2:
        return cond
    dims = tuple(range(2, cond.dim()))
    return cond.mean(dim=dims) if reduce == "mean" else cond.sum(dim=dims)

