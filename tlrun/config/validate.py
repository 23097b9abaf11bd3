"""Validation of a composed run config against the schema: unknown keys (with the valid ones), types,
choices, ranges, then each section's own cross-key ``check``. ``+key=...`` slips past Hydra's struct
check; this does not. A method group's node is checked against the schema of the method it names.

Light: no torch here (a method's schema is imported from its module only when a run names it).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from typing import Any, Mapping, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from tlrun.config.fields import check_range
from tlrun.config.schema import TlrunConfig
from tlrun.errors import ConfigError


def _fields(schema: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(schema)}


def nested_schema(f: dataclasses.Field) -> Optional[type]:
    """The dataclass of a section field (data.augment...), else None."""
    default_factory = f.default_factory  # type: ignore[misc]
    if default_factory is not dataclasses.MISSING:
        made = default_factory()
        if dataclasses.is_dataclass(made):
            return type(made)
    return None


def method_schema(group: str, method: str) -> type:
    """The schema of ``group``'s node when it selects ``method`` (ConfigError naming the registered
    methods when there is no such method)."""
    from tlrun.methods import REGISTRIES

    return REGISTRIES[group].spec(method).config


def _method_schemas(group: str) -> list[type]:
    from tlrun.methods import REGISTRIES

    registry = REGISTRIES[group]
    return [registry.spec(name).config for name in registry.names()]


def is_method_group(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("method_group"))


def schema_field(key: str, schema: type = TlrunConfig, methods: Optional[Mapping[str, str]] = None) -> dataclasses.Field:
    """Field of a dotted key such as ``train.epochs``; ConfigError naming the valid keys if unknown.

    Under a method group (``adaptation.weight``) the field comes from the schema of the method that
    ``methods`` names for that group; without it, from the first method that has the key."""
    parts = key.split(".")
    current = schema
    for depth, part in enumerate(parts):
        known = _fields(current)
        if part not in known:
            section = ".".join(parts[:depth])
            where = f"'{section}'" if section else "the config"
            if depth == 1 and methods and parts[0] in methods:
                where = f"{parts[0]}={methods[parts[0]]}"
            raise _unknown_key(key, known, f"{section}." if section else "", where)
        f = known[part]
        if depth == len(parts) - 1:
            return f
        if depth == 0 and is_method_group(f):
            if methods and part in methods:
                current = method_schema(part, methods[part])
                continue
            for candidate in _method_schemas(part):
                if parts[1] in _fields(candidate):
                    current = candidate
                    break
            else:
                current = method_schema(part, "none")
            continue
        nested = nested_schema(f)
        if nested is None:
            raise ConfigError(f"unknown key '{key}': '{'.'.join(parts[:depth + 1])}' is a value, "
                              "not a section")
        current = nested
    raise AssertionError("unreachable")


_TYPE_CHECKS = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool), "a string"),
    "List[float]": (lambda v: isinstance(v, (list, tuple)) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v),
        "a list of finite numbers"),
}


def base_type(f: dataclasses.Field) -> tuple[str, bool]:
    """('int', optional?) from the annotation string (annotations are postponed here)."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if text.startswith("Optional[") and text.endswith("]"):
        return text[len("Optional["):-1], True
    return text, False


def check_value(key: str, f: dataclasses.Field, value: Any) -> None:
    """Raise ConfigError if ``value`` has the wrong type or breaks the field's choices or range."""
    meta = f.metadata
    base, optional = base_type(f)
    if value is None:
        if not optional:
            raise ConfigError(f"invalid value for {key}: null; it needs a value")
        return
    check = _TYPE_CHECKS.get(base)
    if check is not None and not check[0](value):
        raise ConfigError(f"invalid value for {key}: {value!r}; it must be {check[1]}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"invalid value for {key}: {value!r}; valid choices: "
                          f"{', '.join(map(str, meta['choices']))}")
    if "validator" in meta and (problem := meta["validator"](value)):
        raise ConfigError(f"invalid value for {key}: {value}; {problem}")
    check_range(key, value, meta.get("low"), meta.get("high"), bool(meta.get("low_open")))


def section_schemas(cfg: DictConfig) -> dict[str, type]:
    """Schema of each section of a composed config (a method group's: its method's)."""
    schemas = {}
    for f in dataclasses.fields(TlrunConfig):
        if is_method_group(f):
            node = cfg.get(f.name)
            method = node.get("method", "none") if isinstance(node, DictConfig) else "none"
            schemas[f.name] = method_schema(f.name, str(method))
        elif (nested := nested_schema(f)) is not None:
            schemas[f.name] = nested
    return schemas


def validate_config(cfg: DictConfig) -> None:
    """Check a composed run config: unknown keys, choices and ranges, then each section's cross-key check."""
    schemas = section_schemas(cfg)
    methods = {group: str(cfg[group].method) for group in schemas if group in cfg and "method" in cfg[group]}
    _validate_node(cfg, TlrunConfig, "", schemas, methods)
    for schema in schemas.values():
        check = getattr(schema, "check", None)
        if check is not None:
            check(cfg)


def _unknown_key(key: str, known: Mapping[str, Any], prefix: str, where: str) -> ConfigError:
    candidates = [f"{prefix}{k}" for k in known]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return ConfigError(f"unknown key '{key}': {hint}valid keys in {where}: {', '.join(sorted(known))}")


def _validate_node(cfg: DictConfig, schema: type, prefix: str, schemas: Mapping[str, type],
                   methods: Mapping[str, str]) -> None:
    known = _fields(schema)
    section = prefix[:-1]
    where = f"{section}={methods[section]}" if section in methods else (f"'{section}'" if section else "the config")
    for key in cfg.keys():
        if not prefix and key == "hydra":
            continue
        full_key = f"{prefix}{key}"
        if str(key) not in known:
            raise _unknown_key(full_key, known, prefix, where)
        f = known[str(key)]
        nested = schemas.get(str(key)) if not prefix else nested_schema(f)
        node = cfg._get_node(key)  # type: ignore[attr-defined]
        if nested is not None:
            if not isinstance(node, DictConfig):
                raise ConfigError(f"invalid value for {full_key}: expected a section of keys")
            _validate_node(node, nested, f"{full_key}.", schemas, methods)
            continue
        if isinstance(node, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(node, resolve=True)
        else:
            value = cfg[key]
        check_value(full_key, f, value)


def expand_paths(cfg: DictConfig, schema: type = TlrunConfig) -> None:
    """Expand ``~`` in every path key of the schema (``path_field``), in place."""
    schemas = section_schemas(cfg) if schema is TlrunConfig else {}
    for f in dataclasses.fields(schema):
        if f.name not in cfg:
            continue
        nested = schemas.get(f.name) or nested_schema(f)
        if nested is not None:
            if isinstance(cfg[f.name], DictConfig):
                expand_paths(cfg[f.name], nested)
        elif f.metadata.get("path") and isinstance(cfg[f.name], str) and cfg[f.name].startswith("~"):
            cfg[f.name] = os.path.expanduser(cfg[f.name])


def numeric_fields_without_range(schema: type = TlrunConfig, prefix: str = "") -> list[str]:
    """Numeric keys declared without ``bounded``/``unbounded`` (the schema test keeps this empty); a method
    group is checked for every registered method."""
    missing = []
    for f in dataclasses.fields(schema):
        if not prefix and is_method_group(f):
            for method_schema_ in _method_schemas(f.name):
                missing += numeric_fields_without_range(method_schema_, f"{f.name}.")
            continue
        nested = nested_schema(f)
        if nested is not None:
            missing += numeric_fields_without_range(nested, f"{prefix}{f.name}.")
        elif base_type(f)[0] in ("int", "float") and "low" not in f.metadata:
            missing.append(f"{prefix}{f.name}")
    return sorted(set(missing))
