"""An optimizer's state keyed by parameter name: what a training checkpoint keeps beside the weights.

torch keys optimizer state by parameter position; a checkpoint keyed by name survives any change in
how the parameters are gathered (stacked copies, a deep copy of the model) and can be checked
against the model it is restored into. The reference (TensorFlow's ``Saver``) restores every
variable of the graph, Adam's moments and step count included, before it overfits a point.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

ADAM_SLOTS = ("step", "exp_avg", "exp_avg_sq")


def named_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The state of ``optimizer`` (which trains ``model``'s parameters) keyed by parameter name.

    Returns ``{"optimizer": class name, "hyper": first param group without its params,
    "state": {param name: {slot: tensor on CPU}}}``; parameters without state (never stepped)
    are left out.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    state: dict[str, dict[str, Tensor]] = {}
    for p, slots in optimizer.state.items():
        if id(p) in names and slots:
            state[names[id(p)]] = {k: torch.as_tensor(v).detach().cpu().clone() for k, v in slots.items()}
    hyper = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    hyper = {k: (list(v) if isinstance(v, tuple) else v) for k, v in hyper.items()
             if isinstance(v, (bool, int, float, tuple, type(None)))}
    return {"optimizer": type(optimizer).__name__, "hyper": hyper, "state": state}


def adam_slots(saved: dict[str, Any], params: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Adam's (step, exp_avg, exp_avg_sq) for every parameter of ``params`` ({name: tensor}) from a
    :func:`named_optimizer_state` record.

    Raises ValueError when the record is not Adam's, or when a parameter is missing from it or its
    moments have another shape.
    """
    if saved.get("optimizer") != "Adam":
        raise ValueError(f"the stored optimizer state is {saved.get('optimizer')!r}, not Adam's")
    out = {}
    for name, p in params.items():
        slots = saved["state"].get(name)
        if slots is None or any(k not in slots for k in ADAM_SLOTS):
            raise ValueError(f"the stored Adam state has no moments for parameter {name!r}")
        if slots["exp_avg"].shape != p.shape or slots["exp_avg_sq"].shape != p.shape:
            raise ValueError(f"the stored Adam moments of {name!r} have shape {tuple(slots['exp_avg'].shape)}, "
                             f"the parameter {tuple(p.shape)}")
        out[name] = {k: slots[k] for k in ADAM_SLOTS}
    return out


def seed_adam(optimizer: torch.optim.Adam, params: dict[str, Tensor], slots: dict[str, dict[str, Tensor]],
              copies: int | None = None) -> None:
    """Put stored Adam slots into a fresh ``optimizer`` over ``params`` ({name: tensor}).

    ``copies``: the parameters are P stacked copies (P, *shape) of the stored ones; each copy gets
    the same moments. The step count is shared (Adam's bias correction continues from it).
    """
    for name, p in params.items():
        s = slots[name]
        m, v = s["exp_avg"].to(p.device, p.dtype), s["exp_avg_sq"].to(p.device, p.dtype)
        if copies is not None:
            m, v = m.unsqueeze(0).expand(copies, *m.shape), v.unsqueeze(0).expand(copies, *v.shape)
        optimizer.state[p] = {"step": s["step"].detach().clone().float().cpu().reshape(()),
                              "exp_avg": m.clone().contiguous(), "exp_avg_sq": v.clone().contiguous()}
