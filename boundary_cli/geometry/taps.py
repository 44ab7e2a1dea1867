"""Layer taps: named intermediate activations of any model of the zoo, by forward hooks.

Layer names are those of the bare network's submodules (``model.net`` for a
:class:`~boundary_cli.models.normalize.Classifier`), plus ``input``: the image itself in pixel
units, before normalisation. The activation of a layer is its module's output, flattened per
sample. Every architecture declares a default list in its ``tap_layers`` class attribute.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

INPUT = "input"


def _net(model: nn.Module) -> nn.Module:
    return getattr(model, "net", model)


def available_layers(model: nn.Module) -> list[str]:
    """Every name a tap accepts: ``input`` and the named submodules of the bare network."""
    return [INPUT, *(name for name, _ in _net(model).named_modules() if name)]


def default_layers(model: nn.Module) -> list[str]:
    """``input`` followed by the network's ``tap_layers`` (input only when it declares none)."""
    return [INPUT, *getattr(_net(model), "tap_layers", ())]


def unknown_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """The names in ``layers`` that the model does not have."""
    valid = set(available_layers(model))
    return [name for name in layers if name not in valid]


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
    missing = unknown_layers(model, layers)
    if missing:
        raise ValueError(f"unknown layer(s) {', '.join(missing)}; valid: {', '.join(available_layers(model))}")
    modules = dict(_net(model).named_modules())
    out: dict[str, list[Tensor]] = {name: [] for name in layers}
    current: dict[str, Tensor] = {}

    def hook(name: str):
        def save(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            current[name] = output.detach().flatten(1).float()
        return save

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers if name != INPUT]
    try:
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size]
            current.clear()
            model(xb)
            for name in layers:
                out[name].append(xb.flatten(1).float() if name == INPUT else current[name])
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
