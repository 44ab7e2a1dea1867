"""The stacked optimizer (training/stacked_optimizer.py) against one torch optimizer per member."""

from __future__ import annotations

import pytest
import torch

from boundary_cli.training.stacked_optimizer import StackedOptimizer

MEMBERS = [  # (kind, lr, weight decay, momentum)
    ("adam", 1e-2, 0.0, 0.0),
    ("sgd", 5e-2, 0.1, 0.0),
    ("sgd", 1e-2, 0.05, 0.9),
    ("adam", 1e-3, 0.2, 0.0),
]


def torch_optimizer(kind, params, lr, wd, momentum):
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=momentum)


def test_each_member_moves_as_its_own_torch_optimizer():
    gen = torch.Generator().manual_seed(0)
    shapes = {"w": (3, 4), "b": (3,)}
    start = {k: torch.randn(len(MEMBERS), *s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    stacked = {k: v.clone() for k, v in start.items()}
    opt = StackedOptimizer(len(MEMBERS), kinds=[m[0] for m in MEMBERS], lr=[m[1] for m in MEMBERS],
                           weight_decay=[m[2] for m in MEMBERS], momentum=[m[3] for m in MEMBERS])
    alone = []
    for i, (kind, lr, wd, mom) in enumerate(MEMBERS):
        ps = {k: v[i].clone().requires_grad_(True) for k, v in start.items()}
        alone.append((ps, torch_optimizer(kind, list(ps.values()), lr, wd, mom)))
    for _ in range(6):
        grads = {k: torch.randn(len(MEMBERS), *s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
        opt.step(stacked, grads)
        for i, (ps, o) in enumerate(alone):
            for k, p in ps.items():
                p.grad = grads[k][i].clone()
            o.step()
    for i, (ps, _) in enumerate(alone):
        for k in shapes:
            torch.testing.assert_close(stacked[k][i], ps[k].detach(), rtol=1e-12, atol=1e-12)


def test_a_tensor_without_gradient_is_left_alone_and_bad_settings_are_refused():
    p = {"w": torch.ones(2, 3)}
    opt = StackedOptimizer(2, kinds="sgd", lr=0.1)
    opt.step(p, {"w": None})
    assert torch.equal(p["w"], torch.ones(2, 3))
    with pytest.raises(ValueError, match="kinds"):
        StackedOptimizer(2, kinds=["sgd", "rmsprop"])
    with pytest.raises(ValueError, match="lr"):
        StackedOptimizer(3, lr=[0.1, 0.2])


def test_stored_adam_moments_continue_as_torch_adam_would():
    gen = torch.Generator().manual_seed(1)
    p0 = torch.randn(5, generator=gen, dtype=torch.float64)
    ref = p0.clone().requires_grad_(True)
    torch_adam = torch.optim.Adam([ref], lr=1e-2)
    for _ in range(3):  # a training run's first steps
        ref.grad = torch.randn(5, generator=gen, dtype=torch.float64)
        torch_adam.step()
    st = torch_adam.state[ref]
    stacked = {"p": ref.detach().clone().unsqueeze(0).repeat(2, 1)}
    opt = StackedOptimizer(2, kinds="adam", lr=1e-2)
    opt.load_adam("p", st["step"], st["exp_avg"].expand(2, 5), st["exp_avg_sq"].expand(2, 5))
    g = torch.randn(5, generator=gen, dtype=torch.float64)
    ref.grad = g.clone()
    torch_adam.step()
    opt.step(stacked, {"p": g.expand(2, 5)})
    torch.testing.assert_close(stacked["p"][1], ref.detach(), rtol=1e-12, atol=1e-12)
