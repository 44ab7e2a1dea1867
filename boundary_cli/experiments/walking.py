"""What the flip experiments share: their walk settings, walks to every class run chunk by chunk
under a content hash (so a killed run resumes), layer choice, and the long table of walk rows."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from boundary_cli.cache import model_hash
from boundary_cli.data.pools import Pool, split_indices
from boundary_cli.errors import BoundaryError
from boundary_cli.experiments.checks import nonnegative_int, one_of, positive_int, positive_number
from boundary_cli.experiments.context import Computed, RunContext
from boundary_cli.geometry.taps import layer_distances
from boundary_cli.geometry.walks import (
    WALK_MODES,
    WalkParams,
    batch_rows_for_budget,
    nearest_flip,
    status_names,
    walk_to_classes,
)

log = logging.getLogger(__name__)

CHUNK_FORMAT = 1  # bump when the meaning of stored walk chunks changes
WALK_KEYS = ("l2", "l2_sq", "steps", "status", "source", "target", "end_class", "first_exit", "first_exit_step",
             "visited")


def validate_walk(w: DictConfig, key: str = "experiment.walk", modes: tuple[str, ...] = WALK_MODES) -> None:
    """Check a walk section: mode, eta > 0, max_steps >= 0, clip a bool."""
    one_of(w.mode, modes, f"{key}.mode")
    positive_number(w.eta, f"{key}.eta")
    nonnegative_int(w.max_steps, f"{key}.max_steps")
    if not isinstance(w.clip, bool):
        raise BoundaryError(f"{key}.clip must be true or false, got {w.clip!r}")


def walk_params(w: DictConfig, value_range: tuple[float, float]) -> WalkParams:
    """The walk settings of a walk section; ``clip: true`` boxes the walk to ``value_range``."""
    return WalkParams(mode=str(w.mode), eta=float(w.eta), max_steps=int(w.max_steps),
                      clip=tuple(value_range) if w.clip else None)


def model_epochs(cfg: DictConfig) -> list[int | None]:
    """The one snapshot a single-model flip experiment needs: ``experiment.epoch`` (None = final)."""
    return [cfg.experiment.epoch]


def validate_common(e: DictConfig) -> None:
    """chunk_size, batch_rows and (when the experiment has one) epoch, shared by every walk experiment."""
    if e.get("epoch") is not None:
        positive_int(e.epoch, "experiment.epoch")
    positive_int(e.chunk_size, "experiment.chunk_size")
    if e.batch_rows != "auto":
        positive_int(e.batch_rows, "experiment.batch_rows (or 'auto')")


def batch_rows_for(ctx: RunContext, model: nn.Module, example: Tensor) -> int:
    """Rows per walk batch: ``experiment.batch_rows`` or, for ``auto``, from the memory budget."""
    e = ctx.cfg.experiment
    if e.batch_rows != "auto":
        return int(e.batch_rows)
    return batch_rows_for_budget(model, example[:1].to(ctx.device), ctx.memory_budget)


def measure_walks(ctx: RunContext, model: nn.Module, x: Tensor, classes: Tensor, params: WalkParams, *,
                  layers: list[str] | None = None, desc: str = "walks",
                  model_id: str | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Walk every image of x (N, C, H, W) toward every class of ``classes`` (T,), chunk by chunk,
    reusing chunks found in the cache.

    Returns ``{key: (N, T, ...)}`` for WALK_KEYS, plus ``layer_sq`` (L, N, T) squared distances
    between the image and each walk's end point per layer when ``layers`` is given; and the cost
    statistics (forwards, backwards, chunks reused, seconds, row-steps/s).
    """
    e = ctx.cfg.experiment
    model_id = model_id or model_hash(model)
    batch_rows = batch_rows_for(ctx, model, x)
    keys = WALK_KEYS + (("layer_sq",) if layers else ())
    chunks = torch.split(torch.arange(x.shape[0]), int(e.chunk_size))

    def compute(xc: Tensor, progress: Callable[[int], None]) -> Computed:
        res = walk_to_classes(model, xc, classes.to(ctx.device), params, batch_rows=batch_rows,
                              keep_points=bool(layers), progress=progress)
        got = {k: getattr(res, k) for k in WALK_KEYS}
        if layers:
            starts = xc.repeat_interleave(len(classes), dim=0)
            d = layer_distances(model, starts, res.x_end.flatten(0, 1), layers)
            got["layer_sq"] = d.view(len(layers), xc.shape[0], len(classes))
        return Computed(got, res.n_forward, res.n_backward)

    run = ctx.cached_chunks("walk", chunks, compute, fmt=CHUNK_FORMAT,
                            params=dict(classes=classes.tolist(), layers=layers, **params.key()),
                            rows=lambda chunk: len(chunk) * len(classes), load=lambda chunk: x[chunk].to(ctx.device),
                            required=keys, model_id=model_id, desc=desc)
    out = {k: run.cat(k, dim=1 if k == "layer_sq" else 0) for k in keys}
    stats = dict(n_forward=run.forwards, n_backward=run.backwards, chunks_total=len(chunks), chunks_reused=run.reused,
                 walk_time_s=round(run.seconds, 3), batch_rows=batch_rows,
                 row_steps_per_s=round(run.forwards / run.seconds, 1) if run.seconds > 0 else None)
    return out, stats


def merge_stats(all_stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the cost statistics of several :func:`measure_walks` calls."""
    out: dict[str, Any] = {}
    for key in ("n_forward", "n_backward", "chunks_total", "chunks_reused"):
        out[key] = int(sum(s[key] for s in all_stats))
    out["walk_time_s"] = round(sum(s["walk_time_s"] for s in all_stats), 3)
    out["row_steps_per_s"] = round(out["n_forward"] / out["walk_time_s"], 1) if out["walk_time_s"] > 0 else None
    out["batch_rows"] = max((s["batch_rows"] for s in all_stats), default=None)
    return out


def visited_text(visited: Tensor) -> list[str]:
    """(R, K) bool -> one ``"0;3;7"`` string per row (classes met along the walk)."""
    return [";".join(str(int(c)) for c in row.nonzero().flatten()) for row in visited]


def walk_table(res: dict[str, Tensor], columns: dict[str, Any], mode: str) -> pd.DataFrame:
    """Long table, one row per (image, target), from :func:`measure_walks` output (N, T).

    ``columns`` holds per-image arrays (N,) or constants, repeated over the targets.
    """
    n, t = res["l2"].shape
    per_image = {k: (np.repeat(np.asarray(v), t) if np.ndim(v) else v) for k, v in columns.items()}
    visited = res["visited"].reshape(n * t, -1)
    return pd.DataFrame({
        **per_image,
        "source_pred": res["source"].reshape(-1).numpy(),
        "target": res["target"].reshape(-1).numpy(),
        "mode": mode,
        "steps": res["steps"].reshape(-1).numpy(),
        "status": status_names(res["status"]),
        "l2": res["l2"].reshape(-1).numpy(),
        "l2_sq": res["l2_sq"].reshape(-1).numpy(),
        "end_class": res["end_class"].reshape(-1).numpy(),
        "first_exit_class": res["first_exit"].reshape(-1).numpy(),
        "first_exit_step": res["first_exit_step"].reshape(-1).numpy(),
        "n_classes_visited": visited.sum(dim=1).numpy(),
        "classes_visited": visited_text(visited),
    })


def nearest_table(res: dict[str, Tensor], columns: dict[str, Any]) -> pd.DataFrame:
    """One row per image of :func:`measure_walks` output (N, T): its nearest successful flip's
    target (``nearest_target``, -1 when none flipped) and distances ``l2`` and ``l2_sq`` (inf when none).

    ``columns`` holds per-image arrays (N,) or constants.
    """
    slot, l2 = nearest_flip(res["status"], res["l2"])
    found = slot >= 0
    at = slot.clamp_min(0).unsqueeze(1)
    inf = torch.tensor(float("inf"), dtype=res["l2_sq"].dtype)
    return pd.DataFrame({
        **columns,
        "nearest_target": torch.where(found, res["target"].gather(1, at).squeeze(1), -1).numpy(),
        "l2": l2.numpy(),
        "l2_sq": torch.where(found, res["l2_sq"].gather(1, at).squeeze(1), inf).numpy(),
    })


def layer_table(res: dict[str, Tensor], layers: list[str], columns: dict[str, Any]) -> pd.DataFrame:
    """Long table, one row per (image, target, layer), of the layer distances (own slot left out)."""
    n, t = res["l2"].shape
    sq = res["layer_sq"].permute(1, 2, 0).reshape(-1).numpy()  # image, target, layer order
    per_image = {k: (np.repeat(np.asarray(v), t * len(layers)) if np.ndim(v) else v) for k, v in columns.items()}
    table = pd.DataFrame({
        **per_image,
        "source_pred": np.repeat(res["source"].reshape(-1).numpy(), len(layers)),
        "target": np.repeat(res["target"].reshape(-1).numpy(), len(layers)),
        "status": np.repeat(status_names(res["status"]), len(layers)),
        "layer": np.tile(layers, n * t),
        "layer_index": np.tile(np.arange(len(layers)), n * t),
        "layer_l2": np.sqrt(sq),
        "layer_l2_sq": sq,
    })
    return table[table["status"] != "own"].reset_index(drop=True)



def validate_selection(e: DictConfig) -> None:
    """split, start, n_samples and sample_seed of the experiments that take one slice of a split."""
    one_of(e.split, ("train", "test"), "experiment.split")
    nonnegative_int(e.start, "experiment.start")
    positive_int(e.n_samples, "experiment.n_samples")
    if e.sample_seed is not None:
        nonnegative_int(e.sample_seed, "experiment.sample_seed (or null)")


def chosen_images(ctx: RunContext) -> Pool:
    """The images ``experiment.split/start/n_samples/sample_seed`` select, with their labels."""
    e, data = ctx.cfg.experiment, ctx.data
    x, y = (data.train_x, data.train_y) if e.split == "train" else (data.test_x, data.test_y)
    try:
        idx = split_indices(len(y), int(e.n_samples), start=int(e.start),
                            seed=None if e.sample_seed is None else int(e.sample_seed))
    except ValueError as exc:
        raise BoundaryError(f"experiment.start/n_samples: {exc} ({e.split} split of {data.name}); "
                            f"choose fewer images") from None
    return Pool(str(e.split), x[idx], idx, y[idx])
