"""experiment=weights_boundary in process on digits: the table, the signed distance against the
label, the last layer's closed form, and the checks on the settings."""

from __future__ import annotations

import pandas as pd
import pytest

from boundary_cli.errors import BoundaryError


@pytest.fixture(scope="module")
def weights_run(tmp_path_factory):
    from hydra import compose, initialize_config_module

    from boundary_cli.runner import execute

    root = tmp_path_factory.mktemp("weights_runs")

    def run(name, *overrides):
        with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
            cfg = compose("config", overrides=["experiment=weights_boundary", "training=quick",
                                               "training.recipe.epochs=1", f"paths.cache_dir={root / 'cache'}",
                                               "experiment.n_samples=30", "experiment.chunk_size=16",
                                               "experiment.weights.max_iter=20", *overrides])
        info = execute(cfg, root / name, progress=False)
        return pd.read_csv(root / name / "weights_boundary.csv"), info, root / name

    return run


def test_table_figures_and_run_record(weights_run):
    table, info, folder = weights_run("default")
    assert len(table) == 30 and (table["split"] == "train").all()
    assert (table["influence"] == -table["weight_distance_l2"]).all()
    assert (table["weight_distance_l2"] > 0).all() and (table["method"] == "deepfool").all()
    assert set(table["stopped_by"]) <= {"flip", "eps_gap", "max_steps", "zero_grad"}
    flipped = table["stopped_by"] == "flip"
    assert (table.loc[flipped, "adv_label"] != table.loc[flipped, "prediction"]).all()
    assert (folder / "influence.png").exists() and (folder / "extremes.png").exists()
    assert info["n_samples"] == 30 and info["chunks_total"] == 2 and sum(info["stopped_by"].values()) == 30


def test_against_the_label_is_signed_and_the_last_layer_uses_its_closed_form(weights_run):
    table, info, _ = weights_run("label", "experiment.weights.against=label", "experiment.weights.params=last_layer",
                                 "experiment.n_samples=all", "experiment.chunk_size=2000")
    wrong = ~table["correct"]
    assert wrong.sum() >= 1, "one epoch of training should leave some training points misclassified"
    assert (table.loc[wrong, "weight_distance_l2"] < 0).all() and (table.loc[~wrong, "weight_distance_l2"] > 0).all()
    assert (table.loc[~wrong, "method"] == "closed_form").all() and (table.loc[wrong, "method"] == "deepfool").all()
    assert info["closed_form_rows"] == int((~wrong).sum())


@pytest.mark.parametrize("override, message", [
    ("experiment.weights.against=truth", "against"),
    ("experiment.weights.params=[nope]", "unknown module"),
    ("experiment.weights.norm=1", "L2 norm only"),
    ("experiment.split=val", "split"),
])
def test_bad_settings_give_one_clear_line(weights_run, override, message):
    with pytest.raises(BoundaryError, match=message):
        weights_run("bad", override)
