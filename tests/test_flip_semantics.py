"""The flip experiments' semantics on a planted model whose walks have a closed form.

The model sees only the first coordinate u of a (1, 1, 2) image: logits f_k = −(clamp(u, −1, 10) − c_k)²
with centres c = (0, 1.5, 3), so the classes are the intervals u < 0.75, 0.75 ≤ u < 2.25, u ≥ 2.25,
and the cross-entropy gradient of any target points along ±u (toward the target's centre, since it is
2·(Σ p_k c_k − c_t)). A walk of step η = 0.1 from u0 therefore moves by exactly 0.1 per step along u
and enters the classes in interval order; below u = −1 the clamp makes every gradient exactly zero.
A layer ``feat`` scales the image by (2, 3) before the logits read u, so layer-space distances have a
closed form too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from torch import nn

from boundary_cli.cache import ChunkStore, model_hash
from boundary_cli.data.images import ImageData
from boundary_cli.experiments import multiple_hits, own_to_flip
from boundary_cli.experiments.context import RunContext

CENTRES = torch.tensor([0.0, 1.5, 3.0])
ETA = 0.1


class Planted(nn.Module):
    tap_layers = ("feat",)

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.feat.weight.copy_(torch.diag(torch.tensor([2.0, 3.0])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.feat(x.flatten(1))
        u = (h[:, :1] / 2).clamp(-1.0, 10.0)
        return -(u - CENTRES) ** 2


def klass(u: float) -> int:
    return 0 if u < 0.75 else 1 if u < 2.25 else 2


def steps_to(u0: float, target: int) -> tuple[int, int, int]:
    """(steps until the walk from u0 toward ``target`` first leaves its class, the class it enters,
    steps until it reaches ``target``), by walking the closed form."""
    source, u, k, first = klass(u0), u0, 0, None
    direction = 1.0 if CENTRES[target] > u0 else -1.0
    while klass(u) != target:
        u, k = u + direction * ETA, k + 1
        if first is None and klass(u) != source:
            first = (k, klass(u))
    return first[0], first[1], k


def images(us: list[float], vs: list[float]) -> torch.Tensor:
    return torch.tensor([[u, v] for u, v in zip(us, vs)], dtype=torch.float32).view(-1, 1, 1, 2)


def context(tmp_path, experiment: str, train_x: torch.Tensor, test_x: torch.Tensor, *overrides: str) -> RunContext:
    with initialize_config_module(config_module="boundary_cli.conf", version_base=None):
        cfg = compose("config", overrides=[f"experiment={experiment}", "experiment.batch_rows=64",
                                           f"experiment.walk.eta={ETA}", f"experiment.n_samples={len(train_x)}",
                                           *overrides])
    model = Planted().eval()
    data = ImageData("planted", train_x, torch.zeros(len(train_x), dtype=torch.long), test_x,
                     torch.zeros(len(test_x), dtype=torch.long), ["a", "b", "c"], value_range=(-10.0, 10.0))
    return RunContext(cfg=cfg, data=data, raw_test_x=test_x, model=model, model_id=model_hash(model),
                      device=torch.device("cpu"), identity=dict(dataset="planted", variant="none", model="planted", training="none", seed=0,
                                                                overrides=""), chunks=ChunkStore(tmp_path),
                      memory_budget=2**26, progress=False, snapshots={None: (model, dict(epoch=1, test_accuracy=1.0))})


def test_closed_form_of_the_planted_walks():
    assert steps_to(0.0, 2) == (8, 1, 23)  # 0 -> 0.8 enters class 1, 2.3 reaches class 2
    assert steps_to(3.0, 0) == (8, 1, 23)
    assert steps_to(1.0, 0) == (3, 0, 3)


@pytest.mark.parametrize("mode", ["flipstop", "targeted"])
@pytest.mark.parametrize("zero_grad_is_hit", [True, False])
def test_multiple_hits_counts_the_first_class_entered(tmp_path, mode, zero_grad_is_hit):
    """From u = 0 the walk toward class 2 first enters class 1 (a hit) and toward class 1 enters it
    (no hit); from u = 3 the same mirrored; from u = −5 no gradient at all (zero_grad, never left)."""
    x = images([0.0, 3.0, -5.0], [0.2, 0.4, 0.1])
    ctx = context(tmp_path, "multiple_hits", x, x, f"experiment.walk.mode={mode}", "experiment.epochs=[]",
                  f"experiment.zero_grad_is_hit={str(zero_grad_is_hit).lower()}")
    out = multiple_hits.run(ctx)
    walks = out.tables["hits"].set_index(["sample_index", "target"])
    for image, u0 in enumerate([0.0, 3.0]):
        for target in range(3):
            row = walks.loc[(image, target)]
            if target == klass(u0):
                assert row["status"] == "own" and not row["hit"]
                continue
            first_step, entered, reach = steps_to(u0, target)
            assert row["first_exit_class"] == entered and row["first_exit_step"] == first_step
            assert row["steps"] == (first_step if mode == "flipstop" else reach)
            assert row["end_class"] == (entered if mode == "flipstop" else target)
            assert math.isclose(row["l2"], ETA * row["steps"], rel_tol=1e-5)
            assert bool(row["hit"]) == (entered != target)
    stuck = walks.loc[2]
    assert (stuck.loc[[1, 2], "status"] == "zero_grad").all() and (stuck.loc[[1, 2], "first_exit_class"] == -1).all()
    summary = out.tables["hits_summary"].set_index("sample_index")
    assert summary["hits"].tolist() == [1, 1, 2 if zero_grad_is_hit else 0]
    assert summary["n_classes_entered"].tolist() == [1, 1, 0]  # never the source class
    assert summary["n_zero_grad"].tolist() == [0, 0, 2]


def test_capped_walks_are_no_hits_and_enter_no_class(tmp_path):
    x = images([0.0], [0.0])
    ctx = context(tmp_path, "multiple_hits", x, x, "experiment.walk.mode=targeted", "experiment.epochs=[]",
                  "experiment.walk.max_steps=5")  # 5 steps reach u = 0.5: still class 0
    out = multiple_hits.run(ctx)
    walked = out.tables["hits"].query("status != 'own'")
    assert (walked["status"] == "capped").all() and not walked["hit"].any()
    assert out.tables["hits_summary"]["n_classes_entered"].tolist() == [0]
    assert out.tables["hits_summary"]["n_capped"].tolist() == [2]


@pytest.mark.parametrize("space", ["input", "layer"])
def test_own_to_flip_centroids_and_nearest_flip_by_hand(tmp_path, space):
    train = images([0.0, 1.0, 3.0], [0.5, -0.25, 1.0])
    # centroid images: class 0 at u = 0.1, −0.3 (v 1, 2); class 1 at u = 1.4, 1.6 (v 0, 1); class 2 at u = 2.9
    cu, cv = [0.1, -0.3, 1.4, 1.6, 2.9], [1.0, 2.0, 0.0, 1.0, -1.0]
    ctx = context(tmp_path, "own_to_flip", train, images(cu, cv), "experiment.layers=[input,feat]",
                  "experiment.walk.clip=false", f"experiment.centroid.space={space}", "experiment.centroid.count=5")
    table = own_to_flip.run(ctx).tables["own_to_flip"].set_index(["sample_index", "layer"])
    scale = {"input": np.array([1.0, 1.0]), "feat": np.array([2.0, 3.0])}
    centroid = {c: np.mean([[u, v] for u, v in zip(cu, cv) if klass(u) == c], axis=0) for c in range(3)}
    for i, (u0, v0) in enumerate([(0.0, 0.5), (1.0, -0.25), (3.0, 1.0)]):
        src = klass(u0)
        reach = {t: steps_to(u0, t)[2] for t in range(3) if t != src}
        nearest = min(reach, key=reach.get)
        for layer, s in scale.items():
            row = table.loc[(i, layer)]
            assert row["prediction"] == src and row["flip_target"] == nearest
            # the walk moves u only, by η per step: the flip's layer distance is the scaled u shift
            assert math.isclose(row["flip_l2"], s[0] * ETA * reach[nearest], rel_tol=1e-5)
            # a linear layer maps the mean image to the mean activation: both centroid spaces agree here
            own = s * (np.array([u0, v0]) - centroid[src])
            assert math.isclose(row["own_l2_sq"], float((own ** 2).sum()), rel_tol=1e-5)
            assert math.isclose(row["ratio_l2"], row["own_l2"] / row["flip_l2"], rel_tol=1e-6)
