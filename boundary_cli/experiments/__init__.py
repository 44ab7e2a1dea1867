"""Experiments: each module composes geometry and reporting pieces into result tables.

``EXPERIMENTS`` maps ``experiment.name`` to the module; each module has ``validate(cfg)`` (checks
its config section before any data is read) and ``run(ctx) -> ExperimentOutput``, and may have
``model_epochs(cfg)``: the training epochs whose weights it needs (default: the final ones).
"""

from types import ModuleType

from boundary_cli.experiments import decision_flip, lcr, margin, multiple_hits, own_to_flip, train_again

EXPERIMENTS: dict[str, ModuleType] = {
    "margin": margin,
    "decision_flip": decision_flip,
    "multiple_hits": multiple_hits,
    "own_to_flip": own_to_flip,
    "train_again": train_again,
    "lcr": lcr,
}
