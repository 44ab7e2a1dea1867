"""Mutant models: each operator changes exactly its channels, mutants regenerate from their seed,
channels are drawn globally, stacked evaluation equals a plain per-mutant loop, label change rates,
and acceptance."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from boundary_cli.detectors import mutants as mut
from boundary_cli.detectors.mutants import (
    NS_MIN_ACCURACY,
    Mutant,
    accept_mutants,
    acceptance_threshold,
    conv_layers,
    draw_mutant,
    label_change_rate,
    lcr_by_count,
    mutated_state,
    predict_mutants,
)
from boundary_cli.models.lenet import lenet
from boundary_cli.models.normalize import Classifier, Normalize
from boundary_cli.models.small_cnn import small_cnn


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm running statistics and affine parameters, so eval mode matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))
    return model


def mixed() -> nn.Module:
    """Conv layers of 4, 12 and 20 output channels (36 in all), with BatchNorm."""
    torch.manual_seed(0)
    return randomise_bn(nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
        nn.Conv2d(12, 20, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(20, 5),
    )).eval()


def inputs(n: int, shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Wide-spread random images, so that random-weight models predict many classes."""
    return 3 * torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def small() -> nn.Module:
    """small_cnn with width 32: conv layers of 32, 32, 64, 64 channels (every one can be NS-rotated).

    BatchNorm statistics come from a batch and the head is standardised and centred on that batch:
    global average pooling makes a random small_cnn predict one class for every input otherwise.
    """
    torch.manual_seed(1)
    model = randomise_bn(small_cnn(1, 10, (8, 8)))
    calib = inputs(256, (1, 8, 8), seed=9)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None  # cumulative average: the running stats become this batch's
                m.reset_running_stats()
        model.train()
        model(calib)
        model.eval()
        feats = model.features(calib).flatten(1)
        model.linear.weight.div_(feats.std(0).clamp_min(1e-3))
        model.linear.bias.copy_(-model.linear.weight @ feats.mean(0))
    return model


def wrapped_lenet() -> nn.Module:
    """LeNet behind the normalisation layer (buffers), names ``net.conv1``/``net.conv2``, channels_last."""
    torch.manual_seed(2)
    model = Classifier(Normalize(torch.tensor([0.3]), torch.tensor([0.4])), lenet(1, 10, (28, 28)))
    return model.to(memory_format=torch.channels_last).eval()


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), k


def loop_predictions(model: nn.Module, mutants: list[Mutant], x: torch.Tensor) -> torch.Tensor:
    """The plain way: load each mutant's state, forward, restore."""
    original = clone_state(model)
    preds = []
    with torch.no_grad():
        for m in mutants:
            model.load_state_dict(mutated_state(model, m), strict=False)
            preds.append(model(x).argmax(1))
            model.load_state_dict(original)
    return torch.stack(preds)


# --------------------------------------------------------------------------------------------------
# Operators


@pytest.mark.parametrize("make, operator, gamma", [
    (mixed, "NAI", 0.2), (mixed, "GF", 0.2), (small, "NAI", 0.05), (small, "GF", 0.05), (small, "NS", 0.5),
    (wrapped_lenet, "NAI", 0.3), (wrapped_lenet, "GF", 0.3),
])
def test_each_operator_changes_exactly_the_chosen_slices(make, operator, gamma):
    model = make()
    before = clone_state(model)
    for seed in range(3):
        mutant = draw_mutant(model, operator, gamma, seed)
        state = mutated_state(model, mutant)
        params = dict(model.named_parameters())
        assert state.keys() == params.keys()
        chosen: dict[str, list[int]] = {}
        for layer, c in mutant.channels:
            chosen.setdefault(f"{layer}.weight", []).append(c)
        for name, p in params.items():
            new, old = state[name], p.detach()
            assert new.shape == old.shape and new.dtype == old.dtype
            if name not in chosen:
                assert torch.equal(new, old), name
                continue
            idx = chosen[name]
            rest = [c for c in range(old.shape[0]) if c not in idx]
            assert torch.equal(new[rest], old[rest]), name
            if operator == "NAI":
                assert torch.equal(new[idx], -old[idx])
            elif operator == "NS":
                assert torch.equal(new[idx], old[idx[1:] + idx[:1]])
            else:
                for c in idx:
                    assert not torch.equal(new[c], old[c])
                assert torch.isfinite(new).all()
    assert_same_state(model, before)


def test_ns_rotates_a_share_of_each_layer_and_skips_small_layers():
    model = small()
    mutant = draw_mutant(model, "NS", 0.01, 5)
    by_layer: dict[str, list[int]] = {}
    for layer, c in mutant.channels:
        by_layer.setdefault(layer, []).append(c)
    assert by_layer.keys() == {name for name, _ in conv_layers(model)}
    for name, conv in conv_layers(model):
        assert len(by_layer[name]) == math.floor(0.07 * conv.out_channels)
        assert len(set(by_layer[name])) == len(by_layer[name])
    # mixed(): 4, 12, 20 channels -> floor(0.07 * out) < 2 everywhere: nothing to rotate.
    with pytest.raises(ValueError, match="NS"):
        draw_mutant(mixed(), "NS", 0.01, 0)


def test_gf_redraws_from_the_per_position_mean_and_std_of_the_original():
    model = small()
    mutant = draw_mutant(model, "GF", 1.0, 3)  # every channel of every layer
    state = mutated_state(model, mutant)
    w = model.features[10].weight.detach()  # 64 x 64 x 3 x 3
    z = (state["features.10.weight"] - w.mean(0)) / w.std(0, correction=0)
    assert abs(float(z.mean())) < 0.05
    assert abs(float(z.std()) - 1) < 0.05


# --------------------------------------------------------------------------------------------------
# Reproducibility and the draw


@pytest.mark.parametrize("operator", ["NAI", "GF", "NS"])
def test_a_mutant_is_regenerated_from_operator_seed_and_channels(operator):
    model = small()
    a, b = draw_mutant(model, operator, 0.1, 11), draw_mutant(model, operator, 0.1, 11)
    assert a == b
    rebuilt = Mutant(a.operator, a.seed, tuple(a.channels))
    s1, s2 = mutated_state(model, a), mutated_state(model, rebuilt)
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    others = {draw_mutant(model, operator, 0.1, s).channels for s in range(12, 20)}
    assert a.channels not in others and len(others) == 8


def test_k_is_floor_gamma_times_all_channels_drawn_globally():
    model = mixed()
    total = sum(conv.out_channels for _, conv in conv_layers(model))
    assert total == 36
    for gamma, k in [(0.01, 1), (0.1, 3), (0.25, 9), (0.5, 18), (1.0, 36)]:
        assert k == max(1, math.floor(gamma * total))
        mutant = draw_mutant(model, "NAI", gamma, 0)
        assert len(mutant.channels) == k
        assert len(set(mutant.channels)) == k
    seen = set()
    for seed in range(300):
        seen.update(draw_mutant(model, "NAI", 0.1, seed).channels)
    # every channel of every layer, small and large, gets picked over many seeds
    assert seen == {(name, c) for name, conv in conv_layers(model) for c in range(conv.out_channels)}


def test_conv_layers_use_the_names_of_the_model_passed():
    assert [name for name, _ in conv_layers(wrapped_lenet())] == ["net.conv1", "net.conv2"]
    assert [name for name, _ in conv_layers(mixed())] == ["0", "3", "6"]


@pytest.mark.parametrize("gamma", [0, 1.5, -1, float("nan")])
def test_bad_gamma_raises(gamma):
    model = mixed()
    with pytest.raises(ValueError, match="gamma"):
        draw_mutant(model, "NAI", gamma, 0)
    with pytest.raises(ValueError, match="gamma"):
        accept_mutants(model, torch.rand(4, 3, 6, 6), torch.zeros(4, dtype=torch.long), operator="NAI", gamma=gamma)


def test_unknown_operator_and_models_without_conv_raise():
    model = mixed()
    with pytest.raises(ValueError, match="operator"):
        draw_mutant(model, "XYZ", 0.1, 0)
    with pytest.raises(ValueError, match="operator"):
        accept_mutants(model, torch.rand(4, 3, 6, 6), torch.zeros(4, dtype=torch.long), operator="nai", gamma=0.1)
    with pytest.raises(ValueError, match="Conv2d"):
        draw_mutant(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), "NAI", 0.1, 0)


# --------------------------------------------------------------------------------------------------
# Stacked evaluation


@pytest.mark.parametrize("make, shape", [(wrapped_lenet, (1, 28, 28)), (small, (1, 8, 8)), (mixed, (3, 6, 6))])
@pytest.mark.parametrize("budget", [1, 3_000_000, 2**30])
@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_predict_mutants_equals_a_per_mutant_loop(make, shape, budget, method):
    model = make().double()
    x = inputs(37, shape, dtype=torch.float64)
    ops = ["NAI", "GF", "NS"] if make is small else ["NAI", "GF"]
    mutants = [draw_mutant(model, ops[i % len(ops)], 0.15, i) for i in range(10)]
    expected = loop_predictions(model, mutants, x)
    with torch.no_grad():
        original = model(x).argmax(1)
    assert len(expected.unique()) > 1 and (expected != original).any()  # a comparison with something to see
    before = clone_state(model)
    model.train()  # predict_mutants must evaluate in eval mode and put the flags back
    calls: list[int] = []
    got = predict_mutants(model, mutants, x, batch_size=8, budget_bytes=budget, progress=calls.append, method=method)
    assert model.training and all(m.training for m in model.modules())
    assert_same_state(model, before)
    assert got.dtype == torch.int64 and got.shape == (10, 37)
    assert torch.equal(got, expected)
    assert sum(calls) == 10
    if budget == 1 or method == "loop":
        assert calls == [1] * 10
    elif budget == 2**30:
        assert calls == [10]


def test_predict_mutants_with_several_mutants_per_chunk_and_no_mutants():
    model = wrapped_lenet().double()
    x = inputs(20, (1, 28, 28), dtype=torch.float64)
    mutants = [draw_mutant(model, "NAI", 0.1, i) for i in range(7)]
    calls: list[int] = []
    # about 3 mutants per chunk: per mutant, 2 x the conv weights plus 2 x the activations of a batch
    weights = 2 * 8 * sum(conv.weight.numel() for _, conv in conv_layers(model))
    acts = 2 * 5 * mut._activation_bytes(model, x[:1])
    got = predict_mutants(model, mutants, x, batch_size=5, budget_bytes=3 * (weights + acts), progress=calls.append,
                          method="vmap")
    assert 1 < len(calls) < 7 and sum(calls) == 7
    assert torch.equal(got, loop_predictions(model, mutants, x))
    assert predict_mutants(model, [], x).shape == (0, 20)
    with pytest.raises(ValueError, match="unknown method"):
        predict_mutants(model, mutants, x, method="magic")


# --------------------------------------------------------------------------------------------------
# Label change rate


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


@pytest.mark.parametrize("operator", ["NAI", "GF", "NS"])
def test_mutants_that_cannot_change_predictions_give_lcr_zero(operator):
    torch.manual_seed(3)
    # the conv output is multiplied by zero before the head: logits are the head's bias whatever the filters
    model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), Scale(0.0), nn.Flatten(), nn.Linear(32 * 6 * 6, 10)).eval()
    x = inputs(16, (1, 8, 8))
    mutants = [draw_mutant(model, operator, 0.5, s) for s in range(6)]
    preds = predict_mutants(model, mutants, x)
    original = model(x).argmax(1)
    assert torch.equal(label_change_rate(preds, original), torch.zeros(16))


def test_lcr_of_hand_made_predictions_and_by_count():
    preds = torch.tensor([[0, 1, 3],
                          [0, 1, 2],
                          [1, 1, 2],
                          [0, 0, 2]])
    original = torch.tensor([0, 1, 3])
    lcr = label_change_rate(preds, original)
    assert lcr.dtype.is_floating_point
    assert torch.allclose(lcr, torch.tensor([0.25, 0.25, 0.75]))
    by = lcr_by_count(preds, original, [1, 2, 3, 4])
    assert list(by) == [1, 2, 3, 4]
    assert torch.allclose(by[1], torch.tensor([0.0, 0.0, 0.0]))
    assert torch.allclose(by[2], torch.tensor([0.0, 0.0, 0.5]))
    assert torch.allclose(by[3], torch.tensor([1 / 3, 0.0, 2 / 3]))
    assert torch.equal(by[4], lcr)
    for bad in ([0], [5]):
        with pytest.raises(ValueError):
            lcr_by_count(preds, original, bad)
    with pytest.raises(ValueError):
        label_change_rate(preds[:0], original)


# --------------------------------------------------------------------------------------------------
# Acceptance


def acceptance_data(model: nn.Module, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    x = inputs(n, (1, 28, 28), seed=4)
    with torch.no_grad():
        return x, model(x).argmax(1)  # labels = the model's predictions: original accuracy 1


def test_accept_ratio_zero_accepts_everything_and_stops_at_n_mutants():
    model = wrapped_lenet()
    x, y = acceptance_data(model)
    res = accept_mutants(model, x, y, operator="NAI", gamma=0.05, n_mutants=5, max_attempts=50, accept_ratio=0.0,
                         seed=2)
    assert res.original_accuracy == 1.0
    assert len(res.accepted) == 5 and res.attempts == 5 and len(res.log) == 5
    assert [m.seed for m in res.accepted] == [2 * 1_000_003 + i for i in range(5)]
    assert res.accepted[0] == draw_mutant(model, "NAI", 0.05, 2 * 1_000_003)
    assert all(entry["accepted"] for entry in res.log)
    assert set(res.log[0]) == {"operator", "seed", "n_channels", "accuracy", "accepted"}
    assert res.log[0]["n_channels"] == len(res.accepted[0].channels)


def test_nothing_passes_stops_at_max_attempts_without_raising():
    model = wrapped_lenet()
    x, y = acceptance_data(model)
    rounds: list[int] = []
    res = accept_mutants(model, x, y, operator="GF", gamma=0.1, n_mutants=5, max_attempts=40, accept_ratio=2.0,
                         progress=rounds.append)
    assert res.accepted == [] and res.attempts == 40 and len(res.log) == 40
    assert not any(entry["accepted"] for entry in res.log)
    assert sum(rounds) == 40 and len(rounds) > 1


def test_acceptance_does_not_depend_on_batch_size_or_round_size(monkeypatch):
    model = wrapped_lenet()
    x, y = acceptance_data(model)
    probe = accept_mutants(model, x, y, operator="NAI", gamma=0.1, n_mutants=40, max_attempts=40, accept_ratio=-1.0)
    accs = sorted(entry["accuracy"] for entry in probe.log)
    ratio = accs[len(accs) // 4]  # about three quarters of the candidates pass
    assert accs[0] < ratio < accs[-1]
    kwargs = dict(operator="NAI", gamma=0.1, n_mutants=8, max_attempts=40, accept_ratio=ratio)
    a = accept_mutants(model, x, y, batch_size=1024, **kwargs)
    b = accept_mutants(model, x, y, batch_size=7, budget_bytes=1, **kwargs)
    monkeypatch.setattr(mut, "CANDIDATES_PER_ROUND", 3)
    c = accept_mutants(model, x, y, batch_size=13, **kwargs)
    assert len(a.accepted) == 8 and a.attempts < 40
    assert any(not entry["accepted"] for entry in a.log)
    for other in (b, c):
        assert other.accepted == a.accepted and other.attempts == a.attempts
        assert other.log == a.log and other.original_accuracy == a.original_accuracy


def test_acceptance_thresholds_of_the_two_rules():
    assert NS_MIN_ACCURACY == 0.73
    for op in ("NAI", "GF"):  # the reference's create_mutations: a ratio of the original's accuracy
        assert acceptance_threshold(op, 0.8, rule="reference") == pytest.approx(0.72)
        assert acceptance_threshold(op, 0.8, rule="ratio") == pytest.approx(0.72)
    assert acceptance_threshold("NS", 0.8, rule="reference") == 0.73  # model_mutation.py: absolute, whatever 0.8
    assert acceptance_threshold("NS", 0.5, rule="reference", ns_min_accuracy=0.4) == 0.4
    assert acceptance_threshold("NS", 0.8, rule="ratio", accept_ratio=0.5) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="rule"):
        acceptance_threshold("NS", 0.8, rule="absolute")
    with pytest.raises(ValueError, match="rule"):
        accept_mutants(wrapped_lenet(), torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), operator="NAI",
                       gamma=0.1, rule="absolute")


def rotation_proof_model() -> nn.Module:
    """32 identical filters: rotating any of them (NS) changes nothing, so every NS mutant is exactly as
    accurate as the original."""
    conv = nn.Conv2d(1, 32, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(1, 1, 3, 3, generator=torch.Generator().manual_seed(0)).expand(32, 1, 3, 3))
        conv.bias.fill_(0.1)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2))


@pytest.mark.parametrize("accuracy, ratio, reference_accepts, ratio_accepts", [
    (0.70, 0.9, False, True),   # 0.70 <= 0.73, but 0.70 > 0.9 x 0.70
    (0.85, 1.0, True, False),   # 0.85 > 0.73, but not > 1.0 x 0.85
])
def test_ns_acceptance_absolute_versus_ratio(accuracy, ratio, reference_accepts, ratio_accepts):
    model = rotation_proof_model()
    x = inputs(100, (1, 6, 6), seed=3)
    with torch.no_grad():
        pred = model(x).argmax(1)
    wrong = torch.arange(100) >= round(100 * accuracy)
    y = torch.where(wrong, 1 - pred, pred)  # the original is right on exactly `accuracy` of the inputs
    kwargs = dict(operator="NS", gamma=0.01, n_mutants=4, max_attempts=4, accept_ratio=ratio)
    ref = accept_mutants(model, x, y, **kwargs)  # the default rule is the reference's
    rat = accept_mutants(model, x, y, rule="ratio", **kwargs)
    for res in (ref, rat):
        assert res.original_accuracy == pytest.approx(accuracy)
        assert [e["accuracy"] for e in res.log] == pytest.approx([accuracy] * 4)
    assert ref.threshold == 0.73 and rat.threshold == pytest.approx(ratio * accuracy)
    assert [e["accepted"] for e in ref.log] == [reference_accepts] * 4
    assert [e["accepted"] for e in rat.log] == [ratio_accepts] * 4
    assert len(ref.accepted) == 4 * reference_accepts and len(rat.accepted) == 4 * ratio_accepts
