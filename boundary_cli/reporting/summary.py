"""Summaries of result tables: per-subspace margins (with bootstrap confidence intervals of the
median) and the per-class and nearest-flip statistics of the decision-flip walks."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import bootstrap

IDENTITY = ["dataset", "variant", "model", "training", "seed", "overrides"]
SUBSPACE = ["subspace", "offset", "block", "dim"]
STATISTICS = ("n", "median", "q25", "q75", "median_ci_low", "median_ci_high", "share_converged", "share_correct")
TIGHTNESS = ("median_min", "median_bisect", "median_gap", "p90_gap", "share_gap_above_1_1", "n_gap_nan")


def median_ci(values: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median (NaN when fewer than 2 values)."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float("nan"), float("nan")
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    with np.errstate(invalid="ignore"):  # infinite margins make scipy's standard error NaN; unused here
        res = bootstrap((values,), np.median, confidence_level=confidence, n_resamples=n_resamples,
                        method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize_margins(margins: pd.DataFrame) -> pd.DataFrame:
    """One row per run and subspace of a ``margins.csv`` table.

    Columns: the identity columns present, subspace, offset, block, dim, n, median, q25, q75,
    median_ci_low, median_ci_high (bootstrap 95%), share_converged, share_correct. Statistics are
    over every row, non-converged ones included (their margin is what DeepFool reached); infinite
    margins (a subspace blind to the gradient) count as larger than any other.

    A table with refinement columns (``margin_min``, ``gap``) also gets: median_min and
    median_bisect (over the rows that have them: not the non-converged ones), median_gap and
    p90_gap (over rows with a finite gap), share_gap_above_1_1 (of those rows) and n_gap_nan (rows
    not refined: DeepFool did not converge or could not move, or no refinement ran).
    """
    keys = [c for c in IDENTITY if c in margins.columns] + SUBSPACE
    tight = "gap" in margins.columns and "margin_min" in margins.columns
    rows = []
    for key, group in margins.groupby(keys, sort=False, dropna=False):
        m = group["margin_l2"].to_numpy(dtype=float)
        lo, hi = median_ci(m)
        row = dict(zip(keys, key), n=len(m), median=float(np.median(m)),
                   q25=float(np.quantile(m, 0.25)), q75=float(np.quantile(m, 0.75)),
                   median_ci_low=lo, median_ci_high=hi,
                   share_converged=float(group["converged"].mean()),
                   share_correct=float(group["correct"].mean()))
        if tight:
            row.update(_tightness(group))
        rows.append(row)
    return pd.DataFrame(rows, columns=keys + list(STATISTICS) + (list(TIGHTNESS) if tight else []))


def _tightness(group: pd.DataFrame) -> dict[str, float]:
    def median(col: str) -> float:
        v = group[col].to_numpy(dtype=float)
        v = v[~np.isnan(v)]
        return float(np.median(v)) if v.size else float("nan")

    gap = group["gap"].to_numpy(dtype=float)
    ok = gap[np.isfinite(gap)]
    return dict(median_min=median("margin_min"), median_bisect=median("margin_bisect"),
                median_gap=float(np.median(ok)) if ok.size else float("nan"),
                p90_gap=float(np.quantile(ok, 0.9)) if ok.size else float("nan"),
                share_gap_above_1_1=float((ok > 1.1).mean()) if ok.size else float("nan"),
                n_gap_nan=int(len(gap) - ok.size))


def flip_summary(flips: pd.DataFrame) -> pd.DataFrame:
    """Per pool, source and target class of a ``flips.csv`` table: rows, share flipped, median/mean L2
    and squared L2 and mean steps of the flipped rows (the own slot left out)."""
    walked = flips[flips["status"] != "own"]
    flipped = walked[walked["status"] == "flipped"]
    keys = ["pool", "source_pred", "target"]
    counts = walked.groupby(keys).agg(n=("l2", "size"), n_capped=("status", lambda s: int((s == "capped").sum())))
    dist = flipped.groupby(keys).agg(n_flipped=("l2", "size"), median_l2=("l2", "median"), mean_l2=("l2", "mean"),
                                     median_l2_sq=("l2_sq", "median"), mean_l2_sq=("l2_sq", "mean"),
                                     mean_steps=("steps", "mean"))
    out = counts.join(dist, how="left").reset_index()
    out["n_flipped"] = out["n_flipped"].fillna(0).astype(int)
    out["share_flipped"] = out["n_flipped"] / out["n"]
    return out[["pool", "source_pred", "target", "n", "n_flipped", "n_capped", "share_flipped", "median_l2",
                "mean_l2", "median_l2_sq", "mean_l2_sq", "mean_steps"]]


def median_nearest_flip(nearest: pd.DataFrame, distance: str = "l2") -> dict[str, float]:
    """Per pool of a nearest-flip table (one row per image, ``nearest_target`` -1 when none of its
    walks flipped), the median distance to the nearest flip over the images that have one, rounded
    to 6 digits; NaN for a pool where no image flipped."""
    out = {}
    for pool, rows in nearest.groupby("pool", sort=False):
        found = rows.loc[rows["nearest_target"] >= 0, distance]
        out[str(pool)] = round(float(found.median()), 6) if len(found) else float("nan")
    return out
