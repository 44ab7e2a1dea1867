"""ImageNet and ImageFolder sets decoded per batch: both torchvision layouts on tiny fake trees, the
evaluation transform, the variant applied per batch, and one-line errors."""

from __future__ import annotations

import pytest
import torch
from fake_data import write_imagenet_tree
from PIL import Image
from torchvision import transforms

from boundary_cli.data.image_folder import load_image_folder
from boundary_cli.data.imagenet import imagenet_layout, load_imagenet
from boundary_cli.data.lazy import LazyImages, is_lazy
from boundary_cli.data.variants import FLIP, NONE, apply_variant
from boundary_cli.errors import BoundaryError
from boundary_cli.geometry.dct import dct_flip


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    with_meta = tmp_path_factory.mktemp("imagenet_meta")
    folder_only = tmp_path_factory.mktemp("imagenet_folder")
    info = write_imagenet_tree(with_meta / "imagenet", with_meta=True)
    write_imagenet_tree(folder_only / "imagenet", with_meta=False)
    return {"meta": with_meta, "folder": folder_only, "info": info}


def test_both_layouts_give_the_same_images_and_labels(trees):
    assert imagenet_layout(trees["meta"] / "imagenet") == "imagenet"
    assert imagenet_layout(trees["folder"] / "imagenet") == "image_folder"
    a = load_imagenet(trees["meta"], trees["meta"])
    b = load_imagenet(trees["folder"], trees["folder"])
    assert is_lazy(a.test_x) and a.test_x.shape == (6, 3, 224, 224) and a.image_size == (224, 224)
    assert a.num_classes == b.num_classes == 1000  # padded to ImageNet's classes, labels index the wnids
    assert a.test_y.tolist() == b.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert a.classes[1] == "class 1, synonym 1" and b.classes[1] == "n01443537"
    assert len(a.train_y) == 0 and a.train_x.shape == (0, 3, 224, 224)
    assert torch.equal(a.test_x[torch.tensor([4, 1])], b.test_x[[4, 1]])


def test_images_get_the_standard_evaluation_transform(trees):
    data = load_imagenet(trees["meta"], trees["meta"])
    path = trees["info"]["files"][3]
    expected = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])(
        Image.open(path).convert("RGB"))
    assert torch.equal(data.test_x[3], expected)
    assert data.test_x[1:4].shape == (3, 3, 224, 224) and data.test_x[:0].shape == (0, 3, 224, 224)
    assert 0.0 <= float(data.test_x[:].min()) and float(data.test_x[:].max()) <= 1.0


def test_decoding_threads_do_not_change_the_images(trees):
    data = load_imagenet(trees["meta"], trees["meta"], workers=0)
    threaded = LazyImages(data.test_x.dataset, data.test_x.image_shape, workers=4)
    from boundary_cli.data import lazy

    old, lazy.MIN_IMAGES_FOR_WORKERS = lazy.MIN_IMAGES_FOR_WORKERS, 1
    try:
        assert torch.equal(threaded[:], data.test_x[:])
    finally:
        lazy.MIN_IMAGES_FOR_WORKERS = old


def test_flip_variant_is_applied_per_batch_and_checked(trees):
    raw = load_imagenet(trees["meta"], trees["meta"])
    flipped = apply_variant(raw, FLIP)
    assert flipped.variant.name == "flip" and flipped.value_range == FLIP.declared_range(224, 224)
    idx = torch.tensor([0, 5, 2])
    assert torch.allclose(flipped.test_x[idx], dct_flip(raw.test_x[idx]), atol=1e-6)
    assert float(flipped.test_x[idx].min()) < 0  # flipped images leave [0, 1], legitimately

    def broken(x):
        return x * 3.0  # pretend the decoder returned values outside [0, 1]
    bad = apply_variant(raw.__class__(**{**raw.__dict__, "test_x": raw.test_x.with_transform(broken)}), NONE)
    with pytest.raises(BoundaryError, match="outside the range"):
        bad.test_x[:2]


def test_missing_imagenet_names_both_layouts(tmp_path):
    (tmp_path / "imagenet" / "val").mkdir(parents=True)
    with pytest.raises(BoundaryError) as err:
        load_imagenet(tmp_path, tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "meta.bin" in msg and "val/<wnid>/*.JPEG" in msg and "dataset.root" in msg


def test_image_folder_takes_size_channels_and_classes_from_the_config(trees, tmp_path):
    root = trees["folder"] / "imagenet" / "val"
    data = load_image_folder(trees["folder"], trees["folder"], root=str(root), image_size=[32, 48], resize=None,
                             channels=1)
    assert data.test_x.shape == (6, 1, 32, 48) and data.classes == list(trees["info"]["wnids"])
    padded = load_image_folder(trees["folder"], trees["folder"], root="imagenet/val", image_size=40, resize=44,
                               num_classes=10)
    assert padded.test_x.shape == (6, 3, 40, 40) and padded.num_classes == 10
    with pytest.raises(BoundaryError, match="dataset.root=PATH"):
        load_image_folder(trees["folder"], trees["folder"])
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "notes.txt").write_text("no image here")
    with pytest.raises(BoundaryError, match="no images found"):
        load_image_folder(trees["folder"], trees["folder"], root=str(tmp_path))
    with pytest.raises(BoundaryError, match="num_classes"):
        load_image_folder(trees["folder"], trees["folder"], root=str(root), num_classes=2)
