"""The area under the margin (training/aum.py): a hand-computed case, agreement with the ``aum``
package (an independent implementation) on a real training run, planted mislabels found, the
per-epoch labels of the loop, and the margins kept in the checkpoint store."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from boundary_cli.data.images import ImageData
from boundary_cli.detectors.ranking import detection_auroc
from boundary_cli.models.flip_cnn import flip_cnn
from boundary_cli.training.adam import AdamRecipe
from boundary_cli.training.aum import MarginRecorder, area_under_margin
from boundary_cli.training.loop import LoopHooks

CPU = torch.device("cpu")


def test_hand_computed_margins_and_their_mean():
    rec = MarginRecorder(torch.tensor([0, 2, 1]))
    rec(1, torch.tensor([0, 1]), torch.tensor([[3.0, 1.0, 0.0], [1.0, 4.0, 2.0]]))  # 3-1 = 2; 2-4 = -2
    rec(1, torch.tensor([0]), torch.tensor([[0.0, 5.0, 1.0]]))                      # 0-5 = -5
    aum = area_under_margin(rec.state())
    assert aum[0].item() == pytest.approx((2 - 5) / 2) and aum[1].item() == pytest.approx(-2.0)
    assert math.isnan(aum[2].item())  # never seen
    assert rec.state()["count"].tolist() == [2, 1, 0]


def planted(n: int = 96, size: int = 8, flipped: int = 12) -> tuple[ImageData, torch.Tensor]:
    """Two classes told apart by which half of the image is lit; the first ``flipped`` labels of a
    seeded permutation are swapped. Returns (data with the noisy labels, noisy mask (n,))."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = 0.3 * torch.rand(n, 1, size, size, generator=gen)
    x[y == 0, :, :, : size // 2] += 0.7
    x[y == 1, :, :, size // 2 :] += 0.7
    noisy = torch.zeros(n, dtype=torch.bool)
    noisy[torch.randperm(n, generator=gen)[:flipped]] = True
    given = torch.where(noisy, 1 - y, y)
    return ImageData("planted", x, given, x[:8], y[:8], ["left", "right"]), noisy


def test_agrees_with_the_aum_package_and_finds_planted_mislabels(tmp_path):
    aum_package = pytest.importorskip("aum")  # in the test extra: CI installs it
    data, noisy = planted()
    ours = MarginRecorder(data.train_y)
    theirs = aum_package.AUMCalculator(str(tmp_path), compressed=True)

    def both(epoch: int, idx: torch.Tensor, logits: torch.Tensor) -> None:
        ours(epoch, idx, logits)
        theirs.update(logits, data.train_y[idx], idx.tolist())

    torch.manual_seed(0)
    model = flip_cnn(1, 2, data.image_size)
    AdamRecipe(epochs=6, batch_size=16, shuffle=True).fit(model, data, seed=0, device=CPU, progress=False,
                                                          hooks=LoopHooks(on_batch=both))
    aum = area_under_margin(ours.state()).numpy()
    expected = np.array([theirs.sums[i] / theirs.counts[i] for i in range(len(aum))])
    assert np.allclose(aum, expected, atol=1e-5) and (ours.state()["count"] == 6).all()
    assert detection_auroc(-aum, noisy.numpy()) > 0.95


def test_pure_noise_labels_give_chance_detection():
    data, _ = planted(n=128, flipped=0)
    gen = torch.Generator().manual_seed(1)
    random_labels = torch.randint(0, 2, (128,), generator=gen)
    marked = torch.rand(128, generator=gen) < 0.2  # an arbitrary 'noisy' mask unrelated to anything
    data = ImageData("noise", data.train_x, random_labels, data.test_x, data.test_y, ["a", "b"])
    rec = MarginRecorder(data.train_y)
    torch.manual_seed(0)
    AdamRecipe(epochs=3, batch_size=16, shuffle=True).fit(flip_cnn(1, 2, data.image_size), data, seed=0, device=CPU,
                                                          progress=False, hooks=LoopHooks(on_batch=rec))
    assert abs(detection_auroc(-area_under_margin(rec.state()).numpy(), marked.numpy()) - 0.5) < 0.15


def test_the_loop_trains_on_the_labels_of_each_epoch():
    data, _ = planted(flipped=0)
    seen: list[int] = []

    def labels_at(epoch: int) -> torch.Tensor:
        seen.append(epoch)
        return torch.zeros_like(data.train_y)  # every point labelled 0, whatever data.train_y says

    torch.manual_seed(0)
    model = flip_cnn(1, 2, data.image_size)
    curve = AdamRecipe(epochs=3, batch_size=16, lr=1e-2).fit(model, data, seed=0, device=CPU, progress=False,
                                                             hooks=LoopHooks(labels_at=labels_at))
    assert seen == [1, 2, 3]
    with torch.no_grad():
        assert (model(data.train_x).argmax(1) == 0).all()  # it learnt the labels it was given per epoch
    assert curve["train_accuracy"].iloc[-1] == 1.0


def test_trained_models_keep_their_margins_and_stored_ones_without_them_train_again(tmp_path):
    from hydra import compose, initialize_config_module

    from boundary_cli.runner import load_dataset
    from boundary_cli.training.obtain import obtain_model

    with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
        cfg = compose("config", overrides=["training=quick", "training.recipe.epochs=1", f"paths.cache_dir={tmp_path}"])
    data = load_dataset(cfg)
    first = obtain_model(cfg, data, CPU, progress=False)
    state = torch.load(first.provenance["aum"], weights_only=True)
    assert torch.equal(state["labels"], data.train_y) and (state["count"] == 1).all()
    again = obtain_model(cfg, data, CPU, progress=False, need_aum=True)
    assert again.provenance["source"] == "store" and again.provenance["aum"] == first.provenance["aum"]
    os.remove(first.provenance["aum"])  # as an entry stored before margins were kept
    assert obtain_model(cfg, data, CPU, progress=False).provenance["aum"] is None
    retrained = obtain_model(cfg, data, CPU, progress=False, need_aum=True)
    assert retrained.provenance["source"] == "trained" and os.path.exists(retrained.provenance["aum"])
