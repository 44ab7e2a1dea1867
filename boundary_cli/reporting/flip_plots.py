"""Figures of the flip experiments, drawn from their long tables (no pyplot state).

Every axis says which distance it shows: ``l2`` is the Euclidean distance, ``l2_sq`` its square
(what the reference plotted under the label "L2").
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

POOL_STYLE = {"train": ("tab:blue", "--"), "test": ("tab:red", "--"), "uniform": ("tab:green", ":"),
              "gaussian": ("tab:purple", ":")}


def distance_label(distance: str) -> str:
    """Axis label that says which distance is plotted."""
    return "squared L2 distance" if distance == "l2_sq" else "L2 distance"


def _style(pool: str) -> tuple[str, str]:
    return POOL_STYLE.get(pool, ("tab:gray", "-"))


def _grid(n: int, width: float = 3.6, height: float = 2.8) -> tuple[Figure, list]:
    cols = min(3, max(1, n))
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(width * cols, height * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def nearest_flip_histogram(nearest: pd.DataFrame, dist: str, title: str) -> Figure:
    """Histogram of the distance to the nearest flip, one outline per pool (train vs test vs noise),
    from a nearest-flip table (one row per image; ``nearest_target`` -1 when none flipped)."""
    near = nearest[nearest["nearest_target"] >= 0]
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    values = near[dist].to_numpy()
    bins = np.histogram_bin_edges(values, bins=40) if len(values) else 10
    for pool, sub in near.groupby("pool"):
        color, _ = _style(pool)
        ax.hist(sub[dist], bins=bins, histtype="step", lw=1.8, color=color,
                label=f"{pool} (n={len(sub)}, median {sub[dist].median():.3g})")
    ax.set_xlabel(f"{distance_label(dist)} to the nearest flip")
    ax.set_ylabel("images")
    ax.set_title(f"Nearest decision flip per image\n{title}", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def flip_lines(table: pd.DataFrame, source: int, dist: str, title: str) -> Figure:
    """One panel per target class: distance of every image predicted as ``source`` (x: image in
    pool order), one line per pool."""
    sub = table[(table["source_pred"] == source) & (table["status"] != "own")]
    targets = sorted(sub["target"].unique())
    fig, axes = _grid(len(targets))
    for ax, t in zip(axes, targets):
        for pool, rows in sub[sub["target"] == t].groupby("pool", sort=False):
            color, ls = _style(pool)
            ok = rows["status"] == "flipped"
            ax.plot(np.arange(len(rows)), rows[dist].where(ok), ls=ls, color=color, lw=1.2, marker=".", ms=3,
                    label=pool)
        ax.set_title(f"From {source} to {t}", fontsize=10)
        ax.set_xlabel("image")
        ax.set_ylabel(distance_label(dist))
    if axes:
        axes[0].legend(fontsize=7)
    fig.suptitle(f"Walk distance from class {source} to every other class (flipped walks)\n{title}", fontsize=10)
    return fig


def flip_histograms(table: pd.DataFrame, source: int, dist: str, title: str) -> Figure:
    """One panel per target class: histograms of the distances from ``source``, one per pool."""
    sub = table[(table["source_pred"] == source) & (table["status"] == "flipped")]
    targets = sorted(sub["target"].unique())
    fig, axes = _grid(len(targets))
    for ax, t in zip(axes, targets):
        rows = sub[sub["target"] == t]
        bins = np.histogram_bin_edges(rows[dist], bins=20)
        for pool, part in rows.groupby("pool", sort=False):
            color, _ = _style(pool)
            ax.hist(part[dist], bins=bins, histtype="step", lw=1.5, color=color, label=pool)
        ax.set_title(f"From {source} to {t}", fontsize=10)
        ax.set_xlabel(distance_label(dist))
        ax.set_ylabel("images")
    if axes:
        axes[0].legend(fontsize=7)
    fig.suptitle(f"Distribution of walk distances from class {source}\n{title}", fontsize=10)
    return fig


def layer_boxes(layers: pd.DataFrame, names: list[str], dist: str, title: str) -> Figure:
    """One panel per layer: box plot per pool of the activation distance between each image and
    the end of its walks (flipped walks only)."""
    col = "layer_l2_sq" if dist == "l2_sq" else "layer_l2"
    data = layers[layers["status"] == "flipped"]
    fig, axes = _grid(len(names), width=3.0)
    pools = list(dict.fromkeys(data["pool"]))
    for ax, name in zip(axes, names):
        rows = data[data["layer"] == name]
        values = [rows.loc[rows["pool"] == p, col].to_numpy() for p in pools]
        if any(len(v) for v in values):
            box = ax.boxplot([v if len(v) else [np.nan] for v in values], showfliers=False, patch_artist=True)
            for patch, p in zip(box["boxes"], pools):
                patch.set_facecolor(_style(p)[0])
                patch.set_alpha(0.4)
            ax.set_xticks(range(1, len(pools) + 1), pools, fontsize=8)
        ax.set_title(f"layer {name}", fontsize=10)
        ax.set_ylabel(f"activation {distance_label(dist)}", fontsize=8)
    fig.suptitle(f"Distance between an image and its flips, per layer\n{title}", fontsize=10)
    return fig


def hits_figure(summary: pd.DataFrame, title: str) -> Figure:
    """Multiple hits: histogram of hits per image for each checkpoint, and the per-image change
    between the first and the last checkpoint."""
    epochs = list(dict.fromkeys(summary["epoch"]))
    fig = Figure(figsize=(11 if len(epochs) > 1 else 6, 4), layout="constrained")
    axes = fig.subplots(1, 2 if len(epochs) > 1 else 1, squeeze=False).ravel()
    top = int(summary["n_targets"].max()) if len(summary) else 1
    bins = np.arange(-0.5, top + 1.5)
    for i, ep in enumerate(epochs):
        h = summary.loc[summary["epoch"] == ep, "hits"]
        axes[0].hist(h, bins=bins, histtype="step", lw=1.8, color=f"C{i}",
                     label=f"epoch {ep}: mean {h.mean():.2f} of {top}")
    axes[0].set_xlabel("hits: targets whose walk first entered another class")
    axes[0].set_ylabel("images")
    axes[0].legend(fontsize=8)
    if len(epochs) > 1:
        first, last = epochs[0], epochs[-1]
        wide = summary.pivot(index="sample_index", columns="epoch", values="hits")
        diff = (wide[last] - wide[first]).to_numpy()
        axes[1].hist(diff, bins=np.arange(diff.min() - 0.5, diff.max() + 1.5) if len(diff) else 10, color="tab:gray")
        axes[1].set_xlabel(f"hits at epoch {last} − hits at epoch {first}")
        axes[1].set_ylabel("images")
    fig.suptitle(f"Multiple hits\n{title}", fontsize=10)
    return fig


def ratio_figure(table: pd.DataFrame, layers: list[str], column: str, title: str) -> Figure:
    """Own-to-flip ratio per layer: a thin line per image, the median in bold (log scale)."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    pos = {name: i for i, name in enumerate(layers)}
    for _, rows in table.groupby("sample_index"):
        ax.plot(rows["layer"].map(pos), rows[column], color="tab:blue", alpha=0.15, lw=0.8)
    med = table.groupby("layer")[column].median().reindex(layers)
    ax.plot(range(len(layers)), med.to_numpy(), color="black", lw=2.5, marker="o", label="median")
    ax.set_xticks(range(len(layers)), layers)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    squared = column.endswith("_sq")
    ax.set_ylabel(f"distance to own-class centroid / to nearest flip{' (squared L2)' if squared else ' (L2)'}")
    ax.legend()
    ax.set_title(f"Own-to-flip ratio per layer\n{title}", fontsize=10)
    return fig


def train_again_figure(table: pd.DataFrame, dist: str, title: str, max_panels: int = 12) -> Figure:
    """Per overfit point (up to ``max_panels``): distance to each class before (dashed red) and
    after (blue) overfitting, titled with the base model's scores; "misclassified earlier" marks
    points the base model got wrong."""
    points = list(dict.fromkeys(table["sample_index"]))[:max_panels]
    fig, axes = _grid(len(points), width=3.6, height=3.0)
    for ax, idx in zip(axes, points):
        rows = table[table["sample_index"] == idx].sort_values("target")
        ax.plot(rows["target"], rows[f"{dist}_before"], "--o", color="tab:red", ms=3, label="before")
        ax.plot(rows["target"], rows[f"{dist}_after"], "-o", color="tab:blue", ms=3, label="after")
        first = rows.iloc[0]
        head = f"#{idx} label {first['true_label']} p={first['base_confidence']:.3f}"
        if first["misclassified_before"]:
            head += "\nMisclassified earlier"
        ax.set_title(head, fontsize=8, color="tab:red" if first["misclassified_before"] else "black")
        ax.set_xlabel("class")
        ax.set_ylabel(distance_label(dist), fontsize=8)
    if axes:
        axes[0].legend(fontsize=7)
    fig.suptitle(f"Distance to every class before and after overfitting the point\n{title}", fontsize=10)
    return fig
