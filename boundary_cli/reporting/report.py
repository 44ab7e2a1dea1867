"""``boundary report DIR``: merge the results of every run under a sweep directory."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from boundary_cli.errors import BoundaryError
from boundary_cli.experiments import EXPERIMENTS
from boundary_cli.experiments.registry import Experiment
from boundary_cli.io import write_csv, write_figure, write_npy, write_text
from boundary_cli.reporting.plots import margins_figure
from boundary_cli.reporting.summary import summarize_margins
from boundary_cli.reporting.titles import run_title

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


def _read(csv: Path) -> pd.DataFrame:
    return pd.read_csv(csv, keep_default_na=False, na_values=[""])


@dataclass(frozen=True)
class RunFound:
    """One finished run under a sweep: its folder, its name relative to the sweep, its experiment
    and the tables it wrote (from run.json; for a run.json written before run.json listed its
    outputs, the tables its experiment can write)."""

    folder: Path
    run: str
    experiment: str
    tables: tuple[str, ...]


def find_runs(root: Path, out: Path) -> list[RunFound]:
    """Every run under ``root`` (any depth, ``out`` excluded) with a readable run.json, by path.

    Runs of an experiment this version does not know are skipped with a warning.
    """
    runs = []
    for info_path in sorted(root.rglob("run.json"), key=lambda p: str(p)):
        if out in info_path.parents:
            continue
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        name = info.get("experiment")
        if name not in EXPERIMENTS:
            log.warning("skipping %s: experiment %r is not one this version knows", info_path.parent, name)
            continue
        written = (info.get("outputs") or {}).get("tables")
        tables = tuple(written) if written is not None else EXPERIMENTS[name].tables
        runs.append(RunFound(info_path.parent, str(info_path.parent.relative_to(root)) or ".", name, tables))
    return runs


def _merge_experiment(experiment: Experiment, runs: list[RunFound], out: Path, title: str) -> list[Path]:
    """Merge the tables of one non-margin experiment's runs into ``out/<experiment>/<table>.csv``
    (rows tagged with run and label) and draw its comparison figure; returns the files written."""
    found: dict[str, list[pd.DataFrame]] = {}
    for r in runs:
        for name in r.tables:
            csv = r.folder / f"{name}.csv"
            if csv.exists():
                table = _read(csv)
                found.setdefault(name, []).append(table.assign(run=r.run, label=_label(r.run, table)))
    labels: dict[str, str] = {}  # per run, from its first table (the one with the identity columns)
    for parts in found.values():
        for t in parts:
            if len(t):
                labels.setdefault(t["run"].iloc[0], t["label"].iloc[0])
    short = _short_labels(labels) if labels else {}
    written, merged_tables = [], {}
    for name, parts in found.items():
        merged = pd.concat(parts, ignore_index=True)
        merged["label"] = merged["run"].map(short)
        merged_tables[name] = merged
        written.append(write_csv(out / experiment.name / f"{name}.csv", merged))
    if experiment.compare is not None and merged_tables:
        fig = experiment.compare(merged_tables, title)
        if fig is not None:
            written.append(write_figure(out / experiment.name / f"{experiment.compare_name}.png", fig))
    if experiment.report_files is not None and merged_tables:
        for relative, content in experiment.report_files(merged_tables).items():
            path = out / experiment.name / relative
            written.append(write_csv(path, content) if isinstance(content, pd.DataFrame) else write_text(path, content))
    return written


SHARD_TOKEN = re.compile(r"^\+*shard\.(index|count)=")


def _shard(run_dir: Path) -> tuple[int, int, tuple]:
    """(index, count, group) of the run in ``run_dir``, from one read of its run.json: (0, 1, ()) when
    not sharded. The group is what the shards of one run share: their identity without the shard
    overrides, and the count."""
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return 0, 1, ()
    shard = info.get("shard") or {}
    index, count = int(shard.get("index", 0)), int(shard.get("count", 1))
    if count < 2:
        return index, count, ()
    identity = info.get("identity", {})
    identity = dict(identity, overrides=strip_shard(identity.get("overrides", "")))
    return index, count, (tuple(sorted((k, str(v)) for k, v in identity.items())), count)


def strip_shard(overrides: str) -> str:
    """``overrides`` without its ``shard.index=`` / ``shard.count=`` tokens."""
    return " ".join(t for t in str(overrides).split() if not SHARD_TOKEN.match(t))


def _merge_shards(group: tuple, shards: dict[int, tuple[str, pd.DataFrame]], out: Path) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """Concatenate the margins of one run's shards in the order an unsharded run writes them
    (subspace by subspace, samples ascending), summarise them again, and write margins.csv,
    summary.csv, margins.npy (subspaces only), margins_full.npy (when the full space was measured) and
    margins.png into ``out/shards/<name>/``. Returns (run, margins, summary)."""
    count = group[1]
    identity = dict(group[0])
    tables = [shards[i][1] for i in sorted(shards)]
    tables = [t for t in tables if len(t)] or tables[:1]  # empty shards (more shards than chunks) add nothing
    order = next((list(dict.fromkeys(t["subspace"])) for t in tables if len(t)), [])
    merged = pd.concat(tables, ignore_index=True)
    if "overrides" in merged:
        merged["overrides"] = merged["overrides"].map(strip_shard)
    merged = merged.assign(_s=merged["subspace"].map({name: i for i, name in enumerate(order)}))
    merged = merged.sort_values(["_s", "sample_index"], kind="stable").drop(columns="_s").reset_index(drop=True)
    missing = sorted(set(range(count)) - set(shards))
    name = re.sub(r"[^\w.=,-]+", "_", identity.get("overrides", "")).strip("_")[:100] or "run"
    folder = out / "shards" / name
    run = f"{folder.relative_to(out.parent)}"
    if missing:
        log.warning("%s: shards %s of %d missing; merged the %d found", name, missing, count, len(shards))
        run += f" (incomplete: {len(shards)} of {count} shards)"
    summary = summarize_margins(merged)
    write_csv(folder / "margins.csv", merged)
    write_csv(folder / "summary.csv", summary)
    if len(merged):
        n = merged["sample_index"].nunique()
        margin = merged["margin_l2"].to_numpy(dtype="float32").reshape(len(order), n)
        full = [i for i, name in enumerate(order) if name == "full"]
        # as the margin experiment writes them: subspace rows only in margins.npy, the full space apart
        write_npy(folder / "margins.npy", margin[[i for i in range(len(order)) if i not in full]])
        if full:
            write_npy(folder / "margins_full.npy", margin[full[0]])
        title = f"{run_title(identity)}: {len(shards)} of {count} shards merged"
        write_figure(folder / "margins.png", margins_figure(merged, summary, title))
    log.info("merged %d shards into %s", len(shards), folder)
    return run, merged, summary


def write_report(sweep_dir: str | Path) -> tuple[Path, list[Path]]:
    """Merge the results of every run found under ``sweep_dir`` (any depth) into ``<sweep_dir>/report/``.

    The runs are found from their run.json, which lists the tables each run wrote.
    Margin runs: ``margins.csv`` and ``summary.csv`` concatenated into ``report/margins.csv`` and
    ``report/summary.csv``, each row tagged with its ``run`` folder and a ``label``, and
    ``report/margins.png``: the median margin along frequency, one line per run. The shards of a
    sharded run (``shard.count`` > 1) are merged first into ``report/shards/<overrides>/`` (margins.csv,
    summary.csv, margins.npy, margins_full.npy, margins.png: what the unsharded run writes) and count as one
    run. A folder with margins.csv and summary.csv but no run.json counts as a margin run too. Runs of
    every other experiment: their tables concatenated into ``report/<experiment>/<table>.csv``, tagged
    the same way, the experiment's comparison figure ``report/<experiment>/<figure>.png``, and the files
    its record derives from the merged tables (``report_files``: the signals sweep's ranking per run).

    Returns the report folder and the files written in it. Raises BoundaryError when no run results
    are found.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise BoundaryError(f"{root} is not a directory; give the folder of a run or of a sweep (multirun/...)")
    out = root / REPORT_DIR
    runs = find_runs(root, out)
    written: list[Path] = []
    by_experiment: dict[str, list[RunFound]] = {}
    for r in runs:
        by_experiment.setdefault(r.experiment, []).append(r)
    for name, found in by_experiment.items():
        if name != "margin":
            written += _merge_experiment(EXPERIMENTS[name], found, out, f"{len(found)} run{'s' * (len(found) != 1)} in {root.name}")

    margin_dirs = {r.folder for r in by_experiment.get("margin", []) if "margins" in r.tables}
    margin_dirs |= {csv.parent for csv in root.rglob("margins.csv")
                    if out not in csv.parents and not (csv.parent / "run.json").exists()}
    margins, summaries = [], []
    sharded: dict[tuple, dict[int, tuple[str, pd.DataFrame]]] = {}
    for run_dir in sorted(margin_dirs, key=lambda p: str(p / "margins.csv")):
        csv, summary_csv = run_dir / "margins.csv", run_dir / "summary.csv"
        if not csv.exists() or not summary_csv.exists():
            log.warning("skipping %s: no margins.csv with summary.csv (unfinished run?)", run_dir)
            continue
        run = str(run_dir.relative_to(root)) or "."
        m = _read(csv)
        index, count, group = _shard(run_dir)
        if count > 1:
            sharded.setdefault(group, {})[index] = (run, m)
            continue
        s = _read(summary_csv)
        label = _label(run, s)
        margins.append(m.assign(run=run, label=label))
        summaries.append(s.assign(run=run, label=label))
    for group, shards in sharded.items():
        run, m, s = _merge_shards(group, shards, out)
        label = _label(run, s) if len(s) else run
        margins.append(m.assign(run=run, label=label))
        summaries.append(s.assign(run=run, label=label))
    if sharded:
        written += sorted(f for f in (out / "shards").rglob("*") if f.is_file())
    if not margins:
        if written:
            return out, written
        raise BoundaryError(f"no run results (a run.json with the tables it wrote, or margins.csv with "
                            f"summary.csv) found under {root}")
    summary = pd.concat(summaries, ignore_index=True)
    short = _short_labels(summary.drop_duplicates("run").set_index("run")["label"].to_dict())
    summary["label"] = summary["run"].map(short)
    margins = [m.assign(label=m["run"].map(short)) for m in margins]
    written.append(write_csv(out / "margins.csv", pd.concat(margins, ignore_index=True)))
    written.append(write_csv(out / "summary.csv", summary))
    fig = EXPERIMENTS["margin"].compare({"summary": summary}, f"{len(summaries)} run{'s' * (len(summaries) != 1)} in {root.name}")
    written.append(write_figure(out / "margins.png", fig))
    return out, written


def build_report(sweep_dir: str | Path) -> Path:
    """:func:`write_report`, returning only the report folder."""
    return write_report(sweep_dir)[0]
