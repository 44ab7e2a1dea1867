"""boundary report: labels that show what differs between runs, and a clear error without results."""

from __future__ import annotations

import pytest

from boundary_cli.errors import BoundaryError
from boundary_cli.reporting.report import _short_labels, build_report


def test_labels_keep_only_what_differs():
    labels = {"0": "dataset=mnist dataset.variant=none model=lenet", "1": "dataset=mnist dataset.variant=flip model=lenet"}
    assert _short_labels(labels) == {"0": "dataset.variant=none", "1": "dataset.variant=flip"}
    same = {"a": "x=1", "b": "x=1"}
    assert _short_labels(same) == {"a": "a: x=1", "b": "b: x=1"}
    assert _short_labels({"only": "x=1 y=2"}) == {"only": "x=1 y=2"}


def test_no_results_is_one_clear_error(tmp_path):
    with pytest.raises(BoundaryError, match="no run results"):
        build_report(tmp_path)
    with pytest.raises(BoundaryError, match="not a directory"):
        build_report(tmp_path / "missing")
