"""experiment=meta_network through the CLI as a user types it: digits with small_cnn standing in for
the zoo, real Fashion-MNIST with the reference's LeNet-5, the resume, and one clear line per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import boundary, cli_env

pytestmark = pytest.mark.slow  # trains a zoo and runs the CLI in a subprocess

# 4 grid points (seed 2850) of which 3 train well on digits with 5x the grid's epochs
SMALL = ["experiment=meta_network", "experiment.zoo.size=4", "experiment.zoo.seed=2850",
         "experiment.zoo.min_accuracy=0.5", "experiment.pairs.per_model=100", "experiment.noise.count=50",
         "experiment.meta.epochs=3", "experiment.meta.width=32", "experiment.meta.layers=1",
         "experiment.pairs.min_wrong=3"]
DIGITS = [*SMALL, "dataset=digits", "model=small_cnn", "experiment.zoo.epoch_scale=5"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta_digits")
    env = cli_env(root / "cache")
    boundary("run", *DIGITS, f"hydra.run.dir={root / 'run'}", cwd=root, env=env)
    return root, env


def test_digits_end_to_end_writes_every_table_and_figure(digits_run):
    root, _ = digits_run
    run = root / "run"
    for name in ("metrics.csv", "zoo.csv", "pairs.csv", "curves.csv", "learning_curves.png", "scatter.png",
                 "roc.png", "run.json"):
        assert (run / name).exists(), name
    zoo = pd.read_csv(run / "zoo.csv")
    assert len(zoo) == 4 and zoo["kept"].sum() == (zoo["test_accuracy"] >= 0.5).sum() >= 3
    assert set(zoo["epochs"]) <= {5, 10, 15, 20}  # the grid's epochs times epoch_scale
    pairs = pd.read_csv(run / "pairs.csv")
    assert set(pairs["member"]) == set(zoo.loc[zoo["kept"], "member"])
    assert (pairs["correct"] == (pairs["label"] == pairs["prediction"])).all()
    assert pairs["ratio"].between(0, 1).all() and (pairs["kl"] >= 0).all()
    # strict split: no member and no image on two sides
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        assert not set(pairs.loc[pairs.part == a, "member"]) & set(pairs.loc[pairs.part == b, "member"])
        assert not set(pairs.loc[pairs.part == a, "sample_index"]) & set(pairs.loc[pairs.part == b, "sample_index"])
    m = pd.read_csv(run / "metrics.csv")
    meta = m[m["method"] == "meta_lstm"]
    assert set(zip(meta["task"], meta["features"])) == {(t, f) for t in ("regression", "classification")
                                                       for f in ("with_logits", "without_logits")}
    assert set(m["method"]) == {"meta_lstm", "msp", "logit_margin", "entropy", "deepfool_margin"}
    assert m.loc[m.task == "classification", "auroc"].between(0, 1).all()
    assert m["accuracy"].isna().all()  # plain accuracy only in the balanced protocol
    info = json.loads((run / "run.json").read_text())
    assert info["identity"]["model"] == "small_cnn" and info["identity"]["training"] == "zoo"
    assert info["meta_network"]["features"][-1] == "logits" and "logits" not in info["meta_network"]["without_logits"]


def test_a_second_run_reuses_the_zoo_the_labels_and_the_meta_networks(digits_run):
    root, env = digits_run
    boundary("run", *DIGITS, f"hydra.run.dir={root / 'again'}", cwd=root, env=env)
    info = json.loads((root / "again" / "run.json").read_text())
    assert info["work"]["meta_pairs"]["chunks_reused"] == info["work"]["meta_pairs"]["chunks"]
    assert "meta_network" not in info["work"]  # every meta-network loaded from the cache
    first = pd.read_csv(root / "run" / "metrics.csv")
    again = pd.read_csv(root / "again" / "metrics.csv")
    pd.testing.assert_frame_equal(first.drop(columns="overrides"), again.drop(columns="overrides"))


def test_the_balanced_selection_reports_plain_accuracy_and_too_few_wrong_ones_say_how_many(digits_run):
    root, env = digits_run
    boundary("run", *DIGITS, "experiment.split_by=pair", "experiment.pairs.selection=balanced",
             f"hydra.run.dir={root / 'balanced'}", cwd=root, env=env)
    m = pd.read_csv(root / "balanced" / "metrics.csv")
    assert m.loc[m.method == "meta_lstm"].query("task == 'classification'")["accuracy"].notna().all()
    pairs = pd.read_csv(root / "balanced" / "pairs.csv")
    assert (pairs.groupby(["member", "label", "correct"]).size() <= 10).all()
    proc = boundary("run", *DIGITS, "experiment.pairs.min_wrong=100000", f"hydra.run.dir={root / 'few'}", cwd=root,
                    env=env, check=False)
    assert proc.returncode != 0 and "found only" in proc.stderr and "wrong predictions" in proc.stderr


@pytest.mark.parametrize("override, message", [
    ("experiment.zoo.size=0", "experiment.zoo.size must be a number of grid points in 1..8192"),
    ("experiment.zoo.size=8193", "experiment.zoo.size must be a number of grid points in 1..8192"),
    ("experiment.backbones=[lstm,mamba]", "unknown backbone (experiment.backbones) 'mamba'; valid: rnn, lstm, gru"),
    ("experiment.features=[fc9]", "experiment.features"),
    ("experiment.zoo.model=lenet5", "lenet5"),
    ("experiment.zoo.model=nope", "unknown experiment.zoo.model 'nope'; valid:"),
])
def test_bad_input_gives_one_clear_line(tmp_path, override, message):
    proc = boundary("run", *DIGITS, override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                    env=cli_env(tmp_path / "cache"), check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and err and message in err[-1] and err[-1].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_real_fashion_mnist_with_the_reference_lenet5(tmp_path):
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    env = cli_env(tmp_path / "cache", tmp_path / "no_data_here")
    boundary("run", *SMALL, "dataset.train_first=3000", "experiment.backbones=[gru,transformer]",
             f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env)
    zoo = pd.read_csv(tmp_path / "run" / "zoo.csv")
    assert zoo["kept"].sum() >= 3 and set(zoo["epochs"]) <= {1, 2, 3, 4}
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["identity"]["model"] == "lenet5" and info["identity"]["dataset"] == "fashion_mnist"
    assert info["meta_network"]["without_logits"] == info["meta_network"]["features"][:3]  # pool2, fc1, fc2
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert {"meta_gru", "meta_transformer"} <= set(m["method"])


def test_signals_reads_the_stored_meta_network_of_the_model_family(digits_run):
    """experiment=signals finds the classification meta-network this zoo stored and scores a model of
    the same family with it (the probability of a right prediction, low = a likely error)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    root, env = digits_run
    out = root / "signals"
    boundary("run", "experiment=signals", "dataset=digits", "model=small_cnn", "training=quick",
             "experiment.signals=[msp,meta_network]", "experiment.n_samples=all", "experiment.bootstrap=0",
             f"hydra.run.dir={out}", cwd=root, env=env)
    per = pd.read_csv(out / "signals_errors.csv")
    info = json.loads((out / "run.json").read_text())
    stored = Path(info["meta_network"])
    assert stored.parent == root / "cache" / "meta_networks" and stored.exists()
    assert per["meta_network"].between(0, 1).all() and per["meta_network"].nunique() > 10
    ranking = pd.read_csv(out / "ranking.csv").set_index(["signal", "metric"])["value"]
    assert ranking[("meta_network", "auroc")] == pytest.approx(roc_auc_score(per["wrong"], -per["meta_network"]))
    costs = pd.read_csv(out / "costs.csv").set_index("work")
    assert costs.loc["meta_network", "forwards"] == len(per) and costs.loc["meta_network", "used_by"] == "meta_network"
    assert np.isfinite(ranking[("everything", "auroc")])
