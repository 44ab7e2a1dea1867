"""Trained weights kept in the cache, keyed by a hash of what made them.

The key covers the dataset (name, variant and its settings), the model, the training recipe and the
seed; never paths, devices or anything about the experiment, so every experiment, sweep and run
directory shares one trained model per configuration. Each entry is ``<key>.pt`` (the state dict),
``<key>.json`` (the identity it was made from, test accuracy, provenance) and ``<key>.csv`` (the
per-epoch training curve), and for recipes that keep it ``<key>.optim.pt`` (the optimizer's state by
parameter name, see :mod:`boundary_cli.training.optimizer_state`) and, for models trained here,
``<key>.aum.pt`` (the training margins of every sample, see :mod:`boundary_cli.training.aum`), written
atomically so parallel jobs may race safely.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from boundary_cli.cache import stable_hash
from boundary_cli.io import write_csv, write_json, write_torch
from boundary_cli.locks import DEFAULT_LOCK_TIMEOUT, waiting_lock

log = logging.getLogger(__name__)


@dataclass
class StoredModel:
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]
    curve: pd.DataFrame | None
    path: Path
    optimizer_path: Path | None = None  # the optimizer state kept with the weights, when there is one
    aum_path: Path | None = None  # the training margins kept with the weights, when there are some


class CheckpointStore:
    """Folder ``<root>/<dataset>/<model>/`` of content-addressed checkpoints; ``lock_timeout``: seconds
    :meth:`locked` waits for another job training the same weights (None: no limit)."""

    def __init__(self, root: str | Path, lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT):
        self.root = Path(root)
        self.lock_timeout = lock_timeout

    @staticmethod
    def key(identity: dict[str, Any]) -> str:
        return stable_hash(identity)

    def _stem(self, identity: dict[str, Any]) -> Path:
        dataset = identity["dataset"].get("name", "dataset")
        model = identity["model"].get("name", "model")
        return self.root / str(dataset) / str(model) / self.key(identity)

    def path(self, identity: dict[str, Any]) -> Path:
        """Where the weights for ``identity`` are (or would be) stored."""
        return self._stem(identity).with_suffix(".pt")

    @contextmanager
    def locked(self, identity: dict[str, Any]) -> Iterator[None]:
        """Hold ``<key>.lock`` beside the entry for the block: the job that trains ``identity`` holds it,
        and other jobs that need the same weights wait for it (see :func:`boundary_cli.locks.waiting_lock`)."""
        stem = self._stem(identity)
        with waiting_lock(stem.with_suffix(".lock"), self.lock_timeout, "training", f"model {stem.name}"):
            yield

    def load(self, identity: dict[str, Any]) -> StoredModel | None:
        stem = self._stem(identity)
        pt, meta = stem.with_suffix(".pt"), stem.with_suffix(".json")
        if not (pt.exists() and meta.exists()):
            return None
        try:
            sd = torch.load(pt, map_location="cpu", weights_only=True)
            info = json.loads(meta.read_text())
        except Exception as exc:  # a damaged entry is retrained, not fatal
            log.warning("ignoring unreadable checkpoint %s (%s); training again", pt, exc)
            return None
        csv, optim, aum = stem.with_suffix(".csv"), stem.with_suffix(".optim.pt"), stem.with_suffix(".aum.pt")
        curve = pd.read_csv(csv) if csv.exists() else None
        return StoredModel(sd, info, curve, pt, optim if optim.exists() else None, aum if aum.exists() else None)

    def save(self, identity: dict[str, Any], state_dict: dict[str, torch.Tensor], meta: dict[str, Any],
             curve: pd.DataFrame | None, optimizer_state: dict[str, Any] | None = None,
             aum_state: dict[str, Any] | None = None) -> Path:
        stem = self._stem(identity)
        if aum_state is not None:
            write_torch(stem.with_suffix(".aum.pt"), aum_state)
        if curve is not None:
            write_csv(stem.with_suffix(".csv"), curve)
        if optimizer_state is not None:
            write_torch(stem.with_suffix(".optim.pt"), optimizer_state)
        write_torch(stem.with_suffix(".pt"), {k: v.detach().cpu() for k, v in state_dict.items()})
        write_json(stem.with_suffix(".json"), {"identity": identity, **meta})  # last: marks the entry complete
        return stem.with_suffix(".pt")
