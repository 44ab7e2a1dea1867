"""experiment=decision_flip: how far train, test and random images must walk to become each class.

For every pool (train and test images, uniform and per-pixel Gaussian noise images) and every
target class, a fixed-step targeted walk (Decision-Flip-Experiments §2.4); per (source, target)
class the distance, per layer the distance between the image's and the end point's activations.
Source classes are the model's predictions.
"""

from __future__ import annotations

import logging

import pandas as pd
import torch
from omegaconf import DictConfig
from torch import Tensor

from boundary_cli.data.pools import POOLS, Pool, gaussian_images, split_indices, uniform_images
from boundary_cli.errors import BoundaryError
from boundary_cli.experiments.checks import classes_in_range, int_list, layer_names, one_of, positive_int
from boundary_cli.experiments.context import ExperimentOutput, RunContext
from boundary_cli.experiments.registry import Experiment
from boundary_cli.experiments.walking import (
    model_epochs,
    layer_table,
    measure_walks,
    merge_stats,
    nearest_table,
    validate_common,
    validate_walk,
    walk_params,
    walk_table,
)
from boundary_cli.reporting.comparison import decision_flip_comparison
from boundary_cli.reporting.flip_plots import flip_histograms, flip_lines, layer_boxes, nearest_flip_histogram
from boundary_cli.reporting.summary import flip_summary, median_nearest_flip
from boundary_cli.training.evaluation import predict

log = logging.getLogger(__name__)

DISTANCES = ("l2", "l2_sq")


def validate(cfg: DictConfig) -> None:
    e = cfg.experiment
    positive_int(e.n_samples, "experiment.n_samples")
    if e.sample_seed is not None and (not isinstance(e.sample_seed, int) or e.sample_seed < 0):
        raise BoundaryError(f"experiment.sample_seed must be null (first n) or an integer >= 0, got {e.sample_seed!r}")
    pools = list(e.pools)
    if not pools:
        raise BoundaryError(f"experiment.pools is empty; valid pools: {', '.join(POOLS)}")
    for p in pools:
        one_of(p, POOLS, "experiment.pools entry")
    int_list(e.source_classes, "experiment.source_classes", allow_all=True)
    int_list(e.plot_sources, "experiment.plot_sources")
    one_of(e.distance, DISTANCES, "experiment.distance")
    validate_walk(e.walk, modes=("targeted", "flipstop"))
    validate_common(e)


def build_pools(ctx: RunContext, names: list[str]) -> list[Pool]:
    """The images of each pool named in ``experiment.pools``."""
    e, data = ctx.cfg.experiment, ctx.data
    n, seed = int(e.n_samples), e.sample_seed
    out = []
    for name in names:
        if name in ("train", "test"):
            x, y = (data.train_x, data.train_y) if name == "train" else (data.test_x, data.test_y)
            try:
                idx = split_indices(len(y), n, seed=seed)
            except ValueError as exc:
                raise BoundaryError(f"experiment.n_samples={n}: {exc} ({name} split of {data.name})") from None
            out.append(Pool(name, x[idx], idx, y[idx]))
        else:
            shape = tuple(data.train_x.shape[1:])
            pool_seed = int(e.pool_seed) + (0 if name == "uniform" else 1)
            x = (uniform_images(n, shape, data.value_range, pool_seed) if name == "uniform" else
                 gaussian_images(n, data.train_x, pool_seed, clip=data.value_range if e.gaussian_clip else None))
            out.append(Pool(name, x, torch.arange(n), torch.full((n,), -1)))
    return out


def _keep_sources(pool: Pool, pred: Tensor, sources: list[int] | None) -> Pool:
    if sources is None:
        return pool
    keep = torch.isin(pred, torch.tensor(sources))
    return Pool(pool.name, pool.x[keep], pool.index[keep], pool.label[keep])


def run(ctx: RunContext) -> ExperimentOutput:
    e, data, model = ctx.cfg.experiment, ctx.data, ctx.model
    layers = layer_names(model, e.layers, "experiment.layers")
    sources = int_list(e.source_classes, "experiment.source_classes", allow_all=True)
    classes_in_range(sources, data.num_classes, "experiment.source_classes")
    plot_sources = int_list(e.plot_sources, "experiment.plot_sources")
    classes_in_range(plot_sources, data.num_classes, "experiment.plot_sources")
    params = walk_params(e.walk, data.value_range)
    classes = torch.arange(data.num_classes)

    flips, layer_rows, nearest, all_stats = [], [], [], []
    for pool in build_pools(ctx, list(e.pools)):
        pred = predict(model, pool.x, device=ctx.device).argmax(1)
        pool = _keep_sources(pool, pred, sources)
        if len(pool.index) == 0:
            log.warning("pool %s: no image is predicted as one of experiment.source_classes=%s", pool.name, sources)
            continue
        log.info("decision_flip: pool %s, %d images x %d targets", pool.name, len(pool.index), len(classes))
        res, stats = measure_walks(ctx, model, pool.x, classes, params, layers=layers, desc=f"flips {pool.name}",
                                   model_id=ctx.model_id)
        all_stats.append(stats)
        columns = dict(ctx.identity, pool=pool.name, sample_index=pool.index.numpy(), true_label=pool.label.numpy())
        flips.append(walk_table(res, columns, params.mode))
        layer_rows.append(layer_table(res, layers, columns))
        nearest.append(nearest_table(res, dict(pool=pool.name, sample_index=pool.index.numpy())))
    if not flips:
        raise BoundaryError(f"no image of any pool is predicted as one of experiment.source_classes={sources}")
    table = pd.concat(flips, ignore_index=True)
    layers_df = pd.concat(layer_rows, ignore_index=True)
    nearest_df = pd.concat(nearest, ignore_index=True)
    summary = flip_summary(table)
    stats = merge_stats(all_stats)
    stats.update(layers=layers, walk=params.key(),
                 share_flipped=round(float((table["status"] == "flipped").sum() / max(1, (table["status"] != "own").sum())), 4),
                 median_nearest_flip_l2=median_nearest_flip(nearest_df))
    for pool, med in stats["median_nearest_flip_l2"].items():
        log.info("%-8s median distance to the nearest flip: %.4g (L2)", pool, med)

    title = ctx.title()
    dist = str(e.distance)
    figures = {"nearest_flip": nearest_flip_histogram(nearest_df, dist, title),
               "layers": layer_boxes(layers_df, layers, dist, title)}
    for s in plot_sources:
        if (table["source_pred"] == s).any():
            figures[f"flips_from_{s}"] = flip_lines(table, s, dist, title)
            figures[f"hist_from_{s}"] = flip_histograms(table, s, dist, title)
    return ExperimentOutput(tables={"flips": table, "layers": layers_df, "summary": summary},
                            figures=figures, stats=stats)



EXPERIMENT = Experiment(name="decision_flip", validate=validate, run=run, tables=("flips", "layers", "summary"),
                        figures=("nearest_flip", "layers"), model_epochs=model_epochs,
                        compare=decision_flip_comparison)
