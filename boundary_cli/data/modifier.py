"""A change to the training set that gets weights of its own: noisy labels, a cross-validation fold,
a member of a zoo."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from boundary_cli.data.images import ImageData


@dataclass(frozen=True)
class DataModifier:
    """``apply(data) -> data`` changes the training split (the test split stays as it is); ``name`` and
    ``params`` (JSON-serialisable) enter the checkpoint store's key, so each modifier's model is trained,
    stored and locked under its own key and never shares the clean model's. ``params`` must name
    everything ``apply`` depends on (a noise rate and its seed, a fold index and the fold count, ...).

    ``labels_at(data, epoch)``, when set, gives the training labels (N,) the loop trains on in 1-based
    ``epoch`` (``data`` unmodified; epoch 1 must give ``apply(data).train_y``): labels that change
    during training, as the influenciae reference's re-drawn noise."""

    name: str
    params: Mapping[str, Any]
    apply: Callable[[ImageData], ImageData]
    labels_at: Callable[[ImageData, int], Tensor] | None = None

    def key(self) -> dict[str, Any]:
        """What enters the store key: ``{"name": ..., "params": {...}}``."""
        return dict(name=str(self.name), params=dict(self.params))
