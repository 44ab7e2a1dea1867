"""experiment=signals: every per-sample boundary signal of one model ranked as a detector, beside the
simple confidence baselines, with what each costs (issue 17).

Two tasks (``experiment.task``), each with its own per-sample table:

* ``errors`` (a): wrong predictions among seeded test samples; AUROC, AUPR of the errors, FPR at 95%
  TPR. No signal reads the label (it is the answer), so the loss and the weight-space distance
  against the label are refused here.
* ``mislabeled`` (b): mislabeled points among a seeded subset of the training split, after label
  noise was injected into the whole split and the model trained on it (experiment=mislabel's
  protocol and modifier); AUROC, precision at the number of noisy points, AUPR.

Signals (experiments/signal_measures.py says what work serves which): maximum softmax probability,
logit margin, entropy; DeepFool's margin in the full space and the lowest and highest DCT band; the
tight (refined) margin; the noise-robustness ratio; the nearest flip distance and multiple hits; the
label change rate under weight mutants (lcr) and the lcr reference's detectors on it and the
layer conductance (p_cond, p_both: learned, so cross-fitted over the samples' folds, see
detectors/detection.py); the weight-space distance against the prediction and, task b, against the
given label; the loss at the given label (task b); the score of a stored meta-network of the model's
family (experiment=meta_network), where one exists. Each is rated by detectors/signal_ranking.py,
and a cross-fitted logistic regression over every signal but p_both (p_cond as each fold may see
it) is the "everything" row.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import Tensor

from boundary_cli.data.images import ImageData
from boundary_cli.data.label_noise import label_noise, noisy_labels
from boundary_cli.data.modifier import DataModifier
from boundary_cli.detectors.detection import cross_fitted_lcr_scores
from boundary_cli.detectors.signal_ranking import (
    COMBINED,
    ERROR_METRICS,
    MISLABEL_METRICS,
    TASK_POSITIVES,
    cross_fitted_combination,
    oriented,
    rank_signals,
    spearman_matrix,
    stratified_folds,
)
from boundary_cli.errors import BoundaryError
from boundary_cli.experiments.checks import positive_int
from boundary_cli.experiments.context import ExperimentOutput, RunContext
from boundary_cli.experiments.lcr import mlp_params, validate_mutants
from boundary_cli.experiments.margin import refine_params, select_samples
from boundary_cli.experiments.registry import Experiment
from boundary_cli.experiments.signal_measures import find_meta_network, measure
from boundary_cli.experiments.walking import validate_walk
from boundary_cli.experiments.weights_boundary import weight_params
from boundary_cli.reporting.comparison import signals_comparison
from boundary_cli.reporting.roc import dress_error_roc, roc_curve_line
from boundary_cli.reporting.signal_tables import report_files

log = logging.getLogger(__name__)

# signal -> (direction: "high" = a high value means a likely positive, the work it needs)
SIGNALS = {
    "msp": ("low", "logits"), "logit_margin": ("low", "logits"), "entropy": ("high", "logits"),
    "deepfool_full": ("low", "deepfool"), "deepfool_low": ("low", "deepfool"), "deepfool_high": ("low", "deepfool"),
    "tight_margin": ("low", "deepfool+refine"), "noise_ratio": ("low", "noise"),
    "flip_distance": ("low", "walks"), "multiple_hits": ("high", "walks"),
    "lcr": ("high", "mutant_acceptance+mutants"), "p_cond": ("high", "conductance+lcr_detectors"),
    "p_both": ("high", "mutant_acceptance+mutants+conductance+lcr_detectors"),
    "weight_distance": ("low", "weights"), "weight_distance_label": ("low", "weights_label"),
    "loss": ("high", "logits"), "meta_network": ("low", "meta_network"),
}
TASKS = ("errors", "mislabeled")
LABEL_SIGNALS = ("weight_distance_label", "loss")  # read the given label: task b only
LEARNED = ("p_cond", "p_both")  # fitted on the samples' own folds: p_cond enters the combination per fold
TASK_METRICS = dict(errors=ERROR_METRICS, mislabeled=MISLABEL_METRICS)
POSITIVE = dict(errors="wrong", mislabeled="noisy")


def noise_seed(cfg: DictConfig) -> int:
    s = cfg.experiment.label_noise.seed
    return int(cfg.seed) if s is None else int(s)


def modifier(cfg: DictConfig) -> DataModifier | None:
    """Task b trains the model on the noisy labels (its own store key); task a on the data as it is."""
    if cfg.experiment.task != "mislabeled":
        return None
    return label_noise(float(cfg.experiment.label_noise.rate), noise_seed(cfg))


def check_data(cfg: DictConfig, data: ImageData) -> None:
    if cfg.experiment.task == "mislabeled" and len(data.train_y) == 0:
        raise BoundaryError(f"experiment.task=mislabeled scores training points under injected label noise, and "
                            f"dataset={data.name} has no training split here; use experiment.task=errors")


def requested(cfg: DictConfig) -> list[str]:
    """The signals the run asks for: ``all`` is every signal its task admits, in table order."""
    e = cfg.experiment
    if isinstance(e.signals, str):
        if e.signals != "all":
            raise BoundaryError(f"experiment.signals must be all or a list of signals, got {e.signals!r}")
        return [s for s in SIGNALS if e.task == "mislabeled" or s not in LABEL_SIGNALS]
    return [str(s) for s in e.signals]


def validate(cfg: DictConfig) -> None:
    """Check the experiment section (task, signal names, sizes, the settings of each signal's work)."""
    e = cfg.experiment
    if e.task not in TASKS:
        raise BoundaryError(f"unknown experiment.task {e.task!r}; valid: {', '.join(TASKS)}")
    wanted = requested(cfg)
    bad = [s for s in wanted if s not in SIGNALS]
    if bad:
        raise BoundaryError(f"unknown signal(s) {', '.join(map(repr, bad))} in experiment.signals; valid: "
                            f"{', '.join(SIGNALS)}")
    if not wanted:
        raise BoundaryError("experiment.signals is empty; name at least one of: " + ", ".join(SIGNALS))
    label = [s for s in wanted if s in LABEL_SIGNALS]
    if label and e.task == "errors":
        raise BoundaryError(f"signal(s) {', '.join(label)} read the given label, which on the test set is the answer "
                            f"being detected: they belong to experiment.task=mislabeled")
    if e.n_samples != "all":
        positive_int(e.n_samples, "experiment.n_samples (or 'all')")
    positive_int(e.chunk_size, "experiment.chunk_size")
    positive_int(e.band_block, "experiment.band_block")
    positive_int(e.gaussian.count, "experiment.gaussian.count")
    if positive_int(e.combination_folds, "experiment.combination_folds") < 2:
        raise BoundaryError("experiment.combination_folds must be at least 2")
    if isinstance(e.bootstrap, bool) or not isinstance(e.bootstrap, int) or e.bootstrap < 0:
        raise BoundaryError(f"experiment.bootstrap must be an integer >= 0 (resamples), got {e.bootstrap!r}")
    if "tight_margin" in wanted and str(e.refine) == "none":
        raise BoundaryError("signal tight_margin needs a refinement: set experiment.refine=descent (or bisect)")
    refine_params(e)
    validate_walk(e.walk, modes=("targeted",))
    weight_params(e)
    validate_mutants(e.mutants)
    if e.mutants.accept_on != "test":
        raise BoundaryError("experiment.mutants.accept_on must be test here (the lcr reference): the training "
                            "points may be the very ones scored (task b)")
    if e.conductance.baseline not in ("mean", "zero"):
        raise BoundaryError(f"unknown experiment.conductance.baseline {e.conductance.baseline!r}; valid: mean, zero")
    positive_int(e.conductance.n_steps, "experiment.conductance.n_steps")
    for name in ("cond_mlp", "combined_mlp"):
        mlp_params(e.detectors[name])
    if str(e.meta_network) not in ("auto", "none"):
        raise BoundaryError(f"experiment.meta_network must be auto (a stored meta-network of the model's family, "
                            f"where one exists) or none, got {e.meta_network!r}")
    if e.task == "mislabeled":
        rate = e.label_noise.rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
            raise BoundaryError(f"experiment.label_noise.rate must be a number in (0, 1), got {rate!r}")


def _signal_cost(work: str, costs: dict[str, dict]) -> dict[str, float]:
    """Per-sample forwards, backwards and seconds of the work a signal needs (the refined margin needs
    DeepFool and the refinement), and which work that is."""
    kinds = work.split("+")

    def per_sample(name: str) -> float:
        return sum(costs[k][name] / costs[k]["samples"] if costs[k]["samples"] else float("nan") for k in kinds)

    return dict(work=work, forwards_per_sample=per_sample("forwards"), backwards_per_sample=per_sample("backwards"),
                seconds_per_sample=per_sample("seconds"))


def _targets(ctx: RunContext) -> tuple[Tensor, Tensor, Tensor, np.ndarray | None, dict]:
    """(images (M, C, H, W), given labels (M,) of all of them, chosen indices (N,), task b's noisy
    flags (N,) (None in task a, where the positives come from the predictions), table columns and
    stats)."""
    e, data = ctx.cfg.experiment, ctx.data
    if e.task == "errors":
        chosen = select_samples(len(data.test_y), e.n_samples, int(e.sample_seed))
        return data.test_x, data.test_y, chosen, None, dict(columns=dict(label=data.test_y[chosen].numpy()))
    rate, seed = float(e.label_noise.rate), noise_seed(ctx.cfg)
    given, noisy_all = noisy_labels(data.train_y, data.num_classes, rate, seed)
    chosen = select_samples(len(given), e.n_samples, int(e.sample_seed))
    noisy = noisy_all[chosen].numpy()
    columns = dict(label_given=given[chosen].numpy(), label_true=data.train_y[chosen].numpy())
    return data.train_x, given, chosen, noisy, dict(columns=columns, rate=rate, seed=seed,
                                                    realised_rate=float(noisy_all.float().mean()))


def run(ctx: RunContext) -> ExperimentOutput:
    e = ctx.cfg.experiment
    task = str(e.task)
    wanted = requested(ctx.cfg)
    notes: dict[str, object] = {}
    meta = None
    if "meta_network" in wanted:
        meta, why = (None, "experiment.meta_network=none") if str(e.meta_network) == "none" else find_meta_network(ctx)
        if meta is None:
            if not isinstance(e.signals, str):
                raise BoundaryError(f"signal meta_network asked for, but {why}")
            log.warning("signals: no meta_network row: %s", why)
            notes["meta_network"] = why
            wanted.remove("meta_network")
    images, labels, chosen, noisy, info = _targets(ctx)
    measured = measure(ctx, images, labels, chosen, set(wanted), meta=meta)
    values, costs = measured.values, measured.costs
    notes.update(measured.notes)
    prediction = values["prediction"]
    if task == "errors":
        positive = prediction != info["columns"]["label"]
    else:
        positive = noisy.astype(bool)
    n_pos, n = int(positive.sum()), len(positive)
    what = TASK_POSITIVES[task]
    if n_pos == 0 or n_pos == n:
        raise BoundaryError(f"{'all' if n_pos == n else 'none'} of the {n} samples are {what}: there is nothing to "
                            f"detect; raise experiment.n_samples{' or experiment.label_noise.rate' if task != 'errors' else ''}")
    folds = int(e.combination_folds)
    fold = stratified_folds(positive, folds, int(e.sample_seed)) if min(n_pos, n - n_pos) >= folds else None
    learned = [s for s in wanted if s in LEARNED]
    if learned and fold is None:
        why = (f"{', '.join(learned)} are cross-fitted over {folds} folds, and {n_pos} {what} of {n} samples are too "
               f"few")
        if not isinstance(e.signals, str):
            raise BoundaryError(f"signals {why}; raise experiment.n_samples or leave them out")
        log.warning("signals: no %s rows: %s", " or ".join(learned), why)
        notes["learned_signals"] = why
        wanted = [s for s in wanted if s not in LEARNED]
        learned = []
    if learned:
        log.info("signals: fitting the lcr detectors (p_cond, p_both), cross-fitted over %d folds", folds)
        t0 = time.perf_counter()
        p_cond, p_both, cond_seen = cross_fitted_lcr_scores(fold, positive, values.get("lcr", np.zeros(n)),
                                                 values["conductance"], cond=mlp_params(e.detectors.cond_mlp),
                                                 combined=mlp_params(e.detectors.combined_mlp),
                                                 seed=int(e.sample_seed))
        values.update(p_cond=p_cond, p_both=p_both)
        costs["lcr_detectors"] = dict(forwards=0.0, backwards=0.0, seconds=time.perf_counter() - t0, samples=float(n))
    signals = {s: np.asarray(values[s], dtype=float) for s in wanted}
    directions = {s: SIGNALS[s][0] for s in wanted}
    per_sample = pd.DataFrame({**ctx.identity, "task": task, "sample_index": chosen.numpy(), **info["columns"],
                               "prediction": prediction, POSITIVE[task]: positive, **signals})
    inputs = [s for s in wanted if s not in LEARNED]
    # p_cond enters as each fold's model may see it (out of fold inside its training folds); p_both,
    # a second learned level on lcr and p_cond, would need one more level of nesting: left out
    stacked = "p_cond" in wanted
    combined = None
    if len(inputs) + stacked > 1 and fold is not None:
        combined, _ = cross_fitted_combination(np.stack([signals[s] for s in inputs], 1), positive, fold=fold,
                                               fold_columns=cond_seen if stacked else None)
        per_sample[COMBINED] = combined
    elif len(inputs) + stacked > 1:
        log.warning("signals: %d %s are too few for a %d-fold combination; no '%s' row", n_pos, what, folds, COMBINED)
    if fold is not None:
        per_sample["fold"] = fold
    rated, rated_dirs = dict(signals), dict(directions)
    if combined is not None:
        rated[COMBINED], rated_dirs[COMBINED] = combined, "high"
    rows = rank_signals(rated, rated_dirs, positive, TASK_METRICS[task], n_boot=int(e.bootstrap),
                        seed=int(e.sample_seed))
    cost_of = {s: _signal_cost(SIGNALS[s][1], costs) for s in wanted}
    if combined is not None:
        works = sorted({k for s in inputs + (["p_cond"] if stacked else []) for k in SIGNALS[s][1].split("+")})
        cost_of[COMBINED] = _signal_cost("+".join(works), costs)
    ranking = pd.DataFrame([{**ctx.identity, "task": task, "signal": r.signal, "direction": rated_dirs[r.signal],
                             "metric": r.metric, "value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high,
                             "n_samples": n, "n_positive": n_pos, **cost_of[r.signal]} for r in rows])
    cost_table = pd.DataFrame([{**ctx.identity, "work": k, **{m: v[m] for m in ("forwards", "backwards", "seconds")},
                                "samples": int(v["samples"]),
                                "used_by": " ".join(s for s in wanted if k in SIGNALS[s][1].split("+"))}
                               for k, v in costs.items()])
    corr = spearman_matrix(signals)
    spearman = pd.DataFrame(corr, index=wanted, columns=wanted).rename_axis("signal").reset_index()
    auroc = ranking[ranking.metric == "auroc"].set_index("signal")["value"]
    best = auroc.drop(COMBINED, errors="ignore").idxmax()
    log.info("signals (%s): %d samples, %d %s; best single signal %s (AUROC %.3f)%s", task, n, n_pos, what, best,
             auroc[best], f", everything {auroc[COMBINED]:.3f}" if combined is not None else "")
    extra = (f"{n_pos} wrong of {n} test samples" if task == "errors" else
             f"{n_pos} mislabeled of {n} training points (noise {info['rate']:g})")
    figures = {f"roc_{task}": _roc_figure(rated, rated_dirs, positive, ctx.title(extra), task),
               "spearman": _spearman_figure(corr, wanted, ctx.title("Spearman correlation between the signals"))}
    work_totals = {k: {m: round(v[m], 3) for m in ("forwards", "backwards", "seconds")} for k, v in costs.items()}
    stats = dict(task=task, n_samples=n, n_positive=n_pos, signals=wanted, signal_costs=work_totals,
                 best_signal=dict(signal=best, auroc=round(float(auroc[best]), 4)),
                 n_forward=int(np.nansum([v["forwards"] for v in costs.values()])),
                 n_backward=int(np.nansum([v["backwards"] for v in costs.values()])),
                 seconds=round(float(np.nansum([v["seconds"] for v in costs.values()])), 3), **notes)
    if combined is not None:
        stats["everything_auroc"] = round(float(auroc[COMBINED]), 4)
    if task == "mislabeled":
        stats["label_noise"] = dict(rate=info["rate"], seed=info["seed"], realised_rate=round(info["realised_rate"], 6))
        stats["train_accuracy_given"] = float((prediction == info["columns"]["label_given"]).mean())
    return ExperimentOutput(tables={f"signals_{task}": per_sample, "ranking": ranking, "costs": cost_table,
                                    "spearman": spearman},
                            figures=figures, stats=stats)


def _roc_figure(signals: dict[str, np.ndarray], directions: dict[str, str], positive: np.ndarray, title: str,
                task: str) -> Figure:
    """One ROC curve per signal (the combination thick and black), for the task's positives."""
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.subplots()
    for i, (name, values) in enumerate(signals.items()):
        # ten colours, then the same ten dashed: no two curves look alike
        style = dict(color="black", lw=2.2) if name == COMBINED else dict(color=f"C{i % 10}", lw=1.3,
                                                                          ls="-" if i < 10 else "--")
        roc_curve_line(ax, positive, np.nan_to_num(oriented(values, directions[name]), posinf=1e30, neginf=-1e30),
                       name, **style)
    what, other = ("wrong predictions", "right predictions") if task == "errors" else \
        ("mislabeled points", "correctly labeled points")
    dress_error_roc(ax, f"Detecting {what} with each signal\n{title}", legend_fontsize=7, positive=what,
                    negative=other)
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
                        tables=("ranking", "signals_errors", "signals_mislabeled", "costs", "spearman"),
                        figures=("spearman",), compare=signals_comparison, compare_name="auroc",
                        modifier=modifier, check_data=check_data, report_files=report_files)
