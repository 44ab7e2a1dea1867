"""The meta-network of activation_analysis (METHODS.md §4.4): it reads a model's activations on an
image, one token per layer, and predicts how robust the prediction is (regression) or whether it is
correct (classification). Also the pair splits (by pair: the reference; by model and image: strict)
and the training loop with early stopping on validation.

Architecture: a linear embedding per layer to ``width`` (256) -> a sequence of L tokens in layer
order -> an RNN (tanh), LSTM, GRU or TransformerEncoder backbone (4 layers; the Transformer with 8
heads, feed-forward 2048, dropout 0.1, post-norm and no positional encoding) -> the last position's
state -> a decoder ``Linear(width, 256) -> BN -> ReLU -> [Linear(256, 256) -> ReLU -> BN] x
(decoder_layers - 2) -> Linear(256, out)`` (the reference's order, BN before the activation only in
its first block), out 1 (regression) or 2 (classification). Biases on by default (the reference's
``--bias`` flag was never passed, so its runs had none: ``bias=False`` is parity). The reference's
bug of training in eval mode after the first epoch is not reproduced.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

BACKBONES = ("rnn", "lstm", "gru", "transformer")
TASKS = ("regression", "classification")
SPLITS = ("model", "pair")


class MetaNetwork(nn.Module):
    """tokens = [embed_l(features_l)] -> backbone -> decoder; features: a list of L tensors (B, D_l) ->
    (B,) predicted value (regression) or (B, 2) logits (classification, class 1 = correct)."""

    def __init__(self, in_dims: Sequence[int], backbone: str = "lstm", task: str = "regression", width: int = 256,
                 layers: int = 4, heads: int = 8, feedforward: int = 2048, dropout: float = 0.1, bias: bool = True,
                 decoder_layers: int = 4, decoder_width: int = 256) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
        if decoder_layers < 2:
            raise ValueError(f"decoder_layers must be >= 2, got {decoder_layers}")
        self.task, self.backbone_name = task, backbone
        self.embed = nn.ModuleList(nn.Linear(d, width) for d in in_dims)
        if backbone == "transformer":
            layer = nn.TransformerEncoderLayer(width, heads, feedforward, dropout, batch_first=True, bias=bias)
            self.backbone: nn.Module = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        else:
            cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[backbone]
            self.backbone = cls(width, width, num_layers=layers, bias=bias, batch_first=True)
        blocks: list[nn.Module] = [nn.Linear(width, decoder_width), nn.BatchNorm1d(decoder_width), nn.ReLU()]
        for _ in range(decoder_layers - 2):
            blocks += [nn.Linear(decoder_width, decoder_width), nn.ReLU(), nn.BatchNorm1d(decoder_width)]
        blocks.append(nn.Linear(decoder_width, 1 if task == "regression" else 2))
        self.decoder = nn.Sequential(*blocks)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        tokens = torch.stack([e(f.float()) for e, f in zip(self.embed, features)], dim=1)  # (B, L, width)
        out = self.backbone(tokens)
        h = (out[0] if isinstance(out, tuple) else out)[:, -1]
        y = self.decoder(h)
        return y.squeeze(1) if self.task == "regression" else y


def part_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """How many of n keys go to each part: the shares rounded, every part at least one key when n
    allows (3 members must give a train, a val and a test member), the rest to the first part."""
    sizes = [int(round(f * n)) for f in fractions[1:]]
    if n >= len(fractions):
        sizes = [max(1, v) for v in sizes]
    while sum(sizes) > n - (1 if n >= 1 else 0) and max(sizes) > 0:
        sizes[sizes.index(max(sizes))] -= 1
    return [n - sum(sizes), *sizes]


def _parts(keys: np.ndarray, fractions: Sequence[float], rng: np.random.Generator) -> dict:
    uniq = rng.permutation(np.unique(keys))
    where = np.repeat(np.arange(len(fractions)), part_sizes(len(uniq), fractions))
    return dict(zip(uniq.tolist(), where.tolist()))


def model_image_parts(members: np.ndarray, images: np.ndarray, fractions: Sequence[float] = (0.64, 0.16, 0.2),
                      seed: int = 0) -> tuple[dict, dict]:
    """The strict split's parts: ``({member: part}, {image: part})``, part 0 = train, 1 = val, 2 = test,
    the distinct members and the distinct images each cut in shares ``fractions`` after a seeded
    shuffle. A pair belongs to a part only where its member's and its image's parts agree."""
    rng = np.random.default_rng(seed)
    return _parts(np.asarray(members), fractions, rng), _parts(np.asarray(images), fractions, rng)


def split_pairs(member: np.ndarray, sample: np.ndarray, by: str = "model", fractions: Sequence[float] = (0.64, 0.16, 0.2),
                seed: int = 0) -> np.ndarray:
    """Assign every (member, sample) pair to ``train``, ``val``, ``test`` or ``""`` (dropped), as (N,)
    strings, with shares ``fractions``.

    ``by="pair"`` (the reference): pairs drawn at random, so one model and one image appear on both
    sides. ``by="model"``: the members are split in those shares and so are the images
    (:func:`model_image_parts`), and a pair is kept only where its member's and its image's part
    agree (members share the test set: holding out members alone would still show the test images in
    training). Seeded.
    """
    if by not in SPLITS:
        raise ValueError(f"unknown split {by!r}; valid: {', '.join(SPLITS)}")
    names = np.array(["train", "val", "test"])
    if by == "pair":
        rng = np.random.default_rng(seed)
        where = np.repeat(np.arange(3), part_sizes(len(member), fractions))
        return names[rng.permutation(where)]
    pm, ps = model_image_parts(member, sample, fractions, seed)
    a = np.array([pm[m] for m in member.tolist()])
    b = np.array([ps[s] for s in sample.tolist()])
    return np.where(a == b, names[a], "")


@dataclass
class MetaFit:
    """A trained meta-network (the weights of its best validation epoch), that epoch (1-based) and the
    learning curve: one dict per epoch with train_loss, val_loss."""

    net: MetaNetwork
    best_epoch: int
    curve: list[dict]


def _loss(net: MetaNetwork, feats: Sequence[Tensor], target: Tensor) -> Tensor:
    out = net(feats)
    return F.mse_loss(out, target.float()) if net.task == "regression" else F.cross_entropy(out, target.long())


def fit_meta(net: MetaNetwork, train: tuple[Sequence[Tensor], Tensor], val: tuple[Sequence[Tensor], Tensor], *,
             lr: float = 1e-3, epochs: int = 30, batch_size: int = 128, patience: int = 5, seed: int = 0,
             device: torch.device | str = "cpu") -> MetaFit:
    """Adam(``lr``) on mini-batches of ``train`` = (features [L x (N, D_l)], targets (N,)), evaluating the
    loss on ``val`` after every epoch; stops after ``patience`` epochs without a better validation loss
    and returns the best epoch's weights. Train mode while training (dropout, batch statistics), eval
    mode for every evaluation."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    feats, target = [f.to(device) for f in train[0]], train[1].to(device)
    vfeats, vtarget = [f.to(device) for f in val[0]], val[1].to(device)
    n = len(target)
    best, best_state, best_epoch, since, curve = float("inf"), None, 0, 0, []
    for epoch in range(1, epochs + 1):
        net.train()
        order = torch.randperm(n, generator=gen).to(device)
        total = 0.0
        for b in range(0, n, batch_size):
            idx = order[b:b + batch_size]
            if len(idx) < 2:  # BatchNorm needs two rows in training mode
                continue
            loss = _loss(net, [f[idx] for f in feats], target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        net.eval()
        with torch.no_grad():
            val_loss = float(_loss(net, vfeats, vtarget))
        curve.append(dict(epoch=epoch, train_loss=total / n, val_loss=val_loss))
        if val_loss < best:
            best, best_state, best_epoch, since = val_loss, copy.deepcopy(net.state_dict()), epoch, 0
        else:
            since += 1
            if since >= patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    return MetaFit(net.eval(), best_epoch, curve)


@torch.no_grad()
def predict_meta(net: MetaNetwork, feats: Sequence[Tensor], batch_size: int = 4096) -> Tensor:
    """(N,) predicted value (regression) or probability of 'correct' (classification), on the CPU."""
    net.eval()
    dev = next(net.parameters()).device
    out = []
    for b in range(0, len(feats[0]), batch_size):
        y = net([f[b:b + batch_size].to(dev) for f in feats])
        out.append((y if net.task == "regression" else y.softmax(1)[:, 1]).cpu())
    return torch.cat(out)
