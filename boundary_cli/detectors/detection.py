"""Detectors that score how likely a classifier's prediction is wrong, their thresholds and their metrics.

Label 1 marks a wrong prediction, 0 a right one, and a higher score means "more likely wrong" throughout.
Follows the lcr reference's evaluation (METHODS.md section 3.6), except that the operating threshold is the
Youden point of the validation ROC instead of a hand-tuned one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

DROPOUT_MODES = ("all", "last")
SKLEARN_KINDS = ("random_forest", "lda")
SPLITS = ("train", "val", "test")


def _binary(labels: np.ndarray) -> np.ndarray:
    return np.asarray(labels).astype(bool)


def youden_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The score threshold maximising TPR - FPR (Youden's J) on the ROC of ``scores`` (N,) against
    ``labels`` (N,) (1 = wrong prediction); a sample is flagged when its score is >= the threshold.

    Every distinct score is a candidate; ties in J go to the highest threshold. Raises ValueError when
    ``labels`` hold only one class (the ROC is undefined).
    """
    labels = _binary(labels)
    if labels.all() or not labels.any():
        raise ValueError("youden_threshold needs both right (0) and wrong (1) predictions among the labels")
    fpr, tpr, thresholds = roc_curve(labels, np.asarray(scores, dtype=np.float64), drop_intermediate=False)
    # index 0 is sklearn's "flag nothing" sentinel (threshold inf), never a useful operating point
    j = tpr[1:] - fpr[1:]
    return float(thresholds[1:][int(np.argmax(j))])


@dataclass
class DetectorMetrics:
    """One detector on one split: AUROC, its threshold and the accuracy and recalls at that threshold."""

    method: str
    split: str
    auroc: float
    threshold: float
    accuracy: float
    recall_right: float
    recall_wrong: float
    balanced_accuracy: float

    def as_row(self) -> dict[str, str | float]:
        """The metrics as a flat dict, one table row."""
        return asdict(self)


def evaluate_detector(scores: np.ndarray, labels: np.ndarray, threshold: float, method: str,
                      split: str) -> DetectorMetrics:
    """Score ``scores`` (N,) against ``labels`` (N,) (1 = wrong prediction), flagging score >= ``threshold``.

    ``recall_wrong`` is the share of wrong predictions flagged (TPR), ``recall_right`` the share of right
    ones left alone (TNR), ``balanced_accuracy`` their mean; a recall, the balanced accuracy and the AUROC
    are NaN when the split lacks the class they need.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = _binary(labels)
    flagged = scores >= threshold
    recall_wrong = float(flagged[labels].mean()) if labels.any() else float("nan")
    recall_right = float((~flagged[~labels]).mean()) if (~labels).any() else float("nan")
    both = labels.any() and (~labels).any()
    return DetectorMetrics(
        method=method,
        split=split,
        auroc=float(roc_auc_score(labels, scores)) if both else float("nan"),
        threshold=float(threshold),
        accuracy=float((flagged == labels).mean()) if len(labels) else float("nan"),
        recall_right=recall_right,
        recall_wrong=recall_wrong,
        balanced_accuracy=(recall_right + recall_wrong) / 2,
    )


def fit_feature_scaling(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column (mean, range) of training features ``train`` (N, D), each (D,), with range = max - min
    (the reference's normalisation (v - mean) / (max - min)); constant columns get range 1.
    """
    train = np.asarray(train, dtype=np.float64)
    mean = train.mean(axis=0)
    rng = train.max(axis=0) - train.min(axis=0)
    rng[rng == 0] = 1.0
    return mean, rng


def apply_feature_scaling(x: np.ndarray, mean: np.ndarray, rng: np.ndarray) -> np.ndarray:
    """(x - mean) / rng for features ``x`` (N, D) and the (D,) statistics of :func:`fit_feature_scaling`."""
    return (np.asarray(x, dtype=np.float64) - mean) / rng


class MLPDetector:
    """A trained MLP whose sigmoid output is the probability that a prediction is wrong."""

    def __init__(self, network: nn.Module, device: str) -> None:
        self.network = network
        self.device = device

    @torch.no_grad()
    def predict_proba(self, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Probabilities (N,) of label 1 for ``features`` (N, D), with dropout off (eval mode)."""
        self.network.eval()
        x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
        out = [torch.sigmoid(self.network(x[i:i + batch_size].to(self.device))).flatten().cpu()
               for i in range(0, len(x), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def _mlp(n_in: int, hidden: tuple[int, ...], dropout: float, dropout_after: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, width in enumerate(hidden):
        layers += [nn.Linear(n_in, width), nn.ReLU()]
        if dropout_after == "all" or i == len(hidden) - 1:
            layers.append(nn.Dropout(dropout))
        n_in = width
    layers.append(nn.Linear(n_in, 1))
    for layer in layers:
        if isinstance(layer, nn.Linear):  # Keras Dense defaults, as in the reference
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def train_mlp(features: np.ndarray, labels: np.ndarray, *, hidden: tuple[int, ...] = (200, 200),
              dropout: float = 0.5, dropout_after: str = "all", epochs: int = 20, batch_size: int = 50,
              lr: float = 1e-3, seed: int = 0, device: str = "cpu") -> MLPDetector:
    """Train an MLP on ``features`` (N, D) to predict ``labels`` (N,) (1 = wrong prediction).

    Each hidden layer is Linear-ReLU, followed by Dropout(``dropout``) after every hidden layer
    (``dropout_after="all"``: the reference's cond detector, 200-200-1) or only after the last one
    (``"last"``: its combined detector, 10-10-1). Adam at ``lr``, binary cross-entropy on the logit,
    ``epochs`` passes over minibatches of ``batch_size`` in a seeded shuffled order. The same seed gives the
    same detector (on one device); the global torch RNG is left as it was.
    """
    if dropout_after not in DROPOUT_MODES:
        raise ValueError(f"dropout_after must be one of {', '.join(DROPOUT_MODES)}; got {dropout_after!r}")
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32).to(device)
    y = torch.as_tensor(_binary(labels), dtype=torch.float32).to(device)
    dev = torch.device(device)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)  # weights and dropout masks
        order = torch.Generator().manual_seed(seed)
        network = _mlp(x.shape[1], tuple(hidden), dropout, dropout_after).to(device)
        optimizer = torch.optim.Adam(network.parameters(), lr=lr)
        loss_fn = nn.BCEWithLogitsLoss()
        network.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(x), generator=order).split(batch_size):
                batch = batch.to(device)
                optimizer.zero_grad()
                loss = loss_fn(network(x[batch]).flatten(), y[batch])
                loss.backward()
                optimizer.step()
    return MLPDetector(network.eval(), device)


class SklearnDetector:
    """A fitted scikit-learn classifier giving the probability that a prediction is wrong."""

    def __init__(self, model: RandomForestClassifier | LinearDiscriminantAnalysis) -> None:
        self.model = model

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Probabilities (N,) of label 1 for ``features`` (N, D)."""
        column = list(self.model.classes_).index(True)
        return self.model.predict_proba(np.asarray(features))[:, column]


def train_sklearn(kind: str, features: np.ndarray, labels: np.ndarray, seed: int = 0) -> SklearnDetector:
    """Fit the reference's alternative detector ``kind`` on ``features`` (N, D) and ``labels`` (N,)
    (1 = wrong prediction): ``random_forest`` (100 trees of depth <= 10, ``random_state=seed``) or ``lda``.

    Raises ValueError for another kind, or when ``labels`` hold only one class.
    """
    if kind not in SKLEARN_KINDS:
        raise ValueError(f"unknown detector kind {kind!r}; valid kinds: {', '.join(SKLEARN_KINDS)}")
    labels = _binary(labels)
    if labels.all() or not labels.any():
        raise ValueError("train_sklearn needs both right (0) and wrong (1) predictions among the labels")
    if kind == "random_forest":
        model = RandomForestClassifier(n_estimators=100, max_depth=10, random_state=seed)
    else:
        model = LinearDiscriminantAnalysis()
    return SklearnDetector(model.fit(np.asarray(features), labels))


@dataclass(frozen=True)
class MLPParams:
    """Architecture and training of an MLP detector, the keyword arguments of :func:`train_mlp`.
    The defaults are the reference's conductance detector (200-200-1, dropout after each hidden layer)."""

    hidden: tuple[int, ...] = (200, 200)
    dropout: float = 0.5
    dropout_after: str = "all"
    epochs: int = 20
    batch_size: int = 50
    lr: float = 1e-3

    def train(self, features: np.ndarray, labels: np.ndarray, seed: int) -> MLPDetector:
        """:func:`train_mlp` with these settings on ``features`` (N, D) and ``labels`` (N,)."""
        return train_mlp(features, labels, **asdict(self), seed=seed)


def out_of_fold_proba(features: np.ndarray, labels: np.ndarray, params: MLPParams, seed: int,
                      folds: int) -> np.ndarray:
    """(N,) probability of label 1 for every row of ``features`` (N, D), each from an MLP trained on
    the other folds (k-fold cross-fitting, rows assigned to folds by a permutation seeded with
    ``seed``; fold k's MLP is seeded ``seed + 1 + k``). A detector stacked on these scores learns
    how much to trust them from honest values, not from an MLP's over-confident training rows."""
    labels = np.asarray(labels)
    fold = np.random.default_rng(seed).permutation(len(labels)) % folds
    out = np.empty(len(labels))
    for k in range(folds):
        held = fold == k
        out[held] = params.train(features[~held], labels[~held], seed + 1 + k).predict_proba(features[held])
    return out


def cross_fitted_detectors(split: np.ndarray, wrong: np.ndarray, lcr: np.ndarray, features: np.ndarray, *,
                           cond: MLPParams = MLPParams(),
                           combined: MLPParams = MLPParams(hidden=(10, 10), dropout_after="last", epochs=30,
                                                           batch_size=100),
                           extra: Sequence[str] = (), folds: int = 5,
                           seed: int = 0) -> tuple[list[DetectorMetrics], dict[str, np.ndarray]]:
    """The lcr reference's detectors of wrong predictions, trained on ``train`` rows, their
    thresholds chosen on ``val`` rows (Youden), reported on every split.

    Args:
        split: (N,) ``train``, ``val`` or ``test`` per row.
        wrong: (N,) 1 where the prediction is wrong.
        lcr: (N,) label change rate per row (a detector by itself).
        features: (N, D) conductance features, scaled by the training rows' statistics
            (:func:`fit_feature_scaling`) before use.
        cond: the MLP on the features giving ``p_cond``; on training rows ``p_cond`` is
            out-of-fold (:func:`out_of_fold_proba` with ``folds``), elsewhere from one MLP trained
            on all training rows.
        combined: the MLP on [lcr, p_cond] giving ``p_both``.
        extra: scikit-learn kinds (:data:`SKLEARN_KINDS`) also trained on [lcr, p_cond].
        seed: seeds every detector.

    Returns:
        (metrics for every method and split, scores {method: (N,)}): methods ``lcr``, ``cond``
        (p_cond), ``both`` (p_both) and the ``extra`` kinds, in that order.
    """
    split, wrong = np.asarray(split), np.asarray(wrong)
    tr, va = split == "train", split == "val"
    mean, rng = fit_feature_scaling(features[tr])
    scaled = apply_feature_scaling(features, mean, rng)
    cond_model = cond.train(scaled[tr], wrong[tr], seed)
    p_cond = np.empty(len(split))
    p_cond[tr] = out_of_fold_proba(scaled[tr], wrong[tr], cond, seed, folds)
    for name in SPLITS[1:]:
        p_cond[split == name] = cond_model.predict_proba(scaled[split == name])
    both = np.stack([lcr, p_cond], axis=1)
    scores = {"lcr": lcr, "cond": p_cond, "both": combined.train(both[tr], wrong[tr], seed).predict_proba(both)}
    for kind in extra:
        scores[kind] = train_sklearn(str(kind), both[tr], wrong[tr], seed=seed).predict_proba(both)
    metrics = []
    for method, score in scores.items():
        thr = youden_threshold(score[va], wrong[va])
        metrics += [evaluate_detector(score[split == name], wrong[split == name], thr, method, name) for name in SPLITS]
    return metrics, scores


def cross_fitted_lcr_scores(fold: np.ndarray, positive: np.ndarray, lcr: np.ndarray, features: np.ndarray, *,
                            cond: MLPParams = MLPParams(),
                            combined: MLPParams = MLPParams(hidden=(10, 10), dropout_after="last", epochs=30,
                                                            batch_size=100),
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """The lcr reference's two learned detectors, cross-fitted over given folds of the scored samples
    themselves, so no score comes from a detector that saw that sample's answer.

    For each fold k, the training part is every other fold: ``p_cond`` of fold k comes from the
    conductance MLP (``cond``) trained on the training part's ``features`` (N, D) (scaled by that
    part's statistics, :func:`fit_feature_scaling`); ``p_both`` of fold k comes from the combined MLP
    trained on the training part's [lcr, p_cond], where those p_cond values are themselves out-of-fold
    within the training part (:func:`out_of_fold_proba`), never fitted on fold k. ``positive`` (N,) is
    the target (1 = wrong prediction, or mislabeled point); ``fold`` (N,) ints in 0..k-1.
    Returns (p_cond (N,), p_both (N,), {k: (N,) p_cond as fold k's models see it: out-of-fold within
    the training part on its rows, p_cond on fold k's}), the last for stacking p_cond into a further
    cross-fitted model without its fold's answers.
    """
    fold, positive = np.asarray(fold), np.asarray(positive).astype(int)
    lcr, features = np.asarray(lcr, dtype=float), np.asarray(features, dtype=float)
    p_cond, p_both = np.empty(len(fold)), np.empty(len(fold))
    seen: dict[int, np.ndarray] = {}
    folds = sorted(set(fold.tolist()))
    for k in folds:
        held, train = fold == k, fold != k
        mean, rng = fit_feature_scaling(features[train])
        tr, te = apply_feature_scaling(features[train], mean, rng), apply_feature_scaling(features[held], mean, rng)
        p_cond[held] = cond.train(tr, positive[train], seed + k).predict_proba(te)
        inner = out_of_fold_proba(tr, positive[train], cond, seed + 100 * (k + 1), max(2, len(folds) - 1))
        both_model = combined.train(np.stack([lcr[train], inner], 1), positive[train], seed + k)
        p_both[held] = both_model.predict_proba(np.stack([lcr[held], p_cond[held]], 1))
        seen[k] = np.where(held, p_cond, 0.0)
        seen[k][train] = inner
    return p_cond, p_both, seen
