"""Datasets by name. Each builder returns labelled images (in memory or as files) per source split.

Offline sets: ``digits`` (scikit-learn's bundled optdigits), ``cvdigits`` (OpenCV's digits.png from
Debian's opencv-doc), ``fashion_mnist`` (Debian's dataset-fashion-mnist), ``imagefolder`` (your
folders). Online sets download through torchvision and fail with one clear line offline.
"""

from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from tlrun.errors import DataError
from tlrun.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """Labelled images: ``pixels`` (uint8 N×C×H×W, C = 1 or 3) or ``paths`` decoded on access."""

    labels: np.ndarray
    pixels: Optional[torch.Tensor] = None
    paths: Optional[list[Path]] = None
    ids: list[str] = field(default_factory=list)  # how split.csv names each sample

    def __post_init__(self) -> None:
        if not self.ids:
            self.ids = [str(p) for p in self.paths] if self.paths is not None else \
                [str(i) for i in range(len(self.labels))]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int]) -> "ImageSet":
        index = np.asarray(index, dtype=np.int64)
        return ImageSet(labels=self.labels[index],
                        pixels=self.pixels[torch.as_tensor(index)] if self.pixels is not None else None,
                        paths=[self.paths[i] for i in index] if self.paths is not None else None,
                        ids=[self.ids[i] for i in index])


@dataclass
class SourceData:
    """What a dataset provides before tlrun splits it: a pool, or fixed train/val/test parts."""

    classes: list[str]
    parts: dict[str, ImageSet]  # keys among "all", "train", "val", "test"
    description: str = ""


DatasetBuilder = Callable[["DataRequest"], SourceData]
DATASETS: Registry[DatasetBuilder] = Registry("dataset", "data=")


@dataclass
class DataRequest:
    name: str
    root: Optional[str]
    cache_dir: Path
    bad_images: str = "error"
    # Text files: data=textcsv's file and columns; the encoding of textcsv and textfolder files.
    path: Optional[str] = None
    text_column: str = "text"
    label_column: str = "label"
    encoding: str = "utf-8"


def default_cache_dir() -> Path:
    return Path(os.environ.get("TLRUN_CACHE_DIR", Path.home() / ".cache" / "tlrun"))


# --- offline sets ------------------------------------------------------------------------------

@DATASETS.register("digits")
def load_sklearn_digits(request: DataRequest) -> SourceData:
    """scikit-learn's 1,797 8×8 handwritten digits (16 grey levels), bundled with the package."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    return SourceData([str(c) for c in range(10)], {"all": ImageSet(bunch.target.astype(np.int64), pixels)},
                      "scikit-learn optdigits, 8x8 grey")


OPENCV_DIGITS = Path("/usr/share/doc/opencv-doc/examples/data/digits.png")


@DATASETS.register("cvdigits")
def load_opencv_digits(request: DataRequest) -> SourceData:
    """OpenCV's digits.png: 5,000 20×20 handwritten digits, 500 per class in 5 rows of 100."""
    from PIL import Image

    path = Path(request.root) / "digits.png" if request.root else OPENCV_DIGITS
    if not path.is_file():
        raise DataError(f"cvdigits needs {path}; install it with `apt-get install opencv-doc` "
                        "or set data.root=<folder with digits.png>")
    sheet = np.asarray(Image.open(path).convert("L"))
    rows, cols = sheet.shape[0] // 20, sheet.shape[1] // 20
    tiles = sheet[:rows * 20, :cols * 20].reshape(rows, 20, cols, 20).transpose(0, 2, 1, 3).reshape(-1, 20, 20)
    labels = np.repeat(np.arange(10), len(tiles) // 10)
    return SourceData([str(c) for c in range(10)],
                      {"all": ImageSet(labels.astype(np.int64), torch.from_numpy(tiles.copy()).unsqueeze(1))},
                      "OpenCV digits.png, 20x20 grey")


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
FASHION_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(request: DataRequest) -> SourceData:
    """Fashion-MNIST (60k train / 10k test, 28×28 grey) from Debian's package or a download."""
    candidates = [Path(request.root)] if request.root else list(FASHION_DIRS)
    for folder in candidates:
        files = {kind: next(iter(sorted(folder.glob(f"{kind}-idx*-ubyte*"))), None)
                 for kind in ("train-images", "train-labels", "t10k-images", "t10k-labels")}
        if all(files.values()):
            parts = {}
            for split, prefix in (("train", "train"), ("test", "t10k")):
                images = read_idx(files[f"{prefix}-images"])
                labels = read_idx(files[f"{prefix}-labels"]).astype(np.int64)
                parts[split] = ImageSet(labels, torch.from_numpy(images.copy()).unsqueeze(1))
            return SourceData(FASHION_CLASSES, parts, f"Fashion-MNIST from {folder}")
    if request.root:
        raise DataError(f"no Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, ...) in {request.root}")
    return _torchvision_set(request, "FashionMNIST", hint="or `apt-get install dataset-fashion-mnist`")


# --- torchvision downloads -----------------------------------------------------------------------

# name -> (torchvision class, how its splits are asked for)
TORCHVISION_SETS = {
    "mnist": "MNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100", "svhn": "SVHN", "usps": "USPS",
    "kmnist": "KMNIST", "emnist_digits": "EMNIST",
}


def _as_uint8_nchw(data) -> torch.Tensor:
    array = torch.as_tensor(np.asarray(data))
    if array.dim() == 3:
        return array.unsqueeze(1).to(torch.uint8)
    if array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.permute(0, 3, 1, 2)  # NHWC (CIFAR) -> NCHW
    return array.contiguous().to(torch.uint8)


def _torchvision_set(request: DataRequest, class_name: str, hint: str = "") -> SourceData:
    import torchvision.datasets as tvd

    root = Path(request.root) if request.root else request.cache_dir / "torchvision"
    cls = getattr(tvd, class_name)
    parts = {}
    try:
        for split in ("train", "test"):
            if class_name == "SVHN":
                ds = cls(str(root), split=split, download=True)
            elif class_name == "EMNIST":
                ds = cls(str(root), split="digits", train=split == "train", download=True)
            else:
                ds = cls(str(root), train=split == "train", download=True)
            labels = getattr(ds, "targets", None)
            if labels is None:
                labels = ds.labels
            parts[split] = ImageSet(np.asarray(labels, dtype=np.int64), _as_uint8_nchw(ds.data))
    except (OSError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise DataError(f"could not download {request.name} into {root} ({reason}); on an offline "
                        f"machine use data=digits, data=cvdigits, data=digits_m, data=cvdigits_m, data=fashion_mnist or "
                        f"data=imagefolder data.root=<folder>{', ' + hint if hint else ''}") from exc
    classes = list(getattr(ds, "classes", [])) or [str(c) for c in sorted(set(parts["train"].labels.tolist()))]
    return SourceData([str(c) for c in classes], parts, f"torchvision {class_name} in {root}")


def _register_torchvision(name: str, class_name: str) -> None:
    DATASETS.register(name)(lambda request: _torchvision_set(request, class_name))


for _name, _class in TORCHVISION_SETS.items():
    _register_torchvision(_name, _class)


def dataset_builder(name: str, config_key: str = "data=") -> DatasetBuilder:
    """The builder registered as ``name``, from every dataset module; an unknown name is one
    ConfigError line naming ``config_key`` (``data=``, ``data.target=``, ...)."""
    from tlrun.data import domains  # noqa: F401  (registers data=digits_m, cvdigits_m, mnist_m)
    from tlrun.data import imagefolder  # noqa: F401  (registers data=imagefolder)
    from tlrun.data import text  # noqa: F401  (registers data=textcsv, textfolder, rotten_tomatoes, bbc_news)

    return DATASETS.get(name, config_key)


def load_source(request: DataRequest) -> SourceData:
    source = dataset_builder(request.name)(request)
    for part_name, part in source.parts.items():
        if len(part) == 0:
            raise DataError(f"dataset {request.name} has no images in its {part_name} part")
    return source
