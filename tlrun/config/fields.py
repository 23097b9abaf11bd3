"""Field builders of the schema (a key's choices, range, path-ness and one-line help) and the range check
that the schema and the companion commands share. Light: no torch."""

from __future__ import annotations

import math
from dataclasses import field
from typing import Any, Optional

from tlrun.errors import ConfigError


def choice(default: Any, choices: tuple, help: str = "") -> Any:
    """A field restricted to ``choices`` (checked by ``validate_config``)."""
    return field(default=default, metadata={"choices": choices, "help": help})


def bounded(default: Any, low: Optional[float] = None, high: Optional[float] = None,
            low_open: bool = False, help: str = "") -> Any:
    """A numeric field with an allowed range (checked by ``validate_config``). Every int/float key of
    the schema is declared with ``bounded`` (a test enforces it), so a new key gets its range checked."""
    return field(default=default, metadata={"low": low, "high": high, "low_open": low_open,
                                            "help": help})


def unbounded(default: Any, help: str = "") -> Any:
    """A numeric field that may take any value (declared explicitly, so none is unbounded by omission)."""
    return field(default=default, metadata={"low": None, "high": None, "low_open": False, "help": help})


def path_field(default: Optional[str] = None, help: str = "") -> Any:
    """A file or folder key: ``~`` is expanded when the config is validated (``expand_paths``)."""
    return field(default=default, metadata={"path": True, "help": help})


def check_range(key: str, value: Any, low: Optional[float] = None, high: Optional[float] = None,
                low_open: bool = False) -> None:
    """ConfigError naming ``key`` when the number ``value`` lies outside [low, high] (or (low, high]).
    Shared by the schema and the companion commands' arguments (--threads, --batch-size...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not math.isfinite(value):  # nan passes every comparison below
        raise ConfigError(f"invalid value for {key}: {value}; it must be a finite number")
    if low is not None and (value < low or (low_open and value == low)):
        raise ConfigError(f"invalid value for {key}: {value}; it must be {'>' if low_open else '>='} {low}")
    if high is not None and value > high:
        raise ConfigError(f"invalid value for {key}: {value}; it must be <= {high}")


def check_arg_ranges(args: Any, ranges: dict[str, tuple[Optional[float], Optional[float]]]) -> None:
    """The companion commands' range table: ConfigError (``check_range``'s wording, naming the flag) for
    the first argparse argument outside its range; a list argument is checked value by value, None skipped."""
    for dest, (low, high) in ranges.items():
        value = getattr(args, dest)
        for item in value if isinstance(value, list) else [value]:
            check_range("--" + dest.replace("_", "-"), item, low, high)


def check_channel_stats(values: Optional[list], positive: bool) -> Optional[str]:
    """data.mean / data.std: one value (all channels) or three (R, G, B); std must be > 0."""
    if values is None:
        return None
    if len(values) not in (1, 3):
        return f"give 1 value (every channel) or 3 (R, G, B), not {len(values)}"
    if positive and any(v <= 0 for v in values):
        return "every std must be > 0 (it divides the pixels)"
    return None


def check_split(split: list) -> Optional[str]:
    if len(split) != 3 or any(s <= 0 for s in split) or abs(sum(split) - 1.0) > 1e-6:
        return "give 3 positive fractions (train, val, test) that sum to 1, e.g. data.split=[0.7,0.15,0.15]"
    return None


