"""Content hashes and the store of finished work chunks that lets a killed run resume.

A chunk is stored under the hash of everything that determines it (model weights, the exact
input tensors, every method parameter), so a rerun of the same command, in any run directory,
finds it, and a changed input can never pick up a stale one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from boundary_cli.io import write_torch

log = logging.getLogger(__name__)

CRASH_ENV = "BOUNDARY_CRASH_AFTER_CHUNKS"  # testing hook: hard exit after storing this many chunks


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex sha256 of a JSON-serialisable object with sorted keys (same content, same hash)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def tensor_hash(*tensors: torch.Tensor, length: int = 16) -> str:
    """Hex sha256 of the dtypes, shapes and bytes of tensors."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:length]


def model_hash(model: nn.Module) -> str:
    """Hash of a model's state (parameters and buffers, in key order)."""
    sd = model.state_dict()
    return stable_hash([list(sd), tensor_hash(*sd.values())])


class ChunkStore:
    """Dictionaries of tensors stored as ``<root>/<key>.pt``, written atomically."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.stored = 0

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        path = self.root / f"{key}.pt"
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged chunk is recomputed, not fatal
            log.warning("ignoring unreadable chunk %s (%s)", path, exc)
            return None

    def put(self, key: str, value: dict[str, torch.Tensor]) -> None:
        write_torch(self.root / f"{key}.pt", {k: v.detach().cpu() for k, v in value.items()})
        self.stored += 1
        limit = os.environ.get(CRASH_ENV)
        if limit and self.stored >= int(limit):
            log.error("%s=%s: exiting hard after storing %d chunks", CRASH_ENV, limit, self.stored)
            os._exit(75)
