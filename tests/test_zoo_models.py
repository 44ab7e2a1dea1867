"""The model zoos as sources (model=timm, torchvision, robustbench), without network: architectures
built with pretrained weights off, a RobustBench entry saved in its zoo's file format and loaded by
name, the zoos' preprocessing against their published settings, the normalisation applied exactly
once, default taps by the one naming rule, offline requests and unknown names as one line."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import boundary, cli_env, error_lines
from fake_data import write_cifar10_tree
from hydra import compose, initialize_config_module
from PIL import Image

from boundary_cli.errors import BoundaryError
from boundary_cli.geometry.dct import diagonal_blocks
from boundary_cli.geometry.taps import default_layers
from boundary_cli.models.zoo import (
    apply_zoo_preprocessing,
    zoo_identity,
    zoo_preprocessing,
)
from boundary_cli.runner import load_dataset
from boundary_cli.training.obtain import build_model, obtain_model

timm = pytest.importorskip("timm", reason="model=timm needs the timm extra (CI installs it)")
safetensors_torch = pytest.importorskip("safetensors.torch")


def cfg_for(*overrides: str):
    with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
        return compose("config", overrides=list(overrides))


def _robustbench_or_skip():
    from boundary_cli.models.robustbench_zoo import _robustbench

    try:
        _robustbench()
    except BoundaryError as exc:
        pytest.skip(f"model=robustbench needs the robustbench extra (CI installs it): {exc}")


def write_folder(root, colours, size=(48, 40)):
    """An ImageFolder tree with one constant-colour image per class (values in 0..255)."""
    for k, colour in enumerate(colours):
        (root / f"class{k}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((*size, 3), colour, dtype=np.uint8)).save(root / f"class{k}" / "a.png")
    return root


# --- building, pretrained off -------------------------------------------------------------------------

def test_timm_architecture_built_for_the_dataset_with_taps_from_its_feature_info():
    from boundary_cli.models.timm_zoo import timm_model

    net = timm_model("resnet18", in_channels=1, num_classes=7, image_size=(32, 32))
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 7)
    assert net.conv1.in_channels == 1
    assert net.tap_layers == ("act1", "layer1", "layer2", "layer3", "layer4")  # timm's own feature_info


def test_torchvision_architectures_built_without_weights_and_their_taps():
    from boundary_cli.models.torchvision_zoo import torchvision_model

    resnet = torchvision_model("resnet18", in_channels=3, num_classes=5, image_size=(32, 32))
    assert resnet(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    assert resnet.tap_layers == ("layer1", "layer2", "layer3", "layer4")
    vgg = torchvision_model("vgg11", in_channels=3, num_classes=5, image_size=(32, 32))
    assert vgg.tap_layers == ("features.2", "features.5", "features.10", "features.15", "features.20")  # its 5 pools
    with pytest.raises(BoundaryError, match="RGB images"):
        torchvision_model("resnet18", in_channels=1, num_classes=5, image_size=(32, 32))


def test_default_layers_of_a_zoo_classifier_go_through_the_one_rule():
    cfg = cfg_for("dataset=digits", "model=timm", "model.arch.model_name=test_resnet")
    data = load_dataset(cfg)
    model = build_model(cfg, data)
    assert default_layers(model) == ["input", "act1", "layer1", "layer2", "layer3", "layer4"]


# --- preprocessing: the zoos' published settings ------------------------------------------------------

def test_timm_preprocessing_follows_its_pretrained_config():
    # resnet50's default weights a1_in1k: 224 px, crop_pct 0.95 -> resize floor(224 / 0.95) = 235, bicubic
    prep = zoo_preprocessing(cfg_for("dataset=imagenet", "model=timm", "model.arch.model_name=resnet50"))
    assert (prep.input_size, prep.resize, prep.interpolation) == ((224, 224), 235, "bicubic")
    assert prep.mean == pytest.approx((0.485, 0.456, 0.406)) and prep.std == pytest.approx((0.229, 0.224, 0.225))
    # the torchvision weights in timm (tv_in1k): crop_pct 0.875 -> 256, bilinear
    prep = zoo_preprocessing(cfg_for("dataset=imagenet", "model=timm", "model.arch.model_name=resnet50",
                                     "model.weights=tv_in1k"))
    assert (prep.input_size, prep.resize, prep.interpolation) == ((224, 224), 256, "bilinear")


def test_torchvision_preprocessing_is_the_weights_transforms():
    # ResNet50_Weights.IMAGENET1K_V2 (DEFAULT): resize 232, crop 224; V1: 256 / 224 (torchvision's docs)
    v2 = zoo_preprocessing(cfg_for("dataset=imagenet", "model=torchvision", "model.arch.model_name=resnet50"))
    v1 = zoo_preprocessing(cfg_for("dataset=imagenet", "model=torchvision", "model.arch.model_name=resnet50",
                                   "model.weights=IMAGENET1K_V1"))
    assert (v2.input_size, v2.resize, v1.resize, v2.interpolation) == ((224, 224), 232, 256, "bilinear")
    inception = zoo_preprocessing(cfg_for("dataset=imagenet", "model=torchvision", "model.arch.model_name=inception_v3"))
    assert (inception.input_size, inception.resize) == ((299, 299), 342)


def test_the_zoo_data_config_drives_the_folder_transform_and_dct_blocks_fit_its_size(tmp_path):
    write_folder(tmp_path / "imgs", [(10, 20, 30), (200, 100, 50)])
    cfg = cfg_for("dataset=image_folder", f"dataset.root={tmp_path / 'imgs'}", "model=timm",
                  "model.arch.model_name=test_resnet")
    cfg = apply_zoo_preprocessing(cfg)
    assert list(cfg.dataset.loader.image_size) == [160, 160] and cfg.dataset.loader.resize == 168  # 160 / 0.95
    assert cfg.dataset.loader.interpolation == "bilinear"  # test_resnet.r160_in1k: bilinear (test_convnext: bicubic)
    data = load_dataset(cfg)
    assert data.image_size == (160, 160)
    assert len(diagonal_blocks(160, 16, 16)) == 10 and len(diagonal_blocks(288, 16, 16)) == 18
    off = apply_zoo_preprocessing(cfg_for("dataset=image_folder", f"dataset.root={tmp_path / 'imgs'}", "model=timm",
                                          "model.data_config=false"))
    assert off.dataset.loader.image_size == 224 and off.dataset.loader.resize == 256


def test_robustbench_preprocessing_is_its_own():
    _robustbench_or_skip()
    from torchvision import transforms

    from boundary_cli.models.robustbench_zoo import compose_preprocessing

    prep = zoo_preprocessing(cfg_for("dataset=imagenet", "model=robustbench", "model.arch.model_name=Salman2020Do_R50"))
    assert (prep.input_size, prep.resize, prep.interpolation, prep.mean) == ((224, 224), 256, "bilinear", None)
    crop = compose_preprocessing(transforms.Compose([transforms.CenterCrop(288), transforms.ToTensor()]), (224, 224))
    assert (crop.input_size, crop.resize) == ((288, 288), "crop")
    with pytest.raises(BoundaryError, match="Normalize"):
        compose_preprocessing(transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]),
                              (32, 32))


# --- normalisation exactly once ------------------------------------------------------------------------

class _Recorder:
    """A forward pre-hook that keeps what reaches the bare network."""

    def __init__(self, net):
        self.seen = []
        net.register_forward_pre_hook(lambda _m, args: self.seen.append(args[0].detach().clone()))


def test_timm_checkpoint_normalises_once_with_the_weights_statistics(tmp_path):
    # test_convnext's weights use mean = std = 0.5: the bare net must see exactly (x - 0.5) / 0.5 = 2x - 1
    torch.manual_seed(0)
    net = timm.create_model("test_convnext", num_classes=2)
    safetensors_torch.save_file(net.state_dict(), str(tmp_path / "convnext.safetensors"))
    write_folder(tmp_path / "imgs", [(51, 102, 204), (0, 255, 128)])
    cfg = apply_zoo_preprocessing(cfg_for(
        "dataset=image_folder", f"dataset.root={tmp_path / 'imgs'}", "model=timm", "model.arch.model_name=test_convnext",
        f"model.checkpoint={tmp_path / 'convnext.safetensors'}"))
    data = load_dataset(cfg)
    model = obtain_model(cfg, data, torch.device("cpu")).model
    recorder = _Recorder(model.net)
    x = data.test_x[torch.arange(2)]
    model(x)
    expected = torch.tensor([[51, 102, 204], [0, 255, 128]], dtype=torch.float32).div(255).mul(2).sub(1)
    seen = recorder.seen[0]
    assert torch.allclose(seen.amin(dim=(2, 3)), expected, atol=1e-6)
    assert torch.allclose(seen.amax(dim=(2, 3)), expected, atol=1e-6)
    assert torch.equal(model.net.state_dict()["stem.0.weight"], net.state_dict()["stem.0.weight"])


def test_torchvision_checkpoint_normalises_with_the_weights_statistics_and_trained_here_with_the_datasets(tmp_path):
    torch.manual_seed(0)
    import torchvision
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pt")
    write_cifar10_tree(tmp_path / "data", n_train_per_batch=4, n_test=6)
    base = ["dataset=cifar10", "dataset.check_integrity=false", f"paths.data_dir={tmp_path / 'data'}",
            "model=torchvision"]
    cfg = cfg_for(*base, f"model.checkpoint={tmp_path / 'r18.pt'}")
    model = obtain_model(cfg, load_dataset(cfg), torch.device("cpu")).model
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    recorder = _Recorder(model.net)
    x = torch.full((1, 3, 32, 32), 0.5)
    model(x)
    expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(recorder.seen[0][0, :, 0, 0], expected, atol=1e-6)
    trained_here = build_model(cfg_for(*base), load_dataset(cfg_for(*base)))
    assert torch.allclose(trained_here.normalize.mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))


def test_robustbench_model_sees_the_pixels_unnormalised(tmp_path):
    _robustbench_or_skip()
    write_cifar10_tree(tmp_path / "data", n_train_per_batch=4, n_test=6)
    cfg = cfg_for("dataset=cifar10", "dataset.check_integrity=false", f"paths.data_dir={tmp_path / 'data'}",
                  "model=robustbench", "model.arch.model_name=Wong2020Fast", "model.pretrained=false")
    model = build_model(cfg, load_dataset(cfg))
    recorder = _Recorder(model.net)
    x = torch.rand(2, 3, 32, 32)
    model.eval()(x)
    assert torch.equal(recorder.seen[0], x)  # RobustBench's net normalises inside; ours is the identity


# --- RobustBench's file format, loaded by name --------------------------------------------------------

def test_robustbench_entry_saved_in_its_zoo_format_loads_by_name(tmp_path):
    _robustbench_or_skip()
    from boundary_cli.models.robustbench_zoo import robustbench_model, weights_path

    torch.manual_seed(0)
    random_net = robustbench_model("Wong2020Fast", "Linf", "cifar10", str(tmp_path), 3, 10, (32, 32),
                                   pretrained=False)
    path = weights_path(tmp_path, "cifar10", "Linf", "Wong2020Fast")
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in random_net.state_dict().items()}}, path)
    loaded = robustbench_model("Wong2020Fast", "Linf", "cifar10", str(tmp_path), 3, 10, (32, 32))
    assert not loaded.training
    for key, value in random_net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.tap_layers == ("layer1", "layer2", "layer3", "layer4")


# --- identity, errors ---------------------------------------------------------------------------------

def test_zoo_identity_names_source_id_and_weights(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"weights")
    assert zoo_identity(cfg_for("model=timm", "model.arch.model_name=resnet50", "model.pretrained=true")) == \
        dict(model="timm:resnet50", training="pretrained:a1_in1k")
    assert zoo_identity(cfg_for("model=torchvision", "model.arch.model_name=resnet50", "model.pretrained=true")) == \
        dict(model="torchvision:resnet50", training="pretrained:IMAGENET1K_V2")
    # sha256(b"weights") = 9a129038d9a0... (hashlib)
    assert zoo_identity(cfg_for("model=timm", f"model.checkpoint={tmp_path / 'w.pt'}"))["training"] == "checkpoint:9a129038d9a0"
    assert zoo_identity(cfg_for("model=timm"))["training"] == "reference"


@pytest.mark.parametrize("overrides, expected", [
    (["model=timm", "model.arch.model_name=resnet5"], r"unknown timm model 'resnet5'; near matches: .*resnet50"),
    (["model=torchvision", "model.arch.model_name=resnet"], r"unknown torchvision classifier 'resnet'; near matches: .*resnet"),
    (["model=torchvision", "model.arch.model_name=resnet50", "model.weights=IMAGENET1K_V9"],
     r"no weights 'IMAGENET1K_V9'; valid: IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT"),
])
def test_unknown_zoo_names_list_near_matches(overrides, expected):
    with pytest.raises(BoundaryError, match=expected):
        zoo_preprocessing(cfg_for("dataset=imagenet", *overrides))


def test_unknown_robustbench_names_list_near_matches():
    _robustbench_or_skip()
    with pytest.raises(BoundaryError, match=r"near matches: Engstrom2019Robustness"):
        zoo_preprocessing(cfg_for("dataset=cifar10", "model=robustbench", "model.arch.model_name=Engstrom2019Robust",
                                  "model.arch.threat_model=L2"))
    with pytest.raises(BoundaryError, match=r"no 'L2' leaderboard for cifar100; valid: Linf, corruptions"):
        zoo_preprocessing(cfg_for("dataset=cifar100", "model=robustbench", "model.arch.threat_model=L2"))
    with pytest.raises(BoundaryError, match=r"leaderboards for cifar10, cifar100, imagenet, not 'digits'"):
        zoo_preprocessing(cfg_for("dataset=digits", "model=robustbench"))


@pytest.mark.slow
def test_offline_pretrained_requests_are_one_line(tmp_path):
    """timm (Hugging Face hub, offline mode), torchvision (an empty torch hub, no network here or a
    refused download) and RobustBench (an empty model dir) each name where the file must lie."""
    _robustbench_or_skip()
    write_folder(tmp_path / "imgs", [(1, 2, 3)] * 2)
    env = cli_env(tmp_path / "cache", HF_HUB_OFFLINE="1", TORCH_HOME=str(tmp_path / "torch"),
                  HF_HOME=str(tmp_path / "hf"), https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    folder = ["dataset=image_folder", f"dataset.root={tmp_path / 'imgs'}", "dataset.loader.num_classes=1000"]
    cases = [
        ([*folder, "model=timm", "model.arch.model_name=resnet18", "model.pretrained=true"], ["the Hugging Face cache", str(tmp_path / "hf"), "model.checkpoint="]),
        ([*folder, "model=torchvision", "model.pretrained=true"],
         [os.path.join(str(tmp_path / "torch"), "hub", "checkpoints", "resnet18-f37072fd.pth")]),
        (["dataset=cifar10", "model=robustbench", "model.arch.model_name=Wong2020Fast"],
         [os.path.join(str(tmp_path / "cache"), "robustbench", "cifar10", "Linf", "Wong2020Fast.pt")]),
    ]
    write_cifar10_tree(tmp_path / "data", n_train_per_batch=4, n_test=6)
    for overrides, needles in cases:
        proc = boundary("run", *overrides, f"paths.data_dir={tmp_path / 'data'}", "dataset.check_integrity=false"
                        if "dataset=cifar10" in overrides else "experiment.n_samples=1",
                        f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path, env=env, check=False)
        assert proc.returncode != 0
        lines = error_lines(proc)
        assert len(lines) == 1, proc.stderr[-2000:]
        for needle in needles:
            assert needle in lines[0], lines[0]


# --- the CLI, as a user types it ----------------------------------------------------------------------

@pytest.mark.slow
def test_timm_margins_through_the_cli_on_an_image_tree(tmp_path):
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", num_classes=3)
    safetensors_torch.save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    write_folder(tmp_path / "imgs", [(30, 60, 90), (200, 10, 10), (10, 200, 10)], size=(180, 200))
    env = cli_env(tmp_path / "cache")
    boundary("run", "dataset=image_folder", f"dataset.root={tmp_path / 'imgs'}", "model=timm",
             "model.arch.model_name=test_resnet", f"model.checkpoint={tmp_path / 'w.safetensors'}",
             "experiment.n_samples=2", "experiment.deepfool.max_iter=20", "experiment.refine=none",
             f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path, env=env)
    margins = pd.read_csv(tmp_path / "out" / "margins.csv")
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert set(margins["model"]) == {"timm:test_resnet"} and set(margins["training"]) == {info["identity"]["training"]}
    assert info["identity"]["training"].startswith("checkpoint:") and info["model"]["zoo"] == "timm"
    assert margins["block"].max() == 160 and (margins["subspace"] == "full").sum() == 2  # timm's 160 px input
    assert info["n_forward"] > 0 and info["n_backward"] > 0 and info["samples_per_s"] > 0


@pytest.mark.slow
def test_robustbench_margins_through_the_cli_on_cifar_files(tmp_path):
    _robustbench_or_skip()
    from boundary_cli.models.robustbench_zoo import robustbench_model, weights_path

    torch.manual_seed(0)
    path = weights_path(tmp_path / "cache" / "robustbench", "cifar10", "L2", "Rice2020Overfitting")
    path.parent.mkdir(parents=True)
    net = robustbench_model("Rice2020Overfitting", "L2", "cifar10", str(tmp_path), 3, 10, (32, 32), pretrained=False)
    torch.save({"state_dict": net.state_dict()}, path)
    write_cifar10_tree(tmp_path / "data", n_train_per_batch=4, n_test=6)
    env = cli_env(tmp_path / "cache", tmp_path / "data")
    boundary("run", "dataset=cifar10", "dataset.check_integrity=false", "model=robustbench",
             "model.arch.model_name=Rice2020Overfitting", "model.arch.threat_model=L2", "experiment.n_samples=2",
             "experiment.deepfool.max_iter=20", "experiment.refine=none", f"hydra.run.dir={tmp_path / 'out'}",
             cwd=tmp_path, env=env)
    margins = pd.read_csv(tmp_path / "out" / "margins.csv")
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert set(margins["model"]) == {"robustbench:L2/Rice2020Overfitting"}
    assert set(margins["training"]) == {"pretrained:cifar10"} and info["model"]["source"] == "robustbench"
    assert info["test_accuracy"] is not None and margins["margin_l2"].notna().all()


@pytest.mark.slow
def test_sweep_over_timm_ids_trained_here_reports_one_table(tmp_path):
    """Two timm architectures trained here (training=quick on tiny CIFAR files), swept with -m, and
    merged by boundary report: the model column tells them apart, the training column is the recipe."""
    write_cifar10_tree(tmp_path / "data", n_train_per_batch=8, n_test=10)
    env = cli_env(tmp_path / "cache", tmp_path / "data")
    sweep = tmp_path / "sweep"
    boundary("run", "-m", "hydra/launcher=local", "dataset=cifar10", "dataset.check_integrity=false", "model=timm",
             "model.arch.model_name=test_resnet,test_efficientnet", "training=quick", "training.min_accuracy=null",
             "experiment.n_samples=2", "experiment.deepfool.max_iter=20", "experiment.refine=none",
             f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=env)
    boundary("report", str(sweep), cwd=tmp_path, env=env)
    merged = pd.read_csv(sweep / "report" / "margins.csv")
    assert set(merged["model"]) == {"timm:test_resnet", "timm:test_efficientnet"}
    assert set(merged["training"]) == {"quick"} and merged["run"].nunique() == 2
    assert len(merged) == 2 * 2 * 14  # 2 runs x 2 samples x (full + 13 blocks of 8 on 32)


@pytest.mark.slow
def test_timm_published_weights_from_the_hugging_face_cache_offline(tmp_path):
    """timm's published weights where the hub keeps them (<HF_HUB_CACHE>/models--timm--<name>.<tag>/
    snapshots/<revision>/model.safetensors), read offline: the run measures exactly those weights."""
    torch.manual_seed(0)
    net = timm.create_model("test_resnet")  # 1000 classes, as the published ones
    revision = "0" * 40
    repo = tmp_path / "hf" / "models--timm--test_resnet.r160_in1k"
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    safetensors_torch.save_file(net.state_dict(), str(repo / "snapshots" / revision / "model.safetensors"))
    write_folder(tmp_path / "imgs", [(30, 60, 90), (200, 10, 10)], size=(170, 190))
    env = cli_env(tmp_path / "cache", HF_HUB_CACHE=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    boundary("run", "dataset=image_folder", f"dataset.root={tmp_path / 'imgs'}", "dataset.loader.num_classes=1000",
             "model=timm", "model.arch.model_name=test_resnet", "model.pretrained=true", "experiment.n_samples=2",
             "experiment.subspaces.include_full=true", "experiment.subspaces.block=80", "experiment.subspaces.step=80",
             "experiment.deepfool.max_iter=10", "experiment.refine=none", f"hydra.run.dir={tmp_path / 'out'}",
             cwd=tmp_path, env=env)
    margins = pd.read_csv(tmp_path / "out" / "margins.csv")
    assert set(margins["model"]) == {"timm:test_resnet"} and set(margins["training"]) == {"pretrained:r160_in1k"}
    logits_here = net.eval()((torch.tensor([30, 60, 90]).div(255).view(1, 3, 1, 1).expand(1, 3, 160, 160) - 0.5) / 0.5)
    first = margins[margins["sample_index"] == 0].iloc[0]
    assert int(first["label"]) == 0 and int(first["prediction"]) == int(logits_here.argmax())
