"""One ranking table per run of a signals sweep, as ``boundary report`` writes them.

The merged ``ranking.csv`` of a sweep is long (one row per run, signal and metric). A researcher
comparing models wants, for each model, the signals in order with every metric and the cost side
by side: :func:`wide_rankings` turns the merged rows into one wide table per run (a row per signal,
best AUROC first, the "everything" combination last), and :func:`rankings_markdown` writes them as
Markdown tables (value and bootstrap interval per metric, cost per sample; bold the best single
signal of each metric), ready for a paper's appendix or docs/results.md.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from boundary_cli.detectors.signal_ranking import COMBINED, TASK_POSITIVES

COSTS = {"forwards_per_sample": "fwd/sample", "backwards_per_sample": "bwd/sample",
         "seconds_per_sample": "ms/sample"}  # cost column -> its Markdown header
KEEP = ("run", "label", "dataset", "model", "training", "task", "n_samples", "n_positive")
LOWER_IS_BETTER = ("fpr_at_95_tpr",)


def wide_rankings(ranking: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{run: its wide ranking} from a sweep's merged long ``ranking`` (columns run, signal, metric,
    value, ci_low, ci_high, work, the per-sample costs and the identity columns). Each table has one
    row per signal: ``rank`` (by AUROC, 1 = best single signal; the combination unranked, last), the
    identity, ``signal``, ``direction``, for every metric ``<m>``, ``<m>_ci_low`` and ``<m>_ci_high``,
    then ``work`` and the per-sample costs. Runs in the order of the merged table."""
    out: dict[str, pd.DataFrame] = {}
    for run, rows in ranking.groupby("run", sort=False):
        metrics = list(dict.fromkeys(rows["metric"]))
        first = rows.drop_duplicates("signal").set_index("signal")
        table = pd.DataFrame(index=pd.Index(list(first.index), name="signal"))
        for column in KEEP:
            if column in first:
                table[column] = first[column]
        if "direction" in first:
            table["direction"] = first["direction"]
        for metric in metrics:
            m = rows[rows["metric"] == metric].set_index("signal")
            table[metric] = m["value"]
            table[f"{metric}_ci_low"] = m["ci_low"]
            table[f"{metric}_ci_high"] = m["ci_high"]
        for column in ("work", *COSTS):
            if column in first:
                table[column] = first[column]
        single = table.drop(COMBINED, errors="ignore")
        key = "auroc" if "auroc" in table else metrics[0]
        order = single.sort_values(key, ascending=key in LOWER_IS_BETTER, kind="stable").index.tolist()
        table = table.reindex(order + [s for s in table.index if s not in order]).reset_index()
        table.insert(0, "rank", pd.array([*range(1, len(order) + 1), *[None] * (len(table) - len(order))],
                                         dtype="Int64"))
        out[str(run)] = table
    return out


def file_stem(run: str) -> str:
    """A file name for a run folder (``multirun/2026/0`` -> ``multirun_2026_0``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run).strip("_") or "run"


def _cell(value: float, lo: float, hi: float, bold: bool) -> str:
    if not np.isfinite(value):
        return "–"
    text = f"{value:.3f}" + (f" ({lo:.3f}–{hi:.3f})" if np.isfinite(lo) and np.isfinite(hi) else "")
    return f"**{text}**" if bold else text


def report_files(merged: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame | str]:
    """What ``boundary report`` writes beside a signals sweep's merged tables: ``rankings/<run>.csv``
    (one wide ranking per run) and ``rankings.md`` (all of them as Markdown); empty without a
    merged ``ranking``."""
    ranking = merged.get("ranking")
    if ranking is None or not len(ranking):
        return {}
    tables = wide_rankings(ranking)
    files: dict[str, pd.DataFrame | str] = {f"rankings/{file_stem(run)}.csv": t for run, t in tables.items()}
    files["rankings.md"] = rankings_markdown(tables)
    return files


def rankings_markdown(tables: dict[str, pd.DataFrame]) -> str:
    """The wide tables of :func:`wide_rankings` as Markdown, one section per run: its label, task and
    sample counts, then signal | each metric with its interval | forwards, backwards and ms per
    sample. The best single signal of each metric is bold (lowest for FPR at 95% TPR)."""
    parts = []
    for run, t in tables.items():
        metrics = [c for c in t.columns if f"{c}_ci_low" in t.columns]
        head = t.iloc[0]
        what = TASK_POSITIVES.get(str(head.get("task", "")), "")
        counts = (f"{int(head['n_samples'])} samples, {int(head['n_positive'])} {what or 'positives'}"
                  if "n_samples" in t and "n_positive" in t else "")
        title = " · ".join(str(head[c]) for c in ("dataset", "model", "training") if c in t)
        parts.append(f"### {head.get('label', run)} ({run})\n\n{title}" + (f"; {counts}" if counts else "") + "\n")
        single = t[t["signal"] != COMBINED]
        best = {m: (single[m].min() if m in LOWER_IS_BETTER else single[m].max()) for m in metrics}
        cost_cols = [c for c in COSTS if c in t]
        lines = ["| " + " | ".join(["signal", *metrics, *(COSTS[c] for c in cost_cols)]) + " |",
                 "|" + "---|" * (1 + len(metrics) + len(cost_cols))]
        for _, r in t.iterrows():
            cells = [r["signal"] + (" (cross-fitted)" if r["signal"] == COMBINED else "")]
            cells += [_cell(r[m], r[f"{m}_ci_low"], r[f"{m}_ci_high"],
                            r["signal"] != COMBINED and r[m] == best[m]) for m in metrics]
            for c in cost_cols:
                v = float(r[c]) * (1000.0 if c == "seconds_per_sample" else 1.0)
                cells.append("–" if not np.isfinite(v) else f"{v:.2f}" if c == "seconds_per_sample" else f"{v:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)
