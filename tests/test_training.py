"""The reference recipe's schedule, the checkpoint store, and train-once-then-reuse in the runner."""

from __future__ import annotations

import logging

import pytest
import torch
from hydra import compose, initialize_config_module

from boundary_cli.data.digits import load_digits
from boundary_cli.runner import obtain_model
from boundary_cli.training.one_cycle import OneCycleSGD
from boundary_cli.training.store import CheckpointStore


def test_triangular_schedule_matches_the_reference():
    r = OneCycleSGD()
    assert r.lr_at(0) == 0 and r.lr_at(12) == pytest.approx(0.21) and r.lr_at(30) == 0
    assert r.lr_at(6) == pytest.approx(0.105) and r.lr_at(21) == pytest.approx(0.105)
    short = OneCycleSGD(epochs=1)  # floor(0.4) = 0: the exact fraction is used
    assert short.lr_at(0.4) == pytest.approx(0.21) and short.lr_at(1) == 0


def test_store_round_trip(tmp_path):
    store = CheckpointStore(tmp_path)
    ident = {"dataset": {"name": "digits"}, "model": {"name": "m"}, "seed": 0}
    assert store.load(ident) is None
    sd = {"w": torch.arange(3.0)}
    path = store.save(ident, sd, {"test_accuracy": 0.5}, None)
    assert path.parent == tmp_path / "digits" / "m"
    got = store.load(ident)
    assert torch.equal(got.state_dict["w"], sd["w"]) and got.meta["test_accuracy"] == 0.5
    assert store.load(dict(ident, seed=1)) is None
    path.write_bytes(b"broken")
    assert store.load(ident) is None  # a damaged entry means: train again


def test_obtain_model_trains_once_then_reuses(tmp_path, caplog):
    with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
        cfg = compose("config", overrides=["training=quick", f"paths.cache_dir={tmp_path}", "training.min_accuracy=0.9"])
    data = load_digits(tmp_path, tmp_path)
    model, info, curve = obtain_model(cfg, data, torch.device("cpu"), progress=False)
    assert info["source"] == "trained" and len(curve) == 3 and not model.training
    assert info["test_accuracy"] > 0.9
    again, info2, curve2 = obtain_model(cfg, data, torch.device("cpu"), progress=False)
    assert info2["source"] == "store" and info2["path"] == info["path"] and len(curve2) == 3
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_warning_below_min_accuracy(tmp_path, caplog):
    from boundary_cli.runner import execute

    with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
        cfg = compose("config", overrides=["training=quick", f"paths.cache_dir={tmp_path}", "training.min_accuracy=1.01",
                                           "experiment.n_samples=3"])
    with caplog.at_level(logging.WARNING):
        info = execute(cfg, tmp_path / "run", progress=False)
    assert any("below training.min_accuracy" in r.message for r in caplog.records)
    assert info["n_samples"] == 3 and (tmp_path / "run" / "training.csv").exists()
