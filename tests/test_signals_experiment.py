"""experiment=signals through the CLI: task a on a tiny Fashion-MNIST, task b on digits, the tables a
user reads checked against scikit-learn and hand counts on the written columns, the shared work in the
cost table (the same when chunks are reused), and bad input as one line."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import boundary, cli_env, error_lines
from fake_data import write_imagenet_tree
from sklearn.metrics import roc_auc_score

from boundary_cli.experiments.signals import SIGNALS

FAST = ["experiment.deepfool.max_iter=30", "experiment.refinement.steps=10", "experiment.gaussian.count=20",
        "experiment.bootstrap=50", "experiment.mutants.n_mutants=20", "experiment.mutants.max_attempts=200",
        "experiment.detectors.cond_mlp.epochs=5"]


@pytest.fixture(scope="module")
def signals_run(fake_fashion, tmp_path_factory):
    out = tmp_path_factory.mktemp("signals") / "run"
    boundary("run", "experiment=signals", "dataset=fashion_mnist", "model=lenet", "training=quick",
             "experiment.n_samples=all", *FAST, f"hydra.run.dir={out}",
             cwd=out.parent, env=cli_env(fake_fashion["cache"], fake_fashion["data"]))
    return out


@pytest.fixture(scope="module")
def mislabeled_run(tmp_path_factory):
    """Task b end to end on digits (scikit-learn's real 8x8 digits), every signal the task admits."""
    root = tmp_path_factory.mktemp("signals_b")
    out = root / "run"
    boundary("run", "experiment=signals", "experiment.task=mislabeled", "dataset=digits", "model=small_cnn",
             "training=quick", "experiment.n_samples=600", "experiment.label_noise.rate=0.2", *FAST,
             f"hydra.run.dir={out}", cwd=root, env=cli_env(root / "cache"))
    return out


def _oriented_column(per: pd.DataFrame, name: str) -> np.ndarray:
    """A written signal column as the score the table rates: NaN at the finite median, negated when a
    low value means positive, ±inf at the ends (what scikit-learn is given)."""
    s = per[name].to_numpy(float)
    s = np.where(np.isnan(s), np.nanmedian(s[np.isfinite(s)]), s)
    return np.nan_to_num(s if SIGNALS[name][0] == "high" else -s, posinf=1e300, neginf=-1e300)


@pytest.mark.slow
def test_ranking_auroc_equals_scikit_learn_on_the_written_columns(signals_run):
    per = pd.read_csv(signals_run / "signals_errors.csv")
    ranking = pd.read_csv(signals_run / "ranking.csv")
    wrong = per["wrong"].to_numpy(bool)
    assert 0 < wrong.sum() < len(wrong) and (wrong == (per["label"] != per["prediction"])).all()
    auroc = ranking[ranking.metric == "auroc"].set_index("signal")["value"]
    expected = [s for s in SIGNALS if s not in ("loss", "weight_distance_label", "meta_network")]
    assert list(auroc.index) == [*expected, "everything"]  # no stored meta-network in this cache: no row
    for name in expected:
        assert auroc[name] == pytest.approx(roc_auc_score(wrong, _oriented_column(per, name)), abs=1e-9), name
    assert auroc["everything"] == pytest.approx(roc_auc_score(wrong, per["everything"]), abs=1e-9)
    assert set(per["fold"]) == set(range(5))
    assert "loss" not in per.columns and not ranking["signal"].str.contains("loss").any()  # task a: no labels used
    assert not ranking["signal"].str.contains("label").any()
    assert (ranking["ci_low"] <= ranking["value"] + 1e-12).all() and (ranking["value"] <= ranking["ci_high"] + 1e-12).all()
    # the lower the confidence, the likelier an error: msp oriented as "low"
    assert auroc["msp"] > 0.5
    assert per["multiple_hits"].between(0, 9).all() and (per["flip_distance"] > 0).all()
    assert per["lcr"].between(0, 1).all() and per["p_cond"].between(0, 1).all() and per["p_both"].between(0, 1).all()
    info = json.loads((signals_run / "run.json").read_text())
    assert "no stored meta-network for a lenet zoo on fashion_mnist" in info["meta_network"]
    assert info["mutants"]["accepted"] == 20


@pytest.mark.slow
def test_shared_work_is_counted_once_and_shown(signals_run):
    costs = pd.read_csv(signals_run / "costs.csv").set_index("work")
    ranking = pd.read_csv(signals_run / "ranking.csv")
    info = json.loads((signals_run / "run.json").read_text())
    assert costs.loc["deepfool", "used_by"].split() == ["deepfool_full", "deepfool_low", "deepfool_high", "tight_margin"]
    per_signal = ranking[ranking.metric == "auroc"].set_index("signal")
    assert per_signal.loc["deepfool_full", "forwards_per_sample"] == per_signal.loc["deepfool_high", "forwards_per_sample"]
    n = costs.loc["logits", "samples"]
    assert per_signal.loc["tight_margin", "forwards_per_sample"] == pytest.approx(
        (costs.loc["deepfool", "forwards"] + costs.loc["refine", "forwards"]) / n)
    assert per_signal.loc["msp", "forwards_per_sample"] == 1.0 and per_signal.loc["msp", "backwards_per_sample"] == 0
    assert costs.loc["noise", "forwards"] == n * (20 + 1)
    assert costs.loc["walks", "used_by"].split() == ["flip_distance", "multiple_hits"]  # one set of walks, two signals
    assert costs.loc["mutants", "forwards"] == n * 20  # every accepted mutant predicts every sample once
    assert costs.loc["mutants", "used_by"].split() == ["lcr", "p_both"]
    assert costs.loc["conductance", "used_by"].split() == ["p_cond", "p_both"]
    assert costs.loc["conductance", "forwards"] == n * 11 and costs.loc["conductance", "backwards"] == n * 10
    assert costs.loc["weights", "used_by"] == "weight_distance" and costs.loc["weights", "forwards"] > 0
    assert info["n_forward"] == int(costs["forwards"].sum())
    assert (signals_run / "roc_errors.png").stat().st_size > 10_000 and (signals_run / "spearman.png").exists()
    sp = pd.read_csv(signals_run / "spearman.csv").set_index("signal")
    assert sp.loc["msp", "msp"] == 1.0 and sp.loc["msp", "entropy"] < 0  # confident = low entropy


@pytest.mark.slow
def test_a_reused_run_reports_the_same_costs(signals_run, fake_fashion, tmp_path):
    again = tmp_path / "again"
    boundary("run", "experiment=signals", "dataset=fashion_mnist", "model=lenet", "training=quick",
             "experiment.n_samples=all", *FAST, f"hydra.run.dir={again}",
             cwd=tmp_path, env=cli_env(fake_fashion["cache"], fake_fashion["data"]))
    first = pd.read_csv(signals_run / "costs.csv").set_index("work")
    second = pd.read_csv(again / "costs.csv").set_index("work")
    counts = ["forwards", "backwards", "samples"]
    pd.testing.assert_frame_equal(first[counts], second[counts])  # from the chunks, not from this run's work
    assert second.drop("lcr_detectors")["seconds"].notna().all()
    a, b = pd.read_csv(signals_run / "ranking.csv"), pd.read_csv(again / "ranking.csv")
    assert np.allclose(a["value"], b["value"])


@pytest.mark.slow
def test_mislabeled_points_task_end_to_end_on_digits(mislabeled_run):
    per = pd.read_csv(mislabeled_run / "signals_mislabeled.csv")
    ranking = pd.read_csv(mislabeled_run / "ranking.csv")
    info = json.loads((mislabeled_run / "run.json").read_text())
    assert len(per) == 600 and set(ranking["task"]) == {"mislabeled"}
    noisy = per["noisy"].to_numpy(bool)
    assert (noisy == (per["label_given"] != per["label_true"])).all() and 60 < noisy.sum() < 180
    assert set(ranking["metric"]) == {"auroc", "precision_at_k", "aupr"}
    table = ranking.set_index(["signal", "metric"])["value"]
    k = int(noisy.sum())
    for name in ("loss", "weight_distance_label", "weight_distance", "msp", "lcr"):
        score = _oriented_column(per, name)
        assert table[(name, "auroc")] == pytest.approx(roc_auc_score(noisy, score), abs=1e-9), name
        top = np.argsort(-score, kind="stable")[:k]  # precision at the number of noisy points, by hand
        assert table[(name, "precision_at_k")] == pytest.approx(noisy[top].mean(), abs=1e-9), name
    # the loss at the given label is the cross-entropy there: every noisy label the model did not learn costs
    assert (per.loc[per["prediction"] != per["label_given"], "loss"] > np.log(2) - 1e-6).all()
    # a point whose given label is not predicted has a negative signed distance against that label
    off = per["prediction"] != per["label_given"]
    assert (per.loc[off, "weight_distance_label"] <= 0).all() and (per.loc[~off, "weight_distance_label"] >= 0).all()
    assert table[("loss", "auroc")] > 0.8  # a quick model has not memorised the noise
    assert info["label_noise"]["rate"] == 0.2 and info["task"] == "mislabeled"
    assert (mislabeled_run / "roc_mislabeled.png").stat().st_size > 10_000


@pytest.mark.parametrize("overrides, expected", [
    (["experiment.signals=[msp,lcr_magic]"], r"unknown signal\(s\) 'lcr_magic' in experiment.signals; valid: msp,"),
    (["experiment.signals=[tight_margin]", "experiment.refine=none"], "tight_margin needs a refinement"),
    (["experiment.bootstrap=-1"], "experiment.bootstrap must be an integer >= 0"),
    (["experiment.signals=[msp,loss]"], "loss read the given label, which on the test set is the answer"),
    (["experiment.task=typo"], "unknown experiment.task 'typo'; valid: errors, mislabeled"),
    (["experiment.task=mislabeled", "experiment.label_noise.rate=1.5"], r"label_noise.rate must be a number in \(0, 1\)"),
    (["experiment.mutants.accept_on=train_holdout"], "accept_on must be test here"),
])
def test_bad_input_is_one_line(overrides, expected, tmp_path):
    proc = boundary("run", "experiment=signals", *overrides, f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path,
                    env=cli_env(tmp_path / "cache"), check=False)
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1 and re.search(expected, lines[0]), proc.stderr[-1500:]


def test_a_meta_network_asked_for_where_none_is_stored_is_one_line(tmp_path):
    proc = boundary("run", "experiment=signals", "dataset=digits", "model=small_cnn", "training=quick",
                    "experiment.signals=[msp,meta_network]", f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path,
                    env=cli_env(tmp_path / "cache"), check=False)
    lines = error_lines(proc)
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-1500:]
    assert "no stored meta-network for a small_cnn zoo on digits: run experiment=meta_network" in lines[0]


def test_the_mislabeled_task_on_a_dataset_without_a_training_split_is_one_line(tmp_path):
    write_imagenet_tree(tmp_path / "imagenet", with_meta=False)
    proc = boundary("run", "experiment=signals", "experiment.task=mislabeled", "dataset=imagenet",
                    f"dataset.root={tmp_path / 'imagenet'}", "model=resnet50", f"hydra.run.dir={tmp_path / 'out'}",
                    cwd=tmp_path, env=cli_env(tmp_path / "cache"), check=False)
    lines = error_lines(proc)
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-1500:]
    assert "experiment.task=mislabeled scores training points" in lines[0] and "has no training split" in lines[0]


@pytest.mark.slow
def test_sweep_then_report_gives_a_ranking_table_per_run_and_a_comparison(fake_fashion, tmp_path):
    env = cli_env(fake_fashion["cache"], fake_fashion["data"])
    sweep = tmp_path / "sweep"
    boundary("run", "-m", "hydra/launcher=local", "experiment=signals", "dataset=fashion_mnist", "model=lenet",
             "training=quick", "experiment.signals=[msp,entropy,noise_ratio]", "experiment.n_samples=all",
             "experiment.gaussian.count=10", "experiment.gaussian.scale=0.1,0.5", "experiment.bootstrap=0",
             f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=env)
    boundary("report", str(sweep), cwd=tmp_path, env=env)
    merged = pd.read_csv(sweep / "report" / "signals" / "ranking.csv", dtype={"run": str})  # every run's rows, tagged by run
    assert merged["run"].nunique() == 2
    assert set(merged["signal"]) == {"msp", "entropy", "noise_ratio", "everything"}
    per_run = sorted((sweep / "report" / "signals" / "rankings").glob("*.csv"))
    assert [p.stem for p in per_run] == sorted(merged["run"].unique())  # one ranking table per run
    for path in per_run:
        table = pd.read_csv(path)
        own = merged[(merged["run"] == path.stem) & (merged["metric"] == "auroc")].set_index("signal")["value"]
        assert table["signal"].iloc[-1] == "everything" and table["auroc"].iloc[:-1].is_monotonic_decreasing
        assert np.allclose(table.set_index("signal")["auroc"].reindex(own.index), own)
    md = (sweep / "report" / "signals" / "rankings.md").read_text()
    assert md.count("| signal | auroc | aupr | fpr_at_95_tpr |") == 2
    figures = list((sweep / "report").rglob("auroc.png"))
    assert len(figures) == 1 and figures[0].stat().st_size > 10_000
