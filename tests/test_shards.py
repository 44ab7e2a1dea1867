"""Sharding: shards are disjoint sets of whole chunks, each job takes its own GPU, and the shards of a
sweep run through the submitit local launcher merge into exactly the unsharded result."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import boundary, cli_env
from omegaconf import OmegaConf

from boundary_cli.errors import BoundaryError
from boundary_cli.experiments.shards import shard_chunks, shard_of
from boundary_cli.device import shard_device


@pytest.mark.parametrize("n,chunk,count", [(100, 10, 3), (100, 7, 8), (5, 2, 4), (30, 40, 3), (0, 5, 2)])
def test_shards_partition_the_chunks_in_order(n, chunk, count):
    samples = torch.randperm(1000)[:n].sort().values
    shards = [shard_chunks(samples, chunk, i, count) for i in range(count)]
    flat = [c for s in shards for c in s]
    assert [c.tolist() for c in flat] == [c.tolist() for c in samples.split(chunk)] if n else flat == []
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_shard_settings_are_checked():
    assert shard_of(OmegaConf.create({})) == (0, 1)
    assert shard_of(OmegaConf.create({"shard": {"index": 3, "count": 4}})) == (3, 4)
    for bad in ({"index": 4, "count": 4}, {"index": -1, "count": 2}, {"index": 0, "count": 0},
                {"index": "a", "count": 2}):
        with pytest.raises(BoundaryError, match="shard"):
            shard_of(OmegaConf.create({"shard": bad}))


def test_each_shard_takes_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [shard_device("auto", i, 8) for i in range(6)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0",
                                                             "cuda:1"]
    assert shard_device("auto", 3, 1) == "auto"  # not sharded: unchanged
    assert shard_device("cuda:2", 1, 8) == "cuda:2" and shard_device("cpu", 1, 8) == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert shard_device("auto", 5, 8) == "auto"


@pytest.mark.slow
def test_submitit_shards_merge_into_the_unsharded_result(tmp_path):
    common = ["experiment.n_samples=60", "experiment.chunk_size=20"]
    whole_cache, shard_cache = tmp_path / "cache_whole", tmp_path / "cache_shards"
    boundary("run", *common, f"hydra.run.dir={tmp_path / 'whole'}", cwd=tmp_path, env=cli_env(whole_cache))
    # the same weights, but no finished chunks: the shards compute their margins themselves
    shutil.copytree(whole_cache / "checkpoints", shard_cache / "checkpoints")
    sweep = tmp_path / "sweep"
    boundary("run", "-m", "hydra/launcher=submitit_local", "shard.index=0,1,2,3", "shard.count=4", *common,
             f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=cli_env(shard_cache))
    infos = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/run.json"))]
    assert sorted(i["shard"]["index"] for i in infos) == [0, 1, 2, 3]
    assert sorted(i["n_samples"] for i in infos) == [0, 20, 20, 20]  # 3 chunks of 20 for 4 shards
    assert all(i["chunks_reused"] == 0 for i in infos) and list(sweep.glob(".submitit/*/*_log.out"))

    boundary("report", str(sweep), cwd=tmp_path, env=cli_env(shard_cache))
    merged_dirs = list((sweep / "report" / "shards").iterdir())
    assert len(merged_dirs) == 1
    merged = pd.read_csv(merged_dirs[0] / "margins.csv")
    whole = pd.read_csv(tmp_path / "whole" / "margins.csv")
    assert list(merged.columns) == list(whole.columns)
    for col in ("sample_index", "subspace", "prediction", "n_iter", "converged", "adv_label"):
        assert merged[col].tolist() == whole[col].tolist(), col
    np.testing.assert_allclose(merged["margin_l2"], whole["margin_l2"], rtol=1e-5)
    assert (merged["overrides"] == whole["overrides"]).all()  # the shard tokens are gone
    # margins.npy: the subspace rows only, (n_subspaces, n_samples) float32; margins_full.npy: the full space
    names = list(dict.fromkeys(merged["subspace"]))
    assert names[0] == "full"
    for folder, table in ((merged_dirs[0], merged), (tmp_path / "whole", whole)):
        arr, full = np.load(folder / "margins.npy"), np.load(folder / "margins_full.npy")
        assert arr.dtype == full.dtype == np.float32
        assert arr.shape == (len(names) - 1, 60) and full.shape == (60,)
        by = {s: t.sort_values("sample_index")["margin_l2"].to_numpy(dtype="float32")
              for s, t in table.groupby("subspace")}
        for s, name in enumerate(names[1:]):
            np.testing.assert_array_equal(arr[s], by[name])
        np.testing.assert_array_equal(full, by["full"])
    np.testing.assert_allclose(np.load(merged_dirs[0] / "margins.npy"), np.load(tmp_path / "whole" / "margins.npy"),
                               rtol=1e-5)
    np.testing.assert_allclose(np.load(merged_dirs[0] / "margins_full.npy"),
                               np.load(tmp_path / "whole" / "margins_full.npy"), rtol=1e-5)
    summary, whole_summary = pd.read_csv(merged_dirs[0] / "summary.csv"), pd.read_csv(tmp_path / "whole" / "summary.csv")
    np.testing.assert_allclose(summary["median"], whole_summary["median"], rtol=1e-5)
    report = pd.read_csv(sweep / "report" / "summary.csv")
    assert report["run"].nunique() == 1  # the four shards count as one run in the sweep report


@pytest.mark.parametrize("include_full", [True, False])
def test_shard_merge_writes_the_hold_me_tight_layout(tmp_path, include_full):
    """The merge of ``boundary report`` writes margins.npy as the margin experiment does: subspace rows
    only, (n_subspaces, n_samples) float32, and margins_full.npy (n_samples,) only when the full space
    was measured."""
    from boundary_cli.reporting.report import _merge_shards

    spaces = (["full"] if include_full else []) + ["dct_0", "dct_1", "dct_2"]
    rng = np.random.default_rng(0)

    def shard(samples):
        rows = [dict(dataset="digits", variant="none", model="m", training="t", seed=0,
                     overrides=f"shard.index={samples[0] // 4} shard.count=2", sample_index=i, label=0, prediction=0,
                     correct=True, subspace=s, offset=k, block=4, dim=16, margin_l2=float(rng.uniform(0.1, 3)),
                     margin_linf=0.1, n_iter=2, converged=True, adv_label=1)
                for k, s in enumerate(spaces) for i in samples]
        return pd.DataFrame(rows)

    tables = {0: ("a", shard([0, 1, 2, 3])), 1: ("b", shard([4, 5, 6]))}
    group = ((("dataset", "digits"), ("overrides", "")), 2)
    _, merged, _ = _merge_shards(group, tables, tmp_path)
    folder = tmp_path / "shards" / "run"
    arr = np.load(folder / "margins.npy")
    assert arr.dtype == np.float32 and arr.shape == (3, 7)
    for s, name in enumerate(["dct_0", "dct_1", "dct_2"]):
        want = merged[merged["subspace"] == name].sort_values("sample_index")["margin_l2"].to_numpy(dtype="float32")
        np.testing.assert_array_equal(arr[s], want)
    if include_full:
        full = np.load(folder / "margins_full.npy")
        want = merged[merged["subspace"] == "full"].sort_values("sample_index")["margin_l2"].to_numpy(dtype="float32")
        assert full.dtype == np.float32 and full.shape == (7,)
        np.testing.assert_array_equal(full, want)
    else:
        assert not (folder / "margins_full.npy").exists()
