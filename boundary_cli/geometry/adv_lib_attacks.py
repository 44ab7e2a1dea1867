"""adv-lib's minimum-norm L2 attacks (FMN, SuperDeepFool, DDN, ALMA, FAB) as refinements and
cross-checks of DeepFool's margins.

adv-lib (BSD-3, https://github.com/jeromerony/adversarial-library) is an optional extra: install it
with ``PIP_CONSTRAINT=<file holding setuptools<80> pip install -e '.[advlib]'`` (its visdom
dependency does not build with current setuptools). Its attacks keep images in [0, 1] and act in the
full input space, so they fit only full-space rows of clipped runs on data in [0, 1]; they are never
imported unless asked for. Every attack is untargeted against the model's own label at x (not the
ground truth), and its result is used only after a forward pass confirms it changes that label.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor, nn

from boundary_cli.geometry.rows import input_gradients_only

ADV_LIB_METHODS = ("fmn", "sdf", "ddn", "alma", "fab")
INSTALL_HINT = ("adv-lib is not installed; it is an optional extra: echo 'setuptools<80' > /tmp/c.txt && "
                "PIP_CONSTRAINT=/tmp/c.txt pip install -e '.[advlib]'")


def adv_lib_available() -> bool:
    """True when adv-lib can be imported."""
    return importlib.util.find_spec("adv_lib") is not None


def check_fits(method: str, clip: tuple[float, float] | None) -> None:
    """Raise ValueError (one line) unless ``method`` is an adv-lib attack that fits a run with box ``clip``
    and adv-lib is installed."""
    if method not in ADV_LIB_METHODS:
        raise ValueError(f"unknown adv-lib attack {method!r}; valid: {', '.join(ADV_LIB_METHODS)}")
    if clip is None or tuple(float(v) for v in clip) != (0.0, 1.0):
        raise ValueError(f"adv-lib's {method} keeps images in [0, 1]: it needs a clipped run on data in [0, 1] "
                         f"(got clip={clip})")
    if not adv_lib_available():
        raise ValueError(INSTALL_HINT)


def adv_lib_attack(model: nn.Module, x: Tensor, label: Tensor, method: str, *, steps: int,
                   start: Tensor | None = None) -> Tensor:
    """Run one adv-lib L2 attack and return its perturbation.

    Args:
        model: classifier in eval mode, inputs in [0, 1].
        x: (B, C, H, W) inputs in [0, 1]; label (B,) the model's label at x.
        method: one of :data:`ADV_LIB_METHODS`.
        steps: the attack's iterations (``steps``, ``num_steps`` or ``n_iter`` in adv-lib).
        start: (B, C, H, W) adversarial perturbations in the box to start FMN from (ignored by the
            other attacks, which start at x).

    Returns:
        (B, C, H, W) ``x_adv - x``; a row where the attack failed may keep the label (check it).
    """
    check_fits(method, (0.0, 1.0))
    from adv_lib import attacks  # optional dependency, imported on use only

    with input_gradients_only(model), torch.enable_grad():
        if method == "fmn":
            adv = attacks.fmn(model, x, label, norm=2, steps=steps,
                              starting_points=None if start is None else (x + start).clamp(0, 1))
        elif method == "sdf":
            adv = attacks.sdf(model, x, label, steps=steps)
        elif method == "ddn":
            adv = attacks.ddn(model, x, label, steps=steps, levels=None)  # no 8-bit quantisation of a margin
        elif method == "alma":
            adv = attacks.alma(model, x, label, num_steps=steps, distance="l2")
        else:
            adv = attacks.fab(model, x, label, norm=2, n_iter=steps)
    return (adv.detach() - x).to(x.dtype)
