"""experiment=lcr: flag the predictions that are likely wrong (the lcr-conductance reference, §3).

Two per-input signals: the label change rate (LCR), the share of accepted weight mutants whose
prediction differs from the model's, and the layer conductance of the predicted-class logit per
channel of chosen layers. Detectors (LCR itself, an MLP on conductance, a small MLP and optional
sklearn models on [LCR, p_cond]) are trained on the model's own training-set predictions, their
thresholds chosen on a validation part of the test split (Youden), and reported on the rest.

Mutants are accepted on the whole test split by default (``experiment.mutants.accept_on=test``, the
reference's CIFAR notebook), so the images that val and test later evaluate took part in choosing the
mutants; ``train_holdout`` accepts on the last ``n_accept`` training images instead (held out from the
detectors, not from the CNN's own training).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from sklearn.metrics import roc_auc_score
from torch import Tensor

from boundary_cli.detectors.conductance import layer_conductance
from boundary_cli.detectors.detection import (
    DROPOUT_MODES,
    SKLEARN_KINDS,
    MLPParams,
    cross_fitted_detectors,
)
from boundary_cli.detectors.mutants import (
    ACCEPT_RULES,
    OPERATORS,
    accept_mutants,
    draw_mutant,
    label_change_rate,
    lcr_by_count,
    predict_mutants,
)
from boundary_cli.errors import BoundaryError
from boundary_cli.experiments.checks import (
    int_list,
    layer_names,
    one_of,
    positive_int,
    positive_number,
)
from boundary_cli.experiments.context import Computed, ExperimentOutput, RunContext
from boundary_cli.experiments.registry import Experiment
from boundary_cli.reporting.comparison import lcr_comparison
from boundary_cli.reporting.lcr_plots import auroc_by_count_figure, roc_figure
from boundary_cli.training.evaluation import predict

log = logging.getLogger(__name__)

CHUNK_FORMAT = 2  # bump when the meaning of stored chunks changes (2: acceptance split and rule switches)
BASELINES = ("mean", "zero")
ACCEPT_ON = ("test", "train_holdout")


def validate(cfg: DictConfig) -> None:
    e = cfg.experiment
    if e.n_train != "all":
        positive_int(e.n_train, "experiment.n_train (or 'all')")
    positive_int(e.n_accept, "experiment.n_accept")
    if not isinstance(e.val_fraction, (int, float)) or not 0 < e.val_fraction < 1:
        raise BoundaryError(f"experiment.val_fraction must lie in (0, 1), got {e.val_fraction!r}")
    positive_int(e.min_wrong, "experiment.min_wrong")
    validate_mutants(e.mutants)
    counts = int_list(e.auroc_counts, "experiment.auroc_counts")
    if any(c < 1 for c in counts):
        raise BoundaryError("experiment.auroc_counts must be positive mutant counts")
    c = e.conductance
    one_of(c.baseline, BASELINES, "experiment.conductance.baseline")
    positive_int(c.n_steps, "experiment.conductance.n_steps")
    for name in ("cond_mlp", "combined_mlp"):
        d = e.detectors[name]
        positive_int(d.epochs, f"experiment.detectors.{name}.epochs")
        positive_int(d.batch_size, f"experiment.detectors.{name}.batch_size")
        positive_number(d.lr, f"experiment.detectors.{name}.lr")
        hidden = int_list(d.hidden, f"experiment.detectors.{name}.hidden")
        if not hidden or any(h < 1 for h in hidden):
            raise BoundaryError(f"experiment.detectors.{name}.hidden must be a non-empty list of layer widths >= 1, "
                                f"got {d.hidden!r}")
        if isinstance(d.dropout, bool) or not isinstance(d.dropout, (int, float)) or not 0 <= d.dropout < 1:
            raise BoundaryError(f"experiment.detectors.{name}.dropout must lie in [0, 1), got {d.dropout!r}")
        one_of(d.dropout_after, DROPOUT_MODES, f"experiment.detectors.{name}.dropout_after")
    if positive_int(e.detectors.folds, "experiment.detectors.folds") < 2:
        raise BoundaryError("experiment.detectors.folds must be at least 2")
    for kind in e.detectors.extra or []:
        one_of(kind, SKLEARN_KINDS, "experiment.detectors.extra entry")
    positive_int(e.chunk_size, "experiment.chunk_size")


def validate_mutants(m: DictConfig) -> None:
    """Check an ``experiment.mutants`` section (operator, gamma, counts, the acceptance rule)."""
    one_of(m.operator, OPERATORS, "experiment.mutants.operator")
    if isinstance(m.gamma, bool) or not isinstance(m.gamma, (int, float)) or not 0 < m.gamma <= 1:
        raise BoundaryError(f"experiment.mutants.gamma must lie in (0, 1], got {m.gamma!r}")
    positive_int(m.n_mutants, "experiment.mutants.n_mutants")
    positive_int(m.max_attempts, "experiment.mutants.max_attempts")
    if isinstance(m.accept_ratio, bool) or not isinstance(m.accept_ratio, (int, float)) or m.accept_ratio < 0:
        raise BoundaryError(f"experiment.mutants.accept_ratio must be a number >= 0, got {m.accept_ratio!r}")
    one_of(m.accept_on, ACCEPT_ON, "experiment.mutants.accept_on")
    one_of(m.accept_rule, ACCEPT_RULES, "experiment.mutants.accept_rule")
    if isinstance(m.ns_min_accuracy, bool) or not isinstance(m.ns_min_accuracy, (int, float)) \
            or not 0 <= m.ns_min_accuracy <= 1:
        raise BoundaryError(f"experiment.mutants.ns_min_accuracy must lie in [0, 1], got {m.ns_min_accuracy!r}")


def _splits(ctx: RunContext) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """{split: (indices into its source split, images, labels)}: train (detector training: the first
    n_train training images), accept (mutant acceptance), val and test (a seeded split of the test set).

    accept: with ``mutants.accept_on=test`` (the reference) the whole test split, in file order, and
    ``n_train=all`` is every training image; with ``train_holdout`` the last ``n_accept`` training images,
    never detector training images (``n_train=all`` is all the others)."""
    e, data = ctx.cfg.experiment, ctx.data
    n = len(data.train_y)
    holdout = e.mutants.accept_on == "train_holdout"
    n_accept = int(e.n_accept) if holdout else 0
    n_train = n - n_accept if e.n_train == "all" else int(e.n_train)
    if n_train + n_accept > n:
        what = (f" + n_accept={n_accept} exceed the {n} training images of {data.name}; lower them (the acceptance "
                "images must not be detector training images)") if holdout else \
            f" exceeds the {n} training images of {data.name}; lower it"
        raise BoundaryError(f"experiment.n_train={e.n_train}{what}")
    order = torch.randperm(len(data.test_y), generator=torch.Generator().manual_seed(int(e.split_seed)))
    n_val = int(round(float(e.val_fraction) * len(order)))
    parts = {"train": torch.arange(n_train),
             "accept": torch.arange(n - n_accept, n) if holdout else torch.arange(len(data.test_y)),
             "val": order[:n_val].sort().values, "test": order[n_val:].sort().values}
    out = {}
    for name, idx in parts.items():
        from_train = name == "train" or (name == "accept" and holdout)
        x, y = (data.train_x, data.train_y) if from_train else (data.test_x, data.test_y)
        out[name] = (idx, x[idx], y[idx])
    return out


def accepted_mutants(ctx: RunContext, x: Tensor, y: Tensor) -> tuple[list, pd.DataFrame, float, int, float, float]:
    """The accepted mutants (cached by seed: a mutant is regenerated from it), the acceptance log, the
    original model's accuracy on (x, y), the candidates tried, the accuracy they had to exceed, and the
    seconds acceptance took when it was computed (nan for a chunk stored before they were kept).
    Reads ``ctx.cfg.experiment.mutants``."""
    m, model = ctx.cfg.experiment.mutants, ctx.model
    params = dict(operator=str(m.operator), gamma=float(m.gamma), n_mutants=int(m.n_mutants),
                  max_attempts=int(m.max_attempts), accept_ratio=float(m.accept_ratio), rule=str(m.accept_rule),
                  ns_min_accuracy=float(m.ns_min_accuracy), seed=int(m.seed))
    def compute(xy: tuple[Tensor, Tensor], progress: Callable[[int], None]) -> Computed:
        t0 = time.perf_counter()
        acc = accept_mutants(model, xy[0].to(ctx.device), xy[1].to(ctx.device), budget_bytes=ctx.memory_budget,
                             progress=progress, **params)
        return Computed({"seed": torch.tensor([r["seed"] for r in acc.log], dtype=torch.long),
                         "n_channels": torch.tensor([r["n_channels"] for r in acc.log], dtype=torch.long),
                         "accuracy": torch.tensor([r["accuracy"] for r in acc.log], dtype=torch.float64),
                         "accepted": torch.tensor([bool(r["accepted"]) for r in acc.log], dtype=torch.bool),
                         "original_accuracy": torch.tensor(acc.original_accuracy, dtype=torch.float64),
                         "threshold": torch.tensor(acc.threshold, dtype=torch.float64),
                         "seconds": torch.tensor(time.perf_counter() - t0, dtype=torch.float64)},
                        forwards=(len(acc.log) + 1) * len(xy[1]))

    got = ctx.cached_chunks("lcr_accept", [(x, y)], compute, fmt=CHUNK_FORMAT,
                            params=dict(accept_on=str(m.accept_on), **params), rows=lambda _: params["max_attempts"],
                            inputs=lambda xy: xy, desc="mutant candidates", unit="mutant").parts[0]
    logdf = pd.DataFrame({"operator": params["operator"], "gamma": params["gamma"], "seed": got["seed"].numpy(),
                          "channels_mutated": got["n_channels"].numpy(), "accuracy": got["accuracy"].numpy(),
                          "threshold": float(got["threshold"]), "accepted": got["accepted"].numpy()})
    seeds = logdf.loc[logdf["accepted"], "seed"].tolist()[: params["n_mutants"]]
    mutants = [draw_mutant(model, params["operator"], params["gamma"], int(s)) for s in seeds]
    seconds = float(got["seconds"]) if "seconds" in got else float("nan")
    return mutants, logdf, float(got["original_accuracy"]), len(logdf), float(got["threshold"]), seconds


def _chunked(ctx: RunContext, kind: str, x: Tensor, extra: dict[str, Any],
             compute: Callable[[Tensor], Tensor], forwards: int, backwards: int = 0) -> Tensor:
    """``compute(x_chunk) -> Tensor`` over chunks of x, each cached under a content hash; the
    results concatenated along the input axis (the last axis for mutant predictions). ``forwards``
    and ``backwards`` are the work per image (for the work counters)."""
    chunks = torch.split(torch.arange(x.shape[0]), int(ctx.cfg.experiment.chunk_size))
    run = ctx.cached_chunks(kind, chunks, lambda xc, _: Computed({"value": compute(xc)}, forwards * len(xc),
                                                                 backwards * len(xc)),
                            fmt=CHUNK_FORMAT, params=extra, rows=len, load=lambda idx: x[idx].to(ctx.device),
                            required=("value",), unit="image")
    return run.cat("value", dim=-1 if kind == "lcr_preds" else 0)


def run(ctx: RunContext) -> ExperimentOutput:
    e, data, model = ctx.cfg.experiment, ctx.data, ctx.model
    layers = layer_names(model, e.conductance.layers, "experiment.conductance.layers", with_input=False)
    splits = _splits(ctx)
    stats: dict[str, Any] = {}

    start = time.perf_counter()
    _, xa, ya = splits["accept"]
    mutants, mutant_log, acc_orig, attempts, threshold, _ = accepted_mutants(ctx, xa, ya)
    where = "test" if e.mutants.accept_on == "test" else "held-out training"
    stats.update(mutant_attempts=attempts, mutants_accepted=len(mutants), accept_on=str(e.mutants.accept_on),
                 accept_images=len(ya), accept_accuracy=round(acc_orig, 6), accept_threshold=round(threshold, 6),
                 accept_time_s=round(time.perf_counter() - start, 3))
    log.info("lcr: %d of %d candidate mutants accepted (%s, gamma %s; accuracy > %.4f on %d %s images, the "
             "model's %.4f)", len(mutants), attempts, e.mutants.operator, e.mutants.gamma, threshold, len(ya), where,
             acc_orig)
    if len(mutants) < int(e.mutants.n_mutants):
        bar = (f"{e.mutants.ns_min_accuracy} (absolute, accept_rule=reference for NS)"
               if e.mutants.accept_rule == "reference" and e.mutants.operator == "NS"
               else f"{e.mutants.accept_ratio} x {acc_orig:.4f}")
        raise BoundaryError(f"only {len(mutants)} of experiment.mutants.n_mutants={e.mutants.n_mutants} mutants passed "
                            f"acceptance in {attempts} attempts (accuracy on the {len(ya)} {where} images > {bar}); "
                            f"lower experiment.mutants.gamma, accept_ratio or ns_min_accuracy, or raise max_attempts")

    seeds = [mu.seed for mu in mutants]
    if e.conductance.baseline == "mean":
        baseline = data.train_x.mean(dim=0).to(ctx.device)
    else:
        baseline = torch.zeros_like(data.train_x[0]).to(ctx.device)
    cond_params = dict(layers=layers, baseline=str(e.conductance.baseline), n_steps=int(e.conductance.n_steps))

    rows, preds_by_split, feats = [], {}, {}
    start = time.perf_counter()
    for name in ("train", "val", "test"):
        idx, x, y = splits[name]
        pred = predict(model, x, device=ctx.device).argmax(1)
        mp = _chunked(ctx, "lcr_preds", x, dict(operator=str(e.mutants.operator), gamma=float(e.mutants.gamma),
                                                 seeds=seeds),
                      lambda xc: predict_mutants(model, mutants, xc, budget_bytes=ctx.memory_budget).to(torch.int16),
                      forwards=len(mutants))
        # integrated gradients: n_steps + 1 path points forward, the n_steps points after the baseline backward
        cond = _chunked(ctx, "lcr_cond", x, cond_params, lambda xc: torch.cat(
            list(layer_conductance(model, xc, layers, baseline=baseline, n_steps=cond_params["n_steps"]).values()),
            dim=1), forwards=cond_params["n_steps"] + 1, backwards=cond_params["n_steps"])
        preds_by_split[name] = (mp.long(), pred)
        feats[name] = cond.numpy()
        n_wrong = int((pred != y).sum())
        log.info("lcr: %s split: %d images, %d wrong predictions", name, len(y), n_wrong)
        if n_wrong < int(e.min_wrong) or len(y) - n_wrong < int(e.min_wrong):
            raise BoundaryError(f"the {name} split has {n_wrong} wrong and {len(y) - n_wrong} right predictions; the "
                                f"detectors need at least experiment.min_wrong={e.min_wrong} of each (use more images, "
                                f"e.g. experiment.n_train=all, or a model that makes more errors)")
        rows.append(pd.DataFrame({
            **ctx.identity, "split": name, "index": idx.numpy(), "true_label": y.numpy(), "prediction": pred.numpy(),
            "correct": (pred == y).numpy(), "lcr": label_change_rate(mp.long(), pred).numpy(),
            "n_mutants": len(mutants)}))
    stats["signals_time_s"] = round(time.perf_counter() - start, 3)
    table = pd.concat(rows, ignore_index=True)

    d = e.detectors
    detectors, scores = cross_fitted_detectors(
        table["split"].to_numpy(), (~table["correct"].to_numpy().astype(bool)).astype(int), table["lcr"].to_numpy(),
        np.concatenate([feats[s] for s in ("train", "val", "test")]), cond=mlp_params(d.cond_mlp),
        combined=mlp_params(d.combined_mlp), extra=[str(k) for k in d.extra or []], folds=int(d.folds),
        seed=int(ctx.cfg.seed))
    table["p_cond"], table["p_both"] = scores["cond"], scores["both"]
    roc_scores = {m: table[col].to_numpy() for m, col in (("lcr", "lcr"), ("cond", "p_cond"), ("both", "p_both"))}
    counts = [k for k in int_list(e.auroc_counts, "experiment.auroc_counts") if k <= len(mutants)]
    by_count = []
    for name in ("val", "test"):
        mp, pred = preds_by_split[name]
        wrong = table.loc[table["split"] == name, "correct"].to_numpy() == 0
        for k, lcr_k in lcr_by_count(mp, pred, counts).items():
            by_count.append(dict(split=name, n_mutants=k, auroc=float(roc_auc_score(wrong, lcr_k.numpy()))))
    by_count = pd.DataFrame(by_count)
    metrics = pd.DataFrame([d.as_row() for d in detectors])
    for _, r in metrics[metrics["split"] == "test"].iterrows():
        log.info("%-14s test AUROC %.3f, balanced accuracy %.3f (threshold %.4g from val)", r["method"], r["auroc"],
                 r["balanced_accuracy"], r["threshold"])
    stats.update(layers=layers, n_features=int(feats["train"].shape[1]),
                 auroc_test={r["method"]: round(float(r["auroc"]), 4) for _, r in metrics[metrics["split"] == "test"].iterrows()},
                 wrong_predictions={s: int((~table.loc[table["split"] == s, "correct"]).sum()) for s in ("train", "val", "test")})
    title = ctx.title(f"{e.mutants.operator} γ={e.mutants.gamma}, {len(mutants)} mutants")
    val = table["split"] == "val"
    return ExperimentOutput(
        tables={"lcr": table, "mutants": mutant_log, "detectors": metrics, "auroc_mutants": by_count},
        figures={"roc": roc_figure({m: s[val.to_numpy()] for m, s in roc_scores.items()},
                                   (~table.loc[val, "correct"]).to_numpy().astype(int),
                                   {r["method"]: r["threshold"] for _, r in metrics[metrics["split"] == "val"].iterrows()},
                                   title),
                 "auroc_mutants": auroc_by_count_figure(by_count, title)},
        stats=stats)


def mlp_params(d: DictConfig) -> MLPParams:
    """An MLP detector's settings from its ``experiment.detectors`` section."""
    return MLPParams(hidden=tuple(int(h) for h in d.hidden), dropout=float(d.dropout),
                     dropout_after=str(d.dropout_after), epochs=int(d.epochs), batch_size=int(d.batch_size),
                     lr=float(d.lr))


EXPERIMENT = Experiment(name="lcr", validate=validate, run=run, tables=("lcr", "mutants", "detectors", "auroc_mutants"),
                        figures=("roc", "auroc_mutants"), compare=lcr_comparison)
