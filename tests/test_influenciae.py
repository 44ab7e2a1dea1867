"""influenciae's ConvNetCIFAR (models/convnet_cifar.py) and its two training recipes
(training/influenciae.py), built and trained small."""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch import nn

from boundary_cli.errors import BoundaryError
from boundary_cli.models.convnet_cifar import BasicBlockV1, convnet_cifar
from boundary_cli.training.influenciae import InfluenciaeRecipe, Plateau

CPU = torch.device("cpu")


def conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def test_layout_and_parameter_count_at_cifar_size():
    net = convnet_cifar(3, 10, (32, 32))
    bn = lambda c: 2 * c  # noqa: E731 - gamma and beta
    block = lambda cin, c: conv(cin, c, 3) + bn(c) + conv(c, c, 3) + bn(c) + (conv(cin, c, 1) + bn(c) if cin != c else 0)  # noqa: E731
    backbone = conv(3, 16, 3) + bn(16) + 3 * block(16, 16) + block(16, 32) + 2 * block(32, 32) \
        + block(32, 64) + 2 * block(64, 64) + bn(64)
    head = (64 * 8 * 8 * 128 + 128) + (128 * 10 + 10)  # Flatten 8x8x64 -> Dense 128 -> Dense 10
    assert sum(p.numel() for p in net.parameters()) == backbone + head == 798_442
    names = dict(net.named_modules())
    assert all(t in names for t in net.tap_layers)
    assert isinstance(net.dropout, nn.Dropout) and net.dropout.p == 0.4 and net.leaky_slope == 0.3
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert convnet_cifar(1, 10, (8, 8))(torch.rand(2, 1, 8, 8)).shape == (2, 10)  # 2x2x64 flattened
    with pytest.raises(BoundaryError, match="convnet_cifar"):
        convnet_cifar(1, 10, (3, 3))


def test_the_v1_block_has_no_activation_after_the_sum():
    torch.manual_seed(0)
    block = BasicBlockV1(4, 4).eval()
    x = -torch.rand(1, 4, 6, 6)  # negative input through the identity shortcut
    out = block(x)
    assert (out < 0).any()  # a ReLU after the sum would make every output >= 0
    inner = torch.relu(block.unit2(torch.relu(block.unit1(x))))
    assert torch.allclose(out, inner + x)


def test_adam_schedule_halves_every_ten_epochs_and_sgd_decays_exponentially():
    adam = InfluenciaeRecipe()
    assert [adam.schedule(e) for e in (1, 10, 11, 20, 21, 50, 51, 60)] == \
        [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 6.25e-5, 3.125e-5, 3.125e-5]
    sgd = InfluenciaeRecipe(optimizer="sgd", epochs=200, lr=0.1)
    assert sgd.schedule(1) == pytest.approx(0.1)
    assert sgd.schedule(101) == pytest.approx(0.1 * math.sqrt(1e-3))  # halfway in log space
    assert sgd.schedule(201) == pytest.approx(1e-4)  # the schedule's end point
    with pytest.raises(BoundaryError, match="optimizer"):
        InfluenciaeRecipe(optimizer="rmsprop")


def test_plateau_cuts_after_patience_and_waits_out_its_cooldown():
    p = Plateau(factor=math.sqrt(0.1), patience=3, cooldown=1, min_lr=5e-7)
    multipliers = []
    for loss in [1.0] * 8:  # never improves after the first epoch
        p.step(loss, 1e-3 * p.multiplier)
        multipliers.append(p.multiplier)
    # reduced at epochs 4 and 7: 3 epochs of waiting, then 1 of cooldown + 2 more of waiting
    assert multipliers == pytest.approx([1, 1, 1, 0.1 ** 0.5, 0.1 ** 0.5, 0.1 ** 0.5, 0.1, 0.1])
    q = Plateau(factor=math.sqrt(0.1), patience=1, cooldown=0, min_lr=5e-7)
    q.step(1.0, 1e-6)
    q.step(1.0, 1e-6)  # would go to 3.2e-7: clamped at min_lr
    assert q.multiplier * 1e-6 == pytest.approx(5e-7)
    improving = Plateau(factor=0.5, patience=1, cooldown=0, min_lr=0)
    for loss in (3.0, 2.0, 1.0):
        improving.step(loss, 1.0)
    assert improving.multiplier == 1.0


def test_weight_decay_reaches_the_conv_kernels_only():
    net = convnet_cifar(1, 10, (8, 8))
    opt = InfluenciaeRecipe().make_optimizer(net)
    decayed, rest = opt.param_groups
    kernels = {id(m.weight) for m in net.modules() if isinstance(m, nn.Conv2d)}
    assert {id(p) for p in decayed["params"]} == kernels and decayed["weight_decay"] == 2e-4
    assert rest["weight_decay"] == 0 and id(net.dense.weight) in {id(p) for p in rest["params"]}
    assert isinstance(InfluenciaeRecipe(optimizer="sgd", lr=0.1).make_optimizer(net), torch.optim.SGD)


@pytest.mark.parametrize("training, lrs", [
    ("influenciae", [1e-3, 1e-3]),
    ("influenciae_overfit", [0.1, 0.1 * 1e-3 ** 0.5]),
])
def test_both_recipes_train_convnet_cifar_small_through_the_config(training, lrs):
    from test_adam import separable_data

    with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
        cfg = compose("config", overrides=[f"training={training}", "model=convnet_cifar", "training.recipe.epochs=2",
                                           "training.recipe.decay_epochs=2", "training.recipe.batch_size=16",
                                           "training.recipe.flip=false"])
    recipe = instantiate(cfg.training.recipe)
    data = separable_data(n=64, size=8)
    torch.manual_seed(0)
    net = convnet_cifar(1, 2, (8, 8))
    curve = recipe.fit(net, data, seed=0, device=CPU, progress=False)
    assert list(curve["lr"]) == pytest.approx(lrs)
    assert curve["train_accuracy"].iloc[-1] > 0.8 and not net.training


def test_augmentation_is_drawn_per_image_and_fixed_by_the_seed():
    recipe = InfluenciaeRecipe(shift=0.25, flip=True)
    x = torch.rand(1, 1, 8, 8).expand(8, 1, 8, 8).contiguous()  # one image eight times
    first = recipe.perturbation(seed=0)(None, x, None)
    again = recipe.perturbation(seed=0)(None, x, None)
    assert torch.equal(first, again) and not torch.equal(first, recipe.perturbation(seed=1)(None, x, None))
    moved = (x + first).flatten(1)
    assert len({tuple(row.tolist()) for row in moved}) == 8  # each copy got its own transform
    assert InfluenciaeRecipe(shift=0, flip=False).perturbation(0) is None


def test_weight_space_deepfool_runs_on_it_as_the_per_sample_full_jacobian_loop():
    from boundary_cli.geometry.reference_weights_deepfool import weights_deepfool_single
    from boundary_cli.geometry.weights_deepfool import STOPS, WeightDeepFoolParams, weight_deepfool

    torch.manual_seed(0)
    net = convnet_cifar(1, 3, (4, 4), width=8).double().eval()  # BN in eval, dropout off
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = weight_deepfool(net, x, WeightDeepFoolParams(max_iter=15), batch_rows=2)
    for i, (dist, steps, stop) in enumerate(weights_deepfool_single(net, x, max_iter=15)):
        assert res.distance[i].item() == pytest.approx(dist, rel=1e-6)
        assert res.iterations[i].item() == steps and STOPS[res.stopped_by[i].item()] == stop
