"""Layer taps: named intermediate activations of any model of the zoo, by forward hooks, and the one
rule that names layers.

Layer names are those of the bare network's submodules (``model.net`` for a
:class:`~boundary_cli.models.normalize.Classifier`, else the model's own), plus ``input``: the image
itself in pixel units, before normalisation; ``net.<name>`` is accepted for ``<name>``. Every
architecture declares its tap layers in its ``tap_layers`` class attribute (the model contract, like
timm's ``feature_info``): :func:`resolve_layers` turns ``default`` (input and the tap layers),
``last`` (the last tap layer) or a list of names into (name, module) pairs, and the detectors and
experiments go through it. The activation of a layer is its module's output, flattened per sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

INPUT = "input"


def _net(model: nn.Module) -> nn.Module:
    net = getattr(model, "net", None)
    return net if isinstance(net, nn.Module) else model


def available_layers(model: nn.Module) -> list[str]:
    """Every name a tap accepts: ``input`` and the named submodules of the bare network."""
    return [INPUT, *(name for name, _ in _net(model).named_modules() if name)]


def default_layers(model: nn.Module) -> list[str]:
    """``input`` followed by the network's ``tap_layers`` (input only when it declares none)."""
    return [INPUT, *getattr(_net(model), "tap_layers", ())]


def resolve_layers(model: nn.Module, spec: Any, *, with_input: bool = True) -> list[tuple[str, nn.Module | None]]:
    """The layers ``spec`` names, as (name, module) pairs in the order given.

    Args:
        model: a classifier (a ``Classifier`` or a bare network).
        spec: ``"default"`` (``input``, then the network's ``tap_layers``), ``"last"`` (its last tap
            layer), one layer name, or a sequence of names (see the module doc; ``net.<name>`` is
            ``<name>``).
        with_input: whether ``input`` (module None: the image itself) is a valid name; False drops
            it from ``default``.

    Returns:
        ``[(name, module)]`` with names in their plain form (relative to the bare network).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones), an empty or malformed
        spec, or ``last`` on a model that declares no tap layers.
    """
    net = _net(model)
    taps = list(getattr(net, "tap_layers", ()))
    if spec == "default":
        names = ([INPUT] if with_input else []) + taps
    elif spec == "last":
        if not taps:
            raise ValueError("this model declares no tap layers; give a list of layer names")
        names = taps[-1:]
    elif isinstance(spec, str):
        names = [spec]
    elif isinstance(spec, Iterable) and not isinstance(spec, (Mapping, bytes)):
        names = [str(v) for v in spec]
    else:
        names = []
    if not names:
        raise ValueError(f"layers must be default, last, a layer name or a list of them, got {spec!r}")
    modules = {name: m for name, m in net.named_modules() if name}
    prefix = "net." if net is not model else None
    plain = [n[len(prefix):] if prefix and n.startswith(prefix) and n[len(prefix):] in modules else n for n in names]
    bad = [n for n in plain if n not in modules and not (with_input and n == INPUT)]
    if bad:
        valid = ([INPUT] if with_input else []) + list(modules)
        what = "layer" if len(bad) == 1 else "layers"
        raise ValueError(f"unknown {what} {', '.join(repr(b) for b in bad)}; valid: {', '.join(valid)}")
    return [(n, None if n == INPUT else modules[n]) for n in plain]


@torch.no_grad()
def activations(model: nn.Module, x: Tensor, layers: Sequence[str], batch_size: int = 512) -> dict[str, Tensor]:
    """Activations of ``layers`` for every image of x.

    Args:
        model: classifier in eval mode; hooks are removed afterwards.
        x: (B, C, H, W) images in pixel units.
        layers: names from :func:`available_layers`.
        batch_size: images per forward.

    Returns:
        ``{name: (B, D_name)}`` flattened float activations, on x's device, in the order asked.
    """
    modules = {name: module for name, (_, module) in zip(layers, resolve_layers(model, list(layers)))}
    out: dict[str, list[Tensor]] = {name: [] for name in layers}
    current: dict[str, Tensor] = {}

    def hook(name: str):
        def save(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            current[name] = output.detach().flatten(1).float()
        return save

    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items() if module is not None]
    try:
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            current.clear()
            model(xb)
            for name in layers:
                out[name].append(xb.flatten(1).float() if modules[name] is None else current[name])
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(parts) for name, parts in out.items()}


def layer_distances(model: nn.Module, a: Tensor, b: Tensor, layers: Sequence[str],
                    batch_size: int = 512) -> Tensor:
    """Squared Euclidean distances between the activations of paired images.

    Args:
        a, b: (B, C, H, W) images, row i of a paired with row i of b.
        layers: L layer names.

    Returns:
        (L, B) ``‖a_l(a_i) − a_l(b_i)‖²`` per layer and pair (take the square root for L2).
    """
    if a.shape != b.shape:
        raise ValueError(f"paired images must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    parts = []
    for i in range(0, a.shape[0], batch_size):  # batch by batch: activations of every pair never coexist
        fa = activations(model, a[i : i + batch_size], layers, batch_size)
        fb = activations(model, b[i : i + batch_size], layers, batch_size)
        parts.append(torch.stack([(fa[name] - fb[name]).pow(2).sum(dim=1) for name in layers]))
    return torch.cat(parts, dim=1) if parts else torch.zeros((len(layers), 0), device=a.device)
