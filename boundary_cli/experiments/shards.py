"""Splitting an experiment's work into shards (``shard.index=i shard.count=n``), one job each.

A shard is a set of whole chunks of the chosen samples: chunk j of ``ceil(N / chunk_size)`` belongs to
shard ``floor(j * n / n_chunks)``, so shards are contiguous, differ in size by at most one chunk, and
compute exactly the chunks an unsharded run computes (same inputs, same batches, same cache keys).
Merged (``boundary report``), the shards give the unsharded result.
"""

from __future__ import annotations

from omegaconf import DictConfig
from torch import Tensor

from boundary_cli.errors import BoundaryError


def shard_of(cfg: DictConfig) -> tuple[int, int]:
    """(index, count) from the config's ``shard`` section, checked; (0, 1) when absent."""
    shard = cfg.get("shard")
    if shard is None:
        return 0, 1
    index, count = shard.get("index", 0), shard.get("count", 1)
    for name, value in (("shard.index", index), ("shard.count", count)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise BoundaryError(f"{name} must be an integer, got {value!r}")
    if count < 1 or not 0 <= index < count:
        raise BoundaryError(f"shard.index={index} shard.count={count}: need count >= 1 and 0 <= index < count "
                            f"(a sweep: shard.index='range(0,{max(count, 1)})' shard.count={max(count, 1)})")
    return index, count


def shard_chunks(samples: Tensor, chunk_size: int, index: int, count: int) -> list[Tensor]:
    """The chunks of ``samples`` (1-D, in measuring order) that shard ``index`` of ``count`` measures.

    Chunks are ``samples`` cut every ``chunk_size``; shard i gets chunks ``[ceil(i m / n), ceil((i+1) m / n))``
    of the m chunks, so every chunk belongs to exactly one shard. A shard can be empty when there are
    fewer chunks than shards.
    """
    chunks = list(samples.split(chunk_size)) if samples.numel() else []
    m = len(chunks)
    lo, hi = -(-index * m // count), -(-(index + 1) * m // count)
    return chunks[lo:hi]
