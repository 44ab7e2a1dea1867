"""Figures that compare the runs of a sweep, one per experiment, drawn by ``boundary report``.

Each takes the sweep's merged tables (``{table name: rows of every run}``, each row tagged with
its run's ``label``) and a title, and returns a matplotlib Figure, or None when the tables hold
nothing to compare (an empty sweep, tables from an older run without the needed columns).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from boundary_cli.detectors.signal_ranking import COMBINED, TASK_POSITIVES
from boundary_cli.geometry.walks import OWN, STATUSES, nearest_flip
from boundary_cli.reporting.plots import comparison_figure


def grouped_bars(values: pd.DataFrame, category: str, value: str, ylabel: str, title: str) -> Figure:
    """One group of bars per ``category`` value, one bar per run (``label`` column), height ``value``.

    Args:
        values: one row per (run label, category) with the bar height in ``value``.
    """
    labels = list(dict.fromkeys(values["label"]))
    categories = list(dict.fromkeys(values[category]))
    width = 0.8 / max(1, len(labels))
    fig = Figure(figsize=(max(6.0, 1.1 * len(categories) * max(1, len(labels)) ** 0.5 + 3), 4.5),
                 layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(categories))
    for i, label in enumerate(labels):
        sub = values[values["label"] == label].set_index(category)[value]
        heights = [float(sub.get(c, np.nan)) for c in categories]
        ax.bar(x - 0.4 + width * (i + 0.5), heights, width, label=str(label))
    ax.set_xticks(x, [str(c) for c in categories])
    ax.set_xlabel(category)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return fig


def margin_comparison(tables: dict[str, pd.DataFrame], title: str) -> Figure | None:
    """Median margin along frequency, one line per run (from the merged ``summary``)."""
    summary = tables.get("summary")
    if summary is None or not len(summary):
        return None
    fig = comparison_figure(summary, label="label")
    fig.axes[0].set_title(f"median margin along frequency: {title}")
    return fig


def decision_flip_comparison(tables: dict[str, pd.DataFrame], title: str) -> Figure | None:
    """Median distance to the nearest flip per pool, one bar per run (from the merged ``flips``)."""
    flips = tables.get("flips")
    if flips is None or not len(flips):
        return None
    codes = {name: i for i, name in enumerate(STATUSES)}
    rows = []
    for (label, pool), sub in flips.groupby(["label", "pool"], sort=False):
        wide = sub.assign(code=sub["status"].map(codes)).pivot_table(
            index="sample_index", columns="target", values=["code", "l2"], aggfunc="first")
        status = torch.tensor(wide["code"].fillna(OWN).to_numpy(), dtype=torch.long)
        _, dist = nearest_flip(status, torch.tensor(wide["l2"].to_numpy(dtype=float)))
        dist = dist[torch.isfinite(dist)]
        if len(dist):
            rows.append(dict(label=label, pool=pool, median_l2=float(np.median(dist.numpy()))))
    if not rows:
        return None
    return grouped_bars(pd.DataFrame(rows), "pool", "median_l2", "median L2 distance to the nearest flip",
                        f"nearest decision flip per image: {title}")


def multiple_hits_comparison(tables: dict[str, pd.DataFrame], title: str) -> Figure | None:
    """Mean number of hits per image at each training epoch, one bar per run (``hits_summary``)."""
    summary = tables.get("hits_summary")
    if summary is None or not len(summary):
        return None
    means = summary.groupby(["label", "epoch"], sort=False, as_index=False)["hits"].mean()
    return grouped_bars(means, "epoch", "hits", "mean hits per image (other classes entered first)",
                        f"multiple hits: {title}")


def own_to_flip_comparison(tables: dict[str, pd.DataFrame], title: str) -> Figure | None:
    """Median own-class / nearest-flip distance ratio per layer, one bar per run (``summary``)."""
    summary = tables.get("summary")
    if summary is None or not len(summary) or "ratio_l2" not in summary:
        return None
    return grouped_bars(summary, "layer", "ratio_l2", "median own-class / nearest-flip ratio (L2)",
                        f"own class vs nearest flip: {title}")


def run_boxes(groups: list[tuple[str, np.ndarray]], ylabel: str, title: str, *, reference: float,
              log: bool = False) -> Figure | None:
    """One box per run of (label, values) pairs, non-finite values (and, on a log axis, values <= 0)
    dropped and runs left empty skipped; a dashed line at ``reference``. None when nothing is left."""
    groups = [(label, v[np.isfinite(v) & ((v > 0) if log else True)]) for label, v in groups]
    groups = [(label, v) for label, v in groups if len(v)]
    if not groups:
        return None
    fig = Figure(figsize=(max(6.0, 1.2 * len(groups) + 3), 4.5), layout="constrained")
    ax = fig.subplots()
    ax.boxplot([v for _, v in groups], showfliers=True)
    ax.set_xticks(range(1, len(groups) + 1), [f"{label}\n(n={len(v)})" for label, v in groups], fontsize=7)
    ax.axhline(reference, color="gray", lw=0.8, ls="--")
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return fig


def train_again_comparison(tables: dict[str, pd.DataFrame], title: str) -> Figure | None:
    """Distance after / before overfitting each point, a box per run, over the (point, class)
    pairs that flipped both before and after (the ``train_again`` table)."""
    table = tables.get("train_again")
    if table is None or not len(table):
        return None
    both = table[(table["status_before"] == "flipped") & (table["status_after"] == "flipped")]
    groups = [(label, (sub["l2_after"] / sub["l2_before"]).to_numpy()) for label, sub in both.groupby("label", sort=False)]
    return run_boxes(groups, "L2 distance after / before overfitting the point",
                     f"boundary distances after training again: {title}", reference=1.0, log=True)


def lcr_comparison(tables: dict[str, pd.DataFrame], title: str) -> Figure | None:
    """Test-split AUROC of every detector, one bar per run (``detectors``)."""
    metrics = tables.get("detectors")
    if metrics is None or not len(metrics):
        return None
    test = metrics[metrics["split"] == "test"]
    if not len(test):
        return None
    return grouped_bars(test, "method", "auroc", "AUROC of wrong predictions (test split)",
                        f"label change rate detectors: {title}")


def weights_boundary_comparison(tables: dict[str, pd.DataFrame], title: str) -> Figure | None:
    """The weight-space distance of each scored point, a box per run (the ``weights_boundary``
    table; signed distances against the label keep their sign)."""
    table = tables.get("weights_boundary")
    if table is None or not len(table):
        return None
    groups = [(label, sub["weight_distance_l2"].to_numpy(dtype=float)) for label, sub in table.groupby("label", sort=False)]
    return run_boxes(groups, "weight-space distance ‖Δθ‖₂", f"boundary-based self-influence: {title}", reference=0.0)


def meta_network_comparison(tables: dict[str, pd.DataFrame], title: str) -> Figure | None:
    """AUROC of the errors per method (meta-networks by features, and the baselines), one bar per run
    (from the merged ``metrics``; the mean over meta-network seeds)."""
    metrics = tables.get("metrics")
    if metrics is None or not len(metrics) or "auroc" not in metrics:
        return None
    rows = metrics[metrics["task"] == "classification"].copy()
    if not len(rows):
        return None
    rows["detector"] = rows["method"] + np.where(rows["method"].str.startswith("meta_"),
                                                 " (" + rows["features"].astype(str) + ")", "")
    means = rows.groupby(["label", "detector"], sort=False, as_index=False)["auroc"].mean()
    return grouped_bars(means, "detector", "auroc", "AUROC of the wrong predictions (test pairs)",
                        f"meta-network vs baselines: {title}")


def signals_comparison(tables: dict[str, pd.DataFrame], title: str) -> Figure | None:
    """AUROC of every signal (columns, the "everything" combination last) for every run of a sweep
    (rows: models, datasets, tasks), from the merged ``ranking``, as an annotated heatmap; a row is
    named by its label (what differs between the runs; its folder when the label is long) and, when
    the runs hold both tasks, by its task."""
    ranking = tables.get("ranking")
    if ranking is None or not len(ranking):
        return None
    rows = ranking[ranking["metric"] == "auroc"].copy()
    if not len(rows):
        return None
    name = rows["label"].astype(str).where(rows["label"].astype(str).str.len() <= 45, rows["run"].astype(str))
    if "task" in rows and rows["task"].nunique() > 1:
        name = name + " · " + rows["task"].map(TASK_POSITIVES)
    rows["row"] = name
    signals = list(dict.fromkeys(s for s in rows["signal"] if s != COMBINED))
    if (rows["signal"] == COMBINED).any():
        signals.append(COMBINED)
    grid = rows.pivot_table(index="row", columns="signal", values="value", aggfunc="first", sort=False)
    grid = grid.reindex(columns=signals)
    fig = Figure(figsize=(2.0 + 0.62 * len(signals), 1.4 + 0.42 * len(grid)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(grid.to_numpy(dtype=float), vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(signals)), signals, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(grid)), list(grid.index), fontsize=8)
    for i in range(len(grid)):
        best = np.nanmax(grid.iloc[i].drop(COMBINED, errors="ignore").to_numpy(dtype=float))
        for j, v in enumerate(grid.iloc[i].to_numpy(dtype=float)):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if v > 0.8 else "white", fontweight="bold" if v == best else "normal")
    fig.colorbar(im, ax=ax, shrink=0.8, label="AUROC (bold: best single signal of the row)")
    ax.set_title(f"boundary signals as detectors: {title}", fontsize=9)
    return fig
