"""Weight-space DeepFool (geometry/weights_deepfool.py): the reference's unit-test anchor, the
last layer's closed form, and a per-sample loop with the full Jacobian (the reference's way)."""

import copy
import math

import pytest
import torch
from torch import nn

from boundary_cli.geometry.weights_deepfool import (
    STOPS,
    WeightDeepFoolParams,
    last_layer_distance,
    parameter_names,
    weight_deepfool,
)
from boundary_cli.geometry.reference_weights_deepfool import weights_deepfool_single
from test_deepfool import small_cnn


def test_the_references_dense_anchor_gives_two_root_two():
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]).T)
        layer.bias.copy_(torch.tensor([4.0, 0.0]))
    layer.eval()
    res = weight_deepfool(layer, torch.zeros(1, 3))
    assert res.distance.item() == pytest.approx(2 * math.sqrt(2), rel=1e-6)  # influence -2.828
    assert res.iterations.item() == 1 and STOPS[res.stopped_by.item()] in ("eps_gap", "flip")  # logits tie
    assert res.reference.item() == 0


def features_and_head(model, x):
    """Inputs of the last Linear layer of the small CNN, and that layer."""
    head = model[-1]
    seen = []
    handle = head.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0], head


def test_the_last_layer_general_path_reaches_the_closed_form_in_one_step():
    model = small_cnn(channels=1, n_classes=5)
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    names = parameter_names(model, "last_layer")
    assert names == ["7.weight", "7.bias"]
    res = weight_deepfool(model, x, names=names, batch_rows=5)
    h, head = features_and_head(model, x)
    exact = last_layer_distance(h, head.weight.detach(), head.bias.detach(), res.reference)
    torch.testing.assert_close(res.distance, exact, rtol=1e-4, atol=1e-7)
    assert (res.iterations == 1).all()
    assert all(STOPS[c] in ("eps_gap", "flip") for c in res.stopped_by.tolist())


def test_batched_equals_the_per_sample_full_jacobian_loop():
    model = small_cnn(channels=1, n_classes=4).double()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = weight_deepfool(model, x, WeightDeepFoolParams(max_iter=30), batch_rows=4)
    ref = weights_deepfool_single(model, x, max_iter=30)
    for i, (dist, steps, stop) in enumerate(ref):
        assert res.distance[i].item() == pytest.approx(dist, rel=1e-6)
        assert res.iterations[i].item() == steps and STOPS[res.stopped_by[i].item()] == stop


def test_the_model_is_never_modified_and_bad_settings_are_refused():
    model = small_cnn(channels=1, n_classes=5)
    before = copy.deepcopy(model.state_dict())
    x = torch.rand(4, 1, 8, 8)
    weight_deepfool(model, x, WeightDeepFoolParams(max_iter=5))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="L2 norm only"):
        WeightDeepFoolParams(norm=1)
    with pytest.raises(ValueError, match="unknown module"):
        parameter_names(model, ["nope"])
    with pytest.raises(ValueError, match="eval mode"):
        weight_deepfool(model.train(), x)


def test_a_given_reference_class_is_moved_away_from():
    model = small_cnn(channels=1, n_classes=5)
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        pred = model(x).argmax(1)
    other = (pred + 1) % 5
    names = parameter_names(model, "last_layer")
    res = weight_deepfool(model, x, names=names, reference=other)
    h, head = features_and_head(model, x)
    exact = last_layer_distance(h, head.weight.detach(), head.bias.detach(), other)
    assert (exact < 0).all()  # the model already disagrees with the given class
    assert (res.reference == other).all() and (res.iterations == 0).all()
    assert all(STOPS[c] == "flip" for c in res.stopped_by.tolist())


def test_toward_a_class_the_model_disagrees_with_is_the_closed_form_for_two_classes():
    model = small_cnn(channels=1, n_classes=2)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pred = model(x).argmax(1)
    other = 1 - pred
    names = parameter_names(model, "last_layer")
    res = weight_deepfool(model, x, names=names, reference=other, toward=torch.ones(8, dtype=torch.bool))
    h, head = features_and_head(model, x)
    exact = last_layer_distance(h, head.weight.detach(), head.bias.detach(), other)  # negative
    torch.testing.assert_close(res.distance, -exact, rtol=1e-4, atol=1e-7)
    assert (res.iterations == 1).all()
    assert all(STOPS[c] in ("eps_gap", "flip") for c in res.stopped_by.tolist())


def test_rows_from_a_memory_budget_grow_with_it_and_shrink_with_the_parameters():
    from boundary_cli.geometry.weights_deepfool import weight_rows_for_budget

    model = small_cnn(channels=1, n_classes=10).eval()
    example = torch.rand(1, 1, 8, 8)
    p = sum(t.numel() for t in model.parameters())
    small, big = (weight_rows_for_budget(model, example, p, 10, b, max_rows=10**6) for b in (2**26, 2**30))
    assert 1 <= small < big
    # each of the 9 candidate gradients alone takes 4 bytes per parameter: the count can never exceed that bound
    assert big <= 2**30 // (9 * 4 * p)
    assert weight_rows_for_budget(model, example, p, 10, 2**30, max_rows=7) == 7
    assert weight_rows_for_budget(model, example, p, 10, 1) == 1
    assert weight_rows_for_budget(model, example, p, 2, 2**30, max_rows=10**6) > big  # one candidate VJP, not nine
