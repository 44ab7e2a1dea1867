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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from boundary_cli.io import write_torch
from boundary_cli.locks import DEFAULT_LOCK_TIMEOUT, waiting_lock

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
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))  # no copy of big training sets
    return h.hexdigest()[:length]


def model_hash(model: nn.Module) -> str:
    """Hash of a model's state (parameters and buffers, in key order)."""
    sd = model.state_dict()
    return stable_hash([list(sd), tensor_hash(*sd.values())])


class ChunkStore:
    """Dictionaries of tensors stored as ``<root>/<key>.pt``, written atomically; ``lock_timeout``:
    seconds :meth:`locked` waits for another job computing the same chunk (None: no limit)."""

    def __init__(self, root: str | Path, lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT):
        self.root = Path(root)
        self.lock_timeout = lock_timeout
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

    @contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold the lock of chunk ``key`` (``<root>/locks/<key>.lock``) for the block: jobs that compute
        the same chunk at once wait for each other (see :func:`boundary_cli.locks.waiting_lock`)."""
        with waiting_lock(self.root / "locks" / f"{key}.lock", self.lock_timeout, "computing", f"chunk {key}"):
            yield

    def get_or_compute(self, key: str, compute: Callable[[], dict[str, torch.Tensor]],
                       required: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        """The stored chunk ``key``, or ``compute()`` stored under it. Of several jobs asking for a missing
        chunk at once one computes it and the others wait for it and load it. A stored chunk that lacks
        one of the ``required`` keys (an older, smaller chunk) counts as missing. A computed chunk is
        returned as stored (tensors on the CPU)."""
        found = self._complete(key, required)
        if found is not None:
            return found
        with self.locked(key):
            found = self._complete(key, required)  # another job may have stored it while this one waited
            if found is not None:
                return found
            value = {k: v.detach().cpu() for k, v in compute().items()}
            self.put(key, value)
            return value

    def _complete(self, key: str, required: Sequence[str]) -> dict[str, torch.Tensor] | None:
        found = self.get(key)
        return found if found is not None and all(k in found for k in required) else None

    def put(self, key: str, value: dict[str, torch.Tensor]) -> None:
        write_torch(self.root / f"{key}.pt", {k: v.detach().cpu() for k, v in value.items()})
        self.stored += 1
        limit = os.environ.get(CRASH_ENV)
        if limit and self.stored >= int(limit):
            log.error("%s=%s: exiting hard after storing %d chunks", CRASH_ENV, limit, self.stored)
            os._exit(75)
