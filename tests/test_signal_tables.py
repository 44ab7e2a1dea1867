"""The signals report's one ranking table per run, from a hand-written merged ranking."""

from __future__ import annotations

import numpy as np
import pandas as pd

from boundary_cli.reporting.signal_tables import file_stem, rankings_markdown, report_files, wide_rankings


def _merged() -> pd.DataFrame:
    """Two runs of a sweep as report merges them: run A (errors) with three signals and the
    combination, run B (mislabeled) with two signals; AUROC ordering planted by hand."""
    rows = []
    a = dict(msp=(0.90, 0.30), deepfool_full=(0.85, 0.50), lcr=(0.95, 0.10), everything=(0.97, 0.05))
    cost = dict(msp=(1.0, 0.0, 3e-5), deepfool_full=(15.0, 66.0, 3e-3), lcr=(655.0, 0.0, 1.6e-2),
                everything=(671.0, 66.0, 2e-2))
    for signal, (auc, fpr) in a.items():
        for metric, value in (("auroc", auc), ("aupr", auc - 0.4), ("fpr_at_95_tpr", fpr)):
            rows.append(dict(dataset="fashion_mnist", model="lenet", training="quick", task="errors", signal=signal,
                             direction="low", metric=metric, value=value, ci_low=value - 0.01,
                             ci_high=value + 0.01, n_samples=2000, n_positive=193, work="w",
                             forwards_per_sample=cost[signal][0], backwards_per_sample=cost[signal][1],
                             seconds_per_sample=cost[signal][2], run="multirun/0", label="model=lenet"))
    for signal, auc in dict(loss=0.80, msp=0.88).items():
        for metric, value in (("auroc", auc), ("precision_at_k", auc - 0.3), ("aupr", auc - 0.2)):
            rows.append(dict(dataset="digits", model="small_cnn", training="quick", task="mislabeled", signal=signal,
                             direction="high", metric=metric, value=value, ci_low=np.nan, ci_high=np.nan,
                             n_samples=600, n_positive=60, work="logits", forwards_per_sample=1.0,
                             backwards_per_sample=0.0, seconds_per_sample=np.nan, run="multirun/1",
                             label="model=small_cnn"))
    return pd.DataFrame(rows)


def test_one_wide_table_per_run_ranked_by_auroc_with_the_combination_last():
    tables = wide_rankings(_merged())
    assert list(tables) == ["multirun/0", "multirun/1"]
    a = tables["multirun/0"]
    assert a["signal"].tolist() == ["lcr", "msp", "deepfool_full", "everything"]
    assert a["rank"].tolist()[:3] == [1, 2, 3] and pd.isna(a["rank"].iloc[3])
    row = a.set_index("signal").loc["deepfool_full"]
    assert (row["auroc"], row["auroc_ci_low"], row["auroc_ci_high"]) == (0.85, 0.84, 0.86)
    assert row["fpr_at_95_tpr"] == 0.50 and row["backwards_per_sample"] == 66.0 and row["task"] == "errors"
    b = tables["multirun/1"]
    assert b["signal"].tolist() == ["msp", "loss"] and "precision_at_k" in b and "fpr_at_95_tpr" not in b


def test_markdown_bolds_the_best_single_signal_of_each_metric_and_converts_seconds():
    md = rankings_markdown(wide_rankings(_merged()))
    lines = md.splitlines()
    lcr = next(line for line in lines if line.startswith("| lcr "))
    everything = next(line for line in lines if line.startswith("| everything"))
    assert lcr.count("**") == 6  # best AUROC, AUPR and lowest FPR: lcr, not the (higher) combination
    assert "**" not in everything and "(cross-fitted)" in everything
    assert "| 0.950 (0.940–0.960) |" in lcr.replace("**", "") and lcr.endswith("| 655.0 | 0.0 | 16.00 |")
    assert "193 wrong predictions" in md and "60 mislabeled points" in md
    msp_b = [line for line in lines if line.startswith("| msp ")][1]
    assert msp_b.endswith("| – |") and "**0.880**" in msp_b  # no interval without a bootstrap, no seconds


def test_report_files_name_one_csv_per_run_and_the_markdown():
    files = report_files({"ranking": _merged()})
    assert set(files) == {"rankings/multirun_0.csv", "rankings/multirun_1.csv", "rankings.md"}
    assert report_files({}) == {} and file_stem("a/b c/0") == "a_b_c_0"
