"""Benchmark: how tight DeepFool's margins are, and what the refinement (geometry/refine.py) costs.

    python scripts/bench_tight.py                                  # LeNet, Fashion-MNIST, 200 samples
    python scripts/bench_tight.py --synthetic --dataset cifar10 --model resnet18 --n 100
    python scripts/bench_tight.py --device cuda --n 1000           # on a GPU

For each space (the full space inside the pixel box, and two DCT blocks unclipped, the reference's
default) it times DeepFool, the bisection and the descent (``--steps``, one run per value) on the
same samples, and compares every margin with the best known one: the smallest verified perturbation
any method found for that sample. In the full space the yardsticks include adv-lib's attacks
(``--adv-lib``, each at its ``--adv-steps``; FMN starts from DeepFool's bisected point); adv-lib does
not work in DCT blocks, so there the yardstick also includes a long descent (``--long-steps``).
It prints per method: seconds per sample, time relative to DeepFool (for refinements: DeepFool plus
the refinement), and the gap = margin / best known at the median and 90th percentile, with the
share of samples above 1.1. Rows where DeepFool did not change the label are left out (counted).
Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_margin import bench_setup, synthetic_setup, timed  # noqa: E402

from boundary_cli.experiments.margin import select_samples  # noqa: E402
from boundary_cli.geometry.adv_lib_attacks import adv_lib_available  # noqa: E402
from boundary_cli.geometry.dct import diagonal_blocks  # noqa: E402
from boundary_cli.geometry.deepfool import DeepFoolParams, deepfool  # noqa: E402
from boundary_cli.geometry.refine import RefineParams, refine  # noqa: E402
from boundary_cli.training.evaluation import predict  # noqa: E402


def gap_stats(margin: torch.Tensor, best: torch.Tensor) -> dict:
    g = (margin / best).double()
    g = g[torch.isfinite(g)]
    return dict(median_gap=float(g.median()), p90_gap=float(torch.quantile(g, 0.9)),
                share_above_1_1=float((g > 1.1).double().mean()), n=int(g.numel()))


def bench_space(model, x, name, subspace, clip, args, device) -> dict:
    """Every method on one space; returns the table rows (dicts) for it."""
    params = DeepFoolParams(clip=clip)
    deepfool(model, x[:4], params, subspace=subspace)  # warm-up
    df, t_df = timed(lambda: deepfool(model, x, params, subspace=subspace, batch_rows=args.batch_rows), device)
    ok = df.converged
    xs, start, label = x[ok], df.perturbation[ok], df.prediction[ok]
    block = None if subspace is None else torch.tensor([[subspace.offset, subspace.block]],
                                                       device=device).expand(len(xs), 2)
    n = len(x)
    methods = {"deepfool": (df.margin[ok], t_df)}

    def run_refine(method: str, steps: int = 0, **extra):
        p = RefineParams(method=method, steps=steps, **extra)
        res, t = timed(lambda: refine(model, xs, start, label, p, clip=clip, row_block=block,
                                      batch_rows=args.batch_rows), device)
        return res.margin, t_df + t

    methods["bisect"] = run_refine("bisect")
    for s in args.steps:
        methods[f"descent {s}"] = run_refine("descent", s)
    if subspace is None and clip is not None and adv_lib_available():
        for m, s in zip(args.adv_lib, args.adv_steps):
            methods[f"{m} {s} (adv-lib)"] = run_refine(m, int(s))
    if args.long_steps:
        methods[f"descent {args.long_steps} (long)"] = run_refine("descent", args.long_steps, patience=args.long_steps)
    best = torch.stack([m for m, _ in methods.values()]).nan_to_num(float("inf")).amin(dim=0)
    rows = []
    for method, (margin, t) in methods.items():
        row = dict(space=name, clip=clip is not None, method=method, s_per_sample=t / n, x_deepfool=t / t_df,
                   median_margin=float(margin.median()), n_not_converged=int((~ok).sum()),
                   **gap_stats(margin, best))
        rows.append(row)
        print(f"{name:6s} {method:24s} {1e3 * row['s_per_sample']:9.2f} ms {row['x_deepfool']:6.2f}x "
              f"median {row['median_margin']:8.4f}  gap median {row['median_gap']:.4f} p90 {row['p90_gap']:.4f} "
              f">1.1: {100 * row['share_above_1_1']:5.1f}%", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--model", default="lenet")
    p.add_argument("--training", default="quick")
    p.add_argument("--n", type=int, default=200, help="samples (correctly classified ones unless --synthetic)")
    p.add_argument("--device", default="auto")
    p.add_argument("--synthetic", action="store_true", help="random weights and random images of the dataset's shape")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 30, 50], help="descent steps to time")
    p.add_argument("--long-steps", type=int, default=500, help="a long descent, as a yardstick (0: none)")
    p.add_argument("--adv-lib", nargs="*", default=["fmn", "ddn", "alma", "fab", "sdf"])
    p.add_argument("--adv-steps", nargs="*", default=["200", "200", "500", "100", "100"])
    p.add_argument("--blocks", type=int, nargs="*", default=None,
                   help="offsets of the two DCT blocks (default: the lowest and a middle one)")
    p.add_argument("--batch-rows", type=int, default=1024)
    p.add_argument("--json", default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    setup = synthetic_setup if args.synthetic else bench_setup
    cfg, device, data, model, info = setup(args)
    eligible = None
    if not args.synthetic:
        pred = predict(model, data.test_x, device=device).argmax(1)
        eligible = pred == data.test_y
    idx = select_samples(len(data.test_y), args.n, 0, eligible)
    x = data.test_x[idx].to(device)
    size = data.image_size[0]
    blocks = diagonal_blocks(size, cfg.dataset.subspaces.block, cfg.dataset.subspaces.step, channels=data.channels)
    chosen = [b for b in blocks if b.offset in args.blocks] if args.blocks else [blocks[0], blocks[len(blocks) // 2]]
    print(f"device {device} ({torch.get_num_threads()} threads), {args.model} on {args.dataset} "
          f"({'random weights and inputs' if args.synthetic else 'test accuracy %.4f' % info['test_accuracy']}), "
          f"{len(x)} samples; adv-lib {'available' if adv_lib_available() else 'not installed'}")
    rows = bench_space(model, x, "full", None, tuple(data.value_range), args, device)
    for b in chosen:
        rows += bench_space(model, x, b.name, b, None, args, device)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(device=str(device), threads=torch.get_num_threads(),
                                                   model=args.model, dataset=args.dataset,
                                                   synthetic=args.synthetic, samples=len(x), rows=rows), indent=2))


if __name__ == "__main__":
    main()
