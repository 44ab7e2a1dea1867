"""Dataset variants: exact declared ranges, whole-tensor transforms, input checks, normalisation."""

from __future__ import annotations

import pytest
import torch

from boundary_cli.data.images import ImageData
from omegaconf import OmegaConf

from boundary_cli.data.variants import (
    FLIP,
    NONE,
    LowPass,
    apply_variant,
    normalization_stats,
    variant_from_config,
)
from boundary_cli.errors import BoundaryError
from boundary_cli.geometry.dct import dct2, dct_flip, low_pass
from boundary_cli.geometry.pgd import constraint_projection, dykstra, project_box, project_l2_ball


def data(c=1, n=8, count=20, seed=0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(count, c, n, n, generator=g)
    y = torch.arange(count) % 10
    return ImageData("toy", x, y, x[:5].clone(), y[:5].clone(), [str(i) for i in range(10)])


@pytest.mark.parametrize("variant,mode", [("flip", "square"), ("low_pass", "square"), ("low_pass", "rows_only")])
def test_declared_range_is_tight(variant, mode):
    n, bw = 6, 3
    lo, hi = variant_from_config(variant, {"bandwidth": bw, "mode": mode}).declared_range(n, n)
    fn = dct_flip if variant == "flip" else (lambda t: low_pass(t, bw, mode))
    # the extreme images: for each output pixel, 1 where its weight is positive (max) or negative (min)
    eye = torch.eye(n * n, dtype=torch.float64).view(n * n, n, n)
    weights = fn(eye).view(n * n, n * n)  # weights[input pixel, output pixel]
    best_max = fn((weights > 0).double().T.reshape(n * n, n, n)).view(n * n, n * n).diagonal().max()
    best_min = fn((weights < 0).double().T.reshape(n * n, n, n)).view(n * n, n * n).diagonal().min()
    assert hi == pytest.approx(float(best_max), abs=1e-9) and lo == pytest.approx(float(best_min), abs=1e-9)
    rand = fn(torch.rand(500, n, n, dtype=torch.float64))
    assert rand.min() >= lo - 1e-9 and rand.max() <= hi + 1e-9
    assert NONE.declared_range(n, n) == (0.0, 1.0)


def test_flip_variant_transforms_both_splits_once_and_declares_its_range():
    raw = data(c=3)
    out = apply_variant(raw, FLIP)
    assert torch.allclose(out.train_x, dct_flip(raw.train_x)) and torch.allclose(out.test_x, dct_flip(raw.test_x))
    assert out.variant.name == "flip" and out.value_range[0] < 0 < 1 < out.value_range[1]
    assert torch.allclose(dct_flip(out.train_x), raw.train_x, atol=1e-5)
    assert apply_variant(raw, NONE) is raw


def test_low_pass_variant_defaults_to_half_the_size():
    raw = data(n=8)
    out = apply_variant(raw, LowPass())
    assert torch.allclose(out.train_x, low_pass(raw.train_x, 4))
    rows = apply_variant(raw, LowPass(2, "rows_only"))
    assert torch.allclose(rows.test_x, low_pass(raw.test_x, 2, "rows_only"))


def test_bad_variants_and_inputs_are_refused():
    raw = data()
    with pytest.raises(BoundaryError, match="none, flip, low_pass"):
        variant_from_config("blur")
    with pytest.raises(BoundaryError, match="square, rows_only"):
        variant_from_config("low_pass", {"bandwidth": 2, "mode": "circle"})
    with pytest.raises(BoundaryError, match="bandwidth"):
        apply_variant(raw, variant_from_config("low_pass", {"bandwidth": 9}))
    nan = data()
    nan.test_x[1, 0, 0, 0] = float("nan")
    with pytest.raises(BoundaryError, match="NaN"):
        apply_variant(nan, FLIP)
    big = data()
    big.train_x *= 255
    with pytest.raises(BoundaryError, match="outside the range"):
        apply_variant(big, NONE)


def test_normalization_statistics():
    raw = data(c=3)
    mean, std = normalization_stats(raw, None, None)
    assert torch.allclose(mean, raw.train_x.mean(dim=(0, 2, 3))) and mean.shape == (3,)
    m, s = normalization_stats(raw, [0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    assert torch.allclose(m, torch.tensor([0.1, 0.2, 0.3])) and torch.allclose(s, torch.full((3,), 0.5))
    flipped = apply_variant(raw, FLIP)
    m, s = normalization_stats(flipped, [0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    assert m.shape == (3, 8, 8)  # the flipped constant image: exactly the flip of normalised data
    x = raw.test_x
    assert torch.allclose((dct_flip(x) - m) / s.view(3, 1, 1), dct_flip((x - torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)) / 0.5),
                          atol=1e-5)
    lp = apply_variant(raw, LowPass())
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
    flipped = apply_variant(raw, FLIP)
    m_raw, s_raw = normalization_stats(raw, None, None)
    m, s = normalization_stats(flipped, None, None)
    assert m.shape == (c, 8, 8) and torch.allclose(s, s_raw, atol=1e-6)
    x = raw.test_x
    normalised_then_flipped = dct_flip((x - m_raw.view(c, 1, 1)) / s_raw.view(c, 1, 1))
    assert torch.allclose((dct_flip(x) - m) / s.view(c, 1, 1), normalised_then_flipped, atol=1e-5)
    own = flipped.train_x.mean(dim=(0, 2, 3))  # the old semantics: the flipped tensor's own statistics
    assert not torch.allclose((dct_flip(x) - own.view(c, 1, 1)) / s.view(c, 1, 1), normalised_then_flipped, atol=1e-3)


def as_matrix(fn, h: int, w: int) -> torch.Tensor:
    """The (h*w, h*w) matrix of a linear map of (h, w) images, column k = fn(k-th basis image)."""
    eye = torch.eye(h * w, dtype=torch.float64).view(h * w, h, w)
    return fn(eye).view(h * w, h * w).T


@pytest.mark.parametrize("h,w", [(6, 6), (5, 8)])
def test_flip_is_an_orthogonal_involution(h, w):
    m = as_matrix(FLIP.apply, h, w)
    assert torch.allclose(m.T @ m, torch.eye(h * w, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(m @ m, torch.eye(h * w, dtype=torch.float64), atol=1e-12)
    x = torch.rand(10, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for v in (FLIP, NONE):
        assert v.orthogonal
        assert torch.allclose(v.inverse(v.apply(x)), x, atol=1e-12) and torch.allclose(v.apply(v.inverse(x)), x, atol=1e-12)
        assert torch.allclose(v.apply(x).flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), atol=1e-12)
    assert torch.equal(NONE.apply(x), x) and not LowPass().orthogonal


@pytest.mark.parametrize("variant", [LowPass(), LowPass(3), LowPass(2, "rows_only")])
def test_low_pass_is_an_idempotent_symmetric_projection(variant):
    m = as_matrix(variant.apply, 8, 8)
    assert torch.allclose(m @ m, m, atol=1e-12) and torch.allclose(m, m.T, atol=1e-12)
    keep = variant.bandwidth or 4  # kept frequencies per axis; rows_only keeps every column frequency
    assert round(float(m.trace())) == keep * (keep if variant.mode == "square" else 8)
    with pytest.raises(ValueError, match="not invertible"):
        variant.inverse(torch.zeros(1, 8, 8))


@pytest.mark.parametrize("variant", [NONE, FLIP, LowPass(), LowPass(2), LowPass(3, "rows_only")])
@pytest.mark.parametrize("h,w", [(8, 8), (6, 10)])
def test_declared_ranges_contain_the_outputs_of_unit_box_images(variant, h, w):
    lo, hi = variant.declared_range(h, w)
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.rand(400, 2, h, w, generator=g, dtype=torch.float64),
                   torch.randint(0, 2, (400, 2, h, w), generator=g).double()])  # vertices of the box too
    y = variant.apply(x)
    assert y.min() >= lo - 1e-9 and y.max() <= hi + 1e-9
    assert variant is not NONE or (lo, hi) == (0.0, 1.0)


def test_variant_is_built_once_from_config_values():
    node = OmegaConf.create({"variant": "low_pass", "low_pass": {"bandwidth": 3, "mode": "rows_only"}})
    assert variant_from_config(node.variant, node.low_pass) == LowPass(3, "rows_only")
    assert variant_from_config("flip", node.low_pass) is FLIP and variant_from_config("none") is NONE
    assert variant_from_config("low_pass") == LowPass(None, "square")
    assert [str(v) for v in (NONE, FLIP, LowPass(3))] == ["none", "flip", "low_pass"]
    with pytest.raises(BoundaryError, match=r"unknown dataset.variant='blur'; valid: none, flip, low_pass$"):
        variant_from_config("blur")
    with pytest.raises(BoundaryError, match="bandwidth=0 must be between 1"):
        LowPass(0)
    with pytest.raises(BoundaryError, match=r"bandwidth=9 must be between 1 and the image size \(8\)"):
        LowPass(9).check_size(8, 12)
    # PGD's map: only a non-trivial orthogonal variant has one
    assert FLIP.orthogonal_map is FLIP and NONE.orthogonal_map is None and LowPass().orthogonal_map is None


def test_pgd_projection_through_the_flip_equals_the_flip_specific_one():
    """The projection given the variant's map equals, bit for bit, the one pgd.py computed for
    variant "flip" before it took a map (written out here with dct_flip), and the boxed one
    for the others."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(6, 2, 8, 8, generator=g, dtype=torch.float64)
    u = dct_flip(x)
    delta = 0.8 * torch.randn(6, 2, 8, 8, generator=g, dtype=torch.float64)
    eps, iters = 1.2, 15

    raw = dct_flip(u)
    d = dykstra(dct_flip(delta), lambda t: project_l2_ball(t, eps), lambda t: t.clamp(-raw, 1 - raw), iters)
    old = project_l2_ball(dct_flip(d), eps)
    got = constraint_projection(FLIP.declared_range(8, 8), eps, iters, orthogonal=FLIP.orthogonal_map)(delta, u)
    assert torch.equal(got, old)
    assert (dct_flip(u + got) >= -1e-12).all() and (dct_flip(u + got) <= 1 + 1e-12).all()  # a valid raw image
    assert not torch.allclose(got, project_box(project_l2_ball(delta, eps), u, *FLIP.declared_range(8, 8)))
    for variant in (NONE, LowPass()):
        boxed = constraint_projection(variant.declared_range(8, 8), eps, iters, orthogonal=variant.orthogonal_map)
        assert torch.equal(boxed(delta, x), project_box(project_l2_ball(delta, eps), x, *variant.declared_range(8, 8)))


def test_normalisation_mean_follows_the_variant():
    mean = torch.tensor([0.1, 0.7])
    assert torch.equal(NONE.carry_mean(mean, 4, 4), mean)  # per channel, as before variants were objects
    carried = FLIP.carry_mean(mean, 4, 4)
    assert carried.shape == (2, 4, 4)
    assert torch.allclose(carried, dct_flip(mean.view(2, 1, 1).expand(2, 4, 4)))
    # the flipped constant image c has one DCT coefficient, at the highest frequency: c * sqrt(HW)
    expected = torch.zeros(2, 4, 4, dtype=torch.float64)
    expected[:, 3, 3] = mean.double() * 4
    assert torch.allclose(dct2(carried.double()), expected, atol=1e-6)
