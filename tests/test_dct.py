"""DCT transforms and block subspaces against scipy.fft, plus their algebraic properties."""

import numpy as np
import pytest
import scipy.fft
import torch

from boundary_cli.geometry.dct import (
    block_indicator,
    dct2,
    dct_flip,
    dct_matrix,
    diagonal_blocks,
    idct2,
    low_pass,
    masked_dct2,
    project,
)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 12, 12, generator=g, dtype=torch.float64)


def test_dct_matrix_is_orthonormal():
    for n in (1, 2, 8, 28, 32):
        d = dct_matrix(n, dtype=torch.float64)
        assert torch.allclose(d @ d.T, torch.eye(n, dtype=torch.float64), atol=1e-12)


def test_dct2_matches_scipy_and_inverts(images):
    ref = scipy.fft.dctn(images.numpy(), type=2, axes=(-2, -1), norm="ortho")
    assert np.allclose(dct2(images).numpy(), ref, atol=1e-12)
    assert torch.allclose(idct2(dct2(images)), images, atol=1e-12)
    rect = torch.rand(2, 5, 7, dtype=torch.float64)
    ref = scipy.fft.dctn(rect.numpy(), type=2, axes=(-2, -1), norm="ortho")
    assert np.allclose(dct2(rect).numpy(), ref, atol=1e-12)


def test_flip_matches_scipy_and_is_an_orthogonal_involution(images):
    c = scipy.fft.dctn(images.numpy(), axes=(-2, -1), norm="ortho")[..., ::-1, ::-1]
    ref = scipy.fft.idctn(c, axes=(-2, -1), norm="ortho")
    flipped = dct_flip(images)
    assert np.allclose(flipped.numpy(), ref, atol=1e-12)
    assert torch.allclose(dct_flip(flipped), images, atol=1e-12)
    assert torch.allclose(flipped.flatten(1).norm(dim=1), images.flatten(1).norm(dim=1))
    assert flipped.min() < 0  # flipped data leaves [0, 1]


@pytest.mark.parametrize("mode", ["square", "rows_only"])
def test_low_pass_matches_scipy_and_is_idempotent(images, mode):
    b = 5
    c = scipy.fft.dctn(images.numpy(), axes=(-2, -1), norm="ortho")
    if mode == "square":
        c[..., b:, :] = 0
        c[..., :, b:] = 0
    else:
        c[..., b:, :] = 0
    ref = scipy.fft.idctn(c, axes=(-2, -1), norm="ortho")
    out = low_pass(images, b, mode)
    assert np.allclose(out.numpy(), ref, atol=1e-12)
    assert torch.allclose(low_pass(out, b, mode), out, atol=1e-12)


def test_low_pass_rejects_bad_arguments(images):
    with pytest.raises(ValueError, match="bandwidth"):
        low_pass(images, 0)
    with pytest.raises(ValueError, match="mode"):
        low_pass(images, 3, "circle")


@pytest.mark.parametrize("n,block,step,count", [(28, 8, 1, 21), (32, 8, 2, 13), (8, 4, 1, 5), (224, 16, 16, 14)])
def test_diagonal_block_counts(n, block, step, count):
    blocks = diagonal_blocks(n, block, step, channels=3)
    assert len(blocks) == count
    assert blocks[0].offset == 0 and blocks[-1].offset + block <= n
    assert all(b.dim == 3 * block * block for b in blocks)
    assert [b.name for b in blocks[:2]] == ["dct_0", f"dct_{step}"]


def test_projection_is_the_dct_mask_and_idempotent(images):
    n = images.shape[-1]
    for blk in diagonal_blocks(n, 4, 3):
        c = scipy.fft.dctn(images.numpy(), axes=(-2, -1), norm="ortho")
        masked = c * blk.mask(n, dtype=torch.float64).numpy()
        ref = scipy.fft.idctn(masked, axes=(-2, -1), norm="ortho")
        p = project(images, blk)
        assert np.allclose(p.numpy(), ref, atol=1e-12)
        assert torch.allclose(project(p, blk), p, atol=1e-12)
        residual = images - p  # orthogonal projection: residual is orthogonal to the block
        assert abs(float((residual * p).sum())) < 1e-9


def test_masked_dct2_rows_agree_with_project(images):
    n = images.shape[-1]
    blocks = diagonal_blocks(n, 4, 2)
    offsets = torch.tensor([0] + [b.offset for b in blocks])
    sizes = torch.tensor([n] + [b.block for b in blocks])  # row 0: the full space
    u = block_indicator(offsets, sizes, n, dtype=torch.float64)
    assert u.shape == (len(blocks) + 1, n) and u[0].all()
    x = images[:1].expand(len(blocks) + 1, -1, -1, -1)
    coef = masked_dct2(x, u)
    assert torch.allclose(idct2(coef[0]), images[0], atol=1e-12)
    for i, blk in enumerate(blocks, start=1):
        assert torch.allclose(idct2(coef[i]), project(images[0], blk), atol=1e-12)
        assert torch.isclose(coef[i].norm(), project(images[0], blk).norm())
    # a leading candidate dimension broadcasts
    stacked = masked_dct2(torch.stack([x, 2 * x]), u)
    assert torch.allclose(stacked[1], 2 * coef)
