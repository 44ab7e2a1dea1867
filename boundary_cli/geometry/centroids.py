"""Class centroids in a network's layers, and each image's distance to the centroid of its class
(Decision-Flip-Experiments §2.7).

A class's centroid at layer l is either the activation of the class's mean image (``space="input"``,
the reference) or the mean of the class's activations at l (``space="layer"``). Layer names are
those of :mod:`boundary_cli.geometry.taps`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from boundary_cli.geometry.taps import activations

SPACES = ("input", "layer")


def class_centroids(model: nn.Module, x: Tensor, label: Tensor, layers: Sequence[str], space: str,
                    num_classes: int) -> tuple[dict[str, Tensor], Tensor]:
    """Per-layer centroids of the classes of the images x.

    Args:
        model: classifier in eval mode.
        x: (M, C, H, W) images; ``label`` (M,) int64 the class each one counts for (e.g. the model's
            prediction).
        layers: L layer names (see :func:`~boundary_cli.geometry.taps.activations`).
        space: ``input`` (activations of the mean image) or ``layer`` (mean of the activations).
        num_classes: K.

    Returns:
        ``({name: (K, D_name)}, present)``: the centroids, and (K,) bool, False for a class that no
        image holds (its centroid row is a placeholder).
    """
    if space not in SPACES:
        raise ValueError(f"unknown centroid space {space!r}; valid: {', '.join(SPACES)}")
    if space == "input":
        means = torch.stack([x[label == c].mean(dim=0) if (label == c).any()
                             else torch.full_like(x[0], float("nan")) for c in range(num_classes)])
        present = ~means.flatten(1).isnan().any(dim=1)
        return activations(model, means.nan_to_num(0.0), layers), present
    acts = activations(model, x, layers)
    present = torch.tensor([bool((label == c).any()) for c in range(num_classes)])
    return {name: torch.stack([a[label == c].mean(dim=0) if present[c] else a[0] * 0 for c in range(num_classes)])
            for name, a in acts.items()}, present


def own_class_distances(model: nn.Module, x: Tensor, own: Tensor, centroid_x: Tensor, centroid_label: Tensor,
                        layers: Sequence[str], space: str, num_classes: int) -> Tensor:
    """Squared Euclidean distance of each image's activations to the centroid of its own class.

    Args:
        x: (N, C, H, W) images; ``own`` (N,) int64 their classes.
        centroid_x, centroid_label: (M, C, H, W) images and (M,) their classes, from which the
            centroids are taken (see :func:`class_centroids` for ``space``).
        layers: L layer names.

    Returns:
        (L, N) ``‖a_l(x_i) − c_l(own_i)‖²``, NaN where no centroid image holds the class ``own_i``.
    """
    centroids, present = class_centroids(model, centroid_x, centroid_label, layers, space, num_classes)
    feats = activations(model, x, layers)
    d = torch.stack([(feats[n] - centroids[n][own]).pow(2).sum(dim=1) for n in layers])
    return torch.where(present[own].to(d.device), d, torch.full_like(d, float("nan")))
