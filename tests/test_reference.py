"""docs/configuration.md is generated from the schema's field help and must match it; every key has help;
``tlrun --help <group or key>`` prints that part of the reference (in-process, fast)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from tlrun.config import TlrunConfig
from tlrun.errors import ConfigError
from tlrun.reference import GENERATE_COMMAND, group_help, iter_fields, render_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_configuration_doc_is_up_to_date():
    expected = render_reference()
    actual = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
    assert actual == expected, (f"docs/configuration.md is out of date with the schema (tlrun/config/, tlrun/methods/) (or the "
                                f"group options in conf/): regenerate it with `{GENERATE_COMMAND}`")


def test_every_schema_field_has_help():
    missing = [key for key, f in iter_fields(TlrunConfig) if not str(f.metadata.get("help", "")).strip()]
    assert not missing, f"schema fields without help (add metadata help / help=... in tlrun/config/ or the method's module): {missing}"
    # The walk reaches every dataclass of the schema, list elements included (train.progressive_resizing).
    keys = {key for key, _ in iter_fields(TlrunConfig)}
    assert {"data.augment.hflip", "train.early_stopping.patience", "train.progressive_resizing[].lr",
            "seed", "optimized_metric"} <= keys


def test_help_is_one_line():
    multi = [key for key, f in iter_fields(TlrunConfig) if "\n" in str(f.metadata.get("help", ""))]
    assert not multi, multi


def test_reference_documents_every_key():
    text = render_reference()
    for key, f in iter_fields(TlrunConfig):
        section = f.metadata.get("method_group") or dataclasses.is_dataclass(
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if not section:
            assert f"`{key}`" in text, key


def test_group_help_lists_options_and_keys():
    text = group_help("adaptation")
    options = text.split("Keys")[0]
    for option in ("dann", "mmd", "none"):
        assert f"  {option} " in options or f"  {option}\n" in options, text
    weight = next(line for line in text.splitlines() if line.strip().startswith("adaptation.weight "))
    assert "1.0" in weight and ">= 0" in weight, weight
    assert "Weight of the domain loss" in text
    assert "adaptation.discriminator_dropout = 0.5    ([0, 0.9])" in text


def test_group_help_of_a_key_and_a_subsection():
    text = group_help("train.lr")
    assert text.splitlines()[0].strip() == "train.lr = 0.003    (> 0)"
    assert "Peak learning rate" in text
    assert "data.augment.hflip" in group_help("data.augment")
    assert "train.early_stopping.patience" in group_help("train")
    model = group_help("model")
    assert "resnet18" in model and "lenet" in model and "model.weights" in model


@pytest.mark.parametrize("name, needles", [
    ("adaptaton", ["did you mean 'adaptation'", "model, freeze, adaptation", "train"]),
    ("lr", ["did you mean 'train.lr'"]),
    ("train.lrr", ["did you mean 'train.lr'", "valid keys in 'train'"]),
])
def test_unknown_name_names_the_valid_ones(name, needles):
    with pytest.raises(ConfigError) as info:
        group_help(name)
    assert "\n" not in str(info.value)
    for needle in needles:
        assert needle in str(info.value)


def _run_main(monkeypatch, capsys, *args: str):
    from tlrun import cli

    monkeypatch.setattr(sys, "argv", ["tlrun", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    return info.value.code, capsys.readouterr()


def test_cli_group_help(monkeypatch, capsys):
    code, captured = _run_main(monkeypatch, capsys, "--help", "adaptation")
    assert code == 0
    assert captured.out == group_help("adaptation")
    code, captured = _run_main(monkeypatch, capsys, "-h", "train.lr")
    assert code == 0 and captured.out == group_help("train.lr")


def test_cli_group_help_unknown_name(monkeypatch, capsys):
    monkeypatch.delenv("TLRUN_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    code, captured = _run_main(monkeypatch, capsys, "--help", "adaptaton")
    assert code == 2 and captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tlrun: error:") and "adaptation" in lines[0], captured.err


def test_help_with_overrides_or_flags_is_left_to_hydra():
    from tlrun.cli import print_group_help

    for argv in (["--help"], ["-h"], ["--help", "model=resnet18"], ["--help", "--cfg", "job"], ["train.lr=1"]):
        assert print_group_help(argv) is False, argv


def test_bare_help_prints_hydras_sections_from_one_composition(monkeypatch, capsys):
    from tlrun.cli import group_options

    code, captured = _run_main(monkeypatch, capsys, "--help")
    assert code == 0
    text = captured.out
    assert text.startswith("tlrun: config-driven transfer learning") and "Results go to outputs/" in text
    groups = text.split("== Config groups ==\n")[1].split("\n\n== Config ==\n")[0].splitlines()
    assert groups[0].startswith("adaptation: ") and "_alignment" not in groups[0]  # shared parts are not options
    assert f"model: {', '.join(group_options('model'))}" in groups and "timm" in group_options("model")
    assert "logger: mlflow, none, tensorboard" in groups
    config = text.split("== Config ==\n")[1]
    assert "model:\n  name: mobilenet_v2\n" in config and "hydra:" not in config
