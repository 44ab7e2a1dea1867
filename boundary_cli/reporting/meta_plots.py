"""Figures of the meta_network experiment: learning curves of the meta-networks, their predicted
against the true robustness of the test pairs, and ROC curves of error detection against the
confidence and DeepFool baselines."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from boundary_cli.detectors.confidence import r2
from boundary_cli.reporting.roc import dress_error_roc, roc_curve_line

BASELINE_LABEL = dict(msp="max softmax prob.", logit_margin="logit margin", entropy="entropy",
                      deepfool_margin="DeepFool margin")
FEATURE_STYLE = dict(with_logits="-", without_logits="--")


def _key_label(key: tuple) -> str:
    features, backbone, task, seed = key
    return f"{backbone}, {features.replace('_', ' ')}, seed {seed}"


def curves_figure(curves: pd.DataFrame, title: str) -> Figure:
    """Train (thin) and validation (thick) loss per epoch of every meta-network, one panel per task;
    curves: rows of backbone, task, features, seed, epoch, train_loss, val_loss."""
    tasks = list(dict.fromkeys(curves["task"])) if len(curves) else ["regression"]
    fig = Figure(figsize=(5.5 * len(tasks), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(tasks)))
    colors = {}
    for ax, task in zip(axes, tasks):
        rows = curves[curves["task"] == task] if len(curves) else curves
        for (backbone, features, seed), r in rows.groupby(["backbone", "features", "seed"], sort=False):
            c = colors.setdefault(backbone, f"C{len(colors)}")
            ls = FEATURE_STYLE.get(features, ":")
            ax.plot(r["epoch"], r["train_loss"], ls=ls, color=c, lw=0.8, alpha=0.6)
            ax.plot(r["epoch"], r["val_loss"], ls=ls, color=c, lw=1.8,
                    label=f"{backbone}, {features.replace('_', ' ')}, seed {seed}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("MSE" if task == "regression" else "cross entropy")
        ax.set_yscale("log")
        ax.set_title(task, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"Meta-network learning curves (thick: validation, thin: training)\n{title}", fontsize=9)
    return fig


def scatter_figure(predictions: dict[tuple, np.ndarray], truth: np.ndarray, target: str, title: str) -> Figure:
    """Predicted against true ``target`` on the test pairs, one panel per (features, backbone, task,
    seed) key, with the diagonal and the panel's r²."""
    keys = list(predictions)
    cols = min(4, max(1, len(keys)))
    rows = (len(keys) + cols - 1) // cols
    fig = Figure(figsize=(3.4 * cols, 3.3 * max(1, rows)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(max(1, rows), cols, squeeze=False)).ravel()
    lo, hi = float(np.nanmin(truth)), float(np.nanmax(truth))
    for ax, key in zip(axes, keys):
        p = predictions[key]
        ax.scatter(truth, p, s=3, alpha=0.3, color="tab:blue", rasterized=True)
        ax.plot([lo, hi], [lo, hi], color="gray", lw=1)
        ax.set_title(f"{_key_label(key)}: r² {r2(truth, p):.3f}", fontsize=8)
        ax.set_xlabel(f"true {target}")
        ax.set_ylabel(f"predicted {target}")
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    fig.suptitle(f"Meta-network regression on the test pairs\n{title}", fontsize=9)
    return fig


def roc_figure(predictions: dict[tuple, np.ndarray], baselines: dict[str, np.ndarray], correct: np.ndarray,
               title: str) -> Figure:
    """ROC of detecting the wrong predictions among the test pairs: every meta-network (predictions:
    probability of 'correct'; solid with the logits among the features, dashed without) and every
    baseline (scores: higher = more confident; grey, dash-dotted)."""
    wrong = ~np.asarray(correct, dtype=bool)
    fig = Figure(figsize=(6.2, 5.6), layout="constrained")
    ax = fig.subplots()
    both = wrong.any() and (~wrong).any()
    if both:
        for i, (key, p) in enumerate(predictions.items()):
            roc_curve_line(ax, wrong, 1 - p, f"meta {_key_label(key)}", color=f"C{i}",
                           ls=FEATURE_STYLE.get(key[0], "-"), lw=1.6)
        for j, (name, score) in enumerate(baselines.items()):
            roc_curve_line(ax, wrong, -np.asarray(score, dtype=float), BASELINE_LABEL.get(name, name),
                           color=str(0.2 + 0.15 * j), ls=(0, (4, 2 + j)), lw=1.2)
    else:
        ax.text(0.5, 0.5, "the test pairs hold only one class", ha="center", va="center")
    dress_error_roc(ax, f"Detecting wrong predictions on the test pairs\n{title}", legend_fontsize=7)
    return fig
