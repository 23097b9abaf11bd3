"""README.md is the user's manual: its `tlrun` commands compose as written, it stays short, and every
benchmark README names the command that writes its committed CSV.

Which README commands are checked (fast, in-process, nothing is trained):

* every line of a fenced code block that is ``tlrun`` or starts with ``tlrun `` (lines continued with a
  trailing ``\\`` are joined first; ``tlrun-predict``/``tlrun-rank``/``tlrun-report``, ``torchrun`` and
  ``$ tlrun`` error examples do not start with ``tlrun `` and are not commands to compose);
* skipped: lines with a placeholder, i.e. any of ``PATH``, ``<``, ``>``, ``...``, ``$``
  (``<same overrides>``, ``data.root=PATH``, ``$HEAD``, shell redirections);
* skipped: lines that need a download, i.e. ``data=``/``data.target=`` one of DOWNLOAD_DATA, or a
  ``model=``/``distill.teacher_model=`` outside OFFLINE_MODELS (the architectures whose weights
  scripts/setup.sh installs, or that train from scratch) unless ``model.weights=null``;
* flags: ``-m``/``--multirun`` is dropped: every swept value goes through ``check_overrides`` and the
  config is composed with each comma sweep at its first value;
  ``--cfg job`` is dropped; ``--help NAME...`` is checked through tlrun.reference.group_help; a line with
  any other flag (``--shell-completion``) is skipped.

What is left is checked as the CLI checks it before a run: ``check_overrides`` on the overrides (path
values quoted as the CLI quotes them), then ``validate_composed`` without the ``hydra`` overrides.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from tlrun.cli import check_overrides, quote_path_values, validate_composed
from tlrun.config import register_configs

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 455

PLACEHOLDERS = ("PATH", "<", ">", "...", "$")
DOWNLOAD_DATA = {"mnist", "mnist_m", "cifar10", "cifar100", "svhn", "usps", "kmnist", "emnist_digits"}
OFFLINE_MODELS = {"mobilenet_v2", "efficientnet_lite0", "lenet", "small_resnet", "conv4", "minilm"}
MULTIRUN_FLAGS = ("-m", "--multirun")


def fenced_lines(text: str) -> list[str]:
    """The lines inside fenced code blocks, with backslash continuations joined."""
    lines, inside, pending = [], False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append((pending + line).strip())
        pending = ""
    return lines


def readme_commands() -> list[str]:
    return [line for line in fenced_lines(README.read_text()) if line == "tlrun" or line.startswith("tlrun ")]


def needs_download(overrides: list[str]) -> bool:
    values = dict(o.lstrip("+").split("=", 1) for o in overrides if "=" in o)
    names = {value for key in ("data", "data.target") for value in values.get(key, "").split(",") if value}
    if names & DOWNLOAD_DATA:
        return True
    models = [m for m in values.get("model", "").split(",") if m]
    if values.get("model.weights") != "null" and any(m not in OFFLINE_MODELS for m in models):
        return True
    return values.get("distill.teacher_model", "mobilenet_v2") not in OFFLINE_MODELS


def first_sweep_values(overrides: list[str]) -> list[str]:
    """A -m sweep's overrides with each comma sweep at its first value (Hydra's own parser decides)."""
    parser = OverridesParser.create()
    expanded = []
    for text in overrides:
        override = parser.parse_override(text)
        if override.is_sweep_override():
            text = f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}"
        expanded.append(text)
    return expanded


def classify(line: str) -> tuple[str, list[str]]:
    """('skip', [reason]) | ('help', names) | ('compose' or, for a -m line, 'sweep', overrides as written)."""
    if any(mark in line for mark in PLACEHOLDERS):
        return "skip", ["placeholder"]
    words = shlex.split(line, comments=True)[1:]
    if "--help" in words or "-h" in words:
        return "help", [w for w in words if not w.startswith("-")]
    multirun = any(w in MULTIRUN_FLAGS for w in words)
    words = [w for w in words if w not in MULTIRUN_FLAGS]
    if "--cfg" in words:
        at = words.index("--cfg")
        del words[at:at + 2]
    if any(w.startswith("-") for w in words):
        return "skip", ["another flag"]
    if needs_download(words):
        return "skip", ["download"]
    return ("sweep" if multirun else "compose"), words


CHECKED = [(line, *classify(line)) for line in readme_commands()]


def test_readme_has_commands_to_check():
    composed = [line for line, kind, _ in CHECKED if kind in ("compose", "sweep")]
    assert len(composed) >= 12, composed
    # one runnable example per pipeline, and a sweep
    for needle in ("adaptation=dann", "adaptation=mmd", "distill=kd", "distill=meta", "freeze=", "-m "):
        assert any(needle in line for line in composed), f"no checked README command with {needle}"


@pytest.mark.parametrize("line,kind,payload", CHECKED, ids=[line[:70] for line, _, _ in CHECKED])
def test_readme_command_composes(line: str, kind: str, payload: list[str]):
    if kind == "skip":
        pytest.skip(payload[0])
    if kind == "help":
        from tlrun.reference import group_help

        assert payload, line
        for name in payload:
            assert group_help(name).strip(), name
        return
    register_configs()  # the model group lives in Hydra's ConfigStore, as in tlrun's main()
    overrides = quote_path_values(payload)
    check_overrides(overrides)  # every value of a sweep
    composed = first_sweep_values(overrides) if kind == "sweep" else overrides
    validate_composed([o for o in composed if not o.startswith(("hydra.", "hydra/"))])


def test_readme_is_a_manual_not_a_notebook():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (at most {MAX_README_LINES})"


BENCHMARK_READMES = sorted((ROOT / "benchmarks").glob("*/README.md"))


def test_there_are_benchmark_readmes():
    assert {path.parent.name for path in BENCHMARK_READMES} >= {"da", "kd", "meta", "rank", "speed", "imagefolder"}


@pytest.mark.parametrize("readme", BENCHMARK_READMES, ids=[path.parent.name for path in BENCHMARK_READMES])
def test_benchmark_readme_names_its_command_and_output(readme: Path):
    name = readme.parent.name
    text = readme.read_text()
    scripts = {path.name for path in readme.parent.glob("bench_*") if path.suffix in (".py", ".sh")}
    assert scripts, f"no bench_* script beside {readme}"
    commands = [line for line in fenced_lines(text) if f"benchmarks/{name}/bench_" in line]
    assert commands, f"{readme} shows no command running benchmarks/{name}/bench_*"
    for command in commands:
        for script in re.findall(rf"benchmarks/{name}/(bench_\w+\.(?:py|sh))", command):
            assert script in scripts, f"{readme}: {script} does not exist"
    match = re.search(r"^Output: `([\w.]+\.csv)` \(committed beside this README", text, re.M)
    assert match, f"{readme} has no 'Output: `<file>.csv` (committed beside this README ...' line"
    sources = "".join(path.read_text() for path in readme.parent.glob("bench_*.py"))
    assert match.group(1) in sources, f"{match.group(1)} is not written by the scripts beside {readme}"
    assert 'HERE / "results"' in sources, f"the default --out of benchmarks/{name} is not its results/ folder"


def markdown_files() -> list[Path]:
    return [README, *BENCHMARK_READMES, *sorted((ROOT / "docs" / "notes").glob("*.md"))]


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    slugs = set()
    fenced = set(fenced_lines(path.read_text()))
    for line in path.read_text().splitlines():
        if line.startswith("#") and line.strip() not in fenced:
            title = line.lstrip("#").strip().lower()
            slugs.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return slugs


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path):
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        assert path.exists(), f"{doc.relative_to(ROOT)}: link {target} does not resolve"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{doc.relative_to(ROOT)}: no heading for #{anchor} in {file or doc.name}"
