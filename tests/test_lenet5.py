"""activation_analysis's LeNet-5 (models/lenet5.py): layout, taps and the weight initialisations."""

from __future__ import annotations

import pytest
import torch

from boundary_cli.errors import BoundaryError
from boundary_cli.models.lenet5 import INITS, lenet5


def test_layout_parameter_count_and_tap_shapes():
    net = lenet5(1, 10, (28, 28))
    hand = (1 * 6 * 25 + 6) + (6 * 16 * 25 + 16) + (256 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert sum(p.numel() for p in net.parameters()) == hand == 44_426
    seen = {}
    hooks = [dict(net.named_modules())[t].register_forward_hook(lambda m, i, o, t=t: seen.__setitem__(t, o.shape))
             for t in net.tap_layers]
    net(torch.rand(2, 1, 28, 28))
    for h in hooks:
        h.remove()
    assert seen == {"pool2": (2, 16, 4, 4), "relu_fc1": (2, 120), "relu_fc2": (2, 84), "fc3": (2, 10)}
    with pytest.raises(BoundaryError, match="28x28"):
        lenet5(1, 10, (32, 32))


def test_each_init_draws_the_weights_it_names_and_keeps_the_biases():
    torch.manual_seed(0)
    nets = {}
    for init in INITS:
        torch.manual_seed(0)
        nets[init] = lenet5(1, 10, (28, 28), init=init)
    w = {k: n.fc1.weight.detach() for k, n in nets.items()}
    assert abs(w["normal"].std().item() - 0.01) < 0.001
    bound = (6 / (256 + 120)) ** 0.5  # Xavier's uniform bound for fc1
    assert w["xavier_uniform"].abs().max() <= bound and w["xavier_uniform"].abs().max() > 0.95 * bound
    kaiming = (6 / 256) ** 0.5  # torch's kaiming_uniform_ defaults (a=0, fan_in, leaky_relu gain sqrt 2)
    assert w["kaiming_uniform"].abs().max() <= kaiming and w["kaiming_uniform"].abs().max() > 0.95 * kaiming
    default = (1 / 256) ** 0.5  # PyTorch's Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert w["default"].abs().max() <= default
    for init in INITS:  # the same seed draws the same biases whatever the weights' init
        assert torch.equal(nets[init].fc1.bias, nets["default"].fc1.bias) or init == "default"
    with pytest.raises(BoundaryError, match="unknown init"):
        lenet5(1, 10, (28, 28), init="orthogonal")
