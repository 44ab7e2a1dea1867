"""Obtaining a model: the weights key (what enters it, failing safe), data modifiers, and the store
lock that makes jobs needing the same weights train them once."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest
import torch
from hydra import compose, initialize_config_module

from boundary_cli.data.digits import load_digits
from boundary_cli.data.modifier import DataModifier
from boundary_cli.errors import BoundaryError
from boundary_cli.training.obtain import build_model, obtain_model, weights_identity
from boundary_cli.training.one_cycle import OneCycleSGD
from boundary_cli.training.store import CheckpointStore

CPU = torch.device("cpu")
QUICK = ["training=quick", "training.recipe.epochs=1", "device=cpu"]


def cfg_for(*overrides: str):
    with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return load_digits(root, root)


def flip_labels(every: int) -> DataModifier:
    """Label y -> y + 1 (mod classes) for every ``every``-th training image."""
    def apply(data):
        y = data.train_y.clone()
        y[::every] = (y[::every] + 1) % data.num_classes
        return replace(data, train_y=y)

    return DataModifier("flipped_labels", {"every": every}, apply)


def test_a_new_key_in_the_model_or_the_recipe_gives_another_key(digits):
    base = weights_identity(cfg_for(), digits)
    for extra in ("+model.width=2", "+model.arch.width=2", "+training.recipe.label_smoothing=0.1", "seed=3",
                  "model.normalization=none", "training.recipe.lr_max=0.1", "+training.recipe.note=null"):
        assert weights_identity(cfg_for(extra), digits) != base, extra


def test_the_data_enters_the_key_by_content(digits):
    """Whatever dataset setting changes the data trained on changes the key, and nothing else about the
    dataset does: paths, download, settings only experiments read, keys nothing reads."""
    base = weights_identity(cfg_for(), digits)
    for same in ("dataset.download=true", "dataset.subspaces.block=2", "+dataset.note=1", "paths.data_dir=/x",
                 "training.save_epochs=[1]", "training.save_optimizer=true", "cache.lock_timeout=1"):
        assert weights_identity(cfg_for(same), digits) == base, same
    one_pixel = digits.train_x.clone()
    one_pixel[0, 0, 0, 0] += 0.5
    assert weights_identity(cfg_for(), replace(digits, train_x=one_pixel)) != base
    relabelled = replace(digits, train_y=torch.roll(digits.train_y, 1))
    assert weights_identity(cfg_for(), relabelled) != base
    assert weights_identity(cfg_for("dataset.mean=[0.3]", "dataset.std=[0.2]"), digits) != base  # normalisation


def test_modifiers_get_keys_of_their_own(digits):
    cfg = cfg_for()
    clean = weights_identity(cfg, digits)
    assert "modifier" not in clean
    a, b = flip_labels(3), flip_labels(5)
    keys = {CheckpointStore.key(weights_identity(cfg, m.apply(digits), m)) for m in (a, b)}
    # a modifier that changes nothing still gets its own key: its name and params enter it
    noop = DataModifier("noop", {}, lambda data: data)
    keys.add(CheckpointStore.key(weights_identity(cfg, digits, noop)))
    assert len(keys) == 3 and CheckpointStore.key(clean) not in keys


def test_a_modified_model_trains_on_the_modified_data_and_is_stored_apart(tmp_path, digits, monkeypatch):
    cfg = cfg_for(*QUICK, f"paths.cache_dir={tmp_path}")
    seen = []
    real_fit = OneCycleSGD.fit

    def spy(self, model, data, **kwargs):
        seen.append(data.train_y.clone())
        return real_fit(self, model, data, **kwargs)

    monkeypatch.setattr(OneCycleSGD, "fit", spy)
    clean = obtain_model(cfg, digits, CPU, progress=False)
    flips = flip_labels(4)
    noisy = obtain_model(cfg, digits, CPU, progress=False, modifier=flips)
    assert clean.provenance["source"] == noisy.provenance["source"] == "trained"
    assert noisy.provenance["key"] != clean.provenance["key"] and noisy.provenance["path"] != clean.provenance["path"]
    assert noisy.provenance["modifier"] == {"name": "flipped_labels", "params": {"every": 4}}
    assert torch.equal(seen[0], digits.train_y)
    flipped = seen[1] != digits.train_y
    assert flipped.nonzero().flatten().tolist() == list(range(0, len(digits.train_y), 4))
    assert torch.equal(seen[1][::4], (digits.train_y[::4] + 1) % 10)
    again = obtain_model(cfg, digits, CPU, progress=False, modifier=flip_labels(4))
    assert again.provenance["source"] == "store" and again.provenance["key"] == noisy.provenance["key"]
    assert len(seen) == 2  # loaded, not trained
    for x, y in zip(noisy.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(x, y)


def test_a_job_waits_for_the_one_training_the_same_weights_then_loads_them(tmp_path, digits, monkeypatch, caplog):
    """While another job holds the model's lock, obtain_model logs that it waits; once the other job
    has stored the weights and let go, it loads them instead of training."""
    cfg = cfg_for(*QUICK, f"paths.cache_dir={tmp_path}")
    identity = weights_identity(cfg, digits)
    store = CheckpointStore(tmp_path / "checkpoints")
    monkeypatch.setattr(OneCycleSGD, "fit", lambda *a, **k: pytest.fail("trained although another job did"))
    planted = build_model(cfg, digits).state_dict()
    held, stored = threading.Event(), threading.Event()

    def other_job():
        with store.locked(identity):
            held.set()
            time.sleep(1.0)
            store.save(identity, planted, dict(test_accuracy=0.25, epoch=1), None)
            stored.set()

    thread = threading.Thread(target=other_job)
    thread.start()
    held.wait(10)
    with caplog.at_level(logging.INFO):
        got = obtain_model(cfg, digits, CPU, progress=False)
    thread.join(10)
    assert stored.is_set() and got.provenance["source"] == "store" and got.provenance["test_accuracy"] == 0.25
    lock = store.path(identity).with_suffix(".lock")
    assert [r.message for r in caplog.records if "waiting for" in r.message] == [
        f"waiting for {lock} (another job is training it)"]


def test_waiting_too_long_is_one_line_naming_the_lock_and_the_config_key(tmp_path, digits):
    cfg = cfg_for(*QUICK, f"paths.cache_dir={tmp_path}", "cache.lock_timeout=0.2")
    identity = weights_identity(cfg, digits)
    store = CheckpointStore(tmp_path / "checkpoints")
    errors = []
    with store.locked(identity):
        def job():
            try:
                obtain_model(cfg, digits, CPU, progress=False)
            except BoundaryError as exc:
                errors.append(str(exc))

        thread = threading.Thread(target=job)
        thread.start()
        thread.join(60)
    [message] = errors
    assert "\n" not in message and str(store.path(identity).with_suffix(".lock")) in message
    assert CheckpointStore.key(identity) in message and "cache.lock_timeout" in message
    with pytest.raises(BoundaryError, match="cache.lock_timeout must be"):
        obtain_model(cfg_for(*QUICK, f"paths.cache_dir={tmp_path}", "cache.lock_timeout=-1"), digits, CPU)


JOB = """
import logging, sys
import torch
from hydra import compose, initialize_config_module
from boundary_cli.data.digits import load_digits
from boundary_cli.training.obtain import obtain_model
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
    cfg = compose("config", overrides=["training=quick", "device=cpu", "paths.cache_dir=" + sys.argv[1]])
data = load_digits(sys.argv[1], sys.argv[1])
print("source", obtain_model(cfg, data, torch.device("cpu"), progress=False).provenance["source"], flush=True)
"""


@pytest.mark.slow
def test_two_jobs_needing_the_same_model_train_it_once(tmp_path):
    jobs = [subprocess.Popen([sys.executable, "-c", JOB, str(tmp_path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [job.communicate(timeout=600) for job in jobs]
    assert all(job.returncode == 0 for job in jobs), [err[-2000:] for _, err in outs]
    sources = sorted(line.split()[1] for out, _ in outs for line in out.splitlines() if line.startswith("source"))
    assert sources == ["store", "trained"]
    trainings = [line for _, err in outs for line in err.splitlines() if ": training small_cnn" in line]
    assert len(trainings) == 1
    weights = [p for p in (tmp_path / "checkpoints").rglob("*.pt") if p.suffixes == [".pt"]]  # not .aum.pt
    assert len(weights) == 1
