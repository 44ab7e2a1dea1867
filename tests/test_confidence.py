"""Confidence baselines and the metrics that rate the meta-network (detectors/confidence.py): closed
forms and agreement with scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, r2_score, roc_auc_score

from boundary_cli.detectors.confidence import auroc, balanced_accuracy, confidence_scores, monotone_fit_r2, r2


def test_scores_of_a_hand_computed_logit_vector():
    s = confidence_scores(torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    z = math.exp(2) + 2
    p = [math.exp(2) / z, 1 / z, 1 / z]
    assert s["msp"][0].item() == pytest.approx(p[0], rel=1e-6)
    assert s["logit_margin"].tolist() == [2.0, 0.0]
    assert s["entropy"][0].item() == pytest.approx(-sum(q * math.log(q) for q in p), rel=1e-6)
    assert s["entropy"][1].item() == pytest.approx(math.log(3), rel=1e-6)  # uniform: the maximum
    assert s["msp"][1].item() == pytest.approx(1 / 3)


def test_r2_auroc_and_balanced_accuracy_equal_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.normal(size=300)
    pred = y + rng.normal(scale=0.7, size=300)
    assert r2(y, pred) == pytest.approx(r2_score(y, pred), rel=1e-12)
    pos = rng.random(300) < 0.3
    score = np.round(pos + rng.normal(size=300), 1)  # rounded: many ties
    assert auroc(pos, score) == pytest.approx(roc_auc_score(pos, score), rel=1e-12)
    truth, guess = rng.random(300) < 0.8, rng.random(300) < 0.6
    assert balanced_accuracy(truth, guess) == pytest.approx(balanced_accuracy_score(truth, guess), rel=1e-12)
    assert math.isnan(auroc(np.ones(5, bool), np.arange(5.0))) and math.isnan(r2(np.ones(4), np.zeros(4)))


def test_a_monotone_fit_explains_a_monotone_target_in_either_direction_and_not_noise():
    rng = np.random.default_rng(1)
    s_tr, s_te = rng.normal(size=2000), rng.normal(size=500)
    assert monotone_fit_r2(s_tr, s_tr ** 3, s_te, s_te ** 3) > 0.98
    assert monotone_fit_r2(s_tr, np.exp(-s_tr), s_te, np.exp(-s_te)) > 0.98  # decreasing
    assert monotone_fit_r2(s_tr, rng.normal(size=2000), s_te, rng.normal(size=500)) < 0.05
    s_inf = np.where(np.arange(500) % 50 == 0, np.inf, s_te)  # a DeepFool that never moved: clipped, not nan
    assert np.isfinite(monotone_fit_r2(s_tr, s_tr ** 3, s_inf, s_te ** 3))
