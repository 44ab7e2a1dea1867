"""Layer taps (geometry/taps.py): declared shapes, independence from hooks left behind, distances."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from boundary_cli.geometry.taps import activations, available_layers, default_layers, layer_distances, resolve_layers
from boundary_cli.models.flip_cnn import flip_cnn
from boundary_cli.models.lenet import lenet
from boundary_cli.models.normalize import Classifier, Normalize
from boundary_cli.models.resnet import resnet18
from boundary_cli.models.small_cnn import small_cnn


def classifier(net: nn.Module, channels: int) -> Classifier:
    return Classifier(Normalize(torch.full((channels,), 0.5), torch.full((channels,), 0.25)), net).eval()


@pytest.mark.parametrize("channels, size, shapes", [
    (1, 28, {"input": 784, "pool0": 32 * 14 * 14, "pool1": 64 * 7 * 7, "dense1": 1024, "dense2": 128}),
    (3, 32, {"input": 3072, "pool0": 32 * 16 * 16, "pool1": 64 * 8 * 8, "dense1": 1024, "dense2": 128}),
])
def test_flip_cnn_taps_have_the_declared_shapes(channels, size, shapes):
    model = classifier(flip_cnn(channels, 10, (size, size)), channels)
    assert default_layers(model) == list(shapes)
    x = torch.rand(3, channels, size, size)
    acts = activations(model, x, default_layers(model), batch_size=2)
    assert {k: v.shape for k, v in acts.items()} == {k: (3, d) for k, d in shapes.items()}
    assert torch.equal(acts["input"], x.flatten(1))  # layer 0 is the image in pixel units
    assert bool((acts["dense2"] >= 0).all())  # taps are post-ReLU


@pytest.mark.parametrize("build, channels, size", [
    (lambda: small_cnn(1, 10, (8, 8)), 1, 8), (lambda: lenet(1, 10, (28, 28)), 1, 28),
    (lambda: resnet18(3, 10, (32, 32)), 3, 32)])
def test_every_default_layer_of_the_zoo_taps(build, channels, size):
    model = classifier(build(), channels)
    layers = default_layers(model)
    assert len(layers) >= 4 and layers[0] == "input"
    acts = activations(model, torch.rand(2, channels, size, size), layers)
    assert all(a.shape[0] == 2 and a.ndim == 2 for a in acts.values())


def test_hooks_are_removed_and_logits_unchanged():
    model = classifier(flip_cnn(1, 10, (8, 8)), 1)
    x = torch.rand(4, 1, 8, 8)
    before = model(x)
    activations(model, x, ["pool0", "dense1"])
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(before, model(x))


def test_one_rule_names_layers_of_wrapped_and_bare_networks():
    net = flip_cnn(1, 10, (8, 8))
    model = classifier(net, 1)
    assert [n for n, _ in resolve_layers(model, "default")] == ["input", "pool0", "pool1", "dense1", "dense2"]
    assert [n for n, _ in resolve_layers(model, "default", with_input=False)] == ["pool0", "pool1", "dense1", "dense2"]
    assert resolve_layers(model, "last") == [("dense2", net.dense2)]
    # names relative to the bare network; the Classifier's "net." prefix is accepted and dropped
    assert resolve_layers(model, ["input", "net.pool0", "dense1"]) == [("input", None), ("pool0", net.pool0),
                                                                       ("dense1", net.dense1)]
    assert resolve_layers(net, ("pool1",)) == [("pool1", net.pool1)]  # a bare network names its own modules
    with pytest.raises(ValueError, match="unknown layer 'input'; valid: conv0"):
        resolve_layers(model, ["input"], with_input=False)
    with pytest.raises(ValueError, match="unknown layers 'conv9', 'normalize'"):
        resolve_layers(model, ["conv9", "pool0", "normalize"])
    with pytest.raises(ValueError, match="no tap layers"):
        resolve_layers(nn.Sequential(nn.Flatten()), "last")
    with pytest.raises(ValueError, match="a list of them"):
        resolve_layers(model, [])


def test_unknown_layer_lists_the_valid_names():
    model = classifier(flip_cnn(1, 10, (8, 8)), 1)
    with pytest.raises(ValueError, match="unknown layer.*conv9.*valid: input, conv0"):
        activations(model, torch.rand(1, 1, 8, 8), ["conv9"])
    assert "dense2" in available_layers(model)


def test_layer_distances_match_a_direct_computation():
    model = classifier(flip_cnn(1, 10, (8, 8)), 1)
    a, b = torch.rand(5, 1, 8, 8), torch.rand(5, 1, 8, 8)
    d = layer_distances(model, a, b, ["input", "dense1"], batch_size=2)
    assert d.shape == (2, 5)
    assert torch.allclose(d[0], (a - b).flatten(1).pow(2).sum(1))
    net = model.net
    pool1 = lambda v: net.pool1(net.conv1(net.pool0(net.conv0(model.normalize(v)))))  # noqa: E731
    d = layer_distances(model, a, b, ["pool1"])
    assert torch.allclose(d[0], (pool1(a) - pool1(b)).flatten(1).pow(2).sum(1), rtol=1e-5)
    assert torch.equal(layer_distances(model, a, a, ["pool1", "dense2"]), torch.zeros(2, 5))
