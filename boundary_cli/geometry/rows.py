"""Batched per-row work shared by DeepFool, the walks and the detectors: the state of the rows in
flight, how many rows fit a memory budget, and a scope in which backward passes reach the input only.

The batched algorithms keep a pool of rows in flight: a finished row leaves the pool and a pending
one takes its place. :class:`RowState` holds the per-row tensors of that pool so that refilling and
retiring are one call each, whatever the algorithm keeps per row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import TypeVar

import torch
from torch import Tensor, nn

S = TypeVar("S", bound="RowState")


@dataclass
class RowState:
    """Per-row tensors of the rows in flight; subclass it with one field per quantity.

    Every field is a tensor whose leading dimension is the row, the same length for all fields, or
    None for a quantity the run does not use (left None by every method).
    """

    def columns(self) -> dict[str, Tensor]:
        """The fields that hold tensors, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def __len__(self) -> int:
        return int(next(iter(self.columns().values())).shape[0])

    def extend(self: S, new: S) -> None:
        """Append the rows of ``new`` (same type, same fields set) after the current ones."""
        for name, t in self.columns().items():
            setattr(self, name, torch.cat([t, getattr(new, name)]))

    def keep(self, idx: Tensor) -> None:
        """Keep only the rows ``idx`` ((k,) int64 positions or a (len,) bool mask), in that order."""
        for name, t in self.columns().items():
            setattr(self, name, t[idx])

    def take(self: S, idx: Tensor) -> S:
        """A new state holding the rows ``idx`` (positions or mask); this one is left as it is."""
        return replace(self, **{name: t[idx] for name, t in self.columns().items()})


@contextmanager
def input_gradients_only(model: nn.Module) -> Iterator[None]:
    """Freeze the parameters for the duration so backward passes compute input gradients only.

    Restores every parameter's ``requires_grad`` afterwards; nothing about the model changes.
    Refuses a model in training mode: with batch statistics, samples in a batch interact and the
    batched gradients would not be per-sample gradients.
    """
    if model.training:
        raise ValueError("DeepFool needs the model in eval mode (call model.eval()): in training mode "
                         "BatchNorm and dropout make rows of a batch depend on each other")
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def rows_for_budget(model: nn.Module, example: Tensor, buffers_per_row: int, budget_bytes: int,
                    max_rows: int = 4096) -> int:
    """How many rows of an input-gradient algorithm fit in ``budget_bytes``.

    Measures the tensors autograd saves in one forward of ``example`` (1, C, H, W) and adds
    ``buffers_per_row`` input-sized buffers per row (iterates, gradients, the copies made when
    rows join or leave). Returns a count in [1, ``max_rows``].
    """
    per_row = saved_bytes_per_row(model, example) + buffers_per_row * example[0].numel() * example.element_size()
    return int(max(1, min(max_rows, budget_bytes // per_row)))


def saved_bytes_per_row(model: nn.Module, example: Tensor) -> float:
    """Bytes autograd saves per sample in a forward of ``example`` (1, C, H, W) with input gradients."""
    saved = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    x = example.repeat(2, *([1] * (example.ndim - 1))).requires_grad_(True)
    with input_gradients_only(model), torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return saved / 2
