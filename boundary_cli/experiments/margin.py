"""experiment=margin: the margin distribution of hold-me-tight.

For seeded test samples, the DeepFool distance to the boundary in the full input space and inside
every diagonal DCT block, low to high frequency, and (``experiment.refine``) the smallest verified
perturbation a refinement started at DeepFool's point finds, with the gap between the two. Work runs
in chunks of samples cached under a content hash, so a killed run started again reuses what was
finished.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import Tensor

from boundary_cli.data.variants import FLIP, LowPass
from boundary_cli.errors import BoundaryError
from boundary_cli.experiments.checks import positive_int
from boundary_cli.experiments.context import Computed, ExperimentOutput, RunContext
from boundary_cli.experiments.registry import Experiment
from boundary_cli.experiments.shards import shard_chunks, shard_of
from boundary_cli.geometry.dct import DCTBlock, diagonal_blocks
from boundary_cli.geometry.adv_lib_attacks import ADV_LIB_METHODS, INSTALL_HINT, adv_lib_available
from boundary_cli.geometry.deepfool import VJP_METHODS, DeepFoolParams, batch_rows_for_budget, deepfool_subspaces
from boundary_cli.geometry.refine import ALL_METHODS, RefineParams, refine
from boundary_cli.reporting.comparison import margin_comparison
from boundary_cli.reporting.plots import examples_figure, margins_figure
from boundary_cli.reporting.summary import summarize_margins
from boundary_cli.training.evaluation import predict

log = logging.getLogger(__name__)

CHUNK_FORMAT = 1  # bump when the meaning of stored chunks changes
N_EXAMPLES = 6


def validate(cfg: DictConfig) -> None:
    """Check the experiment section before any data is loaded or model trained."""
    e = cfg.experiment
    if e.n_samples != "all":
        positive_int(e.n_samples, "experiment.n_samples (or 'all')")
    positive_int(e.chunk_size, "experiment.chunk_size")
    if e.batch_rows != "auto":
        positive_int(e.batch_rows, "experiment.batch_rows (or 'auto')")
    if e.vjp not in VJP_METHODS:
        raise BoundaryError(f"unknown experiment.vjp={e.vjp!r}; valid: {', '.join(VJP_METHODS)}")
    df = e.deepfool
    if positive_int(df.candidates, "experiment.deepfool.candidates") < 2:
        raise BoundaryError("experiment.deepfool.candidates must be at least 2")
    positive_int(df.max_iter, "experiment.deepfool.max_iter")
    positive_int(df.sync_every, "experiment.deepfool.sync_every")
    gb = df.max_memory_gb
    if gb != "auto" and (isinstance(gb, bool) or not isinstance(gb, (int, float)) or gb <= 0):
        raise BoundaryError(f"experiment.deepfool.max_memory_gb must be a number > 0 (GiB) or 'auto', got {gb!r}")
    if not isinstance(df.get("tf32", False), bool):
        raise BoundaryError(f"experiment.deepfool.tf32 must be true or false, got {df.get('tf32')!r}")
    if not isinstance(df.overshoot, (int, float)) or df.overshoot < 0:
        raise BoundaryError(f"experiment.deepfool.overshoot must be a number >= 0, got {df.overshoot!r}")
    positive_int(e.subspaces.block, "experiment.subspaces.block")
    positive_int(e.subspaces.step, "experiment.subspaces.step")
    if isinstance(e.sample_seed, bool) or not isinstance(e.sample_seed, int) or e.sample_seed < 0:
        raise BoundaryError(f"experiment.sample_seed must be an integer >= 0, got {e.sample_seed!r}")
    refine_params(e)
    if e.refine in ADV_LIB_METHODS:
        if not df.clip:
            raise BoundaryError(f"experiment.refine={e.refine} (adv-lib) keeps images in [0, 1]: it needs "
                                f"experiment.deepfool.clip=true")
        if not adv_lib_available():
            raise BoundaryError(f"experiment.refine={e.refine}: {INSTALL_HINT}")


def refine_params(e: DictConfig) -> RefineParams:
    """The refinement settings of the experiment section (``refine`` and its ``refinement`` block)."""
    if e.refine not in ALL_METHODS:
        raise BoundaryError(f"unknown experiment.refine={e.refine!r}; valid: {', '.join(ALL_METHODS)} "
                            f"({', '.join(ADV_LIB_METHODS)} need adv-lib)")
    r = e.refinement
    for name in ("bisect_steps", "steps", "patience"):
        v = r[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "steps" else 1):
            raise BoundaryError(f"experiment.refinement.{name} must be an integer >= {0 if name == 'steps' else 1}, "
                                f"got {v!r}")
    for name in ("alpha", "alpha_final", "gamma", "gamma_final", "tol"):
        if isinstance(r[name], bool) or not isinstance(r[name], (int, float)):
            raise BoundaryError(f"experiment.refinement.{name} must be a number, got {r[name]!r}")
    try:
        return RefineParams(method=str(e.refine), bisect_steps=int(r.bisect_steps), steps=int(r.steps),
                            alpha=float(r.alpha), alpha_final=float(r.alpha_final), gamma=float(r.gamma),
                            gamma_final=float(r.gamma_final), patience=int(r.patience), tol=float(r.tol))
    except ValueError as err:
        raise BoundaryError(f"experiment.refinement: {err}") from None


def deepfool_params(e: DictConfig, value_range: tuple[float, float]) -> DeepFoolParams:
    """The DeepFool settings of the experiment section; ``deepfool.clip: true`` boxes to ``value_range``."""
    df = e.deepfool
    return DeepFoolParams(candidates=int(df.candidates), overshoot=float(df.overshoot), max_iter=int(df.max_iter),
                          clip=tuple(value_range) if df.clip else None, tf32=bool(df.get("tf32", False)),
                          vjp=str(e.vjp), sync_every=int(df.sync_every))


def select_samples(n_test: int, n_samples: int | str, seed: int,
                   eligible: Tensor | Callable[[Tensor], Tensor] | None = None, block: int = 1024) -> Tensor:
    """Test-set indices to measure, sorted: the first ``n_samples`` of a seeded permutation
    (skipping non-eligible ones), so every variant, model and training seed sees the same samples.

    ``eligible`` is a (n_test,) bool mask, or a function from (k,) indices to a (k,) bool mask that is
    asked in permutation order, ``block`` indices at a time, only until enough are found (so a set
    decoded per batch, like ImageNet, is not predicted whole for 100 samples).
    """
    order = torch.randperm(n_test, generator=torch.Generator().manual_seed(seed))
    if isinstance(eligible, Tensor):
        order = order[eligible[order]]
    elif eligible is not None:
        kept, found = [], 0
        for part in order.split(block):
            if n_samples != "all" and found >= n_samples:
                break
            ok = part[eligible(part)]
            kept.append(ok)
            found += ok.numel()
        order = torch.cat(kept) if kept else order[:0]
    if n_samples == "all":
        return order.sort().values
    if n_samples > len(order):
        which = "correctly classified test images" if eligible is not None else "test images"
        raise BoundaryError(f"experiment.n_samples={n_samples} but there are only {len(order)} {which}; "
                            f"use experiment.n_samples=all or a smaller number")
    return order[:n_samples].sort().values


def _subspace_table(blocks: list[DCTBlock], include_full: bool, c: int, n: int) -> pd.DataFrame:
    rows = [dict(subspace="full", offset=0, block=n, dim=c * n * n)] if include_full else []
    rows += [dict(subspace=b.name, offset=b.offset, block=b.block, dim=b.dim) for b in blocks]
    return pd.DataFrame(rows)


RESULT_KEYS = ("margin", "margin_linf", "iterations", "converged", "prediction", "adv_label")
REFINE_KEYS = ("margin_min", "margin_bisect", "refine_steps", "min_adv_label")


def _refine_rows(ctx: RunContext, x: Tensor, res, table: Tensor, params: RefineParams,
                 clip: tuple[float, float] | None, batch_rows: int, tf32: bool,
                 progress: Callable[[int], None]) -> tuple[dict[str, Tensor], int, int]:
    """Refine every (subspace, sample) row of a DeepFool result with leading shape (S, N). An adv-lib
    method refines the full-space rows; the subspace rows (where adv-lib does not fit) get the descent
    with the same settings. Returns the REFINE_KEYS tensors, each (S, N), and the passes counted."""
    n_s, n = res.margin.shape
    sample = torch.arange(n, device=x.device).repeat(n_s)
    blocks = table.repeat_interleave(n, dim=0)
    start = res.perturbation.reshape(n_s * n, *x.shape[1:])
    label = res.prediction.reshape(-1)
    full = (blocks[:, 0] == 0) & (blocks[:, 1] == x.shape[-1])
    groups = [(full, params), (~full, replace(params, method="descent"))] if params.method in ADV_LIB_METHODS \
        else [(torch.ones_like(full), params)]
    out = {"margin_min": torch.full((n_s * n,), float("nan")), "margin_bisect": torch.full((n_s * n,), float("nan")),
           "refine_steps": torch.zeros(n_s * n, dtype=torch.long),
           "min_adv_label": torch.full((n_s * n,), -1, dtype=torch.long)}
    fwd = bwd = 0
    for rows_mask, p in groups:
        rows = rows_mask.nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        counted = 0

        def count(k: int) -> None:
            nonlocal counted
            counted += k
            progress(k)

        r = refine(ctx.model, x, start[rows], label[rows], p, clip=clip, row_block=blocks[rows],
                   row_sample=sample[rows], batch_rows=batch_rows, tf32=tf32, progress=count)
        if rows.numel() > counted:  # rows left alone (and bisected-only rows of a descent) count as done
            progress(int(rows.numel()) - counted)
        cpu = rows.cpu()
        out["margin_min"][cpu] = r.margin.cpu()
        out["margin_bisect"][cpu] = r.margin_bisect.cpu()
        out["refine_steps"][cpu] = r.steps.cpu()
        out["min_adv_label"][cpu] = r.adv_label.cpu()
        fwd, bwd = fwd + r.n_forward, bwd + r.n_backward
    return {k: v.view(n_s, n) for k, v in out.items()}, fwd, bwd


def _measure(ctx: RunContext, chunks: list[Tensor], blocks: list[DCTBlock], include_full: bool,
             params: DeepFoolParams, batch_rows: int,
             rparams: RefineParams = RefineParams(method="none")) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """DeepFool (and the refinement ``rparams``) for the test samples in ``chunks`` in every space,
    chunk by chunk, reusing cached chunks.

    The next chunk's images are read (decoded, for sets like ImageNet) in a background thread while
    the current one is measured. Returns the RESULT_KEYS (and, when refining, REFINE_KEYS) arrays,
    each (S, N), and the cost statistics for run.json. ``refine: none`` adds nothing to the chunk key,
    so chunks computed before refinements existed are reused.
    """
    data = ctx.data
    n_spaces = len(blocks) + int(include_full)
    refining = rparams.method != "none"
    passes = 2 if refining else 1  # progress: each row counts once for DeepFool and once refined
    keys = RESULT_KEYS + (REFINE_KEYS if refining else ())

    def compute(x: Tensor, progress: Callable[[int], None]) -> Computed:
        res = deepfool_subspaces(ctx.model, x, blocks, params, include_full=include_full, batch_rows=batch_rows,
                                 keep_perturbation=refining, progress=progress)
        values = {k: getattr(res, k) for k in RESULT_KEYS}
        fwd, bwd = res.n_forward, res.n_backward
        if refining:
            table = torch.tensor(([[0, x.shape[-1]]] if include_full else []) + [[b.offset, b.block] for b in blocks],
                                 device=x.device)
            refined, f2, b2 = _refine_rows(ctx, x, res, table, rparams, params.clip, batch_rows, params.tf32,
                                           progress)
            values.update(refined)
            fwd, bwd = fwd + f2, bwd + b2
        return Computed(values, fwd, bwd)

    key_params = dict(blocks=[[b.offset, b.block] for b in blocks], include_full=include_full, **params.key())
    if refining:
        key_params["refine"] = rparams.key()
    run = ctx.cached_chunks("margin", chunks, compute, fmt=CHUNK_FORMAT, params=key_params,
                            rows=lambda chunk: len(chunk) * n_spaces * passes,
                            load=lambda chunk: data.test_x[chunk].to(ctx.device), required=keys,
                            desc="margins")
    computed = run.computed_rows // max(1, n_spaces * passes)
    stats = dict(n_forward=run.forwards, n_backward=run.backwards, chunks_total=len(chunks), chunks_reused=run.reused,
                 margin_time_s=round(run.seconds, 3),
                 samples_per_s=round(computed / run.seconds, 2) if run.seconds > 0 else None)
    empty = {k: np.empty((n_spaces, 0), dtype=np.float32 if k.startswith("margin") else np.int64) for k in keys}
    empty["converged"] = empty["converged"].astype(bool)
    if not run.parts:
        return empty, stats
    return {k: run.cat(k, dim=1).numpy() for k in keys}, stats


def margin_arrays(margin: np.ndarray, include_full: bool, name: str = "margins") -> dict[str, np.ndarray]:
    """The .npy outputs of (S, N) margins, spaces in table order (full space first when measured).

    ``margins``: the subspace rows only, float32 (n_subspaces, n_samples), exactly the array
    hold-me-tight's ``compute_margin_distribution`` saves (so its plotting code reads it unchanged);
    ``margins_full``: the full-space row, float32 (n_samples,), only when the full space was measured.
    ``name`` replaces ``margins`` (``margins_min`` for the refined margins, same layout).
    """
    margin = np.asarray(margin, dtype=np.float32)
    out = {name: margin[1:] if include_full else margin}
    if include_full:
        out[f"{name}_full"] = margin[0]
    return out


def _refined_columns(res: dict[str, np.ndarray], rparams: RefineParams, spaces: pd.DataFrame,
                     n: int) -> dict[str, np.ndarray]:
    """The refinement columns of margins.csv from the (S, N) arrays: ``margin_min`` (inf where DeepFool
    could not move, NaN where it did not converge), ``margin_bisect``, ``refine_method`` (per row: an
    adv-lib method on full-space rows, the descent in subspaces), ``refine_steps``, ``min_adv_label``
    and ``gap`` = margin_l2 / margin_min (NaN where not refined)."""
    margin = res["margin"].ravel()
    rows = margin.size
    if rparams.method == "none":
        nan = np.full(rows, np.nan, dtype=np.float32)
        return dict(margin_min=nan, margin_bisect=nan, refine_method=np.full(rows, "none"),
                    refine_steps=np.zeros(rows, dtype=np.int64), min_adv_label=np.full(rows, -1), gap=nan)
    m_min = res["margin_min"].ravel().astype(np.float32)
    m_min = np.where(np.isinf(margin), np.inf, m_min).astype(np.float32)
    method = np.full(rows, rparams.method, dtype=object)
    if rparams.method in ADV_LIB_METHODS:
        method[np.repeat(spaces["subspace"].to_numpy() != "full", n)] = "descent"
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(np.isfinite(m_min) & (m_min > 0), margin / m_min, np.nan).astype(np.float32)
    return dict(margin_min=m_min, margin_bisect=res["margin_bisect"].ravel().astype(np.float32),
                refine_method=method, refine_steps=res["refine_steps"].ravel(),
                min_adv_label=res["min_adv_label"].ravel(), gap=gap)


def run(ctx: RunContext) -> ExperimentOutput:
    e = ctx.cfg.experiment
    data = ctx.data
    c, (h, w) = data.channels, data.image_size
    if h != w:
        raise BoundaryError(f"experiment=margin needs square images for DCT blocks; {data.name} is {h}x{w}")
    if e.subspaces.block > w:
        raise BoundaryError(f"experiment.subspaces.block={e.subspaces.block} is larger than the {w}x{w} images")
    blocks = diagonal_blocks(w, e.subspaces.block, e.subspaces.step, channels=c)
    include_full = bool(e.subspaces.include_full)
    spaces = _subspace_table(blocks, include_full, c, w)
    if len(spaces) == 0:
        raise BoundaryError("nothing to measure: no DCT blocks and experiment.subspaces.include_full=false")

    eligible = None
    if e.only_correct:
        def eligible(ids: Tensor) -> Tensor:
            return predict(ctx.model, data.test_x[ids], device=ctx.device).argmax(1) == data.test_y[ids]
    chosen = select_samples(len(data.test_y), e.n_samples, e.sample_seed, eligible)
    shard_index, shard_count = shard_of(ctx.cfg)
    chunks = shard_chunks(chosen, int(e.chunk_size), shard_index, shard_count)
    idx = torch.cat(chunks) if chunks else chosen[:0]
    if shard_count > 1:
        log.info("shard %d of %d: %d of the %d chosen samples (%d chunks)", shard_index, shard_count, len(idx),
                 len(chosen), len(chunks))
        if not chunks:
            log.warning("shard %d of %d has no samples: %d samples make only %d chunks of %d; lower "
                        "experiment.chunk_size or shard.count", shard_index, shard_count, len(chosen),
                        -(-len(chosen) // int(e.chunk_size)), int(e.chunk_size))
    params = deepfool_params(e, data.value_range)
    kc = min(params.candidates, data.num_classes)
    budget = (ctx.memory_budget if e.deepfool.max_memory_gb == "auto"
              else int(float(e.deepfool.max_memory_gb) * 2**30))
    batch_rows = (batch_rows_for_budget(ctx.model, data.test_x[:1].to(ctx.device), kc, budget)
                  if e.batch_rows == "auto" else int(e.batch_rows))
    sync_every, tf32 = params.sync_every, params.tf32
    log.info("margin: %d samples x %d subspaces (%s), %d rows per batch, host sync every %d iteration(s) on %s%s",
             len(idx), len(spaces), ", ".join(spaces["subspace"].head(3)) + (", ..." if len(spaces) > 3 else ""),
             batch_rows, sync_every, ctx.device, ", model in TF32" if tf32 else "")

    rparams = refine_params(e)
    if rparams.method in ADV_LIB_METHODS and tuple(float(v) for v in data.value_range) != (0.0, 1.0):
        raise BoundaryError(f"experiment.refine={rparams.method} (adv-lib) needs images in [0, 1]; "
                            f"{data.name} ({data.variant}) spans {tuple(data.value_range)}: use "
                            f"experiment.refine=descent")
    res, stats = _measure(ctx, chunks, blocks, include_full, params, batch_rows, rparams)
    n_s, n = res["margin"].shape
    labels = data.test_y[idx].numpy()
    refined = _refined_columns(res, rparams, spaces, n)
    table = pd.DataFrame({
        **ctx.identity,
        "sample_index": np.tile(idx.numpy(), n_s),
        "label": np.tile(labels, n_s),
        "prediction": res["prediction"].ravel(),
        "correct": res["prediction"].ravel() == np.tile(labels, n_s),
        **{col: np.repeat(spaces[col].to_numpy(), n) for col in ["subspace", "offset", "block", "dim"]},
        "margin_l2": res["margin"].ravel(),
        "margin_linf": res["margin_linf"].ravel(),
        "n_iter": res["iterations"].ravel(),
        "converged": res["converged"].ravel(),
        "adv_label": res["adv_label"].ravel(),
        **refined,
    })
    summary = summarize_margins(table)
    title = ctx.title()
    figures = {}
    if n:
        raw = ctx.raw_test_x[idx[:N_EXAMPLES]]
        lp = ctx.cfg.dataset.low_pass
        bw = lp.bandwidth if lp.bandwidth and lp.bandwidth <= w else w // 2  # the figure's low-pass example only
        examples = {"as given": raw, FLIP.name: FLIP.apply(raw), f"low_pass b={bw}": LowPass(bw, lp.mode).apply(raw)}
        figures = {"margins": margins_figure(table, summary, title),
                   "examples": examples_figure(examples, f"{data.name} test images (this run: {data.variant})")}
    stats.update(n_samples=int(n), n_samples_chosen=len(chosen), n_subspaces=int(n_s), batch_rows=batch_rows,
                 sync_every=sync_every, tf32=tf32, memory_budget_gb=round(budget / 2**30, 3), candidates=kc,
                 shard=dict(index=shard_index, count=shard_count),
                 mean_iterations=float(res["iterations"].mean()) if n else None,
                 refine=dict(rparams.key(), rows_refined=int(np.isfinite(table["gap"]).sum()),
                             rows_not_refined=int((~np.isfinite(table["gap"])).sum()),
                             mean_steps=float(table["refine_steps"].mean()) if n else None),
                 accuracy_measured=float(table["correct"].mean()) if n else None)
    for _, row in summary.iterrows():
        tight = "" if rparams.method == "none" else (f"  refined {row['median_min']:.4g} (median gap "
                                                     f"{row['median_gap']:.3f}, {100 * row['share_gap_above_1_1']:.0f}% > 1.1)")
        log.info("%-8s median margin %.4g  [%.4g, %.4g]  converged %.0f%%%s", row["subspace"], row["median"],
                 row["median_ci_low"], row["median_ci_high"], 100 * row["share_converged"], tight)
    return ExperimentOutput(
        tables={"margins": table, "summary": summary},
        arrays={**margin_arrays(res["margin"], include_full),
                **(margin_arrays(table["margin_min"].to_numpy().reshape(n_s, n), include_full, "margins_min")
                   if rparams.method != "none" else {})},
        figures=figures,
        stats=stats,
    )


EXPERIMENT = Experiment(name="margin", validate=validate, run=run, tables=("margins", "summary"),
                        figures=("margins", "examples"), lazy_data=True, shards=True,
                        compare=margin_comparison, compare_name="margins")
