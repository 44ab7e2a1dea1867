"""Every config composes, every object it names instantiates, and the weights key ignores what it should."""

from __future__ import annotations

from importlib import resources

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

from boundary_cli.data.images import ImageData
from boundary_cli.data.variants import apply_variant, variant_from_config
from boundary_cli.errors import BoundaryError
from boundary_cli.experiments import EXPERIMENTS
from boundary_cli.runner import load_dataset
from boundary_cli.training.obtain import build_model, weights_identity

SIZES = {"digits": (1, 8), "mnist": (1, 28), "fashion_mnist": (1, 28), "cifar10": (3, 32), "cifar100": (3, 32),
         "imagenet": (3, 224), "image_folder": (3, 224)}
FITS = {"small_cnn": {8, 28, 32, 224}, "flip_cnn": {8, 28, 32, 224}, "lenet": {28}, "resnet18": {8, 28, 32, 224},
        "resnet18_mnist": {8, 28, 32, 224}, "resnet20": {8, 28, 32, 224}, "vgg19": {32}, "densenet121": {32},
        "resnet50": {32, 224}, "convnet_cifar": {8, 28, 32, 224},
        "lenet5": {28}}


def options(group: str) -> list[str]:
    folder = resources.files("boundary_cli.conf").joinpath(group)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def cfg_for(*overrides: str, hydra: bool = False):
    with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def identity_of(cfg) -> dict:
    """The weights key of ``cfg``'s model, from the data the run would train on."""
    data = apply_variant(load_dataset(cfg), variant_from_config(cfg.dataset.variant, cfg.dataset.low_pass))
    return weights_identity(cfg, data)


def fake_data(channels: int, size: int) -> ImageData:
    x = torch.rand(4, channels, size, size)
    y = torch.arange(4)
    return ImageData("fake", x, y, x, y, [str(i) for i in range(10)])


def test_groups_hold_the_promised_options():
    assert options("dataset") == ["cifar10", "cifar100", "digits", "fashion_mnist", "image_folder", "imagenet", "mnist"]
    assert options("model") == ["convnet_cifar", "densenet121", "flip_cnn", "lenet", "lenet5", "resnet18",
                                "resnet18_mnist", "resnet20", "resnet50", "robustbench", "small_cnn", "timm",
                                "torchvision", "vgg19"]
    assert options("training") == ["adversarial", "flip_adam", "influenciae", "influenciae_overfit", "lcr_adam", "quick",
                                   "reference"]
    assert options("experiment") == sorted(EXPERIMENTS)
    assert options("hydra/launcher") == ["local", "slurm"]


def test_defaults_and_contract_keys():
    cfg = cfg_for()
    assert (cfg.dataset.name, cfg.model.name, cfg.training.name, cfg.experiment.name) == \
        ("digits", "small_cnn", "reference", "margin")
    assert cfg.seed == 0 and cfg.device == "auto" and cfg.experiment.sample_seed == 0
    assert cfg.dataset.download is False and cfg.dataset.variant == "none" and cfg.model.checkpoint is None
    assert cfg.dataset.low_pass.mode == "square" and cfg.dataset.low_pass.bandwidth == 4
    for key in ("candidates", "overshoot", "max_iter", "clip"):
        assert key in cfg.experiment.deepfool
    assert (cfg.experiment.subspaces.block, cfg.experiment.subspaces.step) == (4, 1)
    assert "boundary" in cfg.paths.cache_dir and cfg.paths.data_dir.startswith(cfg.paths.cache_dir)


def test_cache_and_data_dirs_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BOUNDARY_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("BOUNDARY_DATA_DIR", str(tmp_path / "d"))
    cfg = cfg_for()
    assert cfg.paths.cache_dir == str(tmp_path / "c") and cfg.paths.data_dir == str(tmp_path / "d")
    monkeypatch.delenv("BOUNDARY_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cfg_for().paths.cache_dir == str(tmp_path / "xdg" / "boundary")


@pytest.mark.parametrize("dataset", options("dataset"))
@pytest.mark.parametrize("model", sorted(FITS))  # the zoos (timm, torchvision, robustbench): tests/test_zoo_models.py
def test_every_dataset_model_pair_composes_and_builds_or_refuses(dataset, model):
    cfg = cfg_for(f"dataset={dataset}", f"model={model}")
    channels, size = SIZES[dataset]
    data = fake_data(channels, size)
    if size in FITS[model]:
        net = build_model(cfg, data).eval()
        assert net(data.test_x).shape == (4, 10)
    else:
        with pytest.raises(BoundaryError, match=f"{size}x{size}"):
            build_model(cfg, data)


@pytest.mark.parametrize("dataset,block,step", [("digits", 4, 1), ("mnist", 8, 1), ("fashion_mnist", 8, 1),
                                               ("cifar10", 8, 2), ("cifar100", 8, 2), ("imagenet", 16, 16)])
def test_subspaces_follow_the_dataset(dataset, block, step):
    cfg = cfg_for(f"dataset={dataset}")
    assert (cfg.experiment.subspaces.block, cfg.experiment.subspaces.step) == (block, step)
    cfg = cfg_for(f"dataset={dataset}", "experiment.subspaces.step=3")
    assert cfg.experiment.subspaces.step == 3


def test_imagenet_has_the_14_diagonal_blocks_of_hold_me_tight():
    from boundary_cli.geometry.dct import diagonal_blocks

    cfg = cfg_for("dataset=imagenet", "model=resnet50")
    blocks = diagonal_blocks(224, cfg.experiment.subspaces.block, cfg.experiment.subspaces.step, channels=3)
    assert [b.offset for b in blocks] == list(range(0, 224, 16)) and {b.dim for b in blocks} == {768}
    assert cfg.experiment.deepfool.candidates == 10 and cfg.dataset.adversarial_epsilon == 3.0


@pytest.mark.parametrize("training", options("training"))
def test_training_recipes_instantiate(training):
    recipe = instantiate(cfg_for(f"training={training}").training.recipe)
    assert recipe.epochs >= 1
    if hasattr(recipe, "lr_at"):  # the one-cycle schedule starts from zero
        assert recipe.lr_at(0) == 0.0


def test_quick_and_adversarial_are_the_reference_recipe_plus_their_changes():
    ref = OmegaConf.to_container(cfg_for().training, resolve=True)
    quick = OmegaConf.to_container(cfg_for("training=quick").training, resolve=True)
    assert quick == {**ref, "name": "quick", "min_accuracy": 0.5, "recipe": {**ref["recipe"], "epochs": 3}}
    cfg = cfg_for("training=adversarial")
    attack = dict(_target_="boundary_cli.training.adversarial.AdversarialOneCycleSGD",
                  epsilon=cfg.dataset.adversarial_epsilon, steps=7, step_size=None, random_start=True, dykstra_iters=20)
    assert OmegaConf.to_container(cfg.training, resolve=True) == \
        {**ref, "name": "adversarial", "recipe": {**ref["recipe"], **attack}}


@pytest.mark.parametrize("experiment", ["decision_flip", "multiple_hits", "own_to_flip", "train_again"])
def test_flip_experiments_bring_the_reference_model_and_recipe(experiment):
    cfg = cfg_for(f"experiment={experiment}")
    assert (cfg.model.name, cfg.training.name) == ("flip_cnn", "flip_adam")
    assert cfg.experiment.name == experiment and cfg.experiment.walk.eta == 0.05
    cfg = cfg_for(f"experiment={experiment}", "model=lenet", "training=quick", "dataset=fashion_mnist")
    assert (cfg.model.name, cfg.training.name) == ("lenet", "quick")  # the command line wins


def test_flip_experiments_share_one_walk():
    walks = {e: OmegaConf.to_container(cfg_for(f"experiment={e}").experiment.walk)
             for e in ("decision_flip", "multiple_hits", "own_to_flip", "train_again")}
    targeted = dict(mode="targeted", eta=0.05, max_steps=2000, clip=True)
    assert walks["decision_flip"] == walks["own_to_flip"] == walks["train_again"] == targeted
    assert walks["multiple_hits"] == {**targeted, "mode": "flipstop", "clip": False}  # the reference's flip-stop walk
    assert cfg_for("experiment=own_to_flip", "experiment.walk.eta=0.01").experiment.walk.eta == 0.01


def test_multiple_hits_compares_the_saved_epochs():
    cfg = cfg_for("experiment=multiple_hits")
    assert list(cfg.experiment.epochs) == list(cfg.training.save_epochs) == [5, 20]
    cfg = cfg_for("experiment=multiple_hits", "training.save_epochs=[2,4]", "training.recipe.epochs=4")
    assert list(cfg.experiment.epochs) == [2, 4]


@pytest.mark.parametrize("launcher,target", [("local", "JoblibLauncher"), ("slurm", "SlurmLauncher")])
def test_launcher_presets_compose(launcher, target):
    cfg = cfg_for(f"hydra/launcher={launcher}", hydra=True)
    assert cfg.hydra.launcher._target_.endswith(target)


def test_dataset_loaders_are_importable_targets():
    for dataset in options("dataset"):
        target = cfg_for(f"dataset={dataset}").dataset.loader._target_
        module, name = target.rsplit(".", 1)
        assert callable(getattr(__import__(module, fromlist=[name]), name))


def test_weights_identity_ignores_paths_devices_and_experiment_settings():
    base = identity_of(cfg_for())
    same = [cfg_for("paths.cache_dir=/elsewhere", "paths.data_dir=/x", "device=cpu", "experiment.n_samples=7",
                    "experiment.deepfool.max_iter=3", "dataset.download=true", "training.min_accuracy=0.1",
                    "shard.index=1", "shard.count=4", "experiment.deepfool.max_memory_gb=2",
                    "dataset.low_pass.bandwidth=2")]
    for cfg in same:
        assert identity_of(cfg) == base
    different = [cfg_for("seed=1"), cfg_for("dataset.variant=flip"), cfg_for("model=resnet18"),
                 cfg_for("training=quick"), cfg_for("dataset.variant=low_pass"),
                 cfg_for("dataset.variant=low_pass", "dataset.low_pass.bandwidth=2")]
    keys = {str(identity_of(cfg)) for cfg in different}
    assert str(base) not in keys and len(keys) == len(different)


@pytest.mark.parametrize("overrides, training, normalization", [
    (["experiment=lcr", "model=resnet20"], "lcr_adam", "pixel_mean"),        # the lcr reference's own recipe
    (["experiment=lcr", "model=lenet"], "reference", "dataset"),             # other models keep hold-me-tight's
    (["experiment=lcr"], "reference", "dataset"),
    (["model=resnet20"], "reference", "dataset"),                            # only experiment=lcr picks it
    (["experiment=lcr", "model=resnet20", "training=reference"], "reference", "dataset"),  # the command line wins
    (["experiment=lcr", "model=resnet20", "training=quick"], "quick", "dataset"),
    (["experiment=lcr", "model=lenet", "training=lcr_adam"], "lcr_adam", "pixel_mean"),
    (["experiment=lcr", "model=resnet20", "model.normalization=dataset"], "lcr_adam", "dataset"),
    (["experiment=margin", "dataset=cifar10", "model=resnet20", "training=lcr_adam"], "lcr_adam", "pixel_mean"),
])
def test_lcr_on_resnet20_brings_the_reference_recipe_and_its_pixel_mean(overrides, training, normalization):
    cfg = cfg_for(*overrides)
    assert (cfg.training.name, cfg.model.normalization) == (training, normalization)
    if training == "lcr_adam":
        assert cfg.training.recipe._target_.endswith("lcr_adam.LcrAdam") and cfg.training.recipe.epochs == 200


def test_the_recipes_weights_key_differs_from_the_reference_recipes():
    a = identity_of(cfg_for("experiment=lcr", "model=resnet20"))
    b = identity_of(cfg_for("experiment=lcr", "model=resnet20", "training=reference"))
    assert a["model"]["normalization"] == "pixel_mean" and b["model"]["normalization"] == "dataset"
    assert a["normalization"] != b["normalization"]  # the statistics themselves, by content
    assert a["training"]["name"] == "lcr_adam" and a != b


def test_lcr_acceptance_defaults_are_the_references():
    m = cfg_for("experiment=lcr").experiment.mutants
    assert (m.accept_on, m.accept_rule, m.accept_ratio, m.ns_min_accuracy) == ("test", "reference", 0.9, 0.73)


def test_margin_refinement_defaults_are_the_geometry_defaults():
    from boundary_cli.experiments.margin import refine_params
    from boundary_cli.geometry.refine import RefineParams

    cfg = cfg_for()
    assert cfg.experiment.refine == "descent"
    assert refine_params(cfg.experiment) == RefineParams()  # one set of defaults, in both places
    none = cfg_for("experiment.refine=none")
    assert refine_params(none.experiment).key() == {"method": "none"}
