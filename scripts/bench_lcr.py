"""Benchmark: predictions of many mutant models at once (stacked weights under vmap) against a plain
loop that loads each mutant's weights into the model, and against the floor of M forwards.

    python scripts/bench_lcr.py                                    # LeNet, Fashion-MNIST, 100 NAI mutants x 1000 inputs
    python scripts/bench_lcr.py --device cuda --model resnet18 --dataset cifar10
    python scripts/bench_lcr.py --operator GF --gamma 0.015 --json bench_lcr.json

Mutants are drawn with seeds 0..M-1 (no acceptance filter) from the checkpoint store's model (trained
with ``--training`` on first use). Measured, each on the first ``--n-inputs`` test images: (a) the
stacked evaluation ``predict_mutants(method="vmap")`` and its per-mutant ``functional_call`` form
``method="loop"``; (b) the loop: per mutant, regenerate its weights, load them,
predict, restore; (c) the floor: M forwards of the unmutated model over the same inputs with the same
batch size. Reported: seconds of each, floor ratio (a)/(c), speed-up over the loop (b)/(a), inputs x
mutants per second of (a), and whether (a) and (b) predict identically. Speed is measured here, never
asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_margin import bench_setup, timed  # noqa: E402

from boundary_cli.detectors.mutants import draw_mutant, mutated_state, predict_mutants  # noqa: E402
from boundary_cli.device import memory_budget  # noqa: E402


def forward_all(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """argmax of the model on x (N, C, H, W) in batches -> (N,) int64."""
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--model", default="lenet")
    p.add_argument("--training", default="quick")
    p.add_argument("--n-mutants", type=int, default=100)
    p.add_argument("--n-inputs", type=int, default=1000)
    p.add_argument("--operator", default="NAI", choices=["NAI", "GF", "NS"])
    p.add_argument("--gamma", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=1024, help="inputs per forward")
    p.add_argument("--budget-bytes", type=int, default=None, help="memory per mutant chunk (default: from the device)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("overrides", nargs="*", help="extra config overrides, e.g. dataset.variant=flip")
    args = p.parse_args()

    _, device, data, model, info = bench_setup(args)
    x = data.test_x[:args.n_inputs].to(device)
    n, m, bs = x.shape[0], args.n_mutants, args.batch_size
    budget = args.budget_bytes or memory_budget(device)
    mutants = [draw_mutant(model, args.operator, args.gamma, s) for s in range(m)]
    print(f"device {device} ({torch.get_num_threads()} CPU threads), {args.model} on {args.dataset} "
          f"(test accuracy {info['test_accuracy']:.4f}), {m} {args.operator} mutants (gamma {args.gamma}, "
          f"{len(mutants[0].channels)} channels in the first) x {n} inputs, batch {bs}, "
          f"budget {budget / 2**20:.0f} MiB")

    original = {k: v.detach().clone() for k, v in model.named_parameters()}

    def evaluate(method: str):
        return lambda: predict_mutants(model, mutants, x, batch_size=bs, budget_bytes=budget, method=method)

    def loop() -> torch.Tensor:
        preds = []
        with torch.no_grad():
            for mutant in mutants:
                model.load_state_dict(mutated_state(model, mutant), strict=False)
                preds.append(forward_all(model, x, bs))
                model.load_state_dict(original, strict=False)
        return torch.stack(preds)

    def floor() -> None:
        with torch.no_grad():
            for _ in range(m):
                forward_all(model, x, bs)

    predict_mutants(model, mutants[:2], x[:bs], batch_size=bs, budget_bytes=budget, method="vmap")  # warm-up
    with torch.no_grad():
        forward_all(model, x, bs)
    b, t_loop = timed(loop, device)
    _, t_floor = timed(floor, device)
    out = dict(device=str(device), threads=torch.get_num_threads(), model=args.model, dataset=args.dataset,
               operator=args.operator, gamma=args.gamma, n_mutants=m, n_inputs=n, batch_size=bs, budget_bytes=budget,
               seconds=dict(load_restore_loop=t_loop, floor=t_floor), methods={})
    print(f"load/restore loop {t_loop:.3f} s ({t_loop / t_floor:.2f}x the floor), floor {t_floor:.3f} s")
    for method in ("vmap", "loop"):
        a, t = timed(evaluate(method), device)
        mismatches = int((a != b).sum())
        out["methods"][method] = dict(seconds=t, floor_ratio=t / t_floor, speedup_vs_loop=t_loop / t,
                                      inputs_x_mutants_per_s=n * m / t, identical=mismatches == 0)
        print(f"predict_mutants(method={method}): {t:.3f} s; floor ratio {t / t_floor:.2f}, speed-up over the "
              f"load/restore loop {t_loop / t:.2f}x, {n * m / t:.0f} inputs x mutants/s; identical predictions: "
              f"{mismatches == 0}" + ("" if mismatches == 0 else f" ({mismatches} of {n * m} differ)"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
