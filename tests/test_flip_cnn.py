"""The Decision-Flip-Experiments CNN (models/flip_cnn.py) and the tap layers every model declares (tiny, CPU)."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module
from torch import nn

from boundary_cli.data.images import ImageData
from boundary_cli.errors import BoundaryError
from boundary_cli.models.densenet import densenet121
from boundary_cli.models.flip_cnn import FlipCNN, flip_cnn
from boundary_cli.models.lenet import lenet
from boundary_cli.models.resnet import resnet18
from boundary_cli.models.small_cnn import small_cnn
from boundary_cli.models.vgg import vgg19
from boundary_cli.training.obtain import build_model


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def tap_outputs(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of ``net.tap_layers`` for x, in the order their modules ran."""
    modules = dict(net.named_modules())
    seen: dict[str, torch.Tensor] = {}
    handles = [modules[name].register_forward_hook(
        lambda _m, _i, out, name=name: seen.setdefault(name, out.detach().clone())) for name in net.tap_layers]
    try:
        with torch.no_grad():
            net.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return seen


# --- flip_cnn -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels, size", [(1, (28, 28)), (3, (32, 32)), (1, (8, 8)), (3, (4, 4)), (1, (9, 13))])
def test_flip_cnn_logits_shape(channels, size):
    net = flip_cnn(channels, 10, size).eval()
    with torch.no_grad():
        out = net(torch.rand(2, channels, *size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_flip_cnn_parameter_counts():
    # MNIST form, 28x28x1: conv0 1*32*9+32, conv1 32*64*9+64, flatten 64*7*7 = 3136,
    # dense1 3136*1024+1024, dense2 1024*128+128, logits 128*10+10
    mnist = (1 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (3136 * 1024 + 1024) + (1024 * 128 + 128) + (128 * 10 + 10)
    assert mnist == 3_363_594
    assert n_params(flip_cnn(1, 10, (28, 28))) == mnist
    # CIFAR form, 32x32x3: conv0 3*32*9+32, conv1 as above, conv2 64*128+128 (1x1), flatten 128*8*8 = 8192,
    # dense1 8192*1024+1024, dense2 and logits as above
    cifar = (3 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (64 * 128 + 128) + (8192 * 1024 + 1024) \
        + (1024 * 128 + 128) + (128 * 10 + 10)
    assert cifar == 8_549_834
    assert n_params(flip_cnn(3, 10, (32, 32))) == cifar


def test_flip_cnn_auto_form_follows_channels():
    def has_conv2(net: nn.Module) -> bool:
        return any(k.startswith("conv2.") for k in net.state_dict())

    assert not has_conv2(flip_cnn(1, 10, (28, 28)))
    assert has_conv2(flip_cnn(3, 10, (32, 32)))
    assert has_conv2(flip_cnn(1, 10, (28, 28), form="cifar"))
    assert not has_conv2(flip_cnn(3, 10, (32, 32), form="mnist"))
    assert n_params(flip_cnn(1, 10, (28, 28), form="auto")) == n_params(flip_cnn(1, 10, (28, 28), form="mnist"))
    assert n_params(flip_cnn(3, 10, (32, 32), form="auto")) == n_params(flip_cnn(3, 10, (32, 32), form="cifar"))


@pytest.mark.parametrize("channels, size", [(1, (28, 28)), (3, (32, 32)), (1, (8, 8))])
def test_flip_cnn_tap_layers_are_post_activation(channels, size):
    net = flip_cnn(channels, 10, size)
    assert FlipCNN.tap_layers == ("pool0", "pool1", "dense1", "dense2")
    x = torch.rand(3, channels, *size)
    outs = tap_outputs(net, x)
    h, w = size
    assert list(outs) == list(net.tap_layers)
    assert outs["pool0"].shape == (3, 32, h // 2, w // 2)
    assert outs["pool1"].shape == (3, 64, h // 4, w // 4)
    assert outs["dense1"].shape == (3, 1024)
    assert outs["dense2"].shape == (3, 128)
    assert all((out >= 0).all() for out in outs.values())  # every tap is after a ReLU


@pytest.mark.parametrize("kwargs, size, match", [({"form": "vgg"}, (28, 28), "auto, cifar, mnist"),
                                                 ({}, (3, 3), ">= 4x4")])
def test_flip_cnn_bad_input(kwargs, size, match):
    with pytest.raises(BoundaryError, match=match) as info:
        flip_cnn(1, 10, size, **kwargs)
    assert "flip_cnn" in str(info.value) and "\n" not in str(info.value)


# --- tap layers of the whole zoo ------------------------------------------------------------------------------

ZOO = {  # each at its smallest valid size
    "small_cnn": (lambda: small_cnn(1, 10, (4, 4)), 1, 4),
    "lenet": (lambda: lenet(1, 10, (28, 28)), 1, 28),
    "resnet18": (lambda: resnet18(1, 10, (8, 8)), 1, 8),
    "resnet18_imagenet": (lambda: resnet18(1, 10, (8, 8), stem="imagenet"), 1, 8),
    "vgg19": (lambda: vgg19(3, 10, (32, 32)), 3, 32),
    "densenet121": (lambda: densenet121(3, 10, (32, 32)), 3, 32),
    "flip_cnn_mnist": (lambda: flip_cnn(1, 10, (4, 4)), 1, 4),
    "flip_cnn_cifar": (lambda: flip_cnn(3, 10, (4, 4)), 3, 4),
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_model_declares_tap_layers_in_forward_order(name):
    build, channels, size = ZOO[name]
    net = build()
    layers = type(net).tap_layers  # a class attribute
    assert 3 <= len(layers) <= 5
    assert set(layers) <= {n for n, _ in net.named_modules() if n}
    outs = tap_outputs(net, torch.rand(2, channels, size, size))
    assert list(outs) == list(layers)  # every tap runs, in input-to-output order
    assert all(out.shape[0] == 2 for out in outs.values())


def test_lenet_taps_keep_state_dict_and_forward():
    net = lenet(1, 10, (28, 28)).eval()
    assert list(net.state_dict()) == [f"{m}.{p}" for m in ("conv1", "conv2", "fc1", "fc2", "fc3")
                                      for p in ("weight", "bias")]
    x = torch.rand(2, 1, 28, 28)
    f = nn.functional
    expected = f.max_pool2d(f.relu(net.conv1(x)), 2)
    expected = f.max_pool2d(f.relu(net.conv2(expected)), 2).flatten(1)
    expected = net.fc3(f.relu(net.fc2(f.relu(net.fc1(expected)))))
    with torch.no_grad():
        assert torch.allclose(net(x), expected)


# --- config -----------------------------------------------------------------------------------------------------


def cfg_for(*overrides: str):
    with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("channels, size, conv2", [(1, 8, False), (1, 28, False), (3, 32, True)])
def test_flip_cnn_config_builds(channels, size, conv2):
    cfg = cfg_for("model=flip_cnn")
    assert cfg.model.name == "flip_cnn" and cfg.model.checkpoint is None and cfg.model.arch.form == "auto"
    x = torch.rand(4, channels, size, size)
    data = ImageData("fake", x, torch.arange(4), x, torch.arange(4), [str(i) for i in range(10)])
    model = build_model(cfg, data).eval()
    assert model(x).shape == (4, 10)
    assert any(k.startswith("net.conv2.") for k in model.state_dict()) == conv2
