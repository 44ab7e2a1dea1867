"""experiment=meta_network's pieces: the pair selection, the strict parts, the feature layers of the
zoo model, and the zoo's reuse from the checkpoint store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from boundary_cli.detectors.meta_network import model_image_parts, part_sizes
from boundary_cli.experiments.meta_network import feature_layers, member_builder, select_pairs
from boundary_cli.models.lenet5 import lenet5
from boundary_cli.training import zoo_store
from boundary_cli.training.store import CheckpointStore
from boundary_cli.training.zoo import Member
from boundary_cli.training.zoo_store import obtain_zoo


def test_the_balanced_selection_takes_the_first_right_and_wrong_images_of_each_class_in_order():
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 0, 1])
    pred = torch.tensor([0, 1, 0, 1, 1, 0, 1, 1, 1, 0])  # right: 0, 2, 4, 6, 7; wrong: 1, 3, 5, 8, 9
    every = torch.ones(10, dtype=torch.bool)
    assert select_pairs(pred, y, every, "balanced", 200, 1, 0).tolist() == [0, 1, 4, 5]
    assert select_pairs(pred, y, every, "balanced", 200, 2, 0).tolist() == [0, 1, 2, 3, 4, 5, 6, 9]
    only_odd = torch.arange(10) % 2 == 1
    assert select_pairs(pred, y, only_odd, "balanced", 200, 1, 0).tolist() == [1, 5, 7]  # class 0 has no right one


def test_the_random_selection_is_seeded_and_stays_among_the_eligible_images():
    y, pred = torch.zeros(1000, dtype=torch.long), torch.zeros(1000, dtype=torch.long)
    eligible = torch.arange(1000) % 3 == 0
    a = select_pairs(pred, y, eligible, "random", 50, 10, seed=7)
    assert len(a) == 50 and len(set(a.tolist())) == 50 and bool(eligible[a].all())
    assert torch.equal(a, select_pairs(pred, y, eligible, "random", 50, 10, seed=7))
    assert not torch.equal(a, select_pairs(pred, y, eligible, "random", 50, 10, seed=8))
    assert len(select_pairs(pred, y, torch.arange(1000) < 20, "random", 50, 10, seed=7)) == 20  # all there are


@pytest.mark.parametrize("n", [3, 4, 7, 10, 101])
def test_the_strict_parts_are_disjoint_and_each_holds_a_member(n):
    sizes = part_sizes(n, [0.64, 0.16, 0.2])
    assert sum(sizes) == n and min(sizes) >= 1
    members, images = model_image_parts(np.arange(n) * 10, np.arange(500), seed=3)
    assert sorted(members) == list(np.arange(n) * 10) and set(members.values()) == {0, 1, 2}
    assert np.bincount(list(images.values())).tolist() == part_sizes(500, [0.64, 0.16, 0.2]) == [320, 80, 100]


def test_lenet5_features_are_its_taps_and_without_logits_drops_the_output_layer():
    torch.manual_seed(0)
    model = lenet5(1, 10, (28, 28)).eval()
    x = torch.rand(4, 1, 28, 28)
    names, without = feature_layers(model, "default", x)
    assert len(names) == 4 and len(without) == 3  # pool2, fc1, fc2 and fc3 (= the logits)
    assert names[:3] == without
    names, without = feature_layers(model, [without[0], "logits"], x)
    assert names == [without[0], "logits"]
    from boundary_cli.errors import BoundaryError
    with pytest.raises(BoundaryError, match="experiment.features"):
        feature_layers(model, ["no_such_layer"], x)


def test_a_second_call_loads_the_zoo_from_the_store_and_trains_nothing(tmp_path, monkeypatch):
    class Data:  # what the builder reads of a dataset
        train_x, train_y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
        test_x, test_y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
        num_classes, image_size, channels, name = 10, (28, 28), 1, "fake"

    zcfg = OmegaConf.create(dict(model=OmegaConf.load("conf/model/lenet5.yaml"),
                                 dataset=dict(name="fake", mean=None, std=None)))
    build = member_builder(zcfg, Data, torch.device("cpu"))
    members = [Member("sgd", 0.05, 0.0, 1, 0, "default", 32), Member("adam", 0.005, 0.0, 2, 1, "normal", 32)]
    store = CheckpointStore(tmp_path / "store")
    base = dict(dataset=dict(name="fake", content="abc"), model=dict(name="lenet5"))
    first = obtain_zoo(store, base, members, build, (Data.train_x, Data.train_y), (Data.test_x, Data.test_y),
                       mode="loop")
    monkeypatch.setattr(zoo_store, "train_zoo", lambda *a, **k: pytest.fail("trained again"))
    second = obtain_zoo(store, base, members, build, (Data.train_x, Data.train_y), (Data.test_x, Data.test_y),
                        mode="loop")
    for a, b in zip(first, second):
        assert a.key == b.key and a.test_accuracy == b.test_accuracy
        assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert first[0].key != first[1].key


def _save_meta(path, dataset, model, task="classification", dims=(6, 4), seed=0):
    import os

    from boundary_cli.detectors.meta_network import MetaNetwork

    torch.manual_seed(seed)
    meta = dict(width=8, layers=1, bias=True, decoder_layers=2)
    net = MetaNetwork(list(dims), backbone="gru", task=task, width=8, layers=1, decoder_layers=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state=net.state_dict(), best_epoch=1, curve=[], layers=["a", "b"], dims=list(dims), backbone="gru",
                    task=task, meta=meta, dataset=dataset, model=model), path)
    os.utime(path, (1_000_000 + seed, 1_000_000 + seed))  # mtimes in the order the files are written
    return net


def test_stored_classifier_takes_the_newest_classifier_of_that_family_and_dataset(tmp_path):
    from boundary_cli.experiments.meta_network import stored_classifier

    store = tmp_path / "meta_networks"
    assert stored_classifier(tmp_path, "digits", "small_cnn") is None
    _save_meta(store / "old.pt", "digits", "small_cnn", seed=1)
    newest = _save_meta(store / "new.pt", "digits", "small_cnn", seed=2)
    _save_meta(store / "other_data.pt", "fashion_mnist", "small_cnn", seed=3)
    _save_meta(store / "other_model.pt", "digits", "lenet5", seed=4)
    _save_meta(store / "regression.pt", "digits", "small_cnn", task="regression", seed=5)
    (store / "broken.pt").write_bytes(b"not a torch file")
    net, layers, path = stored_classifier(tmp_path, "digits", "small_cnn")
    assert path.name == "new.pt" and layers == ["a", "b"]
    x = [torch.randn(3, 6), torch.randn(3, 4)]
    newest.eval()
    assert torch.equal(net(x), newest(x))
