"""A run killed after its first finished chunk, started again, reuses that chunk and ends with the
margins an uninterrupted run gives."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import boundary, cli_env

pytestmark = pytest.mark.slow  # every test here starts the CLI in a subprocess

ARGS = ["experiment.n_samples=30", "experiment.sample_seed=7", "dataset.variant=low_pass"]


def test_killed_run_resumes_from_cached_chunks(tmp_path, digits_cache):
    env = cli_env(digits_cache)
    killed = boundary("run", *ARGS, "experiment.chunk_size=10", f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path,
                      env=dict(env, BOUNDARY_CRASH_AFTER_CHUNKS="1"), check=False)
    assert killed.returncode == 75, killed.stderr  # a hard exit, deterministic: right after chunk 1 is stored
    assert not (tmp_path / "a" / "margins.csv").exists() and not (tmp_path / "a" / "run.json").exists()

    boundary("run", *ARGS, "experiment.chunk_size=10", f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path, env=env)
    info = json.loads((tmp_path / "b" / "run.json").read_text())
    assert info["chunks_total"] == 3 and info["chunks_reused"] == 1

    # uninterrupted reference: the same command with the same trained model but no cached chunks
    fresh = tmp_path / "fresh_cache"
    shutil.copytree(digits_cache / "checkpoints", fresh / "checkpoints")
    boundary("run", *ARGS, "experiment.chunk_size=10", f"hydra.run.dir={tmp_path / 'c'}", cwd=tmp_path,
             env=cli_env(fresh))
    info_c = json.loads((tmp_path / "c" / "run.json").read_text())
    assert info_c["chunks_reused"] == 0 and info_c["model"]["source"] == "store"
    b = pd.read_csv(tmp_path / "b" / "margins.csv").sort_values(["subspace", "sample_index"])
    c = pd.read_csv(tmp_path / "c" / "margins.csv").sort_values(["subspace", "sample_index"])
    assert b["sample_index"].tolist() == c["sample_index"].tolist()
    rel = np.abs(b["margin_l2"].to_numpy() - c["margin_l2"].to_numpy()) / c["margin_l2"].to_numpy()
    assert rel.max() <= 1e-5
    assert (b["n_iter"].to_numpy() == c["n_iter"].to_numpy()).all()
