"""training=lcr_adam, the lcr reference's Keras ResNet20 recipe: step-decayed learning rate, weight decay on
conv kernels only, a shift and flip drawn per image, and the per-pixel mean as the model's first layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from scipy import ndimage
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from boundary_cli.data.images import ImageData
from boundary_cli.errors import BoundaryError
from boundary_cli.models.build import normalization_spec
from boundary_cli.models.normalize import Classifier, Normalize
from boundary_cli.models.resnet20 import resnet20
from boundary_cli.training.obtain import build_model
from boundary_cli.training.lcr_adam import AUGMENT_SEED_OFFSET, LcrAdam, draw_shift_flip, shift_flip


def cfg_for(*overrides: str):
    with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
        return compose("config", overrides=list(overrides))


def fake_data(n: int = 24, channels: int = 3, size: int = 10, seed: int = 0) -> ImageData:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, size, size, generator=gen)
    y = torch.arange(n) % 10
    return ImageData("fake", x, y, x[:8].clone(), y[:8].clone(), [str(i) for i in range(10)])


# Keras lr_schedule(i) on the 0-based epoch index i, written out by hand for the 1-based epochs of training.csv:
# 1e-3 * {1: i <= 80, 1e-1: 80 < i <= 120, 1e-2: 120 < i <= 160, 1e-3: 160 < i <= 180, 0.5e-3: i > 180}
LR_TABLE = {1: 1e-3, 2: 1e-3, 80: 1e-3, 81: 1e-3, 82: 1e-4, 100: 1e-4, 121: 1e-4, 122: 1e-5, 150: 1e-5, 161: 1e-5,
            162: 1e-6, 181: 1e-6, 182: 5e-7, 199: 5e-7, 200: 5e-7}


def test_the_learning_rate_of_every_epoch_is_keras_lr_schedule():
    recipe = instantiate(cfg_for("training=lcr_adam").training.recipe)
    assert isinstance(recipe, LcrAdam) and (recipe.epochs, recipe.batch_size, recipe.lr) == (200, 32, 1e-3)
    for epoch, lr in LR_TABLE.items():
        assert recipe.lr_of_epoch(epoch) == pytest.approx(lr, rel=1e-12), epoch
    got = [recipe.lr_of_epoch(e) for e in range(1, 201)]
    want = [1e-3] * 81 + [1e-4] * 40 + [1e-5] * 40 + [1e-6] * 20 + [5e-7] * 19
    assert np.allclose(got, want, rtol=1e-12, atol=0)


def test_every_step_of_an_epoch_uses_that_epochs_learning_rate():
    recipe = LcrAdam(epochs=3, batch_size=8, decay_after=[0, 1], decay_factors=[0.1, 0.01], shift=0.0, flip=False)
    model = Classifier(Normalize(torch.zeros(3), torch.ones(3)), nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(),
                                                                                nn.LazyLinear(10)))
    data = fake_data(n=20)
    model(data.train_x[:1])
    lrs = []
    handle = register_optimizer_step_pre_hook(lambda opt, *_: lrs.append([g["lr"] for g in opt.param_groups]))
    try:
        curve = recipe.fit(model, data, seed=0, device=torch.device("cpu"), progress=False)
    finally:
        handle.remove()
    assert len(lrs) == 3 * 3  # ceil(20 / 8) steps per epoch
    assert np.allclose(lrs, [[1e-3, 1e-3]] * 3 + [[1e-4, 1e-4]] * 3 + [[1e-5, 1e-5]] * 3, rtol=1e-12, atol=0)
    assert np.allclose(curve["lr"], [1e-3, 1e-4, 1e-5], rtol=1e-12, atol=0)


def named(model: nn.Module, params) -> set[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for p in params}


def test_weight_decay_is_on_conv_kernels_only():
    model = Classifier(Normalize(torch.zeros(3), torch.ones(3)), resnet20(3, 10, (32, 32)))
    decayed, free = LcrAdam().parameter_groups(model)
    assert decayed["weight_decay"] == 2e-4 and free["weight_decay"] == 0.0
    convs = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert len(convs) == 21  # 19 3x3 convs and the two 1x1 projection shortcuts
    assert named(model, decayed["params"]) == convs
    rest = named(model, free["params"])
    assert rest == {n for n, _ in model.named_parameters()} - convs
    assert "net.linear.weight" in rest and "net.layer2.0.shortcut.bias" in rest and "net.bn1.weight" in rest
    # behaviour: with a zero loss gradient, Adam moves only what carries decay
    opt = torch.optim.Adam(LcrAdam().parameter_groups(model), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {n for n in convs if before[n].abs().max() > 0}


def test_shift_flip_is_scipys_order_1_nearest_shift_then_a_mirror():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 2, 9, 11, generator=gen)
    shifts = torch.tensor([[0.0, 0.0], [1.0, -2.0], [0.4, 0.7], [-1.3, 2.6], [3.0, 0.0], [-0.5, -1.1]])
    flips = torch.tensor([False, False, True, False, True, True])
    out = shift_flip(x, shifts, flips)
    for b in range(6):
        want = np.stack([ndimage.shift(x[b, c].double().numpy(), shifts[b].tolist(), order=1, mode="nearest")
                         for c in range(2)])
        if flips[b]:
            want = want[..., ::-1]
        assert np.allclose(out[b].numpy(), want, atol=1e-5), b
    # a whole-pixel shift by hand: out[i, j] = x[i - 1, j + 2], rows and columns past the edge repeat it
    rows = (torch.arange(9) - 1).clamp(0, 8)
    cols = (torch.arange(11) + 2).clamp(0, 10)
    assert torch.allclose(out[1], x[1][:, rows][:, :, cols], atol=1e-5)
    assert torch.allclose(out[0], x[0], atol=1e-6)


def test_each_image_gets_its_own_bounded_shift_and_flip():
    shifts, flips = draw_shift_flip(4000, (28, 32), 0.1, True, torch.Generator().manual_seed(0))
    assert shifts[:, 0].abs().max() <= 2.8 and shifts[:, 1].abs().max() <= 3.2
    assert shifts[:, 0].abs().max() > 2.7 and shifts[:, 1].abs().max() > 3.1  # the range is used
    assert 0.45 < flips.double().mean() < 0.55
    _, none = draw_shift_flip(50, (28, 32), 0.1, False, torch.Generator().manual_seed(0))
    assert not none.any()

    recipe = LcrAdam()
    data = fake_data(n=64, channels=1, size=12)
    same = data.train_x[:1].expand(64, -1, -1, -1).contiguous()  # 64 copies of one image in one batch
    perturb = recipe.perturbation(data, 5, torch.device("cpu"))
    out = same + perturb(None, same, None)
    assert len({tuple(o.flatten().tolist()) for o in out.round(decimals=5)}) == 64  # never one draw per batch
    # exactly shift_flip of the mean-subtracted image with the seeded draws, plus the mean back
    shifts, flips = draw_shift_flip(64, (12, 12), 0.1, True, torch.Generator().manual_seed(5 + AUGMENT_SEED_OFFSET))
    mean = data.train_x.mean(0)
    assert torch.allclose(out, shift_flip(same - mean, shifts, flips) + mean, atol=1e-6)
    again = same + recipe.perturbation(data, 5, torch.device("cpu"))(None, same, None)
    assert torch.equal(out, again)  # seeded from the run seed
    other = same + recipe.perturbation(data, 6, torch.device("cpu"))(None, same, None)
    assert not torch.allclose(out, other)
    assert LcrAdam(shift=0.0, flip=False).perturbation(data, 5, torch.device("cpu")) is None


def test_the_recipe_brings_a_per_pixel_mean_first_layer():
    cfg = cfg_for("training=lcr_adam", "model=resnet20")
    assert cfg.model.normalization == "pixel_mean" and normalization_spec("pixel_mean") == "pixel_mean"
    data = fake_data()
    model = build_model(cfg, data)
    assert model.normalize.mean.shape == (1, 3, 10, 10)
    assert torch.equal(model.normalize.mean[0], data.train_x.mean(0))
    assert torch.equal(model.normalize.std, torch.ones(1, 3, 1, 1))
    x = data.test_x[:2]
    assert torch.allclose(model.normalize(x), x - data.train_x.mean(0))
    per_channel = build_model(cfg_for("model=resnet20"), data).normalize
    assert per_channel.mean.shape == (1, 3, 1, 1)  # the default stays the dataset's per-channel statistics
    empty = ImageData("fake", data.train_x[:0], data.train_y[:0], data.test_x, data.test_y, data.classes)
    with pytest.raises(BoundaryError, match="pixel_mean needs the training images"):
        build_model(cfg, empty)
    with pytest.raises(BoundaryError, match="pixel_mean"):
        normalization_spec("pixel")


def test_bad_schedules_are_refused():
    with pytest.raises(BoundaryError, match="decay_after"):
        LcrAdam(decay_after=[120, 80], decay_factors=[0.1, 0.01])
    with pytest.raises(BoundaryError, match="decay_after"):
        LcrAdam(decay_after=[80], decay_factors=[0.1, 0.01])
    with pytest.raises(BoundaryError, match="shift"):
        LcrAdam(shift=1.5)
