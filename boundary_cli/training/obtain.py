"""The model a run measures: from a checkpoint file or published weights, from the checkpoint store,
or trained now and stored (once for all jobs that need it: the store is locked while one trains).

It sits in training/, beside the store and the recipes it uses: models/ only defines architectures
and reads weight files, and never trains.

The store key (:func:`weights_identity`) is made of what reaches the weights, each taken as a whole
so that a forgotten setting can only make two models differ, never share a key: the data trained on
(hashed by content, so every dataset setting that changes it is covered and none that does not,
like paths, download and integrity switches or decoding workers, causes a retrain), the
normalisation the model is built with (also by content), the whole ``model`` node, the training
``recipe`` node (everything that trains: a setting outside it, like ``training.save_epochs``, keeps
or checks weights but never changes them), the seed, and the data modifier when there is one.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from boundary_cli.cache import tensor_hash
from boundary_cli.data.images import ImageData
from boundary_cli.data.lazy import is_lazy
from boundary_cli.data.modifier import DataModifier
from boundary_cli.data.variants import normalization_stats
from boundary_cli.errors import BoundaryError
from boundary_cli.models.build import build_network, normalization_spec
from boundary_cli.models.checkpoint import load_weights
from boundary_cli.models.normalize import Classifier, Normalize
from boundary_cli.models.zoo import (
    published,
    zoo_identity,
    zoo_preprocessing,
    zoo_source,
)
from boundary_cli.settings import cfg_path, instantiate_node, lock_timeout
from boundary_cli.training.aum import MarginRecorder
from boundary_cli.training.evaluation import evaluate
from boundary_cli.training.loop import LoopHooks
from boundary_cli.training.optimizer_state import named_optimizer_state
from boundary_cli.training.store import CheckpointStore

log = logging.getLogger(__name__)

STORE_FORMAT = 3  # bump when stored weights stop matching what the code builds (2: flipped data normalised
#                  with the unflipped statistics for every dataset; Adam recipes keep their optimizer state;
#                  3: the key is made of the data, normalisation, model and recipe as wholes, see above)


@dataclass(frozen=True)
class ObtainedModel:
    """A model in eval mode on its device, where it came from (``provenance``, for run.json: source,
    path, key, epoch, test_accuracy, ...) and its training curve (one row per epoch; None for weights
    from a file)."""

    model: Classifier
    provenance: dict[str, Any]
    curve: pd.DataFrame | None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def input_normalization(cfg: DictConfig, data: ImageData) -> tuple[Tensor, Tensor]:
    """(mean, std) the model's first layer normalises with, by ``model.normalization``: ``dataset`` (the
    dataset's statistics, see normalization_stats; each (C,)), ``pixel_mean`` (mean = the per-pixel mean
    image (C, H, W) of data.train_x, std = 1 (C,): the lcr reference's input pipeline, which
    training=lcr_adam selects), ``none`` (zeros and ones (C,): the network normalises itself) or explicit
    ``{mean: [...], std: [...]}`` (C,)."""
    spec = normalization_spec(cfg.model.get("normalization", "dataset"))
    if spec == "zoo":
        spec = _zoo_normalization(cfg, data.channels)
    if spec == "dataset":
        return normalization_stats(data, cfg.dataset.get("mean"), cfg.dataset.get("std"))
    if spec == "pixel_mean":
        if is_lazy(data.train_x) or data.train_x.shape[0] == 0:
            raise BoundaryError(f"model.normalization=pixel_mean needs the training images of {data.name} in memory "
                                f"to take their mean image; use model.normalization=dataset or explicit mean/std")
        return data.train_x.mean(dim=0), torch.ones(data.channels)
    if spec is None:
        return torch.zeros(data.channels), torch.ones(data.channels)
    mean, std = (torch.tensor(v, dtype=torch.float32) for v in spec)
    if mean.shape != (data.channels,) or std.shape != (data.channels,):
        raise BoundaryError(f"model.normalization mean/std need {data.channels} values (one per channel), "
                            f"got {list(spec[0])} / {list(spec[1])}")
    return mean, std


def _zoo_normalization(cfg: DictConfig, channels: int) -> tuple[list[float], list[float]] | None | str:
    """``model.normalization=zoo``: the zoo's mean and std for weights made elsewhere (published or a
    file), None (identity) for a zoo whose networks normalise inside (RobustBench), and the dataset's
    statistics for a zoo architecture trained here."""
    prep = zoo_preprocessing(cfg)
    if prep is None:
        raise BoundaryError(f"model.normalization=zoo is for the zoo models (model=timm, torchvision, robustbench); "
                            f"model={cfg.model.name} takes dataset | pixel_mean | none | {{mean, std}}")
    if prep.mean is None:
        return None
    if not published(cfg):
        return "dataset"
    if len(prep.mean) != channels:
        raise BoundaryError(f"the published weights of model {cfg.model.source} were trained on "
                            f"{len(prep.mean)}-channel images; the dataset has {channels}: give "
                            f"model.normalization={{mean, std}} explicitly")
    return list(prep.mean), list(prep.std)


def build_model(cfg: DictConfig, data: ImageData) -> Classifier:
    """The configured architecture behind a normalisation layer (see :func:`input_normalization`), in
    channels_last memory format (tensor cores on CUDA; on CPU oneDNN's convolutions ran ~30% faster for
    LeNet on 2 cores, training and DeepFool alike). Loaded weights keep that format."""
    net = build_network(cfg.model.arch, data.channels, data.num_classes, data.image_size, name=str(cfg.model.name))
    mean, std = input_normalization(cfg, data)
    return Classifier(Normalize(mean, std), net).to(memory_format=torch.channels_last)


def data_fingerprint(data: ImageData) -> dict[str, Any]:
    """Every field of ``data`` (name, variant, value range, classes, ...), tensors (train_x (N, C, H, W),
    train_y (N,), ...) replaced by the hash of their content: equal for two loads of the same data,
    whatever path, download or decoding setting brought them."""
    return {f.name: tensor_hash(v) if isinstance(v, Tensor) else v
            for f in fields(data) for v in [getattr(data, f.name)]}


def weights_identity(cfg: DictConfig, data: ImageData, modifier: DataModifier | None = None) -> dict[str, Any]:
    """What determines trained weights (the store key is its hash): ``data`` as trained on (already
    modified, when there is a modifier) by content, the normalisation the model is built with, the whole
    model node, the training recipe, the seed, and ``modifier``'s name and params. See the module text
    for why it is safe to leave the rest out; without a modifier the key has no modifier entry."""
    mean, std = input_normalization(cfg, data)
    identity = dict(format=STORE_FORMAT, dataset=data_fingerprint(data), normalization=tensor_hash(mean, std),
                    model=OmegaConf.to_container(cfg.model, resolve=True),
                    training=dict(name=str(cfg.training.name),
                                  recipe=OmegaConf.to_container(cfg.training.recipe, resolve=True)),
                    seed=int(cfg.seed))
    if modifier is not None:
        identity["modifier"] = modifier.key()
    return identity


def snapshot_epochs(cfg: DictConfig, epoch: int | None = None) -> tuple[int, list[int]]:
    """(final epoch of the training recipe, sorted epochs whose weights training keeps: the
    final one, ``training.save_epochs`` and ``epoch``). Raises BoundaryError for epochs the
    recipe never reaches."""
    final = int(cfg.training.recipe.get("epochs", 0) or 0)
    wanted = [int(e) for e in (cfg.training.get("save_epochs") or [])] + ([int(epoch)] if epoch is not None else [])
    bad = [e for e in wanted if not 1 <= e <= final]
    if bad:
        raise BoundaryError(f"epoch(s) {', '.join(map(str, bad))} asked for, but training={cfg.training.name} "
                            f"runs epochs 1..{final}; change training.save_epochs / the experiment's epochs "
                            f"or training.recipe.epochs")
    return final, sorted(set(wanted) | {final})


def _snapshot_identity(identity: dict[str, Any], epoch: int, final: int) -> dict[str, Any]:
    """The store key of the weights after ``epoch`` epochs of the run ``identity`` describes."""
    return identity if epoch == final else dict(identity, epoch=int(epoch))


def test_accuracy(model: nn.Module, data: ImageData, device: torch.device) -> float | None:
    """Accuracy on the whole test set, or None for a set decoded per batch (ImageNet's 50,000 images
    would be decoded once more just for this; the margin experiment reports the accuracy on the
    samples it measures instead)."""
    if is_lazy(data.test_x):
        log.info("model: test accuracy not computed over the whole %s set (decoded per batch); see "
                 "accuracy_measured in run.json", data.name)
        return None
    return evaluate(model, data.test_x, data.test_y, device=device)[1]


def obtain_model(cfg: DictConfig, data: ImageData, device: torch.device, progress: bool | None = None,
                 epoch: int | None = None, modifier: DataModifier | None = None,
                 need_aum: bool = False) -> ObtainedModel:
    """The model in eval mode on ``device``: from ``model.checkpoint`` (or published weights), from the
    store, or trained now on ``modifier.apply(data)`` (``data`` without a modifier) and stored, with a
    snapshot at every epoch of ``training.save_epochs``.

    ``epoch`` asks for the weights after that many epochs of the configured run (None: the final
    ones). With ``training.save_optimizer`` the optimizer's state is kept beside every stored set of
    weights (snapshots included; a stored entry without it is trained again) and the provenance's
    ``optimizer_state`` names its file. Training records every sample's training margins (see
    :mod:`boundary_cli.training.aum`; with a modifier that draws labels anew per epoch, the loop trains
    on those) and keeps them with the weights; the provenance's ``aum`` names that file. ``need_aum``:
    a stored entry without it (trained before it was kept) is trained again. While one job trains a
    key, other jobs that need it wait for it (at most ``cache.lock_timeout`` seconds) and then load it.
    """
    if cfg.model.checkpoint and bool(cfg.model.arch.get("pretrained", False)):
        where = " (RobustBench weights live in model.arch.model_dir)" if zoo_source(cfg) == "robustbench" else ""
        raise BoundaryError(f"model.checkpoint and model.pretrained=true both give the weights of model "
                            f"{cfg.model.name}; set model.pretrained=false to load the file{where}")
    if published(cfg):
        if modifier is not None:
            raise BoundaryError(f"a model trained on modified data ({modifier.name}) asked for, but "
                                f"{'model.checkpoint' if cfg.model.checkpoint else 'model.pretrained=true'} gives "
                                f"fixed weights; leave it unset to train with the training recipe")
        return _from_checkpoint(cfg, data, device, epoch)
    if len(data.train_y) == 0:
        raise BoundaryError(f"dataset={data.name} has no training images here, so no model can be trained on it; "
                            f"give the weights with model.checkpoint=PATH"
                            f"{' or model.pretrained=true' if 'pretrained' in cfg.model.arch else ''}")
    final, snapshots = snapshot_epochs(cfg, epoch)
    epoch = final if epoch is None else int(epoch)
    train_data = modifier.apply(data) if modifier is not None else data
    identity = weights_identity(cfg, train_data, modifier)
    store = CheckpointStore(cfg_path(cfg, "cache_dir") / "checkpoints", lock_timeout=lock_timeout(cfg))
    extra = dict(modifier=modifier.key()) if modifier is not None else {}
    found = _from_store(cfg, train_data, device, store, identity, epoch, final, extra, need_aum)
    if found is not None:
        return found
    with store.locked(identity):
        found = _from_store(cfg, train_data, device, store, identity, epoch, final, extra, need_aum)  # trained while waiting?
        if found is not None:
            return found
        labels_at = (lambda e: modifier.labels_at(data, e)) if modifier is not None and modifier.labels_at else None
        return _train_and_store(cfg, train_data, device, store, identity, epoch, final, snapshots, progress, extra,
                                labels_at)


def _from_checkpoint(cfg: DictConfig, data: ImageData, device: torch.device, epoch: int | None) -> ObtainedModel:
    """The weights of ``model.checkpoint``, or the architecture's published ones (model.pretrained=true)."""
    what = "model.checkpoint" if cfg.model.checkpoint else "model.pretrained=true"
    if epoch is not None:
        raise BoundaryError(f"epoch {epoch} of a training run asked for, but {what} gives one set of "
                            f"weights; leave it unset to use the checkpoint store")
    model = build_model(cfg, data)  # a pretrained architecture loads its published weights here
    if cfg.model.checkpoint:
        path = Path(str(cfg.model.checkpoint)).expanduser()
        load_weights(model.net, path, arch=str(cfg.model.name))
        source = dict(source="file", path=str(path.resolve()))
    elif zoo_source(cfg) is None:
        source = dict(source="torchvision", weights="published ImageNet weights")
    else:
        source = dict(source=zoo_source(cfg), weights="published")
    if zoo_source(cfg) is not None:
        source.update(zoo=zoo_source(cfg), **zoo_identity(cfg))
    model.to(device).eval()
    return ObtainedModel(model, dict(source, test_accuracy=test_accuracy(model, data, device)), None)


def _from_store(cfg: DictConfig, data: ImageData, device: torch.device, store: CheckpointStore,
                identity: dict[str, Any], epoch: int, final: int, extra: dict[str, Any],
                need_aum: bool = False) -> ObtainedModel | None:
    """The stored weights after ``epoch`` epochs of the run ``identity``, or None when there are none
    that fit (or, with training.save_optimizer, none with their optimizer state; with ``need_aum``,
    none with their training margins)."""
    wanted = _snapshot_identity(identity, epoch, final)
    stored = store.load(wanted)
    if stored is None:
        return None
    if bool(cfg.training.get("save_optimizer", False)) and stored.optimizer_path is None:
        log.info("stored checkpoint %s has no optimizer state (training.save_optimizer=true); training again",
                 stored.path)
        return None
    if need_aum and stored.aum_path is None:
        log.info("stored checkpoint %s has no training margins (needed for the area under the margin); "
                 "training again", stored.path)
        return None
    model = build_model(cfg, data)
    try:
        model.load_state_dict(stored.state_dict)
    except RuntimeError:
        log.warning("stored checkpoint %s does not fit the model; training again", stored.path)
        return None
    log.info("model: %s (cached, epoch %d, test accuracy %.4f)", stored.path, epoch, stored.meta["test_accuracy"])
    provenance = dict(source="store", path=str(stored.path), key=store.key(wanted), epoch=epoch,
                      test_accuracy=stored.meta["test_accuracy"],
                      optimizer_state=str(stored.optimizer_path) if stored.optimizer_path else None,
                      aum=str(stored.aum_path) if stored.aum_path else None, **extra)
    return ObtainedModel(model.to(device).eval(), provenance, stored.curve)


def _train_and_store(cfg: DictConfig, data: ImageData, device: torch.device, store: CheckpointStore,
                     identity: dict[str, Any], epoch: int, final: int, snapshots: list[int],
                     progress: bool | None, extra: dict[str, Any],
                     labels_at: Callable[[int], Tensor] | None = None) -> ObtainedModel:
    """Train the run ``identity`` on ``data`` (on ``labels_at(epoch)`` when given), store its final
    weights, training margins and every snapshot epoch, and return the weights after ``epoch`` epochs."""
    keep_optimizer = bool(cfg.training.get("save_optimizer", False))
    recipe = instantiate_node(cfg.training.recipe, f"training recipe {cfg.training.name}")
    seed_everything(int(cfg.seed))
    model = build_model(cfg, data).to(device)
    log.info("training %s on %s (%s, seed %d) on %s", cfg.model.name, data.name, cfg.training.name, cfg.seed, device)
    start = time.perf_counter()
    kept: dict[int, tuple[dict[str, torch.Tensor], float]] = {}
    final_optimizer: dict[str, Any] = {}

    def keep_snapshot(done: int, trained: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        wanted_here = keep_optimizer and (done == final or done in snapshots)
        state = named_optimizer_state(trained, optimizer) if wanted_here else None
        if done == final and state is not None:
            final_optimizer.update(state)
        if done in snapshots and done != final:
            _, acc = evaluate(trained, data.test_x, data.test_y, device=device)
            sd = {k: v.detach().cpu().clone() for k, v in trained.state_dict().items()}
            store.save(_snapshot_identity(identity, done, final), sd,
                       dict(test_accuracy=acc, epoch=done, trained_on=str(device)), None, state, margins.state())
            kept[done] = (sd, acc)
            log.info("model: kept the weights of epoch %d (test accuracy %.4f)", done, acc)

    margins = MarginRecorder(data.train_y)
    hooks = LoopHooks(on_batch=margins, labels_at=labels_at)
    curve = recipe.fit(model, data, seed=int(cfg.seed), device=device, progress=progress, on_epoch=keep_snapshot,
                       hooks=hooks)
    seconds = time.perf_counter() - start
    acc = float(curve["test_accuracy"].iloc[-1])
    path = store.save(identity, model.state_dict(), dict(test_accuracy=acc, train_seconds=round(seconds, 2),
                                                         epoch=final, trained_on=str(device)), curve,
                      final_optimizer or None, margins.state())
    log.info("model: trained in %.1f s, test accuracy %.4f, stored at %s", seconds, acc, path)
    wanted = _snapshot_identity(identity, epoch, final)
    if epoch != final:
        sd, acc = kept[epoch]
        model.load_state_dict(sd)
        path = store.path(wanted)
    optimizer_path = path.with_suffix(".optim.pt") if keep_optimizer else None
    provenance = dict(source="trained", path=str(path), key=store.key(wanted), epoch=epoch, test_accuracy=acc,
                      train_seconds=round(seconds, 2),
                      optimizer_state=str(optimizer_path) if optimizer_path else None,
                      aum=str(path.with_suffix(".aum.pt")), **extra)
    return ObtainedModel(model.eval(), provenance, curve)
