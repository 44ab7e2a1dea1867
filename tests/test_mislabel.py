"""experiment=mislabel in process on digits: the noisy model, the tables, the detection metrics'
consistency, and the checks on the settings."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from boundary_cli.errors import BoundaryError


@pytest.fixture(scope="module")
def mislabel_run(tmp_path_factory):
    from hydra import compose, initialize_config_module

    from boundary_cli.runner import execute

    root = tmp_path_factory.mktemp("mislabel_runs")

    def run(name, *overrides, experiment="mislabel"):
        small = ["experiment.n_points=300", "experiment.weights.max_iter=20", "experiment.input.max_iter=20"] \
            if experiment == "mislabel" else ["experiment.n_samples=5"]
        with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
            cfg = compose("config", overrides=[f"experiment={experiment}", "training=quick",
                                               f"paths.cache_dir={root / 'cache'}", *small, *overrides])
        info = execute(cfg, root / name, progress=False)
        return root / name, info

    run.root = root
    return run


def test_the_model_is_trained_on_noisy_labels_and_every_method_is_scored(mislabel_run):
    clean, clean_info = mislabel_run("clean", experiment="margin")
    folder, info = mislabel_run("noisy", "experiment.noise.rate=0.2")
    assert info["model"]["modifier"] == {"name": "label_noise", "params": {"rate": 0.2, "seed": 0}}
    assert info["model"]["path"] != clean_info["model"]["path"]  # its own store key
    summary = pd.read_csv(folder / "mislabel_summary.csv")
    scores = pd.read_csv(folder / "mislabel_scores.csv")
    assert list(summary["method"]) == ["weights_prediction", "weights_label", "input_deepfool", "loss",
                                       "self_confidence", "normalized_margin", "aum"]
    per_point = scores[scores["method"] == "loss"]
    assert len(per_point) == 300 and (per_point["noisy"] == (per_point["label_given"] != per_point["label_true"])).all()
    p = per_point["noisy"].mean()
    assert summary["realised_rate"].iloc[0] == pytest.approx(p) and 0.1 < p < 0.3
    # the reference's area and the AUROC agree through their closed-form relation (the loss has no ties)
    loss = summary[summary["method"] == "loss"].iloc[0]
    assert loss["detection_area"] == pytest.approx((1 - p) * loss["auroc"] + p / 2 + 1 / (2 * 300), abs=1e-9)
    auroc = summary.set_index("method")["auroc"]
    # every signal beats chance on 20% noise (the null AUROC's standard deviation is ~0.04 here); this
    # 3-epoch model does not memorise the noise, so the label-reading scores find almost every noisy point
    assert (auroc > 0.55).all() and (auroc[["loss", "self_confidence", "normalized_margin", "aum"]] > 0.9).all()
    curves = pd.read_csv(folder / "mislabel_curves.csv")
    last = curves.groupby("method")["fraction_found"].last()
    assert np.allclose(last, 1.0) and (folder / "detection.png").exists()
    assert json.loads((folder / "run.json").read_text())["noise"]["n_noisy"] == int(per_point["noisy"].sum())


@pytest.mark.parametrize("override, message", [
    ("experiment.noise.rate=0", "noise.rate"),
    ("experiment.methods=[magic]", "unknown experiment.methods"),
    ("experiment.noise.rate=0.00001", "makes none of the 1297 training labels noisy"),  # rate x N = 0.013
])
def test_bad_settings_give_one_clear_line(mislabel_run, override, message):
    with pytest.raises(BoundaryError, match=message):
        mislabel_run("bad", override)
    assert not (mislabel_run.root / "bad" / "mislabel_summary.csv").exists()  # no results written


def test_labels_drawn_anew_every_epoch_train_a_model_of_their_own(mislabel_run):
    folder, info = mislabel_run("redraw", "experiment.noise.rate=0.2", "experiment.noise.redraw_each_epoch=true",
                                "experiment.methods=[loss,aum]")
    assert info["model"]["modifier"]["params"] == {"rate": 0.2, "seed": 0, "redraw_each_epoch": True}
    assert info["noise"]["redraw_each_epoch"] is True and info["model"]["source"] == "trained"
    summary = pd.read_csv(folder / "mislabel_summary.csv").set_index("method")
    # a wrong class that changes every epoch is harder to memorise: the loss still finds the noisy points
    assert summary.loc["loss", "auroc"] > 0.6 and summary.loc["aum", "auroc"] > 0.6


def test_the_sweep_figure_draws_one_line_per_method_and_rate():
    from boundary_cli.experiments.mislabel import mislabel_comparison

    grid = np.linspace(0, 1, 11)
    parts = [pd.DataFrame(dict(method=m, noise_rate=r, fraction_inspected=grid, fraction_found=np.sqrt(grid),
                               run=f"{r}/{seed}"))
             for m in ("loss", "weights_prediction") for r in (0.1, 0.2) for seed in (0, 1)]
    fig = mislabel_comparison({"mislabel_curves": pd.concat(parts, ignore_index=True)}, "t")
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["loss (noise 0.1)", "loss (noise 0.2)", "weights_prediction (noise 0.1)",
                      "weights_prediction (noise 0.2)", "chance"]
    assert mislabel_comparison({}, "t") is None


def test_out_of_fold_probabilities_add_cleanlab_scores_of_models_that_never_saw_the_point(mislabel_run):
    from boundary_cli.experiments.mislabel import fold_of

    fold = fold_of(103, 4, 0)
    counts = np.bincount(fold.numpy(), minlength=4)
    assert counts.sum() == 103 and counts.max() - counts.min() <= 1
    assert torch_equal(fold, fold_of(103, 4, 0)) and not torch_equal(fold, fold_of(103, 4, 1))
    folder, info = mislabel_run("oof", "experiment.noise.rate=0.2", "experiment.cv_folds=3", "experiment.methods=[loss]")
    summary = pd.read_csv(folder / "mislabel_summary.csv")
    assert list(summary["method"]) == ["loss", "self_confidence_oof", "normalized_margin_oof"]
    assert (summary["auroc"] > 0.6).all()
    scores = pd.read_csv(folder / "mislabel_scores.csv").pivot(index="sample_index", columns="method", values="score")
    assert not np.allclose(scores["self_confidence_oof"], -np.exp(-scores["loss"]))  # not the in-sample p(y)
    with pytest.raises(BoundaryError, match="cv_folds"):
        mislabel_run("bad_folds", "experiment.cv_folds=1")


def torch_equal(a, b):
    import torch

    return bool(torch.equal(a, b))
