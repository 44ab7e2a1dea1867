"""Load a saved state dict (hold-me-tight / kuangliu / torchvision / robustness-library layouts, torch.save or
safetensors files) into a bare network, with one-line errors."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from boundary_cli.errors import BoundaryError

WRAPPER_KEYS = ("net", "state_dict", "model")
ROBUSTNESS_DROPPED = ("attacker.", "normalizer.")  # the attacker's copy of the net, the normaliser's mean/std
MAX_LISTED = 8


def load_weights(net: nn.Module, path: str | Path, arch: str | None = None) -> None:
    """Copy the weights stored at ``path`` into ``net`` (the bare architecture, not the Classifier), strictly.

    Accepts a plain state dict (hold-me-tight, torchvision), one wrapped under "net", "state_dict" or "model"
    (kuangliu saves ``{"net": sd, "acc": ..., "epoch": ...}``; a wrapper holding tensors wins over one that does
    not), keys prefixed "module." (DataParallel), a full Classifier state dict ("normalize.*" ignored, "net."
    stripped) and a MadryLab robustness-library checkpoint (``{"model": sd, "optimizer": ..., "epoch": ...}`` with
    keys "module.model.*" kept and stripped, and "module.attacker.*" and "module.normalizer.*" dropped: the
    Classifier's Normalize layer normalises). Every tensor must match the model's key and shape; only BatchNorm
    ``num_batches_tracked`` counters (absent from checkpoints of PyTorch < 0.4.1, unused in eval mode) may be
    missing. ``arch`` names the model in error messages (default: the class name). Raises BoundaryError with a
    one-line message when the file is missing, unreadable, not a state dict, or does not fit.
    """
    arch = arch or type(net).__name__
    path = Path(path)
    if not path.is_file():
        raise BoundaryError(
            f"checkpoint file {path} {'is a directory' if path.is_dir() else 'does not exist'}; "
            f"model.checkpoint must point at a state dict file "
            f"(saved with torch.save(model.state_dict(), path))"
        )
    state = _adapt_keys(_read_state_dict(path), net)
    model_state = net.state_dict()
    problems = _mismatches(state, model_state)
    if problems:
        raise BoundaryError(f"checkpoint {path} does not fit model {arch}: {problems}")
    for key, value in model_state.items():
        if key not in state:  # only num_batches_tracked gets here (see _mismatches)
            state[key] = value
    net.load_state_dict(state, strict=True)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        with warnings.catch_warnings():  # a corrupt file can make the unpickler warn before it fails
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a bad file (UnpicklingError, EOFError, ...)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise BoundaryError(
                f"checkpoint {path} holds pickled Python objects ({found.group(1)}; e.g. a whole model saved with "
                f"torch.save(model)), not a state dict; save model.state_dict() instead"
            ) from None
        unpickler = re.search(r"WeightsUnpickler error: ([^\n]*)", str(exc))
        detail = (unpickler.group(1) if unpickler else (str(exc).splitlines() or [""])[0]).strip()[:120]
        raise BoundaryError(
            f"cannot read checkpoint {path}: it is not a file written by torch.save "
            f"({type(exc).__name__}{': ' + detail if detail else ''})"
        ) from None
    for _ in range(3):  # unwrap e.g. {"net": sd, "acc": ...}, possibly nested
        if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
            inner = [obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
            if not inner:
                break
            obj = next((m for m in inner if _is_tensor_dict(m)), inner[0])
    if not isinstance(obj, Mapping):
        raise BoundaryError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    if not obj:
        raise BoundaryError(f"checkpoint {path} holds an empty dict, not a state dict")
    if not _is_tensor_dict(obj):
        keys = [str(k) for k in obj if not (isinstance(k, str) and isinstance(obj[k], Tensor))]
        raise BoundaryError(
            f"checkpoint {path} holds a dict that is not a state dict (entries that are not named tensors: "
            f"{_listed(keys)}) and has no state dict under {', '.join(repr(k) for k in WRAPPER_KEYS)}"
        )
    return dict(obj)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    """A ``.safetensors`` file (timm's and the Hugging Face hub's format): tensors only, no pickle."""
    try:
        from safetensors.torch import load_file
    except ModuleNotFoundError:
        raise BoundaryError(f"checkpoint {path} is a .safetensors file; reading it needs the safetensors package "
                            f"(pip install safetensors; timm installs it)") from None
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError, OSError, ...
        raise BoundaryError(f"cannot read checkpoint {path}: not a safetensors file ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:120]})") from None
    if not state:
        raise BoundaryError(f"checkpoint {path} holds no tensors")
    return dict(state)


def _is_tensor_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _adapt_keys(state: dict[str, Tensor], net: nn.Module) -> dict[str, Tensor]:
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own_keys = net.state_dict().keys()
    is_classifier = any(k.startswith("net.") for k in state) and not any(k.startswith("net.") for k in own_keys)
    if is_classifier:
        state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    is_robustness = any(k.startswith("model.") for k in state) and not any(k.startswith("model.") for k in own_keys)
    if is_robustness:  # other keys stay, to be reported as unexpected
        state = {k.removeprefix("model."): v for k, v in state.items() if not k.startswith(ROBUSTNESS_DROPPED)}
    return state


def _mismatches(state: dict[str, Tensor], model_state: dict[str, Tensor]) -> str:
    missing = [k for k in model_state if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in model_state]
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(model_state[k].shape)}"
        for k, v in state.items() if k in model_state and v.shape != model_state[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_listed(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_listed(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches ({len(shapes)}): {_listed(shapes)}")
    return "; ".join(parts)


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")
