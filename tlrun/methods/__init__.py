"""Methods as plug-ins: a domain-adaptation or distillation method is one module of this package that
registers itself with a name, the schema of its own config node and what it builds.

    @ADAPTATION.register("coral", CoralConfig)
    class Coral(Alignment): ...

``conf/adaptation/coral.yaml`` (``method: coral``) selects it; ``ADAPTATION.spec("coral")`` imports
``tlrun.methods.coral`` on demand, so a run loads only its own method and ``tlrun --help`` none.
An unknown name is an error that lists the registered ones; there is no fall-through.

Light on purpose (no torch here): the config layer looks schemas up through this registry.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Optional

from tlrun.errors import ConfigError

NONE = "none"  # every group's "no method" option: its node holds only the base keys


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its name, its config node's schema (a dataclass), the pipeline that runs it
    and the object it registered (an Alignment class, a distillation loss...)."""

    name: str
    config: type
    pipeline: str
    build: Any = None


class MethodRegistry:
    """Methods of one config group (``adaptation`` or ``distill``), found by module name on demand."""

    def __init__(self, group: str, none_config: Callable[[], type], none_pipeline: str) -> None:
        self.group = group
        self._none_config, self._none_pipeline = none_config, none_pipeline
        self._specs: dict[str, MethodSpec] = {}

    def register(self, name: str, config: type, pipeline: Optional[str] = None) -> Callable[[Any], Any]:
        """Decorator: register ``name`` with its config schema; ``pipeline`` defaults to the group's own
        (adaptation methods run in the adaptation pipeline, a distillation method names its own)."""
        def add(built: Any) -> Any:
            if name in self._specs and self._specs[name].build is not built:
                raise ValueError(f"{self.group} method '{name}' is registered twice")
            self._specs[name] = MethodSpec(name, config, pipeline or self.group, built)
            return built

        return add

    def spec(self, name: str) -> MethodSpec:
        """The method registered as ``name`` (importing ``tlrun.methods.<name>`` first); a one-line
        ConfigError listing the registered methods when there is none."""
        if name == NONE:
            return MethodSpec(NONE, self._none_config(), self._none_pipeline)
        if name not in self._specs and isinstance(name, str) and name.isidentifier():
            try:
                importlib.import_module(f"{__name__}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{name}":
                    raise
        if name not in self._specs:
            names = self.names()  # imports every method module: one may register under another module's name
            if name in self._specs:
                return self._specs[name]
            close = difflib.get_close_matches(str(name), names, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"unknown {self.group} method '{name}' ({self.group}.method): {hint}"
                              f"registered methods: {', '.join(names)}")
        return self._specs[name]

    def names(self) -> list[str]:
        """Every method of this group: ``none`` and each registered one (all method modules imported)."""
        for module in pkgutil.iter_modules(importlib.import_module(__name__).__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{__name__}.{module.name}")
        return [NONE, *sorted(self._specs)]


def _adaptation_base() -> type:
    from tlrun.config.methods import AdaptationBase

    return AdaptationBase


def _distill_base() -> type:
    from tlrun.config.methods import DistillBase

    return DistillBase


# Source-only (adaptation=none with a data.target) is the adaptation pipeline's baseline; with no target
# and no distillation the run is plain fine-tuning (tlrun.runner.select_pipeline).
ADAPTATION = MethodRegistry("adaptation", _adaptation_base, "adaptation")
DISTILL = MethodRegistry("distill", _distill_base, "finetune")
REGISTRIES = {"adaptation": ADAPTATION, "distill": DISTILL}
