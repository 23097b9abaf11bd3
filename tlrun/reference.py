"""The configuration reference, generated from the schema's own field help (``tlrun/config/``, and each
method's config node in its module under ``tlrun/methods/``).

``python -m tlrun.reference > docs/configuration.md`` writes the Markdown reference;
``tlrun --help <group, section or key>`` prints one part of it as plain text (``group_help``).
tests/test_reference.py fails when docs/configuration.md and the schema disagree, and when a schema
field has no help, so the reference cannot drift from the code.

Light like ``tlrun.config`` (no torch) except for the method groups: ``tlrun --help adaptation`` imports
the method modules to read their nodes' help.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any, Iterator, NamedTuple, Optional

from tlrun.config import GROUPS, METHOD_GROUPS, OVERLAY_GROUPS, TlrunConfig, method_schema, register_configs, schema_field
from tlrun.errors import ConfigError

GENERATE_COMMAND = "python -m tlrun.reference > docs/configuration.md"
# Sections of the config, in the reference's order: the config groups, then the plain section train.
SECTIONS = (*GROUPS, "train")
# ConfigStore-only options of a group beyond this many are summarised (the model group: every
# torchvision classifier) instead of listed one by one.
MAX_LISTED_OPTIONS = 30
_MODEL_EXAMPLES = ("mobilenet_v2", "resnet18", "resnet50", "efficientnet_b0", "convnext_tiny", "vit_b_16",
                   "swin_t")


class Key(NamedTuple):
    """One leaf key of the schema, as the reference shows it."""

    key: str  # dotted: train.lr
    default: str
    allowed: str
    help: str


# ---------------------------------------------------------------------------------------------
# Walking the schema
# ---------------------------------------------------------------------------------------------

def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None if f.default is dataclasses.MISSING else f.default


def _nested(f: dataclasses.Field) -> Optional[type]:
    """The dataclass of a section field (model, data.augment...; a method group's base node), else None."""
    if f.metadata.get("method_group"):
        return method_schema(f.name, "none")
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        made = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(made):
            return type(made)
    return None


def _annotation(f: dataclasses.Field) -> tuple[str, bool]:
    """('List[float]', optional?) from the field's annotation (postponed, so a string in tlrun.config)."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if text.startswith("Optional[") and text.endswith("]"):
        return text[len("Optional["):-1], True
    return text, False


def _element_schema(f: dataclasses.Field) -> Optional[type]:
    """The dataclass inside ``List[...]`` (train.progressive_resizing: ResizePhase), else None."""
    import tlrun.config.schema as config_module

    match = re.fullmatch(r"List\[(\w+)\]", _annotation(f)[0])
    candidate = getattr(config_module, match.group(1), None) if match else None
    return candidate if isinstance(candidate, type) and dataclasses.is_dataclass(candidate) else None


def _yaml(value: Any) -> str:
    """A value as it is written in an override or a YAML file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, str) and value == "":
        return "''"
    return str(value)


def _number(value: float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


_TYPE_WORDS = {"bool": "true, false", "str": "string", "int": "whole number", "float": "number",
               "List[float]": "list of numbers", "List[int]": "list of whole numbers", "List[str]": "list of strings"}


def allowed(f: dataclasses.Field) -> str:
    """What a key accepts: its choices, its range (``>= 1``, ``(0, 1]``), a path, or its type."""
    meta = f.metadata
    base, optional = _annotation(f)
    if "choices" in meta:
        text = ", ".join(map(str, meta["choices"]))
    elif meta.get("path"):
        text = "path (~ expanded)"
    elif "low" in meta:
        low, high, low_open = meta.get("low"), meta.get("high"), bool(meta.get("low_open"))
        if low is not None and high is not None:
            text = f"{'(' if low_open else '['}{_number(low)}, {_number(high)}]"
        elif low is not None:
            text = f"{'>' if low_open else '>='} {_number(low)}"
        elif high is not None:
            text = f"<= {_number(high)}"
        else:
            text = f"any {_TYPE_WORDS.get(base, 'number')}"
    elif _element_schema(f) is not None:
        text = f"list of {{{', '.join(g.name for g in dataclasses.fields(_element_schema(f)))}}}"
    else:
        text = _TYPE_WORDS.get(base, base)
    return f"{text}, or null" if optional else text


def field_help(f: dataclasses.Field) -> str:
    return str(f.metadata.get("help", "")).strip()


def method_nodes(group: str) -> list[tuple[str, type, str]]:
    """(option, schema, first docstring line) of each registered method of a method group."""
    from tlrun.methods import REGISTRIES

    found = []
    for name in REGISTRIES[group].names():
        if name != "none":
            schema = REGISTRIES[group].spec(name).config
            doc = (schema.__doc__ or "").strip().splitlines()[0].replace("``", "")
            found.append((name, schema, doc.removeprefix(f"{group}={name}:").strip()))
    return found


def method_keys(group: str, schema: type) -> list[Key]:
    """The keys a method's node adds to its group's base node (adaptation=none's keys)."""
    base = {f.name for f in dataclasses.fields(method_schema(group, "none"))}
    return [key for key in keys_of(schema, f"{group}.") if key.key.split(".", 1)[1] not in base]


def iter_fields(schema: type = TlrunConfig, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """Every field of the schema, depth first, with its dotted key: sections (model, data.augment), leaf
    keys, the keys of list elements (train.progressive_resizing[].lr) and of every method's node."""
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        yield key, f
        if not prefix and f.metadata.get("method_group"):
            seen = set()
            for method_schema_ in [method_schema(f.name, "none"), *(m[1] for m in method_nodes(f.name))]:
                for sub_key, sub_field in iter_fields(method_schema_, f"{key}."):
                    if sub_key not in seen:
                        seen.add(sub_key)
                        yield sub_key, sub_field
            continue
        nested = _nested(f)
        if nested is not None:
            yield from iter_fields(nested, f"{key}.")
        element = _element_schema(f)
        if element is not None:
            yield from iter_fields(element, f"{key}[].")


def keys_of(schema: type, prefix: str) -> list[Key]:
    """The leaf keys directly in a section (not those of its sub-sections)."""
    return [Key(f"{prefix}{f.name}", _yaml(_default(f)), allowed(f), field_help(f))
            for f in dataclasses.fields(schema) if _nested(f) is None]


def subsections(schema: type, prefix: str) -> list[tuple[str, type, str]]:
    """(dotted name, dataclass, help) of the sub-sections of a section: nested dataclasses (data.augment)
    and the elements of a list of dataclasses (the phases of train.progressive_resizing)."""
    found = []
    for f in dataclasses.fields(schema):
        nested, element = _nested(f), _element_schema(f)
        if nested is not None:
            found.append((f"{prefix}{f.name}", nested, field_help(f)))
            found += subsections(nested, f"{prefix}{f.name}.")
        elif element is not None:
            doc = (element.__doc__ or "").strip().splitlines()[0].replace("``", "")
            found.append((f"{prefix}{f.name}[]", element, doc or f"Each element of {prefix}{f.name}"))
    return found


def _section_field(name: str) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(TlrunConfig)}[name]


# ---------------------------------------------------------------------------------------------
# Group options
# ---------------------------------------------------------------------------------------------

class Option(NamedTuple):
    name: str
    description: str


def _conf_file(*parts: str):
    from importlib.resources import files

    return files("tlrun.conf").joinpath(*parts)


def default_options() -> dict[str, str]:
    """group -> the option conf/config.yaml's defaults list picks (model: mobilenet_v2...)."""
    from omegaconf import OmegaConf

    primary = OmegaConf.to_container(OmegaConf.create(_conf_file("config.yaml").read_text()))
    chosen = {}
    for entry in primary.get("defaults", []) if isinstance(primary, dict) else []:
        if isinstance(entry, dict):  # "- model: mobilenet_v2", "- optional experiment: null"
            for group, option in entry.items():
                chosen[str(group).replace("optional ", "").strip()] = option
    return chosen


def _description(text: str, group: str) -> str:
    """First comment line of a group option's YAML file (Hydra's ``# @package`` directive is skipped);
    without one, the keys the file sets."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and not stripped.startswith("# @package"):
            comment = stripped.lstrip("#").strip().rstrip(":")  # "...: <example command on the next line>"
            if comment:
                return comment
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(OmegaConf.create(text)) or {}
    if not isinstance(values, dict):
        return ""
    set_keys = [f"{group}.{k}={_yaml(v)}" for k, v in values.items() if k != "defaults"]
    return f"sets {', '.join(set_keys)}" if set_keys else ""


def options_of(group: str) -> list[Option]:
    """A group's options (``tlrun.cli.group_options``: YAML files and ConfigStore entries) with the
    description of each YAML file."""
    from tlrun.cli import group_options

    register_configs()  # once per process
    found = []
    for name in group_options(group):
        path = _conf_file(group, f"{name}.yaml")
        found.append(Option(name, _description(path.read_text(), group) if path.is_file() else ""))
    return found


def _stored_defaults(group: str, names: list[str]) -> dict[str, list[str]]:
    """ConfigStore options whose node changes more than ``name`` from the schema: 'weights=null' -> names."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    schema = _nested(_section_field(group)) if group in SECTIONS else None
    base = dataclasses.asdict(schema()) if schema else {}
    stored = ConfigStore.instance().repo.get(group, {})
    changes: dict[str, list[str]] = {}
    for name in names:
        node = stored.get(f"{name}.yaml")
        if node is None:
            continue
        values = OmegaConf.to_container(node.node) if OmegaConf.is_config(node.node) else {}
        diff = [f"{group}.{k}={_yaml(v)}" for k, v in values.items() if k != "name" and base.get(k, v) != v]
        if diff:
            changes.setdefault(", ".join(diff), []).append(name)
    return changes


def summarise_options(group: str, options: list[Option]) -> Optional[str]:
    """One paragraph for a group with many undescribed options (model: every torchvision classifier),
    or None when the options are few enough to list."""
    undescribed = [o.name for o in options if not o.description]
    if len(undescribed) <= MAX_LISTED_OPTIONS:
        return None
    text = f"{len(options)} options"
    if group == "model":
        from tlrun.models.catalog import EXTRA_MODELS, TORCHVISION_CLASSIFIERS

        names = {o.name for o in options}
        own = sorted(names & set(EXTRA_MODELS))
        vision = sorted(names & set(TORCHVISION_CLASSIFIERS))
        examples = [n for n in _MODEL_EXAMPLES if n in names]
        text += (f": every torchvision classifier ({len(vision)}, registered in Hydra's ConfigStore by "
                 f"register_configs(), e.g. {', '.join(examples)}) and tlrun's own ({', '.join(own)})")
    else:
        text += f", e.g. {', '.join(undescribed[:8])}"
    changes = _stored_defaults(group, undescribed)
    if changes:
        text += ". Options that set more than the name: " + "; ".join(
            f"{', '.join(names)}: {change}" for change, names in sorted(changes.items()))
    return text + "."


# ---------------------------------------------------------------------------------------------
# Markdown: docs/configuration.md
# ---------------------------------------------------------------------------------------------

def _md(text: str) -> str:
    """Table-cell text: pipes, emphasis stars, HTML brackets and (paired) strike-through tildes escaped."""
    for char in ("\\", "|", "*", "<", *(("~",) if text.count("~") > 1 else ())):
        text = text.replace(char, "\\" + char)
    return text


def _sentence(text: str) -> str:
    return text if not text or text[-1] in ".!?" else text + "."


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _key_table(keys: list[Key]) -> list[str]:
    lines = ["| key | default | allowed | help |", "|---|---|---|---|"]
    for k in keys:
        lines.append(f"| {_code(k.key)} | {_code(k.default)} | {_md(k.allowed)} | {_md(k.help)} |")
    return lines


def _option_lines(group: str, defaults: dict[str, str]) -> list[str]:
    options = options_of(group)
    default = defaults.get(group)
    lines = [f"Group `{group}=`" + (f", default `{default}`" if default is not None else ", no default") + ":", ""]
    summary = summarise_options(group, options)
    if summary is not None:
        return lines + [_md(summary), ""]
    lines += ["| option | description |", "|---|---|"]
    lines += [f"| {_code(o.name)} | {_md(o.description)} |" for o in options]
    return lines + [""]


def render_reference() -> str:
    """The Markdown of docs/configuration.md."""
    defaults = default_options()
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from the schema's field help in tlrun/config/ and tlrun/methods/ by",
        f"     {GENERATE_COMMAND}",
        "     Do not edit by hand: tests/test_reference.py fails when this file and the schema disagree. -->",
        "",
        "Every run is one config that Hydra composes from the config groups below and the typed schema in",
        "`tlrun/config/` (each method's node: its module in `tlrun/methods/`). Pick a group option with `group=option` (`model=resnet18`), override any key with",
        "`section.key=value` (`train.lr=1e-3`, `data.augment.hflip=true`), and sweep with `-m` and",
        "comma-separated values (`tlrun -m train.lr=1e-3,3e-3`). Unknown keys and options and values outside",
        "*allowed* are refused before any work. `tlrun --cfg job [overrides]` prints the composed config;",
        "`tlrun --help <group, section or key>` (e.g. `tlrun --help adaptation`, `tlrun --help train.lr`)",
        "prints that part of this page in the terminal.",
        "",
        "*default* is the schema's default; a group option can set its own (`data=digits` sets",
        "`data.image_size=64`), so the defaults of a run are `tlrun --cfg job`'s values.",
        "",
        f"This file is generated by `{GENERATE_COMMAND}` from the help text of each field of the schema,",
        "and `tests/test_reference.py` checks that it is up to date (and that every key has help).",
        "",
        "## Config groups",
        "",
        "| group | default | options |",
        "|---|---|---|",
    ]
    for group in (*GROUPS, *OVERLAY_GROUPS):
        options = options_of(group)
        shown = ", ".join(o.name for o in options)
        if summarise_options(group, options) is not None:
            shown = f"{len(options)} options (see [{group}](#{group}))"
        default = defaults.get(group)
        out.append(f"| `{group}=` | {_code(_yaml(default))} | {shown} |")
    out.append("")
    for section in SECTIONS:
        f = _section_field(section)
        schema = _nested(f)
        out += [f"## {section}", "", _sentence(field_help(f)), ""]
        if section in GROUPS:
            out += _option_lines(section, defaults)
        out += _key_table(keys_of(schema, f"{section}."))
        out.append("")
        if section in METHOD_GROUPS:
            out += ["Each method's node adds its own keys (a key of another method is refused):", ""]
            for option, method_schema_, doc in method_nodes(section):
                out += [f"### {section}={option}", "", _sentence(doc), ""]
                out += _key_table(method_keys(section, method_schema_))
                out.append("")
        for name, sub_schema, sub_help in subsections(schema, f"{section}."):
            out += [f"### {name}", "", _sentence(sub_help), ""]
            out += _key_table(keys_of(sub_schema, f"{name}."))
            out.append("")
    out += ["## Top-level keys", ""]
    out += _key_table(keys_of(TlrunConfig, ""))
    out.append("")
    out += ["## Overlay groups", "",
            "Groups without a default whose files (`# @package _global_`) set keys anywhere in the config:", ""]
    for group in OVERLAY_GROUPS:
        out += [f"### {group}", ""]
        out += ["| option | description |", "|---|---|"]
        out += [f"| {_code(o.name)} | {_md(o.description)} |" for o in options_of(group)]
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Plain text: tlrun --help NAME
# ---------------------------------------------------------------------------------------------

def _key_lines(keys: list[Key]) -> list[str]:
    lines = []
    for k in keys:
        lines.append(f"  {k.key} = {k.default}    ({k.allowed})")
        lines.append(f"      {k.help}")
    return lines


def _option_text(group: str) -> list[str]:
    options = options_of(group)
    default = default_options().get(group)
    head = f"Options ({group}=NAME" + (f", default {default}" if default is not None else ", no default") + "):"
    summary = summarise_options(group, options)
    if summary is not None:  # in a terminal, every name too
        import textwrap

        names = textwrap.wrap(", ".join(o.name for o in options), width=100, initial_indent="  ",
                              subsequent_indent="  ", break_on_hyphens=False)
        return [head, f"  {summary}", *names]
    width = max((len(o.name) for o in options), default=0)
    return [head, *(f"  {o.name.ljust(width)}  {o.description}".rstrip() for o in options)]


def help_names() -> list[str]:
    """The names ``group_help`` takes besides dotted keys: groups, sections and top-level keys."""
    top_keys = [f.name for f in dataclasses.fields(TlrunConfig) if _nested(f) is None]
    return [*SECTIONS, *OVERLAY_GROUPS, *top_keys]


def _unknown(name: str) -> ConfigError:
    valid = help_names()
    keys = [k for k, _ in iter_fields() if "[" not in k]
    close = [k for k in keys if k.endswith(f".{name}")]  # lr -> train.lr
    close = close or difflib.get_close_matches(name, valid + keys, n=1, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(k) for k in close[:3])}? " if close else ""
    return ConfigError(f"no config group or key '{name}' to explain: {hint}valid names: {', '.join(valid)}, "
                       "or a dotted key such as train.lr")


def group_help(name: str) -> str:
    """Plain-text help for a group or section (its options and keys) or one dotted key."""
    name = name.strip()
    if name in OVERLAY_GROUPS:
        return "\n".join([f"{name}: a recipe that sets keys anywhere in the config (tlrun {name}=NAME)", "",
                          *_option_text(name)]) + "\n"
    if "." not in name and name not in help_names():
        raise _unknown(name)
    try:
        f = schema_field(name)
    except ConfigError as exc:  # a dotted key with a typo: config's own message names close matches
        raise ConfigError(str(exc).replace("unknown key", "no config key", 1)) from None
    schema = _nested(f)
    if schema is None:
        key = Key(name, _yaml(_default(f)), allowed(f), field_help(f))
        lines = _key_lines([key])
        element = _element_schema(f)
        if element is not None:
            lines += ["", f"Keys of each element of {name}:", *_key_lines(keys_of(element, f"{name}[]."))]
        return "\n".join(lines) + "\n"
    lines = [f"{name}: {field_help(f)}", ""]
    if name in GROUPS:
        lines += [*_option_text(name), ""]
    lines += [f"Keys ({name}.KEY=VALUE; default, then allowed values):", *_key_lines(keys_of(schema, f"{name}."))]
    if name in METHOD_GROUPS:
        for option, method_schema_, doc in method_nodes(name):
            lines += ["", f"{name}={option}: {doc.rstrip('.')}. Its keys besides those above:",
                      *_key_lines(method_keys(name, method_schema_))]
    for sub_name, sub_schema, sub_help in subsections(schema, f"{name}."):
        lines += ["", f"{sub_name}: {sub_help}", *_key_lines(keys_of(sub_schema, f"{sub_name}."))]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_reference(), end="")
