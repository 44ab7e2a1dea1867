"""geometry/ and detectors/ are libraries: no module of theirs imports Hydra, OmegaConf or the layers above them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "boundary_cli"
LIBRARIES = ("geometry", "detectors")
FORBIDDEN = ("hydra", "omegaconf", "boundary_cli.runner", "boundary_cli.experiments", "boundary_cli.reporting",
             "boundary_cli.cli")


def imported_modules(source: str, module: str) -> set[str]:
    """Every module an ``import`` or ``from ... import`` anywhere in ``source`` names (functions included),
    relative imports resolved against the dotted ``module``; ``from a import b`` yields ``a`` and ``a.b``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: -node.level]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def forbidden_imports(source: str, module: str) -> list[str]:
    """The imports of ``source`` that fall in a ``FORBIDDEN`` package, sorted."""
    return sorted(m for m in imported_modules(source, module)
                  if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def library_modules() -> list[Path]:
    return sorted(p for lib in LIBRARIES for p in (PACKAGE / lib).rglob("*.py"))


@pytest.mark.parametrize("path", library_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_module_imports_nothing_above_it(path):
    module = ".".join(("boundary_cli", *path.relative_to(PACKAGE).with_suffix("").parts))
    if path.name == "__init__.py":
        module += ".__init__"  # a package's relative imports start from the package itself
    assert forbidden_imports(path.read_text(), module) == []


def test_the_libraries_hold_modules():
    assert {p.parent.name for p in library_modules()} == set(LIBRARIES)


@pytest.mark.parametrize("line", [
    "import hydra",
    "from omegaconf import DictConfig",
    "import omegaconf.errors as e",
    "from boundary_cli import runner",
    "from boundary_cli.experiments.context import RunContext",
    "from ..reporting import tables",
    "from .. import cli",
    "def f():\n    import boundary_cli.experiments",
])
def test_a_planted_import_is_caught(line):
    assert forbidden_imports(line, "boundary_cli.geometry.deepfool")


@pytest.mark.parametrize("line", [
    "import torch",
    "from boundary_cli.geometry.dct import dct_basis",
    "from . import dct",
    "from boundary_cli.errors import BoundaryError",
    "import hydrangea",
])
def test_allowed_imports_pass(line):
    assert forbidden_imports(line, "boundary_cli.geometry.deepfool") == []
