"""experiment=multiple_hits: how often a walk toward one class first enters another (§2.6).

For every chosen image and every class t other than the model's prediction, a walk descends the
loss of t (``flipstop``: it stops at the first class change, the reference; ``targeted``: it goes on
to t, and the per-step class trace gives the first class entered on the way). It is a hit when the
first class the walk enters is not t, in either mode. A walk whose gradient vanished before it left
the source class (status ``zero_grad``) ends predicted as the source, which the reference's
``k̂(x_t) ≠ t`` counts as a hit: ``experiment.zero_grad_is_hit`` (default true) keeps that rule.
A walk that hit the step cap without leaving the source class is no hit (the reference has no cap;
it would loop) and is reported. Per image, hits counts them (at most K-1) and n_classes_entered the
distinct first classes entered. The own class is the model's prediction, so a misclassified image
scores no spurious hit. Several checkpoints of one training run are compared on the same images.
"""

from __future__ import annotations

import logging

import pandas as pd
import torch
from omegaconf import DictConfig

from boundary_cli.cache import model_hash
from boundary_cli.errors import BoundaryError
from boundary_cli.experiments.checks import int_list
from boundary_cli.experiments.context import ExperimentOutput, RunContext
from boundary_cli.experiments.registry import Experiment
from boundary_cli.experiments.walking import (
    chosen_images,
    measure_walks,
    merge_stats,
    validate_common,
    validate_selection,
    validate_walk,
    walk_params,
    walk_table,
)
from boundary_cli.reporting.comparison import multiple_hits_comparison
from boundary_cli.reporting.flip_plots import hits_figure

log = logging.getLogger(__name__)


def model_epochs(cfg: DictConfig) -> list[int | None]:
    epochs = int_list(cfg.experiment.epochs, "experiment.epochs")
    return list(dict.fromkeys(epochs)) or [None]


def validate(cfg: DictConfig) -> None:
    e = cfg.experiment
    model_epochs(cfg)
    validate_selection(e)
    validate_walk(e.walk, modes=("flipstop", "targeted"))
    validate_common(e)
    if not isinstance(e.zero_grad_is_hit, bool):
        raise BoundaryError(f"experiment.zero_grad_is_hit must be true or false, got {e.zero_grad_is_hit!r}")


def hit_column(table: pd.DataFrame, zero_grad_is_hit: bool) -> pd.Series:
    """Per walk row of :func:`walk_table`: did the walk toward ``target`` first enter another class?
    The own slot is never a hit; a zero-gradient walk that never left the source counts as one when
    ``zero_grad_is_hit`` (the reference's rule)."""
    entered = table["first_exit_class"]
    hit = (entered >= 0) & (entered != table["target"])
    stuck = (table["status"] == "zero_grad") & (entered < 0)
    return (hit | (stuck & zero_grad_is_hit)) & (table["status"] != "own")


def run(ctx: RunContext) -> ExperimentOutput:
    e, data = ctx.cfg.experiment, ctx.data
    params = walk_params(e.walk, data.value_range)
    images = chosen_images(ctx)
    classes = torch.arange(data.num_classes)
    tables, summaries, all_stats, means = [], [], [], {}
    for epoch, (model, provenance) in ctx.snapshots.items():
        epoch = provenance.get("epoch", "checkpoint")  # a model.checkpoint file has no epoch
        res, stats = measure_walks(ctx, model, images.x, classes, params, desc=f"hits epoch {epoch}",
                                   model_id=model_hash(model))
        all_stats.append(stats)
        table = walk_table(res, dict(ctx.identity, epoch=epoch, split=images.name,
                                     sample_index=images.index.numpy(), true_label=images.label.numpy()),
                           params.mode)
        table["hit"] = hit_column(table, bool(e.zero_grad_is_hit))
        tables.append(table)
        walked = table[table["status"] != "own"]
        per_image = walked.groupby("sample_index", sort=False).agg(
            true_label=("true_label", "first"), prediction=("source_pred", "first"), hits=("hit", "sum"),
            n_targets=("hit", "size"), n_capped=("status", lambda s: int((s == "capped").sum())),
            n_zero_grad=("status", lambda s: int((s == "zero_grad").sum())),
            n_classes_entered=("first_exit_class", lambda s: int(s[s >= 0].nunique()))).reset_index()
        per_image.insert(0, "epoch", epoch)
        for k, v in ctx.identity.items():
            per_image[k] = v
        summaries.append(per_image)
        means[str(epoch)] = round(float(per_image["hits"].mean()), 4)
        log.info("epoch %s (test accuracy %.4f): mean hits %.2f of %d targets, %d walks capped", epoch,
                 provenance["test_accuracy"], per_image["hits"].mean(), data.num_classes - 1,
                 int(per_image["n_capped"].sum()))
    hits = pd.concat(tables, ignore_index=True)
    summary = pd.concat(summaries, ignore_index=True)
    stats = merge_stats(all_stats)
    stats.update(mean_hits=means, n_images=len(images.index), zero_grad_is_hit=bool(e.zero_grad_is_hit),
                 walk=params.key())
    title = ctx.title(f"{len(images.index)} {images.name} images")
    return ExperimentOutput(tables={"hits": hits, "hits_summary": summary},
                            figures={"hits": hits_figure(summary, title)}, stats=stats)


EXPERIMENT = Experiment(name="multiple_hits", validate=validate, run=run, tables=("hits", "hits_summary"), figures=("hits",),
                        model_epochs=model_epochs, compare=multiple_hits_comparison)
