"""Data that would train silently but wrongly: one class, 16-bit/float images, symlinks that repeat images."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import TINY, assert_one_line_error, make_image_folder, run_dirs, run_tlrun
from tlrun.config import DataConfig
from tlrun.data import imagefolder
from tlrun.data.datasets import decode_image
from tlrun.data.imagefolder import SIXTEEN_BIT_MODES
from tlrun.data.splits import SPLITS, load_run_data
from tlrun.errors import DataError


def data_cfg(**overrides):
    cfg = OmegaConf.structured(DataConfig)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def folder_cfg(root: Path, **overrides):
    return data_cfg(name="imagefolder", root=str(root), **overrides)


def all_images(data) -> list[tuple[str, int]]:
    return [(i, int(label)) for s in SPLITS for i, label in zip(data.splits[s].ids, data.splits[s].labels)]


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by channel count): Pillow cannot write 16-bit colour."""
    height, width, channels = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def grey16_folder(root: Path, levels: dict[str, int], per_class: int = 6) -> Path:
    """Class folders of 16-bit grey PNGs written the usual way (numpy uint16 through Pillow)."""
    for name, level in levels.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((12, 12), level, dtype=np.uint16)).save(root / name / f"{i}.png")
    return root


# --- at least 2 classes ----------------------------------------------------------------------------

def test_data_classes_keeping_one_class_is_refused():
    with pytest.raises(DataError, match=r"data.classes=\[3\] keeps images of only 1 class \(3\) of digits; "
                                        r"a classifier needs at least 2 classes"):
        load_run_data(data_cfg(classes=[3]), seed=0)
    assert load_run_data(data_cfg(classes=[3, 5]), seed=0).classes == ["3", "5"]


def test_image_folder_with_one_class_folder_is_refused(tmp_path: Path):
    root = make_image_folder(tmp_path / "one", classes=("circle",), per_class=4)
    with pytest.raises(DataError, match=r"only one class folder \(circle\); a classifier needs at least 2"):
        load_run_data(folder_cfg(root), seed=0)
    split = tmp_path / "split"
    make_image_folder(split / "train", classes=("circle",), per_class=4)
    make_image_folder(split / "test", classes=("circle",), per_class=2)
    with pytest.raises(DataError, match="only one class folder"):
        load_run_data(folder_cfg(split), seed=0)


def test_one_class_folder_holding_the_class_folders_suggests_the_root(tmp_path: Path):
    make_image_folder(tmp_path / "root" / "animals", per_class=4)
    with pytest.raises(DataError) as caught:
        load_run_data(folder_cfg(tmp_path / "root"), seed=0)
    message = str(caught.value)
    assert "single class folder, animals/" in message and "circle, cross, square" in message
    assert f"did you mean data.root={tmp_path / 'root' / 'animals'}?" in message
    # The suggestion is right: that root loads as 3 classes.
    assert load_run_data(folder_cfg(tmp_path / "root" / "animals"), seed=0).classes == ["circle", "cross", "square"]


def test_every_loaded_dataset_needs_two_classes_with_images(tmp_path: Path):
    """The check sits where every dataset passes (here a data.target-style load by name and root): a class
    whose files were all skipped as unreadable leaves one class with images."""
    root = make_image_folder(tmp_path / "target", classes=("circle", "square"), per_class=4)
    for path in (root / "square").iterdir():
        path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cfg = data_cfg(bad_images="skip")  # the run's own data is digits
    with pytest.raises(DataError, match=r"imagefolder \(image folder .*target\) has images of only 1 class "
                                        r"\(circle\); a classifier needs at least 2 classes"):
        load_run_data(cfg, seed=0, name="imagefolder", root=str(root))


def test_cli_single_class_folder_is_one_line_and_leaves_no_run(tmp_path: Path):
    make_image_folder(tmp_path / "root" / "animals", per_class=3)
    result = run_tlrun(["data=imagefolder", f"data.root={tmp_path / 'root'}", *TINY], tmp_path)
    assert_one_line_error(result, "a classifier needs at least 2 classes",
                          f"data.root={tmp_path / 'root' / 'animals'}")
    assert result.returncode == 2
    assert run_dirs(tmp_path) == []


# --- image modes -------------------------------------------------------------------------------------

def test_16_bit_grey_classes_decode_to_distinct_scaled_levels(tmp_path: Path):
    root = grey16_folder(tmp_path / "grey16", {"dark": 8000, "bright": 50000})
    assert Image.open(root / "dark" / "0.png").mode in SIXTEEN_BIT_MODES  # really 16-bit on disk
    data = load_run_data(folder_cfg(root), seed=0)
    assert data.classes == ["bright", "dark"]
    expected = {"dark": round(8000 / 257), "bright": round(50000 / 257)}  # 31 and 195, not both 255
    for split in SPLITS:
        images = data.splits[split]
        for path, label in zip(images.paths, images.labels):
            pixels = decode_image(path)
            assert pixels.shape == (3, 12, 12) and pixels.dtype == torch.uint8
            assert pixels.unique().tolist() == [expected[data.classes[label]]], path


def test_16_bit_extremes_pgm_and_colour_pngs(tmp_path: Path):
    ramp = np.array([[0, 128, 129, 257, 65535]], dtype=np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert decode_image(tmp_path / "ramp.png")[0].tolist() == [[0, 0, 1, 1, 255]]
    # 16-bit PGM opens as mode I (32-bit integers holding 0..65535).
    (tmp_path / "g.pgm").write_bytes(b"P5\n2 1\n65535\n" + np.array([8000, 50000], ">u2").tobytes())
    assert Image.open(tmp_path / "g.pgm").mode == "I"
    assert decode_image(tmp_path / "g.pgm")[0].tolist() == [[31, 195]]
    # 16-bit RGB(A): Pillow itself reduces these to 8 bits per channel.
    rgb = np.broadcast_to(np.array([8000, 50000, 65535], np.uint16), (2, 2, 3))
    assert decode_image(write_png16(tmp_path / "rgb.png", rgb))[:, 0, 0].tolist() == [31, 195, 255]
    rgba = np.broadcast_to(np.array([8000, 50000, 0, 30000], np.uint16), (2, 2, 4))
    assert decode_image(write_png16(tmp_path / "rgba.png", rgba))[:, 0, 0].tolist() == [31, 195, 0]


def test_float_image_in_unit_range_is_scaled(tmp_path: Path):
    Image.fromarray(np.full((3, 3), 0.25, dtype=np.float32)).save(tmp_path / "f.tif")
    assert decode_image(tmp_path / "f.tif").unique().tolist() == [64]


def test_unmappable_modes_are_refused_at_load_time(tmp_path: Path, monkeypatch):
    root = make_image_folder(tmp_path / "imgs", classes=("circle", "square"), per_class=4)
    bad = root / "square" / "zz_float.tif"
    Image.fromarray(np.full((8, 8), 3.5, dtype=np.float32)).save(bad)
    for bad_images in ("error", "skip"):  # skipping is no fix for a whole data set's format
        with pytest.raises(DataError) as caught:
            load_run_data(folder_cfg(root, bad_images=bad_images), seed=0)
        assert str(caught.value).startswith(f"image {bad} has mode F (32-bit float) with values 3.5..3.5 outside")
        assert "convert the images to 8-bit" in str(caught.value)
    with pytest.raises(DataError, match="zz_float.tif has mode F .*convert the images to 8-bit"):
        decode_image(bad)  # a large set (header-only check) still fails on first use, naming the file
    bad.unlink()
    lab = root / "square" / "zz_lab.tif"
    Image.new("LAB", (8, 8), (50, 10, 10)).save(lab)
    monkeypatch.setattr(imagefolder, "FULL_CHECK_MAX", 0)  # header-only check: the mode alone is enough
    with pytest.raises(DataError, match="zz_lab.tif has mode LAB, which tlrun cannot map to 8 bits"):
        load_run_data(folder_cfg(root), seed=0)


# --- symlinks ----------------------------------------------------------------------------------------

def test_symlinked_loops_and_aliases_are_not_classes(tmp_path: Path, caplog):
    root = make_image_folder(tmp_path / "shapes", per_class=6)
    os.symlink(".", root / "loop")  # the root itself
    os.symlink("..", root / "parent")  # an ancestor of the root
    os.symlink("square", root / "a_square_alias")  # another class folder
    os.symlink("..", root / "circle" / "up")  # inside a class, back to the root
    os.symlink(".", root / "cross" / "self")  # inside a class, a loop
    os.symlink("../square/square_000.png", root / "circle" / "stolen.png")  # a square image linked into circle
    with caplog.at_level("WARNING", logger="tlrun.data.imagefolder"):
        data = load_run_data(folder_cfg(root), seed=0)
    assert data.classes == ["circle", "cross", "square"]
    images = all_images(data)
    reals = [os.path.realpath(i) for i, _ in images]
    assert len(images) == 18 and len(set(i for i, _ in images)) == 18 and len(set(reals)) == 18
    # Each image keeps the class of the folder that really holds it (stolen.png stays square's).
    assert all(Path(real).parent == root / data.classes[label] for real, (_, label) in zip(reals, images))
    skipped = [(root / "loop", root), (root / "parent", root.parent), (root / "a_square_alias", root / "square"),
               (root / "circle" / "up", root), (root / "cross" / "self", root / "cross")]
    for link, target in skipped:
        assert f"{link} -> {target}" in caplog.text
    assert f"{root / 'circle' / 'stolen.png'} (= " in caplog.text
    assert len([r for r in caplog.records if "Not using" in r.message]) == 1  # one warning for all 3


def test_symlink_farm_outside_the_root_works_and_reads_each_file_once(tmp_path: Path, caplog):
    store = make_image_folder(tmp_path / "store", per_class=5)
    farm = tmp_path / "farm"
    farm.mkdir()
    os.symlink(store / "circle", farm / "circle")  # a folder symlink
    for name in ("cross", "square"):  # file symlinks
        (farm / name).mkdir()
        for image in sorted((store / name).iterdir()):
            os.symlink(image, farm / name / image.name)
    os.symlink(store / "circle" / "circle_000.png", farm / "cross" / "stray.png")  # a circle linked into cross
    with caplog.at_level("WARNING", logger="tlrun.data.imagefolder"):
        data = load_run_data(folder_cfg(farm), seed=0)
    assert data.classes == ["circle", "cross", "square"]
    images = all_images(data)
    reals = [os.path.realpath(i) for i, _ in images]
    assert len(images) == 15 and len(set(reals)) == 15
    assert all(Path(real).parent.name == data.classes[label] for real, (_, label) in zip(reals, images))
    assert "stray.png" in caplog.text  # left out of cross: that file is circle's


def test_a_file_in_two_splits_is_left_out_of_the_later_split(tmp_path: Path, caplog):
    root = tmp_path / "fixed"
    make_image_folder(root / "train", per_class=6)
    make_image_folder(root / "test", per_class=2, seed=1)
    leaked = root / "train" / "circle" / "circle_000.png"
    os.symlink(leaked, root / "test" / "circle" / "leak.png")
    with caplog.at_level("WARNING", logger="tlrun.data.imagefolder"):
        data = load_run_data(folder_cfg(root), seed=0)
    assert "leak.png" in caplog.text
    assert len(data.splits["test"]) == 6 and not any("leak" in i for i in data.splits["test"].ids)
    reals = [os.path.realpath(i) for i, _ in all_images(data)]
    assert len(reals) == len(set(reals)) == 18 + 6
    assert str(leaked) in data.splits["train"].ids + data.splits["val"].ids
    # A split that is nothing but the training files has no images of its own.
    os.symlink("train", root / "val")
    with pytest.raises(DataError, match="holds no images of its own"):
        load_run_data(folder_cfg(root), seed=0)
