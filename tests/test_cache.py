"""The chunk store: get_or_compute computes a chunk once however many jobs ask for it at once."""

from __future__ import annotations

import threading
import time

import torch

from boundary_cli.cache import ChunkStore


def test_get_or_compute_stores_and_then_reads(tmp_path):
    store = ChunkStore(tmp_path)
    calls = []
    first = store.get_or_compute("k", lambda: calls.append(1) or {"a": torch.arange(3)})
    again = ChunkStore(tmp_path).get_or_compute("k", lambda: calls.append(1) or {"a": torch.zeros(3)})
    assert calls == [1] and torch.equal(first["a"], torch.arange(3)) and torch.equal(again["a"], torch.arange(3))


def test_two_jobs_asking_for_the_same_chunk_compute_it_once(tmp_path):
    calls, results = [], []
    start = threading.Barrier(2)

    def compute():
        calls.append(threading.current_thread().name)
        time.sleep(0.5)  # long enough for the other job to find the chunk missing and wait
        return {"a": torch.full((2,), 7.0)}

    def job():
        store = ChunkStore(tmp_path, lock_timeout=30)  # each job its own store, as two processes would have
        start.wait()
        results.append(store.get_or_compute("same", compute))

    threads = [threading.Thread(target=job, name=f"job{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(calls) == 1 and len(results) == 2
    assert all(torch.equal(r["a"], torch.full((2,), 7.0)) for r in results)
