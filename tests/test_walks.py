"""Fixed-step walks: closed-form crossings of affine models, caps, class traces, the own slot, and
agreement with a plain per-row loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from boundary_cli.geometry.walks import (
    CAPPED,
    FLIPPED,
    OWN,
    ZERO_GRAD,
    WalkParams,
    nearest_flip,
    walk,
    walk_to_classes,
)


def affine(weight: torch.Tensor, bias: torch.Tensor, shape=(1, 4, 4)) -> nn.Module:
    lin = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return nn.Sequential(nn.Flatten(), lin).eval()


@pytest.mark.parametrize("mode", ["targeted", "untargeted", "flipstop"])
def test_two_class_affine_crosses_where_the_closed_form_says(mode):
    torch.manual_seed(0)
    d = 16
    w = torch.randn(2, d)
    model = affine(w, torch.zeros(2))
    x = torch.rand(64, 1, 4, 4)
    logits = model(x)
    src = logits.argmax(1)
    other = 1 - src
    normal = w[other] - w[src]  # (B, d): the direction that raises the other class fastest
    dist = (logits.gather(1, src[:, None]) - logits.gather(1, other[:, None])).squeeze(1) / normal.norm(dim=1)
    eta = 0.05
    res = walk(model, x, None if mode == "untargeted" else other, WalkParams(mode=mode, eta=eta, max_steps=10_000))
    assert bool((res.status == FLIPPED).all())
    assert bool((res.end_class == other).all())
    # the walk crosses within one step of the exact boundary distance...
    assert bool((res.l2 >= dist - 1e-4).all()) and bool((res.l2 <= dist + eta + 1e-4).all())
    assert torch.allclose(res.l2, res.steps * eta, rtol=1e-4)
    # ... in a straight line along the boundary's normal
    moved = (res.x_end - x).flatten(1)
    cos = F.cosine_similarity(moved, normal, dim=1)
    assert bool((cos > 1 - 1e-4).all())
    assert torch.allclose(res.l2_sq, res.l2**2)


def scalar_model() -> nn.Module:
    """Three classes on a scalar input x (a 1x1x1 image): class 0 for x < 1.01, class 1 on
    (1.01, 2.01), class 2 beyond."""
    return affine(torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([0.0, -1.01, -3.02]), shape=(1, 1, 1))


def test_class_trace_records_every_class_met_on_the_way():
    model = scalar_model()
    x = torch.zeros(1, 1, 1, 1)
    res = walk(model, x, torch.tensor([2]), WalkParams(mode="targeted", eta=0.05, max_steps=1000))
    assert res.status.item() == FLIPPED
    assert res.steps.item() == 41 and math.isclose(res.l2.item(), 2.05, rel_tol=1e-5)
    assert res.first_exit.item() == 1 and res.first_exit_step.item() == 21
    assert res.visited[0].tolist() == [True, True, True]
    # flip-stop toward 2 stops at the first class change: class 1, a hit on the way
    stop = walk(model, x, torch.tensor([2]), WalkParams(mode="flipstop", eta=0.05))
    assert stop.status.item() == FLIPPED and stop.end_class.item() == 1 and stop.steps.item() == 21
    assert stop.visited[0].tolist() == [True, True, False]
    # untargeted ascends the loss of class 0: same first exit
    up = walk(model, x, params=WalkParams(mode="untargeted", eta=0.05))
    assert up.end_class.item() == 1 and up.steps.item() == 21


def test_cap_stops_a_walk_that_cannot_flip():
    model = scalar_model()
    x = torch.zeros(2, 1, 1, 1)
    res = walk(model, x, torch.tensor([2, 1]), WalkParams(eta=0.05, max_steps=7))
    assert res.status.tolist() == [CAPPED, CAPPED] and res.steps.tolist() == [7, 7]
    assert torch.allclose(res.l2, torch.full((2,), 0.35))
    # a box the boundary lies outside of: the reference would loop for ever
    boxed = walk(model, x, torch.tensor([2, 1]), WalkParams(eta=0.05, max_steps=200, clip=(0.0, 0.5)))
    assert boxed.status.tolist() == [CAPPED, CAPPED]
    assert float(boxed.x_end.max()) <= 0.5


def test_zero_gradient_stops():
    model = affine(torch.zeros(2, 16), torch.tensor([1.0, 0.0]))  # constant logits
    res = walk(model, torch.rand(3, 1, 4, 4), torch.ones(3, dtype=torch.long), WalkParams(eta=0.1))
    assert res.status.tolist() == [ZERO_GRAD] * 3 and res.steps.tolist() == [0] * 3


def test_own_slot_is_not_walked_in_any_targeted_mode():
    model = scalar_model()
    x = torch.tensor([0.0, 1.5, 3.0]).view(3, 1, 1, 1)  # predicted 0, 1, 2
    for mode in ("targeted", "flipstop"):
        res = walk_to_classes(model, x, params=WalkParams(mode=mode, eta=0.05, max_steps=500))
        assert res.status.shape == (3, 3)
        own = res.status.diagonal()
        assert own.tolist() == [OWN] * 3
        assert res.l2.diagonal().tolist() == [0.0] * 3 and res.steps.diagonal().tolist() == [0] * 3
        assert bool((res.status.masked_fill(torch.eye(3, dtype=torch.bool), FLIPPED) == FLIPPED).all())
    res = walk_to_classes(model, x, params=WalkParams(eta=0.05))
    slot, dist = nearest_flip(res.status, res.l2)
    assert slot.tolist() == [1, 0, 1] or slot.tolist() == [1, 2, 1]
    assert bool((dist > 0).all())


def test_nearest_flip_with_nothing_flipped():
    model = scalar_model()
    res = walk_to_classes(model, torch.zeros(1, 1, 1, 1), params=WalkParams(eta=0.05, max_steps=2))
    slot, dist = nearest_flip(res.status, res.l2)
    assert slot.tolist() == [-1] and math.isinf(dist.item())


def test_nearest_flip_on_planted_statuses():
    # image 0: flips at slots 1 (d 3) and 2 (d 2), a shorter capped walk at slot 3 (ignored);
    # image 1: only its own slot and a zero-gradient walk; image 2: one flip at slot 0
    status = torch.tensor([[OWN, FLIPPED, FLIPPED, CAPPED], [ZERO_GRAD, OWN, ZERO_GRAD, CAPPED],
                           [FLIPPED, CAPPED, OWN, ZERO_GRAD]])
    dist = torch.tensor([[0.0, 3.0, 2.0, 1.0], [0.5, 0.0, 0.1, 7.0], [9.0, 1.0, 0.0, 0.2]])
    slot, d = nearest_flip(status, dist)
    assert slot.tolist() == [2, -1, 0]
    assert d.tolist() == [2.0, float("inf"), 9.0]
    slot, d = nearest_flip(status[None], dist[None] ** 2)  # any leading shape, any distance
    assert slot.tolist() == [[2, -1, 0]] and d.tolist() == [[4.0, float("inf"), 81.0]]


def loop_walk(model, x, target, eta, max_steps):
    """Plain per-row transcription of the targeted walk (the reference's algorithm plus a cap)."""
    out = []
    for xi, t in zip(x, target):
        cur = xi[None].clone()
        src = int(model(cur).argmax())
        steps = 0
        if t == src:
            out.append((0, 0.0))
            continue
        while True:
            cur.requires_grad_(True)
            logits = model(cur)
            if int(logits.argmax()) == t or steps >= max_steps:
                break
            (g,) = torch.autograd.grad(F.cross_entropy(logits, torch.tensor([int(t)])), cur)
            cur = (cur - eta * g / g.norm()).detach()
            steps += 1
        out.append((steps, float((cur.detach() - xi).norm())))
    return out


def test_batched_walk_matches_a_per_row_loop_with_refill():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5)).eval()
    x = torch.rand(6, 1, 6, 6)
    res = walk_to_classes(model, x, params=WalkParams(eta=0.05, max_steps=300), batch_rows=7)  # 30 rows through 7 slots
    expect = loop_walk(model, x.repeat_interleave(5, 0), torch.arange(5).repeat(6), 0.05, 300)
    steps = [s for s, _ in expect]
    assert res.steps.reshape(-1).tolist() == steps
    assert torch.allclose(res.l2.reshape(-1), torch.tensor([d for _, d in expect]), rtol=1e-4, atol=1e-5)
    assert res.n_forward == res.n_backward == sum(s + 1 for s in steps)


def test_model_is_left_untouched():
    model = scalar_model()
    before = [p.clone() for p in model.parameters()]
    walk(model, torch.zeros(1, 1, 1, 1), torch.tensor([2]))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("kwargs, match", [
    (dict(eta=0.0), "eta"),
    (dict(eta=-1.0), "eta"),
    (dict(mode="sideways"), "mode"),
    (dict(target=torch.tensor([5])), "targets must lie"),
    (dict(target=None), "needs a target"),
])
def test_bad_arguments(kwargs, match):
    args = dict(target=torch.tensor([1]), eta=0.05, mode="targeted") | kwargs
    with pytest.raises(ValueError, match=match):
        walk(scalar_model(), torch.zeros(1, 1, 1, 1), args.pop("target"), WalkParams(**args))


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        walk(scalar_model().train(), torch.zeros(1, 1, 1, 1), torch.tensor([1]))
