"""The Adam recipe (training/adam.py) on the shared training loop, and training=flip_adam (tiny, CPU)."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch import nn

from boundary_cli.data.images import ImageData
from boundary_cli.errors import BoundaryError
from boundary_cli.models.flip_cnn import flip_cnn
from boundary_cli.training.adam import AdamRecipe
from boundary_cli.training.loop import CURVE_COLUMNS
from boundary_cli.training.one_cycle import OneCycleSGD

CPU = torch.device("cpu")


# --- the Adam recipe and the shared loop ------------------------------------------------------------------------


def separable_data(n: int = 64, size: int = 8) -> ImageData:
    """Class 0 lights the left half, class 1 the right half, on a noise background."""
    gen = torch.Generator().manual_seed(0)

    def make(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(m) % 2
        x = 0.3 * torch.rand(m, 1, size, size, generator=gen)
        x[y == 0, :, :, : size // 2] += 0.7
        x[y == 1, :, :, size // 2 :] += 0.7
        return x, y

    train_x, train_y = make(n)
    test_x, test_y = make(n // 2)
    return ImageData("separable", train_x, train_y, test_x, test_y, ["left", "right"])


def train(recipe, seed: int, data: ImageData, on_epoch=None):
    torch.manual_seed(0)  # the same initial weights whatever the recipe's seed
    model = flip_cnn(1, 2, data.image_size)
    curve = recipe.fit(model, data, seed=seed, device=CPU, progress=False, on_epoch=on_epoch)
    return model, curve


def test_adam_recipe_learns_and_calls_on_epoch():
    data = separable_data()
    calls = []

    def on_epoch(epoch: int, model: nn.Module, _optimizer) -> None:
        calls.append((epoch, model.training))

    model, curve = train(AdamRecipe(epochs=4, batch_size=16), 0, data, on_epoch)
    assert calls == [(1, False), (2, False), (3, False), (4, False)]
    assert tuple(curve.columns) == CURVE_COLUMNS
    assert list(curve["epoch"]) == [1, 2, 3, 4] and (curve["lr"] == 1e-3).all()
    assert curve["train_accuracy"].iloc[-1] >= 0.95 and curve["test_accuracy"].iloc[-1] >= 0.9
    assert not model.training


def test_adam_defaults():
    r = AdamRecipe()
    assert (r.epochs, r.batch_size, r.lr, r.betas, r.eps, r.weight_decay, r.shuffle) == \
        (50, 128, 1e-3, (0.9, 0.999), 1e-8, 0.0, False)
    assert AdamRecipe(betas=[0.5, 0.9]).betas == (0.5, 0.9)
    with pytest.raises(BoundaryError, match="two betas"):
        AdamRecipe(betas=[0.9])


def test_without_shuffling_the_seed_does_not_change_training():
    data = separable_data()
    still = AdamRecipe(epochs=2, batch_size=16, shuffle=False)
    a, curve_a = train(still, 0, data)
    b, curve_b = train(still, 1, data)
    assert curve_a["train_loss"].tolist() == curve_b["train_loss"].tolist()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    shuffled = AdamRecipe(epochs=2, batch_size=16, shuffle=True)
    _, curve_c = train(shuffled, 0, data)
    _, curve_d = train(shuffled, 1, data)
    assert curve_c["train_loss"].tolist() != curve_d["train_loss"].tolist()


class OrderRecorder(nn.Module):
    """A linear classifier that records the index each image encodes in its first pixel."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.linear = nn.Linear(4, 2)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen += (x[:, 0, 0, 0] * self.n).round().long().tolist()
        return self.linear(x.flatten(1))


@pytest.mark.parametrize("shuffle", [False, True])
def test_batch_order(shuffle):
    n = 10
    x = (torch.arange(n, dtype=torch.float32) / n).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    y = torch.arange(n) % 2
    data = ImageData("indexed", x, y, x, y, ["a", "b"])
    model = OrderRecorder(n)
    AdamRecipe(epochs=3, batch_size=4, shuffle=shuffle).fit(model, data, seed=0, device=CPU, progress=False)
    epochs = [model.seen[i * n : (i + 1) * n] for i in range(3)]
    assert all(sorted(e) == list(range(n)) for e in epochs)  # every image once per epoch
    if shuffle:
        assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
    else:
        assert epochs == [list(range(n))] * 3


def test_one_cycle_passes_on_epoch_through():
    epochs = []
    recipe = OneCycleSGD(epochs=2, batch_size=32)
    _, curve = train(recipe, 0, separable_data(), lambda epoch, _model, _opt: epochs.append(epoch))
    assert epochs == [1, 2] and tuple(curve.columns) == CURVE_COLUMNS
    assert curve["lr"].tolist() == [recipe.lr_at(1), 0.0]


# --- config -----------------------------------------------------------------------------------------------------


def cfg_for(*overrides: str):
    with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
        return compose("config", overrides=list(overrides))


def test_flip_adam_config_instantiates_an_adam_torch_accepts():
    cfg = cfg_for("training=flip_adam")
    assert cfg.training.name == "flip_adam" and list(cfg.training.save_epochs) == [5, 20]
    recipe = instantiate(cfg.training.recipe)
    assert isinstance(recipe, AdamRecipe)
    assert (recipe.epochs, recipe.batch_size, recipe.lr, recipe.eps, recipe.shuffle) == (20, 128, 1e-3, 1e-8, False)
    assert recipe.betas == (0.9, 0.999)
    opt = torch.optim.Adam(nn.Linear(2, 2).parameters(), lr=recipe.lr, betas=recipe.betas, eps=recipe.eps)
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)


def test_other_recipes_keep_no_snapshots():
    for training in ("reference", "quick"):
        assert list(cfg_for(f"training={training}").training.save_epochs) == []
