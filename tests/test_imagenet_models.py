"""ImageNet-scale models (ResNet-50, hold-me-tight's MNIST ResNet18), torchvision pretrained weights without network,
robustness-library checkpoints and building a network from any ``model.arch`` target (fast: tiny batches, CPU)."""

from __future__ import annotations

import os
from urllib.error import URLError
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch import nn
from torchvision.models import ResNet50_Weights

from boundary_cli.errors import BoundaryError
from boundary_cli.models.build import build_network, normalization_spec
from boundary_cli.models.checkpoint import load_weights
from boundary_cli.models.resnet import resnet18, resnet50


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def same_layout(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(sa[k].shape == sb[k].shape for k in sa)


def assert_holds(net: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    own = net.state_dict()
    assert own.keys() == sd.keys()
    assert all(torch.equal(own[k], sd[k]) for k in sd)


@pytest.fixture(scope="module")
def tv_resnet50_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = torchvision.models.resnet50()
    net.bn1.running_mean.uniform_()  # buffers must travel too
    return net.state_dict()


# --- ResNet-50 ------------------------------------------------------------------------------------------------


def test_resnet50_is_torchvision_resnet50():
    net = resnet50(3, 1000, (224, 224))
    assert same_layout(net, torchvision.models.resnet50())
    assert n_params(net) == 25_557_032
    assert net.tap_layers == ("layer1", "layer2", "layer3", "layer4")
    assert all(hasattr(net, name) for name in net.tap_layers)
    net.eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 224, 224))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()


def test_resnet50_one_channel_and_small_images():
    net = resnet50(1, 10, (32, 32)).eval()
    assert net.conv1.in_channels == 1 and net.fc.out_features == 10
    with torch.no_grad():
        assert net(torch.rand(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(BoundaryError, match=r"resnet50 takes any size >= 32x32; the dataset's images are 28x28"):
        resnet50(1, 10, (28, 28))


def test_resnet50_pretrained_needs_imagenet_shape():
    for shape in [(1, 1000), (3, 10)]:
        with pytest.raises(BoundaryError, match="pretrained=false") as info:
            resnet50(*shape, (224, 224), pretrained=True)
        assert "\n" not in str(info.value)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(url, *args, **kwargs):
        raise URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    hub = torch.hub.get_dir()
    assert hub == os.path.join(str(tmp_path), "hub")  # no torch.hub.set_dir() elsewhere overrides TORCH_HOME
    return os.path.join(hub, "checkpoints")


def test_resnet50_pretrained_reads_the_hub_cache(torch_home, tv_resnet50_sd):
    os.makedirs(torch_home)
    file_name = os.path.basename(urlparse(ResNet50_Weights.IMAGENET1K_V1.url).path)
    torch.save(tv_resnet50_sd, os.path.join(torch_home, file_name))
    assert_holds(resnet50(3, 1000, (224, 224), pretrained=True), tv_resnet50_sd)


def test_resnet50_pretrained_without_network(torch_home):
    with pytest.raises(BoundaryError) as info:
        resnet50(3, 1000, (224, 224), pretrained=True)
    message = str(info.value)
    assert "model.checkpoint=PATH" in message and "URLError" in message
    assert os.path.join(torch_home, "resnet50-") in message
    assert "\n" not in message


# --- checkpoint layouts ---------------------------------------------------------------------------------------


def robustness_checkpoint(sd: dict[str, torch.Tensor]) -> dict:
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    model = {"module.normalizer.new_mean": mean, "module.normalizer.new_std": std}
    model |= {f"module.model.{k}": v for k, v in sd.items()}
    model |= {"module.attacker.normalize.new_mean": mean, "module.attacker.normalize.new_std": std}
    model |= {f"module.attacker.model.{k}": v.clone() for k, v in sd.items()}
    optimizer = {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                 "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0]}]}
    return {"model": model, "optimizer": optimizer, "schedule": {"last_epoch": 10}, "epoch": 10}


@pytest.mark.parametrize("layout", ["robustness", "robustness_state_dict", "dataparallel", "plain"])
def test_resnet50_checkpoint_layouts(tmp_path, tv_resnet50_sd, layout):
    if layout == "robustness":
        obj = robustness_checkpoint(tv_resnet50_sd)
    elif layout == "robustness_state_dict":  # older robustness files name the entry "state_dict"
        obj = robustness_checkpoint(tv_resnet50_sd)
        obj["state_dict"] = obj.pop("model")
    elif layout == "dataparallel":
        obj = {f"module.{k}": v for k, v in tv_resnet50_sd.items()}
    else:  # hold-me-tight saves torch.save(model.state_dict(), ...)
        obj = tv_resnet50_sd
    path = tmp_path / "resnet50.pt"
    torch.save(obj, path)
    net = resnet50(3, 1000, (224, 224))
    load_weights(net, path)
    assert_holds(net, tv_resnet50_sd)


def test_robustness_checkpoint_of_another_model_is_reported(tmp_path, tv_resnet50_sd):
    torch.save(robustness_checkpoint(tv_resnet50_sd), tmp_path / "robust.pt")
    with pytest.raises(BoundaryError, match="fc.weight: checkpoint \\(1000, 2048\\) vs model \\(10, 2048\\)"):
        load_weights(resnet50(3, 10, (224, 224)), tmp_path / "robust.pt", arch="resnet50")


# --- hold-me-tight's MNIST ResNet18 ---------------------------------------------------------------------------


def test_resnet18_mnist_config_is_torchvision_resnet18_with_one_channel_conv1():
    with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
        cfg = compose("config", overrides=["model=resnet18_mnist", "dataset=mnist"])
    assert cfg.model.name == "resnet18_mnist" and cfg.model.checkpoint is None
    assert normalization_spec(cfg.model.normalization) == "dataset"
    net = build_network(cfg.model.arch, 1, 10, (28, 28))
    reference = torchvision.models.resnet18(num_classes=10)
    reference.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    assert same_layout(net, reference)
    assert isinstance(net.maxpool, nn.MaxPool2d)
    net.eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_hold_me_tight_mnist_resnet18_state_dict_loads(tmp_path):
    reference = torchvision.models.resnet18(num_classes=10)
    reference.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    torch.save(reference.state_dict(), tmp_path / "model.t7")
    net = resnet18(1, 10, (28, 28), stem="imagenet")
    load_weights(net, tmp_path / "model.t7")
    assert_holds(net, reference.state_dict())


def test_resnet50_config_builds():
    with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
        cfg = compose("config", overrides=["model=resnet50", "dataset=cifar10"])
    assert cfg.model.name == "resnet50" and cfg.model.arch.pretrained is False
    net = build_network(cfg.model.arch, 3, 10, (32, 32))
    assert n_params(net) == 25_557_032 - 2049 * 990


# --- build_network and normalization_spec --------------------------------------------------------------------


def test_build_network_passes_only_named_parameters():
    net = build_network({"_target_": "torchvision.models.resnet18", "num_classes": 10}, 3, 7, (32, 32))
    assert net.fc.out_features == 10  # the node's value; torchvision's builder takes **kwargs only
    net = build_network({"_target_": "boundary_cli.models.resnet.resnet18", "stem": "imagenet"}, 1, 7, (28, 28))
    assert net.conv1.in_channels == 1 and net.fc.out_features == 7
    net = build_network({"_target_": "torch.nn.Linear", "in_features": 4, "out_features": 2}, 3, 7, (32, 32))
    assert isinstance(net, nn.Linear)


@pytest.mark.parametrize("node, words", [
    ({"_target_": "boundary_cli.models.nope.resnet"}, "boundary_cli.models.nope.resnet"),
    ({"_target_": "torchvision.models.resnet18", "depth": 3}, "depth"),
    ({"_target_": "collections.OrderedDict"}, "not a torch.nn.Module"),
    ({"stem": "cifar"}, "no _target_"),
])
def test_build_network_errors(node, words):
    with pytest.raises(BoundaryError, match=words) as info:
        build_network(node, 3, 10, (32, 32))
    assert "\n" not in str(info.value)


def test_build_network_keeps_boundary_errors():
    with pytest.raises(BoundaryError, match="resnet50 takes any size >= 32x32"):
        build_network({"_target_": "boundary_cli.models.resnet.resnet50"}, 1, 10, (28, 28))


def test_normalization_spec():
    assert normalization_spec("dataset") == "dataset"
    assert normalization_spec("none") is None
    assert normalization_spec("pixel_mean") == "pixel_mean"
    assert normalization_spec("zoo") == "zoo"
    assert normalization_spec({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}) == ([0.5] * 3, [0.25] * 3)
    assert normalization_spec(OmegaConf.create({"mean": [0.1307], "std": [0.3081]})) == ([0.1307], [0.3081])
    for bad in [None, "imagenet", {"mean": [0.5]}, {"mean": [0.5], "std": [0.0]}, {"mean": [0.5], "std": [1, 2]},
                {"mean": "0.5", "std": "0.2"}, 0.5]:
        forms = r"dataset \| pixel_mean \| none \| zoo \| \{mean: \[...\], std: \[...\]\}"
        with pytest.raises(BoundaryError, match=forms) as info:
            normalization_spec(bad)
        assert "\n" not in str(info.value)
