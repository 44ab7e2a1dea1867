"""Experiments: each module composes geometry and reporting pieces into result tables.

Each module ends with its :class:`~boundary_cli.experiments.registry.Experiment` record; this is
the one list of them. A new experiment is one module plus one line here.
"""

from boundary_cli.experiments import (
    decision_flip,
    lcr,
    margin,
    meta_network,
    mislabel,
    multiple_hits,
    own_to_flip,
    signals,
    train_again,
    weights_boundary,
)
from boundary_cli.experiments.registry import Experiment

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    margin.EXPERIMENT,
    decision_flip.EXPERIMENT,
    multiple_hits.EXPERIMENT,
    own_to_flip.EXPERIMENT,
    train_again.EXPERIMENT,
    lcr.EXPERIMENT,
    weights_boundary.EXPERIMENT,
    mislabel.EXPERIMENT,
    meta_network.EXPERIMENT,
    signals.EXPERIMENT,
)}
