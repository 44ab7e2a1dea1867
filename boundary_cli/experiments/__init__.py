"""Experiments: each module composes geometry and reporting pieces into result tables.

``EXPERIMENTS`` maps ``experiment.name`` to the module; each module has ``validate(cfg)`` (checks
its config section before any data is read) and ``run(ctx) -> ExperimentOutput``.
"""

from types import ModuleType

from boundary_cli.experiments import margin

EXPERIMENTS: dict[str, ModuleType] = {"margin": margin}
