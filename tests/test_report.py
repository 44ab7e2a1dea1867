"""boundary report: labels that show what differs between runs, a clear error without results, and
sweeps of every experiment: it merges the tables each run.json lists (or, for a run.json written
before runs listed their outputs, the experiment's tables), draws the experiment's comparison
figure, and says exactly what it wrote."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from boundary_cli import cli
from boundary_cli.errors import BoundaryError
from boundary_cli.experiments import EXPERIMENTS
from boundary_cli.reporting.report import _short_labels, build_report, write_report


def test_labels_keep_only_what_differs():
    labels = {"0": "dataset=mnist dataset.variant=none model=lenet", "1": "dataset=mnist dataset.variant=flip model=lenet"}
    assert _short_labels(labels) == {"0": "dataset.variant=none", "1": "dataset.variant=flip"}
    same = {"a": "x=1", "b": "x=1"}
    assert _short_labels(same) == {"a": "a: x=1", "b": "b: x=1"}
    assert _short_labels({"only": "x=1 y=2"}) == {"only": "x=1 y=2"}


def test_no_results_is_one_clear_error(tmp_path):
    with pytest.raises(BoundaryError, match="no run results"):
        build_report(tmp_path)
    with pytest.raises(BoundaryError, match="not a directory"):
        build_report(tmp_path / "missing")


def _run(folder, experiment, tables: dict[str, pd.DataFrame], listed: bool = True, overrides: str = ""):
    folder.mkdir(parents=True)
    for name, table in tables.items():
        table.assign(overrides=overrides).to_csv(folder / f"{name}.csv", index=False)
    info = dict(experiment=experiment, identity=dict(dataset="digits", overrides=overrides))
    if listed:
        info["outputs"] = dict(tables=list(tables), arrays=[], figures=[])
    (folder / "run.json").write_text(json.dumps(info))


def _own_to_flip(ratio: float) -> dict[str, pd.DataFrame]:
    main = pd.DataFrame(dict(dataset="digits", sample_index=[0, 1], layer="input", ratio_l2=[ratio, ratio]))
    summary = pd.DataFrame(dict(layer=["input", "fc"], ratio_l2=[ratio, 2 * ratio], own_l2=1.0, flip_l2=1.0))
    return {"own_to_flip": main, "summary": summary}


def test_a_sweep_of_own_to_flip_gets_merged_tables_and_a_figure_and_the_message_names_them(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _run(sweep / "0", "own_to_flip", _own_to_flip(0.5), overrides="experiment.walk.eta=0.1")
    _run(sweep / "1", "own_to_flip", _own_to_flip(0.8), listed=False, overrides="experiment.walk.eta=0.2")
    out, written = write_report(sweep)
    names = sorted(str(p.relative_to(out)) for p in written)
    assert names == ["own_to_flip/comparison.png", "own_to_flip/own_to_flip.csv", "own_to_flip/summary.csv"]
    summary = pd.read_csv(out / "own_to_flip" / "summary.csv")
    assert sorted(summary["label"].unique()) == ["experiment.walk.eta=0.1", "experiment.walk.eta=0.2"]
    assert summary.groupby("run")["ratio_l2"].first().to_dict() == {0: 0.5, 1: 0.8}
    assert (out / "own_to_flip" / "comparison.png").stat().st_size > 5_000
    assert not (out / "margins.csv").exists()

    assert cli.main(["report", str(sweep)]) == 0
    message = capsys.readouterr().out
    assert "own_to_flip/comparison.png" in message and "own_to_flip/summary.csv" in message
    assert "margins.csv" not in message and "margins.png" not in message


def test_the_report_merges_only_the_tables_a_run_says_it_wrote(tmp_path):
    sweep = tmp_path / "sweep"
    tables = _own_to_flip(0.5)
    _run(sweep / "0", "own_to_flip", tables)
    # a stray CSV in the run folder named like a table the run did not list is left alone
    info = json.loads((sweep / "0" / "run.json").read_text())
    info["outputs"]["tables"] = ["own_to_flip"]
    (sweep / "0" / "run.json").write_text(json.dumps(info))
    out, written = write_report(sweep)
    assert (out / "own_to_flip" / "own_to_flip.csv").exists() and not (out / "own_to_flip" / "summary.csv").exists()


def test_comparison_figures_of_every_experiment(tmp_path):
    """Each experiment's comparison draws from the tables its runs write (columns as the runs write
    them), and a sweep of two runs gives one figure."""
    rng = np.random.default_rng(0)
    flips = pd.DataFrame(dict(pool=["train"] * 4 + ["test"] * 4, sample_index=[0, 0, 1, 1] * 2, target=[0, 1] * 4,
                              status=["flipped", "own", "flipped", "capped"] * 2, l2=rng.uniform(1, 2, 8),
                              l2_sq=rng.uniform(1, 4, 8)))
    hits = pd.DataFrame(dict(epoch=[1, 1, 5, 5], sample_index=[0, 1, 0, 1], hits=[1, 2, 3, 4]))
    again = pd.DataFrame(dict(status_before=["flipped"] * 3, status_after=["flipped", "flipped", "capped"],
                              l2_before=[1.0, 2.0, 3.0], l2_after=[1.5, 1.0, 9.0]))
    detectors = pd.DataFrame(dict(method=["lcr", "conductance", "lcr"], split=["test", "test", "val"],
                                  auroc=[0.8, 0.9, 0.7]))
    summary = pd.DataFrame(dict(subspace=["full", "dct_0", "dct_1"], offset=[0, 0, 4], median=[1.0, 2.0, 3.0]))
    cases = {"decision_flip": {"flips": flips}, "multiple_hits": {"hits_summary": hits},
             "train_again": {"train_again": again}, "lcr": {"detectors": detectors},
             "own_to_flip": _own_to_flip(0.5), "margin": {"summary": summary}}
    for name, tables in cases.items():
        merged = {k: pd.concat([t.assign(label="a"), t.assign(label="b")], ignore_index=True)
                  for k, t in tables.items()}
        fig = EXPERIMENTS[name].compare(merged, "2 runs")
        assert fig is not None, name
        assert len(fig.axes[0].get_legend_handles_labels()[0]) in (0, 2), name
        # nothing to compare: no figure, no error
        assert EXPERIMENTS[name].compare({}, "0 runs") is None, name


def test_decision_flip_comparison_shows_the_median_nearest_flip(tmp_path):
    """Per run and pool, the bar is the median over images of the nearest flipped target."""
    flips = pd.DataFrame(dict(pool="test", sample_index=[0, 0, 1, 1, 2, 2], target=[1, 2, 0, 2, 0, 1],
                              status=["flipped", "flipped", "flipped", "capped", "own", "flipped"],
                              l2=[3.0, 1.0, 5.0, 0.1, 0.0, 2.0]))
    merged = {"flips": flips.assign(label="a")}
    fig = EXPERIMENTS["decision_flip"].compare(merged, "1 run")
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == pytest.approx([2.0])  # nearest flips 1, 5, 2 (capped and own walks are not flips)
