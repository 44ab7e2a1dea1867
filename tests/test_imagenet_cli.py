"""ImageNet through the CLI as a user types it: a robustness-library ResNet-50 checkpoint on a tiny val
tree in either layout, the flip variant per batch, the whole set (n_samples=all), and clear errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import torchvision
from conftest import boundary, cli_env
from fake_data import write_imagenet_tree

SMALL = ["dataset.loader.image_size=64", "dataset.loader.resize=72"]  # CPU-sized crops of the same pipeline


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet_cli")
    write_imagenet_tree(root / "data" / "imagenet", with_meta=True)
    write_imagenet_tree(root / "folder_layout", with_meta=False)
    torch.manual_seed(0)
    sd = torchvision.models.resnet50().state_dict()
    robust = {f"module.model.{k}": v for k, v in sd.items()}
    robust.update({f"module.attacker.model.{k}": v for k, v in sd.items()})
    robust.update({"module.normalizer.new_mean": torch.zeros(3, 1, 1), "module.normalizer.new_std": torch.ones(3, 1, 1)})
    torch.save({"model": robust, "epoch": 90}, root / "robust_resnet50.pt")
    return root


@pytest.mark.slow
def test_margins_of_a_robust_resnet50_on_both_layouts(imagenet, tmp_path):
    env = cli_env(tmp_path / "cache", imagenet / "data")
    ckpt = f"model.checkpoint={imagenet / 'robust_resnet50.pt'}"
    boundary("run", "dataset=imagenet", "model=resnet50", ckpt, *SMALL, "experiment.n_samples=all",
             "experiment.deepfool.max_iter=20", f"hydra.run.dir={tmp_path / 'meta'}", cwd=tmp_path, env=env)
    boundary("run", "dataset=imagenet", f"dataset.root={imagenet / 'folder_layout'}", "model=resnet50", ckpt, *SMALL,
             "experiment.n_samples=all", "experiment.deepfool.max_iter=20", f"hydra.run.dir={tmp_path / 'folder'}",
             cwd=tmp_path, env=env)
    a, b = pd.read_csv(tmp_path / "meta" / "margins.csv"), pd.read_csv(tmp_path / "folder" / "margins.csv")
    assert len(a) == 6 * 5 and list(a["block"].unique()) == [64, 16]  # full + 4 blocks of 16 on 64
    assert a["sample_index"].tolist() == b["sample_index"].tolist() and a["label"].tolist() == b["label"].tolist()
    pd.testing.assert_series_equal(a["margin_l2"], b["margin_l2"], rtol=1e-5)
    info = json.loads((tmp_path / "meta" / "run.json").read_text())
    assert info["model"]["source"] == "file" and info["test_accuracy"] is None
    assert info["n_samples"] == 6 and info["candidates"] == 10 and info["n_forward"] > 0 and info["n_backward"] > 0
    assert info["accuracy_measured"] is not None and info["identity"]["training"] == "checkpoint"


@pytest.mark.slow
def test_flip_variant_runs_per_batch(imagenet, tmp_path):
    env = cli_env(tmp_path / "cache", imagenet / "data")
    boundary("run", "dataset=imagenet", "dataset.variant=flip", "model=resnet50",
             f"model.checkpoint={imagenet / 'robust_resnet50.pt'}", *SMALL, "experiment.n_samples=2",
             "experiment.subspaces.include_full=false", "experiment.deepfool.max_iter=10",
             "experiment.deepfool.max_memory_gb=0.05", "experiment.deepfool.sync_every=3",
             f"hydra.run.dir={tmp_path / 'flip'}", cwd=tmp_path, env=env)
    m = pd.read_csv(tmp_path / "flip" / "margins.csv")
    assert (m["variant"] == "flip").all() and len(m) == 2 * 4
    info = json.loads((tmp_path / "flip" / "run.json").read_text())
    assert info["memory_budget_gb"] == 0.05 and info["sync_every"] == 3 and 1 <= info["batch_rows"] < 8
    assert (tmp_path / "flip" / "examples.png").exists()


@pytest.mark.slow
def test_imagenet_errors_are_one_line(imagenet, tmp_path):
    env = cli_env(tmp_path / "cache", tmp_path / "empty")
    proc = boundary("run", "dataset=imagenet", "model=resnet50", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path,
                    env=env, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: ImageNet validation images not found")
    assert len(proc.stderr.strip().splitlines()) == 1 and "meta.bin" in proc.stderr
    env = cli_env(tmp_path / "cache", imagenet / "data")
    proc = boundary("run", "dataset=imagenet", "model=resnet50", *SMALL, f"hydra.run.dir={tmp_path / 'r'}",
                    cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 2 and "no training images" in proc.stderr and "model.checkpoint=PATH" in proc.stderr
    assert "model.pretrained=true" in proc.stderr
    proc = boundary("run", "dataset=imagenet", "experiment=decision_flip", "model=resnet50", *SMALL,
                    f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 2 and "serves margin" in proc.stderr
    assert not (tmp_path / "r" / "run.json").exists()
