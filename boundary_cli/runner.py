"""From a composed config to written results: device (:mod:`boundary_cli.device`), data, model
(trained once, cached: :mod:`boundary_cli.training.obtain`), the experiment, and every output file.

What it builds is handed to the experiment as a :class:`RunContext`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from boundary_cli.cache import ChunkStore, model_hash
from boundary_cli.data.images import ImageData
from boundary_cli.data.lazy import is_lazy
from boundary_cli.data.variants import apply_variant, variant_from_config
from boundary_cli.device import memory_budget, prepare_device, shard_device
from boundary_cli.errors import BoundaryError
from boundary_cli.experiments import EXPERIMENTS
from boundary_cli.experiments.context import ExperimentOutput, RunContext
from boundary_cli.experiments.shards import shard_of
from boundary_cli.io import write_csv, write_figure, write_json, write_npy, write_text
from boundary_cli.models.zoo import apply_zoo_preprocessing, zoo_identity, zoo_source
from boundary_cli.reporting.metadata import run_metadata
from boundary_cli.settings import cfg_path, instantiate_node, lock_timeout
from boundary_cli.training.obtain import obtain_model

log = logging.getLogger(__name__)


def load_dataset(cfg: DictConfig) -> ImageData:
    """The raw dataset (pixels in [0, 1]) through the loader the dataset config names; with
    ``dataset.train_first=n`` only the first n training images, in file order (the
    Decision-Flip-Experiments reference trains on the first 45,000 of CIFAR-10's 50,000)."""
    data = instantiate_node(cfg.dataset.loader, f"dataset {cfg.dataset.name}", data_dir=cfg_path(cfg, "data_dir"),
                            cache_dir=cfg_path(cfg, "cache_dir"), download=bool(cfg.dataset.download))
    first = cfg.dataset.get("train_first")
    if first is None:
        return data
    if isinstance(first, bool) or not isinstance(first, int) or not 1 <= first <= len(data.train_y):
        raise BoundaryError(f"dataset.train_first must be a number of training images in 1..{len(data.train_y)} "
                            f"({data.name}), or null for all; got {first!r}")
    return replace(data, train_x=data.train_x[:first], train_y=data.train_y[:first])


def _write_outputs(out_dir: Path, out: ExperimentOutput) -> dict[str, list[str]]:
    """Write the experiment's tables, arrays and figures; returns their names by kind for run.json
    (``boundary report`` merges the tables listed there)."""
    for name, table in out.tables.items():
        write_csv(out_dir / f"{name}.csv", table)
    for name, array in out.arrays.items():
        write_npy(out_dir / f"{name}.npy", array)
    for name, fig in out.figures.items():
        write_figure(out_dir / f"{name}.png", fig)
    return dict(tables=list(out.tables), arrays=list(out.arrays), figures=list(out.figures))


def execute(cfg: DictConfig, out_dir: str | Path, overrides: list[str] | None = None,
            progress: bool | None = None) -> dict[str, Any]:
    """Run the configured experiment and write its results into ``out_dir``.

    Every check that can fail on user input runs before anything is written; results are written
    atomically at the end. Returns the contents of ``run.json``.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    cfg = apply_zoo_preprocessing(cfg)  # a zoo model's resize/crop/interpolation decode imagenet / image_folder
    config = OmegaConf.to_container(cfg, resolve=True)
    meta = run_metadata(config)
    name = cfg.experiment.name
    if name not in EXPERIMENTS:
        raise BoundaryError(f"unknown experiment {name!r}; valid: {', '.join(sorted(EXPERIMENTS))}")
    experiment = EXPERIMENTS[name]
    experiment.validate(cfg)
    variant = variant_from_config(cfg.dataset.variant, cfg.dataset.low_pass)
    shard_index, shard_count = shard_of(cfg)
    if shard_count > 1 and not experiment.shards:
        raise BoundaryError(f"experiment={name} cannot be sharded (shard.count={shard_count}); "
                            f"experiments that can: {', '.join(sorted(k for k, m in EXPERIMENTS.items() if m.shards))}")
    device = prepare_device(shard_device(cfg.device, shard_index, shard_count))
    log.info("device: %s", device)

    raw = load_dataset(cfg)
    experiment.check_data(cfg, raw)
    if is_lazy(raw.test_x) and not experiment.lazy_data:
        raise BoundaryError(f"experiment={name} needs a dataset held in memory with a training split; "
                            f"dataset={raw.name} is decoded per batch and serves "
                            f"{', '.join(sorted(k for k, m in EXPERIMENTS.items() if m.lazy_data))}")
    data = apply_variant(raw, variant)
    epochs = experiment.model_epochs(cfg)
    modifier = experiment.modifier(cfg)
    need_aum = experiment.needs_aum(cfg)
    own = experiment.own_models(cfg) if experiment.own_models is not None else None
    obtained = [] if own is not None else [
        obtain_model(cfg, data, device, progress, epoch=e, modifier=modifier, need_aum=need_aum) for e in epochs]
    model, provenance = (obtained[0].model, obtained[0].provenance) if obtained else (None, dict(test_accuracy=None))
    curve = next((o.curve for o in obtained if o.curve is not None), None)
    min_acc = cfg.training.get("min_accuracy")
    if min_acc is not None and provenance["test_accuracy"] is not None and provenance["test_accuracy"] < float(min_acc):
        log.warning("model test accuracy %.4f is below training.min_accuracy=%s: margins of a poor model "
                    "say little about the task", provenance["test_accuracy"], min_acc)

    overrides = [o for o in (overrides or []) if not o.lstrip("+~").startswith("hydra")]
    identity = dict(dataset=str(cfg.dataset.name), variant=str(cfg.dataset.variant), model=str(cfg.model.name),
                    training=("checkpoint" if cfg.model.checkpoint else "pretrained"
                              if cfg.model.arch.get("pretrained", False) else str(cfg.training.name)), seed=int(cfg.seed),
                    overrides=" ".join(overrides))
    if zoo_source(cfg) is not None:
        identity.update(zoo_identity(cfg))
    if own is not None:
        identity.update(own)
    ctx = RunContext(cfg=cfg, data=data, raw_test_x=raw.test_x, model=model, model_id=model_hash(model) if model is not None else "",
                     device=device, identity=identity,
                     chunks=ChunkStore(cfg_path(cfg, "cache_dir") / "chunks", lock_timeout(cfg)),
                     memory_budget=memory_budget(device), progress=progress,
                     snapshots={e: (o.model, o.provenance) for e, o in zip(epochs, obtained)})
    out = experiment.run(ctx)

    written = _write_outputs(out_dir, out)
    if curve is not None:
        write_csv(out_dir / "training.csv", curve)
    write_text(out_dir / "config_resolved.yaml", OmegaConf.to_yaml(config))
    info = dict(meta, experiment=name, identity=identity, device=str(device),
                test_accuracy=provenance["test_accuracy"], model=provenance,
                **({"models": [o.provenance for o in obtained]} if len(obtained) > 1 else {}),
                wall_time_s=round(time.perf_counter() - start, 3), outputs=written, work=ctx.work.as_dict(),
                **out.stats)
    write_json(out_dir / "run.json", info)
    log.info("results: %s", out_dir)
    return info
