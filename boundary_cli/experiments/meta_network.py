"""experiment=meta_network: can a second network read from a model's activations whether its prediction
is right, and how robust it is to noise? (activation_analysis, METHODS.md §4, and where it was
optimistic, the strict protocol.)

1. The zoo: ``experiment.zoo.size`` points of the LeNet-5 grid (training/zoo.py), drawn seeded,
   trained many at a time and kept in the checkpoint store (training/zoo_store.py); members with test
   accuracy below ``zoo.min_accuracy`` are dropped (zoo.csv counts them).
2. Pairs (member, test image): by default ``pairs.per_model`` seeded random images per member at its
   natural error rate; ``pairs.selection=balanced`` is the reference's first ``per_class`` right and
   wrong images per true class. With ``split_by=model`` the members and the test images are each cut
   into train/val/test parts first and a member draws its images from its own part, so no member and
   no image is on two sides; ``split_by=pair`` is the reference's random split of the pairs.
3. Labels and features, in resumable cached chunks of members: the robustness ratio and KL under
   Gaussian noise (detectors/noise_robustness.py), the tapped activations (float16), and the baselines
   (maximum softmax probability, logit margin, entropy, the input-space DeepFool margin).
4. Meta-networks (detectors/meta_network.py) per feature set (with and without the logits), backbone,
   task and seed, early-stopped on validation and stored in the cache; metrics on the test part beside
   the baselines (AUROC / AUPR of the errors; r² of a monotone fit for the robustness target).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import average_precision_score
from torch import Tensor, nn

from boundary_cli.cache import stable_hash, tensor_hash
from boundary_cli.detectors.confidence import (
    CONFIDENCE_SCORES,
    auroc,
    balanced_accuracy,
    confidence_scores,
    monotone_fit_r2,
    r2,
)
from boundary_cli.detectors.meta_network import (
    BACKBONES,
    SPLITS,
    TASKS,
    MetaNetwork,
    fit_meta,
    model_image_parts,
    predict_meta,
    split_pairs,
)
from boundary_cli.detectors.noise_robustness import noise_draws, noise_robustness
from boundary_cli.errors import BoundaryError
from boundary_cli.experiments.checks import positive_int
from boundary_cli.experiments.context import Computed, ExperimentOutput, RunContext
from boundary_cli.experiments.registry import Experiment
from boundary_cli.geometry.deepfool import DeepFoolParams, deepfool
from boundary_cli.geometry.taps import activations, resolve_layers
from boundary_cli.io import write_torch
from boundary_cli.models.lenet5 import reinit_weights
from boundary_cli.reporting.comparison import meta_network_comparison
from boundary_cli.reporting.meta_plots import curves_figure, roc_figure, scatter_figure
from boundary_cli.settings import cfg_path, lock_timeout
from boundary_cli.training.obtain import (
    build_model,
    data_fingerprint,
    input_normalization,
)
from boundary_cli.training.store import CheckpointStore
from boundary_cli.training.zoo import (
    GRID,
    GRID_SIZE,
    draw_members,
    grid_members,
    member_record,
)
from boundary_cli.training.zoo_store import obtain_zoo

log = logging.getLogger(__name__)

LOGITS = "logits"  # the feature name of the model's output, when no tap layer gives it
SELECTIONS = ("random", "balanced")
FEATURE_SETS = ("with_logits", "without_logits")
TARGETS = ("ratio", "kl")
PAIRS_FORMAT = 1
META_FORMAT = 1
BASELINES = (*CONFIDENCE_SCORES, "deepfool_margin")
# the sign that makes each baseline a score of "wrong" (higher = more likely an error)
ERROR_SIGN = dict(msp=-1.0, logit_margin=-1.0, entropy=1.0, deepfool_margin=-1.0)
BASELINE_INPUT = dict(msp="logits", logit_margin="logits", entropy="logits", deepfool_margin="input")


def _one_of(value: Any, valid: tuple[str, ...], key: str) -> None:
    if value not in valid:
        raise BoundaryError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")


def _list(value: Any, key: str) -> list:
    if isinstance(value, str) or not OmegaConf.is_list(value) and not isinstance(value, (list, tuple)):
        raise BoundaryError(f"{key} must be a list, got {value!r}")
    if not len(value):
        raise BoundaryError(f"{key} must name at least one value")
    return list(value)


def validate(cfg: DictConfig) -> None:
    e = cfg.experiment
    size = e.zoo.size
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= GRID_SIZE:
        raise BoundaryError(f"experiment.zoo.size must be a number of grid points in 1..{GRID_SIZE} (the full "
                            f"grid is {GRID_SIZE}), got {size!r}")
    zoo_model_cfg(cfg)
    _one_of(e.zoo.mode, ("stacked", "loop", "auto"), "experiment.zoo.mode")
    positive_int(e.zoo.max_stack, "experiment.zoo.max_stack")
    positive_int(e.zoo.epoch_scale, "experiment.zoo.epoch_scale")
    acc = e.zoo.min_accuracy
    if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0 <= acc <= 1:
        raise BoundaryError(f"experiment.zoo.min_accuracy must be a share in [0, 1], got {acc!r}")
    _one_of(e.pairs.selection, SELECTIONS, "experiment.pairs.selection")
    positive_int(e.pairs.per_model, "experiment.pairs.per_model")
    positive_int(e.pairs.per_class, "experiment.pairs.per_class")
    positive_int(e.pairs.min_wrong, "experiment.pairs.min_wrong")
    positive_int(e.noise.count, "experiment.noise.count")
    if isinstance(e.noise.scale, bool) or not isinstance(e.noise.scale, (int, float)) or e.noise.scale <= 0:
        raise BoundaryError(f"experiment.noise.scale must be a positive number, got {e.noise.scale!r}")
    for b in _list(e.backbones, "experiment.backbones"):
        _one_of(b, BACKBONES, "backbone (experiment.backbones)")
    for t in _list(e.tasks, "experiment.tasks"):
        _one_of(t, TASKS, "task (experiment.tasks)")
    for f in _list(e.feature_sets, "experiment.feature_sets"):
        _one_of(f, FEATURE_SETS, "feature set (experiment.feature_sets)")
    _one_of(e.split_by, SPLITS, "experiment.split_by")
    _one_of(e.regression_target, TARGETS, "experiment.regression_target")
    fr = list(e.split_fractions)
    if len(fr) != 3 or any(not isinstance(v, (int, float)) or v <= 0 for v in fr) or abs(sum(fr) - 1) > 1e-6:
        raise BoundaryError(f"experiment.split_fractions must be three positive shares (train, val, test) summing "
                            f"to 1, got {fr}")
    for s in _list(e.seeds, "experiment.seeds"):
        if isinstance(s, bool) or not isinstance(s, int):
            raise BoundaryError(f"experiment.seeds must be integers, got {s!r}")
    m = e.meta
    for key in ("width", "layers", "epochs", "patience", "batch_size", "decoder_layers"):
        positive_int(m[key], f"experiment.meta.{key}")
    if m.decoder_layers < 2:
        raise BoundaryError(f"experiment.meta.decoder_layers must be >= 2, got {m.decoder_layers}")
    positive_int(e.chunk_members, "experiment.chunk_members")
    positive_int(e.deepfool.max_iter, "experiment.deepfool.max_iter")


def zoo_grid(cfg: DictConfig) -> dict[str, tuple]:
    """The reference's grid, its epochs multiplied by ``experiment.zoo.epoch_scale`` (1: the
    reference; a small training set such as digits' 1,297 images needs more passes)."""
    scale = int(cfg.experiment.zoo.epoch_scale)
    return dict(GRID, epochs=tuple(scale * v for v in GRID["epochs"]))


def zoo_model_cfg(cfg: DictConfig) -> DictConfig:
    """The model node of the zoo's architecture: ``cfg.model`` when ``experiment.zoo.model`` names it
    (the default), else that option of the model config group as shipped."""
    name = str(cfg.experiment.zoo.model)
    if name == str(cfg.model.name):
        return cfg.model
    folder = resources.files("boundary_cli.conf").joinpath("model")
    options = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
    if name not in options:
        raise BoundaryError(f"unknown experiment.zoo.model {name!r}; valid: {', '.join(options)}")
    return OmegaConf.create(folder.joinpath(f"{name}.yaml").read_text())


def _zoo_cfg(cfg: DictConfig) -> DictConfig:
    zoo = OmegaConf.to_container(cfg, resolve=True)
    zoo["model"] = OmegaConf.to_container(zoo_model_cfg(cfg), resolve=True)
    return OmegaConf.create(zoo)


def member_builder(zcfg: DictConfig, data, device: torch.device) -> Callable[[str, int], nn.Module]:
    """``build(init, seed)``: the zoo architecture with ``torch.manual_seed(seed)`` and its weights
    re-drawn by ``init`` (biases as PyTorch draws them), in eval mode on ``device``."""
    def build(init: str, seed: int) -> nn.Module:
        torch.manual_seed(int(seed))
        model = build_model(zcfg, data)
        reinit_weights(model.net, init)
        return model.to(device).eval()

    return build


def feature_layers(model: nn.Module, spec: Any, x: Tensor) -> tuple[list[str], list[str]]:
    """(all feature names, the names without the logits). ``default``: the model's tap layers, then
    ``logits`` (the model's output) unless a tap layer already gives it (LeNet-5's fc3); a list names
    tap layers and ``logits``. The logits are the features whose activation equals the output on x."""
    names = [n for n, _ in resolve_layers(model, "default", with_input=False)] if spec == "default" else None
    if names is None:
        asked = [str(v) for v in _list(spec, "experiment.features")]
        taps = [n for n in asked if n != LOGITS]
        try:
            resolve_layers(model, taps, with_input=False) if taps else None
        except ValueError as exc:
            raise BoundaryError(f"experiment.features: {exc}, or {LOGITS} (the model's output)") from None
        names = asked
    with torch.no_grad():
        out = model(x).flatten(1).float()
    taps = [n for n in names if n != LOGITS]
    acts = activations(model, x, taps) if taps else {}
    is_logits = {n: n == LOGITS or (acts[n].shape == out.shape and torch.equal(acts[n], out)) for n in names}
    if spec == "default" and not any(is_logits.values()):
        names, is_logits = names + [LOGITS], {**is_logits, LOGITS: True}
    without = [n for n in names if not is_logits[n]]
    return names, without


def tap_features(model: nn.Module, x: Tensor, names: list[str]) -> dict[str, Tensor]:
    """{name: (N, D_name)} activations of the named tap layers on x (N, C, H, W), ``logits`` the output."""
    taps = [n for n in names if n != LOGITS]
    acts = activations(model, x, taps) if taps else {}
    if LOGITS in names:
        with torch.no_grad():
            acts[LOGITS] = model(x).flatten(1).float()
    return acts


def select_pairs(pred: Tensor, y: Tensor, eligible: Tensor, selection: str, per_model: int, per_class: int,
                 seed: int) -> Tensor:
    """Indices (S,) of the test images one member is measured on, among ``eligible`` (N,) bool.

    ``random``: ``per_model`` drawn with a generator seeded with ``seed`` (all eligible ones when
    fewer), so the pairs keep the member's own error rate; ``balanced`` (the reference): in test-set
    order, the first ``per_class`` right and the first ``per_class`` wrong images of every true class
    (a member that is too good or too bad ends short)."""
    idx = eligible.nonzero().squeeze(1)
    if selection == "random":
        pick = torch.randperm(len(idx), generator=torch.Generator().manual_seed(int(seed)))[:per_model]
        return idx[pick.sort().values]
    right = pred[idx] == y[idx]
    keep = []
    for c in y.unique().tolist():
        in_c = y[idx] == c
        keep += [idx[in_c & right][:per_class], idx[in_c & ~right][:per_class]]
    return torch.cat(keep).sort().values


@torch.no_grad()
def _bytes_per_image(model: nn.Module, x: Tensor) -> int:
    """Bytes one image (x: (1, C, H, W)) holds in a forward of ``model``: the input and the outputs of
    every leaf module (what a batched no-grad forward keeps alive at its peak, at most)."""
    total = [x.numel() * x.element_size()]

    def hook(_m, _i, out):
        if isinstance(out, Tensor):
            total.append(out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return sum(total)


def _label_chunk(ctx: RunContext, build, entries, images: list[Tensor], names: list[str], noise: Tensor,
                 scale: float, dparams: DeepFoolParams) -> Computed:
    """Labels, features and baselines of the pairs of a few members (entries, their image indices)."""
    test_x, dev = ctx.data.test_x, ctx.device
    template = build("default", 0)
    params = {k: torch.stack([e.state[k] for e in entries]).to(dev) for k, _ in template.named_parameters()}
    buffers = {k: b for k, b in template.named_buffers()}
    width = max(len(i) for i in images)
    padded = torch.stack([test_x[torch.cat([i, i[:1].expand(width - len(i))])] for i in images]).to(dev)
    per_image = _bytes_per_image(template, padded[0, :1])
    draws = max(1, min(len(noise), int(ctx.memory_budget // (2 * per_image * len(images) * width))))
    rob = noise_robustness(template, params, padded, noise, scale=scale, buffers=buffers, draws_per_call=draws)
    out: dict[str, list[Tensor]] = {k: [] for k in ("prediction", "ratio", "kl", "deepfool_margin",
                                                   "deepfool_converged", *CONFIDENCE_SCORES, *names)}
    forwards = sum(len(i) for i in images) * (len(noise) + 1)
    backwards = 0
    for j, (entry, idx) in enumerate(zip(entries, images)):
        s = len(idx)
        template.load_state_dict(entry.state)
        x = padded[j, :s]
        feats = tap_features(template, x, names)
        with torch.no_grad():
            logits = template(x)
        for k, v in confidence_scores(logits).items():
            out[k].append(v.cpu())
        res = deepfool(template, x, dparams, keep_perturbation=False)
        forwards, backwards = forwards + int(res.n_forward), backwards + int(res.n_backward)
        out["deepfool_margin"].append(res.margin.cpu())
        out["deepfool_converged"].append(res.converged.cpu())
        out["prediction"].append(rob.prediction[j, :s].cpu())
        out["ratio"].append(rob.ratio[j, :s].float().cpu())
        out["kl"].append(rob.kl[j, :s].float().cpu())
        for n in names:
            out[n].append(feats[n].half().cpu())
    return Computed({k: torch.cat(v) for k, v in out.items()}, forwards=forwards, backwards=backwards)


def _meta_store(ctx: RunContext) -> Path:
    return cfg_path(ctx.cfg, "cache_dir") / "meta_networks"


def _metrics(task: str, truth: np.ndarray, pred: np.ndarray, balanced: bool) -> dict[str, float]:
    """The test metrics of a predictor: r² (regression), or for the classification of correctness
    (pred = probability of 'correct') balanced accuracy, AUROC and AUPR of the errors, and plain
    accuracy only under the balanced selection (the reference's figure)."""
    if task == "regression":
        return dict(r2=r2(truth, pred))
    wrong = ~truth.astype(bool)
    return dict(balanced_accuracy=balanced_accuracy(truth, pred >= 0.5), auroc=auroc(wrong, 1 - pred),
                aupr=float(average_precision_score(wrong, 1 - pred)) if wrong.any() else float("nan"),
                accuracy=float(((pred >= 0.5) == truth.astype(bool)).mean()) if balanced else float("nan"))


def _baseline_rows(pairs: pd.DataFrame, part: np.ndarray, target: str, balanced: bool, tasks: list[str]) -> list[dict]:
    rows = []
    tr, te = part == "train", part == "test"
    correct = pairs["correct"].to_numpy()
    for b in BASELINES:
        s = pairs[b].to_numpy(dtype=float)
        if "classification" in tasks:
            err = np.nan_to_num(ERROR_SIGN[b] * s, nan=np.inf, posinf=np.finfo(float).max,
                                neginf=-np.finfo(float).max)
            wrong = ~correct[te].astype(bool)
            rows.append(dict(method=b, task="classification", features=BASELINE_INPUT[b], auroc=auroc(wrong, err[te]),
                             aupr=float(average_precision_score(wrong, err[te])) if wrong.any() else float("nan")))
        if "regression" in tasks:
            y = pairs[target].to_numpy(dtype=float)
            rows.append(dict(method=b, task="regression", features=BASELINE_INPUT[b], r2=monotone_fit_r2(s[tr], y[tr], s[te], y[te])))
    return rows


def run(ctx: RunContext) -> ExperimentOutput:
    e, data, dev = ctx.cfg.experiment, ctx.data, ctx.device
    zcfg = _zoo_cfg(ctx.cfg)
    zoo_name = str(zcfg.model.name)
    build = member_builder(zcfg, data, dev)
    template = build("default", 0)  # raises the image-size error for a model that cannot take the data
    names, without = feature_layers(template, e.features, data.test_x[:8].to(dev))
    sets = {"with_logits": names, "without_logits": without}
    for f in e.feature_sets:
        if not sets[f]:
            raise BoundaryError(f"experiment.feature_sets has {f} but experiment.features={list(names)} leaves no "
                                f"layer for it")
    grid = zoo_grid(ctx.cfg)
    try:
        members = draw_members(int(e.zoo.size), int(e.zoo.seed), grid)
    except ValueError as exc:
        raise BoundaryError(f"experiment.zoo.size: {exc}") from None
    grid_id = {m: i for i, m in enumerate(grid_members(grid))}

    # 1. the zoo
    mean, std = input_normalization(zcfg, data)
    base = dict(dataset=data_fingerprint(data), normalization=tensor_hash(mean, std),
                model=OmegaConf.to_container(zcfg.model, resolve=True))
    store = CheckpointStore(cfg_path(ctx.cfg, "cache_dir") / "checkpoints", lock_timeout=lock_timeout(ctx.cfg))
    train = (data.train_x.to(dev), data.train_y.to(dev))
    test = (data.test_x.to(dev), data.test_y.to(dev))
    start_zoo = time.perf_counter()
    with ctx.progress_bar(len(members), f"zoo ({zoo_name})", unit="model") as bar:
        zoo = obtain_zoo(store, base, members, build, train, test, mode=str(e.zoo.mode), max_stack=int(e.zoo.max_stack),
                         progress=bar.update)
    ctx.work.add("zoo", seconds=time.perf_counter() - start_zoo, rows=len(zoo))
    min_acc = float(e.zoo.min_accuracy)
    zoo_table = pd.DataFrame([dict(member=grid_id[z.member], **member_record(z.member), test_accuracy=z.test_accuracy,
                                   kept=z.test_accuracy >= min_acc, key=z.key) for z in zoo])
    kept = [z for z in zoo if z.test_accuracy >= min_acc]
    log.info("zoo: %d of %d members reach test accuracy >= %.2f", len(kept), len(zoo), min_acc)
    if len(kept) < 2:
        best = max(z.test_accuracy for z in zoo)
        raise BoundaryError(f"only {len(kept)} of {len(zoo)} zoo members reach test accuracy >= {min_acc} (best "
                            f"{best:.3f}); a meta-network needs at least 2: raise experiment.zoo.size or lower "
                            f"experiment.zoo.min_accuracy")

    # 2. pairs
    fractions = [float(v) for v in e.split_fractions]
    n_test = len(data.test_y)
    member_part, image_part = model_image_parts(np.array([grid_id[z.member] for z in kept]), np.arange(n_test),
                                                fractions, int(e.split_seed))
    image_part_t = torch.tensor([image_part[i] for i in range(n_test)])
    strict = e.split_by == "model"
    if strict and len(kept) < 3:
        raise BoundaryError(f"experiment.split_by=model holds whole members out: it needs at least 3 kept zoo members "
                            f"(train, val, test), found {len(kept)} of {len(zoo)} at test accuracy >= {min_acc}; "
                            f"raise experiment.zoo.size or lower experiment.zoo.min_accuracy")
    chosen = []
    template.eval()
    for z in kept:
        template.load_state_dict(z.state)
        with torch.no_grad():
            pred = torch.cat([template(test[0][i:i + 2048]).argmax(1).cpu() for i in range(0, n_test, 2048)])
        eligible = image_part_t == member_part[grid_id[z.member]] if strict else torch.ones(n_test, dtype=torch.bool)
        chosen.append(select_pairs(pred, data.test_y, eligible, str(e.pairs.selection), int(e.pairs.per_model),
                                   int(e.pairs.per_class), int(e.pairs.seed) * 100_003 + grid_id[z.member]))

    # 3. labels, features, baselines (cached chunks of members)
    noise = noise_draws(int(e.noise.count), tuple(data.test_x.shape[1:]), int(e.noise.seed))
    dparams = DeepFoolParams(candidates=int(e.deepfool.candidates), overshoot=float(e.deepfool.overshoot),
                             max_iter=int(e.deepfool.max_iter))
    per = int(e.chunk_members)
    groups = [list(range(lo, min(lo + per, len(kept)))) for lo in range(0, len(kept), per)]
    chunk_params = dict(scale=float(e.noise.scale), count=int(e.noise.count), noise_seed=int(e.noise.seed),
                        features=names, deepfool=dict(candidates=dparams.candidates, overshoot=dparams.overshoot,
                                                      max_iter=dparams.max_iter))
    run_chunks = ctx.cached_chunks(
        "meta_pairs", groups,
        lambda g, progress: _label_chunk(ctx, build, [kept[i] for i in g], [chosen[i] for i in g], names, noise,
                                         float(e.noise.scale), dparams),
        fmt=PAIRS_FORMAT, params=chunk_params, rows=lambda g: sum(len(chosen[i]) for i in g),
        inputs=lambda g: tuple(chosen[i] for i in g), model_id=stable_hash([kept[i].key for i in range(len(kept))]),
        desc="pairs: noise labels, features, DeepFool", unit="pair")
    member_col = np.concatenate([np.full(len(chosen[i]), grid_id[kept[i].member]) for i in range(len(kept))])
    sample_col = torch.cat(chosen).numpy()
    label = data.test_y[torch.cat(chosen)].numpy()
    pred = run_chunks.cat("prediction").numpy()
    pairs = pd.DataFrame(dict(member=member_col, sample_index=sample_col, label=label, prediction=pred,
                              correct=pred == label, ratio=run_chunks.cat("ratio").numpy(),
                              kl=run_chunks.cat("kl").numpy(),
                              **{b: run_chunks.cat(b).numpy() for b in BASELINES},
                              deepfool_converged=run_chunks.cat("deepfool_converged").numpy()))
    n_wrong = int((~pairs["correct"]).sum())
    if "classification" in e.tasks and n_wrong < int(e.pairs.min_wrong):
        raise BoundaryError(f"the {e.pairs.selection} selection found only {n_wrong} wrong predictions in "
                            f"{len(pairs)} pairs of {len(kept)} zoo members (needs at least "
                            f"{e.pairs.min_wrong}, experiment.pairs.min_wrong): use more or weaker members "
                            f"(experiment.zoo.size, experiment.zoo.min_accuracy) or drop the classification task")
    if strict:
        part = np.array(["train", "val", "test"])[[member_part[m] for m in member_col]]
    else:
        part = split_pairs(member_col, sample_col, by="pair", fractions=fractions, seed=int(e.split_seed))
    pairs["part"] = part
    feats = {n: run_chunks.cat(n) for n in names}

    # 4. meta-networks
    balanced = e.pairs.selection == "balanced"
    target = str(e.regression_target)
    truth = dict(regression=pairs[target].to_numpy(dtype=np.float32), classification=pairs["correct"].to_numpy())
    protocol = dict(split_by=str(e.split_by), selection=str(e.pairs.selection))
    rows, curves, predictions = [], [], {}
    masks = {p: torch.from_numpy(part == p) for p in ("train", "val", "test")}
    for fs in e.feature_sets:
        layers = sets[fs]
        for backbone in e.backbones:
            for task in e.tasks:
                for seed in e.seeds:
                    key = stable_hash(dict(format=META_FORMAT, pairs=run_chunks.keys, split=protocol,
                                           split_seed=int(e.split_seed), fractions=fractions, layers=layers,
                                           backbone=backbone, task=task, seed=int(seed), target=target,
                                           meta=OmegaConf.to_container(e.meta, resolve=True)))
                    fit = _fit_or_load(ctx, key, layers, feats, truth[task], masks, backbone, task, int(seed))
                    p = predict_meta(fit["net"], [feats[n][masks["test"]] for n in layers]).numpy()
                    predictions[(fs, backbone, task, int(seed))] = p
                    rows.append(dict(method=f"meta_{backbone}", backbone=backbone, task=task, features=fs,
                                     seed=int(seed), best_epoch=fit["best_epoch"],
                                     **_metrics(task, truth[task][masks["test"].numpy()], p, balanced),
                                     meta_network=str(fit["path"])))
                    curves += [dict(backbone=backbone, task=task, features=fs, seed=int(seed), **c) for c in fit["curve"]]
    rows += _baseline_rows(pairs, part, target, balanced, list(e.tasks))
    n_rows = dict(n_train=int(masks["train"].sum()), n_val=int(masks["val"].sum()), n_test=int(masks["test"].sum()))
    metrics = pd.DataFrame([dict(ctx.identity, **protocol, target=target, **r, **n_rows) for r in rows])
    for col in ("r2", "balanced_accuracy", "auroc", "aupr", "accuracy"):
        if col not in metrics:
            metrics[col] = np.nan
    metrics["best_epoch"] = metrics["best_epoch"].astype("Int64")
    curve_table = pd.DataFrame(curves)

    tables = dict(metrics=metrics, zoo=zoo_table, pairs=pairs.assign(**{k: v for k, v in ctx.identity.items()}),
                  curves=curve_table)
    title = ctx.title(f"zoo of {len(kept)} {zoo_name}, split by {e.split_by}, {e.pairs.selection} pairs")
    te = masks["test"].numpy()
    figures = dict(learning_curves=curves_figure(curve_table, title))
    if "regression" in e.tasks:
        figures["scatter"] = scatter_figure({k: v for k, v in predictions.items() if k[2] == "regression"},
                                            truth["regression"][te], target, title)
    if "classification" in e.tasks:
        base_scores = {b: np.nan_to_num(-ERROR_SIGN[b] * pairs[b].to_numpy(dtype=float)[te], posinf=1e300,
                                        neginf=-1e300) for b in BASELINES}
        figures["roc"] = roc_figure({k: v for k, v in predictions.items() if k[2] == "classification"}, base_scores,
                                    truth["classification"][te], title)
    stats = dict(meta_network=dict(zoo_members=len(zoo), kept=len(kept), pairs=len(pairs), wrong_pairs=n_wrong,
                                   features=names, without_logits=without, **n_rows))
    return ExperimentOutput(tables=tables, figures=figures, stats=stats)


def _fit_or_load(ctx: RunContext, key: str, layers: list[str], feats: dict[str, Tensor], truth: np.ndarray,
                 masks: dict[str, Tensor], backbone: str, task: str, seed: int) -> dict[str, Any]:
    """The stored meta-network under ``key``, or one trained now (early-stopped on the val part) and
    stored; ``{net, best_epoch, curve, path}``."""
    e = ctx.cfg.experiment
    m = e.meta
    path = _meta_store(ctx) / f"{key}.pt"
    dims = [feats[n].shape[1] for n in layers]
    net = MetaNetwork(dims, backbone=backbone, task=task, width=int(m.width), layers=int(m.layers), bias=bool(m.bias),
                      decoder_layers=int(m.decoder_layers))
    if path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(saved["state"])
            log.info("meta-network %s/%s/seed %d: stored (%s)", backbone, task, seed, path)
            return dict(net=net.eval(), best_epoch=int(saved["best_epoch"]), curve=saved["curve"], path=path)
        except Exception as exc:  # a damaged or older file is trained again
            log.warning("ignoring unreadable meta-network %s (%s); training again", path, exc)
    y = torch.from_numpy(np.array(truth, dtype=np.float32 if task == "regression" else np.int64))
    part = {p: ([feats[n][mk] for n in layers], y[mk]) for p, mk in masks.items() if p != "test"}
    if len(part["train"][1]) < 2 or len(part["val"][1]) < 1:
        raise BoundaryError(f"too few pairs to train a meta-network ({len(part['train'][1])} train, "
                            f"{len(part['val'][1])} val): raise experiment.zoo.size or experiment.pairs.per_model")
    lr = float(m.lr[backbone]) if OmegaConf.is_dict(m.lr) else float(m.lr)
    torch.manual_seed(seed)
    net = MetaNetwork(dims, backbone=backbone, task=task, width=int(m.width), layers=int(m.layers), bias=bool(m.bias),
                      decoder_layers=int(m.decoder_layers))
    t0 = time.perf_counter()
    fit = fit_meta(net, part["train"], part["val"], lr=lr, epochs=int(m.epochs), batch_size=int(m.batch_size),
                   patience=int(m.patience), seed=seed, device=ctx.device)
    seconds = time.perf_counter() - t0
    ctx.work.add("meta_network", seconds=seconds, rows=len(part["train"][1]) * len(fit.curve))
    log.info("meta-network %s/%s/seed %d: best epoch %d of %d (%.1f s)", backbone, task, seed, fit.best_epoch,
             len(fit.curve), seconds)
    state = {k: v.cpu() for k, v in fit.net.state_dict().items()}
    # dataset and zoo architecture: experiment=signals finds a stored meta-network for its model by them
    write_torch(path, dict(state=state, best_epoch=fit.best_epoch, curve=fit.curve, layers=layers, dims=dims,
                           backbone=backbone, task=task, meta=OmegaConf.to_container(m, resolve=True),
                           dataset=ctx.data.name, model=str(e.zoo.model)))
    return dict(net=fit.net.cpu().eval(), best_epoch=fit.best_epoch, curve=fit.curve, path=path)


def stored_classifier(cache_dir: Path, dataset: str, model: str) -> tuple[MetaNetwork, list[str], Path] | None:
    """The newest stored meta-network that classifies correctness from the activations of a ``model``
    zoo on ``dataset`` (written by this experiment under ``cache_dir/meta_networks``), as (network in
    eval mode, its feature layers, its file); None when none is stored. Files written before the
    dataset and architecture were kept with them cannot be matched and are passed over."""
    found = []
    for path in (Path(cache_dir) / "meta_networks").glob("*.pt"):
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged file is no candidate
            continue
        if saved.get("task") == "classification" and saved.get("dataset") == dataset and saved.get("model") == model:
            found.append((path.stat().st_mtime, path, saved))
    if not found:
        return None
    _, path, saved = max(found, key=lambda f: (f[0], str(f[1])))
    m = saved["meta"]
    net = MetaNetwork(list(saved["dims"]), backbone=saved["backbone"], task="classification", width=int(m["width"]),
                      layers=int(m["layers"]), bias=bool(m["bias"]), decoder_layers=int(m["decoder_layers"]))
    net.load_state_dict(saved["state"])
    return net.eval(), list(saved["layers"]), path


def own_models(cfg: DictConfig) -> dict[str, str]:
    """The run's model and training columns: the zoo's architecture, trained as a zoo."""
    return dict(model=str(cfg.experiment.zoo.model), training="zoo")


EXPERIMENT = Experiment(
    name="meta_network",
    validate=validate,
    run=run,
    tables=("metrics", "zoo", "pairs", "curves"),
    figures=("learning_curves",),
    compare=meta_network_comparison,
    own_models=own_models,
)
