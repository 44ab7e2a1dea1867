"""What a run spends, per kind of work (one stage or signal: ``margin``, ``walk``, ``lcr_preds``, ...).

The run context holds one :class:`WorkLog`; the cached-chunk helper adds to it for every chunk it
computes or reuses, and run.json carries it under ``work``, so the cost of each part of a run
(forwards, backwards, seconds, chunks taken from the cache) can be reported beside its results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Work:
    """Counts of one kind of work. ``rows`` is in the unit of the work (DeepFool rows, walks, images);
    ``chunks_reused`` chunks were read from the cache and cost nothing in this run."""

    forwards: int = 0
    backwards: int = 0
    seconds: float = 0.0
    rows: int = 0
    chunks: int = 0
    chunks_reused: int = 0


@dataclass
class WorkLog:
    """Work per kind, in the order the kinds first appeared."""

    kinds: dict[str, Work] = field(default_factory=dict)

    def add(self, kind: str, *, forwards: int = 0, backwards: int = 0, seconds: float = 0.0, rows: int = 0,
            chunks: int = 0, chunks_reused: int = 0) -> Work:
        """Add counts to ``kind`` (created at zero) and return its running totals."""
        w = self.kinds.setdefault(kind, Work())
        w.forwards += int(forwards)
        w.backwards += int(backwards)
        w.seconds += float(seconds)
        w.rows += int(rows)
        w.chunks += int(chunks)
        w.chunks_reused += int(chunks_reused)
        return w

    def as_dict(self) -> dict[str, dict[str, float | int]]:
        """``{kind: counts}`` for run.json, seconds rounded to milliseconds."""
        return {k: dict(asdict(w), seconds=round(w.seconds, 3)) for k, w in self.kinds.items()}
