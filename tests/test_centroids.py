"""Class centroids and own-class distances on points at known positions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from boundary_cli.geometry.centroids import class_centroids, own_class_distances

# Two-pixel images (1, 1, 2); layer "1" is the ReLU of the pixels, so the two centroid spaces differ:
# class 0 holds (1, -1) and (-1, 3): mean image (0, 1), ReLU of it (0, 1), mean of the ReLUs (0.5, 1.5).
# class 1 holds (-2, 4) alone; class 2 holds nothing.
CX = torch.tensor([[1.0, -1.0], [-1.0, 3.0], [-2.0, 4.0]]).view(3, 1, 1, 2)
CLABEL = torch.tensor([0, 0, 1])
X = torch.tensor([[2.0, 2.0], [0.0, 0.0], [5.0, 5.0]]).view(3, 1, 1, 2)
OWN = torch.tensor([0, 1, 2])


def model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.ReLU()).eval()


def test_centroids_in_input_and_layer_space():
    c, present = class_centroids(model(), CX, CLABEL, ["input", "1"], "input", 3)
    assert present.tolist() == [True, True, False]
    assert c["input"][:2].tolist() == [[0.0, 1.0], [-2.0, 4.0]]
    assert c["1"][:2].tolist() == [[0.0, 1.0], [0.0, 4.0]]
    c, present = class_centroids(model(), CX, CLABEL, ["input", "1"], "layer", 3)
    assert present.tolist() == [True, True, False]
    assert c["input"][:2].tolist() == [[0.0, 1.0], [-2.0, 4.0]]
    assert c["1"][:2].tolist() == [[0.5, 1.5], [0.0, 4.0]]


@pytest.mark.parametrize("space, relu_own0", [("input", 5.0), ("layer", 2.5)])
def test_own_class_distances_are_squared_distances_to_the_own_centroid(space, relu_own0):
    d = own_class_distances(model(), X, OWN, CX, CLABEL, ["input", "1"], space, 3)
    assert d.shape == (2, 3)
    # (2, 2) to (0, 1): 4 + 1; ReLU (2, 2) to (0, 1) or (0.5, 1.5); (0, 0) to (-2, 4): 20, ReLU to (0, 4): 16
    assert d[:, :2].tolist() == [[5.0, 20.0], [relu_own0, 16.0]]
    assert all(math.isnan(v) for v in d[:, 2].tolist())  # class 2 has no centroid image


def test_unknown_space_is_refused():
    with pytest.raises(ValueError, match="centroid space"):
        class_centroids(model(), CX, CLABEL, ["input"], "pixel", 3)
