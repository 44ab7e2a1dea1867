"""The zoo over activation_analysis's grid (training/zoo.py): the grid, the seeded draw, shared
trajectories, and stacked training equal to one run at a time."""

from __future__ import annotations

import pytest
import torch

from boundary_cli.models.lenet5 import lenet5
from boundary_cli.training.zoo import GRID_SIZE, Member, draw_members, grid_members, train_zoo


def build(init: str, seed: int):
    torch.manual_seed(seed)
    return lenet5(1, 10, (28, 28), init=init).eval()


def test_the_grid_and_the_seeded_draw():
    members = grid_members()
    assert len(members) == GRID_SIZE == 8192 and len(set(members)) == 8192
    a = draw_members(20, seed=3)
    assert len(set(a)) == 20 and a == draw_members(20, seed=3) and a != draw_members(20, seed=4)
    assert draw_members(GRID_SIZE, 0) == members
    for bad in (0, GRID_SIZE + 1):
        with pytest.raises(ValueError, match="zoo size"):
            draw_members(bad, 0)


def test_stacked_equals_loop_and_members_that_differ_in_epochs_share_a_run():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(96, 1, 28, 28, generator=gen), torch.randint(0, 10, (96,), generator=gen)
    members = [Member("sgd", 5e-2, 0.0, 1, 0, "xavier_uniform", 32), Member("sgd", 5e-2, 0.0, 3, 0, "xavier_uniform", 32),
               Member("adam", 1e-2, 5e-2, 2, 1, "normal", 32), Member("sgd", 1e-1, 1e-1, 1, 42, "default", 64)]
    done = []
    stacked = train_zoo(build, members, x, y, mode="stacked", progress=done.append)
    looped = train_zoo(build, members, x, y, mode="loop")
    assert sum(done) == 4 and set(stacked) == set(members)
    for m in members:
        for k, v in stacked[m].items():
            torch.testing.assert_close(v, looped[m][k], rtol=1e-4, atol=1e-5)
    one_epoch_alone = train_zoo(build, members[:1], x, y)[members[0]]  # trained on its own, 1 epoch
    for k, v in one_epoch_alone.items():
        torch.testing.assert_close(stacked[members[0]][k], v, rtol=1e-4, atol=1e-5)
    assert not torch.equal(stacked[members[0]]["fc3.weight"], stacked[members[1]]["fc3.weight"])  # 1 vs 3 epochs


def test_auto_picks_one_of_the_two_modes_and_gives_the_same_weights():
    from boundary_cli.training.zoo import faster_mode

    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    members = [Member("sgd", 5e-2, 0.0, 1, s, "default", 32) for s in (0, 1)]
    assert faster_mode(build, x, y, members) in ("stacked", "loop")
    auto, loop = train_zoo(build, members, x, y, mode="auto"), train_zoo(build, members, x, y, mode="loop")
    for m in members:
        torch.testing.assert_close(auto[m]["fc1.weight"], loop[m]["fc1.weight"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="mode"):
        train_zoo(build, members, x, y, mode="parallel")
