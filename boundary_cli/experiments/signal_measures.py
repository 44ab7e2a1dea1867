"""The measurements behind experiment=signals: every per-sample signal of one model on chosen images,
chunked and cached, with what each kind of work cost (issue 17).

Work kinds and the signals they serve (one pass of each serves all its signals):

* ``logits``: one forward: msp, logit_margin, entropy, and the loss at the given label (task b);
* ``deepfool``: one batched DeepFool pass in the full space and the lowest and highest DCT band:
  deepfool_full, deepfool_low, deepfool_high; ``refine``: the tight margin started at DeepFool's point;
* ``noise``: the Gaussian copies of the noise-robustness ratio;
* ``walks``: one set of targeted walks toward every other class: flip_distance and multiple_hits;
* ``mutant_acceptance`` (once per run, spread over the samples) and ``mutants`` (every accepted mutant's
  prediction): the label change rate; ``conductance``: the layer conductance of the predicted logit;
  ``lcr_detectors``: the cross-fitted MLPs on them (p_cond, p_both; seconds only);
* ``weights`` / ``weights_label``: weight-space DeepFool against the prediction / the given label
  (experiment=weights_boundary's computation and cache);
* ``meta_network``: the tapped activations (one forward) read by a stored meta-network.

A chunk keeps its own cost (forwards, backwards, seconds, samples), so the cost columns stay the same
when a later run reuses it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor

from boundary_cli.detectors.conductance import layer_conductance
from boundary_cli.detectors.confidence import confidence_scores
from boundary_cli.detectors.meta_network import predict_meta
from boundary_cli.detectors.mutants import label_change_rate, predict_mutants
from boundary_cli.detectors.noise_robustness import noise_draws, noise_robustness
from boundary_cli.errors import BoundaryError
from boundary_cli.experiments.checks import layer_names
from boundary_cli.experiments.context import Computed, RunContext
from boundary_cli.experiments.lcr import accepted_mutants
from boundary_cli.experiments.margin import deepfool_params, refine_params
from boundary_cli.experiments.meta_network import stored_classifier, tap_features
from boundary_cli.experiments.walking import walk_params
from boundary_cli.experiments.weights_boundary import (
    chosen_parameters,
    weight_distances,
    weight_params,
)
from boundary_cli.geometry.dct import DCTBlock
from boundary_cli.geometry.deepfool import batch_rows_for_budget, deepfool_subspaces
from boundary_cli.geometry.refine import refine
from boundary_cli.geometry.walks import OWN, nearest_flip, walk_to_classes
from boundary_cli.geometry.walks import batch_rows_for_budget as walk_batch_rows
from boundary_cli.settings import cfg_path

log = logging.getLogger(__name__)

CHUNK_FORMAT = 2  # 2: logits, label change rate and conductance features kept in the chunk
COST_FIELDS = ("forwards", "backwards", "seconds", "samples")


@dataclass
class Measured:
    """Per-sample values {name: (N,) array} (``conductance``: (N, D)), the cost of each kind of work
    {kind: {forwards, backwards, seconds, samples}}, and notes for run.json."""

    values: dict[str, np.ndarray]
    costs: dict[str, dict[str, float]]
    notes: dict[str, object] = field(default_factory=dict)


def bands(n: int, block: int, channels: int) -> list[DCTBlock]:
    """The lowest (offset 0) and highest (offset n - block) diagonal DCT blocks of n x n images."""
    if block > n:
        raise BoundaryError(f"experiment.band_block={block} is larger than the {n}x{n} images")
    return [DCTBlock(0, block, channels * block * block), DCTBlock(n - block, block, channels * block * block)]


def _add_cost(costs: dict[str, dict[str, float]], kind: str, values) -> None:
    acc = costs.setdefault(kind, dict.fromkeys(COST_FIELDS, 0.0))
    for name, v in zip(COST_FIELDS, values):
        acc[name] += float(v)


def find_meta_network(ctx: RunContext):
    """The stored classification meta-network for ``ctx.model``'s family on this dataset, as
    (network, layers, path), or (None, a plain sentence saying why there is none)."""
    name = str(ctx.cfg.model.name)
    found = stored_classifier(cfg_path(ctx.cfg, "cache_dir"), ctx.data.name, name)
    if found is None:
        return None, (f"no stored meta-network for a {name} zoo on {ctx.data.name}: run experiment=meta_network "
                      f"dataset={ctx.data.name} model={name} (same cache_dir) first")
    net, layers, path = found
    example = ctx.data.test_x[:2].to(ctx.device)
    try:
        feats = tap_features(ctx.model, example, layers)
    except ValueError as exc:
        return None, f"the stored meta-network {path} reads layers {layers} that model={name} lacks ({exc})"
    dims = [feats[n].flatten(1).shape[1] for n in layers]
    want = [m.in_features for m in net.embed]
    if dims != want:
        return None, f"the stored meta-network {path} reads activations of widths {want}; model={name} gives {dims}"
    return (net, layers, path), None


def measure(ctx: RunContext, images: Tensor, labels: Tensor, chosen: Tensor, wanted: set[str],
            meta=None) -> Measured:
    """Every wanted signal for the images ``images[chosen]`` (labels: the given labels of all
    ``images``, read by the loss and the weight-space distance against the label), chunk by chunk
    (cached), and the cost of each kind of work. ``meta``: (network, layers, path) of
    :func:`find_meta_network` when ``meta_network`` is wanted."""
    e, data = ctx.cfg.experiment, ctx.data
    c, (h, w) = data.channels, data.image_size
    model = ctx.model
    need_df = bool(wanted & {"deepfool_full", "deepfool_low", "deepfool_high", "tight_margin"})
    if need_df and h != w:
        raise BoundaryError(f"the DeepFool band signals need square images; {data.name} is {h}x{w}")
    params = deepfool_params(e, data.value_range)
    rparams = refine_params(e)
    blocks = bands(w, int(e.band_block), c) if need_df else []
    need_refine = "tight_margin" in wanted
    need_noise = "noise_ratio" in wanted
    need_walks = bool(wanted & {"flip_distance", "multiple_hits"})
    need_lcr = bool(wanted & {"lcr", "p_both"})
    need_cond = bool(wanted & {"p_cond", "p_both"})
    wparams = walk_params(e.walk, data.value_range)
    kc = min(params.candidates, data.num_classes)
    example = images[:1].to(ctx.device)
    walk_rows = walk_batch_rows(model, example, ctx.memory_budget) if need_walks else 0
    batch_rows = batch_rows_for_budget(model, example, kc, ctx.memory_budget) if need_df else 0
    g = e.gaussian
    noise = noise_draws(int(g.count), (c, h, w), int(g.seed)) if need_noise else None
    param_stack = {k: v.detach().unsqueeze(0) for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    costs: dict[str, dict[str, float]] = {}
    notes: dict[str, object] = {}

    mutants = []
    if need_lcr:
        mutants, _, acc, attempts, threshold, seconds = accepted_mutants(ctx, data.test_x, data.test_y)
        if len(mutants) < int(e.mutants.n_mutants):
            raise BoundaryError(f"only {len(mutants)} of experiment.mutants.n_mutants={e.mutants.n_mutants} mutants "
                                f"passed acceptance in {attempts} attempts (accuracy on the {len(data.test_y)} test "
                                f"images > {threshold:.4f}); lower experiment.mutants.gamma or accept_ratio, or raise "
                                f"max_attempts")
        # acceptance is done once per run (cached); its cost is spread over the run's samples
        _add_cost(costs, "mutant_acceptance", [(attempts + 1) * len(data.test_y), 0, seconds, len(chosen)])
        notes["mutants"] = dict(accepted=len(mutants), attempts=attempts, accept_threshold=round(threshold, 6),
                                test_accuracy=round(acc, 6))
    cond_layers = layer_names(model, e.conductance.layers, "experiment.conductance.layers",
                              with_input=False) if need_cond else []
    baseline = None
    if need_cond:
        if e.conductance.baseline == "mean":
            if len(data.train_y) == 0:
                raise BoundaryError("experiment.conductance.baseline=mean needs a training split; use zero")
            baseline = data.train_x.mean(dim=0).to(ctx.device)
        else:
            baseline = torch.zeros_like(images[0]).to(ctx.device)
        notes["conductance_layers"] = cond_layers

    def compute(x: Tensor, progress: Callable[[int], None]) -> Computed:
        out: dict[str, Tensor] = {}
        cost: dict[str, list[float]] = {}
        t0 = time.perf_counter()
        with torch.no_grad():
            logits = model(x)
        out.update({k: v.cpu() for k, v in confidence_scores(logits).items()})
        out["logits"] = logits.float().cpu()
        out["prediction"] = logits.argmax(1).cpu()
        cost["logits"] = [len(x), 0, time.perf_counter() - t0]
        if need_df:
            t0 = time.perf_counter()
            res = deepfool_subspaces(model, x, blocks, params, include_full=True, batch_rows=batch_rows,
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
            rob = noise_robustness(model, param_stack, x.unsqueeze(0), noise, scale=float(g.scale),
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
        if need_lcr:
            t0 = time.perf_counter()
            mp = predict_mutants(model, mutants, x, budget_bytes=ctx.memory_budget)
            out["lcr"] = label_change_rate(mp, logits.argmax(1)).float().cpu()
            cost["mutants"] = [len(mutants) * len(x), 0, time.perf_counter() - t0]
        if need_cond:
            t0 = time.perf_counter()
            n_steps = int(e.conductance.n_steps)
            cond = layer_conductance(model, x, cond_layers, baseline=baseline, n_steps=n_steps)
            out["conductance"] = torch.cat([cond[n].flatten(1) for n in cond_layers], 1).float().cpu()
            # integrated gradients: n_steps + 1 path points forward, the n_steps after the baseline backward
            cost["conductance"] = [(n_steps + 1) * len(x), n_steps * len(x), time.perf_counter() - t0]
        for kind, (f, b, s) in cost.items():
            out[f"cost_{kind}"] = torch.tensor([f, b, s, len(x)], dtype=torch.float64)
        progress(len(x))
        return Computed(out, int(sum(v[0] for v in cost.values())), int(sum(v[1] for v in cost.values())))

    chunk_wanted = sorted(wanted - {"weight_distance", "weight_distance_label", "meta_network", "p_cond", "p_both",
                                    "loss"} | ({"lcr"} if need_lcr else set()) | ({"conductance"} if need_cond else set()))
    key = dict(signals=chunk_wanted, bands=[[b.offset, b.block] for b in blocks], **params.key(),
               refine=rparams.key() if need_refine else None,
               noise=OmegaConf.to_container(g) if need_noise else None,
               walk=wparams.key() if need_walks else None,
               mutants=[m.seed for m in mutants] if need_lcr else None,
               mutant_operator=[str(e.mutants.operator), float(e.mutants.gamma)] if need_lcr else None,
               conductance=dict(layers=cond_layers, baseline=str(e.conductance.baseline),
                                n_steps=int(e.conductance.n_steps)) if need_cond else None)
    chunks = list(chosen.split(int(e.chunk_size)))
    run = ctx.cached_chunks("signals", chunks, compute, fmt=CHUNK_FORMAT, params=key, rows=len,
                            load=lambda idx: images[idx].to(ctx.device), unit="sample", desc="signals")
    values = {k: run.cat(k).numpy() for k in run.parts[0] if not k.startswith("cost_")}
    for part in run.parts:
        for k, v in part.items():
            if k.startswith("cost_"):
                _add_cost(costs, k[len("cost_"):], v.tolist())
    given = labels[chosen]
    if "loss" in wanted:
        values["loss"] = torch.nn.functional.cross_entropy(torch.from_numpy(values["logits"]), given.long(),
                                                           reduction="none").numpy()
    names = chosen_parameters(model, e.weights.params) if wanted & {"weight_distance", "weight_distance_label"} else []
    for signal, against, kind in (("weight_distance", "prediction", "weights"),
                                  ("weight_distance_label", "label", "weights_label")):
        if signal in wanted:
            wrun, wvalues = weight_distances(ctx, images, labels, chosen, int(e.chunk_size), weight_params(e), names,
                                             against, "auto", desc=f"weight-space distance ({against})")
            values[signal] = wvalues["distance"]
            for part in wrun.parts:  # chunks stored before their cost was kept with them read nan
                f, b, s = part["cost"].tolist() if "cost" in part else (float("nan"),) * 3
                _add_cost(costs, kind, [f, b, s, len(part["distance"])])
    if "meta_network" in wanted:
        net, layers, path = meta
        t0 = time.perf_counter()
        feats = {n: [] for n in layers}
        for idx in chunks:
            got = tap_features(model, images[idx].to(ctx.device), layers)
            for n in layers:
                feats[n].append(got[n].flatten(1).float().cpu())
        values["meta_network"] = predict_meta(net, [torch.cat(feats[n]) for n in layers]).numpy()
        _add_cost(costs, "meta_network", [len(chosen), 0, time.perf_counter() - t0, len(chosen)])
        notes["meta_network"] = str(path)
    return Measured(values, costs, notes)
