"""``model=robustbench``: a model of the RobustBench leaderboards (CIFAR-10, CIFAR-100, ImageNet; threat
models Linf, L2, corruptions) through RobustBench's own loading code, ``robustbench.utils.load_model``.

Its weights lie in ``<model_dir>/<dataset>/<threat_model>/<name>.pt`` (downloaded there when online;
offline, the file must already be there), or in the Hugging Face cache for the entries RobustBench
serves through timm. RobustBench's models take [0, 1] inputs and normalise inside, so the model's
Normalize layer is the identity (``model.normalization: zoo``); its ImageNet entries name their own
preprocessing (Res256Crop224, Crop288, ...), which becomes the data transform, applied once.

robustbench 1.1.1 imports ``autoattack`` (AutoAttack's GitHub package), while PyPI's
``pyautoattack`` installs the same code as ``pyautoattack``: when only that is there, it stands in
under the name robustbench imports.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from typing import Any

from torch import nn
from torchvision import transforms

from boundary_cli.errors import BoundaryError
from boundary_cli.models.zoo import (
    ZooPreprocessing,
    unknown_name,
    weights_unavailable,
    with_taps,
)

DATASETS = dict(cifar10=10, cifar100=100, imagenet=1000)


def _robustbench() -> Any:
    if "autoattack" not in sys.modules:
        try:
            importlib.import_module("autoattack")
        except ModuleNotFoundError:
            try:
                sys.modules["autoattack"] = importlib.import_module("pyautoattack")
            except ModuleNotFoundError:
                raise BoundaryError("model=robustbench needs AutoAttack (robustbench imports it): "
                                    "pip install 'boundary-cli[robustbench]'") from None
    try:
        with warnings.catch_warnings():  # robustbench imports timm's deprecated module paths, pkg_resources
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            utils = importlib.import_module("robustbench.utils")
            data = importlib.import_module("robustbench.data")
    except ModuleNotFoundError as exc:
        raise BoundaryError(f"model=robustbench needs the {exc.name} package, which is not installed: "
                            f"pip install 'boundary-cli[robustbench]'") from None
    return utils, data


def _entry(arch: Any) -> tuple[str, str, str, dict]:
    """(dataset, threat model, name, its model-zoo record), each checked against RobustBench's tables."""
    utils, _ = _robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    dataset = str(arch.get("dataset") or "")
    if dataset not in DATASETS:
        raise BoundaryError(f"model=robustbench has leaderboards for {', '.join(DATASETS)}, not {dataset!r}; measure "
                            f"one of those datasets, or name the leaderboard with model.arch.dataset=... (e.g. "
                            f"imagenet for dataset=image_folder)")
    threat = str(arch.get("threat_model") or "")
    tables = utils.all_models[BenchmarkDataset(dataset)]
    threats = [t.value for t in tables]
    if threat not in threats:
        raise BoundaryError(f"RobustBench has no {threat!r} leaderboard for {dataset}; valid: {', '.join(threats)}")
    models = tables[ThreatModel(threat)]
    name = str(arch.get("model_name") or "")
    if name not in models:
        raise unknown_name(f"RobustBench {dataset}/{threat} model", name, models,
                           f"robustbench's model_zoo for {dataset}/{threat}")
    return dataset, threat, name, models[name]


def model_id(arch: Any) -> str:
    """``<threat model>/<leaderboard name>``, e.g. ``L2/Engstrom2019Robustness`` (the tables' ``robustbench:<id>``)."""
    _, threat, name, _ = _entry(arch)
    return f"{threat}/{name}"


def weights_tag(arch: Any) -> str:
    """The leaderboard the weights were published on (``cifar10``, ``cifar100``, ``imagenet``)."""
    return _entry(arch)[0]


def preprocessing(arch: Any) -> ZooPreprocessing:
    """RobustBench's own preprocessing of the entry (``robustbench.data.get_preprocessing``), read off
    its torchvision transform (Resize, CenterCrop, ToTensor), with no mean and std (the model
    normalises inside). CIFAR entries take the 32x32 images as they are."""
    _, data = _robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    dataset, threat, name, _ = _entry(arch)
    compose = data.get_preprocessing(BenchmarkDataset(dataset), ThreatModel(threat), name, None)
    return compose_preprocessing(compose, (32, 32) if dataset != "imagenet" else (224, 224))


def compose_preprocessing(compose: Any, default_size: tuple[int, int]) -> ZooPreprocessing:
    """A ZooPreprocessing that does what ``compose`` (a torchvision Compose of Resize, CenterCrop and
    ToTensor) does; a Normalize in it, or any other step, is an error (it would be applied twice or not
    at all)."""
    size, resize, interpolation, cropped = default_size, None, "bilinear", False
    for step in getattr(compose, "transforms", [compose]):
        if isinstance(step, transforms.Resize):
            interpolation = step.interpolation.value
            if isinstance(step.size, int) or len(step.size) == 1:
                resize = int(step.size if isinstance(step.size, int) else step.size[0])
            else:
                size, resize = (int(step.size[0]), int(step.size[1])), None
        elif isinstance(step, transforms.CenterCrop):
            size, cropped = (int(step.size[0]), int(step.size[1])), True
        elif not isinstance(step, transforms.ToTensor):
            raise BoundaryError(f"RobustBench preprocessing step {type(step).__name__} is not supported here "
                                f"(only Resize, CenterCrop, ToTensor)")
    if cropped and resize is None:
        resize = "crop"
    return ZooPreprocessing(size, resize, interpolation, None, None)


def weights_path(model_dir: str | Path, dataset: str, threat: str, name: str) -> Path:
    """Where RobustBench keeps (and looks for) an entry's weights: ``<model_dir>/<dataset>/<threat>/<name>.pt``."""
    return Path(model_dir).expanduser() / dataset / threat / f"{name}.pt"


def robustbench_model(model_name: str, threat_model: str, dataset: str, model_dir: str, in_channels: int,
                      num_classes: int, image_size: tuple[int, int], pretrained: bool = True) -> nn.Module:
    """The leaderboard model ``model_name`` of ``dataset``/``threat_model`` for [0, 1] images
    (B, 3, H, W) -> logits (B, num_classes), from ``robustbench.utils.load_model`` (weights from
    ``model_dir``: see :func:`weights_path`), in eval mode; ``pretrained=false`` builds the
    architecture with its random initialisation. Default taps by the zoo's rule. Raises BoundaryError
    for an unknown leaderboard, threat model or name (near matches), a dataset of another class count,
    or weights that are neither there nor downloadable."""
    arch = dict(model_name=model_name, threat_model=threat_model, dataset=dataset)
    dataset, threat, name, entry = _entry(arch)
    if in_channels != 3 or num_classes != DATASETS[dataset]:
        raise BoundaryError(f"RobustBench {dataset} models take RGB images of {DATASETS[dataset]} classes; the dataset "
                            f"has {in_channels} channel(s) and {num_classes} classes")
    if not pretrained:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return with_taps(entry["model"]().eval())
    utils, _ = _robustbench()
    path = weights_path(model_dir, dataset, threat, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            net = utils.load_model(model_name=name, model_dir=str(Path(model_dir).expanduser()), dataset=dataset,
                                   threat_model=threat)
    except Exception as exc:  # noqa: BLE001 - gdown, requests, timm and torch.load raise many types offline
        raise weights_unavailable(f"RobustBench {dataset}/{threat}/{name}", exc,
                                  f"{path} (or, for the entries served through timm, the Hugging Face cache)",
                                  "RobustBench downloads it there when online (model.arch.model_dir moves the "
                                  "folder)") from None
    return with_taps(net.eval())
