"""The experiment registry: every experiment is one Experiment record, listed once."""

from __future__ import annotations

from boundary_cli.experiments import EXPERIMENTS
from boundary_cli.experiments.registry import Experiment


def test_every_experiment_is_one_registered_record():
    for name, exp in EXPERIMENTS.items():
        assert isinstance(exp, Experiment) and exp.name == name
        assert exp.tables and exp.compare is not None and callable(exp.validate) and callable(exp.run)
    assert {n for n, e in EXPERIMENTS.items() if e.shards} == {"margin"}
    assert {n for n, e in EXPERIMENTS.items() if e.lazy_data} == {"margin"}
