"""Benchmark: training a zoo of LeNet-5s stacked (training/stacked.py: vmap over members, one stacked
optimizer) against one model at a time (the same members, torch.optim, the same batch orders).

    python scripts/bench_zoo.py                          # 32 LeNet-5s, 4,096 Fashion-MNIST images, 1 epoch, CPU
    python scripts/bench_zoo.py --members 128 --device cuda --n 60000

Images are Fashion-MNIST's training images when the Debian package is installed, random otherwise
(the time per step does not depend on the pixels). Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from boundary_cli.models.lenet5 import INITS, lenet5  # noqa: E402
from boundary_cli.training.stacked import fit_stacked, member_order, stack_members  # noqa: E402
from boundary_cli.training.stacked_optimizer import StackedOptimizer  # noqa: E402


def images(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first n Fashion-MNIST training images in [0, 1] (the zoo's inputs are not normalised), or
    random ones where the dataset is not installed."""
    from hydra import compose, initialize_config_module

    from boundary_cli.errors import BoundaryError
    from boundary_cli.runner import load_dataset

    try:
        with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
            data = load_dataset(compose("config", overrides=["dataset=fashion_mnist"]))
        return data.train_x[:n].to(device), data.train_y[:n].to(device), "fashion_mnist"
    except BoundaryError:
        gen = torch.Generator().manual_seed(0)
        x, y = torch.rand(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen)
        return x.to(device), y.to(device), "random"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=32)
    p.add_argument("--n", type=int, default=4096, help="training images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    x, y, source = images(args.n, device)
    members = [(("sgd", "adam")[i % 2], (5e-3, 1e-2, 5e-2, 1e-1)[i % 4], (0.0, 5e-2, 1e-1, 2e-1)[(i // 4) % 4],
                INITS[i % len(INITS)], i) for i in range(args.members)]

    def build(init: str, seed: int):
        torch.manual_seed(seed)
        return lenet5(1, 10, (28, 28), init=init).to(device).eval()

    def stacked() -> None:
        params, buffers = stack_members([build(init, seed) for _, _, _, init, seed in members])
        opt = StackedOptimizer(len(members), kinds=[m[0] for m in members], lr=[m[1] for m in members],
                               weight_decay=[m[2] for m in members])
        fit_stacked(build("default", 0), params, x, y, opt, [m[4] for m in members], batch_size=args.batch_size,
                    epochs=args.epochs, buffers=buffers)

    def loop() -> None:
        for kind, lr, wd, init, seed in members:
            net = build(init, seed)
            opt = (torch.optim.SGD if kind == "sgd" else torch.optim.Adam)(net.parameters(), lr=lr, weight_decay=wd)
            for epoch in range(1, args.epochs + 1):
                order = member_order(len(x), seed, epoch).to(device)
                for b in range(0, len(x), args.batch_size):
                    idx = order[b:b + args.batch_size]
                    opt.zero_grad()
                    F.cross_entropy(net(x[idx]), y[idx]).backward()
                    opt.step()

    times = {}
    for name, fn in (("stacked", stacked), ("loop", loop)):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times[name] = time.perf_counter() - start
    steps = args.members * args.epochs * -(-args.n // args.batch_size)
    out = dict(device=str(device), threads=torch.get_num_threads(), members=args.members, n=args.n, data=source,
               batch_size=args.batch_size, epochs=args.epochs, stacked_s=times["stacked"], loop_s=times["loop"],
               speedup=times["loop"] / times["stacked"], member_steps_per_s_stacked=steps / times["stacked"],
               member_steps_per_s_loop=steps / times["loop"])
    print(f"{args.members} LeNet-5s, {args.n} {source} images, batch {args.batch_size}, {args.epochs} epoch(s) on "
          f"{device} ({out['threads']} threads): stacked {times['stacked']:.1f} s, one at a time {times['loop']:.1f} s "
          f"-> stacked is {out['speedup']:.2f}x the loop's speed")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
