"""dataset=cifar100: CIFAR-100 in torchvision's layout (``<data_dir>/cifar-100-python/{train,test,meta}``),
read from tiny files in the real pickle format, through the loader, the composed config and the CLI."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from conftest import boundary, cli_env
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from boundary_cli.data.cifar import load_cifar100
from boundary_cli.errors import BoundaryError
from boundary_cli.runner import load_dataset

# CIFAR-100's 100 fine classes, in the order of the real meta file's fine_label_names (alphabetical)
FINE_NAMES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl",
    "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair",
    "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin",
    "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp",
    "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel",
    "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
]
COARSE_NAMES = [f"superclass_{k}" for k in range(20)]
# planted fine labels (both ends of 0..99 and labels above 9); coarse labels deliberately differ from them
TRAIN_FINE = [99, 0, 42, 7, 63, 18]
TRAIN_COARSE = [19, 4, 3, 0, 11, 2]
TEST_FINE = [5, 98, 31, 0]
TEST_COARSE = [17, 1, 6, 4]


def cfg_for(*overrides: str):
    with initialize_config_module(version_base="1.3", config_module="boundary_cli.conf"):
        return compose("config", overrides=list(overrides))


def _images(n: int, seed: int) -> np.ndarray:
    """(n, 32, 32, 3) uint8: image i is a solid colour of its own, plus one pure-green pixel at row 1, column 2."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 200, size=(n, 3), dtype=np.uint8)
    images = np.broadcast_to(colours[:, None, None, :], (n, 32, 32, 3)).copy()
    images[:, 1, 2] = (0, 255, 0)
    return images


def _row(image: np.ndarray) -> np.ndarray:
    """One image as a CIFAR data row: 1024 red, then 1024 green, then 1024 blue values, each plane row-major."""
    return np.concatenate([image[..., c].ravel() for c in range(3)])


def write_cifar100_tree(root: Path) -> dict[str, np.ndarray]:
    """``<root>/cifar-100-python/{train,test,meta}`` with the keys the real (unpickled) files have."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    planted = {"train": _images(len(TRAIN_FINE), 1), "test": _images(len(TEST_FINE), 2)}
    for split, fine, coarse in [("train", TRAIN_FINE, TRAIN_COARSE), ("test", TEST_FINE, TEST_COARSE)]:
        entry = {
            "filenames": [f"fake_{split}_{i}.png" for i in range(len(fine))],
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": list(fine),
            "coarse_labels": list(coarse),
            "data": np.stack([_row(image) for image in planted[split]]),
        }
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": FINE_NAMES, "coarse_label_names": COARSE_NAMES}, f)
    return planted


def test_the_fine_class_list_is_cifar100s() -> None:
    assert len(FINE_NAMES) == 100 and len(set(FINE_NAMES)) == 100 and FINE_NAMES == sorted(FINE_NAMES)


def test_tiny_tree_loads_with_fine_labels_and_meta_names(tmp_path: Path) -> None:
    original = torchvision.datasets.cifar.check_integrity
    planted = write_cifar100_tree(tmp_path)
    data = load_cifar100(tmp_path, tmp_path / "cache", check_integrity=False)
    assert torchvision.datasets.cifar.check_integrity is original  # the md5 bypass is undone
    assert data.name == "cifar100" and data.classes == FINE_NAMES and data.num_classes == 100
    assert data.train_x.shape == (6, 3, 32, 32) and data.test_x.shape == (4, 3, 32, 32)
    assert data.train_y.tolist() == TRAIN_FINE and data.test_y.tolist() == TEST_FINE
    assert data.train_y.dtype == torch.int64
    for x, split in [(data.train_x, "train"), (data.test_x, "test")]:
        assert x.dtype == torch.float32 and float(x.min()) >= 0.0 and float(x.max()) == 1.0
        # the green pixel at row 1, column 2 lands in channel 1 at [1, 2], and nowhere else
        assert (x[:, :, 1, 2] == torch.tensor([0.0, 1.0, 0.0])).all()
        assert x[:, 1, 2, 1].max() < 200 / 255 + 1e-6
        colour = torch.from_numpy(planted[split][:, 0, 0].astype(np.float32)) / 255
        assert torch.allclose(x[:, :, 0, 0], colour) and torch.allclose(x[:, :, 31, 31], colour)


def test_missing_tree_names_the_folder_and_download(tmp_path: Path) -> None:
    with pytest.raises(BoundaryError) as info:
        load_cifar100(tmp_path, tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message and message.startswith("CIFAR-100 files not found")
    assert str(tmp_path / "cifar-100-python") in message and "train, test, meta (all missing)" in message
    assert "dataset.download=true" in message and "cifar-100-python.tar.gz" in message


def test_missing_meta_is_named_even_without_integrity_check(tmp_path: Path) -> None:
    write_cifar100_tree(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(BoundaryError, match="missing meta\\)") as info:
        load_cifar100(tmp_path, tmp_path / "cache", check_integrity=False)
    assert "\n" not in str(info.value)


def test_tiny_tree_fails_the_md5_check_by_default(tmp_path: Path) -> None:
    write_cifar100_tree(tmp_path)
    with pytest.raises(BoundaryError) as info:
        load_cifar100(tmp_path, tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message and message.startswith("CIFAR-100 files in")
    assert "md5" in message and "train, test, meta" in message and "dataset.check_integrity=false" in message


def test_download_without_network_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(url: str, *args, **kwargs) -> None:
        raise OSError(f"<urlopen error [Errno -3] Temporary failure in name resolution> for {url}")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", no_network)
    with pytest.raises(BoundaryError) as info:
        load_cifar100(tmp_path, tmp_path / "cache", download=True)
    message = str(info.value)
    assert "\n" not in message and "could not download CIFAR-100" in message and "cifar-100-python.tar.gz" in message


def test_unreadable_file_is_one_line(tmp_path: Path) -> None:
    write_cifar100_tree(tmp_path)
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"not a pickle")
    with pytest.raises(BoundaryError, match="could not read CIFAR-100 from") as info:
        load_cifar100(tmp_path, tmp_path / "cache", check_integrity=False)
    assert "\n" not in str(info.value)


def test_config_composes_like_cifar10(tmp_path: Path) -> None:
    cfg = cfg_for("dataset=cifar100")
    ten = cfg_for("dataset=cifar10")
    assert set(cfg.dataset) == set(ten.dataset) and set(cfg.dataset.loader) == set(ten.dataset.loader)
    assert cfg.dataset.name == "cifar100"
    assert cfg.dataset.loader._target_ == "boundary_cli.data.cifar.load_cifar100"
    assert list(cfg.dataset.mean) == [0.5071, 0.4865, 0.4409] and list(cfg.dataset.std) == [0.2673, 0.2564, 0.2762]
    assert (cfg.experiment.subspaces.block, cfg.experiment.subspaces.step) == (8, 2)
    assert cfg.dataset.adversarial_epsilon == 1.0 and cfg.dataset.download is False
    assert cfg.dataset.check_integrity is True and cfg.dataset.variant == "none"
    assert OmegaConf.to_container(cfg.dataset.low_pass) == OmegaConf.to_container(ten.dataset.low_pass)
    assert cfg_for("dataset=cifar100", "training=adversarial").training.recipe.epsilon == 1.0

    write_cifar100_tree(tmp_path)
    cfg = cfg_for("dataset=cifar100", "dataset.check_integrity=false", f"paths.data_dir={tmp_path}",
                  f"paths.cache_dir={tmp_path / 'cache'}", "dataset.train_first=4")
    data = load_dataset(cfg)
    assert data.name == "cifar100" and data.num_classes == 100 and data.train_y.tolist() == TRAIN_FINE[:4]
    with pytest.raises(BoundaryError, match="md5"):
        load_dataset(cfg_for("dataset=cifar100", f"paths.data_dir={tmp_path}"))


@pytest.mark.slow  # starts the CLI in subprocesses
def test_cifar100_through_the_cli(tmp_path: Path) -> None:
    """`boundary list` names cifar100; a margin run on the tiny tree with a given small_cnn checkpoint (no training)
    measures 100-class predictions on 3 channels and 13 diagonal 8x8 blocks plus the full space."""
    import pandas as pd

    from boundary_cli.models.small_cnn import small_cnn

    write_cifar100_tree(tmp_path / "data")
    env = cli_env(tmp_path / "cache", tmp_path / "data")
    listed = boundary("list", cwd=tmp_path, env=env).stdout
    assert any(line.split()[:1] == ["cifar100"] and "CIFAR-100" in line for line in listed.splitlines()), listed

    torch.manual_seed(0)
    ckpt = tmp_path / "small_cnn_cifar100.pt"
    torch.save(small_cnn(3, 100, (32, 32)).state_dict(), ckpt)
    boundary("run", "dataset=cifar100", "dataset.check_integrity=false", f"model.checkpoint={ckpt}",
             "experiment.n_samples=2", "experiment.deepfool.max_iter=5", "experiment.refine=none",
             f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env)
    m = pd.read_csv(tmp_path / "run" / "margins.csv")
    assert len(m) == 2 * 14 and set(m["dataset"]) == {"cifar100"}
    assert set(m["label"]).issubset(set(TEST_FINE)) and m["prediction"].between(0, 99).all()
    assert (m.loc[m["subspace"] == "full", "dim"] == 3 * 32 * 32).all()
    assert (m.loc[m["subspace"] != "full", "dim"] == 3 * 64).all()
