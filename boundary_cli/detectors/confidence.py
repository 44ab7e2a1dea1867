"""Confidence baselines read off a model's logits, and the metrics that rate a predictor of
correctness or of robustness against them (activation_analysis's meta-network, METHODS.md §4, is
worth having only where it beats these).

Scores: the maximum softmax probability, the logit margin (top logit minus the runner-up) and the
softmax entropy. Metrics: r² (1 − SSE/SST), AUROC by the rank statistic (Mann–Whitney, ties count
half), balanced accuracy (the mean per-class recall) and the r² of a monotone (isotonic) fit of a
target on one score, fitted on one part and evaluated on another.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import rankdata
from torch import Tensor

CONFIDENCE_SCORES = ("msp", "logit_margin", "entropy")


def confidence_scores(logits: Tensor) -> dict[str, Tensor]:
    """``{msp, logit_margin, entropy}``, each (N,), of logits (N, K): higher msp and margin = more
    confident, higher entropy = less."""
    logp = logits.float().log_softmax(-1)
    top2 = logits.float().topk(2, dim=-1).values
    return dict(msp=logp.max(-1).values.exp(), logit_margin=top2[:, 0] - top2[:, 1],
                entropy=-(logp.exp() * logp).sum(-1))


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination 1 − Σ(y − ŷ)² / Σ(y − ȳ)² (nan when y is constant)."""
    y, pred = np.asarray(y, dtype=float), np.asarray(pred, dtype=float)
    sst = float(((y - y.mean()) ** 2).sum())
    return float("nan") if sst == 0 else 1.0 - float(((y - pred) ** 2).sum()) / sst


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties half), by ranks; nan without both."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(score, dtype=float))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean over the classes present in y of the share of their rows predicted right."""
    y, pred = np.asarray(y), np.asarray(pred)
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


def monotone_fit_r2(train_score: np.ndarray, train_y: np.ndarray, test_score: np.ndarray,
                    test_y: np.ndarray) -> float:
    """r² on the test rows of an isotonic regression of y on the score (increasing or decreasing,
    whichever fits the training rows better by sklearn's Spearman rule), fitted on the training rows;
    a score with inf values (a DeepFool that never moved) is clipped to its finite range first."""
    from sklearn.isotonic import IsotonicRegression

    def finite(s: np.ndarray, ref: np.ndarray) -> np.ndarray:
        s = np.asarray(s, dtype=float)
        ok = ref[np.isfinite(ref)]
        lo, hi = (ok.min(), ok.max()) if ok.size else (0.0, 0.0)
        return np.nan_to_num(s, nan=lo, posinf=hi, neginf=lo)

    tr = np.asarray(train_score, dtype=float)
    with warnings.catch_warnings():  # sklearn warns when the direction is uncertain; the fit is what it is
        warnings.simplefilter("ignore", UserWarning)
        fit = IsotonicRegression(increasing="auto", out_of_bounds="clip").fit(finite(tr, tr), train_y)
    return r2(test_y, fit.predict(finite(test_score, tr)))
