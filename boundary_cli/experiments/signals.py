"""experiment=signals: per-sample boundary signals ranked as detectors of wrong predictions, beside the
simple confidence baselines, with what each costs (issue 17, task a; first part).

On seeded test samples of one model: the maximum softmax probability, the logit margin and the
entropy (one forward); DeepFool's margin in the full space and in the lowest and highest diagonal DCT
block (one batched DeepFool pass serves the three); the tight (refined) full-space margin started at
DeepFool's point; the noise-robustness ratio (the share of Gaussian copies that keep the prediction);
the nearest flip distance and the number of multiple hits from one set of fixed-step walks toward
every other class (decision-flip family: a hit is a walk toward t that first enters another class);
the weight-space distance (DeepFool in weight space against the prediction: experiment=
weights_boundary's computation and cache). Each is rated for telling wrong from right predictions
(AUROC, AUPR of the errors, FPR at 95% TPR, bootstrap intervals) by detectors/signal_ranking.py, and a cross-fitted logistic regression over all
of them is the "everything" row. Work is chunked and cached; a chunk keeps what it cost to compute,
so the cost columns are the same when a later run reuses it (the weight-space distance, cached by
weights_boundary, counts only the points computed in this run).

Not built yet (the issue's other signals and task b): label change rate and conductance, the
meta-network's score, and the mislabeled-point task with the training loss.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from boundary_cli.detectors.confidence import confidence_scores
from boundary_cli.detectors.noise_robustness import noise_draws, noise_robustness
from boundary_cli.detectors.signal_ranking import (
    ERROR_METRICS,
    cross_fitted_combination,
    oriented,
    rank_signals,
    spearman_matrix,
)
from boundary_cli.errors import BoundaryError
from boundary_cli.experiments.checks import positive_int
from boundary_cli.experiments.context import Computed, ExperimentOutput, RunContext
from boundary_cli.experiments.margin import (
    deepfool_params,
    refine_params,
    select_samples,
)
from boundary_cli.experiments.registry import Experiment
from boundary_cli.experiments.walking import validate_walk, walk_params
from boundary_cli.experiments.weights_boundary import chosen_parameters, weight_distances, weight_params
from boundary_cli.geometry.dct import DCTBlock
from boundary_cli.geometry.deepfool import batch_rows_for_budget, deepfool_subspaces
from boundary_cli.geometry.refine import refine
from boundary_cli.geometry.walks import OWN, nearest_flip, walk_to_classes
from boundary_cli.geometry.walks import batch_rows_for_budget as walk_batch_rows
from boundary_cli.reporting.comparison import signals_comparison
from boundary_cli.reporting.roc import dress_error_roc, roc_curve_line

log = logging.getLogger(__name__)

CHUNK_FORMAT = 1
# signal -> (direction: "high" = a high value means a likely error, the work it needs)
SIGNALS = {
    "msp": ("low", "logits"), "logit_margin": ("low", "logits"), "entropy": ("high", "logits"),
    "deepfool_full": ("low", "deepfool"), "deepfool_low": ("low", "deepfool"), "deepfool_high": ("low", "deepfool"),
    "tight_margin": ("low", "deepfool+refine"), "noise_ratio": ("low", "noise"),
    "flip_distance": ("low", "walks"), "multiple_hits": ("high", "walks"),
    "weight_distance": ("low", "weights"),
}
COMBINED = "everything"


def validate(cfg: DictConfig) -> None:
    """Check the experiment section (signal names, sizes, DeepFool and refinement settings)."""
    e = cfg.experiment
    bad = [s for s in e.signals if s not in SIGNALS]
    if bad:
        raise BoundaryError(f"unknown signal(s) {', '.join(map(repr, bad))} in experiment.signals; valid: "
                            f"{', '.join(SIGNALS)}")
    if not len(e.signals):
        raise BoundaryError("experiment.signals is empty; name at least one of: " + ", ".join(SIGNALS))
    if e.n_samples != "all":
        positive_int(e.n_samples, "experiment.n_samples (or 'all')")
    positive_int(e.chunk_size, "experiment.chunk_size")
    positive_int(e.band_block, "experiment.band_block")
    positive_int(e.noise.count, "experiment.noise.count")
    positive_int(e.combination_folds, "experiment.combination_folds")
    if isinstance(e.bootstrap, bool) or not isinstance(e.bootstrap, int) or e.bootstrap < 0:
        raise BoundaryError(f"experiment.bootstrap must be an integer >= 0 (resamples), got {e.bootstrap!r}")
    if "tight_margin" in e.signals and str(e.refine) == "none":
        raise BoundaryError("signal tight_margin needs a refinement: set experiment.refine=descent (or bisect)")
    refine_params(e)
    validate_walk(e.walk, modes=("targeted",))
    if e.weights.against != "prediction":
        raise BoundaryError("experiment.weights.against must be prediction here: on the test set the label is the "
                            "answer being detected (against the label belongs to the mislabeled-point task)")
    weight_params(e)


def _bands(n: int, block: int, channels: int) -> list[DCTBlock]:
    if block > n:
        raise BoundaryError(f"experiment.band_block={block} is larger than the {n}x{n} images")
    return [DCTBlock(0, block, channels * block * block), DCTBlock(n - block, block, channels * block * block)]


def _measure(ctx: RunContext, chunks: list[Tensor], wanted: set[str]) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Every wanted signal for the samples of ``chunks``, chunk by chunk (cached), and the cost of
    each kind of work (forwards, backwards, seconds, samples) as computed, reused chunks included."""
    e, data = ctx.cfg.experiment, ctx.data
    c, (h, w) = data.channels, data.image_size
    if h != w:
        raise BoundaryError(f"experiment=signals needs square images for its DCT bands; {data.name} is {h}x{w}")
    params = deepfool_params(e, data.value_range)
    rparams = refine_params(e)
    bands = _bands(w, int(e.band_block), c)
    model = ctx.model
    need_df = bool(wanted & {"deepfool_full", "deepfool_low", "deepfool_high", "tight_margin"})
    need_refine = "tight_margin" in wanted
    need_noise = "noise_ratio" in wanted
    need_walks = bool(wanted & {"flip_distance", "multiple_hits"})
    wparams = walk_params(e.walk, data.value_range)
    kc = min(params.candidates, data.num_classes)
    example = data.test_x[:1].to(ctx.device)
    walk_rows = walk_batch_rows(model, example, ctx.memory_budget) if need_walks else 0
    batch_rows = batch_rows_for_budget(model, example, kc, ctx.memory_budget) if need_df else 0
    noise = noise_draws(int(e.noise.count), (c, h, w), int(e.noise.seed)) if need_noise else None
    param_stack = {k: v.detach().unsqueeze(0) for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def compute(x: Tensor, progress: Callable[[int], None]) -> Computed:
        out: dict[str, Tensor] = {}
        cost: dict[str, list[float]] = {}
        t0 = time.perf_counter()
        with torch.no_grad():
            logits = model(x)
        out.update({k: v.cpu() for k, v in confidence_scores(logits).items()})
        out["prediction"] = logits.argmax(1).cpu()
        cost["logits"] = [len(x), 0, time.perf_counter() - t0]
        if need_df:
            t0 = time.perf_counter()
            res = deepfool_subspaces(model, x, bands, params, include_full=True, batch_rows=batch_rows,
                                     keep_perturbation=need_refine)
            out.update(deepfool_full=res.margin[0].cpu(), deepfool_low=res.margin[1].cpu(),
                       deepfool_high=res.margin[2].cpu())
            cost["deepfool"] = [res.n_forward, res.n_backward, time.perf_counter() - t0]
            if need_refine:
                t0 = time.perf_counter()
                r = refine(model, x, res.perturbation[0], res.prediction[0], rparams, clip=params.clip,
                           batch_rows=batch_rows, tf32=params.tf32)
                # a row DeepFool could not move keeps DeepFool's (inf) margin
                out["tight_margin"] = torch.where(r.refined.cpu(), r.margin.cpu(), res.margin[0].cpu())
                cost["refine"] = [r.n_forward, r.n_backward, time.perf_counter() - t0]
        if need_noise:
            t0 = time.perf_counter()
            per_call = max(1, min(len(noise), 4096 // max(1, len(x))))
            rob = noise_robustness(model, param_stack, x.unsqueeze(0), noise, scale=float(e.noise.scale),
                                   buffers=buffers, draws_per_call=per_call)
            out["noise_ratio"] = rob.ratio[0].cpu()
            cost["noise"] = [len(x) * (len(noise) + 1), 0, time.perf_counter() - t0]
        if need_walks:
            t0 = time.perf_counter()
            res = walk_to_classes(model, x, torch.arange(data.num_classes, device=x.device), wparams,
                                  batch_rows=walk_rows, keep_points=False)
            _, dist = nearest_flip(res.status, res.l2)
            entered = res.first_exit
            hits = (entered >= 0) & (entered != res.target) & (res.status != OWN)
            out.update(flip_distance=dist.cpu(), multiple_hits=hits.sum(1).cpu().to(torch.float32))
            cost["walks"] = [res.n_forward, res.n_backward, time.perf_counter() - t0]
        for kind, (f, b, s) in cost.items():
            out[f"cost_{kind}"] = torch.tensor([f, b, s, len(x)], dtype=torch.float64)
        progress(len(x))
        fwd = int(sum(v[0] for v in cost.values()))
        bwd = int(sum(v[1] for v in cost.values()))
        return Computed(out, fwd, bwd)

    key = dict(signals=sorted(wanted - {"weight_distance"}), bands=[[b.offset, b.block] for b in bands], **params.key(),
               refine=rparams.key() if need_refine else None,
               noise=OmegaConf.to_container(e.noise) if need_noise else None,
               walk=wparams.key() if need_walks else None)
    run = ctx.cached_chunks("signals", chunks, compute, fmt=CHUNK_FORMAT, params=key, rows=len,
                            load=lambda idx: data.test_x[idx].to(ctx.device), unit="sample", desc="signals")
    values = {k: run.cat(k).numpy() for k in run.parts[0] if not k.startswith("cost_")} if run.parts else {}
    costs: dict[str, dict] = {}
    for part in run.parts:
        for k, v in part.items():
            if k.startswith("cost_"):
                acc = costs.setdefault(k[len("cost_"):], dict(forwards=0.0, backwards=0.0, seconds=0.0, samples=0.0))
                for name, x in zip(("forwards", "backwards", "seconds", "samples"), v.tolist()):
                    acc[name] += x
    if "weight_distance" in wanted:
        names = chosen_parameters(model, e.weights.params)
        idx = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.long)
        wrun, wvalues = weight_distances(ctx, data.test_x, data.test_y, idx, int(e.chunk_size), weight_params(e),
                                         names, "prediction", "auto", desc="weight-space distance")
        values["weight_distance"] = wvalues["distance"]
        # reused chunks cost nothing in this run: the per-sample cost is over the points computed now
        costs["weights"] = dict(forwards=float(wrun.forwards), backwards=float(wrun.backwards),
                                seconds=float(wrun.seconds), samples=float(wrun.computed_rows))
    return values, costs


def _signal_cost(work: str, costs: dict[str, dict]) -> dict[str, float]:
    """Per-sample forwards, backwards and seconds of the work a signal needs (the refined margin needs
    DeepFool and the refinement), and which work that is."""
    kinds = work.split("+")

    def per_sample(name: str) -> float:
        return sum(costs[k][name] / costs[k]["samples"] if costs[k]["samples"] else float("nan") for k in kinds)

    return dict(work=work, forwards_per_sample=per_sample("forwards"), backwards_per_sample=per_sample("backwards"),
                seconds_per_sample=per_sample("seconds"))


def run(ctx: RunContext) -> ExperimentOutput:
    e, data = ctx.cfg.experiment, ctx.data
    wanted = [str(s) for s in e.signals]
    chosen = select_samples(len(data.test_y), e.n_samples, int(e.sample_seed))
    chunks = list(chosen.split(int(e.chunk_size)))
    values, costs = _measure(ctx, chunks, set(wanted))
    labels = data.test_y[chosen].numpy()
    wrong = values["prediction"] != labels
    n_wrong = int(wrong.sum())
    if n_wrong == 0 or n_wrong == len(wrong):
        raise BoundaryError(f"the model is {'right' if n_wrong == 0 else 'wrong'} on all {len(wrong)} samples: "
                            f"there is nothing to detect; raise experiment.n_samples")
    signals = {s: values[s].astype(float) for s in wanted}
    directions = {s: SIGNALS[s][0] for s in wanted}
    per_sample = pd.DataFrame({**ctx.identity, "sample_index": chosen.numpy(), "label": labels,
                               "prediction": values["prediction"], "wrong": wrong, **signals})

    folds = int(e.combination_folds)
    combined = None
    if len(wanted) > 1 and min(n_wrong, len(wrong) - n_wrong) >= folds:
        combined, fold = cross_fitted_combination(np.stack([signals[s] for s in wanted], 1), wrong, folds=folds,
                                                  seed=int(e.sample_seed))
        per_sample[COMBINED] = combined
        per_sample["fold"] = fold
    elif len(wanted) > 1:
        log.warning("signals: %d wrong predictions are too few for a %d-fold combination; no '%s' row",
                    n_wrong, folds, COMBINED)
    rated = dict(signals)
    rated_dirs = dict(directions)
    if combined is not None:
        rated[COMBINED], rated_dirs[COMBINED] = combined, "high"
    rows = rank_signals(rated, rated_dirs, wrong, ERROR_METRICS, n_boot=int(e.bootstrap), seed=int(e.sample_seed))
    cost_of = {s: _signal_cost(SIGNALS[s][1], costs) for s in wanted}
    if combined is not None:
        works = sorted({k for s in wanted for k in SIGNALS[s][1].split("+")})
        cost_of[COMBINED] = _signal_cost("+".join(works), costs)
    ranking = pd.DataFrame([{**ctx.identity, "task": "errors", "signal": r.signal, "direction": rated_dirs[r.signal],
                             "metric": r.metric, "value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high,
                             **cost_of[r.signal]} for r in rows])
    cost_table = pd.DataFrame([{**ctx.identity, "work": k, **{m: v[m] for m in ("forwards", "backwards", "seconds")},
                                "samples": int(v["samples"]),
                                "used_by": " ".join(s for s in wanted if k in SIGNALS[s][1].split("+"))}
                               for k, v in costs.items()])
    corr = spearman_matrix(signals)
    spearman = pd.DataFrame(corr, index=wanted, columns=wanted).rename_axis("signal").reset_index()
    best = ranking[(ranking.metric == "auroc") & (ranking.signal != COMBINED)].sort_values("value").iloc[-1]
    log.info("signals: %d samples, %d wrong; best single signal %s (AUROC %.3f)%s", len(wrong), n_wrong,
             best.signal, best.value,
             f", everything {ranking[(ranking.metric == 'auroc') & (ranking.signal == COMBINED)].value.iloc[0]:.3f}"
             if combined is not None else "")
    figures = dict(roc_errors=_roc_figure(rated, rated_dirs, wrong, ctx.title(f"{n_wrong} wrong of {len(wrong)}")),
                   spearman=_spearman_figure(corr, wanted, ctx.title("Spearman correlation between the signals")))
    work_totals = {k: {m: round(v[m], 3) for m in ("forwards", "backwards", "seconds")} for k, v in costs.items()}
    return ExperimentOutput(tables=dict(signals_errors=per_sample, ranking=ranking, costs=cost_table,
                                        spearman=spearman),
                            figures=figures,
                            stats=dict(n_samples=int(len(wrong)), n_wrong=n_wrong, signal_costs=work_totals,
                                       n_forward=int(sum(v["forwards"] for v in costs.values())),
                                       n_backward=int(sum(v["backwards"] for v in costs.values()))))


def _roc_figure(signals: dict[str, np.ndarray], directions: dict[str, str], wrong: np.ndarray, title: str) -> Figure:
    """One ROC curve per signal (the combination thick and black), for the wrong predictions."""
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.subplots()
    for i, (name, values) in enumerate(signals.items()):
        style = dict(color="black", lw=2.2) if name == COMBINED else dict(color=f"C{i}", lw=1.3)
        roc_curve_line(ax, wrong, np.nan_to_num(oriented(values, directions[name]), posinf=1e30, neginf=-1e30),
                       name, **style)
    dress_error_roc(ax, f"Detecting wrong predictions with each signal\n{title}", legend_fontsize=7)
    return fig


def _spearman_figure(corr: np.ndarray, names: list[str], title: str) -> Figure:
    """Heatmap of the Spearman correlations (raw signal values; −1 blue to +1 red), values written in."""
    fig = Figure(figsize=(1.0 + 0.62 * len(names), 0.8 + 0.55 * len(names)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(corr, vmin=-1, vmax=1, cmap="coolwarm")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{corr[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.8, label="Spearman ρ")
    ax.set_title(title, fontsize=9)
    return fig


EXPERIMENT = Experiment(name="signals", validate=validate, run=run,
                        tables=("ranking", "signals_errors", "costs", "spearman"),
                        figures=("roc_errors", "spearman"), compare=signals_comparison, compare_name="auroc")
