"""What a run records about itself: config hash, command line, versions, git commit."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import boundary_cli
from boundary_cli.cache import stable_hash

PACKAGES = ("torch", "torchvision", "numpy", "pandas", "scipy", "scikit-learn", "hydra-core", "omegaconf",
            "matplotlib")


def git_commit(path: Path | None = None) -> str | None:
    """HEAD of the git checkout holding ``path`` (the package by default), with ``+dirty`` when the
    work tree has changes; None outside a checkout or without git."""
    where = Path(path or Path(boundary_cli.__file__).parent)
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_metadata(config: dict[str, Any]) -> dict[str, Any]:
    """The provenance part of ``run.json`` for a resolved config (a plain dict)."""
    return {
        "config_hash": stable_hash(config),
        "argv": list(sys.argv),
        "version": boundary_cli.__version__,
        "git_commit": git_commit(),
        "versions": versions(),
        "host": platform.node(),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
