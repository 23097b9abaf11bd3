"""``data=imagefolder``: ``data.root`` holds class sub-folders, or ``train/`` plus ``val/`` and/or ``test/``.

Rules that keep the data honest:

* **At least 2 classes.** One class folder is an error; when its own sub-folders hold the images, the
  message suggests the likely intended ``data.root`` (e.g. ``root/animals/{cat,dog}`` read from ``root``).
* **Symlinks are followed** (a symlink farm pointing at real data elsewhere works), but no real file is
  read twice and no folder that resolves to the data root, one of its parents, another split or another
  class folder of the same split is a class or is walked into (``root/loop -> .`` would else be a class
  holding copies of every image). Such folders and duplicate files are skipped, one warning per kind.
  A real file reached from several class folders goes to the class whose real folder holds it, else to
  the first class (in name order).
* **train/ val/ test/**: a file that is the same real file as one of an earlier split (train, then val,
  then test) is left out of the later split with one warning, so a test image is never also trained on;
  a split left with no images of its own is an error.
* **Image modes**: 8-bit modes go through PIL's ``convert("RGB")``; 16-bit grey (``I;16*``, and ``I`` with
  values in 0..65535, as older Pillow and 16-bit PGM give) is scaled to 0..255 (PIL's own convert clips
  it to white); float ``F`` in [0, 1] is scaled by 255. Other modes (``F`` outside [0, 1], ``LAB``...)
  have no faithful 8-bit form: one error naming the file, its mode and the fix, found at load time
  (regardless of ``data.bad_images``, which only skips files that do not decode).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

import numpy as np

from tlrun.data.sources import DATASETS, DataRequest, ImageSet, SourceData
from tlrun.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SPLIT_DIRS = ("train", "val", "test")
# Up to this many files are fully decoded once at load time, so a truncated image is caught
# before training; larger sets only have their headers checked (decode errors then name the file).
FULL_CHECK_MAX = 5000
# Modes whose PIL convert("RGB") is faithful (8 bits per channel, palettes, CMYK, YCbCr, HSV).
RGB_CONVERTIBLE_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV"})
# Grey modes holding 16-bit values: Pillow 13 opens 16-bit PNG/TIFF as I;16 (or I;16B), older Pillow and
# 16-bit PGM as I (32-bit integers, which must then lie in 0..65535).
UNSIGNED_16_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
SIXTEEN_BIT_MODES = UNSIGNED_16_MODES | {"I"}
FLOAT_MODE = "F"
LISTED = 5  # names shown in a message before "..."


def _listing(items: Iterable[object]) -> str:
    items = [str(item) for item in items]
    return ", ".join(items[:LISTED]) + (f" (and {len(items) - LISTED} more)" if len(items) > LISTED else "")


# --- image modes ---------------------------------------------------------------------------------

def mode_problem(image: "Image.Image", check_values: bool = True) -> Optional[str]:
    """None if :func:`to_rgb8` maps ``image`` faithfully to 8 bits, else what is wrong (``mode X ...``).
    The values of modes I and F are only looked at with ``check_values`` (that decodes the pixels)."""
    mode = image.mode
    if mode in RGB_CONVERTIBLE_MODES or mode in UNSIGNED_16_MODES:
        return None
    if mode not in ("I", FLOAT_MODE):
        return f"mode {mode}"
    if not check_values:
        return None
    low, high = image.getextrema()
    if mode == "I" and not 0 <= low <= high <= 65535:
        return f"mode I (32-bit integer) with values {low}..{high} outside 16-bit 0..65535"
    if mode == FLOAT_MODE and not 0.0 <= low <= high <= 1.0:  # NaN fails every comparison
        return f"mode F (32-bit float) with values {low:g}..{high:g} outside [0, 1]"
    return None


def mode_error(path: Path, problem: str, more: str = "") -> str:
    return (f"image {path}{more} has {problem}, which tlrun cannot map to 8 bits faithfully; convert the images "
            "to 8-bit RGB or greyscale (e.g. PNG or JPEG with 8 bits per channel)")


def to_rgb8(image: "Image.Image", path: Path) -> "Image.Image":
    """``image`` as 8-bit RGB: 16-bit grey scaled from 0..65535 to 0..255 (round(v / 257)), float grey in
    [0, 1] times 255, every other supported mode through PIL. A mode with no faithful 8-bit form is a
    DataError naming ``path``, its mode and the fix."""
    from PIL import Image

    problem = mode_problem(image)
    if problem is not None:
        raise DataError(mode_error(path, problem))
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.uint32)
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535), integers only
    elif image.mode == FLOAT_MODE:
        grey = np.rint(np.asarray(image, dtype=np.float64) * 255).astype(np.uint8)
    else:
        return image.convert("RGB")
    return Image.fromarray(grey).convert("RGB")


@dataclass(frozen=True)
class ImageProblem:
    reason: str
    bad_mode: bool  # the file decodes, but its mode has no faithful 8-bit form


def image_problem(path: Path, full: bool) -> Optional[ImageProblem]:
    """None if the file decodes to 8-bit RGB, else why not. ``full`` decodes the pixels (which also checks
    the values of modes I and F); else only the header is read and verified."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                if full:
                    image.load()
                problem = mode_problem(image, check_values=full)
                if not full:
                    image.verify()
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        return ImageProblem(f"{type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else 'unreadable'}",
                            False)
    return ImageProblem(problem, True) if problem is not None else None


def check_image(path: Path, full: bool) -> str | None:
    """None if the file decodes (to 8-bit RGB), else the reason."""
    problem = image_problem(path, full)
    return problem.reason if problem is not None else None


# --- walking the folders -------------------------------------------------------------------------

def _class_dirs(folder: Path, blocked: set[Path]) -> tuple[list[Path], list[Path]]:
    """(class folders of ``folder``, skipped folders), each sorted: sub-folders, symlinks followed, except
    those whose real path is in ``blocked`` (a link back to the root, a parent, another split) or is that
    of another class folder (an alias: the real folder, else the first name, is the class)."""
    subs = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
    kept, skipped, reals = [], [], set()
    for sub in sorted(subs, key=lambda d: (d.is_symlink(), d.name)):
        real = sub.resolve()
        if real in blocked or real in reals:
            skipped.append(sub)
        else:
            reals.add(real)
            kept.append(sub)
    return sorted(kept), sorted(skipped)


def _images_in(class_dir: Path, blocked: set[Path]) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """((image file, its real path) under ``class_dir``, sorted; skipped folders). Symlinks are followed,
    but a folder whose real path is in ``blocked`` or was already walked (a loop) is not entered."""
    real_of = {class_dir: class_dir.resolve()}
    walked, found, skipped = set(real_of.values()), [], []
    for top, subdirs, names in os.walk(class_dir, followlinks=True):
        top_path = Path(top)
        keep = []
        for name in subdirs:
            real = (top_path / name).resolve()
            if real in blocked or real in walked:
                skipped.append(top_path / name)
            else:
                walked.add(real)
                real_of[top_path / name] = real
                keep.append(name)
        subdirs[:] = keep  # os.walk enters only these
        for name in names:
            path = top_path / name
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                # Only a file symlink needs resolving: the folder's real path is known.
                found.append((path, path.resolve() if path.is_symlink() else real_of[top_path] / name))
    return sorted(found), skipped


def _owner(real: Path, labels: list[int], class_reals: list[Path]) -> int:
    """Of the classes that reached the same real file, the one whose real folder holds it (the deepest
    such), else the first: a link into another class folder does not steal its images."""
    holders = [label for label in labels if class_reals[label] in real.parents]
    return max(holders, key=lambda label: len(class_reals[label].parts)) if holders else labels[0]


def _single_class_error(folder: Path, only: Path, split_layout: bool) -> DataError:
    """One class folder: a classifier needs two. When its own sub-folders hold images, ``folder`` is most
    likely one level too high, so the message names the intended root."""
    real = only.resolve()
    inner = [d.name for d in _class_dirs(only, {real, *real.parents})[0] if _images_in(d, {real})[0]]
    if len(inner) >= 2:
        fix = (f"move them up into {folder}/ (in every split)" if split_layout
               else f"did you mean data.root={only}?")
        return DataError(f"{folder} has a single class folder, {only.name}/, whose sub-folders ({_listing(inner)}) "
                         f"hold the images; a classifier needs at least 2 classes: {fix}")
    fix = (f"add a sub-folder of images per class to {folder}" if split_layout
           else "point data.root at the folder that holds one sub-folder per class")
    return DataError(f"{folder} has only one class folder ({only.name}); a classifier needs at least 2 classes: {fix}")


def _files_of_classes(folder: Path, dirs: list[Path], blocked: set[Path],
                      taken: dict[Path, Path]) -> tuple[list[Path], list[int], list[Path]]:
    """(paths, labels, real paths): each real file once, labelled by class folder; files already in
    ``taken`` (earlier splits) are left out. One warning per kind of skip."""
    class_reals = [d.resolve() for d in dirs]
    no_walk = blocked | set(class_reals)
    found, skipped_dirs = [], []
    for label, class_dir in enumerate(dirs):
        files, skipped = _images_in(class_dir, no_walk)
        skipped_dirs += skipped
        if not files:
            raise DataError(f"class folder {class_dir} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                            "add images or remove the folder")
        found += [(label, path, real) for path, real in files]
    if skipped_dirs:
        log.warning("Not reading %d folder(s) in %s that lead back into the data (the root, a parent, another "
                    "split or class folder, or a folder already read): %s", len(skipped_dirs), folder,
                    _listing(f"{d} -> {d.resolve()}" for d in skipped_dirs))
    labels_of: dict[Path, list[int]] = {}
    for label, _, real in found:
        labels_of.setdefault(real, []).append(label)
    paths, labels, reals, chosen, duplicates, earlier = [], [], [], {}, [], []
    for label, path, real in found:
        if real in taken:
            earlier.append(f"{path} (= {taken[real]})")
        elif real in chosen or label != _owner(real, labels_of[real], class_reals):
            duplicates.append(f"{path} (= {chosen.get(real, real)})")
        else:
            chosen[real] = path
            paths.append(path)
            labels.append(label)
            reals.append(real)
    if duplicates:
        log.warning("Skipping %d image file(s) in %s that are the same real file as another image: %s",
                    len(duplicates), folder, _listing(duplicates))
    if earlier:
        log.warning("Leaving %d image(s) out of %s: they are the same real files as images of an earlier split, "
                    "so they would be both trained on and evaluated: %s", len(earlier), folder, _listing(earlier))
    have = set(labels)
    for label, class_dir in enumerate(dirs):
        if label not in have:
            raise DataError(f"class folder {class_dir} holds no images of its own (every one is the same real file "
                            "as an image of another class folder or an earlier split); give it its own images or "
                            "remove the folder")
    return paths, labels, reals


def scan_split(folder: Path, classes: list[str] | None, bad_images: str, blocked: Iterable[Path] = (),
               taken: Optional[dict[Path, Path]] = None, split_layout: bool = False) -> tuple[list[str], ImageSet]:
    """Files and labels of one folder of class sub-folders (``classes``: those train/ has, else None).

    ``blocked``: real folders that are no class (the other splits); the real ``folder`` and its parents
    always are. ``taken`` maps the real files of earlier splits to their paths: those files are left out
    here (one warning), and this split's files are added to it. ``split_layout``: ``folder`` is the
    train/ of data.root (for the fix a message suggests)."""
    real_folder = folder.resolve()
    blocked = {real_folder, *real_folder.parents, *(Path(b).resolve() for b in blocked)}
    dirs, skipped = _class_dirs(folder, blocked)
    if skipped:
        log.warning("Not using %d folder(s) of %s as classes: they lead to the data root, a parent of it, another "
                    "split or another class folder: %s", len(skipped), folder,
                    _listing(f"{d} -> {d.resolve()}" for d in skipped))
    if not dirs:
        raise DataError(f"{folder} has no class sub-folders; expected {folder}/<class>/<image files>")
    names = [d.name for d in dirs]
    if classes is None and len(dirs) < 2:
        raise _single_class_error(folder, dirs[0], split_layout)
    if classes is not None and names != classes:
        raise DataError(f"class folders in {folder} ({', '.join(names)}) differ from train/ "
                        f"({', '.join(classes)}); every split needs the same class folders")
    taken = {} if taken is None else taken
    paths, labels, reals = _files_of_classes(folder, dirs, blocked, taken)
    keep = _readable(folder, paths, bad_images)
    paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    taken.update((reals[i], paths[k]) for k, i in enumerate(keep))
    return names, ImageSet(np.asarray(labels, dtype=np.int64), paths=paths)


def _readable(folder: Path, paths: list[Path], bad_images: str) -> list[int]:
    """Indices of the files to keep. A file that does not decode is an error, or left out with
    data.bad_images=skip; a mode with no faithful 8-bit form is always an error (converting, not
    skipping, is the fix, and skipping could silently empty whole classes)."""
    full = len(paths) <= FULL_CHECK_MAX
    bad = {p: problem for p in paths if (problem := image_problem(p, full)) is not None}
    modes = [(p, problem.reason) for p, problem in bad.items() if problem.bad_mode]
    if modes:
        more = f" (and {len(modes) - 1} more)" if len(modes) > 1 else ""
        raise DataError(mode_error(*modes[0], more))
    if bad:
        first, problem = next(iter(bad.items()))
        if bad_images == "error":
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise DataError(f"cannot decode image {first} ({problem.reason}){more}; fix or delete it, "
                            "or set data.bad_images=skip to leave such files out")
        for path, why in bad.items():
            log.warning("Skipping unreadable image %s (%s)", path, why.reason)
    keep = [i for i, p in enumerate(paths) if p not in bad]
    if not keep:
        raise DataError(f"no readable images left in {folder}")
    return keep


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
    taken: dict[Path, Path] = {}  # real files of the splits read so far: none is used twice

    def others(split: str) -> list[Path]:
        return [root / s for s in present if s != split]

    classes, train = scan_split(root / "train", None, request.bad_images, others("train"), taken, split_layout=True)
    parts = {"train": train}
    for split in present[1:]:
        parts[split] = scan_split(root / split, classes, request.bad_images, others(split), taken)[1]
    return SourceData(classes, parts, f"image folder {root} ({', '.join(present)})")
