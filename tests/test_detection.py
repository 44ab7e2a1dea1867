"""Error detectors (thresholds, metrics, MLP / random forest / LDA, feature scaling) and the lcr ResNet20."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from boundary_cli.detectors.detection import (
    DetectorMetrics,
    MLPParams,
    apply_feature_scaling,
    cross_fitted_detectors,
    cross_fitted_lcr_scores,
    evaluate_detector,
    fit_feature_scaling,
    out_of_fold_proba,
    train_mlp,
    train_sklearn,
    youden_threshold,
)
from boundary_cli.detectors.signal_ranking import stratified_folds
from boundary_cli.errors import BoundaryError
from boundary_cli.models.resnet20 import ResNet20, resnet20

# --- thresholds and metrics ------------------------------------------------------------------------------------


def brute_force_youden(scores: np.ndarray, labels: np.ndarray) -> float:
    best, best_j = None, -np.inf
    for t in sorted(set(scores.tolist()), reverse=True):  # highest threshold wins ties
        flagged = scores >= t
        j = flagged[labels == 1].mean() - flagged[labels == 0].mean()
        if j > best_j:
            best, best_j = t, j
    return best


def test_youden_separates_separable_scores():
    scores = np.array([0.1, 0.2, 0.25, 0.3, 0.6, 0.7, 0.9])
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    threshold = youden_threshold(scores, labels)
    assert 0.3 < threshold <= 0.6
    m = evaluate_detector(scores, labels, threshold, "toy", "val")
    assert (m.accuracy, m.balanced_accuracy, m.auroc) == (1.0, 1.0, 1.0)


def test_youden_equals_brute_force():
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.65, 0.2, 0.9, 0.5, 0.5, 0.3])
    labels = np.array([0, 1, 0, 1, 0, 0, 1, 1, 0, 0])
    assert youden_threshold(scores, labels) == brute_force_youden(scores, labels)
    rng = np.random.default_rng(0)
    for _ in range(20):  # integer scores: many ties
        labels = rng.integers(0, 2, 40)
        labels[:2] = [0, 1]
        scores = rng.integers(0, 8, 40) + 2 * labels
        assert youden_threshold(scores, labels) == brute_force_youden(scores, labels)


def test_youden_needs_both_classes():
    with pytest.raises(ValueError, match="both"):
        youden_threshold(np.array([0.1, 0.2]), np.array([1, 1]))


def test_evaluate_detector_by_hand():
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.7, 0.1, 0.05])
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    m = evaluate_detector(scores, labels, 0.5, "cond", "test")
    # flagged: 0.9, 0.8 (wrong) and 0.7 (right)
    assert m.recall_wrong == pytest.approx(2 / 3)
    assert m.recall_right == pytest.approx(3 / 4)
    assert m.accuracy == pytest.approx(5 / 7)
    assert m.balanced_accuracy == pytest.approx((2 / 3 + 3 / 4) / 2)
    # 0.9 and 0.8 outrank all 4 right ones, 0.3 outranks 3 of them: 11 of 12 pairs
    assert m.auroc == pytest.approx(11 / 12) and m.auroc == pytest.approx(roc_auc_score(labels, scores))
    assert m.as_row() == {"method": "cond", "split": "test", "auroc": m.auroc, "threshold": 0.5,
                          "accuracy": m.accuracy, "recall_right": m.recall_right, "recall_wrong": m.recall_wrong,
                          "balanced_accuracy": m.balanced_accuracy}
    assert isinstance(m, DetectorMetrics)


def test_evaluate_detector_with_one_class_gives_nan():
    m = evaluate_detector(np.array([0.2, 0.7]), np.array([0, 0]), 0.5, "lcr", "test")
    assert np.isnan(m.auroc) and np.isnan(m.recall_wrong) and np.isnan(m.balanced_accuracy)
    assert m.recall_right == 0.5 and m.accuracy == 0.5


# --- feature scaling -------------------------------------------------------------------------------------------


def test_feature_scaling_maps_train_range_to_width_one():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(100, 4)) * np.array([1.0, 10.0, 0.1, 0.0]) + np.array([5.0, -3.0, 0.0, 7.0])
    mean, scale = fit_feature_scaling(train)
    assert mean.shape == scale.shape == (4,)
    assert scale[3] == 1.0  # constant column
    scaled = apply_feature_scaling(train, mean, scale)
    assert np.allclose(scaled.max(0) - scaled.min(0), [1, 1, 1, 0])
    assert np.allclose(scaled.mean(0), 0) and np.isfinite(scaled).all()
    test = rng.normal(size=(5, 4))
    assert np.allclose(apply_feature_scaling(test, mean, scale), (test - mean) / scale)


# --- detectors on a planted signal ------------------------------------------------------------------------------

# 2000 train + 2000 test rows, so the AUROC of a useless detector (200 wrong test rows) has a std of ~0.02
N, D = 4000, 20


def planted_task(signal: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = (rng.random(N) < 0.1).astype(int)
    features = rng.normal(size=(N, D))
    if signal:
        features[:, :3] += 1.5 * labels[:, None]  # expected AUROC of the ideal detector ~0.97
    mean, scale = fit_feature_scaling(features[: N // 2])
    features = apply_feature_scaling(features, mean, scale)
    return features[: N // 2], labels[: N // 2], features[N // 2:], labels[N // 2:]


DETECTORS = {
    "mlp_all": lambda x, y, seed: train_mlp(x, y, epochs=5, seed=seed),
    "mlp_last": lambda x, y, seed: train_mlp(x, y, hidden=(10, 10), dropout_after="last", epochs=20,
                                             batch_size=100, seed=seed),
    "random_forest": lambda x, y, seed: train_sklearn("random_forest", x, y, seed=seed),
    "lda": lambda x, y, seed: train_sklearn("lda", x, y, seed=seed),
}


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_detectors_find_a_planted_signal_and_not_noise(name):
    x, y, x_test, y_test = planted_task(signal=True)
    proba = DETECTORS[name](x, y, 0).predict_proba(x_test)
    assert proba.shape == (len(x_test),) and ((proba >= 0) & (proba <= 1)).all()
    assert roc_auc_score(y_test, proba) > 0.9
    x, y, x_test, y_test = planted_task(signal=False)
    assert abs(roc_auc_score(y_test, DETECTORS[name](x, y, 0).predict_proba(x_test)) - 0.5) < 0.1


@pytest.mark.parametrize("name", ["mlp_all", "mlp_last", "random_forest"])
def test_detectors_are_deterministic_for_a_seed(name):
    x, y, x_test, _ = planted_task(signal=True)
    x, y = x[:500], y[:500]
    torch_state = torch.get_rng_state()
    first = DETECTORS[name](x, y, 3).predict_proba(x_test)
    assert torch.equal(torch.get_rng_state(), torch_state)  # training leaves the global RNG alone
    assert np.array_equal(first, DETECTORS[name](x, y, 3).predict_proba(x_test))
    assert not np.array_equal(first, DETECTORS[name](x, y, 4).predict_proba(x_test))


def test_mlp_layout_and_bad_options():
    x, y, _, _ = planted_task(signal=True)
    net = train_mlp(x[:100], y[:100], epochs=1).network
    assert [type(m).__name__ for m in net] == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    net = train_mlp(x[:100], y[:100], hidden=(10, 10), dropout_after="last", epochs=1).network
    assert [type(m).__name__ for m in net] == ["Linear", "ReLU", "Linear", "ReLU", "Dropout", "Linear"]
    assert not net.training
    with pytest.raises(ValueError, match="all, last"):
        train_mlp(x[:100], y[:100], dropout_after="first")
    with pytest.raises(ValueError, match="random_forest, lda"):
        train_sklearn("qda", x[:100], y[:100])


def test_out_of_fold_scores_are_honest_where_in_sample_scores_memorise():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(300, 100)), (rng.random(300) < 0.3).astype(int)  # pure noise, easy to memorise
    params = MLPParams(hidden=(64,), dropout=0.0, epochs=60, batch_size=20)
    in_sample = params.train(x, y, seed=0).predict_proba(x)
    assert roc_auc_score(y, in_sample) > 0.95
    assert abs(roc_auc_score(y, out_of_fold_proba(x, y, params, seed=0, folds=5)) - 0.5) < 0.12


def test_cross_fitted_detectors_find_a_planted_signal():
    rng = np.random.default_rng(0)
    wrong = (rng.random(1200) < 0.2).astype(int)
    features = rng.normal(size=(1200, 8))
    features[:, :2] += 2.0 * wrong[:, None]
    split = np.array(["train"] * 600 + ["val"] * 300 + ["test"] * 300)
    lcr = rng.random(1200)  # a useless LCR
    metrics, scores = cross_fitted_detectors(split, wrong, lcr, features * 3 + 1,
                                             cond=MLPParams(hidden=(32, 32), epochs=5),
                                             combined=MLPParams(hidden=(10, 10), dropout_after="last", epochs=2),
                                             extra=["lda"], folds=3, seed=0)
    assert list(scores) == ["lcr", "cond", "both", "lda"]
    assert all(v.shape == (1200,) and ((v >= 0) & (v <= 1)).all() for v in scores.values())
    assert [(m.method, m.split) for m in metrics] == [(k, s) for k in scores for s in ("train", "val", "test")]
    auroc = {(m.method, m.split): m.auroc for m in metrics}
    assert auroc["cond", "test"] > 0.9 and auroc["lda", "test"] > 0.9 and abs(auroc["lcr", "test"] - 0.5) < 0.1
    assert auroc["cond", "train"] > 0.7  # out-of-fold scores of the training rows still carry the signal


# --- ResNet20 -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28), (1, 8, 8)])
def test_resnet20_output_shapes(shape):
    net = resnet20(shape[0], 10, shape[1:]).eval()
    with torch.no_grad():
        out = net(torch.rand(2, *shape))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_resnet20_parameter_count():
    conv = lambda c_in, c_out, k: c_in * c_out * k * k + c_out  # noqa: E731  (weights + bias)
    bn = lambda c: 2 * c  # noqa: E731  (gamma, beta; running stats are buffers)
    stem = conv(3, 16, 3) + bn(16)                                              # 448 + 32
    plain = lambda c: 2 * (conv(c, c, 3) + bn(c))  # noqa: E731
    first = lambda c_in, c: conv(c_in, c, 3) + conv(c, c, 3) + 2 * bn(c) + conv(c_in, c, 1)  # noqa: E731
    stage1 = 3 * plain(16)                                                      # 3 * 4704
    stage2 = first(16, 32) + 2 * plain(32)                                      # 14560 + 2 * 18624
    stage3 = first(32, 64) + 2 * plain(64)                                      # 57792 + 2 * 74112
    head = 64 * 10 + 10
    expected = stem + stage1 + stage2 + stage3 + head
    assert expected == 273_066  # Keras reports 274,442 total = this + 1,376 BN moving statistics
    net = resnet20(3, 10, (32, 32))
    assert sum(p.numel() for p in net.parameters()) == expected
    assert sum(b.numel() for n, b in net.named_buffers() if "running" in n) == 1376


def test_resnet20_batch_norm_has_keras_defaults():
    """Keras' BatchNormalization: epsilon 1e-3, moving averages with momentum 0.99 (torch: 0.01)."""
    bns = [m for m in resnet20(3, 10, (32, 32)).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 19 and all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)


def test_resnet20_taps_are_post_relu_block_outputs():
    net = resnet20(3, 10, (32, 32)).eval()
    modules = dict(net.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    for name in ResNet20.tap_layers:
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
    with torch.no_grad():
        net(torch.randn(2, 3, 32, 32))
    shapes = [outputs[name].shape for name in ResNet20.tap_layers]
    assert shapes == [(2, 16, 32, 32)] * 3 + [(2, 32, 16, 16)] * 3 + [(2, 64, 8, 8)] * 3
    assert all((outputs[name] >= 0).all() for name in ResNet20.tap_layers)
    assert "layer2.0.shortcut.weight" in net.state_dict() and "layer1.0.shortcut.weight" not in net.state_dict()


def test_resnet20_too_small_raises():
    with pytest.raises(BoundaryError, match=r"resnet20 takes any size >= 8x8; the dataset's images are 7x7"):
        resnet20(1, 10, (7, 7))


def _planted_lcr(n=600, d=12, seed=0):
    rng = np.random.default_rng(seed)
    wrong = rng.random(n) < 0.25
    features = rng.normal(size=(n, d))
    features[:, 0] += 2.5 * wrong  # one conductance channel carries the answer
    lcr = np.clip(rng.normal(0.2, 0.1, n) + 0.3 * wrong, 0, 1)
    return wrong, lcr, features


def test_cross_fitted_lcr_scores_learn_a_planted_channel_and_not_noise():
    wrong, lcr, features = _planted_lcr()
    fold = stratified_folds(wrong, 5, seed=0)
    fast = MLPParams(epochs=5)
    # 480 training rows: the reference's 30 epochs of batches of 100 are 150 steps and leave the small
    # combined MLP near chance; experiment=signals trains it 300 epochs
    both = MLPParams(hidden=(10, 10), dropout_after="last", epochs=300, batch_size=100)
    p_cond, p_both, _ = cross_fitted_lcr_scores(fold, wrong, lcr, features, cond=fast, combined=both, seed=0)
    assert roc_auc_score(wrong, p_cond) > 0.9
    assert roc_auc_score(wrong, p_both) > 0.9  # lcr and p_cond both carry it
    noise = np.random.default_rng(1).normal(size=features.shape)
    p_noise, _, _ = cross_fitted_lcr_scores(fold, wrong, lcr, noise, cond=fast, seed=0)
    assert abs(roc_auc_score(wrong, p_noise) - 0.5) < 0.1


def test_cross_fitted_lcr_scores_never_see_their_own_fold():
    wrong, lcr, features = _planted_lcr(n=300)
    fold = stratified_folds(wrong, 5, seed=0)
    fast = MLPParams(epochs=3)
    a_cond, a_both, a_seen = cross_fitted_lcr_scores(fold, wrong, lcr, features, cond=fast, seed=0)
    flipped = wrong.copy()
    flipped[fold == 3] = ~flipped[fold == 3]  # fold 3's answers changed: its own scores must not move
    b_cond, b_both, b_seen = cross_fitted_lcr_scores(fold, flipped, lcr, features, cond=fast, seed=0)
    held = fold == 3
    assert np.array_equal(a_cond[held], b_cond[held]) and np.array_equal(a_both[held], b_both[held])
    # what fold 3's stacked model sees (p_cond on every row) is untouched by fold 3's answers too
    assert np.array_equal(a_seen[3], b_seen[3]) and np.array_equal(a_seen[3][held], a_cond[held])
    assert not np.allclose(a_seen[3][~held], a_cond[~held])  # its training rows: out of fold inside them
    assert not np.allclose(a_cond[~held], b_cond[~held])  # the other folds trained on those answers


def test_stratified_folds_share_the_positives_evenly():
    positive = np.r_[np.ones(53, bool), np.zeros(447, bool)]
    fold = stratified_folds(positive, 5, seed=0)
    per_fold = [int(positive[fold == k].sum()) for k in range(5)]
    assert sorted(set(fold.tolist())) == [0, 1, 2, 3, 4] and max(per_fold) - min(per_fold) <= 1
    with pytest.raises(ValueError, match="at least 5 samples of each class, found 3"):
        stratified_folds(np.r_[np.ones(3, bool), np.zeros(50, bool)], 5)
