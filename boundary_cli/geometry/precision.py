"""Scoped float32 precision of CUDA matmuls and cuDNN convolutions: TF32 or full IEEE float32.

TF32 keeps 10 mantissa bits in the products of float32 matmuls and convolutions on Ampere and later
GPUs. Nothing here switches it on for the whole process: :func:`fp32_precision` sets the flags for
the duration of a ``with`` block and puts the previous values back on exit, also when the block
raises. The DCT projection (:mod:`boundary_cli.geometry.dct`) runs inside :func:`ieee_matmul`
always; DeepFool runs the model inside :func:`model_precision`, TF32 only when asked for.

The flags are torch's current API, ``torch.backends.cuda.matmul.fp32_precision`` and
``torch.backends.cudnn.conv.fp32_precision`` (``"tf32"`` / ``"ieee"``). A torch without them
(before 2.9) gets the legacy ``allow_tf32`` booleans instead; the two APIs are never mixed, torch
refuses reads of the old flags after the new ones were set. The flags are process-wide, not per
thread, so the scopes take one lock: a scope in another thread (a data reader applying a DCT flip)
cannot restore a value under a running one. On CPU the flags are read and set but change nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch

PRECISIONS = ("ieee", "tf32")

NEW_API = (hasattr(torch.backends.cuda.matmul, "fp32_precision")
           and hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"))

_lock = threading.RLock()


def _get(which: str) -> object:
    if NEW_API:
        return (torch.backends.cuda.matmul if which == "matmul" else torch.backends.cudnn.conv).fp32_precision
    return torch.backends.cuda.matmul.allow_tf32 if which == "matmul" else torch.backends.cudnn.allow_tf32


def _set(which: str, value: object) -> None:
    """Set a flag to ``value``: a precision name, or a value :func:`_get` returned (restore)."""
    if NEW_API:
        (torch.backends.cuda.matmul if which == "matmul" else torch.backends.cudnn.conv).fp32_precision = value
        return
    flag = value == "tf32" if isinstance(value, str) else bool(value)
    if which == "matmul":
        torch.backends.cuda.matmul.allow_tf32 = flag
    else:
        torch.backends.cudnn.allow_tf32 = flag


def current(which: str = "matmul") -> str:
    """The precision float32 ``matmul`` or ``conv`` runs at now: ``"tf32"`` or ``"ieee"``. (With the
    new API a flag can also read ``"none"``: inherit from the parent flag, which is returned as is.)"""
    if which not in ("matmul", "conv"):
        raise ValueError(f"which must be 'matmul' or 'conv', got {which!r}")
    value = _get(which)
    if isinstance(value, bool):
        return "tf32" if value else "ieee"
    return str(value)


@contextmanager
def fp32_precision(precision: str, *, matmul: bool = True, conv: bool = True) -> Iterator[None]:
    """Run the block with float32 matmuls (``matmul``) and cuDNN convolutions (``conv``) at
    ``precision`` (``"tf32"`` or ``"ieee"``); the previous settings come back on exit.

    Usable as a decorator too. Scopes nest, and they are serialised across threads.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    which = [w for w, on in (("matmul", matmul), ("conv", conv)) if on]
    with _lock:
        saved = [(w, _get(w)) for w in which]
        try:
            for w in which:
                _set(w, precision)
            yield
        finally:
            for w, value in reversed(saved):
                _set(w, value)


def ieee_matmul() -> AbstractContextManager[None]:
    """Full IEEE float32 for matmuls, whatever the process-wide setting (the DCT projection)."""
    return fp32_precision("ieee", conv=False)


def model_precision(tf32: bool) -> AbstractContextManager[None]:
    """Matmuls and convolutions of a model call in TF32 (``tf32=True``) or in full float32."""
    return fp32_precision("tf32" if tf32 else "ieee")
