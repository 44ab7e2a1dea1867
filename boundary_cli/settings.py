"""Reading a composed config: its paths, the objects its nodes build, the lock timeout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from boundary_cli.errors import BoundaryError
from boundary_cli.locks import DEFAULT_LOCK_TIMEOUT, LOCK_TIMEOUT_KEY


def cfg_path(cfg: DictConfig, key: str) -> Path:
    """``paths.<key>`` as an absolute path (``~`` expanded, relative to the launch directory)."""
    return Path(str(cfg.paths[key])).expanduser().absolute()


def instantiate_node(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)``; a failure is one BoundaryError line naming ``what``
    (a BoundaryError raised by the target passes through unchanged)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, BoundaryError):
            raise cause from None
        raise BoundaryError(f"could not build the {what}: {' '.join(str(cause or exc).split())}") from exc


def lock_timeout(cfg: DictConfig) -> float | None:
    """``cache.lock_timeout``: seconds a job waits for another one making the same cache entry (None: no
    limit); the default when the config has no such key."""
    value = OmegaConf.select(cfg, LOCK_TIMEOUT_KEY, default=DEFAULT_LOCK_TIMEOUT)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise BoundaryError(f"{LOCK_TIMEOUT_KEY} must be a number of seconds >= 0, or null for no limit; got {value!r}")
    return float(value)
