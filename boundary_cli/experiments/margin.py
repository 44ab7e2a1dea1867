"""experiment=margin: the margin distribution of hold-me-tight.

For seeded test samples, the DeepFool distance to the boundary in the full input space and inside
every diagonal DCT block, low to high frequency. Work runs in chunks of samples cached under a
content hash, so a killed run started again reuses what was finished.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
from boundary_cli.geometry.deepfool import VJP_METHODS, DeepFoolParams, batch_rows_for_budget, deepfool_subspaces
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


def _measure(ctx: RunContext, chunks: list[Tensor], blocks: list[DCTBlock], include_full: bool,
             params: DeepFoolParams, batch_rows: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """DeepFool for the test samples in ``chunks`` in every space, chunk by chunk, reusing cached chunks.

    The next chunk's images are read (decoded, for sets like ImageNet) in a background thread while
    the current one is measured. Returns the RESULT_KEYS arrays, each (S, N), and the cost
    statistics for run.json.
    """
    data = ctx.data
    n_spaces = len(blocks) + int(include_full)

    def compute(x: Tensor, progress: Callable[[int], None]) -> Computed:
        res = deepfool_subspaces(ctx.model, x, blocks, params, include_full=include_full, batch_rows=batch_rows,
                                 progress=progress)
        return Computed({k: getattr(res, k) for k in RESULT_KEYS}, res.n_forward, res.n_backward)

    run = ctx.cached_chunks("margin", chunks, compute, fmt=CHUNK_FORMAT,
                            params=dict(blocks=[[b.offset, b.block] for b in blocks], include_full=include_full,
                                        **params.key()),
                            rows=lambda chunk: len(chunk) * n_spaces,
                            load=lambda chunk: data.test_x[chunk].to(ctx.device), required=RESULT_KEYS,
                            desc="margins")
    computed = run.computed_rows // max(1, n_spaces)
    stats = dict(n_forward=run.forwards, n_backward=run.backwards, chunks_total=len(chunks), chunks_reused=run.reused,
                 margin_time_s=round(run.seconds, 3),
                 samples_per_s=round(computed / run.seconds, 2) if run.seconds > 0 else None)
    empty = {k: np.empty((n_spaces, 0), dtype=np.float32 if k.startswith("margin") else np.int64) for k in RESULT_KEYS}
    empty["converged"] = empty["converged"].astype(bool)
    if not run.parts:
        return empty, stats
    return {k: run.cat(k, dim=1).numpy() for k in RESULT_KEYS}, stats


def margin_arrays(margin: np.ndarray, include_full: bool) -> dict[str, np.ndarray]:
    """The .npy outputs of (S, N) margins, spaces in table order (full space first when measured).

    ``margins``: the subspace rows only, float32 (n_subspaces, n_samples), exactly the array
    hold-me-tight's ``compute_margin_distribution`` saves (so its plotting code reads it unchanged);
    ``margins_full``: the full-space row, float32 (n_samples,), only when the full space was measured.
    """
    margin = np.asarray(margin, dtype=np.float32)
    out = {"margins": margin[1:] if include_full else margin}
    if include_full:
        out["margins_full"] = margin[0]
    return out


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

    res, stats = _measure(ctx, chunks, blocks, include_full, params, batch_rows)
    n_s, n = res["margin"].shape
    labels = data.test_y[idx].numpy()
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
                 accuracy_measured=float(table["correct"].mean()) if n else None)
    for _, row in summary.iterrows():
        log.info("%-8s median margin %.4g  [%.4g, %.4g]  converged %.0f%%", row["subspace"], row["median"],
                 row["median_ci_low"], row["median_ci_high"], 100 * row["share_converged"])
    return ExperimentOutput(
        tables={"margins": table, "summary": summary},
        arrays=margin_arrays(res["margin"], include_full),
        figures=figures,
        stats=stats,
    )


EXPERIMENT = Experiment(name="margin", validate=validate, run=run, tables=("margins", "summary"),
                        figures=("margins", "examples"), lazy_data=True, shards=True,
                        compare=margin_comparison, compare_name="margins")
