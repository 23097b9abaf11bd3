"""MNIST-M-style target domains: grey digits blended with patches of colour photos.

As in the DANN paper (Ganin et al., 2016, section 5.2.2), each digit ``d`` (0..255 grey, broadcast to
three channels) is blended with a random crop ``p`` of a real colour photo as ``|p - d|`` per channel,
giving a 3-channel uint8 image: the background keeps the photo's colours and texture, and the digit
shows as a contrasting, colour-inverted stroke.

Registered sets (built from the source set of the same name without ``_m``):

* ``digits_m``   from ``digits``   (scikit-learn, 1,797 8×8, one "all" part)
* ``cvdigits_m`` from ``cvdigits`` (OpenCV digits.png, 5,000 20×20, one "all" part)
* ``mnist_m``    from ``mnist``    (torchvision download; train/test parts; online users)

Design:

* **Same labels, parts and order as the source**, so a seeded split of ``cvdigits_m`` picks the same
  images, index for index, as the same split of ``cvdigits``.
* **Photo pool**: scikit-learn's two sample images plus a fixed, sorted list of real colour photos from
  Debian's opencv-doc (:data:`OPENCV_PHOTOS`; missing files are skipped, and without opencv-doc only the
  scikit-learn photos are used, which the description says).
* **Patch scale**: patches have the digit's native size (8×8, 20×20, 28×28), but each photo is first
  resized so that its shorter side is ``digit_size × 321 / 28``: a patch then covers the same fraction of
  the photo as a 28×28 MNIST-M patch of a 481×321 BSDS500 photo. Cropping 8×8 patches from a full-size
  photo would give nearly flat colour; at this scale they carry visible texture. ``mnist_m`` gets
  photos of about BSDS500's size, i.e. the original construction.
* **Deterministic**: a numpy Generator seeded with (:data:`SEED`, crc32 of the set name, crc32 of the
  part name) picks the photo and crop position of each image, so the set is bitwise identical on every
  machine with the same photos (and the same Pillow decoder).
* **Cache**: the result is saved to ``<cache_dir>/domains/<name>-v<VERSION>-<fingerprint>.pt``, where the
  fingerprint hashes the source pixels and labels, the photos' names, sizes and bytes, the Pillow version
  and the construction constants; a changed input gives a new file name, so a stale cache is never
  served. Files are written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from tlrun.cache import is_intact, seal
from tlrun.data.sources import DATASETS, OPENCV_DIGITS, DataRequest, ImageSet, SourceData
from tlrun.checkpoint import save_atomic
from tlrun.errors import CheckpointError, DataError

log = logging.getLogger(__name__)

#: Bump whenever the construction changes (blend, scale, RNG use, photo list): it renames cache files.
VERSION = 1
#: Fixed seed of the photo/crop choices (mixed with the set and part names).
SEED = 20160101
#: MNIST-M geometry: 28×28 patches of BSDS500 photos, whose shorter side is 321 pixels.
BSDS_SHORT_SIDE = 321
MNIST_SIZE = 28

OPENCV_PHOTO_DIR = OPENCV_DIGITS.parent
#: Real colour photographs in opencv-doc's examples/data (sorted). Left out on purpose: renders,
#: logos, drawings, text, synthetic shapes, grey images, RGBA cut-outs, the painting starry_night.jpg,
#: and near-duplicate stereo/sequence partners (aero3, aloeR, graf3, leuvenB, rubberwhale2, right).
OPENCV_PHOTOS = (
    "aero1.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "board.jpg", "building.jpg", "butterfly.jpg",
    "fruits.jpg", "graf1.png", "home.jpg", "leuvenA.jpg", "messi5.jpg", "orange.jpg",
    "rubberwhale1.png", "squirrel_cls.jpg",
)

#: domain name -> source dataset name
DOMAINS = {"digits_m": "digits", "cvdigits_m": "cvdigits", "mnist_m": "mnist"}


# --- photo pool ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Photo:
    name: str  # "sklearn/china.jpg" or "opencv/fruits.jpg"
    path: Path
    size: int  # bytes on disk
    sha256: str


def photo_pool(opencv_dir: Optional[Path] = None) -> list[Photo]:
    """The photos blended in, in a fixed order: scikit-learn's, then opencv-doc's that exist."""
    # load_sample_images() reads these two files; find them without importing scikit-learn (slow).
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the MNIST-M-style sets need scikit-learn's sample photos; pip install scikit-learn")
    sk_dir = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "images"
    entries = [(f"sklearn/{n}", sk_dir / n) for n in ("china.jpg", "flower.jpg")]
    folder = OPENCV_PHOTO_DIR if opencv_dir is None else Path(opencv_dir)
    entries += [(f"opencv/{n}", folder / n) for n in OPENCV_PHOTOS]
    photos = []
    for name, path in entries:
        if path.is_file():
            data = path.read_bytes()
            photos.append(Photo(name, path, len(data), hashlib.sha256(data).hexdigest()))
        elif name.startswith("sklearn/"):
            raise DataError(f"scikit-learn's sample image {path} is missing; reinstall scikit-learn")
    return photos


def photo_scale(height: int, width: int) -> int:
    """Shorter side the photos are resized to for digits of this size (MNIST-M's patch/photo ratio)."""
    return max(height, width, int(round(max(height, width) * BSDS_SHORT_SIDE / MNIST_SIZE)))


@lru_cache(maxsize=8)
def _load_photos(photos: tuple[Photo, ...], short_side: int) -> tuple[np.ndarray, ...]:
    from PIL import Image

    arrays = []
    for photo in photos:
        with Image.open(photo.path) as image:
            image = image.convert("RGB")
            w, h = image.size
            ratio = short_side / min(w, h)
            size = (max(short_side, int(round(w * ratio))), max(short_side, int(round(h * ratio))))
            arrays.append(np.asarray(image.resize(size, Image.Resampling.LANCZOS), dtype=np.uint8))
    return tuple(arrays)


def load_photos(photos: list[Photo], short_side: int) -> list[np.ndarray]:
    """The photos as H×W×3 uint8 arrays whose shorter side is ``short_side``."""
    return list(_load_photos(tuple(photos), short_side))


# --- blending ------------------------------------------------------------------------------------

def part_rng(name: str, part: str) -> np.random.Generator:
    return np.random.default_rng([SEED, zlib.crc32(name.encode()), zlib.crc32(part.encode())])


def grey_digits(pixels: torch.Tensor) -> np.ndarray:
    """N×H×W uint8 grey digits from an N×C×H×W uint8 tensor (C = 1, or 3 averaged to luma)."""
    array = pixels.numpy()
    if array.shape[1] == 1:
        return array[:, 0]
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(np.round(np.tensordot(weights, array.astype(np.float32), axes=([0], [1]))), 0, 255) \
        .astype(np.uint8)


def sample_patches(rng: np.random.Generator, photos: list[np.ndarray], count: int,
                   height: int, width: int) -> np.ndarray:
    """``count`` random height×width×3 crops: a photo per image, then a uniform crop position in it."""
    which = rng.integers(0, len(photos), size=count)
    max_y = np.array([p.shape[0] - height for p in photos])[which]
    max_x = np.array([p.shape[1] - width for p in photos])[which]
    ys = rng.integers(0, max_y, endpoint=True)
    xs = rng.integers(0, max_x, endpoint=True)
    patches = np.empty((count, height, width, 3), dtype=np.uint8)
    rows, cols = np.arange(height), np.arange(width)
    for index, photo in enumerate(photos):
        chosen = np.flatnonzero(which == index)
        if len(chosen):
            patches[chosen] = photo[(ys[chosen, None] + rows)[:, :, None], (xs[chosen, None] + cols)[:, None, :]]
    return patches


def blend(digits: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """``|patch - digit|`` per channel: N×H×W grey digits, N×H×W×3 patches -> N×3×H×W uint8."""
    out = np.abs(patches.astype(np.int16) - digits[..., None].astype(np.int16)).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def blend_part(name: str, part: str, pixels: torch.Tensor, photos: list[Photo],
               return_patches: bool = False):
    """The MNIST-M version of one part's pixels (and, if asked, the N×H×W×3 patches used)."""
    digits = grey_digits(pixels)
    count, height, width = digits.shape
    arrays = load_photos(photos, photo_scale(height, width))
    patches = sample_patches(part_rng(name, part), arrays, count, height, width)
    blended = torch.from_numpy(blend(digits, patches))
    return (blended, patches) if return_patches else blended


# --- fingerprint and cache -----------------------------------------------------------------------

def fingerprint(name: str, source: SourceData, photos: list[Photo]) -> str:
    """Hash of everything the built set depends on (source pixels/labels, photos, construction)."""
    import PIL

    digest = hashlib.sha256()
    digest.update(repr((name, VERSION, SEED, BSDS_SHORT_SIDE, MNIST_SIZE, PIL.__version__)).encode())
    for part_name in sorted(source.parts):
        part = source.parts[part_name]
        if part.pixels is None:
            raise DataError(f"{name} needs in-memory pixels, but its source's {part_name} part is files")
        pixels = part.pixels.contiguous()
        digest.update(repr((part_name, tuple(pixels.shape), str(pixels.dtype), len(part))).encode())
        digest.update(pixels.numpy().tobytes())
        digest.update(np.ascontiguousarray(part.labels, dtype=np.int64).tobytes())
    for photo in photos:
        digest.update(repr((photo.name, photo.size, photo.sha256)).encode())
    return digest.hexdigest()[:20]


def cache_path(cache_dir: Path, name: str, key: str) -> Path:
    return Path(cache_dir) / "domains" / f"{name}-v{VERSION}-{key}.pt"


def _read_cache(path: Path, key: str, source: SourceData) -> Optional[dict[str, torch.Tensor]]:
    if not is_intact(path, f"{path.name.split('-v')[0]} cache"):
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        pixels = payload["pixels"]
        ok = payload.get("fingerprint") == key and set(pixels) == set(source.parts) and all(
            pixels[p].dtype == torch.uint8 and tuple(pixels[p].shape) ==
            (len(source.parts[p]), 3, *source.parts[p].pixels.shape[2:])
            and np.array_equal(payload["labels"][p].numpy(), source.parts[p].labels)
            for p in source.parts)
    except Exception as exc:  # a truncated or foreign file: rebuild it
        log.warning("ignoring unreadable cache %s (%s)", path, exc)
        return None
    if not ok:
        log.warning("ignoring cache %s: it does not match its source", path)
        return None
    return pixels


def _write_cache(path: Path, key: str, source: SourceData, pixels: dict[str, torch.Tensor]) -> None:
    payload = {"fingerprint": key, "version": VERSION, "pixels": pixels,
               "labels": {p: torch.from_numpy(np.asarray(source.parts[p].labels, dtype=np.int64))
                          for p in pixels}}
    try:
        save_atomic(payload, path)
        seal(path)
    except (CheckpointError, OSError) as exc:  # a read-only or full cache must not stop the run
        log.warning("could not cache %s (%s)", path, exc)


# --- builders ------------------------------------------------------------------------------------

def build_domain(request: DataRequest, source_name: str) -> SourceData:
    """Build (or load from cache) the MNIST-M version ``request.name`` of dataset ``source_name``."""
    name = request.name
    try:
        source = DATASETS.get(source_name)(DataRequest(source_name, request.root, request.cache_dir,
                                                       request.bad_images))
    except DataError as exc:
        raise DataError(f"{name} is built from {source_name}: {exc}") from exc
    photos = photo_pool()
    key = fingerprint(name, source, photos)
    path = cache_path(request.cache_dir, name, key)
    pixels = _read_cache(path, key, source)
    if pixels is None:
        pixels = {part: blend_part(name, part, source.parts[part].pixels, photos) for part in source.parts}
        _write_cache(path, key, source, pixels)
    else:
        log.debug("%s: loaded %s", name, path)
    n_opencv = sum(p.name.startswith("opencv/") for p in photos)
    pool = (f"{len(photos)} colour photos (scikit-learn + opencv-doc)" if n_opencv else
            f"only scikit-learn's {len(photos)} photos (opencv-doc is not installed: "
            "`apt-get install opencv-doc` adds more)")
    parts = {part: ImageSet(labels=src.labels, pixels=pixels[part], ids=list(src.ids))
             for part, src in source.parts.items()}
    return SourceData(source.classes, parts,
                      f"{source.description} blended MNIST-M style with patches of {pool}, 3 channels")


def _register(name: str, source_name: str) -> None:
    DATASETS.register(name)(lambda request: build_domain(request, source_name))


for _name, _source in DOMAINS.items():
    _register(_name, _source)
