"""Benchmark: weight-space DeepFool batched (geometry/weights_deepfool.py) against the reference's way
(one sample at a time, the full Jacobian of all logits with respect to all weights), against its
floor, and the last layer's closed form.

    python scripts/bench_weights.py                                   # LeNet, Fashion-MNIST, 256 training points
    python scripts/bench_weights.py --dataset digits --model small_cnn --n 200
    python scripts/bench_weights.py --device cuda --n 1000            # on a GPU

The floor is one iteration's unavoidable work with per-sample weights, on a batch of the same size:
one vmapped forward and the K-1 candidate VJPs (of y_k - y_c, for the k other than the predicted c)
with respect to each row's own parameters, vmapped. The floor ratio is the batched time per row-iteration over the floor per row.
Peak memory: the process's maximum resident set on CPU, the allocator's peak on CUDA. The two
implementations run the same points; their distances are compared (median relative difference).
Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_margin import bench_setup, timed  # noqa: E402

from boundary_cli.geometry.reference_weights_deepfool import weights_deepfool_single  # noqa: E402
from boundary_cli.geometry.weights_deepfool import (  # noqa: E402
    WeightDeepFoolParams,
    last_layer_distance,
    parameter_names,
    weight_deepfool,
)


def peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def floor_per_row(model, x, names, device, reps=3) -> float:
    """Seconds per row of one vmapped forward plus the vmapped K-1 candidate VJPs with respect to
    per-sample weights."""
    from torch.func import functional_call, jacrev, vmap

    base = {n: t.detach() for n, t in model.named_parameters()}
    buffers = {n: t.detach() for n, t in model.named_buffers()}
    fixed = {n: t for n, t in base.items() if n not in names}

    def f(delta, xb):
        return functional_call(model, {**fixed, **{k: base[k] + delta[k] for k in names}, **buffers},
                               (xb.unsqueeze(0),)).squeeze(0)

    def gaps(delta, xb, cb):
        y = f(delta, xb)
        return y.index_select(0, cb[1:]) - y.index_select(0, cb[:1])

    delta = {k: torch.zeros((len(x), *base[k].shape), device=device) for k in names}
    with torch.no_grad():
        cand = model(x).argsort(dim=1, descending=True)  # the prediction first, then the other classes

    def step():
        with torch.no_grad():
            vmap(f)(delta, x)
        vmap(jacrev(gaps))(delta, x, cand)

    step()
    times = []
    for _ in range(reps):
        _, t = timed(step, device)
        times.append(t)
    return min(times) / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--model", default="lenet")
    p.add_argument("--training", default="quick")
    p.add_argument("--n", type=int, default=256, help="training points")
    p.add_argument("--loop-n", type=int, default=16, help="points for the per-sample reference loop")
    p.add_argument("--batch-rows", default="auto", help="rows in flight, or auto (from the memory budget)")
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--reps", type=int, default=3, help="timed runs of the batched version (the fastest counts)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    cfg, device, data, model, info = bench_setup(args)
    x = data.train_x[: args.n].to(device)
    names = parameter_names(model)
    n_params = sum(dict(model.named_parameters())[k].numel() for k in names)
    params = WeightDeepFoolParams(max_iter=args.max_iter)
    if args.batch_rows == "auto":
        from boundary_cli.device import memory_budget
        from boundary_cli.geometry.weights_deepfool import weight_rows_for_budget

        args.batch_rows = weight_rows_for_budget(model, x[:1], n_params, data.num_classes, memory_budget(device))
    args.batch_rows = int(args.batch_rows)
    print(f"device {device} ({torch.get_num_threads()} threads), {args.model} on {args.dataset} "
          f"({n_params} parameters in {len(names)} tensors), {len(x)} points, batch {args.batch_rows}")
    weight_deepfool(model, x[:2], params)  # warm-up
    runs = [timed(lambda: weight_deepfool(model, x, params, batch_rows=args.batch_rows), device)
            for _ in range(args.reps)]
    res, t_batch = runs[0][0], min(t for _, t in runs)  # the least disturbed run (shared machines are noisy)
    row_its = int(res.iterations.sum()) + len(x)  # steps plus the final evaluations
    peak = peak_mb(device)
    n_loop = min(args.loop_n, len(x))
    loop, t_loop = timed(lambda: weights_deepfool_single(model, x[:n_loop], max_iter=args.max_iter), device)
    loop_d = torch.tensor([d for d, _, _ in loop])
    rel = ((res.distance[:n_loop].cpu().double() - loop_d.double()).abs() / loop_d.double()).median().item()
    floor = floor_per_row(model, x[: args.batch_rows], names, device, reps=max(3, args.reps))
    per_row_it = t_batch / max(1, int(res.iterations.sum()))
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    feats = []
    handle = last.register_forward_hook(lambda m, i, o: feats.append(i[0].detach()))
    with torch.no_grad():
        ref = model(x).argmax(1)
    handle.remove()
    _, t_closed = timed(lambda: last_layer_distance(feats[0].flatten(1), last.weight.detach(), last.bias.detach(),
                                                    ref), device)
    out = dict(device=str(device), threads=torch.get_num_threads(), model=args.model, dataset=args.dataset,
               n=len(x), parameters=n_params, batch_rows=args.batch_rows,
               batched_ms_per_point=1e3 * t_batch / len(x), mean_steps=float(res.iterations.float().mean()),
               loop_ms_per_point=1e3 * t_loop / n_loop, speedup_vs_loop=(t_loop / n_loop) / (t_batch / len(x)),
               floor_ms_per_row=1e3 * floor, floor_ratio=per_row_it / floor, median_rel_diff_vs_loop=rel,
               peak_memory_mb=peak, closed_form_points_per_s=len(x) / max(t_closed, 1e-9), row_iterations=row_its)
    print(f"batched: {out['batched_ms_per_point']:.2f} ms/point, mean steps {out['mean_steps']:.2f}; "
          f"reference loop: {out['loop_ms_per_point']:.2f} ms/point ({n_loop} points) -> {out['speedup_vs_loop']:.1f}x; "
          f"floor {out['floor_ms_per_row']:.3f} ms/row, floor ratio {out['floor_ratio']:.2f}; median rel. diff "
          f"{rel:.1e}; peak memory {peak:.0f} MB; closed form {out['closed_form_points_per_s']:.0f} points/s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
