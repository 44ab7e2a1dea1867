"""The ``boundary`` command: ``run`` (a Hydra app), ``list`` and ``report``.

``boundary run ...`` hands its arguments to one module-level ``@hydra.main`` function, so Hydra's
``-m`` sweeps, launchers, ``--cfg``, ``--info`` and ``--help`` all work as documented by Hydra.
``list`` and ``report`` are plain argparse commands.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import boundary_cli
from boundary_cli import runner
from boundary_cli.errors import BoundaryError

GROUPS = ("dataset", "model", "training", "experiment", "hydra/launcher")
CONF = "boundary_cli.conf"


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


@hydra.main(version_base="1.3", config_path=f"pkg://{CONF}", config_name="config")
def run_app(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    try:
        runner.execute(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task))
    except BoundaryError as exc:
        _fail(str(exc))


def group_options(group: str) -> dict[str, str]:
    """Options of a config group shipped with boundary, each with the first comment line of its file."""
    folder = resources.files(CONF).joinpath(group)
    out = {}
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            comments = [ln.lstrip("# ").strip() for ln in entry.read_text().splitlines() if ln.startswith("#")]
            comments = [c for c in comments if not c.startswith("@package")]
            out[entry.name[: -len(".yaml")]] = comments[0] if comments else ""
    return out


def _defaults() -> dict[str, str]:
    """The default option of each group, from config.yaml's defaults list."""
    conf = OmegaConf.create(resources.files(CONF).joinpath("config.yaml").read_text())
    return {k: v for entry in conf.defaults if isinstance(entry, DictConfig) for k, v in entry.items()}


def check_group_choices(args: list[str]) -> None:
    """Refuse unknown options of boundary's own config groups in one line, before Hydra starts.

    Looks at ``group=value`` overrides (sweeps too: ``model=lenet,resnet18``); Hydra's own flags and
    every other override are left to Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    if not candidates:
        return
    try:
        parsed = OverridesParser.create().parse_overrides(candidates)
    except Exception:  # malformed overrides: Hydra explains them better
        return
    for ov in parsed:
        group = ov.key_or_group
        if group not in GROUPS[:-1] or ov.is_delete():
            continue
        values = [str(v) for v in ov.sweep_iterator()] if ov.is_sweep_override() else [str(ov.value())]
        valid = group_options(group)
        bad = [v for v in values if v not in valid]
        if bad:
            _fail(f"unknown {group} option {bad[0]!r}; valid: {', '.join(valid)} (boundary list describes them)")


def cmd_list() -> int:
    defaults = _defaults()
    for group in GROUPS:
        opts = group_options(group)
        if group == "hydra/launcher":
            print(f"{group}  (default: basic = one job after another; Hydra's joblib, submitit_local and "
                  "submitit_slurm also work)")
        else:
            print(f"{group}  (default: {defaults.get(group, '-')})")
        width = max(len(k) for k in opts)
        for name, text in opts.items():
            print(f"  {name:<{width}}  {text}")
        print()
    return 0


def cmd_report(directory: str) -> int:
    from boundary_cli.reporting.report import write_report

    try:
        out, written = write_report(directory)
    except BoundaryError as exc:
        _fail(str(exc))
    print(f"report written to {out}: {', '.join(str(f.relative_to(out)) for f in written)}")
    return 0


USAGE = """boundary: distances of samples to a classifier's decision boundary

commands:
  boundary run [OVERRIDES...]   run an experiment (a Hydra app: -m sweeps, --cfg job, --help)
  boundary list                 config groups, their options and what each is
  boundary report DIR           merge the results of runs under DIR into DIR/report/

examples:
  boundary run                                            margins on digits with a small CNN
  boundary run dataset=fashion_mnist model=lenet dataset.variant=flip
  boundary run -m dataset=fashion_mnist dataset.variant=none,flip model=lenet,resnet18
  boundary report multirun/2026-11-23/10-00-00
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd in ("--version", "-V", "version"):
        print(f"boundary {boundary_cli.__version__}")
        return 0
    if cmd == "run":
        check_group_choices(rest)
        sys.argv = ["boundary run", *rest]
        run_app()
        return 0
    if cmd == "list":
        return cmd_list()
    if cmd == "report":
        parser = argparse.ArgumentParser(prog="boundary report", description="merge the results of a sweep")
        parser.add_argument("directory", help="folder of a sweep (multirun/...) or of runs")
        return cmd_report(parser.parse_args(rest).directory)
    print(f"error: unknown command {cmd!r}; valid: run, list, report (boundary --help)", file=sys.stderr)
    return 2
