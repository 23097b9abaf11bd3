"""Name → builder registries (datasets, models, pipelines), torchdistill style."""

from __future__ import annotations

import difflib
from typing import Optional, Callable, Generic, Iterator, TypeVar

from tlrun.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A dictionary of named builders with a decorator to fill it and helpful lookup errors."""

    def __init__(self, kind: str, config_key: str) -> None:
        self.kind = kind
        self.config_key = config_key
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str, config_key: Optional[str] = None) -> T:
        """The item registered as ``name``; an unknown name is a one-line ConfigError naming
        ``config_key`` (default: the registry's own key, e.g. ``data=``)."""
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"unknown {self.kind} '{name}' ({config_key or self.config_key}): {hint}"
                              f"choose one of {', '.join(sorted(self._items))}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
