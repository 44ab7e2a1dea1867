"""Batched DeepFool: closed-form affine cases, agreement with the per-sample reference, contracts."""

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

from boundary_cli.geometry.dct import DCTBlock, diagonal_blocks, project
from boundary_cli.geometry.deepfool import (
    DeepFoolParams,
    deepfool,
    deepfool_subspaces,
    difference_grads,
)
from boundary_cli.geometry.reference_deepfool import deepfool_single, dense_block_basis

OS = 0.02


class Affine(nn.Module):
    """f(x) = W x + b on flattened images: every DeepFool quantity has a closed form."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(b)

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


def small_cnn(channels=1, n_classes=10, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(64, n_classes),
    )
    net[1].running_mean.uniform_(-0.1, 0.1)
    net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def affine_case(n=8, c=1, k=4, batch=16):
    g = torch.Generator().manual_seed(1)
    d = c * n * n
    model = Affine(torch.randn(k, d, generator=g), torch.randn(k, generator=g)).eval()
    x = torch.rand(batch, c, n, n, generator=g)
    return model, x


def expected_affine(model, x, proj=None):
    """Closed form of one DeepFool step on an affine model, and whether it flips the label."""
    with torch.no_grad():
        logits = model(x)
    k0 = logits.argmax(1)
    w = model.w.detach()
    out = []
    for i in range(x.shape[0]):
        best, best_k, best_dir = float("inf"), None, None
        for k in range(w.shape[0]):
            if k == k0[i]:
                continue
            wk = w[k] - w[k0[i]]
            if proj is not None:
                wk = proj(wk.view(x.shape[1:])).flatten()
            val = float((logits[i, k] - logits[i, k0[i]]).abs() / wk.norm())
            if val < best:
                best, best_k, best_dir = val, k, wk / wk.norm()
        x_adv = x[i].flatten() + (1 + OS) * best * best_dir
        lands = int(model(x_adv.view(1, *x.shape[1:])).argmax()) == best_k
        out.append(((1 + OS) * best, best_k, lands))
    return out


def test_affine_full_space_margin_is_closed_form_in_one_step():
    model, x = affine_case()
    res = deepfool(model, x, DeepFoolParams(overshoot=OS))
    exp = expected_affine(model, x)
    landed = [i for i, e in enumerate(exp) if e[2]]
    assert len(landed) >= len(exp) // 2
    for i in landed:
        assert res.iterations[i] == 1 and res.converged[i]
        assert res.margin[i].item() == pytest.approx(exp[i][0], rel=1e-5)
        assert res.adv_label[i] == exp[i][1]
    assert torch.allclose(res.perturbation.flatten(1).norm(dim=1), res.margin)


def test_affine_two_class_margin_is_distance_to_the_hyperplane():
    model, x = affine_case(k=2)
    res = deepfool(model, x, DeepFoolParams(overshoot=0.0, max_iter=1))
    w = model.w.detach()
    with torch.no_grad():
        logits = model(x)
    dist = (logits[:, 1] - logits[:, 0]).abs() / (w[1] - w[0]).norm()
    assert torch.allclose(res.margin, dist, rtol=1e-5)


def test_affine_subspace_margin_uses_the_projected_gradient():
    model, x = affine_case(n=8, c=2)
    blk = DCTBlock(2, 4, 2 * 16)
    res = deepfool(model, x, DeepFoolParams(overshoot=OS), subspace=blk)
    exp = expected_affine(model, x, proj=lambda v: project(v, blk))
    landed = [i for i, e in enumerate(exp) if e[2]]
    assert len(landed) >= len(exp) // 2
    for i in landed:
        assert res.iterations[i] == 1 and res.converged[i]
        assert res.margin[i].item() == pytest.approx(exp[i][0], rel=1e-5)
    # the perturbation lies inside the block
    assert torch.allclose(project(res.perturbation, blk), res.perturbation, atol=1e-5)
    assert torch.isfinite(res.margin).all()
    assert torch.all(res.margin >= deepfool(model, x).margin - 1e-5)  # a subspace never beats full space


def test_invariant_subspace_gives_infinite_margin_flagged():
    n = 8
    # the gradient is the constant (DC) image: a high-frequency block is blind to it
    direction = torch.ones(n, n) / n
    w = torch.stack([direction.flatten(), -direction.flatten()])
    model = Affine(w, torch.tensor([0.3, 0.0])).eval()
    x = torch.rand(5, 1, n, n)
    res = deepfool(model, x, subspace=DCTBlock(4, 4, 16))
    assert torch.isinf(res.margin).all() and not res.converged.any()
    assert (res.iterations == 1).all() and torch.isinf(res.perturbation).all()
    pert, it, k0, k_adv = deepfool_single(model, x[0], dense_block_basis(n, 1, DCTBlock(4, 4, 16)))
    assert torch.isinf(pert).all() and it == 1 and k0 == k_adv


def test_batched_agrees_with_the_per_sample_reference():
    model = small_cnn()
    x = torch.rand(24, 1, 8, 8)
    blocks = diagonal_blocks(8, 4, 2)
    res = deepfool_subspaces(model, x, blocks, batch_rows=7)
    bases = [None] + [dense_block_basis(8, 1, b) for b in blocks]
    ref = np.zeros((len(bases), x.shape[0]))
    it_ref = np.zeros_like(ref)
    for s, basis in enumerate(bases):
        for i in range(x.shape[0]):
            pert, it, k0, k_adv = deepfool_single(model, x[i], basis)
            ref[s, i] = float(pert.norm())
            it_ref[s, i] = it
            assert k0 == res.prediction[s, i]
    rel = np.abs(res.margin.numpy() - ref) / ref
    assert np.median(rel) <= 0.01
    assert np.mean(res.iterations.numpy() == it_ref) > 0.9


def test_many_blocks_equal_single_block_runs():
    model = small_cnn(channels=3)
    x = torch.rand(6, 3, 8, 8)
    blocks = diagonal_blocks(8, 4, 2, channels=3)
    many = deepfool_subspaces(model, x, blocks, keep_perturbation=True)
    assert many.margin.shape == (1 + len(blocks), 6)
    assert many.perturbation.shape == (1 + len(blocks), 6, 3, 8, 8)
    full = deepfool(model, x)
    assert torch.allclose(many.margin[0], full.margin, rtol=1e-4)
    for s, blk in enumerate(blocks, start=1):
        one = deepfool(model, x, subspace=blk)
        assert torch.allclose(many.margin[s], one.margin, rtol=1e-4)
        assert torch.equal(many.iterations[s], one.iterations)


def test_batch_size_and_vjp_method_do_not_change_results():
    model = small_cnn()
    x = torch.rand(10, 1, 8, 8)
    a = deepfool(model, x, DeepFoolParams(vjp="loop"), batch_rows=1000)
    b = deepfool(model, x, DeepFoolParams(vjp="loop"), batch_rows=3)
    c = deepfool(model, x, DeepFoolParams(vjp="batched"), batch_rows=4)
    for other in (b, c):
        assert torch.allclose(a.margin, other.margin, rtol=1e-4)
        assert torch.equal(a.iterations, other.iterations)
        assert torch.equal(a.adv_label, other.adv_label)


def test_difference_grads_methods_agree_with_autograd():
    model = small_cnn()
    x = torch.rand(3, 1, 8, 8, requires_grad=True)
    logits = model(x)
    cand = logits.detach().topk(4, dim=1).indices
    g_loop = difference_grads(logits, x, cand, "loop")
    logits = model(x)
    g_batched = difference_grads(logits, x, cand, "batched")
    assert g_loop.shape == (3, 3, 1, 8, 8)
    assert torch.allclose(g_loop, g_batched, atol=1e-6)
    for i in range(3):
        xi = x[i : i + 1].detach().requires_grad_(True)
        out = model(xi)[0]
        (g,) = torch.autograd.grad(out[cand[i, 2]] - out[cand[i, 0]], xi)
        assert torch.allclose(g_loop[1, i], g[0], atol=1e-6)


def test_model_is_left_untouched_and_must_be_in_eval_mode():
    model = small_cnn()
    model[0].weight.requires_grad_(True)
    model[-1].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deepfool(model, torch.rand(4, 1, 8, 8))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert model[0].weight.requires_grad and not model[-1].bias.requires_grad
    with pytest.raises(ValueError, match="eval mode"):
        deepfool(model.train(), torch.rand(2, 1, 8, 8))


def test_non_converged_rows_are_flagged_and_keep_their_margin():
    model = small_cnn()
    x = torch.rand(20, 1, 8, 8)
    res = deepfool(model, x, DeepFoolParams(max_iter=1), subspace=DCTBlock(4, 4, 16))
    assert (res.iterations == 1).all()
    assert torch.equal(res.converged, res.adv_label != res.prediction)
    assert (~res.converged).any()
    assert torch.isfinite(res.margin[~res.converged]).all()


def test_clip_keeps_the_adversarial_point_in_the_box():
    model = small_cnn()
    x = torch.rand(12, 1, 8, 8)
    res = deepfool(model, x, DeepFoolParams(clip=(0.0, 1.0)))
    adv = x + res.perturbation
    assert adv.min() >= 0 and adv.max() <= 1
    assert torch.allclose(res.perturbation.flatten(1).norm(dim=1), res.margin)


def test_prediction_is_the_models_label_and_candidates_limit_classes():
    model = small_cnn(n_classes=3)
    x = torch.rand(5, 1, 8, 8)
    res = deepfool(model, x, DeepFoolParams(candidates=10))  # more candidates than classes: capped at 3
    with torch.no_grad():
        assert torch.equal(res.prediction, model(x).argmax(1))
    assert res.n_backward == 2 * int(res.iterations.sum())
    assert res.n_forward == 2 * int(res.iterations.sum())


def test_sync_every_changes_neither_margins_nor_labels():
    model = small_cnn()
    x = torch.rand(20, 1, 8, 8)
    blocks = diagonal_blocks(8, 4, 2)
    one = deepfool_subspaces(model, x, blocks, DeepFoolParams(sync_every=1), batch_rows=9)
    for k in (3, 8):
        lazy = deepfool_subspaces(model, x, blocks, DeepFoolParams(sync_every=k), batch_rows=9)
        assert torch.allclose(one.margin, lazy.margin, rtol=1e-4)
        assert torch.equal(one.iterations, lazy.iterations)
        assert torch.equal(one.adv_label, lazy.adv_label) and torch.equal(one.converged, lazy.converged)
        # frozen rows ride along until the next sync: the counts include them, never fewer
        assert lazy.n_forward >= one.n_forward and lazy.n_backward >= one.n_backward


def test_top_k_candidates_with_k_equal_to_all_classes_match_the_all_class_reference():
    model = small_cnn(n_classes=20)
    x = torch.rand(12, 1, 8, 8)
    top_all = deepfool(model, x, DeepFoolParams(candidates=20))
    top_more = deepfool(model, x, DeepFoolParams(candidates=50))  # capped at the 20 classes
    assert torch.equal(top_all.margin, top_more.margin)
    ref = torch.tensor([float(deepfool_single(model, x[i], None, candidates=20)[0].norm()) for i in range(12)])
    assert torch.allclose(top_all.margin, ref, rtol=1e-3)
    top3 = deepfool(model, x, DeepFoolParams(candidates=3))
    ref3 = torch.tensor([float(deepfool_single(model, x[i], None, candidates=3)[0].norm()) for i in range(12)])
    assert torch.allclose(top3.margin, ref3, rtol=1e-3)
    assert (top3.margin >= top_all.margin * (1 - 1e-3)).float().mean() > 0.5  # fewer targets: rarely closer


# --- exact agreement and the semantics an agreement test with loose tolerances would not pin down -------

@contextmanager
def one_thread():
    """Tiny models run fastest on one thread (and do not stall when other processes share the cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained_digits_cnn():
    """A small CNN trained for 200 SGD steps on sklearn's 8x8 digits (fixed seed), then in float64, and
    60 held-out digits in float64. In float64 the batched DeepFool and the per-sample transcription
    differ by rounding only (~1e-14), so every discrete decision must coincide."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(64, 10),
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    with one_thread():
        for _ in range(200):
            i = torch.randint(0, 1500, (32,), generator=g)
            loss = nn.functional.cross_entropy(net(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net = net.double().eval()
    test = x[1500:1560].double()
    with torch.no_grad():
        acc = float((net(test).argmax(1) == y[1500:1560]).double().mean())
    assert acc > 0.7  # a trained model, not a random one
    return net, test


@pytest.mark.parametrize("candidates", [10, 3])
def test_float64_batched_equals_the_transcription_on_a_trained_cnn(trained_digits_cnn, candidates):
    with one_thread():
        _float64_agreement(*trained_digits_cnn, candidates)


def _float64_agreement(model, x, candidates):
    blocks = diagonal_blocks(8, 4, 1)  # all five 4x4 blocks, offsets 0..4
    res = deepfool_subspaces(model, x, blocks, DeepFoolParams(candidates=candidates), batch_rows=23)  # refills mid-run
    assert res.margin.dtype == torch.float64
    bases = [None] + [dense_block_basis(8, 1, b, dtype=torch.float64) for b in blocks]
    ref = torch.zeros(len(bases), x.shape[0], dtype=torch.float64)
    it_ref = torch.zeros(len(bases), x.shape[0], dtype=torch.long)
    adv_ref = torch.zeros_like(it_ref)
    for s, basis in enumerate(bases):
        for i in range(x.shape[0]):
            pert, it, k0, k_adv = deepfool_single(model, x[i], basis, candidates=candidates)
            ref[s, i], it_ref[s, i], adv_ref[s, i] = pert.norm(), it, k_adv
            assert k0 == res.prediction[s, i]
    assert torch.isfinite(ref).all() and res.converged.all()
    assert it_ref.max() >= 3 and (it_ref >= 2).float().mean() > 0.5  # several iterations: the loop is exercised
    torch.testing.assert_close(res.margin, ref, rtol=1e-6, atol=0)
    assert torch.equal(res.iterations, it_ref)
    assert torch.equal(res.adv_label, adv_ref)
    # the single-space entry point, with the other VJP method, is the same algorithm
    for s, blk in enumerate([None, *blocks]):
        one = deepfool(model, x, DeepFoolParams(vjp="batched", candidates=candidates), subspace=blk, batch_rows=17)
        torch.testing.assert_close(one.margin, ref[s], rtol=1e-6, atol=0)
        assert torch.equal(one.iterations, it_ref[s]) and torch.equal(one.adv_label, adv_ref[s])


class Reranker(nn.Module):
    """Three logits of x1 = the first pixel, piecewise linear, built so that the class ranked second
    changes along the first DeepFool step:

        f0 = 0,   f1 = -1 + x1 - 0.5 relu(x1 - 0.5),   f2 = -1.2 + x1.

    From x1 = 0 with two candidates (the top-2 at x: classes 0 and 1, fixed), DeepFool steps 1 then 0.5
    towards class 1 and stops at 1.02 * 1.5 = 1.53, where class 2 wins: margin 1.53, 2 iterations,
    adversarial label 2. Re-ranking at x1 = 1 (f1 = -0.25 < f2 = -0.2) would target class 2 instead and
    stop at 1.02 * 1.2 = 1.224."""

    def forward(self, x):
        x1 = x.flatten(1)[:, 0]
        f1 = -1 + x1 - 0.5 * torch.relu(x1 - 0.5)
        return torch.stack([torch.zeros_like(x1), f1, -1.2 + x1], dim=1)


def _deepfool_reranked(model, x, candidates, overshoot=OS, max_iter=100):
    """The wrong semantics, for contrast: full-space DeepFool that re-ranks its candidates at every iterate."""
    with torch.no_grad():
        k0 = int(model(x.unsqueeze(0))[0].argmax())
    r, it, k_adv = torch.zeros_like(x), 0, k0
    while k_adv == k0 and it < max_iter:
        xg = (x + r).unsqueeze(0).requires_grad_(True)
        fs = model(xg)[0]
        order = [int(k) for k in torch.argsort(fs.detach(), descending=True) if int(k) != k0][: candidates - 1]
        best, w = float("inf"), None
        for k in order:
            (wk,) = torch.autograd.grad(fs[k] - fs[k0], xg, retain_graph=True)
            val = float((fs[k] - fs[k0]).detach().abs() / wk.norm())
            if val < best:
                best, w = val, wk[0]
        r = r + max(best, 1e-4) * w / w.norm()
        with torch.no_grad():
            k_adv = int(model((x + (1 + overshoot) * r).unsqueeze(0))[0].argmax())
        it += 1
    return (1 + overshoot) * r, it, k0, k_adv


def test_candidates_stay_the_top_k_at_x_and_are_never_re_ranked():
    model = Reranker().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 2, 2, generator=g, dtype=torch.float64)
    x[:, 0, 0, 0] = 0.0  # x1 = 0; the other pixels do not matter
    res = deepfool(model, x, DeepFoolParams(candidates=2))
    torch.testing.assert_close(res.margin, torch.full((3,), 1.53, dtype=torch.float64), rtol=1e-12, atol=0)
    assert res.iterations.tolist() == [2, 2, 2] and res.adv_label.tolist() == [2, 2, 2]
    assert res.converged.all() and res.prediction.tolist() == [0, 0, 0]
    for i in range(3):
        pert, it, k0, k_adv = deepfool_single(model, x[i], candidates=2)
        assert float(pert.norm()) == pytest.approx(1.53, rel=1e-12) and (it, k0, k_adv) == (2, 0, 2)
        wrong, it, _, k_adv = _deepfool_reranked(model, x[i], candidates=2)
        assert float(wrong.norm()) == pytest.approx(1.224, rel=1e-12) and (it, k_adv) == (2, 2)
    # with every class a candidate the ranking cannot matter: class 2's step is the shorter one at x1 = 1
    full = deepfool(model, x, DeepFoolParams(candidates=3))
    torch.testing.assert_close(full.margin, torch.full((3,), 1.224, dtype=torch.float64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("subspace", [None, DCTBlock(0, 2, 4), DCTBlock(2, 2, 4)])
def test_steps_below_the_minimum_are_taken_at_1e_4(subspace):
    """On an affine two-class model a point at linearised distance d from the boundary (inside the
    subspace) gets one step of max(d, 1e-4): margin (1 + overshoot) * max(d, 1e-4), one iteration."""
    g = torch.Generator().manual_seed(3)
    n = 4
    model = Affine(torch.randn(2, n * n, generator=g, dtype=torch.float64),
                   torch.randn(2, generator=g, dtype=torch.float64)).eval()
    w = model.w.detach()
    pw = (w[1] - w[0]).view(1, n, n)
    if subspace is not None:
        pw = project(pw, subspace)
    u = pw / pw.norm()  # unit direction of the (projected) gradient of f1 - f0
    dist = torch.tensor([1e-7, 3e-5, 9.5e-5, 2e-4, 5e-3], dtype=torch.float64)
    x = torch.rand(5, 1, n, n, generator=g, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
    # move each point along u until f0 - f1 = d ‖P (w1 - w0)‖: class 0 predicted, distance d in the subspace
    t = ((logits[:, 0] - logits[:, 1]) - dist * pw.norm()) / pw.norm()
    x = x + t.view(-1, 1, 1, 1) * u
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close((logits[:, 0] - logits[:, 1]) / pw.norm(), dist, rtol=1e-6, atol=1e-12)
    res = deepfool(model, x, DeepFoolParams(candidates=2), subspace=subspace)
    expected = (1 + OS) * torch.clamp(dist, min=1e-4)
    torch.testing.assert_close(res.margin, expected, rtol=1e-7, atol=0)
    assert res.iterations.tolist() == [1] * 5 and res.converged.all() and res.adv_label.tolist() == [1] * 5
    assert res.prediction.tolist() == [0] * 5
    torch.testing.assert_close(res.margin[:3], torch.full((3,), (1 + OS) * 1e-4, dtype=torch.float64),
                               rtol=1e-12, atol=0)  # all three below the floor
    for i in range(5):  # and the transcription agrees
        basis = None if subspace is None else dense_block_basis(n, 1, subspace, dtype=torch.float64)
        pert, it, k0, k_adv = deepfool_single(model, x[i], basis, candidates=2)
        assert float(pert.norm()) == pytest.approx(float(expected[i]), rel=1e-7) and (it, k0, k_adv) == (1, 0, 1)


def test_sample_boundary_mode_lands_on_the_boundary_without_overshoot_or_minimum_step():
    """influenciae's SampleBoundaryCalculator: on a two-class affine model one step lands on the
    hyperplane (no overshoot) and the eps gap stops it there."""
    from boundary_cli.geometry.deepfool import sample_boundary_params

    model, x = affine_case(k=2)
    res = deepfool(model, x, sample_boundary_params())
    w = model.w.detach()
    with torch.no_grad():
        logits = model(x)
    dist = (logits[:, 1] - logits[:, 0]).abs() / (w[1] - w[0]).norm()
    assert torch.allclose(res.margin, dist, rtol=1e-5)
    # one step lands on the hyperplane; float32 rounding can leave a gap above 1e-6 for one more step
    assert (res.iterations <= 2).all() and (res.iterations == 1).float().mean() >= 0.75
    with torch.no_grad():
        gap = model(x + res.perturbation).topk(2, dim=1).values
    assert ((gap[:, 0] - gap[:, 1]) <= 1e-4).all()
    # a point 5e-5 from the boundary: the default 1e-4 minimum step oversteps, this mode does not (float64)
    model, x = model.double(), x[:1].double()
    w = model.w.detach()
    with torch.no_grad():
        l0 = model(x)[0]
    u = (w[1] - w[0]) / (w[1] - w[0]).norm() * torch.sign(l0[0] - l0[1])  # towards the boundary
    d0 = float((l0[1] - l0[0]).abs() / (w[1] - w[0]).norm())
    near = x + (d0 - 5e-5) * u.view(1, *x.shape[1:])
    assert deepfool(model, near, sample_boundary_params()).margin.item() == pytest.approx(5e-5, rel=1e-4)
    assert deepfool(model, near, DeepFoolParams(overshoot=0.0)).margin.item() == pytest.approx(1e-4, rel=1e-4)


def test_the_new_settings_leave_the_old_cache_key_alone():
    from boundary_cli.geometry.deepfool import sample_boundary_params

    assert set(DeepFoolParams().key()) == {"candidates", "overshoot", "max_iter", "clip", "tf32"}
    key = sample_boundary_params().key()
    assert key["min_step"] == 0.0 and key["eps_gap"] == 1e-6 and key["overshoot"] == 0.0
    with pytest.raises(ValueError):
        DeepFoolParams(min_step=-1)
