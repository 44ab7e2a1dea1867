"""The meta-network (detectors/meta_network.py): shapes per backbone, the pair splits, and a planted
signal learned where pure noise is not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score, roc_auc_score

from boundary_cli.detectors.meta_network import BACKBONES, MetaNetwork, fit_meta, predict_meta, split_pairs

DIMS = (16, 12, 8, 10)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_reads_four_tokens_and_bias_false_drops_the_biases(backbone):
    feats = [torch.randn(5, d) for d in DIMS]
    reg = MetaNetwork(DIMS, backbone, "regression", width=32, layers=2, heads=4, feedforward=64).eval()
    cls = MetaNetwork(DIMS, backbone, "classification", width=32, layers=2, heads=4, feedforward=64).eval()
    assert reg(feats).shape == (5,) and cls(feats).shape == (5, 2)
    plain = MetaNetwork(DIMS, backbone, width=32, layers=2, heads=4, feedforward=64, bias=False)
    assert not any("bias" in n for n, _ in plain.backbone.named_parameters())
    assert any("bias" in n for n, _ in reg.backbone.named_parameters())
    with pytest.raises(ValueError, match="backbone"):
        MetaNetwork(DIMS, "mamba")


def test_a_split_by_model_holds_out_whole_models_and_their_images():
    member = np.repeat(np.arange(50), 40)
    sample = np.tile(np.arange(40), 50) + np.repeat(np.arange(50) % 3, 40) * 7  # members overlap in images
    split = split_pairs(member, sample, "model", seed=1)
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        assert not set(member[split == a]) & set(member[split == b])
        assert not set(sample[split == a]) & set(sample[split == b])
    assert (split == "").any() and (split == "test").sum() > 0
    pair = split_pairs(member, sample, "pair", seed=1)
    assert abs((pair == "test").mean() - 0.2) < 0.01 and abs((pair == "train").mean() - 0.64) < 0.01
    assert set(member[pair == "train"]) & set(member[pair == "test"])  # the reference's split shares models


def planted(n: int, gen: torch.Generator):
    feats = [torch.randn(n, d, generator=gen) for d in DIMS]
    return feats, feats[1][:, 0] + 0.5 * feats[3][:, 2]


@pytest.mark.parametrize("backbone", ["lstm", "gru"])
def test_a_planted_signal_is_learned_and_pure_noise_is_not(backbone):
    gen = torch.Generator().manual_seed(0)
    (tr, signal), (te, signal_te) = planted(1200, gen), planted(400, gen)
    va, signal_va = planted(300, gen)
    kw = dict(width=32, layers=2)
    cls = fit_meta(MetaNetwork(DIMS, backbone, "classification", **kw), (tr, (signal > 0).long()),
                   (va, (signal_va > 0).long()), epochs=25, lr=3e-3, seed=0)
    assert roc_auc_score((signal_te > 0).numpy(), predict_meta(cls.net, te).numpy()) > 0.95
    reg = fit_meta(MetaNetwork(DIMS, backbone, "regression", **kw), (tr, torch.sigmoid(signal)),
                   (va, torch.sigmoid(signal_va)), epochs=25, lr=3e-3, seed=0)
    assert r2_score(torch.sigmoid(signal_te).numpy(), predict_meta(reg.net, te).numpy()) > 0.8
    assert 1 <= reg.best_epoch <= len(reg.curve) and {"train_loss", "val_loss"} <= set(reg.curve[0])
    noise = torch.randint(0, 2, (1200,), generator=gen)
    null = fit_meta(MetaNetwork(DIMS, backbone, "classification", **kw), (tr, noise),
                    (va, torch.randint(0, 2, (300,), generator=gen)), epochs=10, lr=3e-3, seed=0)
    assert abs(roc_auc_score(torch.randint(0, 2, (400,), generator=gen).numpy(),
                             predict_meta(null.net, te).numpy()) - 0.5) < 0.1
