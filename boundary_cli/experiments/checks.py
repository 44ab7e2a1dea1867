"""Checks of experiment config values shared by the experiments: each raises one clear
BoundaryError naming the key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import ListConfig

from boundary_cli.errors import BoundaryError
from boundary_cli.geometry.taps import resolve_layers


def positive_int(value: Any, key: str) -> int:
    """``value`` when it is an int >= 1, else BoundaryError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BoundaryError(f"{key} must be a positive integer, got {value!r}")
    return value


def nonnegative_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BoundaryError(f"{key} must be an integer >= 0, got {value!r}")
    return value


def positive_number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise BoundaryError(f"{key} must be a number > 0, got {value!r}")
    return float(value)


def one_of(value: Any, valid: Sequence[str], key: str) -> str:
    if value not in valid:
        raise BoundaryError(f"unknown {key}={value!r}; valid: {', '.join(valid)}")
    return str(value)


def int_list(value: Any, key: str, allow_all: bool = False) -> list[int] | None:
    """A list of ints (``None`` for ``all`` when allowed)."""
    if allow_all and value == "all":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if not isinstance(value, (list, tuple, ListConfig)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise BoundaryError(f"{key} must be a list of integers{' or all' if allow_all else ''}, got {value!r}")
    return [int(v) for v in value]


def classes_in_range(classes: list[int] | None, num_classes: int, key: str) -> None:
    """Every class index lies in [0, num_classes)."""
    bad = [c for c in classes or [] if not 0 <= c < num_classes]
    if bad:
        raise BoundaryError(f"{key} has class(es) {', '.join(map(str, bad))} out of range: this dataset has "
                            f"classes 0..{num_classes - 1}")


def layer_names(model: Any, value: Any, key: str, *, with_input: bool = True) -> list[str]:
    """The layer names a config value selects (``default``, ``last`` or a list, see
    :func:`~boundary_cli.geometry.taps.resolve_layers`), checked against the model."""
    try:
        return [name for name, _ in resolve_layers(model, value, with_input=with_input)]
    except ValueError as exc:
        raise BoundaryError(f"{key}: {exc}") from None
