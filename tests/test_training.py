"""The reference recipe's schedule, the checkpoint store, and train-once-then-reuse in the runner."""

from __future__ import annotations

import logging

import pytest
import torch
from hydra import compose, initialize_config_module

from boundary_cli.data.digits import load_digits
from boundary_cli.training.obtain import obtain_model
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
    first = obtain_model(cfg, data, torch.device("cpu"), progress=False)
    model, info, curve = first.model, first.provenance, first.curve
    assert info["source"] == "trained" and len(curve) == 3 and not model.training
    assert info["test_accuracy"] > 0.9
    second = obtain_model(cfg, data, torch.device("cpu"), progress=False)
    again, info2, curve2 = second.model, second.provenance, second.curve
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


def test_one_cycle_sets_the_learning_rate_every_step_and_clips_every_gradient(monkeypatch):
    """hold-me-tight's recipe through the shared loop: the lr of step b (0-based) of epoch e is the triangle at
    t = e + (b + 1) / steps, and a gradient of norm > 0.5 reaches SGD clipped to 0.5 (momentum and weight decay 0,
    so the update is exactly lr x the clipped gradient)."""
    from torch import nn
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    from boundary_cli.data.images import ImageData

    gen = torch.Generator().manual_seed(0)
    x = 100 * torch.rand(10, 1, 2, 2, generator=gen)  # large inputs: gradient norms far above 0.5
    y = torch.arange(10) % 3
    data = ImageData("tiny", x, y, x[:4].clone(), y[:4].clone(), ["a", "b", "c"])
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    recipe = OneCycleSGD(epochs=3, batch_size=4, lr_max=0.2, peak_fraction=0.4, momentum=0.0, weight_decay=0.0,
                         grad_clip=0.5)
    raw_norms, lrs, grad_norms, updates = [], [], [], []
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy_clip(params, max_norm, *args, **kwargs):
        raw_norms.append(float(real_clip(params, max_norm, *args, **kwargs)))
        return raw_norms[-1]

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy_clip)
    before = {}

    def pre(opt, *_):
        lrs.append(opt.param_groups[0]["lr"])
        grad_norms.append(float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()))
        before.update({id(p): p.detach().clone() for p in model.parameters()})

    def post(opt, *_):
        updates.append(float(torch.cat([(p.detach() - before[id(p)]).flatten() for p in model.parameters()]).norm()))

    handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
    try:
        recipe.fit(model, data, seed=0, device=torch.device("cpu"), progress=False)
    finally:
        for h in handles:
            h.remove()

    steps = 3  # ceil(10 / 4)
    peak = 1   # floor(0.4 * 3)
    want = []
    for epoch in range(3):
        for b in range(steps):
            t = epoch + (b + 1) / steps
            want.append(0.2 * t / peak if t <= peak else 0.2 * (3 - t) / (3 - peak))
    assert lrs == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert all(len(set(lrs[e * steps:(e + 1) * steps])) == steps for e in range(3))  # a new lr at every step
    assert len(raw_norms) == len(lrs) and min(raw_norms) > 5  # clipping ran at every step, on large gradients
    for raw, g, lr, du in zip(raw_norms, grad_norms, lrs, updates):
        assert g == pytest.approx(min(raw, 0.5), rel=1e-4)
        assert du == pytest.approx(lr * min(raw, 0.5), rel=1e-3, abs=1e-7)
