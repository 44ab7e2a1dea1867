"""What the runner hands an experiment, and what an experiment hands back to be written.

:meth:`RunContext.cached_chunks` is the one cached, chunked, resumable work loop: every experiment
that works in chunks goes through it, so the cache key (format version included), reuse, the
progress bar (or a log line per chunk without a terminal) and the work counters are written once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm.auto import tqdm

from boundary_cli.cache import ChunkStore, stable_hash, tensor_hash
from boundary_cli.data.images import ImageData
from boundary_cli.reporting.titles import run_title
from boundary_cli.work import WorkLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Computed:
    """What a chunk's compute function returns: the tensors to store, and what computing them cost."""

    values: dict[str, Tensor]
    forwards: int = 0
    backwards: int = 0


@dataclass
class ChunkRun:
    """The chunks of one :meth:`RunContext.cached_chunks` call, in input order, with their cache keys
    (content hashes: stable names for what a chunk holds), and their cost in this run (reused chunks
    cost nothing)."""

    parts: list[dict[str, Tensor]]
    keys: list[str] = field(default_factory=list)
    forwards: int = 0
    backwards: int = 0
    seconds: float = 0.0
    reused: int = 0
    computed_rows: int = 0

    def cat(self, key: str, dim: int = 0) -> Tensor:
        """The ``key`` tensors of every chunk concatenated along ``dim``."""
        return torch.cat([p[key] for p in self.parts], dim=dim)


@dataclass
class RunContext:
    """Everything built for a run.

    Attributes:
        cfg: the composed config; an experiment reads its own ``cfg.experiment`` section.
        data: the dataset with its variant applied.
        raw_test_x: (M, C, H, W) test images before the variant (for figures).
        model: classifier in eval mode on ``device``, inputs in pixel units; None for an experiment
            with ``own_models`` (it trains its own).
        model_id: hash of the model's weights (part of every chunk key); "" without a model.
        device: where the work runs.
        identity: columns that identify the run in every table (dataset, variant, model, ...).
        chunks: store of finished work chunks in the cache.
        memory_budget: bytes the experiment may use for one batch of work.
        progress: tqdm ``disable`` semantics inverted: None = auto (only on a terminal).
        snapshots: ``{epoch: (model, provenance)}`` for every epoch the experiment's
            ``model_epochs(cfg)`` asked for (None = the final weights); ``model`` is the first.
        work: forwards, backwards and seconds per kind of work, for run.json.
    """

    cfg: DictConfig
    data: ImageData
    raw_test_x: Tensor
    model: nn.Module | None
    model_id: str
    device: torch.device
    identity: dict[str, Any]
    chunks: ChunkStore
    memory_budget: int
    progress: bool | None = None
    snapshots: dict[int | None, tuple[nn.Module, dict[str, Any]]] = field(default_factory=dict)
    work: WorkLog = field(default_factory=WorkLog)

    def title(self, extra: str = "") -> str:
        """The figure title of this run: dataset (variant), model, training and seed, then ``extra``."""
        return run_title(self.identity, extra)

    def progress_bar(self, total: int, desc: str, unit: str = "row") -> tqdm:
        """A tqdm bar that follows ``progress`` (None: shown only on a terminal)."""
        return tqdm(total=total, desc=desc, unit=unit, disable=None if self.progress is None else not self.progress)

    def cached_chunks(self, kind: str, items: Sequence[Any], compute: Callable[[Any, Callable[[int], None]], Computed], *,
                      fmt: int, params: dict[str, Any], rows: Callable[[Any], int],
                      inputs: Callable[[Any], tuple[Tensor, ...]] = lambda x: (x,),
                      load: Callable[[Any], Any] | None = None, required: Sequence[str] = (),
                      model_id: str | None = None, desc: str | None = None, unit: str = "row") -> ChunkRun:
        """Compute ``items`` chunk by chunk, each stored in the cache under the hash of what
        determines it, and reuse the chunks found there (a killed run resumes; a later run with the
        same work, in any run dir, reads it). Of two jobs that need a missing chunk at once, one
        computes it under the chunk's file lock and the other waits, then reads it.

        Args:
            kind: the kind of work: enters the key and names the counters in ``work``.
            items: the chunks, in order (e.g. index tensors, or input tensors).
            compute: ``compute(loaded, progress) -> Computed``; ``progress(n)`` advances the bar by n rows.
            fmt: the format version of this kind's stored chunks (bump it when their meaning changes).
            params: every parameter that determines a chunk besides its inputs and the model (JSON-able).
            rows: the rows of work in an item (progress unit); summed for the bar's total.
            inputs: the tensors of a loaded item whose content enters the key.
            load: item -> what compute and inputs take (read one chunk ahead in a background thread,
                so decoding the next chunk overlaps measuring this one); default: the item itself.
            required: keys a stored chunk must hold to be reused (an older, smaller chunk is recomputed).
            model_id: the weights' hash, when the work is not on ``self.model``.
            desc: the bar's label (default ``kind``).

        Returns the chunks' tensors in order, with the forwards, backwards and seconds spent here.
        """
        desc = desc or kind
        total = sum(rows(item) for item in items)
        run = ChunkRun(parts=[])
        start = time.perf_counter()
        done = 0
        with self.progress_bar(total, desc, unit) as bar, ThreadPoolExecutor(max_workers=1) as reader:
            read = load or (lambda item: item)
            pending = reader.submit(read, items[0]) if len(items) else None
            for i, item in enumerate(items):
                loaded = pending.result()
                if i + 1 < len(items):
                    pending = reader.submit(read, items[i + 1])
                key = stable_hash(dict(kind=kind, format=fmt, model=model_id or self.model_id,
                                       inputs=tensor_hash(*inputs(loaded)), device=self.device.type,
                                       torch=torch.__version__, **params))
                n_rows = rows(item)
                spent: list[tuple[Computed, float]] = []

                def computed_now() -> dict[str, Tensor]:
                    t0 = time.perf_counter()
                    c = compute(loaded, bar.update)
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    spent.append((c, time.perf_counter() - t0))
                    return c.values

                got = self.chunks.get_or_compute(key, computed_now, required)
                reused = not spent
                if reused:
                    run.reused += 1
                    bar.update(n_rows)
                    self.work.add(kind, rows=n_rows, chunks=1, chunks_reused=1)
                else:
                    c, seconds = spent[0]
                    run.forwards += int(c.forwards)
                    run.backwards += int(c.backwards)
                    run.seconds += seconds
                    run.computed_rows += n_rows
                    self.work.add(kind, forwards=c.forwards, backwards=c.backwards, seconds=seconds, rows=n_rows,
                                  chunks=1)
                run.parts.append(got)
                run.keys.append(key)
                done += n_rows
                if bar.disable:  # no terminal (SLURM logs, pipes): a line per chunk instead of the bar
                    elapsed = time.perf_counter() - start
                    eta = elapsed / done * (total - done) if done else float("nan")
                    log.info("%s: chunk %d/%d %s: %d of %d rows done, %.0f s elapsed, ETA %.0f s", desc, i + 1,
                             len(items), "reused from the cache" if reused else "computed", done, total, elapsed, eta)
        return run


@dataclass
class ExperimentOutput:
    """Results to be written into the run dir: ``<name>.csv``, ``<name>.npy``, ``<name>.png``, and
    ``stats`` merged into ``run.json``."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
