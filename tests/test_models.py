"""Model builders, the normalisation layer and checkpoint loading (fast: tiny batches, CPU)."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from boundary_cli.errors import BoundaryError
from boundary_cli.models.checkpoint import load_weights
from boundary_cli.models.densenet import densenet121
from boundary_cli.models.lenet import lenet
from boundary_cli.models.normalize import Classifier, Normalize
from boundary_cli.models.resnet import resnet18
from boundary_cli.models.small_cnn import small_cnn
from boundary_cli.models.vgg import vgg19


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def check_logits(net: nn.Module, channels: int, size: tuple[int, int], num_classes: int) -> None:
    net.eval()
    with torch.no_grad():
        out = net(torch.rand(2, channels, *size))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


# --- shapes --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(8, 8), (28, 28), (32, 32), (4, 4), (9, 13)])
@pytest.mark.parametrize("channels", [1, 3])
def test_small_cnn_any_size(size, channels):
    check_logits(small_cnn(channels, 10, size), channels, size, 10)


def test_lenet_28():
    check_logits(lenet(1, 10, (28, 28)), 1, (28, 28), 10)


@pytest.mark.parametrize("size", [(8, 8), (28, 28), (32, 32)])
@pytest.mark.parametrize("channels", [1, 3])
def test_resnet18_cifar_sizes(size, channels):
    check_logits(resnet18(channels, 10, size), channels, size, 10)


def test_resnet18_imagenet_stem_28():
    check_logits(resnet18(1, 10, (28, 28), stem="imagenet"), 1, (28, 28), 10)


def test_vgg19_and_densenet121_32():
    check_logits(vgg19(3, 10, (32, 32)), 3, (32, 32), 10)
    check_logits(densenet121(3, 7, (32, 32)), 3, (32, 32), 7)


def test_resnet18_adaptive_pool_equals_avg_pool4_at_32():
    net = resnet18(3, 10, (32, 32)).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        feats = net.layer4(net.layer3(net.layer2(net.layer1(torch.relu(net.bn1(net.conv1(x)))))))
        expected = net.linear(nn.functional.avg_pool2d(feats, 4).flatten(1))
        assert torch.allclose(net(x), expected, atol=1e-6)


# --- wrong sizes and options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "builder, kwargs, size, accepted",
    [
        (small_cnn, {}, (3, 3), ">= 4x4"),
        (lenet, {}, (32, 32), "28x28"),
        (lenet, {}, (8, 8), "28x28"),
        (resnet18, {}, (7, 7), ">= 8x8"),
        (resnet18, {"stem": "imagenet"}, (4, 4), ">= 8x8"),
        (vgg19, {}, (28, 28), "32x32"),
        (densenet121, {}, (28, 28), "32x32"),
    ],
)
def test_wrong_size_raises(builder, kwargs, size, accepted):
    with pytest.raises(BoundaryError) as info:
        builder(3, 10, size, **kwargs)
    message = str(info.value)
    assert builder.__name__ in message
    assert accepted in message
    assert f"{size[0]}x{size[1]}" in message
    assert "\n" not in message


def test_vgg19_message_suggests_other_models():
    with pytest.raises(BoundaryError, match=r"model vgg19 takes 32x32 inputs only; the dataset's images are 28x28 "
                                            r"\(pick a dataset with 32x32 images or another model: small_cnn"):
        vgg19(1, 10, (28, 28))


def test_unknown_stem_and_option():
    with pytest.raises(BoundaryError, match="cifar, imagenet"):
        resnet18(3, 10, (32, 32), stem="tiny")
    with pytest.raises(TypeError, match="depth"):  # instantiate turns this into one error line
        lenet(1, 10, (28, 28), depth=3)


# --- key names and parameter counts ---------------------------------------------------------------------------


def test_key_names():
    keys = resnet18(3, 10, (32, 32)).state_dict().keys()
    assert {"conv1.weight", "bn1.running_mean", "layer2.0.shortcut.0.weight", "linear.weight"} <= keys
    assert "layer1.0.shortcut.0.weight" not in keys  # identity shortcut is an empty Sequential
    keys = densenet121(3, 10, (32, 32)).state_dict().keys()
    assert {"conv1.weight", "dense1.0.bn1.weight", "dense4.15.conv2.weight", "trans1.conv.weight",
            "trans3.bn.weight", "bn.weight", "linear.weight"} <= keys
    keys = vgg19(3, 10, (32, 32)).state_dict().keys()
    assert {"features.0.weight", "features.34.bias", "classifier.0.weight", "classifier.3.weight",
            "classifier.6.weight"} <= keys
    assert "fc3.weight" in lenet(1, 10, (28, 28)).state_dict()
    keys = resnet18(1, 10, (28, 28), stem="imagenet").state_dict().keys()
    assert {"conv1.weight", "bn1.weight", "layer2.0.downsample.0.weight", "fc.weight"} <= keys


def test_parameter_counts():
    assert n_params(resnet18(3, 10, (32, 32))) == 11_173_962
    assert n_params(densenet121(3, 10, (32, 32))) == 6_956_298
    assert n_params(lenet(1, 10, (28, 28))) == 61_706


def test_imagenet_stem_conv1():
    conv1 = resnet18(1, 10, (28, 28), stem="imagenet").conv1
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size, conv1.stride, conv1.padding) == (
        1, 64, (7, 7), (2, 2), (3, 3))
    assert conv1.bias is None


def test_vgg19_layout_and_init():
    net = vgg19(3, 10, (32, 32))
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 16 and isinstance(net.features[-1], nn.AvgPool2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert all((c.bias == 0).all() for c in convs)
    last = convs[-1]  # 512*3*3*512 weights: the empirical std is close to sqrt(2 / (9 * 512))
    assert abs(last.weight.std().item() - (2 / (9 * 512)) ** 0.5) < 1e-3


def test_vgg19_input_gradient_with_inplace_relu():
    net = vgg19(3, 10, (32, 32)).eval()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    (grad,) = torch.autograd.grad(net(x)[:, 3].sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


# --- normalisation --------------------------------------------------------------------------------------------


def test_normalize_per_channel():
    norm = Normalize(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.25, 2.0]))
    assert norm.mean.shape == (1, 3, 1, 1) and norm.std.shape == (1, 3, 1, 1)
    x = torch.rand(2, 3, 5, 5)
    expected = torch.stack([(x[:, c] - m) / s for c, (m, s) in enumerate([(0.1, 0.5), (0.2, 0.25), (0.3, 2.0)])], 1)
    assert torch.allclose(norm(x), expected)
    assert set(dict(norm.named_buffers())) == {"mean", "std"}


def test_normalize_per_pixel_mean():
    mean = torch.randn(1, 4, 4)
    norm = Normalize(mean, torch.tensor([0.5]))
    assert norm.mean.shape == (1, 1, 4, 4)
    x = torch.rand(3, 1, 4, 4)
    assert torch.allclose(norm(x), (x - mean) / 0.5)


def test_classifier_is_normalize_then_net():
    norm = Normalize(torch.tensor([0.5]), torch.tensor([0.2]))
    net = small_cnn(1, 10, (8, 8))
    model = Classifier(norm, net).eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), net(norm(x)))
    assert model[0] is norm and model.net is net
    keys = model.state_dict().keys()
    assert "normalize.mean" in keys and "normalize.std" in keys and "net.features.0.weight" in keys


# --- checkpoints ----------------------------------------------------------------------------------------------


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("wrap", ["plain", "net", "state_dict", "module", "classifier", "dataparallel_classifier"])
def test_load_weights_round_trip(tmp_path, wrap):
    torch.manual_seed(0)
    src = resnet18(1, 10, (8, 8))
    src.bn1.running_mean.uniform_()  # buffers must travel too
    sd = src.state_dict()
    if wrap == "net":
        obj = {"net": sd, "acc": 93.1, "epoch": 29}
    elif wrap == "state_dict":
        obj = {"state_dict": sd}
    elif wrap == "module":
        obj = {"module." + k: v for k, v in sd.items()}
    elif wrap == "classifier":
        obj = Classifier(Normalize(torch.tensor([0.5]), torch.tensor([0.2])), src).state_dict()
    elif wrap == "dataparallel_classifier":
        cls_sd = Classifier(Normalize(torch.tensor([0.5]), torch.tensor([0.2])), src).state_dict()
        obj = {"model": {"module." + k: v for k, v in cls_sd.items()}}
    else:
        obj = sd
    path = tmp_path / "model.t7"
    torch.save(obj, path)
    torch.manual_seed(1)
    dst = resnet18(1, 10, (8, 8))
    assert not same_weights(src, dst)
    load_weights(dst, path)
    assert same_weights(src, dst)


def test_load_weights_without_num_batches_tracked(tmp_path):
    src = small_cnn(1, 10, (8, 8))
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pt")
    dst = small_cnn(1, 10, (8, 8))
    load_weights(dst, tmp_path / "old.pt")
    assert same_weights(src, dst)


def test_load_weights_missing_file(tmp_path):
    path = tmp_path / "nope.t7"
    with pytest.raises(BoundaryError, match="model.checkpoint") as info:
        load_weights(lenet(1, 10, (28, 28)), path)
    assert str(path) in str(info.value)
    with pytest.raises(BoundaryError, match="is a directory; model.checkpoint"):
        load_weights(lenet(1, 10, (28, 28)), tmp_path)


@pytest.mark.parametrize("seed", range(5))
def test_load_weights_garbage_file(tmp_path, seed):
    path = tmp_path / "garbage.t7"
    path.write_bytes(random.Random(seed).randbytes(4096))
    with pytest.raises(BoundaryError, match="not a file written by torch.save") as info:
        load_weights(lenet(1, 10, (28, 28)), path)
    assert "\n" not in str(info.value)


def test_load_weights_empty_and_text_files(tmp_path):
    (tmp_path / "empty.t7").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello world\n")
    for name in ("empty.t7", "notes.txt"):
        with pytest.raises(BoundaryError, match="not a file written by torch.save"):
            load_weights(lenet(1, 10, (28, 28)), tmp_path / name)


def test_load_weights_not_a_state_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(BoundaryError, match="holds a list, not a state dict"):
        load_weights(lenet(1, 10, (28, 28)), tmp_path / "list.pt")
    torch.save({"acc": 90.0, "epoch": 3}, tmp_path / "meta.pt")
    with pytest.raises(BoundaryError, match="acc, epoch"):
        load_weights(lenet(1, 10, (28, 28)), tmp_path / "meta.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(BoundaryError, match=r"pickled Python objects \(torch.nn.modules.linear.Linear;"):
        load_weights(lenet(1, 10, (28, 28)), tmp_path / "module.pt")


def test_load_weights_other_architecture(tmp_path):
    torch.save(lenet(1, 10, (28, 28)).state_dict(), tmp_path / "lenet.t7")
    with pytest.raises(BoundaryError) as info:
        load_weights(resnet18(1, 10, (28, 28)), tmp_path / "lenet.t7", arch="resnet18")
    message = str(info.value)
    assert "model resnet18" in message
    assert "missing keys (101): bn1.weight" in message and "more" in message
    assert "unexpected keys (9):" in message and "fc3.weight" in message
    assert "conv1.weight: checkpoint (6, 1, 5, 5) vs model (64, 1, 3, 3)" in message
    assert "\n" not in message


def test_load_weights_shape_mismatch(tmp_path):
    torch.save(lenet(1, 100, (28, 28)).state_dict(), tmp_path / "lenet100.t7")
    with pytest.raises(BoundaryError) as info:
        load_weights(lenet(1, 10, (28, 28)), tmp_path / "lenet100.t7")
    message = str(info.value)
    assert "model LeNet" in message
    assert "fc3.weight: checkpoint (100, 84) vs model (10, 84)" in message
    assert "fc3.bias: checkpoint (100,) vs model (10,)" in message
    assert "missing" not in message and "unexpected" not in message


# --- per-sample input gradients in eval mode -----------------------------------------------------------------


@pytest.mark.parametrize("build, size", [(lambda: small_cnn(1, 10, (8, 8)), (8, 8)),
                                         (lambda: resnet18(3, 10, (16, 16)), (16, 16))])
def test_batch_gradient_equals_per_sample_gradients(build, size):
    torch.manual_seed(0)
    net = build()
    net.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics, then freeze them
        for _ in range(3):
            net(torch.rand(8, net_channels(net), *size))
    model = Classifier(Normalize(torch.tensor([0.5] * net_channels(net)), torch.tensor([0.25])), net).eval()
    x = torch.rand(4, net_channels(net), *size, requires_grad=True)
    (batch_grad,) = torch.autograd.grad(model(x).sum(), x)
    single = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1].detach().requires_grad_(True)
        single.append(torch.autograd.grad(model(xi).sum(), xi)[0][0])
    assert torch.allclose(batch_grad, torch.stack(single), atol=1e-5, rtol=1e-4)


def net_channels(net: nn.Module) -> int:
    first_conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    return first_conv.in_channels
