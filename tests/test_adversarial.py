"""L2 PGD, its projections (ball, box, flipped box, Dykstra), the adversarial recipe and its config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from scipy.optimize import minimize
from torch import nn

from boundary_cli.data.digits import load_digits
from boundary_cli.data.images import ImageData
from boundary_cli.data.variants import FLIP, apply_variant
from boundary_cli.errors import BoundaryError
from boundary_cli.geometry.dct import dct_flip
from boundary_cli.geometry.deepfool import DeepFoolParams, deepfool
from boundary_cli.geometry.pgd import (
    constraint_projection,
    dykstra,
    pgd_l2,
    project_box,
    project_flipped_box,
    project_l2_ball,
)
from boundary_cli.training.obtain import obtain_model
from boundary_cli.training.adversarial import AdversarialOneCycleSGD


def cfg_for(*overrides: str):
    with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
        return compose("config", overrides=list(overrides))


def norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def edge_images(n: int, size: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Images (n, 1, size, size) whose pixels are mostly exactly 0 or 1: box constraints bite."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 1, size, size, generator=g) > 0.5).to(dtype)
    mid = torch.rand(n, 1, size, size, generator=g) < 0.2
    return torch.where(mid, torch.rand(n, 1, size, size, generator=g).to(dtype), x)


def tiny_net(size: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * size * size, 10))


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> ImageData:
    root = tmp_path_factory.mktemp("digits")
    return load_digits(root, root)


def test_projections_are_idempotent_and_feasible():
    x = edge_images(6, 8, seed=0, dtype=torch.float64)
    u = dct_flip(x)
    g = torch.Generator().manual_seed(1)
    delta = 2 * torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    ball = project_l2_ball(delta, 0.5)
    assert norms(ball).max() <= 0.5 * (1 + 1e-12)
    assert torch.allclose(project_l2_ball(ball, 0.5), ball)
    box = project_box(delta, x, 0.0, 1.0)
    assert (x + box).min() >= 0 and (x + box).max() <= 1
    assert torch.equal(project_box(box, x, 0.0, 1.0), box)
    flipped = project_flipped_box(delta, u)
    raw = dct_flip(u + flipped)
    assert raw.min() >= -1e-12 and raw.max() <= 1 + 1e-12
    assert torch.allclose(project_flipped_box(flipped, u), flipped, atol=1e-12)
    small = 1e-3 * torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    inside = project_flipped_box(project_l2_ball(small, 0.5), u)  # already feasible: a fixed point
    assert torch.allclose(project_flipped_box(inside, u), inside, atol=1e-12)


def test_dykstra_finds_the_projection_onto_ball_and_flipped_box():
    """Against the projection computed by a generic solver (SLSQP on the tiny convex problem
    min ‖d - v‖² s.t. ‖d‖ <= eps, 0 <= dct_flip(u + d) <= 1), and the optimality condition of a
    Euclidean projection y of v onto a convex set K, <v - y, w - y> <= 0, on random points of K."""
    eps = 0.8
    x = edge_images(4, 4, seed=2, dtype=torch.float64)
    u = dct_flip(x)
    g = torch.Generator().manual_seed(3)
    v = 1.5 * torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64)

    def ball(t):
        return project_l2_ball(t, eps)

    def box(t):
        return project_flipped_box(t, u)

    y = dykstra(v, ball, box, n_iter=3000)
    assert norms(y).max() <= eps * (1 + 1e-6)
    raw = dct_flip(u + y)
    assert raw.min() >= -1e-9 and raw.max() <= 1 + 1e-9
    # neither set alone gives the answer: both constraints are active
    assert not torch.allclose(ball(v), y, atol=1e-3) and not torch.allclose(box(v), y, atol=1e-3)
    flip = dct_flip(torch.eye(16, dtype=torch.float64).view(16, 1, 4, 4)).view(16, 16).numpy()  # symmetric
    for i in range(4):
        vi, xi = v[i, 0].numpy().ravel(), x[i, 0].numpy().ravel()
        cons = [{"type": "ineq", "fun": lambda d: eps**2 - d @ d},
                {"type": "ineq", "fun": lambda d, xi=xi: flip @ d + xi},
                {"type": "ineq", "fun": lambda d, xi=xi: 1 - xi - flip @ d}]
        best = minimize(lambda d, vi=vi: ((d - vi) ** 2).sum(), np.zeros(16), constraints=cons, method="SLSQP",
                        options={"ftol": 1e-14, "maxiter": 1000})
        assert np.abs(best.x - y[i, 0].numpy().ravel()).max() < 1e-5
    # random points of the intersection: a point of the flipped box shrunk towards 0 (in both sets)
    w = dct_flip(torch.rand(2000, 4, 1, 4, 4, generator=g, dtype=torch.float64)) - u
    w = w * (eps / norms(w.flatten(0, 1)).view(2000, 4, 1, 1, 1)).clamp(max=1)
    w = w * torch.rand(2000, 4, 1, 1, 1, generator=g, dtype=torch.float64)
    assert ((v - y) * (w - y)).flatten(2).sum(-1).max() <= 1e-4
    # a point already in the intersection is a fixed point
    assert torch.allclose(dykstra(w[0], ball, box, n_iter=20), w[0], atol=1e-12)


def test_pgd_stays_in_the_ball_and_the_pixel_box():
    x = edge_images(16, 8, seed=4)
    y = torch.arange(16) % 10
    net = tiny_net(8).eval()
    eps = 1.5
    project = constraint_projection((0.0, 1.0), eps)
    delta = pgd_l2(net, x, y, eps=eps, steps=10, step_size=0.5, project=project,
                   generator=torch.Generator().manual_seed(0))
    assert norms(delta).max() <= eps * (1 + 1e-5)
    assert (x + delta).min() >= 0 and (x + delta).max() <= 1
    assert norms(delta).min() > 0


def test_pgd_on_flipped_images_keeps_the_raw_image_valid():
    x = edge_images(16, 8, seed=5)
    u = dct_flip(x)
    y = torch.arange(16) % 10
    net = tiny_net(8).eval()
    eps = 2.0
    project = constraint_projection((-4.0, 4.0), eps, dykstra_iters=20, orthogonal=FLIP)
    delta = pgd_l2(net, u, y, eps=eps, steps=10, step_size=0.7, project=project,
                   generator=torch.Generator().manual_seed(0))
    assert norms(delta).max() <= eps * (1 + 1e-4)
    raw = dct_flip(u + delta)
    assert raw.min() >= -1e-4 and raw.max() <= 1 + 1e-4
    assert norms(delta).min() > 0


def test_pgd_raises_the_loss_and_leaves_the_model_alone(digits):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(net(digits.train_x), digits.train_y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    x, y = digits.test_x[:200], digits.test_y[:200]
    stats = net[2].running_mean.clone()
    net.train()
    project = constraint_projection((0.0, 1.0), 0.5)
    for start in (False, True):
        delta = pgd_l2(net, x, y, eps=0.5, steps=7, step_size=2.5 * 0.5 / 7, random_start=start, project=project)
        assert net.training  # mode restored
        with torch.no_grad():
            net.eval()
            clean, adv = F.cross_entropy(net(x), y), F.cross_entropy(net(x + delta), y)
            net.train()
        assert adv > 2 * clean
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(net[2].running_mean, stats)  # the attack ran in eval mode


def test_recipe_validates_its_arguments():
    r = AdversarialOneCycleSGD(epsilon=1.0)
    assert (r.epochs, r.batch_size, r.lr_max, r.steps, r.random_start) == (30, 128, 0.21, 7, True)
    assert r.alpha == pytest.approx(2.5 / 7) and r.lr_at(12) == pytest.approx(0.21)
    assert AdversarialOneCycleSGD(epsilon=1.0, step_size=0.1).alpha == 0.1
    for bad in ({"epsilon": 0.0}, {"epsilon": -1.0}, {"epsilon": 1.0, "steps": 0},
                {"epsilon": 1.0, "step_size": 0.0}, {"epsilon": 1.0, "dykstra_iters": 0}):
        with pytest.raises(BoundaryError, match="AdversarialOneCycleSGD needs"):
            AdversarialOneCycleSGD(**bad)


def test_adversarial_training_runs_on_flipped_data(digits):
    small = ImageData("digits", digits.train_x[:256], digits.train_y[:256], digits.test_x[:64],
                      digits.test_y[:64], digits.classes)
    data = apply_variant(small, FLIP)
    net = tiny_net(8)
    recipe = AdversarialOneCycleSGD(epsilon=0.5, epochs=1, batch_size=64, steps=2)
    curve = recipe.fit(net, data, seed=0, device=torch.device("cpu"), progress=False)
    assert len(curve) == 1 and not net.training and curve["train_loss"].notna().all()


def test_adversarial_config_composes():
    cfg = cfg_for("training=adversarial", "dataset=cifar10")
    assert cfg.training.name == "adversarial" and cfg.training.recipe.epsilon == 1.0
    assert cfg_for("training=adversarial", "dataset=mnist").training.recipe.epsilon == 2.0
    assert cfg_for("training=adversarial", "dataset=fashion_mnist").training.recipe.epsilon == 2.0
    assert cfg_for("training=adversarial").training.recipe.epsilon == 0.5  # digits
    cfg = cfg_for("training=adversarial", "dataset=mnist", "dataset.variant=flip", "training.recipe.steps=40")
    recipe = instantiate(cfg.training.recipe)
    assert isinstance(recipe, AdversarialOneCycleSGD) and cfg.dataset.variant == "flip"
    assert (recipe.epsilon, recipe.steps, recipe.step_size, recipe.dykstra_iters) == (2.0, 40, None, 20)
    assert recipe.alpha == pytest.approx(2.5 * 2.0 / 40)
    reference = cfg_for("training=reference").training.recipe
    for key, value in reference.items():  # the reference numbers, one implementation of the schedule
        assert cfg.training.recipe[key] == value or key == "_target_"


@pytest.mark.slow
def test_adversarial_training_widens_the_margin(tmp_path, digits):
    """Twins on digits (small_cnn, same seed, 8 epochs each): the robust model's median full-space
    DeepFool margin over 200 test images was 1.63x the standard one's (0.886 vs 0.543; 1.61-1.72x
    for 6-30 epochs); the test takes ~15-40 s on 2 cores depending on load."""
    medians = {}
    for training in ("reference", "adversarial"):
        cfg = cfg_for(f"training={training}", f"paths.cache_dir={tmp_path}", "training.recipe.epochs=8", "device=cpu")
        obtained = obtain_model(cfg, digits, torch.device("cpu"), progress=False)
        model, info = obtained.model, obtained.provenance
        assert info["test_accuracy"] > 0.95 and not model.training
        result = deepfool(model, digits.test_x[:200], DeepFoolParams(candidates=10))
        assert result.converged.all()
        medians[training] = float(result.margin.median())
    assert medians["adversarial"] >= 1.3 * medians["reference"], medians


def test_flip_projection_runs_dykstra_on_the_raw_side_with_the_same_result():
    # dct_flip is orthogonal and keeps the ball: Dykstra in the raw domain equals Dykstra in the flipped one
    x = edge_images(6, 8, seed=9).double()
    u = dct_flip(x)
    delta = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    eps = 1.5
    got = constraint_projection((-4.0, 4.0), eps, dykstra_iters=30, orthogonal=FLIP)(delta, u)
    flipped = dykstra(delta, lambda t: project_l2_ball(t, eps), lambda t: project_flipped_box(t, u), n_iter=30)
    assert torch.allclose(got, project_l2_ball(flipped, eps), atol=1e-10)
