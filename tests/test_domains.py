"""MNIST-M-style domains (digits_m, cvdigits_m, mnist_m): shape, determinism, cache, visibility."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import tlrun.data.domains as domains
from tlrun.config import DataConfig
from tlrun.data.sources import DATASETS, OPENCV_DIGITS, DataRequest, load_source
from tlrun.data.splits import load_run_data
from tlrun.errors import DataError

needs_opencv = pytest.mark.skipif(not OPENCV_DIGITS.is_file(), reason="opencv-doc is not installed")


def load(name: str, cache: Path):
    return load_source(DataRequest(name, None, cache))


def cache_files(cache: Path) -> list[Path]:
    folder = cache / "domains"
    return sorted(folder.glob("*.pt")) if folder.is_dir() else []


@pytest.mark.parametrize("name,source,size", [
    ("digits_m", "digits", 8),
    pytest.param("cvdigits_m", "cvdigits", 20, marks=needs_opencv),
])
def test_shapes_dtypes_and_labels_match_the_source(tmp_path, name, source, size):
    target, original = load(name, tmp_path), load(source, tmp_path)
    assert set(target.parts) == set(original.parts) == {"all"}
    assert target.classes == original.classes
    part, src = target.parts["all"], original.parts["all"]
    assert part.pixels.dtype == torch.uint8
    assert tuple(part.pixels.shape) == (len(src), 3, size, size)
    assert part.labels.dtype == np.int64
    np.testing.assert_array_equal(part.labels, src.labels)
    assert part.ids == src.ids


def test_registered_names():
    assert {"digits_m", "cvdigits_m", "mnist_m"} <= set(DATASETS.names())


def test_two_builds_are_bitwise_identical(tmp_path):
    a = load("digits_m", tmp_path / "a").parts["all"].pixels
    domains._load_photos.cache_clear()
    b = load("digits_m", tmp_path / "b").parts["all"].pixels
    assert len(cache_files(tmp_path / "a")) == len(cache_files(tmp_path / "b")) == 1
    assert cache_files(tmp_path / "a")[0].name == cache_files(tmp_path / "b")[0].name
    assert torch.equal(a, b)


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
    first = load("digits_m", tmp_path).parts["all"].pixels
    files = cache_files(tmp_path)
    assert len(files) == 1 and files[0].name.startswith(f"digits_m-v{domains.VERSION}-")
    assert not list((tmp_path / "domains").glob("*.tmp"))  # the atomic write left no temp file

    def no_rebuild(*args, **kwargs):
        raise AssertionError("rebuilt although the cache is valid")

    monkeypatch.setattr(domains, "blend_part", no_rebuild)
    second = load("digits_m", tmp_path).parts["all"].pixels
    assert torch.equal(first, second)
    assert cache_files(tmp_path) == files


def test_changed_source_pixels_change_the_cache_key(tmp_path, monkeypatch):
    first = load("digits_m", tmp_path).parts["all"].pixels
    original = DATASETS.get("digits")

    def altered(request):
        source = original(request)
        source.parts["all"].pixels[0, 0, 4, 4] ^= 0xFF
        return source

    monkeypatch.setitem(DATASETS._items, "digits", altered)
    second = load("digits_m", tmp_path).parts["all"].pixels
    assert len(cache_files(tmp_path)) == 2  # a new file, the old one is not served
    assert not torch.equal(first[0], second[0])
    assert torch.equal(first[1:], second[1:])  # same photo and crop for every other image


def test_fingerprint_covers_photos_and_name(tmp_path):
    source = DATASETS.get("digits")(DataRequest("digits", None, tmp_path))
    photos = domains.photo_pool()
    key = domains.fingerprint("digits_m", source, photos)
    assert key == domains.fingerprint("digits_m", source, list(photos))
    assert key != domains.fingerprint("digits_m", source, photos[:2])
    assert key != domains.fingerprint("other_m", source, photos)


def test_unreadable_cache_is_rebuilt(tmp_path):
    first = load("digits_m", tmp_path).parts["all"].pixels
    [path] = cache_files(tmp_path)
    path.write_bytes(b"not a torch file")
    again = load("digits_m", tmp_path).parts["all"].pixels
    assert torch.equal(first, again)
    assert path.stat().st_size > 1000  # rewritten


def test_photo_texture_and_colour(tmp_path):
    pixels = load("digits_m", tmp_path).parts["all"].pixels.float()
    channel_std = pixels.std(dim=1).mean(dim=(1, 2))  # per image: mean over pixels of std across RGB
    assert channel_std.mean() > 10
    assert (channel_std > 2).float().mean() > 0.9
    digits = load("digits", tmp_path).parts["all"].pixels
    assert not torch.equal(pixels.to(torch.uint8), digits.expand(-1, 3, -1, -1))


@pytest.mark.parametrize("source", ["digits", pytest.param("cvdigits", marks=needs_opencv)])
def test_digit_is_still_visible(tmp_path, source):
    digits = DATASETS.get(source)(DataRequest(source, None, tmp_path)).parts["all"].pixels
    blended, patches = domains.blend_part(f"{source}_m", "all", digits, domains.photo_pool(),
                                          return_patches=True)
    assert torch.equal(blended, load(f"{source}_m", tmp_path).parts["all"].pixels)
    residue = np.abs(blended.numpy().astype(np.int16) - patches.transpose(0, 3, 1, 2).astype(np.int16))
    grey = digits.numpy().astype(np.float64).repeat(3, axis=1)
    # |blend - patch| is the digit where the ink is darker than the photo, |digit - 2 patch| elsewhere:
    # measured 0.77 (digits) and 0.83 (cvdigits) pooled; per image, the median is as high.
    corr = np.corrcoef(residue.reshape(-1), grey.reshape(-1))[0, 1]
    per_image = [np.corrcoef(r.reshape(-1), g.reshape(-1))[0, 1] for r, g in zip(residue[:300], grey[:300])]
    assert corr > 0.7 and np.median(per_image) > 0.7
    # Where the digit is dark (background), the image is the photo itself.
    background = np.broadcast_to(digits.numpy() == 0, blended.shape)
    assert np.array_equal(blended.numpy()[background], patches.transpose(0, 3, 1, 2)[background])


@needs_opencv
def test_cvdigits_m_split_matches_cvdigits_index_for_index(tmp_path):
    def cfg(name):
        c = OmegaConf.structured(DataConfig)
        OmegaConf.update(c, "name", name)
        OmegaConf.update(c, "cache_dir", str(tmp_path))
        return c

    grey, colour = load_run_data(cfg("cvdigits"), seed=3), load_run_data(cfg("cvdigits_m"), seed=3)
    for split in ("train", "val", "test"):
        assert grey.splits[split].ids == colour.splits[split].ids
        np.testing.assert_array_equal(grey.splits[split].labels, colour.splits[split].labels)
    assert colour.splits["train"].pixels.shape[1:] == (3, 20, 20)


def test_without_opencv_doc_uses_sklearn_photos_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(domains, "OPENCV_PHOTO_DIR", tmp_path / "missing")
    assert [p.name for p in domains.photo_pool()] == ["sklearn/china.jpg", "sklearn/flower.jpg"]
    source = load("digits_m", tmp_path)
    assert "opencv-doc is not installed" in source.description
    assert source.parts["all"].pixels.shape[1] == 3


def test_mnist_m_reports_the_mnist_error(tmp_path, monkeypatch):
    def offline(request):
        raise DataError(f"could not download {request.name} (offline)")

    monkeypatch.setitem(DATASETS._items, "mnist", offline)
    with pytest.raises(DataError, match=r"mnist_m is built from mnist: could not download mnist"):
        load("mnist_m", tmp_path)


def test_mnist_like_train_test_parts_keep_their_structure(tmp_path, monkeypatch):
    from tlrun.data.sources import ImageSet, SourceData

    rng = np.random.default_rng(0)

    def fake_mnist(request):
        parts = {p: ImageSet(rng.integers(0, 10, n).astype(np.int64),
                             torch.from_numpy(rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)))
                 for p, n in (("train", 30), ("test", 10))}
        return SourceData([str(c) for c in range(10)], parts, "fake mnist")

    monkeypatch.setitem(DATASETS._items, "mnist", fake_mnist)
    source = load("mnist_m", tmp_path)
    assert {p: tuple(v.pixels.shape) for p, v in source.parts.items()} == \
        {"train": (30, 3, 28, 28), "test": (10, 3, 28, 28)}
