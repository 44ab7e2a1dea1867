"""Build the configured network from its ``model.arch`` node, and read ``model.normalization``."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from boundary_cli.errors import BoundaryError

DATA_PARAMETERS = ("in_channels", "num_classes", "image_size")
NORMALIZATION_FORMS = ("dataset", "pixel_mean", "none", "zoo", "{mean: [...], std: [...]}")
NAMED_NORMALIZATIONS = ("dataset", "pixel_mean", "none", "zoo")


def build_network(arch: DictConfig | dict, in_channels: int, num_classes: int,
                  image_size: tuple[int, int], name: str | None = None) -> nn.Module:
    """Instantiate ``arch`` (a node with ``_target_``) as the bare network for images (B, in_channels, H, W),
    (H, W) = ``image_size``, giving logits (B, num_classes).

    Each of ``in_channels``, ``num_classes`` and ``image_size`` is passed only when the target's signature names
    that parameter and the node does not set it, so targets taking ``**kwargs`` (``torchvision.models.resnet50``
    with ``num_classes`` set in the node) or only some of them work too. Raises BoundaryError, naming the target,
    when it cannot be found or called, or does not build an ``nn.Module`` (and ``name``, the model's config
    name, when given).
    """
    node = arch if isinstance(arch, DictConfig) else OmegaConf.create(dict(arch))
    target = node.get("_target_")
    what = f"model {name} ({target})" if name else f"model.arch {target}"
    if not target:
        raise BoundaryError("model.arch has no _target_; set model.arch._target_ to a function or class that builds "
                            "the network (e.g. boundary_cli.models.resnet.resnet50)")
    try:
        build = instantiate(node, _partial_=True)  # resolves and authorises the target without calling it
    except InstantiationException as exc:
        raise BoundaryError(f"could not build {what}: {_one_line(exc.__cause__ or exc)}") from None
    data = {"in_channels": in_channels, "num_classes": num_classes, "image_size": tuple(image_size)}
    named = _named_parameters(build.func)
    extra = {k: v for k, v in data.items() if k in named and k not in build.keywords}
    try:
        net = build(**extra)
    except BoundaryError:
        raise
    except Exception as exc:  # noqa: BLE001 - the target's own argument checks raise TypeError, ValueError, ...
        raise BoundaryError(f"could not build {what}: {type(exc).__name__}: {_one_line(exc)}") from None
    if not isinstance(net, nn.Module):
        raise BoundaryError(f"model.arch {target} built a {type(net).__name__}, not a torch.nn.Module; point "
                            f"model.arch._target_ at a function or class that returns the network")
    return net


def normalization_spec(spec: Any) -> tuple[list[float], list[float]] | None | str:
    """Read ``model.normalization``: "dataset" -> "dataset" (the dataset's per-channel mean/std); "pixel_mean" ->
    "pixel_mean" (subtract the per-pixel mean image of the training set, divide by nothing: the lcr reference's
    Keras input pipeline); "zoo" -> "zoo" (a zoo model's own statistics: see
    boundary_cli.models.zoo); "none" -> None (identity: the network normalises itself); ``{mean: [...], std: [...]}``
    -> (mean, std), two lists of C floats (one per channel, std > 0). Raises BoundaryError listing the valid forms
    for anything else."""
    if isinstance(spec, str) and spec.strip().lower() in NAMED_NORMALIZATIONS:
        return None if spec.strip().lower() == "none" else spec.strip().lower()
    if isinstance(spec, Mapping | DictConfig) and set(spec.keys()) == {"mean", "std"}:
        mean, std = _floats(spec["mean"]), _floats(spec["std"])
        if mean and std and len(mean) == len(std) and all(s > 0 for s in std):
            return mean, std
    raise BoundaryError(f"model.normalization={_shown(spec)} is not valid; use one of: {' | '.join(NORMALIZATION_FORMS)}"
                        f" (mean and std: lists of one number per channel, std > 0)")


def _named_parameters(target: Any) -> set[str]:
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return set()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _floats(value: Any) -> list[float] | None:
    if isinstance(value, ListConfig):
        value = OmegaConf.to_container(value)
    if isinstance(value, str) or not isinstance(value, Sequence):
        return None
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in value):
        return None
    return [float(v) for v in value]


def _shown(spec: Any) -> str:
    if isinstance(spec, DictConfig | ListConfig):
        spec = OmegaConf.to_container(spec)
    return " ".join(repr(spec).split())[:120]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
