"""experiment=train_again: overfit single training points, then measure their flips again (§2.5).

Before: targeted walks from each chosen point to every class with the base model. Then the point is
overfit (N Adam steps on it alone, with its true label), independently from the base weights for
each point, or sequentially without restoring (the reference's variant A); after: the same walks
with the overfit weights. Adam starts from the training run's state at the base checkpoint
(``experiment.optimizer_state=restore``, the reference's ``Saver.restore``: moments and step count)
or from zero (``fresh``). The table pairs before and after per (point, class) and flags points the
base model misclassified.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from omegaconf import DictConfig

from boundary_cli.cache import stable_hash, tensor_hash
from boundary_cli.errors import BoundaryError
from boundary_cli.experiments.checks import one_of, positive_int, positive_number
from boundary_cli.experiments.context import Computed, ExperimentOutput, RunContext
from boundary_cli.experiments.registry import Experiment
from boundary_cli.experiments.walking import (
    model_epochs,
    chosen_images,
    measure_walks,
    merge_stats,
    validate_common,
    validate_selection,
    validate_walk,
    walk_params,
    walk_table,
)
from boundary_cli.reporting.comparison import train_again_comparison
from boundary_cli.reporting.flip_plots import train_again_figure
from boundary_cli.training.evaluation import predict
from boundary_cli.training.overfit import WithParams, overfit_independent, overfit_sequential, points_per_batch

log = logging.getLogger(__name__)

MODES = ("independent", "sequential")
OPTIMIZER_STATES = ("restore", "fresh")
OVERFIT_FORMAT = 2  # bump when the meaning of stored overfit chunks changes (2: the Adam state they start from)


def validate(cfg: DictConfig) -> None:
    e = cfg.experiment
    validate_selection(e)
    one_of(e.mode, MODES, "experiment.mode")
    positive_int(e.overfit.steps, "experiment.overfit.steps")
    positive_number(e.overfit.lr, "experiment.overfit.lr")
    positive_number(e.overfit.eps, "experiment.overfit.eps")
    one_of(e.distance, ("l2", "l2_sq"), "experiment.distance")
    validate_walk(e.walk, modes=("targeted",))
    validate_common(e)
    one_of(e.optimizer_state, OPTIMIZER_STATES, "experiment.optimizer_state")
    if e.optimizer_state == "restore":
        given = ("model.checkpoint" if cfg.model.checkpoint else
                 "model.pretrained=true" if cfg.model.arch.get("pretrained", False) else None)
        if given:
            raise BoundaryError(f"experiment.optimizer_state=restore needs the Adam state of the training run, but "
                                f"{given} gives weights only; use experiment.optimizer_state=fresh (Adam from zero)")
        if not cfg.training.get("save_optimizer", False):
            raise BoundaryError(f"experiment.optimizer_state=restore needs the Adam state of the training run, but "
                                f"training={cfg.training.name} keeps none (training.save_optimizer=false); use "
                                f"experiment.optimizer_state=fresh, or training=flip_adam")


def base_adam_state(ctx: RunContext) -> tuple[dict | None, str]:
    """The Adam state stored with the base weights (None for ``fresh``) and a hash of it for the
    cache keys. Raises BoundaryError when the stored state is not Adam's."""
    if ctx.cfg.experiment.optimizer_state == "fresh":
        return None, "fresh"
    _, provenance = next(iter(ctx.snapshots.values()))
    path = provenance.get("optimizer_state")
    state = torch.load(path, map_location="cpu", weights_only=True) if path else None
    if state is None or state.get("optimizer") != "Adam":
        kind = "no optimizer state" if state is None else f"the state of {state.get('optimizer')}"
        raise BoundaryError(f"experiment.optimizer_state=restore: the base weights come with {kind}, not Adam's; "
                            f"use experiment.optimizer_state=fresh")
    slots = [t for name in sorted(state["state"]) for t in state["state"][name].values()]
    return state, tensor_hash(*slots)


def _overfit_args(e: DictConfig) -> dict:
    return dict(steps=int(e.overfit.steps), lr=float(e.overfit.lr),
                betas=tuple(float(b) for b in e.overfit.betas), eps=float(e.overfit.eps))


def run(ctx: RunContext) -> ExperimentOutput:
    e, data, model = ctx.cfg.experiment, ctx.data, ctx.model
    params = walk_params(e.walk, data.value_range)
    images = chosen_images(ctx)
    classes = torch.arange(data.num_classes)
    fit = _overfit_args(e)
    adam_state, state_id = base_adam_state(ctx)
    x, y = images.x.to(ctx.device), images.label.to(ctx.device)

    before, stats_before = measure_walks(ctx, model, images.x, classes, params, desc="flips before",
                                         model_id=ctx.model_id)
    start = time.perf_counter()
    after_parts, all_stats = [], [stats_before]
    if e.mode == "sequential":
        log.info("train_again: overfitting %d points one after another, %d Adam steps each (%s Adam state)", len(y),
                 fit["steps"], "restored" if adam_state else "fresh")
        tuned = overfit_sequential(model, x, y, adam_state=adam_state, **fit)
        res, st = measure_walks(ctx, tuned, images.x, classes, params, desc="flips after")
        after_parts.append(res)
        all_stats.append(st)
    else:
        per_batch = points_per_batch(model, ctx.memory_budget)
        log.info("train_again: overfitting %d points independently (%d at a time), %d Adam steps each (%s Adam "
                 "state)", len(y), per_batch, fit["steps"], "restored" if adam_state else "fresh")
        starts = list(range(0, len(y), per_batch))
        overfit = ctx.cached_chunks(
            "overfit", starts,
            lambda lo, _: Computed(overfit_independent(model, x[lo: lo + per_batch], y[lo: lo + per_batch],
                                                       adam_state=adam_state, **fit)),
            fmt=OVERFIT_FORMAT, params=dict(optimizer_state=state_id, **fit),
            rows=lambda lo: len(y[lo: lo + per_batch]), inputs=lambda lo: (x[lo: lo + per_batch], y[lo: lo + per_batch]),
            desc="overfit points", unit="point")
        for lo, stacked, key in zip(starts, overfit.parts, overfit.keys):
            for i in range(len(y[lo: lo + per_batch])):
                tuned = WithParams(model, {k: v[i].to(ctx.device) for k, v in stacked.items()}).eval()
                res, st = measure_walks(ctx, tuned, images.x[lo + i: lo + i + 1], classes, params,
                                        desc=f"flips after #{int(images.index[lo + i])}",
                                        model_id=stable_hash([key, i]))
                after_parts.append(res)
                all_stats.append(st)
    overfit_s = time.perf_counter() - start
    after = {k: torch.cat([p[k] for p in after_parts]) for k in before}

    base_probs = predict(model, images.x, device=ctx.device).softmax(1)
    base_pred = base_probs.argmax(1)
    columns = dict(ctx.identity, split=images.name, sample_index=images.index.numpy(),
                   true_label=images.label.numpy(), base_prediction=base_pred.numpy(),
                   base_confidence=base_probs.max(1).values.numpy(),
                   misclassified_before=(base_pred != images.label).numpy(), mode=str(e.mode))
    tb = walk_table(before, columns, params.mode)
    ta = walk_table(after, {}, params.mode)
    table = tb.drop(columns=["mode"]).rename(columns={c: f"{c}_before" for c in
                                                     ["steps", "status", "l2", "l2_sq", "end_class", "source_pred",
                                                      "first_exit_class", "first_exit_step", "n_classes_visited",
                                                      "classes_visited"]})
    for c in ["steps", "status", "l2", "l2_sq", "end_class", "source_pred"]:
        table[f"{c}_after"] = ta[c].to_numpy()
    table.insert(table.columns.get_loc("target") + 1, "walk_mode", params.mode)
    both = table[(table["status_before"] == "flipped") & (table["status_after"] == "flipped")]
    grew = float((both["l2_after"] > both["l2_before"]).mean()) if len(both) else float("nan")
    ratio = float(np.median(both["l2_after"] / both["l2_before"])) if len(both) else float("nan")
    log.info("train_again: %d of %d (point, class) pairs flipped before and after; distance grew for %.0f%%, "
             "median after/before %.3g", len(both), int((table["status_before"] != "own").sum()), 100 * grew, ratio)
    stats = merge_stats(all_stats)
    stats.update(overfit_and_walk_s=round(overfit_s, 3), n_points=len(y), share_grown=round(grew, 4),
                 optimizer_state=str(e.optimizer_state),
                 median_ratio_after_before=round(ratio, 6),
                 n_misclassified_before=int((base_pred != images.label).sum()),
                 n_own_class_changed=int((after["source"][:, 0] != before["source"][:, 0]).sum()))
    title = ctx.title(f"{e.mode}, {fit['steps']} Adam steps per point ({e.optimizer_state} Adam state)")
    return ExperimentOutput(tables={"train_again": table},
                            figures={"train_again": train_again_figure(table, str(e.distance), title)},
                            stats=stats)


EXPERIMENT = Experiment(name="train_again", validate=validate, run=run, tables=("train_again",), figures=("train_again",),
                        model_epochs=model_epochs, compare=train_again_comparison)
