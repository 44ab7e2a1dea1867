"""Single-point overfitting (stacked = one Adam per point, sequential = cumulative) and the
checkpoint store's epoch snapshots."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from boundary_cli.errors import BoundaryError
from boundary_cli.models.flip_cnn import flip_cnn
from boundary_cli.runner import load_dataset
from boundary_cli.training.obtain import build_model, obtain_model, seed_everything, snapshot_epochs
from boundary_cli.training.optimizer_state import adam_slots, named_optimizer_state
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
    got = obtain_model(cfg4, data, CPU, progress=False, epoch=2)
    snap, prov = got.model, got.provenance
    assert prov["source"] == "trained" and prov["epoch"] == 2
    got = obtain_model(cfg4, data, CPU, progress=False)
    final, prov_final, curve = got.model, got.provenance, got.curve
    assert prov_final["source"] == "store" and prov_final["epoch"] == 4 and len(curve) == 4
    fresh2 = obtain_model(cfg_for(*common, "training.recipe.epochs=2", "training.save_epochs=[]",
                                  f"paths.cache_dir={tmp_path / 'other'}"), data, CPU, progress=False).model
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


# --- the training run's Adam state (train_again's experiment.optimizer_state=restore) ---------------------------


def trained_with_adam(steps: int = 5, seed: int = 0):
    """A tiny float64 model after ``steps`` Adam steps on random batches, and that optimizer."""
    model = tiny_model(seed).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        xb, yb = torch.rand(8, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    return model.eval(), opt


def one_more_training_step(model, opt, x, y):
    """The original run continued by one step on (x, y) alone: its own optimizer, state and all."""
    net = copy.deepcopy(model)
    cont = torch.optim.Adam(net.parameters(), lr=1e-3)
    cont.load_state_dict(copy.deepcopy(opt.state_dict()))
    cont.zero_grad()
    F.cross_entropy(net(x[None]), y[None]).backward()
    cont.step()
    return dict(net.named_parameters())


def test_restored_overfit_step_is_one_more_step_of_training():
    model, opt = trained_with_adam()
    state = named_optimizer_state(model, opt)
    assert state["optimizer"] == "Adam" and all(float(s["step"]) == 5 for s in state["state"].values())
    x, y = torch.rand(3, 1, 8, 8, dtype=torch.float64), torch.tensor([1, 4, 7])
    restored = overfit_independent(model, x, y, steps=1, adam_state=state)
    fresh = overfit_independent(model, x, y, steps=1)
    for i in range(3):
        expect = one_more_training_step(model, opt, x[i], y[i])
        for name, value in expect.items():
            assert torch.allclose(restored[name][i], value.detach(), rtol=0, atol=1e-12), (i, name)
        # a fresh Adam's first step is ~lr·sign(g): far from the continued run (the wrong semantics)
        worst = max(float((fresh[n][i] - v.detach()).abs().max()) for n, v in expect.items())
        assert worst > 1e-4
    assert all(float(s["step"]) == 5 for s in state["state"].values())  # the record is not consumed


def test_restored_sequential_overfit_continues_the_run():
    model, opt = trained_with_adam()
    state = named_optimizer_state(model, opt)
    x, y = torch.rand(2, 1, 8, 8, dtype=torch.float64), torch.tensor([2, 3])
    net = overfit_sequential(model, x, y, steps=3, adam_state=state)
    ref = copy.deepcopy(model)
    cont = torch.optim.Adam(ref.parameters(), lr=1e-3)
    cont.load_state_dict(copy.deepcopy(opt.state_dict()))  # restored once, then cumulative
    for i in range(2):
        for _ in range(3):
            cont.zero_grad()
            F.cross_entropy(ref(x[i : i + 1]), y[i : i + 1]).backward()
            cont.step()
    for (name, a), b in zip(net.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), name


def test_adam_slots_refuse_a_state_that_does_not_fit():
    model, opt = trained_with_adam()
    state = named_optimizer_state(model, opt)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="SGD"):
        adam_slots(named_optimizer_state(model, sgd), dict(model.named_parameters()))
    other = flip_cnn(1, 3, (8, 8))  # another head: the last layer's moments do not fit
    with pytest.raises(ValueError, match="shape"):
        adam_slots(state, dict(other.named_parameters()))


def test_store_keeps_the_training_runs_adam_state_with_every_snapshot(tmp_path):
    """obtain_model keeps, beside the final weights and each snapshot, exactly the state the
    training run's optimizer had at that epoch (compared with an independent run of the recipe)."""
    common = ["model=flip_cnn", "training=flip_adam", f"paths.cache_dir={tmp_path}", "device=cpu",
              "training.recipe.epochs=2", "training.save_epochs=[1]"]
    cfg = cfg_for(*common)
    data = load_dataset(cfg)
    prov1 = obtain_model(cfg, data, CPU, progress=False, epoch=1).provenance
    prov2 = obtain_model(cfg, data, CPU, progress=False).provenance
    assert prov2["source"] == "store"
    kept = {e: torch.load(p["optimizer_state"], weights_only=True) for e, p in ((1, prov1), (2, prov2))}
    batches = -(-len(data.train_y) // int(cfg.training.recipe.batch_size))
    for epoch, st in kept.items():
        assert st["optimizer"] == "Adam" and st["hyper"]["lr"] == 1e-3
        assert {float(s["step"]) for s in st["state"].values()} == {float(epoch * batches)}

    seed_everything(0)
    model = build_model(cfg, data)
    seen = {}
    instantiate(cfg.training.recipe).fit(model, data, seed=0, device=CPU, progress=False,
                                         on_epoch=lambda e, m, o: seen.update({e: copy.deepcopy(o.state_dict())}))
    names = [n for n, _ in model.named_parameters()]
    for epoch, st in kept.items():
        for i, name in enumerate(names):
            for slot in ("exp_avg", "exp_avg_sq"):
                assert torch.allclose(st["state"][name][slot], seen[epoch]["state"][i][slot], atol=1e-7), (epoch, name)
    # training.save_optimizer=false keeps none (and the store entry made with it is not reused for true)
    cfg_off = cfg_for(*common, "training.save_optimizer=false", f"paths.cache_dir={tmp_path / 'off'}")
    prov_off = obtain_model(cfg_off, data, CPU, progress=False).provenance
    assert prov_off["optimizer_state"] is None
    cfg_on = cfg_for(*common, f"paths.cache_dir={tmp_path / 'off'}")
    prov_on = obtain_model(cfg_on, data, CPU, progress=False).provenance
    assert prov_on["source"] == "trained" and prov_on["optimizer_state"] is not None
