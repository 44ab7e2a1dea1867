"""Shared fixtures: isolated cache and data folders, tiny dataset trees, and a helper to run the CLI
in a subprocess exactly as a user types it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_data import write_mnist_tree

TESTS = Path(__file__).parent
_SCRIPT = Path(sys.executable).parent / "boundary"  # the console script pip installed
BOUNDARY = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "boundary_cli"]


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory) -> Path:
    """A cache shared by every test that uses the default digits model (trained once per session)."""
    return tmp_path_factory.mktemp("cache_digits")


@pytest.fixture(scope="session")
def fake_fashion(tmp_path_factory) -> dict[str, Path]:
    """A tiny Fashion-MNIST tree in the real IDX format (300 train / 60 test) and its own cache."""
    root = tmp_path_factory.mktemp("fake_fashion")
    write_mnist_tree(root / "data", folder="FashionMNIST", n_train=300, n_test=60, seed=0)
    return {"data": root / "data", "cache": root / "cache"}


def cli_env(cache: Path, data: Path | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ, BOUNDARY_CACHE_DIR=str(cache), TQDM_DISABLE="1", HYDRA_FULL_ERROR="0",
               PYTHONPATH=str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("BOUNDARY_DATA_DIR", None)
    if data is not None:
        env["BOUNDARY_DATA_DIR"] = str(data)
    env.update(extra)
    return env


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The ``error: ...`` lines a failed run wrote to stderr (a clear failure writes exactly one)."""
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def boundary(*args: str, cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    """Run ``boundary ARGS`` in a subprocess from ``cwd``; with ``check`` a failure shows its output."""
    proc = subprocess.run([*BOUNDARY, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"boundary {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
