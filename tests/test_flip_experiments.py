"""The four decision-flip experiments through the CLI, as a user types them: digits and a tiny
Fashion-MNIST tree, outputs, resume after a kill, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import boundary, cli_env

pytestmark = pytest.mark.slow  # every test here starts the CLI in a subprocess

# one short training run shared by every test (snapshots at epochs 4 and 8)
TRAIN = ["training.recipe.epochs=8", "training.save_epochs=[4,8]"]
FLIP_COLUMNS = ["dataset", "variant", "model", "training", "seed", "overrides", "pool", "sample_index", "true_label",
                "source_pred", "target", "mode", "steps", "status", "l2", "l2_sq", "end_class", "first_exit_class",
                "first_exit_step", "n_classes_visited", "classes_visited"]


def run_ok(tmp_path: Path, env: dict, name: str, *args: str) -> Path:
    out = tmp_path / name
    boundary("run", *TRAIN, *args, f"hydra.run.dir={out}", cwd=tmp_path, env=env)
    return out


@pytest.fixture(scope="module")
def flip_run(tmp_path_factory, digits_cache) -> Path:
    work = tmp_path_factory.mktemp("decision_flip")
    return run_ok(work, cli_env(digits_cache), "run", "experiment=decision_flip", "experiment.n_samples=12",
                  "experiment.walk.max_steps=400")


def test_decision_flip_writes_tables_and_figures(flip_run):
    for name in ["flips.csv", "layers.csv", "summary.csv", "run.json", "nearest_flip.png", "layers.png",
                 "flips_from_0.png", "hist_from_0.png", "training.csv", "config_resolved.yaml"]:
        assert (flip_run / name).is_file(), name
    flips = pd.read_csv(flip_run / "flips.csv")
    assert list(flips.columns) == FLIP_COLUMNS
    assert set(flips["pool"]) == {"train", "test", "uniform", "gaussian"}
    assert len(flips) == 4 * 12 * 10  # pools x images x targets
    own = flips[flips["status"] == "own"]
    assert len(own) == 4 * 12 and (own["target"] == own["source_pred"]).all() and (own["l2"] == 0).all()
    walked = flips[flips["status"] != "own"]
    assert set(walked["status"]) <= {"flipped", "capped", "zero_grad"}
    done = walked[walked["status"] == "flipped"]
    assert (done["end_class"] == done["target"]).all()
    assert np.allclose(done["l2_sq"], done["l2"] ** 2, rtol=1e-5)
    assert (done["l2"] <= done["steps"] * 0.05 + 1e-5).all()  # each step moves at most eta (clipping only shortens)
    assert (flips.loc[flips["pool"].isin(["uniform", "gaussian"]), "true_label"] == -1).all()
    layers = pd.read_csv(flip_run / "layers.csv")
    assert list(dict.fromkeys(layers["layer"])) == ["input", "pool0", "pool1", "dense1", "dense2"]
    first = layers[layers["layer"] == "input"].reset_index(drop=True)
    assert np.allclose(first["layer_l2"], walked["l2"].to_numpy(), rtol=1e-4, atol=1e-6)  # layer 0 = the walk itself
    info = json.loads((flip_run / "run.json").read_text())
    assert info["model"]["epoch"] == 8 and info["layers"][0] == "input"
    assert info["n_forward"] > 0 and info["n_forward"] == info["n_backward"]
    assert set(info["median_nearest_flip_l2"]) == {"train", "test", "uniform", "gaussian"}


def test_decision_flip_resumes_after_a_kill(tmp_path, digits_cache):
    env = cli_env(digits_cache)
    args = ["experiment=decision_flip", "experiment.n_samples=6", "experiment.pools=[test]", "experiment.chunk_size=2",
            "experiment.walk.max_steps=300", "experiment.sample_seed=3"]
    killed = boundary("run", *TRAIN, *args, f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path,
                      env=dict(env, BOUNDARY_CRASH_AFTER_CHUNKS="1"), check=False)
    assert killed.returncode == 75, killed.stderr
    assert not (tmp_path / "a" / "flips.csv").exists()
    b = run_ok(tmp_path, env, "b", *args)
    info = json.loads((b / "run.json").read_text())
    assert info["chunks_total"] == 3 and info["chunks_reused"] == 1
    c = run_ok(tmp_path, env, "c", *args)  # everything cached now: identical tables
    assert json.loads((c / "run.json").read_text())["chunks_reused"] == 3
    pd.testing.assert_frame_equal(pd.read_csv(b / "flips.csv"), pd.read_csv(c / "flips.csv"))


def test_multiple_hits_compares_two_checkpoints(tmp_path, digits_cache):
    out = run_ok(tmp_path, cli_env(digits_cache), "hits", "experiment=multiple_hits", "experiment.n_samples=8",
                 "experiment.walk.max_steps=400")
    hits = pd.read_csv(out / "hits.csv")
    summary = pd.read_csv(out / "hits_summary.csv")
    assert set(hits["epoch"]) == {4, 8} and len(hits) == 2 * 8 * 10
    walked = hits[hits["status"] != "own"]
    assert (hits.loc[hits["status"] == "own", "hit"] == False).all()  # noqa: E712
    flipped = walked[walked["status"] == "flipped"]
    assert (flipped["end_class"] != flipped["source_pred"]).all()  # flip-stop: the first class change
    assert (flipped["hit"] == (flipped["end_class"] != flipped["target"])).all()
    assert (summary["n_targets"] == 9).all() and summary["hits"].between(0, 9).all()
    recount = walked.groupby(["epoch", "sample_index"])["hit"].sum().rename("recount").reset_index()
    merged = summary.merge(recount, on=["epoch", "sample_index"])
    assert len(merged) == 16 and (merged["hits"] == merged["recount"]).all()
    info = json.loads((out / "run.json").read_text())
    assert set(info["mean_hits"]) == {"4", "8"} and [m["epoch"] for m in info["models"]] == [4, 8]
    assert (out / "hits.png").is_file()


def test_own_to_flip_ratio_per_layer(tmp_path, digits_cache):
    out = run_ok(tmp_path, cli_env(digits_cache), "own", "experiment=own_to_flip", "experiment.n_samples=10",
                 "experiment.walk.max_steps=400", "experiment.centroid.space=layer", "experiment.layers=[input,dense1]")
    table = pd.read_csv(out / "own_to_flip.csv")
    assert len(table) == 10 * 2 and list(dict.fromkeys(table["layer"])) == ["input", "dense1"]
    ok = table.dropna(subset=["ratio_l2"])
    assert np.allclose(ok["ratio_l2"], ok["own_l2"] / ok["flip_l2"])
    assert np.allclose(ok["ratio_l2_sq"], ok["ratio_l2"] ** 2, rtol=1e-5)
    assert (out / "own_to_flip.png").is_file() and (out / "summary.csv").is_file()


@pytest.mark.parametrize("mode", ["independent", "sequential"])
def test_train_again_before_and_after(tmp_path, digits_cache, mode):
    out = run_ok(tmp_path, cli_env(digits_cache), mode, "experiment=train_again", "experiment.n_samples=3",
                 f"experiment.mode={mode}", "experiment.overfit.steps=5", "experiment.walk.max_steps=200",
                 "experiment.epoch=4")
    table = pd.read_csv(out / "train_again.csv")
    assert len(table) == 3 * 10
    for col in ["l2_before", "l2_after", "status_before", "status_after", "misclassified_before", "base_confidence"]:
        assert col in table.columns, col
    assert (table["misclassified_before"] == (table["base_prediction"] != table["true_label"])).all()
    info = json.loads((out / "run.json").read_text())
    assert info["model"]["epoch"] == 4 and info["n_points"] == 3 and info["optimizer_state"] == "restore"
    assert info["model"]["optimizer_state"].endswith(".optim.pt")
    assert (out / "train_again.png").is_file()
    # Adam from zero is another experiment: the same points overfit differently (and nothing is reused)
    fresh = run_ok(tmp_path, cli_env(digits_cache), f"{mode}_fresh", "experiment=train_again", "experiment.n_samples=3",
                   f"experiment.mode={mode}", "experiment.overfit.steps=5", "experiment.walk.max_steps=200",
                   "experiment.epoch=4", "experiment.optimizer_state=fresh")
    other = pd.read_csv(fresh / "train_again.csv")
    assert other["l2_before"].equals(table["l2_before"]) and not other["l2_after"].equals(table["l2_after"])


def test_flip_experiments_on_fashion_mnist_files(fake_fashion, tmp_path):
    env = cli_env(fake_fashion["cache"], fake_fashion["data"])
    base = ["dataset=fashion_mnist", "training.recipe.epochs=2", "training.save_epochs=[1,2]",
            "experiment.walk.max_steps=100"]
    boundary("run", *base, "experiment=decision_flip", "experiment.n_samples=4", "experiment.pools=[train,test]",
             f"hydra.run.dir={tmp_path / 'df'}", cwd=tmp_path, env=env)
    flips = pd.read_csv(tmp_path / "df" / "flips.csv")
    assert set(flips["dataset"]) == {"fashion_mnist"} and len(flips) == 2 * 4 * 10
    boundary("run", *base, "experiment=multiple_hits", "experiment.n_samples=3", f"hydra.run.dir={tmp_path / 'mh'}",
             cwd=tmp_path, env=env)
    assert set(pd.read_csv(tmp_path / "mh" / "hits_summary.csv")["epoch"]) == {1, 2}


def test_sweep_over_step_length(tmp_path, digits_cache):
    env = cli_env(digits_cache)
    boundary("run", "-m", *TRAIN, "experiment=decision_flip", "experiment.n_samples=3", "experiment.pools=[test]",
             "experiment.walk.eta=0.05,0.1", "experiment.walk.max_steps=300", f"hydra.sweep.dir={tmp_path / 'sw'}",
             cwd=tmp_path, env=env)
    runs = sorted((tmp_path / "sw").glob("*/flips.csv"))
    assert len(runs) == 2
    a, b = (pd.read_csv(r) for r in runs)
    assert a["overrides"].iloc[0] != b["overrides"].iloc[0]
    boundary("report", str(tmp_path / "sw"), cwd=tmp_path, env=env)
    merged = pd.read_csv(tmp_path / "sw" / "report" / "decision_flip" / "flips.csv")
    assert len(merged) == len(a) + len(b)
    assert set(merged["label"]) == {"experiment.walk.eta=0.05", "experiment.walk.eta=0.1"}
    assert (tmp_path / "sw" / "report" / "decision_flip" / "summary.csv").is_file()


def run_fails(tmp_path: Path, env: dict, *args: str) -> str:
    run_dir = tmp_path / "bad"
    proc = boundary("run", *TRAIN, *args, f"hydra.run.dir={run_dir}", cwd=tmp_path, env=env, check=False)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr + proc.stdout
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not (run_dir / "run.json").exists()
    return err


@pytest.mark.parametrize("args, expect", [
    (["experiment=decision_flip", "experiment.layers=[input,conv9]"], ["conv9", "pool0", "dense2"]),
    (["experiment=decision_flip", "experiment.walk.eta=0"], ["experiment.walk.eta", "> 0"]),
    (["experiment=multiple_hits", "experiment.walk.eta=-0.1"], ["experiment.walk.eta"]),
    (["experiment=decision_flip", "experiment.source_classes=[3,12]"], ["12", "0..9"]),
    (["experiment=decision_flip", "experiment.plot_sources=[-1]"], ["-1", "0..9"]),
    (["experiment=decision_flip", "experiment.pools=[train,noise]"], ["noise", "uniform"]),
    (["experiment=multiple_hits", "experiment.epochs=[4,30]"], ["30", "1..8"]),
    (["experiment=own_to_flip", "experiment.n_samples=100000"], ["n_samples", "fewer"]),
    (["experiment=train_again", "experiment.mode=parallel"], ["experiment.mode", "independent"]),
    (["experiment=train_again", "training=reference"], ["training=reference", "experiment.optimizer_state=fresh"]),
    (["experiment=train_again", "model.checkpoint=/no/such/weights.pt"],
     ["model.checkpoint", "experiment.optimizer_state=fresh"]),
    (["experiment=train_again", "experiment.optimizer_state=zero"], ["experiment.optimizer_state", "restore"]),
    (["experiment=multiple_hits", "experiment.zero_grad_is_hit=maybe"], ["experiment.zero_grad_is_hit"]),
    (["experiment=own_to_flip", "experiment.walk.mode=untargeted"], ["experiment.walk.mode", "targeted"]),
])
def test_bad_inputs_give_one_clear_error(tmp_path, digits_cache, args, expect):
    err = run_fails(tmp_path, cli_env(digits_cache), *args)
    for word in expect:
        assert word in err, (word, err)


def test_real_fashion_mnist_when_installed(tmp_path):
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    env = cli_env(tmp_path / "cache", tmp_path / "no_data_here")
    base = ["dataset=fashion_mnist", "training.recipe.epochs=2", "training.save_epochs=[1,2]"]
    boundary("run", *base, "experiment=decision_flip", "experiment.n_samples=5", "experiment.pools=[train,test]",
             f"hydra.run.dir={tmp_path / 'df'}", cwd=tmp_path, env=env)
    info = json.loads((tmp_path / "df" / "run.json").read_text())
    assert info["test_accuracy"] > 0.8 and info["share_flipped"] > 0.9
    boundary("run", *base, "experiment=multiple_hits", "experiment.n_samples=5", f"hydra.run.dir={tmp_path / 'mh'}",
             cwd=tmp_path, env=env)
    info = json.loads((tmp_path / "mh" / "run.json").read_text())
    assert [m["source"] for m in info["models"]] == ["store", "store"]  # both snapshots from the first run


def test_cifar_form_of_the_flip_cnn_through_the_cli(tmp_path):
    from fake_data import write_cifar10_tree

    write_cifar10_tree(tmp_path / "data", n_train_per_batch=20, n_test=20)
    env = cli_env(tmp_path / "cache", tmp_path / "data")
    boundary("run", "dataset=cifar10", "dataset.check_integrity=false", "experiment=decision_flip",
             "training.recipe.epochs=2", "training.save_epochs=[]", "experiment.n_samples=3",
             "experiment.walk.max_steps=50", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env)
    layers = pd.read_csv(tmp_path / "run" / "layers.csv")
    assert list(dict.fromkeys(layers["layer"])) == ["input", "pool0", "pool1", "dense1", "dense2"]
    flips = pd.read_csv(tmp_path / "run" / "flips.csv")
    assert len(flips) == 4 * 3 * 10 and set(flips["dataset"]) == {"cifar10"}
