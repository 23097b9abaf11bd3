"""``data=imagefolder``: ``data.root`` holds class sub-folders, or ``train/`` plus ``val/`` and/or ``test/``."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from tlrun.data.sources import DATASETS, DataRequest, ImageSet, SourceData
from tlrun.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SPLIT_DIRS = ("train", "val", "test")
# Up to this many files are fully decoded once at load time, so a truncated image is caught
# before training; larger sets only have their headers checked (decode errors then name the file).
FULL_CHECK_MAX = 5000


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def check_image(path: Path, full: bool) -> str | None:
    """None if the file decodes, else the reason."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                if full:
                    image.load()
                else:
                    image.verify()
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else 'unreadable'}"
    return None


def scan_split(folder: Path, classes: list[str] | None, bad_images: str) -> tuple[list[str], ImageSet]:
    """Files and labels of one folder of class sub-folders."""
    dirs = _class_dirs(folder)
    if not dirs:
        raise DataError(f"{folder} has no class sub-folders; expected {folder}/<class>/<image files>")
    names = [d.name for d in dirs]
    if classes is not None and names != classes:
        raise DataError(f"class folders in {folder} ({', '.join(names)}) differ from train/ "
                        f"({', '.join(classes)}); every split needs the same class folders")
    paths, labels = [], []
    for label, class_dir in enumerate(dirs):
        files = _images_in(class_dir)
        if not files:
            raise DataError(f"class folder {class_dir} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                            "add images or remove the folder")
        paths += files
        labels += [label] * len(files)
    full = len(paths) <= FULL_CHECK_MAX
    bad = {p: reason for p in paths if (reason := check_image(p, full)) is not None}
    if bad:
        first, reason = next(iter(bad.items()))
        if bad_images == "error":
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise DataError(f"cannot decode image {first} ({reason}){more}; fix or delete it, "
                            "or set data.bad_images=skip to leave such files out")
        for path, why in bad.items():
            log.warning("Skipping unreadable image %s (%s)", path, why)
        keep = [i for i, p in enumerate(paths) if p not in bad]
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
        if not paths:
            raise DataError(f"no readable images left in {folder}")
    return names, ImageSet(np.asarray(labels, dtype=np.int64), paths=paths)


@DATASETS.register("imagefolder")
def load_image_folder(request: DataRequest) -> SourceData:
    if not request.root:
        raise DataError("data=imagefolder needs data.root=<folder>: class sub-folders of images, "
                        "or train/ with val/ and/or test/ inside")
    root = Path(request.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root {root} does not exist or is not a folder; give the folder "
                        "that holds the class sub-folders")
    present = [s for s in SPLIT_DIRS if (root / s).is_dir()]
    if present and "train" not in present:
        raise DataError(f"{root} has {'/'.join(present)}/ but no train/ folder; add train/ or point "
                        "data.root at a folder of class sub-folders")
    if not present:
        classes, images = scan_split(root, None, request.bad_images)
        return SourceData(classes, {"all": images}, f"image folder {root}")
    classes, train = scan_split(root / "train", None, request.bad_images)
    parts = {"train": train}
    for split in present[1:]:
        parts[split] = scan_split(root / split, classes, request.bad_images)[1]
    return SourceData(classes, parts, f"image folder {root} ({', '.join(present)})")
