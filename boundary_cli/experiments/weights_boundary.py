"""experiment=weights_boundary: influenciae's boundary-based self-influence (METHODS.md §5.2).

For seeded training (or test) points, the smallest L2 change of the model's weights that flips its
prediction, by DeepFool in weight space; influence = −distance. With
``experiment.weights.against=label`` the distance is measured against the given label, signed:
positive, the change until the label stops being the argmax; negative, the change until it becomes
the argmax where the model disagrees with it. On ``params=last_layer`` (a final linear layer) the
rows that move away from their class use the closed form; the others run the general path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import Tensor, nn

from boundary_cli.errors import BoundaryError
from boundary_cli.experiments.checks import positive_int
from boundary_cli.experiments.context import Computed, ExperimentOutput, RunContext
from boundary_cli.experiments.margin import select_samples
from boundary_cli.experiments.registry import Experiment
from boundary_cli.geometry.weights_deepfool import (
    STOPS,
    WeightDeepFoolParams,
    last_layer_distance,
    parameter_names,
    weight_deepfool,
    weight_rows_for_budget,
)
from boundary_cli.reporting.comparison import weights_boundary_comparison

log = logging.getLogger(__name__)

CHUNK_FORMAT = 1
N_GRID = 8  # images per row of the most / least influential grid


def validate(cfg: DictConfig) -> None:
    e = cfg.experiment
    if e.split not in ("train", "test"):
        raise BoundaryError(f"experiment.split must be train or test, got {e.split!r}")
    if e.n_samples != "all":
        positive_int(e.n_samples, "experiment.n_samples (or 'all')")
    positive_int(e.chunk_size, "experiment.chunk_size")
    if e.batch_rows != "auto":
        positive_int(e.batch_rows, "experiment.batch_rows (or 'auto')")
    w = e.weights
    if w.against not in ("prediction", "label"):
        raise BoundaryError(f"experiment.weights.against must be prediction or label, got {w.against!r}")
    weight_params(e)


def weight_params(e: DictConfig) -> WeightDeepFoolParams:
    w = e.weights
    try:
        return WeightDeepFoolParams(max_iter=int(w.max_iter), eps=float(w.eps), overshoot=float(w.overshoot),
                                    candidates=None if w.candidates is None else int(w.candidates),
                                    norm=float(w.norm))
    except (ValueError, TypeError) as err:
        raise BoundaryError(f"experiment.weights: {err}") from None


def chosen_parameters(model: nn.Module, spec) -> list[str]:
    try:
        return parameter_names(model, spec if isinstance(spec, str) else list(spec))
    except ValueError as err:
        raise BoundaryError(f"experiment.weights.params: {err}") from None


def _last_linear(model: nn.Module, names: list[str]) -> tuple[str, nn.Linear] | None:
    """The final nn.Linear when ``names`` are exactly its parameters (the closed form applies)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None
    name, mod = linears[-1]
    own = {f"{name}.{p}" for p, _ in mod.named_parameters(recurse=False)}
    return (name, mod) if set(names) == own else None


def _features(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    seen: list[Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0].flatten(1)


WEIGHT_KEYS = ("distance", "iterations", "stopped_by", "adv_label", "prediction", "closed_form")


def weight_distances(ctx: RunContext, x_all: Tensor, y_all: Tensor, idx: Tensor, chunk_size: int,
                     params: WeightDeepFoolParams, names: list[str], against: str, batch_rows: int | str,
                     desc: str = "weight-space DeepFool"):
    """Weight-space distances of the points ``idx`` of (x_all, y_all) under ``ctx.model``, chunked and
    cached: signed against ``against`` (prediction or label), the closed form on a last linear layer
    for rows moving away; ``batch_rows`` ``auto``: as many rows as ``ctx.memory_budget`` holds (see
    :func:`~boundary_cli.geometry.weights_deepfool.weight_rows_for_budget`). Returns (ChunkRun,
    {WEIGHT_KEYS: (len(idx),) arrays} or None when empty)."""
    head = _last_linear(ctx.model, names)
    if batch_rows == "auto":
        n_params = sum(dict(ctx.model.named_parameters())[n].numel() for n in names)
        kc = params.candidates or ctx.data.num_classes
        batch_rows = weight_rows_for_budget(ctx.model, x_all[:1].to(ctx.device), n_params, kc, ctx.memory_budget)
        log.info("%s: %d rows per batch (from a memory budget of %.1f GB)", desc, batch_rows, ctx.memory_budget / 2**30)
    batch_rows = int(batch_rows)

    def load(chunk: Tensor) -> tuple[Tensor, Tensor]:
        return x_all[chunk].to(ctx.device), y_all[chunk].to(ctx.device)

    def compute(loaded: tuple[Tensor, Tensor], progress: Callable[[int], None]) -> Computed:
        x, y = loaded
        t0 = time.perf_counter()
        with torch.no_grad():
            pred = ctx.model(x).argmax(1)
        ref = pred if against == "prediction" else y
        toward = ref != pred
        dist = torch.zeros(len(x), device=x.device)
        iters = torch.zeros(len(x), dtype=torch.long, device=x.device)
        stop = torch.zeros(len(x), dtype=torch.long, device=x.device)
        adv = torch.zeros(len(x), dtype=torch.long, device=x.device)
        closed = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        fwd = bwd = 0
        general = torch.ones(len(x), dtype=torch.bool, device=x.device)
        if head is not None:
            away = ~toward
            h = _features(ctx.model, head[1], x[away])
            dist[away] = last_layer_distance(h, head[1].weight.detach(), None if head[1].bias is None
                                             else head[1].bias.detach(), ref[away]) * (1 + params.overshoot)
            stop[away] = STOPS.index("eps_gap")
            closed, general = away.clone(), toward
            fwd += int(away.sum())
        rows = general.nonzero().squeeze(1)
        if rows.numel():
            res = weight_deepfool(ctx.model, x[rows], params, names=names, reference=ref[rows], toward=toward[rows],
                                  batch_rows=batch_rows)
            dist[rows], iters[rows], stop[rows], adv[rows] = res.distance, res.iterations, res.stopped_by, \
                res.adv_label
            fwd, bwd = fwd + res.n_forward, bwd + res.n_backward
        if closed.any():
            adv[closed] = -1  # not evaluated: the closed form's point ties two classes
        progress(len(x))
        signed = torch.where(toward, -dist, dist)
        # what the chunk cost, kept with it so a later run that reuses it can still say (forwards, backwards, s)
        cost = torch.tensor([fwd + len(x), bwd, time.perf_counter() - t0], dtype=torch.float64)
        return Computed(dict(distance=signed, iterations=iters, stopped_by=stop, adv_label=adv, prediction=pred,
                             closed_form=closed, cost=cost), fwd, bwd)

    key = dict(names=names, against=against, max_iter=params.max_iter, eps=params.eps, overshoot=params.overshoot,
               candidates=params.candidates)
    run_ = ctx.cached_chunks("weights_boundary", list(idx.split(chunk_size)), compute, fmt=CHUNK_FORMAT, params=key,
                             rows=len, load=load, inputs=lambda t: t, required=WEIGHT_KEYS, desc=desc, unit="point")
    return run_, ({k: run_.cat(k).cpu().numpy() for k in WEIGHT_KEYS} if run_.parts else None)


def run(ctx: RunContext) -> ExperimentOutput:
    e = ctx.cfg.experiment
    data = ctx.data
    xs, ys = (data.train_x, data.train_y) if e.split == "train" else (data.test_x, data.test_y)
    idx = select_samples(len(ys), e.n_samples, int(e.sample_seed))
    params = weight_params(e)
    names = chosen_parameters(ctx.model, e.weights.params)
    head = _last_linear(ctx.model, names)
    against = str(e.weights.against)
    chunks = list(idx.split(int(e.chunk_size)))
    n_params = sum(dict(ctx.model.named_parameters())[n].numel() for n in names)
    log.info("weights_boundary: %d %s points, %d parameters in %d tensors%s, against the %s", len(idx), e.split,
             n_params, len(names), " (closed form for rows moving away)" if head else "", against)

    run_, cat = weight_distances(ctx, xs, ys, idx, int(e.chunk_size), params, names, against, e.batch_rows)
    n = len(idx)
    labels = ys[idx].numpy()
    table = pd.DataFrame({
        **ctx.identity,
        "split": e.split,
        "sample_index": idx.numpy(),
        "label": labels,
        "prediction": cat["prediction"] if n else np.zeros(0, dtype=np.int64),
        "against": against,
        "weight_distance_l2": cat["distance"] if n else np.zeros(0),
        "influence": -cat["distance"] if n else np.zeros(0),
        "n_iter": cat["iterations"] if n else np.zeros(0, dtype=np.int64),
        "stopped_by": [STOPS[c] for c in cat["stopped_by"]] if n else [],
        "method": np.where(cat["closed_form"], "closed_form", "deepfool") if n else [],
        "adv_label": cat["adv_label"] if n else np.zeros(0, dtype=np.int64),
    })
    table["correct"] = table["prediction"] == table["label"]
    figures = {}
    if n:
        figures["influence"] = influence_histogram(table, ctx.title())
        figures["extremes"] = extremes_grid(table, ctx.raw_test_x if e.split == "test" else data.train_x,
                                            data.classes, ctx.title())
    stops = table["stopped_by"].value_counts().to_dict()
    log.info("weights_boundary: median distance %.4g; stopped by %s", float(table["weight_distance_l2"].median())
             if n else float("nan"), stops)
    stats = dict(n_samples=n, split=str(e.split), n_parameters=int(n_params), parameter_tensors=names,
                 against=against, stopped_by={k: int(v) for k, v in stops.items()},
                 closed_form_rows=int(table["method"].eq("closed_form").sum()) if n else 0,
                 n_forward=run_.forwards, n_backward=run_.backwards, chunks_total=len(chunks),
                 chunks_reused=run_.reused, weights_time_s=round(run_.seconds, 3))
    return ExperimentOutput(tables={"weights_boundary": table}, figures=figures, stats=stats)


def influence_histogram(table: pd.DataFrame, title: str) -> Figure:
    """Histogram of the weight-space distance, correctly and wrongly predicted points apart."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    d = table["weight_distance_l2"].to_numpy(dtype=float)
    bins = np.histogram_bin_edges(d[np.isfinite(d)], bins=40) if np.isfinite(d).any() else 10
    for ok, color, name in ((True, "tab:blue", "prediction = label"), (False, "tab:red", "prediction ≠ label")):
        sel = table["correct"].to_numpy() == ok
        if sel.any():
            ax.hist(d[sel], bins=bins, color=color, alpha=0.6, label=f"{name} ({int(sel.sum())})")
    ax.set_xlabel("weight-space distance ‖Δθ‖₂ (signed when measured against the label)")
    ax.set_ylabel("points")
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False)
    return fig


def extremes_grid(table: pd.DataFrame, images: Tensor, classes: list[str], title: str) -> Figure:
    """The most influential points (smallest distance) above, the least influential below, each
    with its label, the model's prediction and its distance."""
    order = table.sort_values("influence", ascending=False)
    k = min(N_GRID, len(order))
    rows = [("most influential", order.head(k)), ("least influential", order.tail(k).iloc[::-1])]
    fig = Figure(figsize=(1.5 * k, 3.8))
    axes = fig.subplots(2, k, squeeze=False)
    for r, (name, part) in enumerate(rows):
        for c in range(k):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(part):
                continue
            row = part.iloc[c]
            img = images[int(row["sample_index"])]
            img = (img - img.min()) / (img.max() - img.min() + 1e-12)
            ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if img.shape[0] == 1 else None)
            ax.set_title(f"y={classes[int(row['label'])]} ŷ={classes[int(row['prediction'])]}\n"
                         f"{row['weight_distance_l2']:.3g}", fontsize=7)
        axes[r][0].text(-0.1, 0.5, name, transform=axes[r][0].transAxes, rotation=90, va="center", ha="right",
                        fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


EXPERIMENT = Experiment(name="weights_boundary", validate=validate, run=run, tables=("weights_boundary",),
                        figures=("influence", "extremes"), compare=weights_boundary_comparison,
                        compare_name="distances")
