"""Single-point overfitting (stacked = one Adam per point, sequential = cumulative) and the
checkpoint store's epoch snapshots."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from boundary_cli.errors import BoundaryError
from boundary_cli.models.flip_cnn import flip_cnn
from boundary_cli.runner import load_dataset, obtain_model, snapshot_epochs
from boundary_cli.training.overfit import WithParams, overfit_independent, overfit_sequential

CPU = torch.device("cpu")


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return flip_cnn(1, 10, (8, 8)).eval()


def adam_on_one(model, x, y, steps, lr=1e-3):
    net = copy.deepcopy(model)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x[None]), y[None]).backward()
        opt.step()
    return dict(net.named_parameters())


def test_stacked_overfit_equals_one_adam_per_point():
    model = tiny_model()
    x, y = torch.rand(3, 1, 8, 8), torch.tensor([1, 4, 7])
    base = {k: v.clone() for k, v in model.state_dict().items()}
    stacked = overfit_independent(model, x, y, steps=15, lr=1e-3)
    for i in range(3):
        expect = adam_on_one(model, x[i], y[i], 15)
        for name, value in expect.items():
            # Adam divides by sqrt(v): where a gradient is ~1e-9 float rounding of the batched
            # backward can move a weight by a fraction of one step (lr); nearly all agree to 1e-6
            diff = (stacked[name][i] - value.detach()).abs()
            assert float(diff.max()) < 0.1 * 1e-3 and float((diff > 1e-6).float().mean()) < 1e-3, (i, name)
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())  # base untouched
    # the overfit copy predicts its own point with high confidence
    tuned = WithParams(model, {k: v[0] for k, v in stacked.items()})
    assert tuned(x[:1]).softmax(1)[0, 1] > model(x[:1]).softmax(1)[0, 1]


def test_sequential_overfit_is_cumulative():
    model = tiny_model()
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([2, 3])
    net = overfit_sequential(model, x, y, steps=6)
    ref = copy.deepcopy(model)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    for i in range(2):
        for _ in range(6):
            opt.zero_grad()
            F.cross_entropy(ref(x[i : i + 1]), y[i : i + 1]).backward()
            opt.step()
    for (name, a), b in zip(net.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not net.training


def test_with_params_equals_the_model_with_those_weights():
    model, other = tiny_model(0), tiny_model(1)
    x = torch.rand(4, 1, 8, 8)
    wrapped = WithParams(model, dict(other.named_parameters()))
    assert torch.allclose(wrapped(x), other(x), atol=1e-6)


def cfg_for(*overrides: str):
    with initialize_config_module(config_module="boundary_cli.conf", version_base=None):
        return compose("config", overrides=list(overrides))


def test_snapshot_equals_a_run_that_stops_there(tmp_path):
    """Adam at a constant rate: the epoch-2 snapshot of a 4-epoch run is the model a 2-epoch run
    ends with; the final weights and the snapshot are stored apart."""
    common = ["model=flip_cnn", "training=flip_adam", f"paths.cache_dir={tmp_path}", "device=cpu"]
    cfg4 = cfg_for(*common, "training.recipe.epochs=4", "training.save_epochs=[2]")
    data = load_dataset(cfg4)
    snap, prov, _ = obtain_model(cfg4, data, CPU, progress=False, epoch=2)
    assert prov["source"] == "trained" and prov["epoch"] == 2
    final, prov_final, curve = obtain_model(cfg4, data, CPU, progress=False)
    assert prov_final["source"] == "store" and prov_final["epoch"] == 4 and len(curve) == 4
    fresh2, _, _ = obtain_model(cfg_for(*common, "training.recipe.epochs=2", "training.save_epochs=[]",
                                        f"paths.cache_dir={tmp_path / 'other'}"), data, CPU, progress=False)
    for (name, a), b in zip(snap.state_dict().items(), fresh2.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not all(torch.equal(a, b) for a, b in zip(snap.state_dict().values(), final.state_dict().values()))


def test_snapshot_epochs_are_checked():
    cfg = cfg_for("training=flip_adam", "training.recipe.epochs=10", "training.save_epochs=[5,10]")
    assert snapshot_epochs(cfg) == (10, [5, 10])
    assert snapshot_epochs(cfg, 3) == (10, [3, 5, 10])
    with pytest.raises(BoundaryError, match="epoch.*12.*1..10"):
        snapshot_epochs(cfg, 12)
    with pytest.raises(BoundaryError, match="0"):
        snapshot_epochs(cfg_for("training=flip_adam", "training.save_epochs=[0]"))
