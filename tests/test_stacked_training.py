"""Stacked zoo training (training/stacked.py) equals training each member alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from boundary_cli.models.lenet5 import lenet5
from boundary_cli.training.stacked import fit_stacked, member_order, stack_members
from boundary_cli.training.stacked_optimizer import StackedOptimizer

MEMBERS = [  # (optimizer, lr, weight decay, init, seed)
    ("sgd", 5e-2, 0.0, "xavier_uniform", 0),
    ("adam", 5e-3, 5e-2, "default", 1),
    ("sgd", 1e-1, 1e-1, "kaiming_uniform", 42),
]


def build(init: str, seed: int):
    torch.manual_seed(seed)
    return lenet5(1, 10, (28, 28), init=init).eval()


def alone(kind, lr, wd, init, seed, x, y, batch_size, epochs):
    net = build(init, seed)
    opt = (torch.optim.SGD if kind == "sgd" else torch.optim.Adam)(net.parameters(), lr=lr, weight_decay=wd)
    snaps = {}
    for epoch in range(1, epochs + 1):
        order = member_order(len(x), seed, epoch)
        for b in range(0, len(x), batch_size):
            idx = order[b:b + batch_size]
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
        snaps[epoch] = {k: v.detach().clone() for k, v in net.named_parameters()}
    return snaps


def test_three_members_trained_at_once_equal_each_trained_alone():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(80, 1, 28, 28, generator=gen), torch.randint(0, 10, (80,), generator=gen)
    params, buffers = stack_members([build(init, seed) for _, _, _, init, seed in MEMBERS])
    opt = StackedOptimizer(3, kinds=[m[0] for m in MEMBERS], lr=[m[1] for m in MEMBERS],
                           weight_decay=[m[2] for m in MEMBERS])
    epochs_seen = []
    kept = fit_stacked(build("default", 0), params, x, y, opt, [m[4] for m in MEMBERS], batch_size=32, epochs=3,
                       snapshots=[1], buffers=buffers, on_epoch=epochs_seen.append)
    assert sorted(kept) == [1, 3] and epochs_seen == [1, 2, 3]
    for i, member in enumerate(MEMBERS):
        ref = alone(*member, x, y, batch_size=32, epochs=3)
        for epoch in (1, 3):
            for name, value in ref[epoch].items():
                torch.testing.assert_close(kept[epoch][name][i], value, rtol=1e-4, atol=1e-5)
    assert not torch.equal(kept[3]["fc3.weight"][0], params["fc3.weight"][0])  # it did train


def test_a_members_order_depends_on_its_seed_and_epoch_only():
    a = member_order(50, 3, 1)
    assert sorted(a.tolist()) == list(range(50)) and torch.equal(a, member_order(50, 3, 1))
    assert not torch.equal(a, member_order(50, 3, 2)) and not torch.equal(a, member_order(50, 4, 1))
