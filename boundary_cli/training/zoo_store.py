"""The zoo in the checkpoint store: one entry per grid point, so a second run (or another job of a
sweep) reuses every member already trained and trains only the missing ones.

A member's key is the hash of what reaches its weights: the data trained on (by content), the
normalisation and the whole model node (as for any stored model, see
:func:`boundary_cli.training.obtain.weights_identity`), and the member's grid point. Members are
trained in groups of runs (:func:`~boundary_cli.training.zoo.train_zoo`) and each group is stored as
soon as it is done, so a killed run loses at most one group. The whole zoo is locked while it is
being trained: a parallel job that needs the same zoo waits and then loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from boundary_cli.cache import stable_hash
from boundary_cli.training.store import CheckpointStore
from boundary_cli.training.zoo import Member, faster_mode, member_record, train_zoo

log = logging.getLogger(__name__)

ZOO_FORMAT = 1  # bump when stored members stop matching what the code trains


@dataclass
class ZooEntry:
    """A trained member: its grid point, store key, weights (on the CPU) and test accuracy."""

    member: Member
    key: str
    state: dict[str, Tensor]
    test_accuracy: float


def member_identity(base: dict[str, Any], member: Member) -> dict[str, Any]:
    """The store identity of ``member``: ``base`` (dataset fingerprint, normalisation, model node)
    plus the member's hyper-parameters as the training recipe and its seed."""
    recipe = {k: v for k, v in member_record(member).items() if k != "seed"}
    return dict(base, format=ZOO_FORMAT, training=dict(name="zoo", recipe=recipe), seed=int(member.seed))


@torch.no_grad()
def test_accuracy_of(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 2048) -> float:
    """Share of x (N, C, H, W) that ``model`` predicts as y (N,)."""
    right = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                for i in range(0, len(y), batch_size))
    return right / len(y)


def obtain_zoo(store: CheckpointStore, base: dict[str, Any], members: Sequence[Member],
               build: Callable[[str, int], nn.Module], train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], *,
               mode: str = "auto", max_stack: int = 64, group_runs: int = 64,
               progress: Callable[[int], None] | None = None) -> list[ZooEntry]:
    """Every member, from the store or trained now on ``train`` = (x, y) and stored (with its
    accuracy on ``test``), in the order given.

    ``build(init, seed)`` returns a fresh model in eval mode on the data's device; ``mode`` and
    ``max_stack`` are :func:`train_zoo`'s; ``group_runs`` runs are trained and stored at a time.
    ``progress(k)``: k more members ready (found or trained)."""
    identities = [member_identity(base, m) for m in members]
    found: dict[Member, ZooEntry] = {}

    def load_found() -> None:
        for m, ident in zip(members, identities):
            if m in found:
                continue
            stored = store.load(ident)
            if stored is not None:
                found[m] = ZooEntry(m, store.key(ident), stored.state_dict, float(stored.meta["test_accuracy"]))
                if progress is not None:
                    progress(1)

    load_found()
    if len(found) == len(members):
        return [found[m] for m in members]
    zoo_lock = dict(dataset=base["dataset"], model=base["model"], zoo=stable_hash([store.key(i) for i in identities]))
    with store.locked(zoo_lock):
        load_found()  # trained by another job while this one waited?
        missing = [m for m in members if m not in found]
        if missing:
            log.info("zoo: %d of %d members in the store, training %d", len(members) - len(missing), len(members),
                     len(missing))
        by_run: dict[tuple, list[Member]] = {}
        for m in missing:
            by_run.setdefault(m.run(), []).append(m)
        runs = list(by_run)
        if mode == "auto" and missing:
            mode = faster_mode(build, train[0], train[1], missing, max_stack)
            log.info("zoo: training %s (measured faster here)", "stacked" if mode == "stacked" else "one run at a time")
        ident_of = dict(zip(members, identities))
        for lo in range(0, len(runs), group_runs):
            group = [m for r in runs[lo:lo + group_runs] for m in by_run[r]]
            weights = train_zoo(build, group, train[0], train[1], mode=mode, max_stack=max_stack)
            template = build("default", 0)
            for m in group:
                state = {k: v.detach().cpu() for k, v in {**template.state_dict(), **weights[m]}.items()}
                template.load_state_dict(state)
                acc = test_accuracy_of(template, test[0], test[1])
                store.save(ident_of[m], state, dict(test_accuracy=acc, member=member_record(m)), None)
                found[m] = ZooEntry(m, store.key(ident_of[m]), state, acc)
                if progress is not None:
                    progress(1)
    return [found[m] for m in members]
