"""``boundary report DIR``: merge the results of every run under a sweep directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from boundary_cli.errors import BoundaryError
from boundary_cli.reporting.files import write_csv, write_figure
from boundary_cli.reporting.plots import comparison_figure

log = logging.getLogger(__name__)

REPORT_DIR = "report"


def _label(run: str, table: pd.DataFrame) -> str:
    """A short legend label: the run's overrides, else its identity columns, else its folder."""
    overrides = str(table["overrides"].iloc[0]) if "overrides" in table and table["overrides"].notna().any() else ""
    if overrides.strip():
        return overrides
    parts = [str(table[c].iloc[0]) for c in ("dataset", "variant", "model") if c in table]
    return " ".join(parts) or run


def _short_labels(labels: dict[str, str]) -> dict[str, str]:
    """Drop the override tokens every run shares (``dataset=... model=...``) from the labels, so the
    legend shows what differs; runs whose labels then coincide keep their folder as a prefix."""
    tokens = {run: label.split() for run, label in labels.items()}
    common = set.intersection(*(set(t) for t in tokens.values())) if len(tokens) > 1 else set()
    short = {run: " ".join(t for t in toks if t not in common) or labels[run] for run, toks in tokens.items()}
    if len(set(short.values())) < len(short):
        short = {run: f"{run}: {label}" for run, label in short.items()}
    return short


# tables each non-margin experiment contributes to a report (margin runs are handled on their own)
EXPERIMENT_TABLES = {
    "decision_flip": ("flips", "layers", "summary"),
    "multiple_hits": ("hits", "hits_summary"),
    "own_to_flip": ("own_to_flip", "summary"),
    "train_again": ("train_again",),
    "lcr": ("lcr", "mutants", "detectors", "auroc_mutants"),
}


def _read(csv: Path) -> pd.DataFrame:
    return pd.read_csv(csv, keep_default_na=False, na_values=[""])


def _experiment_tables(root: Path, out: Path) -> list[Path]:
    """Merge the tables of the non-margin runs under ``root`` into ``out/<experiment>/<table>.csv``."""
    found: dict[str, dict[str, list[pd.DataFrame]]] = {}
    for info_path in sorted(root.rglob("run.json"), key=lambda p: str(p)):
        if out in info_path.parents:
            continue
        try:
            experiment = json.loads(info_path.read_text()).get("experiment")
        except (OSError, ValueError):
            continue
        names = EXPERIMENT_TABLES.get(experiment, ())
        run = str(info_path.parent.relative_to(root)) or "."
        for name in names:
            csv = info_path.parent / f"{name}.csv"
            if csv.exists():
                table = _read(csv)
                found.setdefault(experiment, {}).setdefault(name, []).append(
                    table.assign(run=run, label=_label(run, table)))
    written = []
    for experiment, tables in found.items():
        labels: dict[str, str] = {}  # per run, from its first table (the one with the identity columns)
        for parts in tables.values():
            for t in parts:
                if len(t):
                    labels.setdefault(t["run"].iloc[0], t["label"].iloc[0])
        short = _short_labels(labels) if labels else {}
        for name, parts in tables.items():
            merged = pd.concat(parts, ignore_index=True)
            merged["label"] = merged["run"].map(short)
            path = out / experiment / f"{name}.csv"
            write_csv(path, merged)
            written.append(path)
    return written


def build_report(sweep_dir: str | Path) -> Path:
    """Merge the results of every run found under ``sweep_dir`` (any depth) into ``<sweep_dir>/report/``.

    Margin runs: ``margins.csv`` and ``summary.csv`` concatenated into ``report/margins.csv`` and
    ``report/summary.csv``, each row tagged with its ``run`` folder and a ``label``, and
    ``report/margins.png``: the median margin along frequency, one line per run. Runs of the flip
    and lcr experiments: their tables concatenated into ``report/<experiment>/<table>.csv``, tagged the same way.

    Returns the report folder. Raises BoundaryError when no run results are found.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise BoundaryError(f"{root} is not a directory; give the folder of a run or of a sweep (multirun/...)")
    out = root / REPORT_DIR
    others = _experiment_tables(root, out)
    margins, summaries = [], []
    for csv in sorted(root.rglob("margins.csv"), key=lambda p: str(p)):
        if out in csv.parents:
            continue
        run_dir = csv.parent
        summary_csv = run_dir / "summary.csv"
        if not summary_csv.exists():
            log.warning("skipping %s: no summary.csv next to it (unfinished run?)", run_dir)
            continue
        run = str(run_dir.relative_to(root)) or "."
        m, s = _read(csv), _read(summary_csv)
        label = _label(run, s)
        margins.append(m.assign(run=run, label=label))
        summaries.append(s.assign(run=run, label=label))
    if not margins:
        if others:
            return out
        raise BoundaryError(f"no run results (margins.csv with summary.csv, or a flip experiment's tables) "
                            f"found under {root}")
    summary = pd.concat(summaries, ignore_index=True)
    short = _short_labels(summary.drop_duplicates("run").set_index("run")["label"].to_dict())
    summary["label"] = summary["run"].map(short)
    margins = [m.assign(label=m["run"].map(short)) for m in margins]
    write_csv(out / "margins.csv", pd.concat(margins, ignore_index=True))
    write_csv(out / "summary.csv", summary)
    fig = comparison_figure(summary, label="label")
    fig.axes[0].set_title(f"median margin along frequency: {len(summaries)} runs in {root.name}")
    write_figure(out / "margins.png", fig)
    return out
