"""Locks between jobs that share one cache: while one job makes an entry, the others wait, then read it.

The lock is the operating system's (``flock`` through the filelock package) on a small file beside
the entry, so it is released when its holder exits for any reason, ``kill -9`` included: a killed
job never blocks the others. On a file system without such locks filelock falls back to a marker
file, which a killed job leaves behind; the timeout's message names that file.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from boundary_cli.errors import BoundaryError

log = logging.getLogger(__name__)

LOCK_TIMEOUT_KEY = "cache.lock_timeout"
DEFAULT_LOCK_TIMEOUT = 7200.0  # seconds: longer than most training runs on a GPU, short of a forgotten queue


@contextmanager
def waiting_lock(path: str | Path, timeout: float | None, doing: str, key: str) -> Iterator[None]:
    """Hold the lock file ``path`` for the block, waiting at most ``timeout`` seconds (None: no limit)
    for another job that holds it. Logs once when it has to wait ("waiting for <path> (another job is
    <doing> it)"); raises BoundaryError naming ``key`` (the entry), the lock and ``cache.lock_timeout``
    when the time runs out."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for %s (another job is %s it)", path, doing)
        try:
            lock.acquire(timeout=-1 if timeout is None else float(timeout))
        except Timeout:
            raise BoundaryError(f"gave up on {key} after {float(timeout):g} s: another job is still {doing} it "
                                f"(it holds {path}); raise {LOCK_TIMEOUT_KEY} (seconds, null: no limit), or "
                                f"delete {path} if no job is running") from None
    try:
        yield
    finally:
        lock.release()
