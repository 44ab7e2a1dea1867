"""Locks between jobs: one waits for the other with a timeout, and a killed holder blocks no one."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from boundary_cli.errors import BoundaryError
from boundary_cli.locks import waiting_lock


def test_a_second_holder_waits_logs_once_and_gets_the_lock(tmp_path, caplog):
    path = tmp_path / "sub" / "entry.lock"
    order = []
    with waiting_lock(path, 5, "training", "model x"):
        def second():
            with waiting_lock(path, 5, "training", "model x"):
                order.append("second")

        thread = threading.Thread(target=second)
        with caplog.at_level(logging.INFO, logger="boundary_cli.locks"):
            thread.start()
            time.sleep(0.5)
            order.append("first")
    thread.join(10)
    assert order == ["first", "second"]
    waits = [r.message for r in caplog.records if "waiting for" in r.message]
    assert waits == [f"waiting for {path} (another job is training it)"]


def test_the_timeout_is_one_clear_line_naming_the_entry_the_lock_and_the_key(tmp_path):
    path = tmp_path / "entry.lock"
    with waiting_lock(path, 5, "computing", "chunk abc"):
        errors = []

        def second():
            try:
                with waiting_lock(path, 0.2, "computing", "chunk abc"):
                    pass
            except BoundaryError as exc:
                errors.append(str(exc))

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(10)
    [message] = errors
    assert "\n" not in message and "chunk abc" in message and str(path) in message
    assert "cache.lock_timeout" in message and "0.2 s" in message


HOLD = """
import sys, time
from boundary_cli.locks import waiting_lock
with waiting_lock(sys.argv[1], None, "training", "model x"):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_a_lock_left_by_a_killed_job_is_free(tmp_path):
    path = tmp_path / "entry.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BoundaryError, match="gave up"), waiting_lock(path, 0.3, "training", "model x"):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(30)
        assert path.exists()  # the file stays; the operating system's lock went with the process
        start = time.perf_counter()
        with waiting_lock(path, 30, "training", "model x"):
            assert time.perf_counter() - start < 5
    finally:
        holder.kill()
        holder.wait(30)
