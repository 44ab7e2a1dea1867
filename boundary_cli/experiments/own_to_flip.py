"""experiment=own_to_flip: per layer, distance to the own class over distance to the nearest flip (§2.7).

For each chosen image, targeted walks to every class give the nearest flip (the closest walk that
reached its target). Per layer l, ``flip = ‖a_l(x) − a_l(nearest flip)‖`` and
``own = ‖a_l(x) − c_l‖`` with c the centroid of the image's predicted class: the mean image of the
centroid images the model predicts as that class, pushed through the network (``space=input``, the
reference), or the mean of their activations at l (``space=layer``). The ratio own / flip is reported
for L2 and squared L2; the reference expects it to decay with depth.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from boundary_cli.errors import BoundaryError
from boundary_cli.experiments.checks import layer_names, nonnegative_int, one_of, positive_int
from boundary_cli.experiments.context import ExperimentOutput, RunContext
from boundary_cli.experiments.registry import Experiment
from boundary_cli.experiments.walking import (
    model_epochs,
    chosen_images,
    measure_walks,
    validate_common,
    validate_selection,
    validate_walk,
    walk_params,
)
from boundary_cli.geometry.centroids import SPACES, own_class_distances
from boundary_cli.geometry.walks import nearest_flip
from boundary_cli.reporting.comparison import own_to_flip_comparison
from boundary_cli.reporting.flip_plots import ratio_figure
from boundary_cli.training.evaluation import predict

log = logging.getLogger(__name__)

def validate(cfg: DictConfig) -> None:
    e = cfg.experiment
    validate_selection(e)
    one_of(e.centroid.space, SPACES, "experiment.centroid.space")
    one_of(e.centroid.split, ("train", "test"), "experiment.centroid.split")
    nonnegative_int(e.centroid.start, "experiment.centroid.start")
    positive_int(e.centroid.count, "experiment.centroid.count")
    validate_walk(e.walk, modes=("targeted",))
    validate_common(e)


def run(ctx: RunContext) -> ExperimentOutput:
    e, data, model = ctx.cfg.experiment, ctx.data, ctx.model
    layers = layer_names(model, e.layers, "experiment.layers")
    params = walk_params(e.walk, data.value_range)
    images = chosen_images(ctx)
    classes = torch.arange(data.num_classes)
    res, stats = measure_walks(ctx, model, images.x, classes, params, layers=layers, desc="flips",
                               model_id=ctx.model_id)

    slot, _ = nearest_flip(res["status"], res["l2"])
    has_flip = slot >= 0
    if not bool(has_flip.any()):
        raise BoundaryError("no walk reached its target: raise experiment.walk.max_steps or eta")
    at = slot.clamp_min(0).view(1, -1, 1).expand(len(layers), -1, 1)
    flip_sq = res["layer_sq"].gather(2, at).squeeze(2)
    flip_sq = torch.where(has_flip, flip_sq, torch.full_like(flip_sq, float("nan")))

    c = e.centroid
    cx_all = data.train_x if c.split == "train" else data.test_x
    cx = cx_all[int(c.start): int(c.start) + int(c.count)]
    if len(cx) == 0:
        raise BoundaryError(f"experiment.centroid.start={c.start} is past the end of the {c.split} split "
                            f"({len(cx_all)} images)")
    if len(cx) < int(c.count):
        log.warning("centroids from %d %s images (%d asked for)", len(cx), c.split, int(c.count))
    cpred = predict(model, cx, device=ctx.device).argmax(1)
    own = res["source"][:, 0]
    own_sq = own_class_distances(model, images.x.to(ctx.device), own.to(ctx.device), cx.to(ctx.device),
                                 cpred.to(ctx.device), layers, str(c.space), data.num_classes).cpu()
    missing = int(own_sq[0].isnan().sum())
    if missing:
        log.warning("%d image(s) have a predicted class that no centroid image has: their ratio is NaN", missing)

    n = len(images.index)
    table = pd.DataFrame({
        **ctx.identity,
        "split": images.name,
        "sample_index": np.repeat(images.index.numpy(), len(layers)),
        "true_label": np.repeat(images.label.numpy(), len(layers)),
        "prediction": np.repeat(own.numpy(), len(layers)),
        "flip_target": np.repeat(slot.numpy(), len(layers)),
        "layer": np.tile(layers, n),
        "layer_index": np.tile(np.arange(len(layers)), n),
        "own_l2_sq": own_sq.T.reshape(-1).numpy(),
        "flip_l2_sq": flip_sq.T.reshape(-1).numpy(),
    })
    table["own_l2"] = np.sqrt(table["own_l2_sq"])
    table["flip_l2"] = np.sqrt(table["flip_l2_sq"])
    with np.errstate(divide="ignore", invalid="ignore"):
        table["ratio_l2"] = table["own_l2"] / table["flip_l2"]
        table["ratio_l2_sq"] = table["own_l2_sq"] / table["flip_l2_sq"]
    medians = table.groupby("layer", sort=False)[["ratio_l2", "ratio_l2_sq", "own_l2", "flip_l2"]].median()
    summary = medians.reindex(layers).reset_index()
    for _, row in summary.iterrows():
        log.info("layer %-8s median own/flip ratio %.4g (L2), own %.4g, flip %.4g", row["layer"], row["ratio_l2"],
                 row["own_l2"], row["flip_l2"])
    stats.update(layers=layers, n_images=n, n_without_flip=int((~has_flip).sum()),
                 centroid=dict(space=str(c.space), split=str(c.split), n_images=len(cx)),
                 median_ratio_l2={r["layer"]: round(float(r["ratio_l2"]), 6) for _, r in summary.iterrows()})
    title = ctx.title(f"centroids in {c.space} space")
    return ExperimentOutput(tables={"own_to_flip": table, "summary": summary},
                            figures={"own_to_flip": ratio_figure(table, layers, "ratio_l2", title),
                                     "own_to_flip_sq": ratio_figure(table, layers, "ratio_l2_sq", title)},
                            stats=stats)


EXPERIMENT = Experiment(name="own_to_flip", validate=validate, run=run, tables=("own_to_flip", "summary"), figures=("own_to_flip", "own_to_flip_sq"),
                        model_epochs=model_epochs, compare=own_to_flip_comparison)
