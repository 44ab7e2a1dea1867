"""The CLI as a user types it, in a subprocess from an unrelated folder: runs, sweeps, reports, help."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import boundary, cli_env

pytestmark = pytest.mark.slow  # every test here starts the CLI in a subprocess

MARGIN_COLUMNS = ["dataset", "variant", "model", "training", "seed", "overrides", "sample_index", "label",
                  "prediction", "correct", "subspace", "offset", "block", "dim", "margin_l2", "margin_linf",
                  "n_iter", "converged", "adv_label", "margin_min", "margin_bisect", "refine_method", "refine_steps",
                  "min_adv_label", "gap"]
SUMMARY_COLUMNS = ["subspace", "offset", "block", "dim", "n", "median", "q25", "q75", "median_ci_low",
                   "median_ci_high", "share_converged", "share_correct", "median_min", "median_bisect", "median_gap",
                   "p90_gap", "share_gap_above_1_1", "n_gap_nan"]
RUN_KEYS = ["config_hash", "argv", "version", "git_commit", "versions", "device", "test_accuracy", "wall_time_s",
            "n_forward", "n_backward", "samples_per_s", "chunks_reused"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, digits_cache) -> Path:
    """``boundary run`` with its defaults (digits, small_cnn, reference recipe, 100 samples)."""
    work = tmp_path_factory.mktemp("default_run")
    boundary("run", f"hydra.run.dir={work / 'run'}", cwd=work, env=cli_env(digits_cache))
    return work / "run"


def test_default_run_writes_every_output(default_run):
    for name in ["margins.csv", "summary.csv", "margins.npy", "margins_full.npy", "margins_min.npy", "run.json",
                 "margins.png", "examples.png", "training.csv", "config_resolved.yaml", ".hydra/config.yaml"]:
        assert (default_run / name).is_file(), name
    margins = pd.read_csv(default_run / "margins.csv")
    assert list(margins.columns) == MARGIN_COLUMNS
    assert len(margins) == 100 * 6  # full space + 5 blocks of 4x4 on 8x8 images
    assert set(margins["subspace"]) == {"full", "dct_0", "dct_1", "dct_2", "dct_3", "dct_4"}
    assert margins["sample_index"].nunique() == 100
    assert (margins["dataset"] == "digits").all() and (margins["model"] == "small_cnn").all()
    summary = pd.read_csv(default_run / "summary.csv")
    assert list(summary.columns)[-len(SUMMARY_COLUMNS):] == SUMMARY_COLUMNS
    assert list(summary["subspace"]) == ["full", "dct_0", "dct_1", "dct_2", "dct_3", "dct_4"]
    arr = np.load(default_run / "margins.npy")  # hold-me-tight's layout: the subspaces only
    assert arr.shape == (5, 100) and arr.dtype == np.float32
    for s, name in enumerate(["dct_0", "dct_1", "dct_2", "dct_3", "dct_4"]):
        block = margins[margins["subspace"] == name].sort_values("sample_index")["margin_l2"].to_numpy()
        assert np.allclose(arr[s], block, rtol=1e-6), name
    full = margins[margins["subspace"] == "full"].sort_values("sample_index")["margin_l2"].to_numpy()
    assert np.allclose(np.load(default_run / "margins_full.npy"), full, rtol=1e-6)
    info = json.loads((default_run / "run.json").read_text())
    for key in RUN_KEYS:
        assert key in info, key
    assert info["test_accuracy"] >= 0.95
    assert info["n_forward"] > 0 and info["n_backward"] > 0 and info["chunks_reused"] == 0
    curve = pd.read_csv(default_run / "training.csv")
    assert len(curve) == 30 and curve["test_accuracy"].iloc[-1] == pytest.approx(info["test_accuracy"])


def test_full_space_median_is_below_every_subspace_median(default_run):
    summary = pd.read_csv(default_run / "summary.csv").set_index("subspace")
    full = summary.loc["full", "median"]
    blocks = summary.drop(index="full")
    assert (full < blocks["median"]).all(), summary["median"]
    assert (summary["share_converged"] > 0.9).all()


def test_same_samples_and_same_model_on_a_second_run(default_run, digits_cache, tmp_path):
    boundary("run", "dataset.variant=flip", "experiment.n_samples=20", f"hydra.run.dir={tmp_path / 'flip'}",
             cwd=tmp_path, env=cli_env(digits_cache))
    flip = pd.read_csv(tmp_path / "flip" / "margins.csv")
    base = pd.read_csv(default_run / "margins.csv")
    assert set(flip["sample_index"]) <= set(base["sample_index"])  # same seeded permutation, a prefix of it
    assert (flip["variant"] == "flip").all() and (flip["overrides"] == "dataset.variant=flip experiment.n_samples=20").all()
    info = json.loads((tmp_path / "flip" / "run.json").read_text())
    assert info["model"]["source"] == "trained"  # a flipped dataset is another model
    again = boundary("run", "experiment.n_samples=5", "device=cpu", f"hydra.run.dir={tmp_path / 'again'}",
                     cwd=tmp_path, env=cli_env(digits_cache))
    info = json.loads((tmp_path / "again" / "run.json").read_text())
    assert info["model"]["source"] == "store", again.stderr  # paths, device and sample count never retrain


def test_sweep_with_local_launcher_then_report(fake_fashion, tmp_path):
    env = cli_env(fake_fashion["cache"], fake_fashion["data"])
    sweep = tmp_path / "sweep"
    boundary("run", "-m", "hydra/launcher=local", "dataset=fashion_mnist", "dataset.variant=none,flip",
             "model=lenet,small_cnn", "training=quick", "experiment.n_samples=8", "experiment.deepfool.max_iter=20",
             f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=env)
    runs = sorted(p.parent for p in sweep.glob("*/margins.csv"))
    assert len(runs) == 4
    overrides = {pd.read_csv(r / "margins.csv")["overrides"].iloc[0] for r in runs}
    assert len(overrides) == 4
    for r in runs:
        m = pd.read_csv(r / "margins.csv")
        assert len(m) == 8 * 22  # full + 21 blocks of 8x8 on 28x28
    out = boundary("report", str(sweep), cwd=tmp_path, env=env)
    assert "report" in out.stdout
    merged = pd.read_csv(sweep / "report" / "margins.csv")
    summary = pd.read_csv(sweep / "report" / "summary.csv")
    assert len(merged) == 4 * 8 * 22 and merged["run"].nunique() == 4
    assert len(summary) == 4 * 22 and summary["label"].nunique() == 4
    assert (sweep / "report" / "margins.png").stat().st_size > 10_000


def test_list_help_and_cfg(tmp_path, digits_cache):
    env = cli_env(digits_cache)
    out = boundary("list", cwd=tmp_path, env=env).stdout
    for word in ["dataset", "model", "training", "experiment", "hydra/launcher", "digits", "fashion_mnist", "mnist",
                 "cifar10", "cifar100", "small_cnn", "lenet", "resnet18", "vgg19", "densenet121", "reference", "quick",
                 "margin", "local", "slurm"]:
        assert word in out, word
    assert "boundary run" in boundary("--help", cwd=tmp_path, env=env).stdout
    help_text = boundary("run", "--help", cwd=tmp_path, env=env).stdout
    assert "boundary" in help_text
    assert "dataset: cifar10, cifar100, digits, fashion_mnist, image_folder, imagenet, mnist" in help_text
    cfg = boundary("run", "--cfg", "job", "dataset=cifar10", "model=resnet18", cwd=tmp_path, env=env).stdout
    assert "name: cifar10" in cfg and "name: resnet18" in cfg and "block: ${dataset.subspaces.block}" in cfg
    resolved = boundary("run", "--cfg", "job", "--resolve", "dataset=cifar10", cwd=tmp_path, env=env).stdout
    assert "step: 2" in resolved


def test_real_fashion_mnist_when_installed(tmp_path):
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    env = cli_env(tmp_path / "cache", tmp_path / "no_data_here")
    boundary("run", "dataset=fashion_mnist", "model=lenet", "training=quick", "experiment.n_samples=20",
             "experiment.deepfool.max_iter=30", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["test_accuracy"] > 0.8
    summary = pd.read_csv(tmp_path / "run" / "summary.csv")
    assert len(summary) == 22
    assert summary.loc[summary["subspace"] == "full", "median"].iloc[0] < summary["median"].iloc[1:].min()


def test_cifar10_tree_through_the_cli(tmp_path):
    """A re-packed (tiny) CIFAR-10 tree needs dataset.check_integrity=false; 3 channels, 13 blocks."""
    from fake_data import write_cifar10_tree

    write_cifar10_tree(tmp_path / "data", n_train_per_batch=20, n_test=20)
    env = cli_env(tmp_path / "cache", tmp_path / "data")
    refused = boundary("run", "dataset=cifar10", f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path, env=env,
                       check=False)
    assert refused.returncode == 2 and "check_integrity" in refused.stderr
    boundary("run", "dataset=cifar10", "dataset.check_integrity=false", "dataset.variant=low_pass",
             "training=quick", "experiment.n_samples=4", "experiment.deepfool.max_iter=10",
             f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env)
    m = pd.read_csv(tmp_path / "run" / "margins.csv")
    assert len(m) == 4 * 14 and (m.loc[m["subspace"] != "full", "dim"] == 3 * 64).all()
    assert (m.loc[m["subspace"] == "full", "dim"] == 3 * 32 * 32).all() and (m["variant"] == "low_pass").all()
    assert m.loc[m["subspace"] == "dct_24", "offset"].iloc[0] == 24
