"""Figures of the lcr experiment: validation ROC curves of the detectors with their operating
points, and the AUROC of LCR against the number of mutants used."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from boundary_cli.reporting.roc import dress_error_roc, roc_curve_line

STYLE = {"lcr": ("tab:green", ":"), "cond": ("tab:red", "--"), "both": ("tab:blue", "-")}
LABEL = {"lcr": "LCR", "cond": "conductance MLP", "both": "LCR + conductance"}


def roc_figure(scores: dict[str, np.ndarray], wrong: np.ndarray, thresholds: dict[str, float], title: str) -> Figure:
    """ROC of each detector (scores: higher = more likely wrong; wrong: 1 for a wrong prediction)
    with the point its threshold picks."""
    fig = Figure(figsize=(6, 5.5), layout="constrained")
    ax = fig.subplots()
    for method, s in scores.items():
        color, ls = STYLE.get(method, ("tab:gray", "-"))
        roc_curve_line(ax, wrong, s, LABEL.get(method, method), ls=ls, color=color, lw=1.8)
        if method in thresholds:
            flagged = s >= thresholds[method]
            ax.plot(flagged[wrong == 0].mean(), flagged[wrong == 1].mean(), "o", color=color, ms=7)
    dress_error_roc(ax, f"Validation ROC of the error detectors (dots: chosen thresholds)\n{title}")
    return fig


def auroc_by_count_figure(table: pd.DataFrame, title: str) -> Figure:
    """AUROC of LCR as a detector against the number of mutants it uses, one line per split."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for split, rows in table.groupby("split", sort=False):
        ax.plot(rows["n_mutants"], rows["auroc"], "o-", label=split)
    ax.set_xlabel("mutants used")
    ax.set_ylabel("AUROC of LCR (wrong vs right predictions)")
    ax.set_title(f"LCR against the number of mutants\n{title}", fontsize=9)
    ax.legend(fontsize=8)
    return fig
