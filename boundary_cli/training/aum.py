"""The area under the margin (AUM, Pleiss et al. 2020, "Identifying Mislabeled Data using the Area
Under the Margin Ranking"), recorded while a model trains.

At every optimizer step the margin of each sample of the batch is taken from the training forward's
logits z (train mode: dropout and augmentation as the recipe has them): z at the sample's assigned
label minus the largest other logit. A sample's AUM is the mean of its margins over every time the
loop saw it (once per epoch). Mislabeled points, which the network learns late or never, keep a low
or negative AUM; ``-AUM`` ranks them first.

Written as a hook of the epoch loop rather than with the ``aum`` package (asappresearch/aum): the
package's calculator is the same running mean over ``update(logits, targets, sample_ids)`` calls, but
keeps one Python record per sample per step and writes CSV files of its own, while this is two
tensors that go into the checkpoint store beside the weights (``<key>.aum.pt``), so a stored model
brings its AUM back without training again. The package's threshold-sample step (a retraining with a
planted fake class to pick a cut-off) is not done: the benchmark ranks, it does not threshold.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class MarginRecorder:
    """Running sum and count of the training margins of N samples against ``labels`` (N,) int64 (the
    labels as assigned: the given, possibly noisy ones, also when the loop trains on labels drawn
    anew every epoch). Call it as the loop's ``on_batch(epoch, idx, logits)`` hook."""

    def __init__(self, labels: Tensor) -> None:
        self.labels = labels.detach().long()
        self.margin_sum = torch.zeros(len(self.labels), dtype=torch.float64)
        self.count = torch.zeros(len(self.labels), dtype=torch.int64)

    def __call__(self, epoch: int, idx: Tensor, logits: Tensor) -> None:
        dev = logits.device
        if self.margin_sum.device != dev:  # the sums live where the logits are: no host sync per batch
            self.labels, self.margin_sum, self.count = (t.to(dev) for t in (self.labels, self.margin_sum, self.count))
        idx = idx.to(dev)
        z = logits.detach().float()
        y = self.labels[idx].unsqueeze(1)
        assigned = z.gather(1, y).squeeze(1)
        other = z.scatter(1, y, float("-inf")).amax(1)
        self.margin_sum.index_add_(0, idx, (assigned - other).double())
        self.count.index_add_(0, idx, torch.ones_like(idx))

    def state(self) -> dict[str, Any]:
        """A copy on the CPU of what is kept with the weights: margin_sum (N,) float64, count (N,) int64,
        labels (N,)."""
        return dict(margin_sum=self.margin_sum.cpu().clone(), count=self.count.cpu().clone(),
                    labels=self.labels.cpu().clone())


def area_under_margin(state: dict[str, Any]) -> Tensor:
    """AUM (N,) float64 of a recorder's ``state``: the mean training margin of each sample, NaN for a
    sample the loop never saw."""
    count = state["count"].double()
    return torch.where(count > 0, state["margin_sum"] / count.clamp_min(1), torch.full_like(count, float("nan")))
