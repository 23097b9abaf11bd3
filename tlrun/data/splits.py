"""Which images form a run's train/val/test splits: a dataset by name, data.classes, seeded
stratified splits, per-class caps, and the images a run leaves out."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from tlrun.data.sources import DataRequest, ImageSet, SourceData, default_cache_dir, load_source
from tlrun.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class RunData:
    name: str
    classes: list[str]
    splits: dict[str, ImageSet]
    description: str

    def split_table(self) -> pd.DataFrame:
        """split.csv: each sample's split, id, label and class (and a text's content digest, split_rows)."""
        return pd.concat([split_rows(split, self.splits[split], self.classes) for split in SPLITS], ignore_index=True)


def split_rows(split: str, samples: ImageSet, classes: list[str]) -> pd.DataFrame:
    """One split's rows of split.csv. A text's id is its row or file name, so texts also get the digest of
    their content (``text_sha256``): that is what tells a rebuilt split whether the texts changed."""
    labels = [int(label) for label in samples.labels]
    table = pd.DataFrame({"split": split, "sample": list(samples.ids), "label": labels,
                          "class": [classes[label] for label in labels]},
                         columns=["split", "sample", "label", "class"])
    texts = getattr(samples, "texts", None)
    if texts is not None:
        table["text_sha256"] = [text_sha256(text) for text in texts]
    return table


def read_split_table(path: Path | str) -> pd.DataFrame:
    """A run's split.csv as written: ids are text, so a sample named "NA", "null" or "" stays that id (pandas'
    default would read them as missing values)."""
    return pd.read_csv(path, dtype={"split": str, "sample": str, "class": str, "text_sha256": str},
                       keep_default_na=False)


def text_sha256(text: str) -> str:
    """A short content digest of one text (split.csv's text_sha256)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _stratified(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, taken) with ``fraction`` of the samples taken, stratified when possible."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    try:
        kept, taken = train_test_split(index, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError:  # a class too small to appear in both parts
        log.warning("Some classes have too few images to stratify; splitting at random")
        try:
            kept, taken = train_test_split(index, test_size=fraction, random_state=seed)
        except ValueError:  # too few images for this fraction at all
            raise DataError(f"{len(labels)} images are too few to split off a {fraction:.0%} part (data.split); "
                            "add images, or give the data train/ val/ test/ folders") from None
    return np.sort(kept), np.sort(taken)


def cap_per_class(images: ImageSet, max_per_class: Optional[int], seed: int) -> ImageSet:
    if max_per_class is None:
        return images
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(images.labels):
        members = np.flatnonzero(images.labels == label)
        keep.extend(rng.permutation(members)[:max_per_class])
    return images.subset(sorted(keep))


def select_classes(source: SourceData, wanted: Optional[list]) -> SourceData:
    """Keep only the classes named in ``wanted`` (in the source's order), relabelled 0..k-1."""
    if not wanted:
        return source
    names = [str(name) for name in wanted]
    unknown = [name for name in names if name not in source.classes]
    if unknown:
        raise DataError(f"data.classes names {', '.join(unknown)}, which the data does not have; "
                        f"choose among {', '.join(source.classes)}")
    keep = [i for i, name in enumerate(source.classes) if name in names]
    relabel = np.full(len(source.classes), -1)
    relabel[keep] = np.arange(len(keep))
    parts = {}
    for key, images in source.parts.items():
        index = np.flatnonzero(np.isin(images.labels, keep))
        subset = images.subset(index)
        subset.labels = relabel[subset.labels]
        parts[key] = subset
    return SourceData([source.classes[i] for i in keep], parts, source.description)


def make_splits(source: SourceData, fractions: list[float], seed: int,
                max_per_class: Optional[int] = None) -> dict[str, ImageSet]:
    """train/val/test, fixed by ``seed``; fixed parts of the source are kept as they are."""
    parts = {k: cap_per_class(v, max_per_class, seed) for k, v in source.parts.items()}
    f_train, f_val, f_test = fractions
    if "all" in parts:
        pool = parts["all"]
        rest, test = _stratified(pool.labels, f_test, seed)
        train, val = _stratified(pool.labels[rest], f_val / (f_train + f_val), seed)
        return {"train": pool.subset(rest[train]), "val": pool.subset(rest[val]), "test": pool.subset(test)}
    splits = dict(parts)
    for missing, fraction in (("test", f_test), ("val", f_val)):
        if missing not in splits:
            train = splits["train"]
            kept, taken = _stratified(train.labels, fraction / (f_train + fraction), seed)
            log.info("No %s part in the data: %d training images are held out as %s", missing, len(taken), missing)
            splits["train"], splits[missing] = train.subset(kept), train.subset(taken)
    return splits


def _load_source(data_cfg: DictConfig, name: str, root: Optional[str]) -> SourceData:
    """Dataset ``name`` with data.classes applied. Every dataset of a run (data, data.target, transfer
    images) comes through here, so here a classifier's need for 2 classes with images is enforced."""
    request = DataRequest(name=name, root=root,
                          cache_dir=Path(data_cfg.cache_dir) if data_cfg.cache_dir else default_cache_dir(),
                          bad_images=data_cfg.bad_images, path=data_cfg.get("path"),
                          text_column=data_cfg.get("text_column", "text"),
                          label_column=data_cfg.get("label_column", "label"),
                          encoding=data_cfg.get("encoding", "utf-8"))
    loaded = load_source(request)
    wanted = data_cfg.get("classes")
    source = select_classes(loaded, wanted)
    # Classes that have images (a class whose files were all skipped as unreadable does not count).
    labels = np.unique(np.concatenate([part.labels for part in source.parts.values()]))
    present = [source.classes[i] for i in labels]
    if len(present) >= 2:
        return source
    found = f"{len(present)} class ({', '.join(present)})" if present else "no class"
    if wanted:
        choices = ", ".join(loaded.classes[:10]) + (", ..." if len(loaded.classes) > 10 else "")
        raise DataError(f"data.classes=[{','.join(str(c) for c in wanted)}] keeps images of only {found} of {name}; "
                        f"a classifier needs at least 2 classes: list 2 or more of {choices}, or remove data.classes")
    raise DataError(f"{name} ({source.description}) has images of only {found}; a classifier needs at least "
                    "2 classes: use data with images of 2 or more classes")


def load_run_data(data_cfg: DictConfig, seed: int, name: Optional[str] = None,
                  root: Optional[str] = None) -> RunData:
    """Load dataset ``name`` (default: data.name from data.root) and split it for this run."""
    if name is None:
        name, root = data_cfg.name, data_cfg.root
    source = _load_source(data_cfg, name, root)
    splits = make_splits(source, list(data_cfg.split), seed, data_cfg.max_per_class)
    for split in SPLITS:
        if len(splits[split]) == 0:
            raise DataError(f"the {split} split of {name} is empty; use more images or change data.split")
    log.info("Data %s: %s; %d classes; train/val/test = %d/%d/%d", name, source.description,
             len(source.classes), *(len(splits[s]) for s in SPLITS))
    return RunData(name, source.classes, splits, source.description)


def left_out_images(data_cfg: DictConfig, seed: int, run: RunData, count: int) -> ImageSet:
    """Up to ``count`` images of the run's dataset that none of its train/val/test splits holds (those
    data.max_per_class left out), drawn at random with ``seed``, their labels removed (set to -1): an
    unlabelled transfer set. Only the pool that train was drawn from is used (never a fixed test part)."""
    source = _load_source(data_cfg, data_cfg.name, data_cfg.root)
    pool_name = "all" if "all" in source.parts else "train"
    pool = source.parts[pool_name]
    # The splits drawn from this pool; a fixed val/test part of the dataset numbers its images separately.
    drawn = [split for split in SPLITS if pool_name == "all" or split == "train" or split not in source.parts]
    used = set().union(*(run.splits[split].ids for split in drawn))
    free = [i for i, sample_id in enumerate(pool.ids) if sample_id not in used]
    if not free:
        raise DataError(f"{run.name} has no images outside the run's train/val/test splits to use as unlabelled "
                        "transfer images; cap the splits with data.max_per_class=<n> or set distill.transfer_images=0")
    if len(free) < count:
        log.info("Transfer set: only %d images of %s are outside the run's splits (asked for %d)", len(free),
                 run.name, count)
    chosen = pool.subset(np.sort(np.random.default_rng(seed).permutation(free)[:count]))
    chosen.labels = np.full(len(chosen), -1, dtype=np.int64)  # unlabelled: nothing downstream can use them
    return chosen
