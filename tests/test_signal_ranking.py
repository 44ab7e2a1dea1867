"""The ranking maths of issue 17 (detectors/signal_ranking.py): metrics against scikit-learn and hand
cases, a planted signal first and noise at 0.5, the non-finite rule, the cross-fitted combination
never seeing its own fold, and Spearman against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from sklearn.preprocessing import StandardScaler

from boundary_cli.detectors.signal_ranking import (
    aupr,
    bootstrap_interval,
    cross_fitted_combination,
    finite_features,
    fpr_at_tpr,
    oriented,
    precision_at_k,
    rank_signals,
    spearman_matrix,
)


def planted(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    wrong = rng.random(n) < 0.2
    signals = dict(noise=rng.normal(size=n), planted=rng.normal(size=n) + 2.0 * wrong,
                   confidence=-(rng.normal(size=n) + 1.0 * wrong))  # low = wrong
    return signals, dict(noise="high", planted="high", confidence="low"), wrong


def test_planted_signal_ranks_first_and_noise_sits_at_one_half():
    signals, directions, wrong = planted()
    rows = {(r.signal, r.metric): r for r in rank_signals(signals, directions, wrong, n_boot=100)}
    aurocs = {s: rows[(s, "auroc")].value for s in signals}
    assert max(aurocs, key=aurocs.get) == "planted"
    assert aurocs["planted"] > aurocs["confidence"] > 0.6
    assert abs(aurocs["noise"] - 0.5) < 0.04
    noise = rows[("noise", "auroc")]
    assert noise.ci_low < 0.5 < noise.ci_high  # the interval covers chance
    assert rows[("planted", "auroc")].ci_low > rows[("noise", "auroc")].ci_high


def test_metrics_equal_scikit_learn_on_the_oriented_scores():
    signals, directions, wrong = planted(seed=1)
    rows = {(r.signal, r.metric): r.value for r in rank_signals(signals, directions, wrong, n_boot=0)}
    for name, values in signals.items():
        score = values if directions[name] == "high" else -values
        assert rows[(name, "auroc")] == pytest.approx(roc_auc_score(wrong, score), abs=1e-12)
        assert rows[(name, "aupr")] == pytest.approx(average_precision_score(wrong, score), abs=1e-12)
        fpr, tpr, _ = roc_curve(wrong, score, drop_intermediate=False)
        assert rows[(name, "fpr_at_95_tpr")] == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=1e-12)


def test_fpr_at_tpr_and_precision_at_k_hand_cases():
    positive = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    score = np.array([9, 8, 7, 1, 6, 5, 2, 0], dtype=float)
    # to catch all 4 positives the threshold is 1: negatives 6, 5, 2 are flagged -> 3/4
    assert fpr_at_tpr(positive, score) == 0.75
    assert fpr_at_tpr(positive, score, tpr=0.75) == 0.0  # threshold 7
    assert precision_at_k(positive, score) == 0.75  # top 4: 9, 8, 7, 6
    assert np.isnan(fpr_at_tpr(np.zeros(3, dtype=bool), np.arange(3.0)))
    assert aupr(positive, score) == pytest.approx(average_precision_score(positive, score))


def test_non_finite_rule_for_metrics():
    s = np.array([1.0, np.inf, np.nan, 3.0, -np.inf])
    # NaN goes to the finite median (of 1 and 3: 2), inf keeps its order, "low" negates
    assert oriented(s, "high").tolist() == [1.0, np.inf, 2.0, 3.0, -np.inf]
    assert oriented(s, "low").tolist() == [-1.0, -np.inf, -2.0, -3.0, np.inf]
    positive = np.array([0, 1, 1, 0, 0], dtype=bool)  # inf beats 1, 3, -inf; NaN (-> 2) beats 1, -inf, not 3
    assert rank_signals(dict(m=s), dict(m="high"), positive, n_boot=0)[0].value == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="direction"):
        oriented(s, "up")


def test_finite_features_use_the_training_part_and_flag_non_finite_signals():
    train = np.array([[1.0, 0.0], [5.0, 1.0], [3.0, 2.0]])
    other = np.array([[np.inf, 0.5], [np.nan, 1.5], [-np.inf, 9.0]])
    a, b = finite_features(train, other)
    assert a.shape == (3, 3) and b.shape == (3, 3)  # one indicator: only column 0 is ever non-finite
    assert b[:, 0].tolist() == [5.0, 3.0, 1.0] and b[:, 2].tolist() == [1.0, 1.0, 1.0]
    assert a[:, 2].tolist() == [0.0, 0.0, 0.0] and b[:, 1].tolist() == [0.5, 1.5, 9.0]


def test_combination_beats_each_signal_when_they_carry_different_information():
    rng = np.random.default_rng(3)
    n = 3000
    wrong = rng.random(n) < 0.3
    a = rng.normal(size=n) + 1.0 * wrong
    b = rng.normal(size=n) + 1.0 * wrong  # independent evidence
    scores, fold = cross_fitted_combination(np.stack([a, b], 1), wrong, folds=5, seed=0)
    assert set(fold) == set(range(5))
    assert roc_auc_score(wrong, scores) > max(roc_auc_score(wrong, a), roc_auc_score(wrong, b)) + 0.03


def test_combination_never_sees_its_own_fold():
    # 300 samples, 150 pure-noise signals, random labels: fitted on its own fold a logistic
    # regression memorises them (AUROC > 0.9); out of fold it can only sit near 0.5
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 150))
    y = rng.random(300) < 0.5
    scores, fold = cross_fitted_combination(x, y, folds=5, seed=0)
    assert abs(roc_auc_score(y, scores) - 0.5) < 0.12
    in_sample = LogisticRegression(max_iter=1000).fit(StandardScaler().fit_transform(x), y)
    assert roc_auc_score(y, in_sample.predict_proba(StandardScaler().fit_transform(x))[:, 1]) > 0.9
    # and each part's scores are those of a model fitted on the other parts alone
    k = 2
    train, test = fold != k, fold == k
    scale = StandardScaler().fit(x[train])
    alone = LogisticRegression(max_iter=1000).fit(scale.transform(x[train]), y[train])
    assert np.allclose(scores[test], alone.predict_proba(scale.transform(x[test]))[:, 1], atol=1e-6)


def test_combination_refuses_too_few_of_a_class():
    with pytest.raises(ValueError, match="at least 5 samples of each class, found 2"):
        cross_fitted_combination(np.zeros((20, 1)), np.array([1, 1] + [0] * 18, dtype=bool))


def test_bootstrap_interval_narrows_with_more_samples():
    signals, directions, wrong = planted(n=4000, seed=5)
    score = signals["planted"]
    lo_small, hi_small = bootstrap_interval(wrong[:200], score[:200], "auroc", n_boot=200)
    lo_big, hi_big = bootstrap_interval(wrong, score, "auroc", n_boot=200)
    assert hi_big - lo_big < 0.5 * (hi_small - lo_small)
    assert lo_big < roc_auc_score(wrong, score) < hi_big
    assert np.isnan(bootstrap_interval(wrong, score, "auroc", n_boot=0)).all()


def test_spearman_matrix_equals_scipy_and_handles_inf_and_nan():
    rng = np.random.default_rng(6)
    a = rng.normal(size=100)
    b = np.exp(a)  # monotone in a: rho = 1
    c = rng.normal(size=100)
    m = spearman_matrix(dict(a=a, b=b, c=c, negc=-c))
    assert m[0, 1] == pytest.approx(1.0) and m[2, 3] == pytest.approx(-1.0)
    assert m[0, 2] == pytest.approx(spearmanr(a, c).statistic) and np.allclose(m, m.T)
    with_inf = a.copy()
    with_inf[a.argmax()] = np.inf
    with_nan = c.copy()
    with_nan[0] = np.nan
    m = spearman_matrix(dict(inf=with_inf, a=a, nan=with_nan))
    assert m[0, 1] == pytest.approx(1.0)  # inf ranks where the largest value was
    assert m[1, 2] == pytest.approx(spearmanr(a[1:], c[1:]).statistic)


def test_fold_columns_are_what_each_folds_model_sees():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 2))
    y = rng.random(200) < 0.3
    fold = np.arange(200) % 4
    extra = {k: rng.normal(size=200) for k in range(4)}
    scores, _ = cross_fitted_combination(x, y, fold=fold, fold_columns=extra)
    k = 1
    train, test = fold != k, fold == k
    xk = np.hstack([x, extra[k][:, None]])
    scale = StandardScaler().fit(xk[train])
    alone = LogisticRegression(max_iter=1000).fit(scale.transform(xk[train]), y[train])
    assert np.allclose(scores[test], alone.predict_proba(scale.transform(xk[test]))[:, 1], atol=1e-6)
