"""The margin experiment's own logic: seeded sample choice and its checks."""

from __future__ import annotations

import pytest
import torch

from boundary_cli.errors import BoundaryError
from boundary_cli.experiments.margin import select_samples


def test_samples_are_a_seeded_prefix_shared_by_every_run():
    a = select_samples(500, 100, 0)
    assert a.shape == (100,) and torch.equal(a, a.sort().values) and a.unique().numel() == 100
    assert torch.equal(a, select_samples(500, 100, 0))
    assert set(select_samples(500, 20, 0).tolist()) <= set(a.tolist())  # fewer samples: a subset
    assert not torch.equal(a, select_samples(500, 100, 1))
    assert torch.equal(select_samples(500, "all", 3), torch.arange(500))


def test_only_eligible_samples_and_too_many():
    eligible = torch.arange(50) % 2 == 0
    idx = select_samples(50, 10, 0, eligible)
    assert eligible[idx].all() and idx.numel() == 10
    assert torch.equal(select_samples(50, "all", 0, eligible), torch.arange(0, 50, 2))
    with pytest.raises(BoundaryError, match="only 25 correctly classified"):
        select_samples(50, 26, 0, eligible)
    with pytest.raises(BoundaryError, match="only 50 test images"):
        select_samples(50, 51, 0)


# --- the outputs of a run: margins.npy in hold-me-tight's layout, the full space apart, tf32 -----------

@pytest.fixture(scope="module")
def margin_runs(tmp_path_factory):
    """``execute`` of experiment=margin on digits (quick training, 12 samples in chunks of 5), once with
    the full space and once without, sharing one cache; and a runner for further runs in that cache."""
    from hydra import compose, initialize_config_module

    from boundary_cli.runner import execute

    root = tmp_path_factory.mktemp("margin_runs")

    def run(name, *overrides):
        with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
            cfg = compose("config", overrides=["training=quick", f"paths.cache_dir={root / 'cache'}",
                                               "experiment.n_samples=12", "experiment.chunk_size=5", *overrides])
        info = execute(cfg, root / name, progress=False)
        return root / name, info

    return dict(full=run("full"), no_full=run("no_full", "experiment.subspaces.include_full=false"), run=run)


def _csv_margins(folder):
    import pandas as pd

    table = pd.read_csv(folder / "margins.csv")
    names = list(dict.fromkeys(table["subspace"]))
    return names, {s: t.sort_values("sample_index")["margin_l2"].to_numpy() for s, t in table.groupby("subspace")}


def test_margins_npy_holds_the_subspaces_only_and_margins_full_the_full_space(margin_runs):
    import numpy as np

    folder, info = margin_runs["full"]
    names, csv = _csv_margins(folder)
    assert names[0] == "full" and len(names) == 6  # full space + 5 blocks of 4x4 on 8x8 digits
    arr = np.load(folder / "margins.npy")
    assert arr.dtype == np.float32 and arr.shape == (5, 12)  # (n_subspaces, n_samples), as hold-me-tight saves it
    for s, name in enumerate(names[1:]):
        np.testing.assert_array_equal(arr[s], csv[name].astype(np.float32))
    full = np.load(folder / "margins_full.npy")
    assert full.dtype == np.float32 and full.shape == (12,)
    np.testing.assert_array_equal(full, csv["full"].astype(np.float32))
    assert info["n_subspaces"] == 6 and info["tf32"] is False

    folder, info = margin_runs["no_full"]
    names, csv = _csv_margins(folder)
    assert "full" not in names and not (folder / "margins_full.npy").exists()
    arr = np.load(folder / "margins.npy")
    assert arr.dtype == np.float32 and arr.shape == (5, 12)
    for s, name in enumerate(names):
        np.testing.assert_array_equal(arr[s], csv[name].astype(np.float32))
    np.testing.assert_allclose(arr, np.load(margin_runs["full"][0] / "margins.npy"), rtol=1e-5)


def test_tf32_is_passed_to_deepfool_recorded_and_part_of_the_chunk_key(margin_runs, monkeypatch):
    import numpy as np

    from boundary_cli.experiments import margin

    seen = []
    real = margin.deepfool_subspaces

    def spy(model, x, blocks, params, **kwargs):
        seen.append(params.tf32)
        return real(model, x, blocks, params, **kwargs)

    monkeypatch.setattr(margin, "deepfool_subspaces", spy)
    run = margin_runs["run"]
    _, again = run("again")  # the settings of the first run: every chunk reused
    assert again["chunks_reused"] == again["chunks_total"] == 3 and seen == []
    folder, on = run("tf32", "experiment.deepfool.tf32=true")  # chunks measured without TF32 are not reused
    assert on["chunks_reused"] == 0 and on["tf32"] is True and seen == [True] * 3
    _, on_again = run("tf32_again", "experiment.deepfool.tf32=true")
    assert on_again["chunks_reused"] == 3 and seen == [True] * 3
    # on CPU the flag changes nothing in the arithmetic
    np.testing.assert_array_equal(np.load(folder / "margins.npy"), np.load(margin_runs["full"][0] / "margins.npy"))
    _, off = run("off", "experiment.deepfool.tf32=false")  # the float32 chunks of the first run
    assert off["chunks_reused"] == 3 and off["tf32"] is False and seen == [True] * 3
    # the other direction: with only TF32 chunks cached (overshoot 0.03 is new), a float32 run computes its own
    _, only = run("only_tf32", "experiment.deepfool.tf32=true", "experiment.deepfool.overshoot=0.03")
    assert only["chunks_reused"] == 0 and seen == [True] * 6
    _, fresh = run("fresh", "experiment.deepfool.tf32=false", "experiment.deepfool.overshoot=0.03")
    assert fresh["chunks_reused"] == 0 and seen == [True] * 6 + [False] * 3
    with pytest.raises(BoundaryError, match="tf32"):
        run("bad", "experiment.deepfool.tf32=maybe")


# --- tight margins: the refinement columns, their summary, and the checks on the settings -----------

def test_refined_columns_summary_and_arrays(margin_runs):
    import json

    import numpy as np
    import pandas as pd

    folder, info = margin_runs["full"]  # the default: refine=descent
    table = pd.read_csv(folder / "margins.csv")
    ok = table["converged"]
    assert (table["refine_method"] == "descent").all() and ok.all()
    assert (table["margin_min"] <= table["margin_l2"] * (1 + 1e-6)).all()
    assert (table["margin_min"] <= table["margin_bisect"] * (1 + 1e-6)).all()
    np.testing.assert_allclose(table["gap"], table["margin_l2"] / table["margin_min"], rtol=1e-5)
    assert (table["gap"] >= 1.0).all() and table["refine_steps"].between(1, 30).all()
    assert (table["min_adv_label"] != table["prediction"]).all()
    summary = pd.read_csv(folder / "summary.csv")
    for name, rows in table.groupby("subspace"):
        s = summary[summary["subspace"] == name].iloc[0]
        assert s["median_gap"] == pytest.approx(rows["gap"].median(), rel=1e-5)
        assert s["share_gap_above_1_1"] == pytest.approx((rows["gap"] > 1.1).mean())
        assert s["median_min"] == pytest.approx(rows["margin_min"].median(), rel=1e-5) and s["n_gap_nan"] == 0
    arr = np.load(folder / "margins_min.npy")
    assert arr.shape == (5, 12) and np.load(folder / "margins_min_full.npy").shape == (12,)
    names, _ = _csv_margins(folder)
    np.testing.assert_array_equal(arr[0], table[table["subspace"] == names[1]].sort_values("sample_index")
                                  ["margin_min"].to_numpy(dtype=np.float32))
    assert info["refine"]["method"] == "descent" and info["refine"]["rows_not_refined"] == 0
    assert json.loads((folder / "run.json").read_text())["outputs"]["arrays"]


def test_refine_settings_leave_deepfool_alone_and_none_keeps_the_old_chunk_key(margin_runs):
    import pandas as pd

    run = margin_runs["run"]
    base = pd.read_csv(margin_runs["full"][0] / "margins.csv")
    folder, none = run("refine_none", "experiment.refine=none")
    assert none["chunks_reused"] == 0 and none["refine"] == {"method": "none", "rows_refined": 0,
                                                             "rows_not_refined": 72, "mean_steps": 0.0}
    t = pd.read_csv(folder / "margins.csv")
    assert t["margin_min"].isna().all() and t["gap"].isna().all() and (t["refine_method"] == "none").all()
    assert (t["margin_l2"] == base["margin_l2"]).all()
    folder, bis = run("refine_bisect", "experiment.refine=bisect")
    t = pd.read_csv(folder / "margins.csv")
    assert (t["margin_min"] == t["margin_bisect"]).all() and (t["refine_steps"] == 0).all()
    assert (t["margin_bisect"] == base["margin_bisect"]).all()  # the descent starts where bisection ends
    assert (t["gap"] >= 1.0).all() and (t["margin_l2"] == base["margin_l2"]).all()


@pytest.mark.parametrize("override, message", [
    (["experiment.refine=bogus"], "unknown experiment.refine"),
    (["experiment.refinement.steps=-1"], "refinement.steps"),
    (["experiment.refinement.alpha=0.001"], "alpha_final <= alpha"),
    (["experiment.refine=fmn"], "clip=true"),
])
def test_bad_refine_settings_give_one_clear_line(margin_runs, override, message):
    with pytest.raises(BoundaryError, match=message):
        margin_runs["run"]("bad", *override)


def test_adv_lib_missing_or_not_fitting_gives_one_clear_line(margin_runs, monkeypatch):
    from boundary_cli.experiments import margin

    monkeypatch.setattr(margin, "adv_lib_available", lambda: False)
    with pytest.raises(BoundaryError, match="adv-lib is not installed.*advlib"):
        margin_runs["run"]("no_adv_lib", "experiment.refine=fmn", "experiment.deepfool.clip=true")
    monkeypatch.setattr(margin, "adv_lib_available", lambda: True)
    with pytest.raises(BoundaryError, match=r"needs images in \[0, 1\]"):
        margin_runs["run"]("flipped", "experiment.refine=fmn", "experiment.deepfool.clip=true",
                           "dataset.variant=flip")


def test_adv_lib_refines_the_full_space_and_the_descent_the_blocks(margin_runs):
    pytest.importorskip("adv_lib")
    import pandas as pd

    folder, info = margin_runs["run"]("fmn", "experiment.refine=fmn", "experiment.deepfool.clip=true",
                                      "experiment.refinement.steps=20")
    t = pd.read_csv(folder / "margins.csv")
    full = t["subspace"] == "full"
    assert (t.loc[full, "refine_method"] == "fmn").all() and (t.loc[~full, "refine_method"] == "descent").all()
    assert (t["margin_min"] <= t["margin_bisect"] * (1 + 1e-6)).all()
    assert (t["min_adv_label"] != t["prediction"]).all()
