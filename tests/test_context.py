"""The run context's cached-chunk helper: one key (format included), reuse, resume, counters."""

from __future__ import annotations

import torch

from boundary_cli.cache import ChunkStore
from boundary_cli.experiments.context import Computed, RunContext


def _ctx(tmp_path, model_id="m1") -> RunContext:
    return RunContext(cfg=None, data=None, raw_test_x=None, model=None, model_id=model_id, device=torch.device("cpu"),
                      identity=dict(dataset="digits", variant="none", model="small_cnn", training="quick", seed=0),
                      chunks=ChunkStore(tmp_path), memory_budget=0, progress=False)


def _squares(calls):
    def compute(x, progress):
        calls.append(x.clone())
        progress(len(x))
        return Computed({"y": x ** 2}, forwards=len(x), backwards=2 * len(x))
    return compute


def test_chunks_are_computed_once_and_reused_by_content(tmp_path):
    x = torch.arange(10.0)
    items = list(x.split(4))  # 4, 4, 2
    calls: list = []
    ctx = _ctx(tmp_path)
    run = ctx.cached_chunks("sq", items, _squares(calls), fmt=1, params=dict(p=1), rows=len)
    assert torch.equal(run.cat("y"), x ** 2) and len(calls) == 3 and run.reused == 0
    assert (run.forwards, run.backwards, run.computed_rows) == (10, 20, 10)
    # same work again (another run context, same cache): nothing computed, same values
    again_ctx = _ctx(tmp_path)
    again = again_ctx.cached_chunks("sq", items, _squares(calls), fmt=1, params=dict(p=1), rows=len)
    assert len(calls) == 3 and again.reused == 3 and torch.equal(again.cat("y"), x ** 2)
    assert again.keys == run.keys and len(set(run.keys)) == 3
    assert again_ctx.work.as_dict()["sq"] == dict(forwards=0, backwards=0, seconds=0.0, rows=10, chunks=3,
                                                  chunks_reused=3)
    # a changed input chunk is recomputed alone
    changed = [items[0], items[1] + 100, items[2]]
    ctx.cached_chunks("sq", changed, _squares(calls), fmt=1, params=dict(p=1), rows=len)
    assert len(calls) == 4 and torch.equal(calls[-1], items[1] + 100)


def test_every_part_of_the_key_retires_a_chunk(tmp_path):
    items = [torch.arange(3.0)]
    calls: list = []
    base = dict(kind="sq", fmt=1, params=dict(p=1), model_id="m1")

    def run(kind, fmt, params, model_id):
        _ctx(tmp_path, model_id).cached_chunks(kind, items, _squares(calls), fmt=fmt, params=params, rows=len)

    run(**base)
    assert len(calls) == 1
    for change in (dict(fmt=2), dict(params=dict(p=2)), dict(model_id="m2"), dict(kind="other")):
        run(**{**base, **change})
    assert len(calls) == 5
    run(**base)  # the original is still there
    assert len(calls) == 5


def test_a_chunk_without_the_required_keys_is_recomputed(tmp_path):
    items = [torch.arange(3.0)]
    calls: list = []
    ctx = _ctx(tmp_path)
    ctx.cached_chunks("sq", items, _squares(calls), fmt=1, params={}, rows=len)
    ctx.cached_chunks("sq", items, _squares(calls), fmt=1, params={}, rows=len, required=("y",))
    assert len(calls) == 1
    ctx.cached_chunks("sq", items, _squares(calls), fmt=1, params={}, rows=len, required=("y", "z"))
    assert len(calls) == 2


def test_load_and_inputs_decide_what_the_key_hashes(tmp_path):
    data = torch.arange(12.0).view(6, 2)
    index_chunks = [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])]
    calls: list = []
    ctx = _ctx(tmp_path)
    run = ctx.cached_chunks("rows", index_chunks, _squares(calls), fmt=1, params={}, rows=len,
                            load=lambda idx: data[idx])
    assert torch.equal(run.cat("y"), data ** 2)
    # the same images reached through other indices (a reordered set) are the same chunks
    moved = torch.cat([data[3:], data[:3]])
    ctx.cached_chunks("rows", index_chunks, _squares(calls), fmt=1, params={}, rows=len, load=lambda idx: moved[idx])
    assert len(calls) == 2


def test_work_counts_per_kind_and_run_title(tmp_path):
    ctx = _ctx(tmp_path)
    calls: list = []
    ctx.cached_chunks("a", [torch.ones(2)], _squares(calls), fmt=1, params={}, rows=len)
    ctx.cached_chunks("b", [torch.ones(3), torch.zeros(1)], _squares(calls), fmt=1, params={}, rows=len)
    work = ctx.work.as_dict()
    assert list(work) == ["a", "b"]
    assert (work["a"]["forwards"], work["b"]["forwards"], work["b"]["backwards"], work["b"]["chunks"]) == (2, 4, 8, 2)
    assert ctx.title() == "digits (none), small_cnn, quick seed 0"
    assert ctx.title("10 test images") == "digits (none), small_cnn, quick seed 0, 10 test images"


def test_two_jobs_needing_the_same_chunk_compute_it_once(tmp_path):
    """Two run contexts (two jobs of a sweep) ask for the same missing chunk at once: one computes
    it while holding the chunk's lock, the other waits and reads what the first stored."""
    import threading

    calls: list = []
    started = threading.Event()

    def slow(x, progress):
        calls.append(1)
        started.set()
        threading.Event().wait(1.0)  # hold the lock long enough for the other job to arrive
        return Computed({"y": x + 1})

    results = {}

    def job(name):
        results[name] = _ctx(tmp_path).cached_chunks("slow", [torch.arange(4.0)], slow, fmt=1, params={}, rows=len)

    first = threading.Thread(target=job, args=("a",))
    first.start()
    started.wait(10)
    second = threading.Thread(target=job, args=("b",))
    second.start()
    first.join(30)
    second.join(30)
    assert len(calls) == 1
    assert results["a"].reused == 0 and results["b"].reused == 1
    assert torch.equal(results["b"].cat("y"), torch.arange(4.0) + 1)
