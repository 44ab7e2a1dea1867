#!/usr/bin/env python3
"""Run every experiment on digits at two commits and compare the CSV tables they write.

Usage: scripts/compare_tables.py [BASE] [NEW] [--work DIR] [--keep] [--rtol 1e-6] [--allow-new-columns]

BASE defaults to ``main`` and NEW to ``HEAD`` (committed state: uncommitted edits are not seen).
Each commit gets its own source tree (``git archive``, so nothing is registered in the repository)
and its own BOUNDARY_CACHE_DIR under the work dir, so no trained model, decompressed data or cached
chunk is shared between the two. One venv serves both:
it sees the dependencies of the interpreter running this script (a ``.pth`` file, so torch is not
installed again) and gets each commit installed in turn with ``pip install --no-deps -e``.

The same small commands (``RUNS``) run at both commits on the CPU. For each run the two sets of
CSV files must match: the same files, the same columns in the same order, the same number of
rows; integers, booleans and strings equal exactly, floats exactly or within ``--rtol`` (the
table says which), NaN equal to NaN. Columns holding wall times (``IGNORED``) are not compared.
With ``--allow-new-columns`` a NEW table may add columns after BASE's: BASE's columns are compared
and the added ones are named in the line (for a change that adds outputs and must leave the old
ones alone).
Prints one line per run and exits 1 on any difference or failed run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

# short training runs (a 3-epoch reference recipe; flip_adam for 4 epochs with two snapshots, shared by the
# four flip experiments), so every model is trained once per commit and the whole comparison stays small
FLIP_TRAIN = ["training.recipe.epochs=4", "training.save_epochs=[2,4]"]
SIGNALS_FAST = ["experiment.deepfool.max_iter=30", "experiment.refinement.steps=10", "experiment.gaussian.count=20",
                "experiment.bootstrap=50", "experiment.mutants.n_mutants=20", "experiment.mutants.max_attempts=200",
                "experiment.detectors.cond_mlp.epochs=5", "experiment.walk.max_steps=200"]
RUNS: dict[str, list[str]] = {
    "margin": ["experiment=margin", "training=quick", "experiment.n_samples=20", "experiment.chunk_size=10"],
    "margin_flip": ["experiment=margin", "training=quick", "dataset.variant=flip", "experiment.n_samples=10"],
    "decision_flip": ["experiment=decision_flip", *FLIP_TRAIN, "experiment.n_samples=4",
                      "experiment.walk.max_steps=300"],
    "multiple_hits": ["experiment=multiple_hits", *FLIP_TRAIN, "experiment.n_samples=4"],
    "own_to_flip": ["experiment=own_to_flip", *FLIP_TRAIN, "experiment.n_samples=4",
                    "experiment.centroid.count=100", "experiment.walk.max_steps=300"],
    "train_again": ["experiment=train_again", *FLIP_TRAIN, "experiment.n_samples=2",
                    "experiment.overfit.steps=10", "experiment.walk.max_steps=300"],
    "train_again_sequential": ["experiment=train_again", *FLIP_TRAIN, "experiment.mode=sequential",
                               "experiment.epoch=2", "experiment.n_samples=2", "experiment.overfit.steps=10",
                               "experiment.walk.max_steps=300"],
    "lcr": ["experiment=lcr", "training=quick", "training.recipe.epochs=1", "experiment.n_accept=200",
            "experiment.min_wrong=10", "experiment.mutants.n_mutants=12", "experiment.mutants.max_attempts=60",
            "experiment.mutants.gamma=0.05", "experiment.auroc_counts=[4,8,12]",
            "experiment.detectors.cond_mlp.epochs=3", "experiment.conductance.n_steps=4"],
    "signals": ["experiment=signals", "training=quick", "experiment.n_samples=all", *SIGNALS_FAST],
    "signals_mislabeled": ["experiment=signals", "experiment.task=mislabeled", "training=quick",
                           "experiment.n_samples=300", "experiment.label_noise.rate=0.2", *SIGNALS_FAST],
}
COMMON = ["dataset=digits", "device=cpu"]
IGNORED = re.compile(r"^(seconds.*|.*_s|.*time.*)$")  # wall-clock columns differ between any two runs


def sh(cmd: list[str], log: Path | None = None, **kw) -> None:
    """Run ``cmd``; its output goes to ``log`` (appended) or is shown; a failure raises."""
    if log is None:
        subprocess.run(cmd, check=True, **kw)
        return
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT, **kw)


def make_venv(path: Path) -> Path:
    """A venv that imports this interpreter's packages (boundary-cli itself is installed per commit)."""
    sh([sys.executable, "-m", "venv", str(path)])
    py = path / "bin" / "python"
    inner = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                           capture_output=True, text=True).stdout.strip()
    outer = [p for p in site.getsitepackages() + [site.getusersitepackages()] if Path(p).is_dir()]
    Path(inner, "_compare_tables_deps.pth").write_text("\n".join(outer) + "\n")
    return py


def install(py: Path, src: Path, log: Path) -> None:
    """Install the worktree ``src`` into the venv of ``py`` and check that it is what imports."""
    sh([str(py), "-m", "pip", "install", "-q", "--no-deps", "-e", str(src)], log)
    where = subprocess.run([str(py), "-c", "import boundary_cli; print(boundary_cli.__file__)"], cwd=src.parent,
                           check=True, capture_output=True, text=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"boundary_cli imports from {where}, not from {src}: remove the other install first")


def run_all(py: Path, root: Path, log: Path, runs: list[str]) -> dict[str, str | None]:
    """The commands ``RUNS[name]`` of ``runs`` into ``root/out/<name>``; a failed run maps to its error, a good one
    to None."""
    env = dict(os.environ, BOUNDARY_CACHE_DIR=str(root / "cache"), TQDM_DISABLE="1", HYDRA_FULL_ERROR="1")
    env.pop("BOUNDARY_DATA_DIR", None)
    result: dict[str, str | None] = {}
    for name in runs:
        args = RUNS[name]
        t0 = time.perf_counter()
        try:
            sh([str(py), "-m", "boundary_cli", "run", *COMMON, *args, f"hydra.run.dir={root / 'out' / name}"], log,
               cwd=root, env=env)
            result[name] = None
        except subprocess.CalledProcessError as exc:
            result[name] = f"run failed (exit {exc.returncode}; see {log})"
        print(f"  {root.name} {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return result


def compare_frames(a: pd.DataFrame, b: pd.DataFrame, rtol: float,
                   allow_new: bool = False) -> tuple[str, float]:
    """``("exact" | "rtol" | "<what differs>", largest relative float difference)`` of two tables;
    with ``allow_new``, b may have more columns than a (only a's are compared)."""
    if allow_new and set(a.columns) <= set(b.columns):
        b = b[list(a.columns)]
    if list(a.columns) != list(b.columns):
        return f"columns differ: {list(a.columns)} vs {list(b.columns)}", 0.0
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} rows", 0.0
    worst, kind = 0.0, "exact"
    for col in a.columns:
        if IGNORED.match(col):
            continue
        x, y = a[col], b[col]
        if pd.api.types.is_float_dtype(x) and pd.api.types.is_float_dtype(y):
            xv, yv = x.to_numpy(), y.to_numpy()
            if np.array_equal(xv, yv, equal_nan=True):
                continue
            if not np.allclose(xv, yv, rtol=rtol, atol=0.0, equal_nan=True):
                bad = int(np.flatnonzero(~np.isclose(xv, yv, rtol=rtol, atol=0.0, equal_nan=True))[0])
                return f"column {col!r} row {bad}: {xv[bad]!r} vs {yv[bad]!r}", 0.0
            both = np.isfinite(xv) & np.isfinite(yv) & (xv != 0)
            worst = max(worst, float(np.max(np.abs(xv[both] - yv[both]) / np.abs(xv[both]), initial=0.0)))
            kind = "rtol"
        elif x.dtype != y.dtype:
            return f"column {col!r}: dtype {x.dtype} vs {y.dtype}", 0.0
        elif not x.equals(y):
            bad = int(np.flatnonzero((x != y) & ~(x.isna() & y.isna()))[0])
            return f"column {col!r} row {bad}: {x.iloc[bad]!r} vs {y.iloc[bad]!r}", 0.0
    return kind, worst


def compare_run(a: Path, b: Path, rtol: float, allow_new: bool = False) -> tuple[bool, str]:
    """Compare every CSV under the two run dirs; ``(equal, one-line description)``."""
    files_a = {p.relative_to(a) for p in a.rglob("*.csv")}
    files_b = {p.relative_to(b) for p in b.rglob("*.csv")}
    if files_a != files_b:
        return False, f"files differ: only base {sorted(map(str, files_a - files_b))}, " \
                      f"only new {sorted(map(str, files_b - files_a))}"
    if not files_a:
        return False, "no CSV written"
    kinds, worst, rows, added = set(), 0.0, 0, []
    for rel in sorted(files_a):
        fa, fb = pd.read_csv(a / rel), pd.read_csv(b / rel)
        added += [f"{rel}:{c}" for c in fb.columns if c not in fa.columns] if allow_new else []
        kind, w = compare_frames(fa, fb, rtol, allow_new)
        if kind not in ("exact", "rtol"):
            return False, f"{rel}: {kind}"
        kinds.add(kind)
        worst, rows = max(worst, w), rows + len(fa)
    how = f"equal within rtol {rtol:g} (max rel diff {worst:.2e})" if "rtol" in kinds else "exactly equal"
    new = f"; new columns {', '.join(added)}" if added else ""
    return True, f"{len(files_a)} CSV ({', '.join(sorted(str(r) for r in files_a))}), {rows} rows: {how}{new}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", nargs="?", default="main", help="baseline commit (default: main)")
    parser.add_argument("new", nargs="?", default="HEAD", help="commit to compare (default: HEAD)")
    parser.add_argument("--work", type=Path, help="work dir (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (sources, outputs, logs)")
    parser.add_argument("--runs", help=f"comma-separated subset of the runs (default: all of {', '.join(RUNS)})")
    parser.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance for floats (default 1e-6)")
    parser.add_argument("--allow-new-columns", action="store_true",
                        help="NEW's tables may add columns; BASE's columns are compared")
    args = parser.parse_args()
    runs = args.runs.split(",") if args.runs else list(RUNS)
    if unknown := set(runs) - set(RUNS):
        parser.error(f"unknown runs {sorted(unknown)}; valid: {', '.join(RUNS)}")

    repo = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], check=True, capture_output=True,
                               text=True).stdout.strip())
    commits = {}
    for label, ref in (("base", args.base), ("new", args.new)):
        commits[label] = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", f"{ref}^{{commit}}"],
                                        check=True, capture_output=True, text=True).stdout.strip()
    work = args.work or Path(tempfile.mkdtemp(prefix="compare_tables_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"base {args.base} = {commits['base']}, new {args.new} = {commits['new']}; work dir {work}", flush=True)
    start = time.perf_counter()
    py = make_venv(work / "venv")
    failed: dict[str, dict[str, str | None]] = {}
    for label, commit in commits.items():
        root = work / label
        src = root / "src"
        src.mkdir(parents=True, exist_ok=True)
        log = root / "log.txt"
        archive = subprocess.run(["git", "-C", str(repo), "archive", commit], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        install(py, src, log)
        failed[label] = run_all(py, root, log, runs)

    print(f"\n{'run':<24} result")
    ok = True
    for name in runs:
        error = failed["base"][name] or failed["new"][name]
        if error:
            same, text = False, error
        else:
            same, text = compare_run(work / "base" / "out" / name, work / "new" / "out" / name, args.rtol,
                                     args.allow_new_columns)
        ok &= same
        print(f"{name:<24} {'same' if same else 'DIFFERENT'}: {text}")
    print(f"\n{'all tables equal' if ok else 'tables differ'} ({time.perf_counter() - start:.0f} s)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
