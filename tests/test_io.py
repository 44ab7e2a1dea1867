"""Atomic file writing: whole files or none, created with the user's umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from boundary_cli.io import (  # noqa: E402
    atomic_path,
    write_csv,
    write_figure,
    write_json,
    write_npy,
    write_text,
    write_torch,
)


def write_each_kind(folder: Path) -> list[Path]:
    fig, _ = plt.subplots()
    try:
        return [write_text(folder / "a.txt", "x"), write_json(folder / "sub" / "a.json", {"a": 1}),
                write_csv(folder / "a.csv", pd.DataFrame({"a": [1]})), write_npy(folder / "a.npy", np.zeros(2)),
                write_torch(folder / "a.pt", {"a": torch.zeros(2)}), write_figure(folder / "a.png", fig)]
    finally:
        plt.close(fig)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_of_the_users_umask(tmp_path, umask, mask, mode):
    umask(mask)
    for path in write_each_kind(tmp_path):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def test_a_failed_write_leaves_neither_the_file_nor_a_temp_file(tmp_path):
    write_text(tmp_path / "kept.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "kept.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert (tmp_path / "kept.txt").read_text() == "old" and sorted(os.listdir(tmp_path)) == ["kept.txt"]


def test_round_trips(tmp_path):
    assert write_json(tmp_path / "a.json", {"a": [1, 2]}).read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    assert np.array_equal(np.load(write_npy(tmp_path / "a.npy", np.arange(3))), np.arange(3))
    assert torch.equal(torch.load(write_torch(tmp_path / "a.pt", torch.ones(2)), weights_only=True), torch.ones(2))
