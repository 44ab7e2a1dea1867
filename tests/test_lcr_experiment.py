"""experiment=lcr through the CLI: outputs, resume after a kill, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import boundary, cli_env
from omegaconf import OmegaConf

from boundary_cli import runner
from boundary_cli.training.obtain import build_model
from boundary_cli.data.images import ImageData
from boundary_cli.data.variants import apply_variant, variant_from_config
from boundary_cli.detectors.mutants import draw_mutant
from boundary_cli.errors import BoundaryError
from boundary_cli.experiments.lcr import _splits

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


@pytest.mark.slow
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


@pytest.mark.slow
def test_lcr_resumes_from_cached_work(lcr_run, digits_cache, tmp_path):
    again = tmp_path / "again"
    boundary("run", *BASE, f"hydra.run.dir={again}", cwd=tmp_path, env=cli_env(digits_cache))
    a = pd.read_csv(lcr_run / "lcr.csv")
    b = pd.read_csv(again / "lcr.csv")
    assert np.array_equal(a["lcr"], b["lcr"])  # mutants, predictions and conductance came from the cache
    assert np.allclose(a["p_cond"], b["p_cond"])


@pytest.mark.slow
def test_lcr_recomputed_from_mutants_csv_equals_lcr_csv(lcr_run):
    """From the stored model and the first n_mutants accepted seeds of mutants.csv (attempt order), negate
    the drawn channels by hand, predict every row's image and count the mutants that disagree with the
    model's prediction (not the label): exactly lcr.csv's lcr."""
    cfg = OmegaConf.load(lcr_run / "config_resolved.yaml")
    info = json.loads((lcr_run / "run.json").read_text())
    raw = runner.load_dataset(cfg)
    data = apply_variant(raw, variant_from_config(cfg.dataset.variant, cfg.dataset.low_pass))
    model = build_model(cfg, data)
    model.load_state_dict(torch.load(info["model"]["path"], map_location="cpu", weights_only=True))
    model.eval()
    table = pd.read_csv(lcr_run / "lcr.csv")
    x = torch.cat([(data.train_x if split == "train" else data.test_x)[torch.tensor(idx.to_numpy())]
                   for split, idx in table.groupby("split", sort=False)["index"]])
    table = pd.concat([rows for _, rows in table.groupby("split", sort=False)], ignore_index=True)
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert np.array_equal(pred.numpy(), table["prediction"].to_numpy())

    log = pd.read_csv(lcr_run / "mutants.csv")
    assert log["seed"].is_monotonic_increasing  # attempt order
    n = int(cfg.experiment.mutants.n_mutants)
    seeds = log.loc[log["accepted"], "seed"].tolist()[:n]
    assert len(seeds) == n and (cfg.experiment.mutants.operator, log["operator"].iloc[0]) == ("NAI", "NAI")
    changed = torch.zeros(len(x), dtype=torch.long)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    for seed in seeds:
        mutant = draw_mutant(model, "NAI", float(cfg.experiment.mutants.gamma), int(seed))
        assert len(mutant.channels) == int(log.loc[log["seed"] == seed, "channels_mutated"].iloc[0])
        with torch.no_grad():
            for layer, c in mutant.channels:
                model.get_submodule(layer).weight[c].neg_()
            changed += (model(x).argmax(1) != pred).long()
            model.load_state_dict(weights, strict=False)
    assert np.array_equal(np.rint(table["lcr"].to_numpy() * n).astype(int), changed.numpy())
    assert np.array_equal(table["lcr"].to_numpy(np.float32), (changed.float() / n).numpy())


@pytest.mark.slow
def test_mutants_are_accepted_on_the_test_split_by_default(lcr_run):
    info = json.loads((lcr_run / "run.json").read_text())
    table = pd.read_csv(lcr_run / "lcr.csv")
    assert info["accept_on"] == "test" and info["accept_images"] == 500  # the whole digits test split
    held = table[table["split"].isin(["val", "test"])]
    assert sorted(held["index"]) == list(range(500))
    assert info["accept_accuracy"] == pytest.approx(held["correct"].mean(), abs=1e-6)  # accuracy on those images
    assert len(table[table["split"] == "train"]) == 1297  # n_train=all: every training image
    mutants = pd.read_csv(lcr_run / "mutants.csv")
    assert np.allclose(mutants["threshold"], 0.9 * info["accept_accuracy"], atol=1e-6)  # NAI: the ratio rule
    assert (mutants["accepted"] == (mutants["accuracy"] > mutants["threshold"])).all()


def split_ctx(accept_on: str, n_train="all", n_accept: int = 30) -> SimpleNamespace:
    gen = torch.Generator().manual_seed(0)
    x, xt = torch.rand(100, 1, 4, 4, generator=gen), torch.rand(40, 1, 4, 4, generator=gen)
    data = ImageData("fake", x, torch.arange(100) % 10, xt, torch.arange(40) % 10, [str(i) for i in range(10)])
    cfg = OmegaConf.create({"experiment": {"n_train": n_train, "n_accept": n_accept, "val_fraction": 0.5,
                                           "split_seed": 0, "mutants": {"accept_on": accept_on}}})
    return SimpleNamespace(cfg=cfg, data=data)


def test_the_acceptance_images_are_the_test_split_or_held_out_training_images():
    ctx = split_ctx("test")
    s = _splits(ctx)
    idx, xa, ya = s["accept"]
    assert torch.equal(idx, torch.arange(40)) and torch.equal(xa, ctx.data.test_x) and torch.equal(ya, ctx.data.test_y)
    assert torch.equal(s["train"][0], torch.arange(100))  # n_accept unused: detectors train on every image
    assert torch.equal(torch.cat([s["val"][0], s["test"][0]]).sort().values, torch.arange(40))

    ctx = split_ctx("train_holdout")
    s = _splits(ctx)
    idx, xa, ya = s["accept"]
    assert torch.equal(idx, torch.arange(70, 100))
    assert torch.equal(xa, ctx.data.train_x[70:]) and torch.equal(ya, ctx.data.train_y[70:])
    assert torch.equal(s["train"][0], torch.arange(70)) and torch.equal(s["train"][1], ctx.data.train_x[:70])
    assert not set(s["train"][0].tolist()) & set(idx.tolist())
    s = _splits(split_ctx("train_holdout", n_train=50))
    assert torch.equal(s["train"][0], torch.arange(50)) and torch.equal(s["accept"][0], torch.arange(70, 100))
    with pytest.raises(BoundaryError, match="n_accept=30 exceed"):
        _splits(split_ctx("train_holdout", n_train=80))
    assert torch.equal(_splits(split_ctx("test", n_train=80))["train"][0], torch.arange(80))


def run_fails(tmp_path: Path, env: dict, *args: str) -> str:
    proc = boundary("run", *BASE, *args, f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path, env=env, check=False)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr + proc.stdout
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad" / "run.json").exists()
    return err


@pytest.mark.slow
@pytest.mark.parametrize("args, expect", [
    (["experiment.mutants.gamma=0"], ["gamma", "(0, 1]"]),
    (["experiment.mutants.gamma=1.5"], ["gamma", "(0, 1]"]),
    (["experiment.mutants.operator=XYZ"], ["XYZ", "NAI"]),
    (["experiment.conductance.layers=[features.99]"], ["features.99", "features.13"]),
    (["experiment.mutants.accept_ratio=10"], ["only 0 of", "mutants passed"]),
    (["experiment.mutants.accept_on=val"], ["accept_on", "train_holdout"]),
    (["experiment.mutants.accept_rule=absolute"], ["accept_rule", "reference", "ratio"]),
    (["experiment.mutants.ns_min_accuracy=2"], ["ns_min_accuracy", "[0, 1]"]),
    (["experiment.min_wrong=100000"], ["wrong", "min_wrong"]),
    (["experiment.n_train=100000"], ["n_train", "training images"]),
])
def test_bad_inputs_give_one_clear_error(tmp_path, digits_cache, args, expect):
    err = run_fails(tmp_path, cli_env(digits_cache), *args)
    for word in expect:
        assert word in err, (word, err)
