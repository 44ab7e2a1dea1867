"""A plain transcription of influenciae's WeightsBoundaryCalculator (METHODS.md §5.2): one sample at
a time, the full Jacobian of all logits with respect to all trainable weights, the weights of a copy
of the model changed in place. The yardstick for :mod:`boundary_cli.geometry.weights_deepfool` in
tests and benchmarks; not used by the experiments.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def weights_deepfool_single(model: nn.Module, x: Tensor, max_iter: int = 100,
                            eps: float = 1e-6) -> list[tuple[float, int, str]]:
    """For each sample of x (B, ...): (distance, steps, stop) as the reference computes them, with
    one more evaluation after the last step so that the stop says whether it crossed (``flip``,
    ``eps_gap`` or ``max_steps``)."""
    out = []
    for xb in x:
        net = copy.deepcopy(model)
        params = [p for p in net.parameters() if p.requires_grad]
        w0 = [p.detach().clone() for p in params]
        with torch.no_grad():
            c = int(net(xb[None]).argmax())
        steps, stop = 0, "max_steps"
        for _ in range(max_iter + 1):
            with torch.no_grad():
                y = net(xb[None])[0]
            top = y.topk(2).values
            if int(y.argmax()) != c:
                stop = "flip"
                break
            if top[0] - top[1] <= eps:
                stop = "eps_gap"
                break
            if steps == max_iter:
                break
            rows = []
            for k in range(len(y)):
                grads = torch.autograd.grad(net(xb[None])[0][k], params)
                rows.append(torch.cat([g.flatten() for g in grads]))
            jac = torch.stack(rows)
            best, best_k = float("inf"), None
            for k in range(len(y)):
                if k == c:
                    continue
                g = jac[k] - jac[c]
                r = float((y[k] - y[c]).abs() / g.norm())
                if r < best:
                    best, best_k = r, k
            g = jac[best_k] - jac[c]
            stepv = (y[best_k] - y[c]).abs() / g.norm() ** 2 * g
            offset = 0
            with torch.no_grad():
                for p in params:
                    p += stepv[offset:offset + p.numel()].view(p.shape)
                    offset += p.numel()
            steps += 1
        dist = torch.cat([(p.detach() - w).flatten() for p, w in zip(params, w0)]).norm()
        out.append((float(dist), steps, stop))
    return out
