"""Atomic file writing: every final file appears whole or not at all (temp file + rename)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write(path: str | Path, writer: Callable[[BinaryIO], None]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer(fh)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return _write(path, lambda fh: fh.write(text.encode()))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_csv(path: str | Path, df: pd.DataFrame) -> Path:
    return _write(path, lambda fh: df.to_csv(fh, index=False))


def write_npy(path: str | Path, array: np.ndarray) -> Path:
    return _write(path, lambda fh: np.save(fh, array))


def write_torch(path: str | Path, obj: Any) -> Path:
    return _write(path, lambda fh: torch.save(obj, fh))


def write_figure(path: str | Path, fig: Figure, dpi: int = 150) -> Path:
    fmt = Path(path).suffix.lstrip(".") or "png"
    return _write(path, lambda fh: fig.savefig(fh, format=fmt, dpi=dpi, bbox_inches="tight"))
