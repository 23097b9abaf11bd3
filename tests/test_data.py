"""Dataset registry, seeded stratified splits, image folders, transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import make_image_folder
from tlrun.config import DataConfig
from tlrun.data.sources import FASHION_DIRS, OPENCV_DIGITS, ImageSet
from tlrun.data.splits import load_run_data, read_split_table, split_rows
from tlrun.data.transforms import ImageGeometry, build_transform, is_deterministic
from tlrun.errors import ConfigError, DataError


def data_cfg(**overrides):
    cfg = OmegaConf.structured(DataConfig)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_digits_split_is_seeded_stratified_and_disjoint():
    a = load_run_data(data_cfg(), seed=0)
    b = load_run_data(data_cfg(), seed=0)
    c = load_run_data(data_cfg(), seed=1)
    assert a.splits["test"].ids == b.splits["test"].ids
    assert a.splits["test"].ids != c.splits["test"].ids
    ids = [set(a.splits[s].ids) for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(map(len, ids)) == 1797
    counts = np.bincount(a.splits["test"].labels, minlength=10)
    assert counts.min() >= 25 and counts.max() <= 29  # ~15% of ~180 per class


def test_max_per_class_caps_every_class():
    data = load_run_data(data_cfg(max_per_class=10), seed=0)
    total = sum(len(data.splits[s]) for s in ("train", "val", "test"))
    assert total == 100


@pytest.mark.skipif(not OPENCV_DIGITS.is_file(), reason="opencv-doc is not installed")
def test_cvdigits_has_5000_labelled_digits():
    data = load_run_data(data_cfg(name="cvdigits"), seed=0)
    total = sum(len(data.splits[s]) for s in ("train", "val", "test"))
    assert total == 5000
    assert data.splits["train"].pixels.shape[1:] == (1, 20, 20)


@pytest.mark.skipif(not any(d.is_dir() for d in FASHION_DIRS), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_keeps_its_test_set():
    data = load_run_data(data_cfg(name="fashion_mnist", max_per_class=20), seed=0)
    assert len(data.splits["test"]) == 200  # the official test part, capped
    assert len(data.splits["train"]) + len(data.splits["val"]) == 200
    assert data.classes[0] == "T-shirt/top"


def test_image_folder_pool_and_fixed_splits(tmp_path: Path):
    pool = make_image_folder(tmp_path / "pool", per_class=10)
    data = load_run_data(data_cfg(name="imagefolder", root=str(pool)), seed=0)
    assert data.classes == ["circle", "cross", "square"]
    assert sum(len(data.splits[s]) for s in ("train", "val", "test")) == 30

    fixed = tmp_path / "fixed"
    make_image_folder(fixed / "train", per_class=8)
    make_image_folder(fixed / "test", per_class=3, seed=1)
    data = load_run_data(data_cfg(name="imagefolder", root=str(fixed)), seed=0)
    assert len(data.splits["test"]) == 9 and all("/test/" in i for i in data.splits["test"].ids)
    assert len(data.splits["train"]) + len(data.splits["val"]) == 24


def test_image_folder_class_mismatch_between_splits(tmp_path: Path):
    make_image_folder(tmp_path / "train", per_class=4)
    make_image_folder(tmp_path / "val", classes=("circle", "square"), per_class=2)
    with pytest.raises(DataError, match="differ from train"):
        load_run_data(data_cfg(name="imagefolder", root=str(tmp_path)), seed=0)


def test_bad_images_skip_mode(tmp_path: Path):
    root = make_image_folder(tmp_path / "imgs", per_class=6)
    (root / "circle" / "zz_bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(DataError, match="zz_bad.jpg"):
        load_run_data(data_cfg(name="imagefolder", root=str(root)), seed=0)
    data = load_run_data(data_cfg(name="imagefolder", root=str(root), bad_images="skip"), seed=0)
    assert sum(len(data.splits[s]) for s in ("train", "val", "test")) == 18


def test_unknown_dataset_suggests_names():
    with pytest.raises(ConfigError, match="cvdigits"):
        load_run_data(data_cfg(name="cvdigit"), seed=0)


def test_transforms_shape_normalisation_and_determinism():
    geometry = ImageGeometry(crop_size=24, resize_size=24, mean=(0.5,) * 3, std=(0.5,) * 3)
    image = torch.full((3, 8, 8), 255, dtype=torch.uint8)
    out = build_transform(geometry, None, train=False)(image)
    assert out.shape == (3, 24, 24) and torch.allclose(out, torch.ones_like(out))
    augment = data_cfg().augment
    assert is_deterministic(augment)
    augment.hflip = True
    assert not is_deterministic(augment)
    augment.random_resized_crop = True
    augment.auto = "trivial"
    augment.random_erasing = 0.5
    out = build_transform(geometry, augment, train=True)(torch.randint(0, 255, (3, 30, 30), dtype=torch.uint8))
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32


def test_small_image_folders_are_decoded_once_into_a_uint8_store(tmp_path: Path, caplog):
    """The store holds each file resized (shorter side) and centre-cropped to the eval resize size:
    the eval transform gives the same pixels as from the file, augmentation runs on the tensors."""
    from PIL import Image

    from tlrun.data.datasets import ImageDataset, in_memory

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(4):  # landscape and portrait, not square
            shape = (36, 50, 3) if i % 2 else (50, 36, 3)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    files = load_run_data(data_cfg(name="imagefolder", root=str(tmp_path), split=[0.5, 0.25, 0.25]), seed=0)
    images = files.splits["train"]
    geometry = ImageGeometry(crop_size=24, resize_size=28, mean=(0.5,) * 3, std=(0.5,) * 3)
    with caplog.at_level("INFO", logger="tlrun.data.datasets"):
        stored = in_memory(images, geometry, max_mb=1, split="train")
    assert "decoded once into memory" in caplog.text
    assert stored.pixels.dtype == torch.uint8 and stored.pixels.shape == (len(images), 3, 28, 28)
    assert stored.ids == images.ids and (stored.labels == images.labels).all()
    eval_tf = build_transform(geometry, None, train=False)
    from_files, from_store = ImageDataset(images, eval_tf), ImageDataset(stored, eval_tf)
    for index in range(len(images)):
        assert torch.equal(from_files[index][0], from_store[index][0])
    augment = data_cfg(**{"augment.random_resized_crop": True, "augment.hflip": True}).augment
    assert ImageDataset(stored, build_transform(geometry, augment, train=True))[0][0].shape == (3, 24, 24)
    # Over the limit (or data.in_memory_max_mb=0): the files stream, decoded on access.
    assert in_memory(images, geometry, max_mb=0) is images


def test_split_csv_reads_back_ids_that_look_like_missing_values(tmp_path: Path):
    """A sample or class named "NA", "null" or "" is that name in split.csv, not a missing value: predict's
    split:<name> check compares these ids with the rebuilt split's."""
    ids, classes = ["NA", "null", "", "N/A", "7"], ["NA", "None"]
    samples = ImageSet(labels=np.array([0, 1, 0, 1, 0]), ids=ids)
    split_rows("test", samples, classes).to_csv(tmp_path / "split.csv", index=False)
    table = read_split_table(tmp_path / "split.csv")
    assert table["sample"].tolist() == ids
    assert table["class"].tolist() == ["NA", "None", "NA", "None", "NA"]
    assert table["label"].tolist() == [0, 1, 0, 1, 0]
