"""Layer conductance: completeness, reduce modes, batching, captum parity, targets and contracts."""

import pytest
import torch
from torch import nn

from boundary_cli.detectors.conductance import layer_conductance, predicted_logit_target
from boundary_cli.models.lenet import lenet
from boundary_cli.models.normalize import Classifier, Normalize


def conv_net(dtype=torch.float32, inplace=False, seed=0):
    """Conv-ReLU-Conv-ReLU-Linear on (B, 3, 6, 6): layers "0".."3" each cut the network."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=inplace), nn.Conv2d(4, 5, 3, padding=1),
        nn.ReLU(inplace=inplace), nn.Flatten(), nn.Linear(5 * 6 * 6, 7),
    )
    return net.to(dtype).eval()


def mnist_lenet(seed=0):
    torch.manual_seed(seed)
    return Classifier(Normalize(torch.tensor([0.1307]), torch.tensor([0.3081])), lenet(1, 10, (28, 28))).eval()


def logit_gap(model, x, baseline, target):
    """F(x) - F(baseline) for the target logit, (B,)."""
    with torch.no_grad():
        fx = model(x).gather(1, target[:, None])[:, 0]
        fb = model(baseline.expand_as(x)).gather(1, target[:, None])[:, 0]
    return fx - fb


def completeness_error(model, x, baseline, layer, n_steps):
    """Mean |Σ cond - (F(x) - F(b))| over inputs, relative to the mean |F(x) - F(b)|."""
    target = predicted_logit_target(model, x)
    cond = layer_conductance(model, x, [layer], baseline=baseline, n_steps=n_steps, reduce="sum")[layer]
    gap = logit_gap(model, x, baseline, target)
    return ((cond.sum(dim=1) - gap).abs().mean() / gap.abs().mean()).item()


@pytest.mark.parametrize("layer", ["1", "2"])
def test_completeness_conv_net(layer):
    # ReLU kinks make the error O(1/n); measured ≈7% at n=5 and ≈0.2% at n=200 on these inputs.
    torch.manual_seed(1)
    model, x, baseline = conv_net(), torch.rand(16, 3, 6, 6), torch.full((3, 6, 6), 0.3)
    coarse = completeness_error(model, x, baseline, layer, 5)
    fine = completeness_error(model, x, baseline, layer, 200)
    assert fine < 0.02
    assert fine < coarse


@pytest.mark.parametrize("layer", ["fc1", "net.fc1", "pool2"])
def test_completeness_lenet_classifier(layer):
    # Measured for fc1: ≈5% at n=5, ≈0.2% at n=200.
    torch.manual_seed(2)
    model, x, baseline = mnist_lenet(), torch.rand(8, 1, 28, 28), torch.zeros(1, 28, 28)
    coarse = completeness_error(model, x, baseline, layer, 5)
    fine = completeness_error(model, x, baseline, layer, 200)
    assert fine < 0.02
    assert fine < coarse


def test_completeness_exact_before_linear_readout():
    # After relu_fc2 only fc3 (affine) remains: ∂F/∂a is constant, so even n=1 gives F(x) - F(b).
    torch.manual_seed(2)
    model, x, baseline = mnist_lenet(), torch.rand(8, 1, 28, 28), torch.zeros(1, 28, 28)
    assert completeness_error(model, x, baseline, "relu_fc2", 1) < 1e-5


def test_reduce_modes_agree():
    torch.manual_seed(3)
    model, x = conv_net(), torch.rand(5, 3, 6, 6)
    layers = ["0", "3", "5"]  # conv (B,4,6,6), ReLU (B,5,6,6), linear (B,7)
    out = {r: layer_conductance(model, x, layers, baseline=0.0, reduce=r) for r in ("mean", "sum", "none")}
    assert out["none"]["0"].shape == (5, 4, 6, 6) and out["none"]["3"].shape == (5, 5, 6, 6)
    for name in ("0", "3"):
        torch.testing.assert_close(out["mean"][name] * 36, out["sum"][name], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out["none"][name].sum(dim=(2, 3)), out["sum"][name], rtol=1e-5, atol=1e-7)
        assert out["mean"][name].shape == (5, out["none"][name].shape[1])
    for r in ("mean", "sum"):
        torch.testing.assert_close(out[r]["5"], out["none"]["5"])
    assert out["none"]["5"].shape == (5, 7)


def test_batch_size_does_not_change_result():
    torch.manual_seed(4)
    model, x = mnist_lenet(), torch.rand(6, 1, 28, 28)
    kw = dict(baseline=torch.zeros(1, 28, 28), n_steps=8, reduce="none")
    one = layer_conductance(model, x, ["pool1", "fc2"], batch_size=1, **kw)
    every = layer_conductance(model, x, ["pool1", "fc2"], batch_size=64, **kw)
    three = layer_conductance(model, x, ["pool1", "fc2"], batch_size=4, **kw)  # uneven last chunk
    for name in ("pool1", "fc2"):
        torch.testing.assert_close(one[name], every[name], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(three[name], every[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layer", ["1", "2"])
def test_matches_captum(layer):
    """captum multiplies the gradient at the left end of each step, so no method equals our right sum
    directly. Exact relations (same n, same target): riemann_trapezoid (grid k/n) with input and baseline
    swapped is ours negated; riemann_right (grid k/(n+1), k>=1) is ours negated with
    x := b + (x - b)/(n+1) and baseline := x. Float64 so only rounding remains."""
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(5)
    model, n = conv_net(torch.float64), 10
    x = torch.rand(4, 3, 6, 6, dtype=torch.float64)
    b = torch.full((4, 3, 6, 6), 0.3, dtype=torch.float64)
    target = predicted_logit_target(model, x)
    ours = layer_conductance(model, x, [layer], baseline=b, n_steps=n, reduce="none")[layer]
    lc = captum_attr.LayerConductance(model, model[int(layer)])

    swapped = lc.attribute(b, baselines=x, target=target, n_steps=n, method="riemann_trapezoid")
    torch.testing.assert_close(-swapped, ours, rtol=1e-5, atol=1e-9)

    right = lc.attribute(x, baselines=b, target=target, n_steps=n, method="riemann_right")
    shifted = layer_conductance(model, b + (x - b) / (n + 1), [layer], baseline=x, n_steps=n, target=target,
                                reduce="none")[layer]
    torch.testing.assert_close(-shifted, right, rtol=1e-5, atol=1e-9)
    assert not torch.allclose(right, ours, rtol=1e-3)  # the direct call really is a different sum


def test_default_target_is_prediction_and_explicit_target_works():
    torch.manual_seed(6)
    model, x = conv_net(), torch.rand(5, 3, 6, 6)
    pred = model(x).argmax(1)
    default = layer_conductance(model, x, ["1"], baseline=0.0, reduce="sum")["1"]
    explicit = layer_conductance(model, x, ["1"], baseline=0.0, reduce="sum", target=pred)["1"]
    torch.testing.assert_close(default, explicit)

    other = (pred + 1) % 7
    cond = layer_conductance(model, x, ["1"], baseline=0.0, reduce="sum", target=other, n_steps=200)["1"]
    assert not torch.allclose(cond, default)
    gap = logit_gap(model, x, torch.zeros(3, 6, 6), other)
    assert ((cond.sum(1) - gap).abs().mean() / gap.abs().mean()) < 0.02
    as_int = layer_conductance(model, x, ["1"], baseline=0.0, reduce="sum", target=3)["1"]
    torch.testing.assert_close(as_int, layer_conductance(model, x, ["1"], baseline=0.0, reduce="sum",
                                                         target=torch.full((5,), 3))["1"])


def test_unknown_layer_lists_valid_names():
    model = mnist_lenet()
    with pytest.raises(ValueError, match="unknown layer 'fc9'") as err:
        layer_conductance(model, torch.rand(2, 1, 28, 28), ["fc9"], baseline=0.0)
    assert "fc1" in str(err.value) and "relu_fc2" in str(err.value)


def test_training_mode_refused():
    model = conv_net().train()
    with pytest.raises(ValueError, match="eval mode"):
        layer_conductance(model, torch.rand(2, 3, 6, 6), ["1"], baseline=0.0)


def test_requires_grad_flags_restored():
    model = conv_net()
    model[0].bias.requires_grad_(False)
    before = [p.requires_grad for p in model.parameters()]
    layer_conductance(model, torch.rand(2, 3, 6, 6), ["1", "2"], baseline=0.0)
    assert [p.requires_grad for p in model.parameters()] == before
    assert not model[0].bias.requires_grad and model[0].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_inplace_relu_downstream_does_not_corrupt_capture():
    torch.manual_seed(7)
    x = torch.rand(3, 3, 6, 6)
    plain = layer_conductance(conv_net(), x, ["0", "2"], baseline=0.0, reduce="none")
    inplace = layer_conductance(conv_net(inplace=True), x, ["0", "2"], baseline=0.0, reduce="none")
    for name in ("0", "2"):
        torch.testing.assert_close(inplace[name], plain[name])


def test_shared_module_refused():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(2 * 4 * 4, 3)

        def forward(self, x):
            return self.fc(self.relu(self.relu(self.conv(x)) + 1).flatten(1))

    with pytest.raises(ValueError, match="more than once"):
        layer_conductance(Shared().eval(), torch.rand(2, 1, 4, 4), ["relu"], baseline=0.0)
