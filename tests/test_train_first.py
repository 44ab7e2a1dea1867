"""dataset.train_first: the first n training images in file order (the Decision-Flip reference's
45,000 of CIFAR-10), part of the trained weights' key only when set."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module

from boundary_cli.errors import BoundaryError
from boundary_cli.runner import load_dataset
from boundary_cli.training.obtain import weights_identity


def cfg_for(tmp_path, *overrides: str):
    with initialize_config_module(config_module="boundary_cli.conf", version_base=None):
        return compose("config", overrides=[f"paths.cache_dir={tmp_path}", *overrides])


def test_train_first_keeps_the_first_images_in_file_order(tmp_path):
    full = load_dataset(cfg_for(tmp_path))
    part = load_dataset(cfg_for(tmp_path, "dataset.train_first=100"))
    assert torch.equal(part.train_x, full.train_x[:100]) and torch.equal(part.train_y, full.train_y[:100])
    assert torch.equal(part.test_x, full.test_x)  # the test split is untouched


def test_train_first_enters_the_weights_key_through_the_data_it_keeps(tmp_path):
    def identity(*overrides):
        cfg = cfg_for(tmp_path, *overrides)
        return weights_identity(cfg, load_dataset(cfg))

    default, part = identity(), identity("dataset.train_first=100")
    assert "train_first" not in default["dataset"]
    assert part["dataset"]["train_x"] != default["dataset"]["train_x"] and part != default
    assert part == identity("dataset.train_first=100") and identity("dataset.train_first=null") == default


@pytest.mark.parametrize("value", [0, 100000, "many"])
def test_train_first_out_of_range_is_one_clear_error(tmp_path, value):
    with pytest.raises(BoundaryError, match="dataset.train_first"):
        load_dataset(cfg_for(tmp_path, f"dataset.train_first={value}"))
