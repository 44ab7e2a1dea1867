"""``model=timm``: any ``timm.create_model`` architecture, with or without its published weights.

Published weights come from the Hugging Face hub into its cache (timm ships safetensors and loads
them as such); offline, a missing file is one line that names the hub repository and the cache. A
file of one's own is ``model.checkpoint`` (a ``.safetensors`` or ``torch.save`` state dict). The
pretrained config (input size, interpolation, crop, mean, std) is timm's ``resolve_data_config``
applied to the model's pretrained config: see :func:`preprocessing`.
"""

from __future__ import annotations

import math
from typing import Any

import timm
from timm.data import resolve_data_config
from timm.models import get_pretrained_cfg, split_model_name_tag
from torch import nn

from boundary_cli.errors import BoundaryError
from boundary_cli.models.zoo import (
    ZooPreprocessing,
    unknown_name,
    weights_unavailable,
    with_taps,
)


def _full_name(arch: Any) -> str:
    """``model_name`` with the weights tag (``model.weights``) appended in timm's spelling, ``name.tag``."""
    name = str(arch.get("model_name") or "")
    if not name:
        raise BoundaryError("model=timm needs model.arch.model_name, e.g. model.arch.model_name=resnet50 "
                            "(any name of timm.list_models())")
    base, tag = split_model_name_tag(name)
    weights = arch.get("weights")
    if weights and tag and str(weights) != tag:
        raise BoundaryError(f"model.arch.model_name={name} names the weights tag {tag!r} and model.weights={weights}"
                            f" another; give the tag once")
    _check_name(base)
    return f"{base}.{weights or tag}" if (weights or tag) else base


def _check_name(base: str) -> None:
    if not timm.is_model(base):
        raise unknown_name("timm model", base, timm.list_models(), "timm.list_models()")


def model_id(arch: Any) -> str:
    """The architecture's timm name, without the weights tag (the tables' ``timm:<id>``)."""
    return split_model_name_tag(_full_name(arch))[0]


def weights_tag(arch: Any) -> str:
    """The published weights' tag (e.g. ``a1_in1k``): model.weights, the name's tag, or timm's default."""
    cfg = get_pretrained_cfg(_full_name(arch))
    return str(cfg.tag) if cfg is not None and cfg.tag else "default"


def preprocessing(arch: Any) -> ZooPreprocessing:
    """timm's data configuration of the model's pretrained config (resolve_data_config): input size,
    interpolation, the resize that crop_pct implies (``floor(size / crop_pct)``, timm's own rule; a
    ``squash`` crop mode resizes straight to the size), mean and std."""
    full = _full_name(arch)
    pretrained_cfg = get_pretrained_cfg(full)
    args = pretrained_cfg.to_dict() if pretrained_cfg is not None else {}
    data = resolve_data_config(pretrained_cfg=args, use_test_size=False)
    _, h, w = data["input_size"]
    crop_pct, mode = float(data.get("crop_pct") or 1.0), str(data.get("crop_mode") or "center")
    resize = None if mode == "squash" else int(math.floor(min(h, w) / crop_pct))
    return ZooPreprocessing(input_size=(int(h), int(w)), resize=resize, interpolation=str(data["interpolation"]),
                            mean=tuple(float(v) for v in data["mean"]), std=tuple(float(v) for v in data["std"]))


def timm_model(model_name: str, in_channels: int, num_classes: int, image_size: tuple[int, int],
               pretrained: bool = False, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(model_name[.weights], pretrained, num_classes, in_chans, **kwargs)`` for images
    (B, in_channels, H, W) -> logits (B, num_classes). With published weights the classifier must fit
    them: their number of classes equals the dataset's (timm would otherwise put a fresh, untrained
    head on; fine-tuning is not measurement). Default taps from the model's feature_info. Raises
    BoundaryError for an unknown name (with near matches), a class count the weights do not have, or
    weights that are neither cached nor downloadable."""
    arch = dict(model_name=model_name, weights=weights)
    full = _full_name(arch)
    if pretrained:
        cfg = get_pretrained_cfg(full)
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise BoundaryError(f"timm model {full} has no published weights; set model.pretrained=false "
                                f"(train it here) or give model.checkpoint=PATH")
        if cfg.num_classes and int(cfg.num_classes) != num_classes:
            raise BoundaryError(f"the published weights of timm {full} classify {cfg.num_classes} classes, the "
                                f"dataset has {num_classes}; measure them on data with those classes (e.g. "
                                f"dataset=imagenet) or set model.pretrained=false")
    try:
        net = timm.create_model(full, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        if not pretrained:
            raise BoundaryError(f"could not build timm model {full}: {type(exc).__name__}: "
                                f"{' '.join(str(exc).split())[:200]}") from None
        raise _offline_error(full, exc) from None
    return with_taps(net)


def _offline_error(full: str, exc: BaseException) -> BoundaryError:
    from huggingface_hub.constants import HF_HUB_CACHE

    cfg = get_pretrained_cfg(full)
    repo = cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else None
    where = (f"the Hugging Face cache {HF_HUB_CACHE} (models--{repo.replace('/', '--')}; set HF_HOME or "
             f"HF_HUB_CACHE to move it)" if repo else f"{cfg.url if cfg is not None else full}")
    fetch = f"`hf download {repo}` on a machine online fills it" if repo else "download it on a machine online"
    return weights_unavailable(f"the published weights of timm {full}", exc, where,
                               f"{fetch}, or pass the file with model.checkpoint=PATH/model.safetensors and "
                               f"model.pretrained=false")
