"""``model=torchvision``: any classifier of ``torchvision.models`` with one of its weights enums (or
none: random initialisation, trained here like our own models).

The weights' ``transforms()`` end in a Normalize: its resize, crop and interpolation become the data
transform of the datasets decoded per batch, its mean and std the model's normalisation layer, and
nothing is normalised twice (the data transform never normalises). Published weights are read from
torch's hub cache (``$TORCH_HOME/hub/checkpoints``), downloaded when absent and online.
"""

from __future__ import annotations

import os
import pickle
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision.models as tv_models
from torch import nn

from boundary_cli.errors import BoundaryError
from boundary_cli.models.zoo import (
    ZooPreprocessing,
    unknown_name,
    weights_unavailable,
    with_taps,
)

DEFAULT_WEIGHTS = "DEFAULT"


def _name(arch: Any) -> str:
    name = str(arch.get("model_name") or "")
    valid = tv_models.list_models(module=tv_models)  # the classifiers only (not detection, segmentation, ...)
    if name not in valid:
        if not name:
            raise BoundaryError("model=torchvision needs model.arch.model_name, e.g. model.arch.model_name=resnet50 "
                                "(any name of torchvision.models.list_models(module=torchvision.models))")
        raise unknown_name("torchvision classifier", name, valid, "torchvision.models.list_models(module=torchvision.models)")
    return name


def weights_enum(arch: Any) -> tv_models.WeightsEnum | None:
    """The weights ``model.weights`` names (``DEFAULT`` when unset: torchvision's best) for the model,
    or None for a model without published weights; an unknown tag lists the model's tags."""
    name = _name(arch)
    try:
        enum = tv_models.get_model_weights(name)
    except (KeyError, ValueError):
        return None
    tag = str(arch.get("weights") or DEFAULT_WEIGHTS)
    members = list(enum.__members__)
    if tag not in members:
        raise BoundaryError(f"torchvision {name} has no weights {tag!r}; valid: {', '.join(members)}")
    return enum[tag]


def model_id(arch: Any) -> str:
    """The classifier's torchvision name (the tables' ``torchvision:<id>``)."""
    return _name(arch)


def weights_tag(arch: Any) -> str:
    """The enum member the weights resolve to (``DEFAULT`` spelled out, e.g. ``IMAGENET1K_V2``)."""
    weights = weights_enum(arch)
    return weights.name if weights is not None else "none"


def preprocessing(arch: Any) -> ZooPreprocessing:
    """Resize, crop, interpolation, mean and std of the weights' ``transforms()`` (the DEFAULT weights'
    when none are asked for: the input the architecture was made for); ImageNet's 256/224 bilinear and
    statistics for a model without published weights."""
    weights = weights_enum(arch)
    if weights is None:
        return ZooPreprocessing((224, 224), 256, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    t = weights.transforms()
    crop = t.crop_size[0] if isinstance(t.crop_size, list | tuple) else t.crop_size
    resize = t.resize_size[0] if isinstance(t.resize_size, list | tuple) else t.resize_size
    return ZooPreprocessing((int(crop), int(crop)), int(resize), t.interpolation.value,
                            tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std))


def torchvision_model(model_name: str, in_channels: int, num_classes: int, image_size: tuple[int, int],
                      pretrained: bool = False, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(model_name, weights=..., num_classes=...)`` for RGB images
    (B, 3, H, W) -> logits (B, num_classes); published weights with ``pretrained`` (tag ``weights``,
    DEFAULT when unset), whose class count must equal the dataset's. Default taps by the zoo's rule
    (layer1..4 of a ResNet, the pools of a VGG, ...). Raises BoundaryError for an unknown name (near
    matches), a grey-scale dataset, a class count the weights lack, or weights not to be had."""
    arch = dict(model_name=model_name, weights=weights)
    name = _name(arch)
    if in_channels != 3:
        raise BoundaryError(f"torchvision {name} takes RGB images (3 channels); the dataset has {in_channels}: "
                            f"pick an RGB dataset, or model=timm (its in_chans adapts the first convolution)")
    if not pretrained:
        return with_taps(tv_models.get_model(name, weights=None, num_classes=num_classes, **kwargs))
    chosen = weights_enum(arch)
    if chosen is None:
        raise BoundaryError(f"torchvision {name} has no published weights; set model.pretrained=false")
    n_weights = len(chosen.meta.get("categories") or [])
    if n_weights and n_weights != num_classes:
        raise BoundaryError(f"the weights {name} {chosen.name} classify {n_weights} classes, the dataset has "
                            f"{num_classes}; measure them on data with those classes (e.g. dataset=imagenet) or "
                            f"set model.pretrained=false")
    net = tv_models.get_model(name, weights=None, num_classes=n_weights or num_classes, **kwargs)
    net.load_state_dict(published_state_dict(chosen, f"torchvision {name} {chosen.name}"))
    return with_taps(net)


def published_state_dict(weights: tv_models.WeightsEnum, what: str) -> dict[str, torch.Tensor]:
    """The state dict of torchvision ``weights`` from the hub cache (downloaded when absent), read with
    ``weights_only=True``; offline and absent, one line naming the file's place and its URL."""
    expected = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))
    try:
        return weights.get_state_dict(progress=False, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:  # URLError is an OSError
        raise weights_unavailable(f"the published weights of {what}", exc, expected,
                                  f"it is downloaded from {weights.url} when online; copy it there, or pass a state "
                                  f"dict with model.checkpoint=PATH and model.pretrained=false") from None
