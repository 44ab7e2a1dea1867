"""``boundary report DIR``: merge the results of every run under a sweep directory."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd

from boundary_cli.errors import BoundaryError
from boundary_cli.io import write_csv, write_figure, write_npy
from boundary_cli.reporting.plots import comparison_figure, margins_figure
from boundary_cli.reporting.summary import summarize_margins

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
        title = (f"{identity.get('dataset')} ({identity.get('variant')}), {identity.get('model')}, "
                 f"{identity.get('training')} seed {identity.get('seed')}: {len(shards)} of {count} shards merged")
        write_figure(folder / "margins.png", margins_figure(merged, summary, title))
    log.info("merged %d shards into %s", len(shards), folder)
    return run, merged, summary


def build_report(sweep_dir: str | Path) -> Path:
    """Merge the results of every run found under ``sweep_dir`` (any depth) into ``<sweep_dir>/report/``.

    Margin runs: ``margins.csv`` and ``summary.csv`` concatenated into ``report/margins.csv`` and
    ``report/summary.csv``, each row tagged with its ``run`` folder and a ``label``, and
    ``report/margins.png``: the median margin along frequency, one line per run. The shards of a
    sharded run (``shard.count`` > 1) are merged first into ``report/shards/<overrides>/`` (margins.csv,
    summary.csv, margins.npy, margins_full.npy, margins.png: what the unsharded run writes) and count as one
    run. Runs of the flip and lcr experiments: their tables concatenated into
    ``report/<experiment>/<table>.csv``, tagged the same way.

    Returns the report folder. Raises BoundaryError when no run results are found.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise BoundaryError(f"{root} is not a directory; give the folder of a run or of a sweep (multirun/...)")
    out = root / REPORT_DIR
    others = _experiment_tables(root, out)
    margins, summaries = [], []
    sharded: dict[tuple, dict[int, tuple[str, pd.DataFrame]]] = {}
    for csv in sorted(root.rglob("margins.csv"), key=lambda p: str(p)):
        if out in csv.parents:
            continue
        run_dir = csv.parent
        summary_csv = run_dir / "summary.csv"
        if not summary_csv.exists():
            log.warning("skipping %s: no summary.csv next to it (unfinished run?)", run_dir)
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
