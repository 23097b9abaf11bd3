"""Apply finished runs to images: one run or an ensemble, optional test-time augmentation.

Each member predicts through its own saved preprocessing (ft_model.pt's geometry) and its own evaluation
batch size and memory layout, so predicting a run's own test split reproduces its test_acc exactly.
An ensemble averages the members' softmax outputs (optionally weighted); members must share one class list.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from tlrun.artifacts import LoadedModel, load_run_model
from tlrun.data.datasets import ImageDataset
from tlrun.data.imagefolder import IMAGE_EXTENSIONS, check_image
from tlrun.data.sources import ImageSet
from tlrun.data.splits import SPLITS, load_run_data, read_split_table, split_rows
from tlrun.data.text import TextDataset, TextSet, tokenize
from tlrun.models.text import TextInput
from tlrun.engine import Placement
from tlrun.errors import ConfigError, DataError
from tlrun.tta import tta_transform

log = logging.getLogger(__name__)

SPLIT_PREFIX = "split:"


@dataclass
class Member:
    """One run of the ensemble."""

    name: str  # m1, m2, ... (column prefix)
    source: Path
    loaded: LoadedModel
    weight: float = 1.0
    metrics: dict = field(default_factory=dict)

    @property
    def eval_batch_size(self) -> int:
        return int(self.loaded.config.get("train", {}).get("eval_batch_size", 256))

    @property
    def channels_last(self) -> bool:
        return bool(self.loaded.config.get("device", {}).get("channels_last", False))


@dataclass
class Images:
    """What to predict: the images, their ids, and labels when known (indices into the members' classes)."""

    images: ImageSet
    labelled: bool
    description: str


def load_members(sources: Sequence[str], weights: Optional[Sequence[float]] = None,
                 weight_by: Optional[str] = None) -> list[Member]:
    """Load every run; refuse an ensemble whose members disagree on the classes."""
    members = []
    for index, source in enumerate(sources, start=1):
        path = Path(source).expanduser()
        loaded = load_run_model(path)
        run_dir = path if path.is_dir() else path.parent
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        members.append(Member(f"m{index}", path, loaded, metrics=metrics))
    first = members[0]
    for member in members[1:]:
        if member.loaded.classes != first.loaded.classes:
            raise ConfigError(f"cannot ensemble {first.source} and {member.source}: their classes differ "
                              f"({_class_text(first.loaded.classes)} vs {_class_text(member.loaded.classes)}); "
                              "ensemble only runs trained on the same classes")
    if weights is not None:
        if len(weights) != len(members):
            raise ConfigError(f"--weights gives {len(weights)} numbers for {len(members)} runs; give one per run")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError("--weights must be non-negative with a positive sum")
        for member, weight in zip(members, weights):
            member.weight = float(weight)
    elif weight_by:
        for member in members:
            if weight_by not in member.metrics:
                raise ConfigError(f"--weight-by {weight_by}: {member.source} has no metrics.json value "
                                  f"'{weight_by}'; give a run folder or use --weights")
            member.weight = float(member.metrics[weight_by])
    return members


def _class_text(classes: list[str], limit: int = 6) -> str:
    return ", ".join(classes[:limit]) + (", ..." if len(classes) > limit else "")


# --- inputs ----------------------------------------------------------------------------------

def resolve_images(spec: str, members: list[Member]) -> Images:
    """A file, a folder (class sub-folders named like the run's classes = labelled), or ``split:<name>``:
    the run's own train/val/test split, rebuilt from its saved config exactly as the run made it. Text runs
    take a .txt file (one text per line) or a .csv/.tsv/.jsonl table instead of images."""
    classes = members[0].loaded.classes
    text_members = [isinstance(m.loaded.geometry, TextInput) for m in members]
    if any(text_members) and not all(text_members):
        raise ConfigError("cannot ensemble text and image runs; give runs of one kind")
    if spec.startswith(SPLIT_PREFIX):
        return _run_split(spec[len(SPLIT_PREFIX):], members[0])
    if all(text_members):
        return resolve_texts(Path(spec).expanduser(), members[0])
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS or check_image(path, full=True) is not None:
            raise DataError(f"{path} is not a readable image ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return Images(ImageSet(np.array([-1]), paths=[path]), False, f"image {path}")
    if not path.is_dir():
        raise DataError(f"{spec} is neither an image file, a folder, nor split:train|val|test; "
                        "give images to predict")
    subdirs = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    known = [d for d in subdirs if d in classes]
    if known and len(known) == len(subdirs):
        paths, labels = [], []
        for name in subdirs:
            files = _image_files(path / name)
            paths += files
            labels += [classes.index(name)] * len(files)
        labelled, what = True, f"labelled folder {path} ({len(subdirs)} classes)"
    elif known:
        unknown = [d for d in subdirs if d not in classes]
        raise DataError(f"{path} has class folders the run does not know ({_class_text(unknown)}); "
                        f"the run's classes are {_class_text(classes)}: rename or remove them")
    else:
        paths = _image_files(path)
        labels = [-1] * len(paths)
        labelled, what = False, f"folder {path}"
    if not paths:
        raise DataError(f"no images in {path} ({', '.join(sorted(IMAGE_EXTENSIONS))}); give a folder of images")
    bad = [p for p in paths if check_image(p, full=False) is not None]
    if bad:
        raise DataError(f"cannot decode image {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
                        + "; fix or delete it")
    return Images(ImageSet(np.asarray(labels, dtype=np.int64), paths=paths), labelled, what)


def resolve_texts(path: Path, member: Member) -> Images:
    """Texts to predict, read in the run's data.encoding: a .txt file (each non-empty line one text), a table
    with the run's text column (data.text_column; labelled when it also has the run's label column), or a
    folder of class sub-folders of .txt files (data=textfolder's layout; labelled by the folder names)."""
    from tlrun.data.text import TEXT_SUFFIXES, decode_text, read_table, text_folder_files

    data_cfg = member.loaded.config.get("data", {})
    encoding = data_cfg.get("encoding", "utf-8")
    classes = member.loaded.classes
    if path.is_dir():  # any subset of the run's classes, one alone included
        texts, names, ids = text_folder_files(path, "tlrun-predict", encoding)
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise DataError(f"{path} has class folders the run does not know ({_class_text(unknown)}); "
                            f"the run's classes are {_class_text(classes)}: rename or remove them")
        labels = np.asarray([classes.index(name) for name in names], dtype=np.int64)
        return Images(TextSet(labels, texts, ids), True, f"{len(texts)} texts in class folders of {path}")
    if not path.is_file():
        raise DataError(f"{path} is not a file; give a .txt file (one text per line), a .csv/.tsv/.jsonl file "
                        "with the run's text column, a folder of class sub-folders of .txt files, or "
                        "split:train|val|test")
    if path.suffix.lower() == ".txt":
        lines = decode_text(path.read_bytes(), encoding, path)[0].splitlines()
        kept = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
        if not kept:
            raise DataError(f"{path} has no text; give one text per line")
        texts = TextSet(np.full(len(kept), -1, dtype=np.int64), [line for _, line in kept],
                        [f"line {n}" for n, _ in kept])
        return Images(texts, False, f"{len(kept)} lines of {path}")
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise DataError(f"{path}: give a .txt file (one text per line) or a .csv/.tsv/.jsonl file")
    text_column, label_column = data_cfg.get("text_column", "text"), data_cfg.get("label_column", "label")
    frame = read_table(path, encoding)
    if text_column not in frame.columns:
        raise DataError(f"{path} has no column '{text_column}' (the run's data.text_column); its columns are "
                        f"{', '.join(map(str, frame.columns[:12]))}")
    labelled = label_column in frame.columns
    labels = [-1] * len(frame)
    if labelled:
        values = [str(v).strip() for v in frame[label_column]]
        unknown = sorted(set(values) - set(classes))
        if unknown:
            raise DataError(f"{path}: labels in column '{label_column}' the run does not know "
                            f"({_class_text(unknown)}); the run's classes are {_class_text(classes)}")
        labels = [classes.index(v) for v in values]
    texts = TextSet(np.asarray(labels, dtype=np.int64), [str(t) for t in frame[text_column]],
                    [f"row {i + 1}" for i in range(len(frame))])
    return Images(texts, labelled, f"{len(frame)} rows of {path}" + (" (labelled)" if labelled else ""))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _run_split(split: str, member: Member) -> Images:
    from omegaconf import OmegaConf

    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'; use split:train, split:val or split:test")
    config = member.loaded.config
    if not config.get("data"):
        raise ConfigError(f"{member.source} records no data config; give images instead of split:{split}")
    data_cfg = OmegaConf.create(config["data"])
    data = load_run_data(data_cfg, int(config.get("seed", 0)))
    if data.classes != member.loaded.classes:
        raise DataError(f"the data of {member.source} now has other classes than the run "
                        f"({_class_text(data.classes)}); the {split} split cannot be rebuilt")
    images = data.splits[split]
    run_dir = member.source if member.source.is_dir() else member.source.parent
    recorded = run_dir / "split.csv"
    if recorded.is_file():  # the rebuilt split must be the one the run used
        table = read_split_table(recorded)
        table = table[table["split"] == split]
        now = split_rows(split, images, data.classes)
        columns = [c for c in ("sample", "label", "text_sha256") if c in table and c in now]
        changed = [c for c in columns if table[c].tolist() != now[c].tolist()]
        if changed:
            what = ", ".join({"sample": "other samples", "label": "other labels", "text_sha256": "other texts"}[c]
                             for c in changed)
            instead = "a file of texts" if "text_sha256" in now else "an image folder"
            raise DataError(f"the rebuilt {split} split differs from {recorded} ({what}: the data changed since the "
                            f"run); predict on {instead} instead")
    return Images(images, True, f"{data.name} {split} split of {run_dir} ({len(images)} images)")


# --- prediction ------------------------------------------------------------------------------

def check_tta(member: Member, tta: str) -> None:
    if tta != "none" and isinstance(member.loaded.geometry, TextInput):
        raise ConfigError(f"--tta {tta} transforms images; a text run predicts with --tta none")


@torch.inference_mode()
def member_probabilities(member: Member, images: ImageSet, tta: str, device: torch.device,
                         num_workers: int = 0) -> np.ndarray:
    """Softmax outputs (n × classes), averaged over the TTA views."""
    placement = Placement(device, member.channels_last)
    model = placement.model(member.loaded.model).eval()
    if isinstance(member.loaded.geometry, TextInput):
        text_input = member.loaded.geometry
        dataset = TextDataset(images, tokenize(images, text_input.tokenizer, text_input.max_length, None))
        # The run's own evaluation batches (same size, same padding): split:test reproduces test_acc exactly.
        batches = DataLoader(dataset, batch_size=member.eval_batch_size, shuffle=False, num_workers=num_workers,
                             collate_fn=TextDataset.collate)
        return torch.cat([model(placement.images(ids)).float().softmax(dim=1).cpu() for ids, _ in batches]).numpy()
    loader = DataLoader(ImageDataset(images, tta_transform(member.loaded.geometry, tta)),  # V×C×H×W items
                        batch_size=member.eval_batch_size, shuffle=False, num_workers=num_workers)
    out = []
    for views, _ in loader:
        batch, count = views.shape[:2]
        logits = model(placement.images(views.flatten(0, 1))).float()
        out.append(logits.softmax(dim=1).view(batch, count, -1).mean(dim=1).cpu())
    return torch.cat(out).numpy()


def ensemble(probabilities: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Weighted mean of the members' softmax outputs."""
    total = float(sum(weights))
    return sum(w / total * p for w, p in zip(weights, probabilities))


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == labels).mean())


def top_k_text(probabilities: np.ndarray, classes: list[str], k: int) -> list[str]:
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [";".join(f"{classes[j]}:{row[j]:.4f}" for j in top) for row, top in zip(probabilities, order)]


def prediction_table(ids: list[str], classes: list[str], final: np.ndarray, top_k: int,
                     labels: Optional[np.ndarray], no_tta: Optional[np.ndarray],
                     members: Optional[dict[str, np.ndarray]], texts: Optional[list[str]] = None) -> pd.DataFrame:
    """predictions.csv: path (a text's line or row), [text,] predicted_class, probability, top_k [, true_class, correct]
    [, predicted_class_no_tta, probability_no_tta] [, <member>_predicted_class, <member>_probability ...]."""
    predicted = final.argmax(axis=1)
    table = pd.DataFrame({"path": ids, **({"text": texts} if texts is not None else {}), "predicted_class": [classes[i] for i in predicted],
                          "probability": final.max(axis=1).round(6), "top_k": top_k_text(final, classes, top_k)})
    if labels is not None:
        table["true_class"] = [classes[i] for i in labels]
        table["correct"] = predicted == labels
    if no_tta is not None:
        table["predicted_class_no_tta"] = [classes[i] for i in no_tta.argmax(axis=1)]
        table["probability_no_tta"] = no_tta.max(axis=1).round(6)
    for name, probs in (members or {}).items():
        table[f"{name}_predicted_class"] = [classes[i] for i in probs.argmax(axis=1)]
        table[f"{name}_probability"] = probs.max(axis=1).round(6)
    return table


@dataclass
class PredictResult:
    table: pd.DataFrame
    summary: pd.DataFrame  # one row per member (+ the ensemble): accuracy without/with TTA
    final: np.ndarray
    labels: Optional[np.ndarray]


def predict(members: list[Member], images: Images, tta: str = "none", top_k: int = 5,
            device: Optional[torch.device] = None, num_workers: int = 0) -> PredictResult:
    device = device or torch.device("cpu")
    for member in members:  # before any forward pass
        check_tta(member, tta)
    classes = members[0].loaded.classes
    with_tta, without = [], []
    for member in members:
        plain = member_probabilities(member, images.images, "none", device, num_workers)
        without.append(plain)
        with_tta.append(plain if tta == "none" else member_probabilities(member, images.images, tta, device,
                                                                         num_workers))
    weights = [m.weight for m in members]
    final, final_plain = ensemble(with_tta, weights), ensemble(without, weights)
    labels = images.images.labels if images.labelled else None
    table = prediction_table(list(images.images.ids), classes, final, min(top_k, len(classes)), labels,
                             final_plain if tta != "none" else None,
                             {m.name: p for m, p in zip(members, with_tta)} if len(members) > 1 else None,
                             getattr(images.images, "texts", None))
    rows = []
    for member, plain, augmented in zip(members, without, with_tta):
        rows.append(_summary_row(member.name, member.loaded.model_name, str(member.source), member.weight,
                                 plain, augmented, labels, tta, member.metrics.get("test_acc")))
    if len(members) > 1:
        rows.append(_summary_row("ensemble", "+".join(m.loaded.model_name for m in members), "-",
                                 float(sum(weights)), final_plain, final, labels, tta, None))
    return PredictResult(table, pd.DataFrame(rows), final, labels)


def _summary_row(name: str, model: str, source: str, weight: float, plain: np.ndarray, augmented: np.ndarray,
                 labels: Optional[np.ndarray], tta: str, run_test_acc: Optional[float]) -> dict:
    row = {"member": name, "model": model, "weight": round(weight, 4)}
    if labels is not None:
        row["acc"] = accuracy(plain, labels)
        if tta != "none":
            row[f"acc_tta_{tta}"] = accuracy(augmented, labels)
            row["tta_gain"] = row[f"acc_tta_{tta}"] - row["acc"]
    row["mean_probability"] = float(augmented.max(axis=1).mean())
    if run_test_acc is not None:
        row["run_test_acc"] = run_test_acc
    row["source"] = source
    return row
