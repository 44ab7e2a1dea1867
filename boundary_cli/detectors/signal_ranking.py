"""Per-sample signals rated as detectors, side by side (issue 17's ranking maths; no Hydra, no model).

A signal is one number per sample (the maximum softmax probability, a DeepFool margin, a label change
rate, ...) with a direction: ``"high"`` when a high value means "more likely positive" (a wrong
prediction, a mislabeled point), ``"low"`` when a low value does (a confidence, a margin). Every
metric reads the oriented score (the signal, negated for ``"low"``). Metrics: AUROC (ties half),
AUPR (average precision of the positives), FPR at 95% TPR, precision at k (k = the number of
positives), each with a bootstrap interval over samples.

Non-finite values (the rule, stated once): metrics rank the oriented scores, so +inf and -inf keep
their order (a DeepFool that never reached the boundary is the farthest sample) and NaN, which has
no order, is put at the median of the finite values (neither suspicious nor safe). The combination
(a cross-fitted logistic regression over all signals) replaces, within each training part, +inf by
the part's largest finite value, -inf by its smallest and NaN by its median, and adds one 0/1
column per signal that was non-finite anywhere, so that "never converged" can carry weight of its
own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata, spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from boundary_cli.detectors.confidence import auroc
from boundary_cli.detectors.ranking import precision_at_noise

DIRECTIONS = ("high", "low")
ERROR_METRICS = ("auroc", "aupr", "fpr_at_95_tpr")
MISLABEL_METRICS = ("auroc", "precision_at_k", "aupr")
COMBINED = "everything"  # the cross-fitted combination's row among the signals
TASK_POSITIVES = dict(errors="wrong predictions", mislabeled="mislabeled points")  # what each task detects


@dataclass(frozen=True)
class SignalScore:
    """One metric of one signal: its value on all samples and a bootstrap interval
    (``ci_low``, ``ci_high``; nan without a bootstrap)."""

    signal: str
    metric: str
    value: float
    ci_low: float
    ci_high: float


def oriented(signal: np.ndarray, direction: str) -> np.ndarray:
    """The signal (N,) as a score where higher = more likely positive, NaN put at the finite median
    (see the module text); ±inf keep their order."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    s = np.asarray(signal, dtype=float).copy()
    nan = np.isnan(s)
    if nan.any():
        finite = s[np.isfinite(s)]
        s[nan] = float(np.median(finite)) if finite.size else 0.0
    return s if direction == "high" else -s


def fpr_at_tpr(positive: np.ndarray, score: np.ndarray, tpr: float = 0.95) -> float:
    """The false positive rate at the highest threshold whose true positive rate reaches ``tpr``:
    flag every sample scoring >= t, t the ceil(tpr·P)-th largest positive score (ties flagged
    together); nan without both classes."""
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    k = int(np.ceil(tpr * n_pos - 1e-12))
    threshold = np.sort(score[positive])[::-1][max(k, 1) - 1]
    return float((score[~positive] >= threshold).mean())


def aupr(positive: np.ndarray, score: np.ndarray) -> float:
    """Average precision of the positives (scikit-learn's step-wise area under the PR curve)."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan")
    return float(average_precision_score(positive, np.nan_to_num(score, posinf=np.finfo(float).max,
                                                                  neginf=-np.finfo(float).max)))


def precision_at_k(positive: np.ndarray, score: np.ndarray) -> float:
    """Share of positives among the k highest scores, k = the number of positives (ties by index):
    :func:`~boundary_cli.detectors.ranking.precision_at_noise`, nan without positives."""
    positive = np.asarray(positive, dtype=bool)
    return precision_at_noise(score, positive) if positive.any() else float("nan")


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = dict(
    auroc=auroc, aupr=aupr, fpr_at_95_tpr=fpr_at_tpr, precision_at_k=precision_at_k)


def bootstrap_interval(positive: np.ndarray, score: np.ndarray, metric: str, n_boot: int = 200,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``metric`` over ``n_boot`` resamples of the samples (with replacement,
    seeded); resamples holding one class only are drawn again. (nan, nan) for n_boot = 0."""
    if n_boot <= 0:
        return float("nan"), float("nan")
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    rng = np.random.default_rng(seed)
    n, values, tries = len(score), [], 0
    while len(values) < n_boot and tries < 20 * n_boot:
        tries += 1
        idx = rng.integers(0, n, n)
        p = positive[idx]
        if p.all() or not p.any():
            continue
        values.append(METRICS[metric](p, score[idx]))
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.nanpercentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def rank_signals(signals: Mapping[str, np.ndarray], directions: Mapping[str, str], positive: np.ndarray,
                 metrics: tuple[str, ...] = ERROR_METRICS, n_boot: int = 200, seed: int = 0) -> list[SignalScore]:
    """Every metric of every signal (each (N,), oriented by its direction) for the positives (N,),
    with bootstrap intervals (the same resamples for every signal: ``seed``). Rows ordered by signal
    in the order given, then metric."""
    rows = []
    for name, values in signals.items():
        score = oriented(values, directions[name])
        for metric in metrics:
            lo, hi = bootstrap_interval(positive, score, metric, n_boot, seed=seed)
            rows.append(SignalScore(name, metric, METRICS[metric](positive, score), lo, hi))
    return rows


def finite_features(train: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both parts (N_train, S) and (N_other, S) with the combination's non-finite rule applied from the
    training part's statistics, and one 0/1 column appended per signal that is non-finite in either
    part. Returns ((N_train, S + F), (N_other, S + F))."""
    train, other = np.asarray(train, dtype=float), np.asarray(other, dtype=float)
    flagged = ~(np.isfinite(train).all(0) & np.isfinite(other).all(0))
    filled = []
    for x in (train, other):
        x = x.copy()
        for j in range(x.shape[1]):
            ref = train[:, j][np.isfinite(train[:, j])]
            lo, hi, mid = (ref.min(), ref.max(), float(np.median(ref))) if ref.size else (0.0, 0.0, 0.0)
            col = x[:, j]
            col[np.isposinf(col)] = hi
            col[np.isneginf(col)] = lo
            col[np.isnan(col)] = mid
        filled.append(x)
    extra = [(~np.isfinite(raw[:, flagged])).astype(float) for raw in (train, other)]
    return np.hstack([filled[0], extra[0]]), np.hstack([filled[1], extra[1]])


def stratified_folds(positive: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(N,) fold 0..folds-1 of each sample: ``folds`` stratified parts of the positives (N,) and the
    rest, shuffled with ``seed`` (scikit-learn's StratifiedKFold). Raises ValueError when either class
    has fewer than ``folds`` samples."""
    positive = np.asarray(positive, dtype=bool)
    n_min = int(min(positive.sum(), (~positive).sum()))
    if n_min < folds:
        raise ValueError(f"cross-fitting needs at least {folds} samples of each class, found {n_min}")
    fold = np.empty(len(positive), dtype=int)
    cut = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(cut.split(np.zeros(len(positive)), positive)):
        fold[test] = k
    return fold


def cross_fitted_combination(signals: np.ndarray, positive: np.ndarray, folds: int = 5,
                             seed: int = 0, fold: np.ndarray | None = None,
                             fold_columns: Mapping[int, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probability of the positive class from a logistic regression over all signals
    (N, S): the samples are cut into ``folds`` stratified parts (:func:`stratified_folds`, seeded;
    or the given ``fold`` (N,)), and each part's scores come from a model fitted on the other parts
    only (standardised features, the non-finite rule of :func:`finite_features` with the training
    parts' statistics). ``fold_columns`` {k: (N,) or (N, E)} adds columns that differ per fold: a
    learned signal as fold k's model may see it (out-of-fold within the training parts, never fitted
    on fold k's answers). Returns (scores (N,), fold (N,))."""
    x = np.asarray(signals, dtype=float)
    positive = np.asarray(positive, dtype=bool)
    fold = stratified_folds(positive, folds, seed) if fold is None else np.asarray(fold)
    scores = np.empty(len(positive), dtype=float)
    for k in sorted(set(fold.tolist())):
        train, test = fold != k, fold == k
        xk = x if fold_columns is None else np.hstack([x, np.asarray(fold_columns[k], dtype=float).reshape(len(x), -1)])
        xtr, xte = finite_features(xk[train], xk[test])
        scale = StandardScaler().fit(xtr)
        model = LogisticRegression(max_iter=1000).fit(scale.transform(xtr), positive[train])
        scores[test] = model.predict_proba(scale.transform(xte))[:, 1]
    return scores, fold


def spearman_matrix(signals: Mapping[str, np.ndarray]) -> np.ndarray:
    """(S, S) Spearman correlations between the signals (their raw values: the sign shows whether two
    signals rise together); NaN rows of a pair are left out of that pair, ±inf rank at the ends."""
    names = list(signals)
    out = np.eye(len(names))
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = np.asarray(signals[names[i]], dtype=float), np.asarray(signals[names[j]], dtype=float)
            ok = ~(np.isnan(a) | np.isnan(b))
            if ok.sum() < 3:
                rho = float("nan")
            else:
                ra, rb = rankdata(a[ok]), rankdata(b[ok])  # ranks first: spearmanr rejects inf
                rho = float(spearmanr(ra, rb).statistic)
            out[i, j] = out[j, i] = rho
    return out
