"""What the three model zoos (``model=timm``, ``model=torchvision``, ``model=robustbench``) share: the
preprocessing their published weights expect, the identity a run records, the one rule for their
default layer taps, near-match suggestions for unknown names, and the one-line error for published
weights that cannot be had.

A zoo model is a bare network like ours: it takes images in [0, 1] pixel units behind the
Classifier's Normalize layer, so the zoo's mean and std go into that layer (``model.normalization:
zoo``) and never into the data transform; its resize, crop and interpolation drive the transform of
the datasets decoded per batch (imagenet, image_folder), see :func:`apply_zoo_preprocessing`.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from boundary_cli.errors import BoundaryError

ZOO_SOURCES = ("timm", "torchvision", "robustbench")
_MODULES = dict(timm="boundary_cli.models.timm_zoo", torchvision="boundary_cli.models.torchvision_zoo",
                robustbench="boundary_cli.models.robustbench_zoo")
_STAGE = re.compile(r"^(layer|block|stage|stages|features|dense|trans)[._]?\d+$")


@dataclass(frozen=True)
class ZooPreprocessing:
    """What a zoo's weights expect of their input: ``input_size`` (H, W) after the transform,
    ``resize`` (the shorter side before a centre crop; None: resize straight to ``input_size``;
    ``"crop"``: centre crop only), ``interpolation`` (a torchvision InterpolationMode name), and the
    per-channel ``mean`` and ``std`` the network was trained on (None: the network normalises
    itself, as RobustBench's models do)."""

    input_size: tuple[int, int]
    resize: int | str | None
    interpolation: str
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


def zoo_source(cfg: DictConfig) -> str | None:
    """``timm``, ``torchvision`` or ``robustbench`` for a zoo model option, None for our own models."""
    source = cfg.model.get("source")
    return str(source) if source in ZOO_SOURCES else None


def zoo_module(source: str) -> Any:
    """The module that builds models of ``source``; a missing optional package is one line naming the
    extra that installs it."""
    try:
        return importlib.import_module(_MODULES[source])
    except ModuleNotFoundError as exc:
        extra = "robustbench" if source == "robustbench" else "timm" if source == "timm" else None
        hint = f"pip install 'boundary-cli[{extra}]'" if extra else "pip install torchvision"
        raise BoundaryError(f"model={source} needs the {exc.name} package, which is not installed: {hint}") from None


def zoo_preprocessing(cfg: DictConfig) -> ZooPreprocessing | None:
    """The preprocessing of the configured zoo model (None for our own models); computed from the zoo's
    own records (timm's pretrained config, torchvision's weights enum, RobustBench's model table),
    without building the network or fetching weights, once per arch node (every model build asks)."""
    source = zoo_source(cfg)
    if source is None:
        return None
    return _preprocessing(source, json.dumps(OmegaConf.to_container(cfg.model.arch, resolve=True), sort_keys=True))


@functools.lru_cache(maxsize=32)
def _preprocessing(source: str, arch_json: str) -> ZooPreprocessing:
    return zoo_module(source).preprocessing(json.loads(arch_json))


def published(cfg: DictConfig) -> bool:
    """Whether the configured weights come from elsewhere (published weights or a file), not from
    training here (for any model; for a zoo model the zoo's statistics then normalise)."""
    return bool(cfg.model.get("checkpoint")) or bool(cfg.model.arch.get("pretrained", False))


def apply_zoo_preprocessing(cfg: DictConfig) -> DictConfig:
    """For a zoo model with ``model.data_config=true`` and a dataset decoded per batch (its loader takes
    ``image_size`` and ``resize``: imagenet, image_folder), set the loader's size, resize and
    interpolation to the zoo's (a copy of ``cfg``; other configs come back unchanged). Datasets held in
    memory (CIFAR, MNIST, ...) keep their size: the model takes what they hold. Unknown zoo names fail
    here, before the dataset is read."""
    prep = zoo_preprocessing(cfg)  # also checks the zoo's names before any data is read
    loader = cfg.dataset.get("loader")
    if prep is None or not bool(cfg.model.get("data_config", False)) or loader is None or "image_size" not in loader:
        return cfg
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.dataset.loader.image_size = list(prep.input_size)
        cfg.dataset.loader.resize = prep.resize
        cfg.dataset.loader.interpolation = prep.interpolation
    return cfg


def zoo_identity(cfg: DictConfig) -> dict[str, str]:
    """The zoo model's identity for the tables and run.json: ``model`` (``source:id``, e.g.
    ``timm:resnet50``, ``robustbench:L2/Engstrom2019Robustness``) and ``training`` (how its weights came:
    ``pretrained:<tag>``, ``checkpoint:<first 12 hex digits of the file's sha256>``, or the training
    recipe's name when it is trained here)."""
    module = zoo_module(str(cfg.model.source))
    if cfg.model.get("checkpoint"):
        training = f"checkpoint:{file_sha256(cfg.model.checkpoint)[:12]}"
    elif bool(cfg.model.arch.get("pretrained", False)):
        training = f"pretrained:{module.weights_tag(cfg.model.arch)}"
    else:
        training = str(cfg.training.name)
    return dict(model=f"{cfg.model.source}:{module.model_id(cfg.model.arch)}", training=training)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a weights file (hex), read once per file version (path, size, mtime); a missing
    file is one line."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise BoundaryError(f"checkpoint file {path} does not exist; model.checkpoint must point at a weights file")
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_taps(net: nn.Module) -> tuple[str, ...]:
    """The default tap layers of a zoo network, by the one naming rule (module names relative to the
    bare network): timm's ``feature_info`` modules where the model declares them (its own contract
    for feature stages); else the top-level stages named like ``layer1``, ``block2``, ``stages.3``;
    else the max-pools inside ``features`` (VGG, AlexNet), else the children of ``features``
    (DenseNet, EfficientNet, MobileNet); else none (``input`` alone)."""
    names = {name for name, _ in net.named_modules() if name}
    info = getattr(net, "feature_info", None)  # timm: a list of dicts (a FeatureInfo with .info for features_only)
    modules = [d.get("module") for d in getattr(info, "info", info or [])]
    if modules and all(isinstance(m, str) and m in names for m in modules):
        return tuple(dict.fromkeys(modules))
    top = [name for name, _ in net.named_children()]
    stages = [n for n in top if _STAGE.match(n)]
    if not stages:
        for parent in ("stages", "blocks", "layers"):
            child = getattr(net, parent, None)
            if isinstance(child, nn.Sequential | nn.ModuleList):
                stages = [f"{parent}.{n}" for n, _ in child.named_children()]
                break
    if stages:
        return tuple(stages)
    features = getattr(net, "features", None)
    if isinstance(features, nn.Sequential):
        pools = [f"features.{n}" for n, m in features.named_children() if isinstance(m, nn.MaxPool2d)]
        return tuple(pools or (f"features.{n}" for n, _ in features.named_children()))
    return ()


def with_taps(net: nn.Module) -> nn.Module:
    """``net`` with its ``tap_layers`` (see :func:`stage_taps`) set on the instance, for the layerwise
    experiments and conductance."""
    net.tap_layers = stage_taps(net)
    return net


def unknown_name(what: str, name: str, valid: Iterable[str], listing: str) -> BoundaryError:
    """One line for an unknown zoo name with its near matches (difflib over the zoo's own list: timm's
    list_models patterns are wildcards, not fuzzy) and where the whole list is."""
    valid = list(valid)
    near = difflib.get_close_matches(name, valid, n=6, cutoff=0.6) or \
        difflib.get_close_matches(name.lower(), [v.lower() for v in valid], n=6, cutoff=0.5)
    shown = f"; near matches: {', '.join(near)}" if near else ""
    return BoundaryError(f"unknown {what} {name!r}{shown} ({len(valid)} in all: {listing})")


def weights_unavailable(what: str, exc: BaseException, where: str, fallback: str) -> BoundaryError:
    """One line for published weights that are neither in their cache nor downloadable (offline):
    what failed, where the file must lie, and how else to give the weights."""
    detail = " ".join(str(exc).split())[:160]
    return BoundaryError(f"cannot load {what} ({type(exc).__name__}: {detail}); offline, the file must lie in "
                         f"{where}; {fallback}")
