"""Figures drawn from result tables: each function takes data and returns a matplotlib Figure.

No pyplot state is used, so long sweeps leak no figures and plots can be redrawn from the CSVs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from torch import Tensor


def _frequency_axis(ax, offsets: list[int], with_full: bool = False) -> None:
    ticks = list(range(len(offsets)))[:: max(1, len(offsets) // 10)]
    labels = [str(offsets[t]) for t in ticks]
    if with_full:
        ticks, labels = [-1] + ticks, ["full"] + labels
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels)
    ax.set_xlabel("DCT block offset (low → high frequency)")
    ax.set_xlim(-1.7 if with_full else -0.7, len(offsets) - 0.3)


def margins_figure(margins: pd.DataFrame, summary: pd.DataFrame, title: str, seed: int = 0) -> Figure:
    """Margin along frequency for one run: every sample (jittered), the median with its bootstrap
    95% interval, the full-space median, and the share of converged DeepFool runs per block. When the
    run refined its margins (a ``margin_min`` column with values), DeepFool's and the refined samples
    stand side by side in each block (left and right of the tick), each with its median line.

    Args:
        margins: rows of ``margins.csv`` (subspace, offset, margin_l2, converged).
        summary: rows of ``summary.csv`` for the same run.
        title: figure title.
        seed: seed of the horizontal jitter.
    """
    rng = np.random.default_rng(seed)
    blocks = summary[summary["subspace"] != "full"].reset_index(drop=True)
    fig = Figure(figsize=(10, 4.5))
    ax = fig.subplots()
    offsets = blocks["offset"].astype(int).tolist()
    pos = {o: i for i, o in enumerate(offsets)}
    sub = margins[margins["subspace"] != "full"]
    finite = sub[np.isfinite(sub["margin_l2"])]
    refined = "margin_min" in margins.columns and bool(np.isfinite(margins["margin_min"]).any())
    shift, spread = (-0.2, 0.07) if refined else (0.0, 0.1)
    x = finite["offset"].map(pos).to_numpy(dtype=float) + shift + spread * rng.standard_normal(len(finite))
    conv = finite["converged"].to_numpy(dtype=bool)
    ax.scatter(x[conv], finite["margin_l2"].to_numpy()[conv], s=4, alpha=0.3, color="tab:blue", lw=0,
               label="sample (DeepFool)" if refined else "sample")
    if refined:
        tight = sub[np.isfinite(sub["margin_min"])]
        xt = tight["offset"].map(pos).to_numpy(dtype=float) + 0.2 + spread * rng.standard_normal(len(tight))
        ax.scatter(xt, tight["margin_min"], s=4, alpha=0.3, color="tab:purple", lw=0, label="sample (refined)")
        ax.plot(range(len(blocks)), blocks["median_min"], ".-", color="tab:purple", lw=2, ms=8,
                label="median (refined)")
    if (~conv).any():
        ax.scatter(x[~conv], finite["margin_l2"].to_numpy()[~conv], s=8, alpha=0.5, color="tab:gray",
                   marker="x", lw=0.6, label="sample, not converged")
    ax.fill_between(range(len(blocks)), blocks["median_ci_low"], blocks["median_ci_high"],
                    color="tab:red", alpha=0.2, lw=0, label="median 95% CI")
    ax.plot(range(len(blocks)), blocks["median"], ".-", color="tab:red", lw=2, ms=10,
            label="median (DeepFool)" if refined else "median")
    full = summary[summary["subspace"] == "full"]
    if len(full):
        ax.axhline(float(full["median"].iloc[0]), color="black", ls="--", lw=1,
                   label="full-space median (DeepFool)" if refined else "full-space median")
        if refined and "median_min" in full.columns:
            ax.axhline(float(full["median_min"].iloc[0]), color="tab:purple", ls=":", lw=1,
                       label="full-space median (refined)")
    finite_medians = blocks["median"][np.isfinite(blocks["median"])]
    if len(finite_medians):
        top = max(1.3 * float(finite_medians.max()), float(np.quantile(finite["margin_l2"], 0.95)))
        ax.set_ylim(0, top)
        hidden = int((finite["margin_l2"] > top).sum()) + int((~np.isfinite(sub["margin_l2"])).sum())
        if hidden:
            ax.text(0.01, 0.97, f"{hidden} points above the axis", transform=ax.transAxes, va="top", fontsize=8)
    _frequency_axis(ax, offsets)
    ax.set_ylabel("margin ‖δ‖₂ (pixel units)")
    ax.set_title(title)
    share = ax.twinx()
    share.step(range(len(blocks)), blocks["share_converged"], where="mid", color="tab:green", alpha=0.6, lw=1,
               label="share converged (right axis)")
    share.set_ylim(0, 1.05)
    share.set_ylabel("share converged", color="tab:green")
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = share.get_legend_handles_labels()
    ax.legend(handles + h2, labels + l2, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8,
              markerscale=2, frameon=False)
    return fig


def examples_figure(images: dict[str, Tensor], title: str) -> Figure:
    """A grid of test images: one row per variant name, each image min-max rescaled for display.

    Args:
        images: variant name -> (k, C, H, W) images (C = 1 or 3).
        title: figure title.
    """
    names = list(images)
    k = max(v.shape[0] for v in images.values())
    fig = Figure(figsize=(1.6 * k, 1.7 * len(names) + 0.4))
    axes = np.atleast_2d(fig.subplots(len(names), k, squeeze=False))
    for r, name in enumerate(names):
        for c in range(k):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= images[name].shape[0]:
                ax.axis("off")
                continue
            img = images[name][c].detach().cpu().float()
            img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
            arr = img.permute(1, 2, 0).numpy()
            ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray" if arr.shape[-1] == 1 else None,
                      interpolation="nearest")
            if c == 0:
                ax.set_ylabel(name)
    fig.suptitle(title)
    return fig


def comparison_figure(summary: pd.DataFrame, label: str = "run") -> Figure:
    """Median margin along frequency, one line per run (``label`` column), full space at the left.

    Args:
        summary: concatenated ``summary.csv`` rows with a ``label`` column.
        label: column that names the run of each row.
    """
    fig = Figure(figsize=(10, 4.5))
    ax = fig.subplots()
    offsets: list[int] = []
    for name, group in summary.groupby(label, sort=False):
        blocks = group[group["subspace"] != "full"]
        if len(blocks) > len(offsets):
            offsets = blocks["offset"].astype(int).tolist()
        line, = ax.plot(range(len(blocks)), blocks["median"], ".-", lw=1.5, ms=8, label=str(name))
        full = group[group["subspace"] == "full"]
        if len(full):
            ax.plot([-1], [float(full["median"].iloc[0])], "s", color=line.get_color(), ms=6)
    _frequency_axis(ax, offsets, with_full=True)
    ax.set_ylabel("median margin ‖δ‖₂ (pixel units)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper left")
    return fig
