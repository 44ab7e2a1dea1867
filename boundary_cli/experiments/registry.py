"""The experiment contract: what an experiment declares to the runner and to ``boundary report``.

Each experiment module ends with one ``EXPERIMENT = Experiment(...)`` record, and
``experiments/__init__.py`` lists the records once. The runner reads the record's attributes (no
probing of module attributes), and the report merges the tables a run's ``run.json`` says it wrote
(falling back to the record's ``tables`` for run.json files written before the record existed) and
draws the record's comparison figure over a sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from omegaconf import DictConfig

from boundary_cli.data.modifier import DataModifier
from boundary_cli.experiments.context import ExperimentOutput, RunContext


def final_weights(cfg: DictConfig) -> list[int | None]:
    """The default model epochs of an experiment: only the final weights (None)."""
    return [None]


Comparison = Callable[[dict[str, pd.DataFrame], str], Figure | None]
"""Merged tables of a sweep (``{table name: table with run and label columns}``) and a title -> a
figure comparing the runs, or None when the tables hold nothing to compare."""


@dataclass(frozen=True)
class Experiment:
    """One experiment, as the runner and the report see it.

    Attributes:
        name: ``experiment.name`` (equals the module name and the config option).
        validate: checks the ``experiment`` section before any data is read or model trained;
            raises BoundaryError with one clear line.
        run: the experiment itself, from the built run context to the outputs to write.
        tables: every CSV table the experiment can write (``<name>.csv``), main table first.
        figures: figures it always writes (``<name>.png``); some experiments add per-class ones.
        model_epochs: the training epochs whose weights it needs (None = the final weights); the
            runner obtains one model per entry and hands them over as ``ctx.snapshots``.
        lazy_data: works on image sets decoded per batch (ImageNet), which have no training split.
        shards: honours ``shard.index`` / ``shard.count``.
        compare: the figure ``boundary report`` draws over a sweep of this experiment.
        compare_name: file name (without .png) of that figure inside ``report/<name>/``.
        modifier: the change to the training data the experiment's model is trained on (label noise,
            ...), or None for the data as configured; the runner obtains ``ctx.model`` with it.
        needs_aum: whether the run reads the training margins kept with the model (the area under
            the margin); a stored model without them is then trained again.
        own_models: for an experiment that trains and stores its own models (the meta-network's
            zoo): cfg -> the ``model`` and ``training`` identity columns. The runner then obtains no
            model (``ctx.model`` is None) and the run's ``model`` / ``training`` columns are these.
        report_files: merged tables of a sweep -> further files ``boundary report`` writes in
            ``report/<name>/`` ({relative path: a table, written as CSV, or text}), e.g. one table per run.
        check_data: (cfg, data as loaded) -> None, raising BoundaryError with one clear line when the
            run cannot work on that data (before any model is obtained or other check is made).
    """

    name: str
    validate: Callable[[DictConfig], None]
    run: Callable[[RunContext], ExperimentOutput]
    tables: tuple[str, ...]
    figures: tuple[str, ...] = ()
    model_epochs: Callable[[DictConfig], list[int | None]] = final_weights
    lazy_data: bool = False
    shards: bool = False
    compare: Comparison | None = None
    compare_name: str = "comparison"
    modifier: Callable[[DictConfig], DataModifier | None] = lambda cfg: None
    needs_aum: Callable[[DictConfig], bool] = lambda cfg: False
    own_models: Callable[[DictConfig], dict[str, str]] | None = None
    check_data: Callable[[DictConfig, Any], None] = lambda cfg, data: None
    report_files: Callable[[dict[str, pd.DataFrame]], dict[str, pd.DataFrame | str]] | None = None
