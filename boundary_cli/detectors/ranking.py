"""Ranking metrics for label-error detection: how well per-point scores find the mislabeled points.

Scores are "higher = more suspicious" (an influence, a loss). The detection curve is the reference's
(influenciae's benchmark): inspect points from the highest score down; after j points, the share of
the mislabeled points found. Its area (the mean of the curve) relates to the AUROC: for N points of
which a share p is mislabeled and no tied scores, area = (1 − p)·AUROC + p/2 + 1/(2N). With ties the
area depends on the order among tied points (a stable sort here, in index order), so the AUROC
(ties counted half) is the main figure.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def detection_curve(scores: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    """(N,) share of the mislabeled points among the top j+1 scores, j = 0..N-1 (stable order)."""
    noisy = np.asarray(noisy, dtype=bool)
    if noisy.sum() == 0:
        raise ValueError("no mislabeled points: the detection curve is undefined")
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    return np.cumsum(noisy[order]) / noisy.sum()


def detection_area(scores: np.ndarray, noisy: np.ndarray) -> float:
    """The reference's 'roc': the mean of :func:`detection_curve`."""
    return float(detection_curve(scores, noisy).mean())


def detection_auroc(scores: np.ndarray, noisy: np.ndarray) -> float:
    """AUROC of the scores for telling mislabeled (positive) from clean points (ties count half)."""
    return float(roc_auc_score(np.asarray(noisy, dtype=bool), np.asarray(scores, dtype=float)))


def precision_at_noise(scores: np.ndarray, noisy: np.ndarray) -> float:
    """Share of mislabeled points among the top-k scores, k = the number of mislabeled points."""
    noisy = np.asarray(noisy, dtype=bool)
    k = int(noisy.sum())
    if k == 0:
        raise ValueError("no mislabeled points")
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    return float(noisy[order[:k]].mean())
