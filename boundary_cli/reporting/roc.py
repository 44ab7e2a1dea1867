"""The error-detection ROC figure's shared pieces: one curve with its AUROC in the legend, and the
axes every such figure wears (chance diagonal, rates named by what they flag). Issue 17's signal
ranking and the lcr and meta_network figures draw through these."""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from sklearn.metrics import roc_auc_score, roc_curve


def roc_curve_line(ax: Axes, wrong: np.ndarray, score: np.ndarray, label: str, **style) -> float:
    """Draw the ROC of ``score`` (shape (n,), higher = more likely wrong) for the positives
    ``wrong`` (shape (n,), 1 for a wrong prediction) on ``ax``, labelled "label (AUROC x)"; the
    matplotlib line style comes in ``style``. Returns the AUROC."""
    fpr, tpr, _ = roc_curve(wrong, score)
    auroc = float(roc_auc_score(wrong, score))
    ax.plot(fpr, tpr, label=f"{label} (AUROC {auroc:.3f})", **style)
    return auroc


def dress_error_roc(ax: Axes, title: str, legend_fontsize: float = 8, positive: str = "wrong predictions",
                    negative: str = "right predictions") -> None:
    """The chance diagonal, the axis names of an error detector's ROC (what the ``positive`` and
    ``negative`` samples are), ``title`` and the legend in the lower right."""
    ax.plot([0, 1], [0, 1], color="lightgray", lw=1)
    ax.set_xlabel(f"false positive rate ({negative} flagged)")
    ax.set_ylabel(f"true positive rate ({positive} flagged)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=legend_fontsize, loc="lower right")
