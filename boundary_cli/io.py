"""Atomic file writing: every final file appears whole or not at all (temp file + rename).

The lowest layer of boundary's own modules: the chunk cache, the checkpoint store, data/ and the
reporting all write through it. Files are created with the user's umask (0644 under the usual 022),
so colleagues on a shared cluster can read the results.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterator

if TYPE_CHECKING:  # imported where used: writing text must not load matplotlib, pandas or torch
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure


def _create_temp(path: Path) -> Path:
    """An empty, new file next to ``path``, with the mode ``open()`` would give it (0666 less the umask;
    ``tempfile.mkstemp`` always makes 0600)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # another writer drew the same name: draw again
            continue


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
    import numpy as np

    return _write(path, lambda fh: np.save(fh, array))


def write_torch(path: str | Path, obj: Any) -> Path:
    import torch

    return _write(path, lambda fh: torch.save(obj, fh))


def write_figure(path: str | Path, fig: Figure, dpi: int = 150) -> Path:
    fmt = Path(path).suffix.lstrip(".") or "png"
    return _write(path, lambda fh: fig.savefig(fh, format=fmt, dpi=dpi, bbox_inches="tight"))
