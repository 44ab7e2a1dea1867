"""experiment=lcr through the CLI: outputs, resume after a kill, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import boundary, cli_env

# a weak digits model (1 epoch) makes enough wrong predictions to learn from; few mutants keep it quick
BASE = ["experiment=lcr", "training=quick", "training.recipe.epochs=1", "experiment.n_train=all",
        "experiment.n_accept=200", "experiment.min_wrong=10", "experiment.mutants.n_mutants=12",
        "experiment.mutants.max_attempts=60", "experiment.mutants.gamma=0.05", "experiment.auroc_counts=[4,8,12]",
        "experiment.detectors.cond_mlp.epochs=3", "experiment.conductance.n_steps=4"]
LCR_COLUMNS = ["split", "index", "true_label", "prediction", "correct", "lcr", "n_mutants", "p_cond", "p_both"]
DETECTOR_COLUMNS = ["method", "split", "auroc", "threshold", "accuracy", "recall_right", "recall_wrong",
                    "balanced_accuracy"]


@pytest.fixture(scope="module")
def lcr_run(tmp_path_factory, digits_cache) -> Path:
    work = tmp_path_factory.mktemp("lcr")
    boundary("run", *BASE, f"hydra.run.dir={work / 'run'}", cwd=work, env=cli_env(digits_cache))
    return work / "run"


def test_lcr_writes_its_tables_and_figures(lcr_run):
    for name in ["lcr.csv", "mutants.csv", "detectors.csv", "auroc_mutants.csv", "roc.png", "auroc_mutants.png",
                 "run.json"]:
        assert (lcr_run / name).is_file(), name
    table = pd.read_csv(lcr_run / "lcr.csv")
    assert list(table.columns)[-len(LCR_COLUMNS):] == LCR_COLUMNS
    assert set(table["split"]) == {"train", "val", "test"}
    assert table["lcr"].between(0, 1).all() and (table["n_mutants"] == 12).all()
    assert np.allclose(table["lcr"] * 12, np.round(table["lcr"] * 12))  # a share of 12 mutants
    assert (table["correct"] == (table["prediction"] == table["true_label"])).all()
    assert table[["p_cond", "p_both"]].apply(lambda c: c.between(0, 1)).all().all()
    val = table[table["split"] == "val"]["index"]
    test = table[table["split"] == "test"]["index"]
    assert not set(val) & set(test) and len(val) + len(test) == 500  # the digits test split, halved
    mutants = pd.read_csv(lcr_run / "mutants.csv")
    assert {"operator", "seed", "channels_mutated", "accuracy", "accepted"} <= set(mutants.columns)
    assert mutants["accepted"].sum() >= 12 and (mutants["operator"] == "NAI").all()
    detectors = pd.read_csv(lcr_run / "detectors.csv")
    assert list(detectors.columns) == DETECTOR_COLUMNS
    assert set(detectors["method"]) == {"lcr", "cond", "both", "random_forest", "lda"}
    assert set(detectors["split"]) == {"train", "val", "test"}
    assert np.allclose(detectors["balanced_accuracy"], (detectors["recall_right"] + detectors["recall_wrong"]) / 2)
    counts = pd.read_csv(lcr_run / "auroc_mutants.csv")
    assert sorted(set(counts["n_mutants"])) == [4, 8, 12]
    info = json.loads((lcr_run / "run.json").read_text())
    assert info["mutants_accepted"] == 12 and info["mutant_attempts"] <= 60
    assert set(info["auroc_test"]) == {"lcr", "cond", "both", "random_forest", "lda"}


def test_lcr_resumes_from_cached_work(lcr_run, digits_cache, tmp_path):
    again = tmp_path / "again"
    boundary("run", *BASE, f"hydra.run.dir={again}", cwd=tmp_path, env=cli_env(digits_cache))
    a = pd.read_csv(lcr_run / "lcr.csv")
    b = pd.read_csv(again / "lcr.csv")
    assert np.array_equal(a["lcr"], b["lcr"])  # mutants, predictions and conductance came from the cache
    assert np.allclose(a["p_cond"], b["p_cond"])


def run_fails(tmp_path: Path, env: dict, *args: str) -> str:
    proc = boundary("run", *BASE, *args, f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path, env=env, check=False)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr + proc.stdout
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad" / "run.json").exists()
    return err


@pytest.mark.parametrize("args, expect", [
    (["experiment.mutants.gamma=0"], ["gamma", "(0, 1]"]),
    (["experiment.mutants.gamma=1.5"], ["gamma", "(0, 1]"]),
    (["experiment.mutants.operator=XYZ"], ["XYZ", "NAI"]),
    (["experiment.conductance.layers=[features.99]"], ["features.99", "features.13"]),
    (["experiment.mutants.accept_ratio=10"], ["only 0 of", "mutants passed"]),
    (["experiment.min_wrong=100000"], ["wrong", "min_wrong"]),
    (["experiment.n_train=100000"], ["n_train", "training images"]),
])
def test_bad_inputs_give_one_clear_error(tmp_path, digits_cache, args, expect):
    err = run_fails(tmp_path, cli_env(digits_cache), *args)
    for word in expect:
        assert word in err, (word, err)
