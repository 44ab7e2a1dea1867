"""The margin experiment's own logic: seeded sample choice and its checks."""

from __future__ import annotations

import pytest
import torch

from boundary_cli.errors import BoundaryError
from boundary_cli.experiments.margin import select_samples


def test_samples_are_a_seeded_prefix_shared_by_every_run():
    a = select_samples(500, 100, 0)
    assert a.shape == (100,) and torch.equal(a, a.sort().values) and a.unique().numel() == 100
    assert torch.equal(a, select_samples(500, 100, 0))
    assert set(select_samples(500, 20, 0).tolist()) <= set(a.tolist())  # fewer samples: a subset
    assert not torch.equal(a, select_samples(500, 100, 1))
    assert torch.equal(select_samples(500, "all", 3), torch.arange(500))


def test_only_eligible_samples_and_too_many():
    eligible = torch.arange(50) % 2 == 0
    idx = select_samples(50, 10, 0, eligible)
    assert eligible[idx].all() and idx.numel() == 10
    assert torch.equal(select_samples(50, "all", 0, eligible), torch.arange(0, 50, 2))
    with pytest.raises(BoundaryError, match="only 25 correctly classified"):
        select_samples(50, 26, 0, eligible)
    with pytest.raises(BoundaryError, match="only 50 test images"):
        select_samples(50, 51, 0)
