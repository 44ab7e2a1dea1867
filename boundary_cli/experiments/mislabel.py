"""experiment=mislabel: how well each per-point signal finds mislabeled training points
(influenciae's benchmark, METHODS.md §5.4, with the baselines a reviewer asks for).

Label noise is injected once, seeded (``experiment.noise``; uniform over the other classes), the
model is trained on the noisy labels (the noise is part of its store key), and every scored
training point is ranked by each method, higher = more suspicious:

* ``weights_prediction``: weight-space influence, −(distance to flip the prediction) (the reference);
* ``weights_label``: −(signed weight-space distance against the given label);
* ``input_deepfool``: −(input-space DeepFool distance with influenciae's sample settings);
* ``loss``: cross-entropy at the given label;
* ``self_confidence``, ``normalized_margin``: cleanlab's label-quality scores (negated) from the
  model's in-sample probabilities;
* ``aum``: −(area under the margin, Pleiss et al. 2020): the mean over training of the margin at the
  given label, recorded by the training loop and kept with the weights (see
  :mod:`boundary_cli.training.aum`);
* with ``experiment.cv_folds=k``, also ``self_confidence_oof`` and ``normalized_margin_oof``: the same
  scores from out-of-fold probabilities (k models, each trained on the noisy labels without one
  fold, predict that fold), as cleanlab recommends.

Runs are the seeds of a ``-m seed=0,1,2`` sweep; ``boundary report`` merges them.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from omegaconf import DictConfig

from boundary_cli.data.label_noise import label_noise, noisy_labels
from boundary_cli.data.modifier import DataModifier
from boundary_cli.detectors.ranking import detection_area, detection_auroc, detection_curve, precision_at_noise
from boundary_cli.errors import BoundaryError
from boundary_cli.experiments.checks import positive_int
from boundary_cli.experiments.context import ExperimentOutput, RunContext
from boundary_cli.experiments.margin import select_samples
from boundary_cli.experiments.registry import Experiment
from boundary_cli.experiments.weights_boundary import chosen_parameters, weight_distances, weight_params
from boundary_cli.geometry.deepfool import deepfool, sample_boundary_params
from boundary_cli.training.evaluation import predict
from boundary_cli.training.obtain import obtain_model

log = logging.getLogger(__name__)

METHODS = ("weights_prediction", "weights_label", "input_deepfool", "loss", "self_confidence", "normalized_margin",
           "aum")
CURVE_POINTS = 101  # the detection curve is stored at these fractions inspected


def noise_seed(cfg: DictConfig) -> int:
    s = cfg.experiment.noise.seed
    return int(cfg.seed) if s is None else int(s)


def modifier(cfg: DictConfig) -> DataModifier:
    noise = cfg.experiment.noise
    return label_noise(float(noise.rate), noise_seed(cfg), bool(noise.get("redraw_each_epoch", False)))


def needs_aum(cfg: DictConfig) -> bool:
    return "aum" in cfg.experiment.methods


def aum_scores(provenance: dict, given: torch.Tensor) -> np.ndarray:
    """−AUM (N,) of every training point, from the training margins stored with the model; ``given``
    (N,) are the labels the experiment scores against, which must be those the margins were taken at."""
    from boundary_cli.training.aum import area_under_margin

    path = provenance.get("aum")
    if not path:
        raise BoundaryError("the area under the margin needs the training margins kept with the model, and "
                            f"this model ({provenance.get('source')}) has none; leave model.checkpoint unset")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not torch.equal(state["labels"], given.cpu().long()):
        raise BoundaryError(f"the training margins in {path} were taken at other labels than the noisy ones "
                            f"scored here; delete that file to train again")
    return -area_under_margin(state).numpy()


def fold_of(n: int, folds: int, seed: int) -> torch.Tensor:
    """(n,) int64 fold of each training point: a seeded permutation cut into ``folds`` near-equal parts."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    fold = torch.empty(n, dtype=torch.long)
    fold[order] = torch.arange(n) % folds
    return fold


def fold_modifier(noise: DataModifier, fold: int, folds: int, seed: int) -> DataModifier:
    """The noisy training split without the points of ``fold`` (its own store key)."""
    def apply(data):
        noisy = noise.apply(data)
        keep = fold_of(len(data.train_y), folds, seed) != fold
        return replace(noisy, train_x=noisy.train_x[keep], train_y=noisy.train_y[keep])

    return DataModifier(name="label_noise_cv_fold", params=dict(noise=noise.key(), fold=int(fold), folds=int(folds),
                                                                seed=int(seed)), apply=apply)


def out_of_fold_probs(ctx: RunContext, folds: int, seed: int) -> np.ndarray:
    """(N, K) probabilities of every training point from the model trained without its fold."""
    noise = modifier(ctx.cfg)
    fold = fold_of(len(ctx.data.train_y), folds, seed)
    probs = np.zeros((len(fold), ctx.data.num_classes), dtype=np.float32)
    for f in range(folds):
        model = obtain_model(ctx.cfg, ctx.data, ctx.device, ctx.progress, modifier=fold_modifier(noise, f, folds, seed)).model
        held = (fold == f).nonzero().squeeze(1)
        probs[held.numpy()] = predict(model, ctx.data.train_x[held], device=ctx.device).softmax(1).numpy()
        log.info("cv fold %d of %d: %d held-out points predicted", f + 1, folds, len(held))
    return probs


def validate(cfg: DictConfig) -> None:
    e = cfg.experiment
    k = e.get("cv_folds")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 2):
        raise BoundaryError(f"experiment.cv_folds must be null or an integer >= 2, got {k!r}")
    rate = e.noise.rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
        raise BoundaryError(f"experiment.noise.rate must be a number in (0, 1), got {rate!r}")
    unknown = [m for m in e.methods if m not in METHODS]
    if unknown or not e.methods:
        raise BoundaryError(f"unknown experiment.methods {unknown}; valid: {', '.join(METHODS)}")
    if e.n_points != "all":
        positive_int(e.n_points, "experiment.n_points (or 'all')")
    positive_int(e.chunk_size, "experiment.chunk_size")
    if e.batch_rows != "auto":
        positive_int(e.batch_rows, "experiment.batch_rows (or 'auto')")
    weight_params(e)


def _cleanlab(labels: np.ndarray, probs: np.ndarray, method: str) -> np.ndarray:
    from cleanlab.rank import get_label_quality_scores

    return get_label_quality_scores(labels, probs, method=method)


def run(ctx: RunContext) -> ExperimentOutput:
    e = ctx.cfg.experiment
    data = ctx.data
    rate, seed = float(e.noise.rate), noise_seed(ctx.cfg)
    given, noisy_all = noisy_labels(data.train_y, data.num_classes, rate, seed)
    idx = select_samples(len(given), e.n_points, int(e.sample_seed))
    x, y, y_true, noisy = data.train_x[idx], given[idx], data.train_y[idx], noisy_all[idx].numpy()
    if noisy.sum() == 0:
        raise BoundaryError(f"no scored point is mislabeled (rate {rate}, {len(idx)} points): raise "
                            f"experiment.noise.rate or experiment.n_points")
    logits = predict(ctx.model, x, device=ctx.device)
    probs = logits.softmax(1).numpy()
    pred = logits.argmax(1)
    scores: dict[str, np.ndarray] = {}
    methods = list(e.methods)
    params, names = weight_params(e), chosen_parameters(ctx.model, e.weights.params)
    for against, method in (("prediction", "weights_prediction"), ("label", "weights_label")):
        if method in methods:
            _, cat = weight_distances(ctx, data.train_x, given, idx, int(e.chunk_size), params, names, against,
                                      e.batch_rows, desc=f"weights ({against})")
            scores[method] = -cat["distance"]
    if "input_deepfool" in methods:
        sp = sample_boundary_params(max_iter=int(e.input.max_iter), eps=float(e.input.eps),
                                    candidates=int(e.input.candidates))
        margins = [deepfool(ctx.model, part.to(ctx.device), sp, keep_perturbation=False).margin.cpu()
                   for part in x.split(int(e.chunk_size))]
        scores["input_deepfool"] = -torch.cat(margins).numpy()
    if "loss" in methods:
        scores["loss"] = F.cross_entropy(logits, y, reduction="none").numpy()
    for m in ("self_confidence", "normalized_margin"):
        if m in methods:
            scores[m] = -_cleanlab(y.numpy(), probs, m)
    if "aum" in methods:
        scores["aum"] = aum_scores(ctx.snapshots[None][1], given)[idx.numpy()]
    if e.get("cv_folds") is not None:
        oof = out_of_fold_probs(ctx, int(e.cv_folds), int(e.sample_seed))[idx.numpy()]
        for m in ("self_confidence", "normalized_margin"):
            scores[f"{m}_oof"] = -_cleanlab(y.numpy(), oof, m)

    n, realised = len(idx), float(noisy.mean())
    train_acc_given = float((pred == y).float().mean())
    test_acc = float((predict(ctx.model, data.test_x, device=ctx.device).argmax(1) == data.test_y).float().mean())
    rows, curves = [], []
    grid = np.linspace(0, 1, CURVE_POINTS)
    for m, s in scores.items():
        curve = detection_curve(s, noisy)
        at = np.interp(grid, np.arange(1, n + 1) / n, curve, left=0.0)
        curves.append(pd.DataFrame(dict(method=m, noise_rate=rate, fraction_inspected=grid, fraction_found=at)))
        rows.append(dict(method=m, noise_rate=rate, realised_rate=realised, noise_seed=seed, n_points=n,
                         n_noisy=int(noisy.sum()), auroc=detection_auroc(s, noisy), detection_area=detection_area(s, noisy),
                         precision_at_noise=precision_at_noise(s, noisy), train_accuracy_given=train_acc_given,
                         train_accuracy_true=float((pred == y_true).float().mean()), test_accuracy=test_acc))
    identity = ctx.identity
    summary = pd.DataFrame([{**identity, **r} for r in rows])
    curve_table = pd.concat([c.assign(**identity) for c in curves], ignore_index=True)
    point_table = pd.DataFrame({**identity, "sample_index": np.repeat(idx.numpy(), len(scores)),
                                "label_given": np.repeat(y.numpy(), len(scores)),
                                "label_true": np.repeat(y_true.numpy(), len(scores)),
                                "noisy": np.repeat(noisy, len(scores)),
                                "method": np.tile(list(scores), n),
                                "score": np.stack(list(scores.values()), axis=1).ravel()})
    for r in rows:
        log.info("%-20s AUROC %.3f  area %.3f  precision@noise %.3f", r["method"], r["auroc"], r["detection_area"],
                 r["precision_at_noise"])
    figures = {"detection": detection_figure(curve_table, ctx.title(f"noise {rate:g} (realised {realised:.3f})"))}
    stats = dict(noise=dict(rate=rate, seed=seed, realised_rate=realised, n_noisy=int(noisy.sum()),
                            redraw_each_epoch=bool(e.noise.get("redraw_each_epoch", False))), n_points=n,
                 methods=list(scores), train_accuracy_given=train_acc_given, test_accuracy_measured=test_acc)
    return ExperimentOutput(tables={"mislabel_summary": summary, "mislabel_curves": curve_table,
                                    "mislabel_scores": point_table}, figures=figures, stats=stats)


def detection_figure(curves: pd.DataFrame, title: str) -> Figure:
    """Mean detection curve per method (x: share of points inspected, most suspicious first; y: share
    of the mislabeled points found), with a band from the lowest to the highest run when the table
    holds several runs (a ``run`` column), and the chance line. Runs of several noise rates get one
    line per method and rate."""
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    by_rate = "noise_rate" in curves.columns and curves["noise_rate"].nunique() > 1
    keys = ["method", "noise_rate"] if by_rate else ["method"]
    for key, part in curves.groupby(keys, sort=False):
        method = f"{key[0]} (noise {key[1]:g})" if by_rate else (key[0] if isinstance(key, tuple) else key)
        runs = part.groupby("run") if "run" in part.columns else [(None, part)]
        ys = np.stack([g.sort_values("fraction_inspected")["fraction_found"].to_numpy() for _, g in runs])
        xs = np.sort(part["fraction_inspected"].unique())
        line, = ax.plot(xs, ys.mean(0), lw=1.5, label=f"{method}")
        if len(ys) > 1:
            ax.fill_between(xs, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15, lw=0)
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=0.8, label="chance")
    ax.set_xlabel("share of training points inspected (most suspicious first)")
    ax.set_ylabel("share of mislabeled points found")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    return fig


def mislabel_comparison(tables: dict[str, pd.DataFrame], title: str) -> Figure | None:
    """Over a sweep (e.g. seeds): the mean detection curve per method with its band over runs."""
    curves = tables.get("mislabel_curves")
    if curves is None or not len(curves):
        return None
    return detection_figure(curves, f"mislabeled-point detection: {title}")


EXPERIMENT = Experiment(name="mislabel", validate=validate, run=run,
                        tables=("mislabel_summary", "mislabel_curves", "mislabel_scores"), figures=("detection",),
                        compare=mislabel_comparison, compare_name="detection", modifier=modifier,
                        needs_aum=needs_aum)
