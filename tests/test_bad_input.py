"""Every bad input ends in one clear error line, no traceback, and no result file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import boundary, cli_env

pytestmark = pytest.mark.slow  # every test here starts the CLI in a subprocess

RESULTS = ["margins.csv", "summary.csv", "margins.npy", "run.json", "margins.png", "examples.png"]


def run_fails(tmp_path: Path, env: dict, *args: str) -> str:
    run_dir = tmp_path / "run"
    proc = boundary("run", *args, f"hydra.run.dir={run_dir}", cwd=tmp_path, env=env, check=False)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr + proc.stdout
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    for name in RESULTS:
        assert not (run_dir / name).exists(), name
    return err


def test_unknown_options_name_the_valid_ones(tmp_path, digits_cache):
    env = cli_env(digits_cache)
    err = run_fails(tmp_path, env, "dataset=svhn")
    assert "svhn" in err and "cifar10, cifar100, digits, fashion_mnist, image_folder, imagenet, mnist" in err
    err = run_fails(tmp_path, env, "-m", "model=lenet,resnet", "dataset=fashion_mnist")
    assert "'resnet'" in err and "resnet18" in err
    err = run_fails(tmp_path, env, "dataset.variant=blur")
    assert "none, flip, low_pass" in err
    err = run_fails(tmp_path, env, "model.arch.stem=tiny", "model=resnet18")
    assert "stem" in err and "cifar" in err
    err = run_fails(tmp_path, env, "+model.arch.depth=3")
    assert "model small_cnn" in err and "depth" in err


def test_missing_dataset_files_say_where_and_how(tmp_path):
    err = run_fails(tmp_path, cli_env(tmp_path / "cache", tmp_path / "empty"), "dataset=mnist", "model=lenet")
    assert str(tmp_path / "empty" / "MNIST" / "raw") in err and "dataset.download=true" in err


@pytest.mark.parametrize("n", ["0", "-3", "many"])
def test_bad_sample_counts(tmp_path, digits_cache, n):
    err = run_fails(tmp_path, cli_env(digits_cache), f"experiment.n_samples={n}")
    assert "n_samples" in err


def test_too_many_samples(tmp_path, digits_cache):
    err = run_fails(tmp_path, cli_env(digits_cache), "experiment.n_samples=501")
    assert "only 500" in err and "all" in err


def test_checkpoint_missing_unreadable_or_not_fitting(tmp_path, digits_cache):
    env = cli_env(digits_cache)
    err = run_fails(tmp_path, env, f"model.checkpoint={tmp_path / 'nope.pt'}")
    assert "nope.pt" in err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x17 not a checkpoint" * 50)
    err = run_fails(tmp_path, env, f"model.checkpoint={garbage}")
    assert "garbage.pt" in err
    other = tmp_path / "lenet.pt"
    torch.save({"conv1.weight": torch.zeros(6, 1, 5, 5), "fc3.weight": torch.zeros(10, 84)}, other)
    err = run_fails(tmp_path, env, f"model.checkpoint={other}")
    assert "missing keys" in err and "unexpected keys" in err and "small_cnn" in err


def test_model_that_cannot_take_the_input_size(tmp_path, digits_cache):
    err = run_fails(tmp_path, cli_env(digits_cache), "model=vgg19")
    assert "32x32" in err and "8x8" in err


@pytest.mark.parametrize("corruption,words", [("nan_pixel", "NaN"), ("range", "outside the range")])
def test_nan_or_out_of_range_inputs(tmp_path, digits_cache, corruption, words):
    err = run_fails(tmp_path, cli_env(digits_cache), "dataset.loader._target_=fake_data.corrupt_digits",
                    f"+dataset.loader.corruption={corruption}")
    assert words in err


def test_cuda_requested_without_a_gpu(tmp_path, digits_cache):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    err = run_fails(tmp_path, cli_env(digits_cache), "device=cuda")
    assert "device=cpu" in err
