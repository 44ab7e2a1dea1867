"""``boundary report DIR``: merge the results of every run under a sweep directory."""

from __future__ import annotations

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


def build_report(sweep_dir: str | Path) -> Path:
    """Concatenate ``*/margins.csv`` and ``*/summary.csv`` found under ``sweep_dir`` (any depth) into
    ``<sweep_dir>/report/margins.csv`` and ``summary.csv``, each row tagged with its ``run`` folder and
    a ``label``, and draw ``report/margins.png``: the median margin along frequency, one line per run.

    Returns the report folder. Raises BoundaryError when no run results are found.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise BoundaryError(f"{root} is not a directory; give the folder of a run or of a sweep (multirun/...)")
    out = root / REPORT_DIR
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
        m, s = pd.read_csv(csv, keep_default_na=False, na_values=[""]), pd.read_csv(summary_csv, keep_default_na=False, na_values=[""])
        label = _label(run, s)
        margins.append(m.assign(run=run, label=label))
        summaries.append(s.assign(run=run, label=label))
    if not margins:
        raise BoundaryError(f"no run results (margins.csv with summary.csv) found under {root}")
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
