"""experiment=signals through the CLI (task a, first part): the tables a user reads, checked against
scikit-learn on the written columns, the shared work in the cost table, and bad input as one line."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import boundary, cli_env, error_lines
from sklearn.metrics import roc_auc_score

from boundary_cli.experiments.signals import SIGNALS


@pytest.fixture(scope="module")
def signals_run(fake_fashion, tmp_path_factory):
    out = tmp_path_factory.mktemp("signals") / "run"
    boundary("run", "experiment=signals", "dataset=fashion_mnist", "model=lenet", "training=quick",
             "experiment.n_samples=all", "experiment.deepfool.max_iter=30", "experiment.refinement.steps=10",
             "experiment.noise.count=20", "experiment.bootstrap=50", f"hydra.run.dir={out}",
             cwd=out.parent, env=cli_env(fake_fashion["cache"], fake_fashion["data"]))
    return out


@pytest.mark.slow
def test_ranking_auroc_equals_scikit_learn_on_the_written_columns(signals_run):
    per = pd.read_csv(signals_run / "signals_errors.csv")
    ranking = pd.read_csv(signals_run / "ranking.csv")
    wrong = per["wrong"].to_numpy(bool)
    assert 0 < wrong.sum() < len(wrong) and (wrong == (per["label"] != per["prediction"])).all()
    auroc = ranking[ranking.metric == "auroc"].set_index("signal")["value"]
    for name, (direction, _) in SIGNALS.items():
        s = per[name].to_numpy(float)
        s = np.where(np.isnan(s), np.nanmedian(s[np.isfinite(s)]), s)
        s = np.nan_to_num(s if direction == "high" else -s, posinf=1e300, neginf=-1e300)
        assert auroc[name] == pytest.approx(roc_auc_score(wrong, s), abs=1e-9), name
    assert auroc["everything"] == pytest.approx(roc_auc_score(wrong, per["everything"]), abs=1e-9)
    assert set(per["fold"]) == set(range(5))
    assert "loss" not in per.columns and not ranking["signal"].str.contains("loss").any()  # task a: no labels used
    assert (ranking["ci_low"] <= ranking["value"] + 1e-12).all() and (ranking["value"] <= ranking["ci_high"] + 1e-12).all()
    # the lower the confidence, the likelier an error: msp oriented as "low"
    assert auroc["msp"] > 0.5
    assert per["multiple_hits"].between(0, 9).all() and (per["flip_distance"] > 0).all()


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
    assert costs.loc["weights", "used_by"] == "weight_distance" and costs.loc["weights", "forwards"] > 0
    assert info["n_forward"] == int(costs["forwards"].sum())
    assert (signals_run / "roc_errors.png").stat().st_size > 10_000 and (signals_run / "spearman.png").exists()
    sp = pd.read_csv(signals_run / "spearman.csv").set_index("signal")
    assert sp.loc["msp", "msp"] == 1.0 and sp.loc["msp", "entropy"] < 0  # confident = low entropy


@pytest.mark.parametrize("overrides, expected", [
    (["experiment.signals=[msp,lcr_magic]"], r"unknown signal\(s\) 'lcr_magic' in experiment.signals; valid: msp,"),
    (["experiment.signals=[tight_margin]", "experiment.refine=none"], "tight_margin needs a refinement"),
    (["experiment.bootstrap=-1"], "experiment.bootstrap must be an integer >= 0"),
    (["experiment.weights.against=label"], "against must be prediction here"),
])
def test_bad_input_is_one_line(overrides, expected, tmp_path):
    proc = boundary("run", "experiment=signals", *overrides, f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path,
                    env=cli_env(tmp_path / "cache"), check=False)
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert len(lines) == 1 and re.search(expected, lines[0]), proc.stderr[-1500:]


@pytest.mark.slow
def test_sweep_then_report_gives_one_ranking_table_and_a_comparison(fake_fashion, tmp_path):
    env = cli_env(fake_fashion["cache"], fake_fashion["data"])
    sweep = tmp_path / "sweep"
    boundary("run", "-m", "hydra/launcher=local", "experiment=signals", "dataset=fashion_mnist", "model=lenet",
             "training=quick", "experiment.signals=[msp,entropy,noise_ratio]", "experiment.n_samples=all",
             "experiment.noise.count=10", "experiment.noise.scale=0.1,0.5", "experiment.bootstrap=0",
             f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=env)
    boundary("report", str(sweep), cwd=tmp_path, env=env)
    merged = pd.read_csv(sweep / "report" / "signals" / "ranking.csv")  # one table, a run column per model
    assert merged["run"].nunique() == 2
    assert set(merged["signal"]) == {"msp", "entropy", "noise_ratio", "everything"}
    figures = list((sweep / "report").rglob("auroc.png"))
    assert len(figures) == 1 and figures[0].stat().st_size > 10_000
