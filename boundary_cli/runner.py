"""From a composed config to written results: seed, device, data, model (trained once, cached),
the experiment, and every output file.

This is the only module besides the CLI that reads the config; what it builds is handed to the
experiment as a :class:`RunContext`.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from boundary_cli.cache import ChunkStore, model_hash
from boundary_cli.data.images import ImageData
from boundary_cli.data.lazy import is_lazy
from boundary_cli.data.variants import apply_variant, check_variant, normalization_stats
from boundary_cli.errors import BoundaryError
from boundary_cli.experiments import EXPERIMENTS
from boundary_cli.experiments.context import ExperimentOutput, RunContext
from boundary_cli.experiments.shards import shard_of
from boundary_cli.models.build import build_network, normalization_spec
from boundary_cli.models.checkpoint import load_weights
from boundary_cli.models.normalize import Classifier, Normalize
from boundary_cli.io import (
    write_csv,
    write_figure,
    write_json,
    write_npy,
    write_text,
)
from boundary_cli.reporting.metadata import run_metadata
from boundary_cli.training.evaluation import evaluate
from boundary_cli.training.optimizer_state import named_optimizer_state
from boundary_cli.training.store import CheckpointStore

log = logging.getLogger(__name__)

STORE_FORMAT = 2  # bump when stored weights stop matching what the code builds (2: flipped data normalised
#                  with the unflipped statistics for every dataset; Adam recipes keep their optimizer state)


def user_cache_dir() -> str:
    """The user's cache folder for boundary: ``$XDG_CACHE_HOME/boundary`` or ``~/.cache/boundary``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "boundary")


OmegaConf.register_new_resolver("boundary_user_cache", user_cache_dir, replace=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; explicit names are checked."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BoundaryError(f"unknown device={name!r}; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BoundaryError(f"device={name} but no CUDA GPU is available here; use device=cpu or device=auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BoundaryError(f"device={name} but only {torch.cuda.device_count()} GPU(s) are visible")
    elif device.type != "cpu":
        raise BoundaryError(f"unsupported device={name!r}; valid: auto, cpu, cuda, cuda:N")
    return device


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process (glibc only): no mmap for big blocks, no trimming.

    By default glibc hands every large block back to the OS when it is freed, so each DeepFool
    iteration re-touched hundreds of MB of fresh pages (~70k page faults per iteration for LeNet at
    500 rows, a third of its time). Returns whether the allocator was tuned.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**30))
    except (OSError, AttributeError):
        return False


def shard_device(name: str, shard_index: int, shard_count: int) -> str:
    """``device=auto`` for one of several shards on a machine with several GPUs: ``cuda:<index % GPUs>``,
    so the local launcher's jobs each take their own GPU. Any other case: ``name`` unchanged."""
    if str(name) != "auto" or shard_count < 2 or not torch.cuda.is_available():
        return str(name)
    n_gpus = torch.cuda.device_count()
    return f"cuda:{shard_index % n_gpus}" if n_gpus > 1 else str(name)


def prepare_device(name: str, *, tune_allocator: bool = True) -> torch.device:
    """Resolve ``name`` and set the process up for it: the current CUDA device, the allocator on CPU.

    No precision flag is touched (torch's defaults stay): TF32 is scoped where it is asked for, see
    :mod:`boundary_cli.geometry.precision` and ``experiment.deepfool.tf32``."""
    device = resolve_device(name)
    if device.type == "cuda":
        if device.index is not None:
            torch.cuda.set_device(device)
    elif tune_allocator:
        tune_cpu_allocator()
    return device


def memory_budget(device: torch.device) -> int:
    """Bytes one batch of work may use: half the free GPU memory, or a quarter of the available RAM
    (at most 4 GiB: on CPU larger batches buy no speed)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.5 * free)
    available = 8 * 2**30
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(min(4 * 2**30, 0.25 * available))


def cfg_path(cfg: DictConfig, key: str) -> Path:
    """``paths.<key>`` as an absolute path (``~`` expanded, relative to the launch directory)."""
    return Path(str(cfg.paths[key])).expanduser().absolute()


def _instantiate(node: DictConfig, what: str, **kwargs: Any) -> Any:
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, BoundaryError):
            raise cause from None
        raise BoundaryError(f"could not build the {what}: {' '.join(str(cause or exc).split())}") from exc


def load_dataset(cfg: DictConfig) -> ImageData:
    """The raw dataset (pixels in [0, 1]) through the loader the dataset config names; with
    ``dataset.train_first=n`` only the first n training images, in file order (the
    Decision-Flip-Experiments reference trains on the first 45,000 of CIFAR-10's 50,000)."""
    data = _instantiate(cfg.dataset.loader, f"dataset {cfg.dataset.name}", data_dir=cfg_path(cfg, "data_dir"),
                        cache_dir=cfg_path(cfg, "cache_dir"), download=bool(cfg.dataset.download))
    first = cfg.dataset.get("train_first")
    if first is None:
        return data
    if isinstance(first, bool) or not isinstance(first, int) or not 1 <= first <= len(data.train_y):
        raise BoundaryError(f"dataset.train_first must be a number of training images in 1..{len(data.train_y)} "
                            f"({data.name}), or null for all; got {first!r}")
    return replace(data, train_x=data.train_x[:first], train_y=data.train_y[:first])


def build_model(cfg: DictConfig, data: ImageData) -> Classifier:
    """The configured architecture behind a normalisation layer, in channels_last memory format
    (tensor cores on CUDA; on CPU oneDNN's convolutions ran ~30% faster for LeNet on 2 cores, training
    and DeepFool alike). Loaded weights keep that format.

    ``model.normalization``: ``dataset`` (the dataset's statistics, see normalization_stats), ``pixel_mean``
    (mean = the per-pixel mean image (C, H, W) of data.train_x, std = 1: the lcr reference's input pipeline,
    which training=lcr_adam selects), ``none`` (the network normalises itself) or explicit
    ``{mean: [...], std: [...]}``.
    """
    net = build_network(cfg.model.arch, data.channels, data.num_classes, data.image_size, name=str(cfg.model.name))
    spec = normalization_spec(cfg.model.get("normalization", "dataset"))
    if spec == "dataset":
        mean, std = normalization_stats(data, cfg.dataset.get("mean"), cfg.dataset.get("std"))
    elif spec == "pixel_mean":
        if is_lazy(data.train_x) or data.train_x.shape[0] == 0:
            raise BoundaryError(f"model.normalization=pixel_mean needs the training images of {data.name} in memory "
                                f"to take their mean image; use model.normalization=dataset or explicit mean/std")
        mean, std = data.train_x.mean(dim=0), torch.ones(data.channels)
    elif spec is None:
        mean, std = torch.zeros(data.channels), torch.ones(data.channels)
    else:
        mean, std = (torch.tensor(v, dtype=torch.float32) for v in spec)
        if mean.shape != (data.channels,) or std.shape != (data.channels,):
            raise BoundaryError(f"model.normalization mean/std need {data.channels} values (one per channel), "
                                f"got {list(spec[0])} / {list(spec[1])}")
    return Classifier(Normalize(mean, std), net).to(memory_format=torch.channels_last)


def weights_identity(cfg: DictConfig) -> dict[str, Any]:
    """What determines trained weights: dataset (with variant), model, training recipe and seed.

    Paths, download and integrity switches, devices and experiment settings are left out, so they
    never cause a retrain.
    """
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    for key in ("download", "check_integrity", "subspaces", "root", "adversarial_epsilon"):
        dataset.pop(key, None)
    for key in ("system_dir", "check_integrity", "root", "workers"):
        dataset["loader"].pop(key, None)
    if dataset["variant"] != "low_pass":
        dataset.pop("low_pass", None)
    if dataset.get("train_first") is None:  # all training images: the key of stores made before the option
        dataset.pop("train_first", None)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("checkpoint", None)
    if model.get("normalization", "dataset") == "dataset":  # the default: keeps the keys of earlier stores
        model.pop("normalization", None)
    training = OmegaConf.to_container(cfg.training, resolve=True)
    for key in ("min_accuracy", "save_epochs", "save_optimizer"):
        training.pop(key, None)
    return dict(format=STORE_FORMAT, dataset=dataset, model=model, training=training, seed=int(cfg.seed))


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
                 epoch: int | None = None) -> tuple[Classifier, dict[str, Any], Any]:
    """The model in eval mode on ``device``: from ``model.checkpoint``, from the store, or trained
    now (and stored, with a snapshot at every epoch of ``training.save_epochs``).

    ``epoch`` asks for the weights after that many epochs of the configured run (None: the final
    ones). With ``training.save_optimizer`` the optimizer's state is kept beside every stored set of
    weights (snapshots included; a stored entry without it is trained again) and the provenance's
    ``optimizer_state`` names its file. Returns (model, provenance for run.json, training curve or None).
    """
    pretrained = bool(cfg.model.arch.get("pretrained", False))
    if cfg.model.checkpoint or pretrained:
        what = "model.checkpoint" if cfg.model.checkpoint else "model.pretrained=true"
        if epoch is not None:
            raise BoundaryError(f"epoch {epoch} of a training run asked for, but {what} gives one set of "
                                f"weights; leave it unset to use the checkpoint store")
        model = build_model(cfg, data)  # a pretrained architecture loads its published weights here
        if cfg.model.checkpoint:
            path = Path(str(cfg.model.checkpoint)).expanduser()
            load_weights(model.net, path, arch=str(cfg.model.name))
            source = dict(source="file", path=str(path.resolve()))
        else:
            source = dict(source="torchvision", weights="published ImageNet weights")
        model.to(device).eval()
        return model, dict(source, test_accuracy=test_accuracy(model, data, device)), None

    if len(data.train_y) == 0:
        raise BoundaryError(f"dataset={data.name} has no training images here, so no model can be trained on it; "
                            f"give the weights with model.checkpoint=PATH"
                            f"{' or model.pretrained=true' if 'pretrained' in cfg.model.arch else ''}")
    final, snapshots = snapshot_epochs(cfg, epoch)
    epoch = final if epoch is None else int(epoch)
    identity = weights_identity(cfg)
    store = CheckpointStore(cfg_path(cfg, "cache_dir") / "checkpoints")
    wanted = _snapshot_identity(identity, epoch, final)
    keep_optimizer = bool(cfg.training.get("save_optimizer", False))
    stored = store.load(wanted)
    if stored is not None and keep_optimizer and stored.optimizer_path is None:
        log.info("stored checkpoint %s has no optimizer state (training.save_optimizer=true); training again",
                 stored.path)
        stored = None
    if stored is not None:
        model = build_model(cfg, data)
        try:
            model.load_state_dict(stored.state_dict)
        except RuntimeError:
            log.warning("stored checkpoint %s does not fit the model; training again", stored.path)
            stored = None
        else:
            log.info("model: %s (cached, epoch %d, test accuracy %.4f)", stored.path, epoch,
                     stored.meta["test_accuracy"])
            return (model.to(device).eval(),
                    dict(source="store", path=str(stored.path), key=store.key(wanted), epoch=epoch,
                         test_accuracy=stored.meta["test_accuracy"],
                         optimizer_state=str(stored.optimizer_path) if stored.optimizer_path else None),
                    stored.curve)

    recipe = _instantiate(cfg.training.recipe, f"training recipe {cfg.training.name}")
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
                       dict(test_accuracy=acc, epoch=done, trained_on=str(device)), None, state)
            kept[done] = (sd, acc)
            log.info("model: kept the weights of epoch %d (test accuracy %.4f)", done, acc)

    curve = recipe.fit(model, data, seed=int(cfg.seed), device=device, progress=progress, on_epoch=keep_snapshot)
    seconds = time.perf_counter() - start
    acc = float(curve["test_accuracy"].iloc[-1])
    path = store.save(identity, model.state_dict(), dict(test_accuracy=acc, train_seconds=round(seconds, 2),
                                                         epoch=final, trained_on=str(device)), curve,
                      final_optimizer or None)
    log.info("model: trained in %.1f s, test accuracy %.4f, stored at %s", seconds, acc, path)
    if epoch != final:
        sd, acc = kept[epoch]
        model.load_state_dict(sd)
        path = store.path(wanted)
    optimizer_path = path.with_suffix(".optim.pt") if keep_optimizer else None
    return model.eval(), dict(source="trained", path=str(path), key=store.key(wanted), epoch=epoch,
                              test_accuracy=acc, train_seconds=round(seconds, 2),
                              optimizer_state=str(optimizer_path) if optimizer_path else None), curve


def _write_outputs(out_dir: Path, out: ExperimentOutput) -> None:
    for name, table in out.tables.items():
        write_csv(out_dir / f"{name}.csv", table)
    for name, array in out.arrays.items():
        write_npy(out_dir / f"{name}.npy", array)
    for name, fig in out.figures.items():
        write_figure(out_dir / f"{name}.png", fig)


def execute(cfg: DictConfig, out_dir: str | Path, overrides: list[str] | None = None,
            progress: bool | None = None) -> dict[str, Any]:
    """Run the configured experiment and write its results into ``out_dir``.

    Every check that can fail on user input runs before anything is written; results are written
    atomically at the end. Returns the contents of ``run.json``.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    meta = run_metadata(config)
    name = cfg.experiment.name
    if name not in EXPERIMENTS:
        raise BoundaryError(f"unknown experiment {name!r}; valid: {', '.join(sorted(EXPERIMENTS))}")
    experiment = EXPERIMENTS[name]
    experiment.validate(cfg)
    check_variant(cfg.dataset.variant, cfg.dataset.low_pass.bandwidth, cfg.dataset.low_pass.mode)
    shard_index, shard_count = shard_of(cfg)
    if shard_count > 1 and not getattr(experiment, "SHARDS", False):
        raise BoundaryError(f"experiment={name} cannot be sharded (shard.count={shard_count}); "
                            f"experiments that can: {', '.join(sorted(k for k, m in EXPERIMENTS.items() if getattr(m, 'SHARDS', False)))}")
    device = prepare_device(shard_device(cfg.device, shard_index, shard_count))
    log.info("device: %s", device)

    raw = load_dataset(cfg)
    if is_lazy(raw.test_x) and not getattr(experiment, "LAZY_DATA", False):
        raise BoundaryError(f"experiment={name} needs a dataset held in memory with a training split; "
                            f"dataset={raw.name} is decoded per batch and serves "
                            f"{', '.join(sorted(k for k, m in EXPERIMENTS.items() if getattr(m, 'LAZY_DATA', False)))}")
    data = apply_variant(raw, cfg.dataset.variant, cfg.dataset.low_pass.bandwidth, cfg.dataset.low_pass.mode)
    epochs = experiment.model_epochs(cfg) if hasattr(experiment, "model_epochs") else [None]
    obtained = [obtain_model(cfg, data, device, progress, epoch=e) for e in epochs]
    model, provenance, _ = obtained[0]
    curve = next((c for _, _, c in obtained if c is not None), None)
    min_acc = cfg.training.get("min_accuracy")
    if min_acc is not None and provenance["test_accuracy"] is not None and provenance["test_accuracy"] < float(min_acc):
        log.warning("model test accuracy %.4f is below training.min_accuracy=%s: margins of a poor model "
                    "say little about the task", provenance["test_accuracy"], min_acc)

    overrides = [o for o in (overrides or []) if not o.lstrip("+~").startswith("hydra")]
    identity = dict(dataset=str(cfg.dataset.name), variant=str(cfg.dataset.variant), model=str(cfg.model.name),
                    training=("checkpoint" if cfg.model.checkpoint else "pretrained"
                              if cfg.model.arch.get("pretrained", False) else str(cfg.training.name)), seed=int(cfg.seed),
                    overrides=" ".join(overrides))
    ctx = RunContext(cfg=cfg, data=data, raw_test_x=raw.test_x, model=model, model_id=model_hash(model),
                     device=device, identity=identity, chunks=ChunkStore(cfg_path(cfg, "cache_dir") / "chunks"),
                     memory_budget=memory_budget(device), progress=progress,
                     snapshots={e: (m, p) for e, (m, p, _) in zip(epochs, obtained)})
    out = experiment.run(ctx)

    _write_outputs(out_dir, out)
    if curve is not None:
        write_csv(out_dir / "training.csv", curve)
    write_text(out_dir / "config_resolved.yaml", OmegaConf.to_yaml(config))
    info = dict(meta, experiment=name, identity=identity, device=str(device),
                test_accuracy=provenance["test_accuracy"], model=provenance,
                **({"models": [p for _, p, _ in obtained]} if len(obtained) > 1 else {}),
                wall_time_s=round(time.perf_counter() - start, 3), **out.stats)
    write_json(out_dir / "run.json", info)
    log.info("results: %s", out_dir)
    return info
