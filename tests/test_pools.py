"""The image pools (data/pools.py): first-n and seeded index draws, uniform and Gaussian images."""

from __future__ import annotations

import pytest
import torch

from boundary_cli.data.pools import gaussian_images, split_indices, uniform_images


def test_split_indices_first_n_and_seeded():
    assert split_indices(10, 3).tolist() == [0, 1, 2]
    assert split_indices(10, 3, start=5).tolist() == [5, 6, 7]
    draw = split_indices(100, 10, seed=4)
    assert torch.equal(draw, split_indices(100, 10, seed=4)) and len(set(draw.tolist())) == 10
    assert torch.equal(draw, draw.sort().values)
    with pytest.raises(ValueError, match="split has 10"):
        split_indices(10, 3, start=8)
    with pytest.raises(ValueError, match="split has 5"):
        split_indices(5, 6, seed=0)


def test_uniform_images_fill_the_box():
    x = uniform_images(2000, (1, 4, 4), (-0.5, 1.5), seed=0)
    assert x.shape == (2000, 1, 4, 4) and float(x.min()) >= -0.5 and float(x.max()) <= 1.5
    assert abs(float(x.mean()) - 0.5) < 0.02
    assert torch.equal(x, uniform_images(2000, (1, 4, 4), (-0.5, 1.5), seed=0))


def test_gaussian_images_have_the_per_pixel_statistics():
    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(5000, 1, 3, 3, generator=gen) * torch.linspace(0.1, 1, 9).view(1, 1, 3, 3)
    x = gaussian_images(20000, ref, seed=1)
    assert torch.allclose(x.mean(0), ref.mean(0), atol=0.01)
    assert torch.allclose(x.std(0), ref.std(0), rtol=0.03)
    assert float(x.min()) < 0 or float(x.max()) > 1  # unclipped, as the reference
    clipped = gaussian_images(20000, ref, seed=1, clip=(0.0, 1.0))
    assert float(clipped.min()) >= 0 and float(clipped.max()) <= 1
