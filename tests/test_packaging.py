"""A non-editable install carries its configs: the wheel's boundary_cli.conf is found via pkg://."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here builds or installs the wheel with pip in a subprocess

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out),
                           str(REPO)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(proc.stdout + proc.stderr)
    return next(out.glob("boundary_cli-*.whl"))


def test_wheel_holds_every_package_and_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in (REPO / "boundary_cli").rglob("__init__.py"):
        assert str(pkg.relative_to(REPO)) in names, pkg
    for yaml in (REPO / "conf").rglob("*.yaml"):
        assert "boundary_cli/conf/" + str(yaml.relative_to(REPO / "conf")) in names, yaml


def test_installed_wheel_runs_from_anywhere(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=str(target))
    where = subprocess.run([sys.executable, "-c", "import boundary_cli; print(boundary_cli.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target))
    out = subprocess.run([sys.executable, "-m", "boundary_cli", "run", "--cfg", "job", "dataset=mnist"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, check=True).stdout
    assert "name: mnist" in out and "load_mnist" in out
    info = subprocess.run([sys.executable, "-m", "boundary_cli", "run", "--info", "searchpath"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=True).stdout
    assert "pkg://boundary_cli.conf" in info
