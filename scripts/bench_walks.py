"""Benchmark: the batched fixed-step walk (images x targets as rows of one batch) against a plain
per-image, per-target loop of the same algorithm, and against the floor of a walk step.

    python scripts/bench_walks.py                         # flip_cnn, Fashion-MNIST, 100 images x 10 targets
    python scripts/bench_walks.py --device cuda --n 1000  # on a GPU
    python scripts/bench_walks.py training.recipe.epochs=50 "training.save_epochs=[5,50]"  # another cached model

The floor of one step is one forward and one input-gradient backward of the rows in flight. Rows
finish at different steps, so the batch shrinks; the floor time is therefore summed over the actual
sequence of batch sizes (the number of rows still walking at each step), with the cost of a batch of
b rows interpolated from measurements at several sizes. ``floor ratio`` = measured time / that sum;
``naive floor ratio`` divides by the per-row cost of the full first batch instead. Speed is measured
here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from bench_margin import bench_setup, timed  # noqa: E402

from boundary_cli.device import memory_budget  # noqa: E402
from boundary_cli.geometry.rows import input_gradients_only  # noqa: E402
from boundary_cli.geometry.walks import WalkParams, batch_rows_for_budget, walk_to_classes  # noqa: E402


def step_seconds(model, x: torch.Tensor, target: torch.Tensor, device, reps: int) -> float:
    """Median seconds of one forward + input-gradient backward (cross-entropy) on batch x."""
    def step():
        xi = x.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xi)
            torch.autograd.grad(F.cross_entropy(logits, target, reduction="sum"), xi)
            logits.detach().argmax(1)

    with input_gradients_only(model):
        step()
        _, t = timed(step, device, reps)
    return t


def loop_walks(model, x: torch.Tensor, targets: torch.Tensor, eta: float, max_steps: int,
               clip: tuple[float, float]) -> tuple[int, list[float]]:
    """The reference's algorithm one image and one target at a time (plus the step cap)."""
    row_steps, dists = 0, []
    with input_gradients_only(model):
        for xi in x:
            src = int(model(xi[None]).argmax())
            for t in targets.tolist():
                if t == src:
                    dists.append(0.0)
                    continue
                cur, steps = xi[None].clone(), 0
                while True:
                    cur.requires_grad_(True)
                    with torch.enable_grad():
                        logits = model(cur)
                        row_steps += 1
                        if int(logits.argmax()) == t or steps >= max_steps:
                            break
                        (g,) = torch.autograd.grad(F.cross_entropy(logits, torch.tensor([t], device=x.device)), cur)
                    cur = (cur.detach() - eta * g / g.norm()).clamp(*clip)
                    steps += 1
                dists.append(float((cur.detach() - xi).norm()))
    return row_steps, dists


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--model", default="flip_cnn")
    p.add_argument("--training", default="flip_adam")
    p.add_argument("--n", type=int, default=100, help="images (each walks to every class)")
    p.add_argument("--eta", type=float, default=0.05)
    p.add_argument("--max-steps", type=int, default=2000)
    p.add_argument("--device", default="auto")
    p.add_argument("--loop-samples", type=int, default=10, help="images for the per-image, per-target loop")
    p.add_argument("--batch-rows", type=int, default=None, help="rows per batch (default: from the memory budget)")
    p.add_argument("--reps", type=int, default=5, help="repetitions of each floor measurement")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("overrides", nargs="*", help="extra config overrides")
    args = p.parse_args()

    _, device, data, model, info = bench_setup(args)
    x = data.test_x[: args.n].to(device)
    classes = torch.arange(data.num_classes, device=device)
    clip = tuple(float(v) for v in data.value_range)
    n_rows = x.shape[0] * len(classes)
    batch_rows = args.batch_rows or batch_rows_for_budget(model, x[:1], memory_budget(device))
    params = WalkParams(eta=args.eta, max_steps=args.max_steps, clip=clip)
    kw = dict(batch_rows=batch_rows, keep_points=False)
    print(f"device {device} ({torch.get_num_threads()} CPU threads), {args.model} on {args.dataset} "
          f"(test accuracy {info['test_accuracy']:.4f}), {x.shape[0]} images x {len(classes)} targets = "
          f"{n_rows} rows, batch {batch_rows}")

    walk_to_classes(model, x[:4], classes, params, **kw)  # warm-up
    res, t_batched = timed(lambda: walk_to_classes(model, x, classes, params, **kw), device)
    row_steps = res.n_forward
    steps = res.steps.reshape(-1).cpu()

    # rows in flight at each step: every row takes (steps + 1) forwards; with refill the batch is
    # min(batch_rows, rows not yet finished)
    counts = np.bincount(steps.numpy() + 1)[::-1].cumsum()[::-1][1:]  # rows with >= s+1 forwards, s = 0..
    sizes = [min(batch_rows, int(c)) for c in counts]
    probe = sorted({max(1, int(round(v))) for v in np.geomspace(1, min(batch_rows, n_rows), 8)})
    flat = x.repeat_interleave(len(classes), 0)[: max(probe)]
    tg = classes.repeat(x.shape[0])[: max(probe)]
    cost = {b: step_seconds(model, flat[:b], tg[:b], device, args.reps) for b in probe}
    bs = np.array(probe, dtype=float)
    ts = np.array([cost[b] for b in probe])
    floor_s = float(sum(np.interp(np.log(s), np.log(bs), ts) for s in sizes))
    full = min(batch_rows, n_rows)
    naive_floor_s = row_steps * cost[max(probe)] / max(probe) if max(probe) == full else float("nan")
    for b in probe:
        print(f"floor: batch {b:5d}: {1e3 * cost[b]:.3f} ms per step = {1e3 * cost[b] / b:.4f} ms per row-step")

    n_loop = min(args.loop_samples, x.shape[0])
    (loop_steps, loop_d), t_loop = timed(lambda: loop_walks(model, x[:n_loop], classes, args.eta, args.max_steps,
                                                            clip), device)
    loop_per_row_step = t_loop / loop_steps
    batched_d = res.l2[:n_loop].reshape(-1).cpu().numpy()
    same = float(np.mean(np.isclose(batched_d, np.array(loop_d), rtol=1e-4, atol=1e-5)))
    out = dict(device=str(device), threads=torch.get_num_threads(), model=args.model, dataset=args.dataset,
               test_accuracy=info["test_accuracy"], images=int(x.shape[0]), targets=len(classes), rows=n_rows,
               batch_rows=batch_rows, row_steps=int(row_steps), mean_steps=float(steps.float().mean()),
               max_steps_taken=int(steps.max()), batched_seconds=t_batched,
               batched_row_steps_per_s=row_steps / t_batched, images_per_s=x.shape[0] / t_batched,
               floor_seconds=floor_s, floor_ratio=t_batched / floor_s,
               naive_floor_ratio=t_batched / naive_floor_s if naive_floor_s == naive_floor_s else None,
               loop=dict(images=n_loop, seconds=t_loop, row_steps=loop_steps,
                         row_steps_per_s=loop_steps / t_loop),
               speedup_vs_loop=loop_per_row_step / (t_batched / row_steps),
               share_equal_to_loop=same)
    print(f"batched: {t_batched:.2f} s, {row_steps} row-steps ({out['mean_steps']:.1f} mean, {out['max_steps_taken']} max "
          f"steps per row) = {out['batched_row_steps_per_s']:.0f} row-steps/s, {out['images_per_s']:.1f} images/s")
    print(f"per-image, per-target loop: {n_loop} images in {t_loop:.2f} s = {out['loop']['row_steps_per_s']:.0f} "
          f"row-steps/s")
    print(f"speed-up over the loop (per row-step): {out['speedup_vs_loop']:.1f}x; floor ratio {out['floor_ratio']:.2f} "
          f"(naive, full-batch floor: {out['naive_floor_ratio'] or float('nan'):.2f}); distances equal to the loop's "
          f"for {100 * same:.0f}% of rows")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
