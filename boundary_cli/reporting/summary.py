"""Per-subspace summaries of margin tables, with bootstrap confidence intervals of the median."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import bootstrap

IDENTITY = ["dataset", "variant", "model", "training", "seed", "overrides"]
SUBSPACE = ["subspace", "offset", "block", "dim"]
STATISTICS = ("n", "median", "q25", "q75", "median_ci_low", "median_ci_high", "share_converged", "share_correct")


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
    """
    keys = [c for c in IDENTITY if c in margins.columns] + SUBSPACE
    rows = []
    for key, group in margins.groupby(keys, sort=False, dropna=False):
        m = group["margin_l2"].to_numpy(dtype=float)
        lo, hi = median_ci(m)
        rows.append(dict(zip(keys, key), n=len(m), median=float(np.median(m)),
                         q25=float(np.quantile(m, 0.25)), q75=float(np.quantile(m, 0.75)),
                         median_ci_low=lo, median_ci_high=hi,
                         share_converged=float(group["converged"].mean()),
                         share_correct=float(group["correct"].mean())))
    return pd.DataFrame(rows, columns=keys + list(STATISTICS))
