"""Dataset variants: exact declared ranges, whole-tensor transforms, input checks, normalisation."""

from __future__ import annotations

import pytest
import torch

from boundary_cli.data.images import ImageData
from boundary_cli.data.variants import (
    apply_variant,
    declared_range,
    normalization_stats,
)
from boundary_cli.errors import BoundaryError
from boundary_cli.geometry.dct import dct_flip, low_pass


def data(c=1, n=8, count=20, seed=0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(count, c, n, n, generator=g)
    y = torch.arange(count) % 10
    return ImageData("toy", x, y, x[:5].clone(), y[:5].clone(), [str(i) for i in range(10)])


@pytest.mark.parametrize("variant,mode", [("flip", "square"), ("low_pass", "square"), ("low_pass", "rows_only")])
def test_declared_range_is_tight(variant, mode):
    n, bw = 6, 3
    lo, hi = declared_range(variant, n, n, bw, mode)
    fn = dct_flip if variant == "flip" else (lambda t: low_pass(t, bw, mode))
    # the extreme images: for each output pixel, 1 where its weight is positive (max) or negative (min)
    eye = torch.eye(n * n, dtype=torch.float64).view(n * n, n, n)
    weights = fn(eye).view(n * n, n * n)  # weights[input pixel, output pixel]
    best_max = fn((weights > 0).double().T.reshape(n * n, n, n)).view(n * n, n * n).diagonal().max()
    best_min = fn((weights < 0).double().T.reshape(n * n, n, n)).view(n * n, n * n).diagonal().min()
    assert hi == pytest.approx(float(best_max), abs=1e-9) and lo == pytest.approx(float(best_min), abs=1e-9)
    rand = fn(torch.rand(500, n, n, dtype=torch.float64))
    assert rand.min() >= lo - 1e-9 and rand.max() <= hi + 1e-9
    assert declared_range("none", n, n) == (0.0, 1.0)


def test_flip_variant_transforms_both_splits_once_and_declares_its_range():
    raw = data(c=3)
    out = apply_variant(raw, "flip")
    assert torch.allclose(out.train_x, dct_flip(raw.train_x)) and torch.allclose(out.test_x, dct_flip(raw.test_x))
    assert out.variant == "flip" and out.value_range[0] < 0 < 1 < out.value_range[1]
    assert torch.allclose(dct_flip(out.train_x), raw.train_x, atol=1e-5)
    assert apply_variant(raw, "none") is raw


def test_low_pass_variant_defaults_to_half_the_size():
    raw = data(n=8)
    out = apply_variant(raw, "low_pass")
    assert torch.allclose(out.train_x, low_pass(raw.train_x, 4))
    rows = apply_variant(raw, "low_pass", 2, "rows_only")
    assert torch.allclose(rows.test_x, low_pass(raw.test_x, 2, "rows_only"))


def test_bad_variants_and_inputs_are_refused():
    raw = data()
    with pytest.raises(BoundaryError, match="none, flip, low_pass"):
        apply_variant(raw, "blur")
    with pytest.raises(BoundaryError, match="square, rows_only"):
        apply_variant(raw, "low_pass", 2, "circle")
    with pytest.raises(BoundaryError, match="bandwidth"):
        apply_variant(raw, "low_pass", 9)
    nan = data()
    nan.test_x[1, 0, 0, 0] = float("nan")
    with pytest.raises(BoundaryError, match="NaN"):
        apply_variant(nan, "flip")
    big = data()
    big.train_x *= 255
    with pytest.raises(BoundaryError, match="outside the range"):
        apply_variant(big, "none")


def test_normalization_statistics():
    raw = data(c=3)
    mean, std = normalization_stats(raw, None, None)
    assert torch.allclose(mean, raw.train_x.mean(dim=(0, 2, 3))) and mean.shape == (3,)
    m, s = normalization_stats(raw, [0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    assert torch.allclose(m, torch.tensor([0.1, 0.2, 0.3])) and torch.allclose(s, torch.full((3,), 0.5))
    flipped = apply_variant(raw, "flip")
    m, s = normalization_stats(flipped, [0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    assert m.shape == (3, 8, 8)  # the flipped constant image: exactly the flip of normalised data
    x = raw.test_x
    assert torch.allclose((dct_flip(x) - m) / s.view(3, 1, 1), dct_flip((x - torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)) / 0.5),
                          atol=1e-5)
    lp = apply_variant(raw, "low_pass")
    m, _ = normalization_stats(lp, [0.1, 0.2, 0.3], [0.5, 0.5, 0.5])  # recomputed from the processed data
    assert torch.allclose(m, lp.train_x.mean(dim=(0, 2, 3)))
    with pytest.raises(BoundaryError, match="3 entries"):
        normalization_stats(raw, [0.1], [0.5])


@pytest.mark.parametrize("c", [1, 3])
def test_flipped_data_without_configured_statistics_is_normalised_as_the_flip_of_normalised_data(c):
    """digits / fashion_mnist configure no mean/std: the flipped model must still see exactly the
    flip of the standard model's normalised input (the raw data's per-channel mean and std; the
    reference subtracts the flipped DC image), not the flipped tensor's own statistics."""
    raw = data(c=c, count=200)
    flipped = apply_variant(raw, "flip")
    m_raw, s_raw = normalization_stats(raw, None, None)
    m, s = normalization_stats(flipped, None, None)
    assert m.shape == (c, 8, 8) and torch.allclose(s, s_raw, atol=1e-6)
    x = raw.test_x
    normalised_then_flipped = dct_flip((x - m_raw.view(c, 1, 1)) / s_raw.view(c, 1, 1))
    assert torch.allclose((dct_flip(x) - m) / s.view(c, 1, 1), normalised_then_flipped, atol=1e-5)
    own = flipped.train_x.mean(dim=(0, 2, 3))  # the old semantics: the flipped tensor's own statistics
    assert not torch.allclose((dct_flip(x) - own.view(c, 1, 1)) / s.view(c, 1, 1), normalised_then_flipped, atol=1e-3)
