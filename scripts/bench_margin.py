"""Benchmark: batched DeepFool against a plain per-sample loop of the same algorithm, and against
the floor of one DeepFool iteration.

    python scripts/bench_margin.py                                # LeNet, Fashion-MNIST, 500 samples
    python scripts/bench_margin.py --model resnet18 --device cuda # on a GPU
    python scripts/bench_margin.py --subspaces --loop-samples 20  # full space + every DCT block
    python scripts/bench_margin.py --synthetic --dataset cifar10 --model resnet18 --n 10000 --device cuda
    python scripts/bench_margin.py --synthetic --dataset imagenet --model resnet50 --n 1000 --device cuda
    python scripts/bench_margin.py --synthetic --dataset imagenet --model timm model.arch.model_name=resnet50 --n 1000
    python scripts/bench_margin.py --model resnet18 --dataset cifar10 --subspaces --device cuda --tf32

With ``--synthetic`` nothing is loaded or trained: the model has its random initial weights (seed 0)
and the inputs are uniform random images of the dataset's shape, so ImageNet-sized figures can be
taken anywhere; a zoo model (``--model timm`` or ``torchvision`` with ``model.arch.model_name=...``) is
built the same way, pretrained weights off. Iteration counts then differ from a trained model's: compare per row-iteration
(``ms/row-it`` and the floor ratio), and samples/s only together with the mean iterations.

The model comes from boundary's checkpoint store (trained with ``--training`` on first use). For
each VJP method it reports samples/s, mean iterations, the speed-up over the per-sample loop and the
floor ratio: time per row-iteration divided by the time of one forward with gradients, K'-1
vector-Jacobian products and one stop-test forward on a batch of the same size, using the fastest
VJP method measured. Speed is measured here, never asserted in tests.

``--tf32`` times the batched runs with the model's matmuls and convolutions in TF32
(``experiment.deepfool.tf32=true``) and runs them once more in full float32 on the same samples: it
prints both medians per space and the relative change of every margin, the measurement that says
whether TF32 moves margins (on CPU the switch does nothing). The per-sample loop always runs in
full float32, so with ``--tf32`` its "median rel. diff" column is the TF32 effect too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial

import numpy as np
import torch
from hydra import compose, initialize_config_module

from boundary_cli.data.images import ImageData
from boundary_cli.data.variants import apply_variant, variant_from_config
from boundary_cli.experiments.margin import select_samples
from boundary_cli.geometry.dct import diagonal_blocks
from boundary_cli.geometry.deepfool import (
    VJP_METHODS,
    DeepFoolParams,
    batch_rows_for_budget,
    deepfool,
    deepfool_subspaces,
    difference_grads,
)
from boundary_cli.geometry.precision import fp32_precision, model_precision
from boundary_cli.geometry.reference_deepfool import deepfool_single, dense_block_basis
from boundary_cli.device import memory_budget, prepare_device
from boundary_cli.geometry.rows import input_gradients_only
from boundary_cli.runner import load_dataset
from boundary_cli.training.obtain import build_model, obtain_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, reps: int = 1):
    """(result of the last call, median seconds over ``reps`` calls)."""
    times, out = [], None
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def bench_setup(args: argparse.Namespace, tune_allocator: bool = True):
    """Compose the config of a benchmark's ``--dataset/--model/--training/--device`` and overrides, and
    build what it times: (cfg, device, data with its variant, model from the checkpoint store, provenance)."""
    with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
        cfg = compose("config", overrides=[f"dataset={args.dataset}", f"model={args.model}",
                                           f"training={args.training}", f"device={args.device}", *args.overrides])
    device = prepare_device(cfg.device, tune_allocator=tune_allocator)
    raw = load_dataset(cfg)
    data = apply_variant(raw, variant_from_config(cfg.dataset.variant, cfg.dataset.low_pass))
    obtained = obtain_model(cfg, data, device, progress=False)
    return cfg, device, data, obtained.model, obtained.provenance


SYNTHETIC_SHAPES = {"digits": (1, 8, 10), "mnist": (1, 28, 10), "fashion_mnist": (1, 28, 10), "cifar10": (3, 32, 10),
                    "cifar100": (3, 32, 100), "imagenet": (3, 224, 1000)}


def synthetic_setup(args: argparse.Namespace, tune_allocator: bool = True):
    """Like :func:`bench_setup` without data files or training: random weights (seed 0) and uniform
    random test images of the dataset's shape. Returns (cfg, device, data, model, info)."""
    with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
        cfg = compose("config", overrides=[f"dataset={args.dataset}", f"model={args.model}",
                                           f"device={args.device}", *args.overrides])
    device = prepare_device(cfg.device, tune_allocator=tune_allocator)
    c, size, k = SYNTHETIC_SHAPES[args.dataset]
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.n, c, size, size, generator=gen)
    y = torch.randint(0, k, (args.n,), generator=gen)
    data = ImageData(args.dataset, x[:2], y[:2], x, y, [str(i) for i in range(k)])
    torch.manual_seed(0)
    model = build_model(cfg, data).to(device).eval()
    return cfg, device, data, model, dict(test_accuracy=float("nan"), source="random weights")


def floor_per_row(model, x: torch.Tensor, kc: int, method: str, device: torch.device, reps: int,
                  tf32: bool = False) -> float:
    """Seconds per row of one iteration's unavoidable work on batch x (B, C, H, W)."""
    def step():
        xi = x.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xi)
            cand = logits.detach().topk(kc, dim=1).indices
            difference_grads(logits, xi, cand, method)
        with torch.no_grad():
            model(x)

    with input_gradients_only(model), model_precision(tf32):
        step()  # warm-up
        _, t = timed(step, device, reps)
    return t / x.shape[0]


def tf32_effect(tf32_margins: torch.Tensor, fp32, names: list[str]) -> dict:
    """Print and return how TF32 moved the margins: per space the two medians and the median and
    largest relative change of a margin; rows infinite in either run are left out."""
    a = tf32_margins.double()
    b = fp32.margin.reshape(a.shape).cpu().double()
    ok = torch.isfinite(a) & torch.isfinite(b) & (b > 0)
    print(f"{'space':8s} {'median fp32':>12s} {'median tf32':>12s} {'rel. change':>12s} {'median |rel|':>13s} "
          f"{'max |rel|':>10s}")
    table = {}
    for s, name in enumerate(names):
        rel = ((a[s] - b[s]).abs() / b[s])[ok[s]]
        med_a, med_b = float(a[s][ok[s]].median()), float(b[s][ok[s]].median())
        row = dict(median_fp32=med_b, median_tf32=med_a, median_rel_change=(med_a - med_b) / med_b,
                   median_abs_rel=float(rel.median()), max_abs_rel=float(rel.max()))
        table[name] = row
        print(f"{name:8s} {med_b:12.5g} {med_a:12.5g} {row['median_rel_change']:12.2e} {row['median_abs_rel']:13.2e} "
              f"{row['max_abs_rel']:10.2e}")
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--model", default="lenet")
    p.add_argument("--training", default="quick")
    p.add_argument("--n", type=int, default=500, help="samples")
    p.add_argument("--device", default="auto")
    p.add_argument("--subspaces", action="store_true", help="full space plus every diagonal DCT block")
    p.add_argument("--loop-samples", type=int, default=None, help="samples for the per-sample loop (default: all)")
    p.add_argument("--batch-rows", type=int, default=None, help="rows per batch (default: from the memory budget)")
    p.add_argument("--reps", type=int, default=5, help="repetitions of the floor measurement")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--channels-first", action="store_true", help="keep the model in contiguous (NCHW) memory format")
    p.add_argument("--synthetic", action="store_true", help="random weights and random images of the dataset's shape")
    p.add_argument("--vjp", nargs="+", default=list(VJP_METHODS), choices=VJP_METHODS, help="VJP methods to time")
    p.add_argument("--sync-every", type=int, default=1, help="iterations between host syncs (as experiment=margin)")
    p.add_argument("--candidates", type=int, default=10, help="K', top-k candidate classes")
    p.add_argument("--default-allocator", action="store_true", help="leave glibc's allocator untuned (CPU)")
    p.add_argument("--tf32", action="store_true",
                   help="model matmuls/convs in TF32 (experiment.deepfool.tf32=true); also compares with float32")
    p.add_argument("overrides", nargs="*", help="extra config overrides, e.g. dataset.variant=flip")
    args = p.parse_args()

    setup = synthetic_setup if args.synthetic else bench_setup
    cfg, device, data, model, info = setup(args, tune_allocator=not args.default_allocator)
    sync_every = args.sync_every
    if args.channels_first:
        model = model.to(memory_format=torch.contiguous_format)
    idx = select_samples(len(data.test_y), args.n, 0)
    x = data.test_x[idx].to(device)
    kc = min(args.candidates, data.num_classes)
    blocks = diagonal_blocks(data.image_size[0], cfg.dataset.subspaces.block, cfg.dataset.subspaces.step,
                             channels=data.channels) if args.subspaces else []
    n_rows = x.shape[0] * (1 + len(blocks))
    batch_rows = args.batch_rows or batch_rows_for_budget(model, x[:1], kc, memory_budget(device))
    floor_batch = min(n_rows, batch_rows)
    print(f"device {device} ({torch.get_num_threads()} CPU threads), {args.model} on {args.dataset} "
          f"(test accuracy {info['test_accuracy']:.4f}), {x.shape[0]} samples x {1 + len(blocks)} spaces = "
          f"{n_rows} rows, batch {batch_rows}, K' = {kc}, host sync every {sync_every} iteration(s)"
          f"{', random weights and inputs' if args.synthetic else ''}{', model in TF32' if args.tf32 else ''}")

    def batched(method: str, keep: bool = False, tf32: bool = args.tf32):
        params = DeepFoolParams(candidates=kc, vjp=method, sync_every=sync_every, tf32=tf32)
        common = dict(batch_rows=batch_rows, keep_perturbation=keep)
        if blocks:
            return deepfool_subspaces(model, x, blocks, params, **common)
        return deepfool(model, x, params, **common)

    deepfool(model, x[:8], DeepFoolParams(candidates=kc))  # warm-up
    results = {}
    for m in args.vjp:
        res, t = timed(partial(batched, m), device)
        results[m] = dict(seconds=t, row_iterations=int(res.iterations.sum()), computed_rows=res.n_forward // 2,
                          margins=res.margin.reshape(-1, x.shape[0]).cpu())

    # The floor, on the points DeepFool iterates on: x in the first iteration, x + r afterwards
    # (represented by the final x + r). Iteration cost depends on where the iterate is.
    ref = batched(args.vjp[0], keep=True)
    pert = ref.perturbation.reshape(-1, *x.shape[1:])
    finite = torch.isfinite(pert.flatten(1)).all(1)
    rows = torch.arange(n_rows, device=device)[finite][:floor_batch]
    at_x = x[rows % x.shape[0]]
    at_r = at_x + pert[rows] / 1.02
    floors = {m: (floor_per_row(model, at_x, kc, m, device, args.reps, args.tf32),
                  floor_per_row(model, at_r, kc, m, device, args.reps, args.tf32)) for m in args.vjp}
    first = min(f[0] for f in floors.values())
    later = min(f[1] for f in floors.values())
    for m, (f1, f2) in floors.items():
        print(f"floor[{m}]: {1e3 * f1:.4f} ms per row at x, {1e3 * f2:.4f} ms per row at x + r "
              f"(batch {len(rows)})")
    for r in results.values():
        it = r["row_iterations"]
        floor = (n_rows * first + (it - n_rows) * later) / it
        r.update(samples_per_s=x.shape[0] / r["seconds"], mean_iterations=it / n_rows,
                 per_row_iteration_ms=1e3 * r["seconds"] / it, floor_ms=1e3 * floor,
                 floor_ratio=(r["seconds"] / it) / floor)

    n_loop = min(x.shape[0] if args.loop_samples is None else args.loop_samples, x.shape[0])
    bases = [None] + [dense_block_basis(data.image_size[0], data.channels, b).to(device) for b in blocks]
    loop_margins = np.zeros((len(bases), n_loop))
    loop_iters = 0

    def loop():
        nonlocal loop_iters
        loop_iters = 0
        for s, basis in enumerate(bases):
            for i in range(n_loop):
                pert, it, _, _ = deepfool_single(model, x[i], basis)
                loop_margins[s, i] = float(pert.norm())
                loop_iters += it

    if n_loop:
        with input_gradients_only(model), fp32_precision("ieee"):  # the yardstick: always full float32
            _, t_loop = timed(loop, device)
        loop_per_sample = t_loop / n_loop
        print(f"per-sample loop: {n_loop} samples in {t_loop:.2f} s = {1 / loop_per_sample:.1f} samples/s, "
              f"mean iterations {loop_iters / (n_loop * len(bases)):.2f}")
    else:
        t_loop = loop_per_sample = float("nan")
    print(f"{'vjp':8s} {'samples/s':>10s} {'iters':>6s} {'ms/row-it':>10s} {'vs loop':>8s} {'floor ratio':>12s} "
          f"{'median rel. diff':>17s}")
    out = dict(device=str(device), threads=torch.get_num_threads(), model=args.model, dataset=args.dataset,
               synthetic=args.synthetic, samples=int(x.shape[0]), spaces=1 + len(blocks), batch_rows=batch_rows,
               candidates=kc, sync_every=sync_every, tf32=args.tf32,
               floor_ms={m: dict(at_x=1e3 * f[0], at_x_plus_r=1e3 * f[1]) for m, f in floors.items()},
               loop=dict(samples=n_loop, seconds=t_loop, samples_per_s=1 / loop_per_sample if n_loop else None),
               batched={})
    for m, r in results.items():
        speedup = loop_per_sample / (r["seconds"] / x.shape[0])
        r["margins_all"] = r.pop("margins")
        b = r["margins_all"][:, :n_loop].numpy()
        rel = float(np.median(np.abs(b - loop_margins) / loop_margins)) if n_loop else float("nan")
        print(f"{m:8s} {r['samples_per_s']:10.1f} {r['mean_iterations']:6.2f} {r['per_row_iteration_ms']:10.4f} "
              f"{speedup:7.1f}x {r['floor_ratio']:12.2f} {rel:17.2e}")
        out["batched"][m] = dict({k: v for k, v in r.items() if k != "margins_all"}, speedup_vs_loop=speedup,
                                 median_rel_diff_vs_loop=rel,
                                 samples_per_s_per_space=r["samples_per_s"] * (1 + len(blocks)))
    best = min(results.values(), key=lambda r: r["seconds"])
    print(f"per space: {best['samples_per_s'] * (1 + len(blocks)):.1f} samples/s; rows computed incl. frozen "
          f"ones waiting for a sync: {best['computed_rows'] / best['row_iterations']:.3f} x the row-iterations")
    if args.tf32:
        out["tf32_vs_fp32"] = tf32_effect(results[args.vjp[0]]["margins_all"], batched(args.vjp[0], tf32=False),
                                          ["full"] + [b.name for b in blocks])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
