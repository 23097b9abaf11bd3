"""The ``tlrun`` command: Hydra composes the config, ``tlrun.runner`` runs it.

Kept light on purpose (no torch import at module top): ``tlrun --help``, ``--cfg job`` and tab
completion answer quickly. Command-line overrides are checked against the schema *before* Hydra
creates a run folder, so a typo costs one clear line and leaves nothing behind.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from tlrun.errors import TlrunError

CONFIG_NAME = "config"
# Flags after which tlrun only inspects configs: no run folder is made.
_INSPECT_FLAGS = ("--shell-completion", "-sc", "--info", "-i", "--hydra-help", "--version")


def debug_mode() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("TLRUN_DEBUG") == "1"


def fail(message: str, code: int = 2) -> None:
    print(f"tlrun: error: {message}", file=sys.stderr)
    sys.exit(code)


def run_command(prog: str, run: Callable[[], int]) -> None:
    """Exit with ``run()``'s code; a TlrunError or Ctrl-C becomes one ``<prog>: error:`` line, no traceback
    (the companion commands tlrun-predict and tlrun-rank share this)."""
    from tlrun.runner import describe_failure, one_line

    try:
        code = run()
    except TlrunError as exc:
        if debug_mode():
            raise
        print(f"{prog}: error: {one_line(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:  # a write the file system refused (disk full, read-only): one line too
        described = describe_failure(exc)
        if described is None or debug_mode():
            raise
        print(f"{prog}: error: {described[0]}", file=sys.stderr)
        sys.exit(described[1])
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)


def group_options(group: str) -> list[str]:
    """Options of a config group: YAML files in tlrun.conf/<group> plus ConfigStore entries."""
    from importlib.resources import files

    from hydra.core.config_store import ConfigStore

    names = set()
    folder = files("tlrun.conf").joinpath(group)
    if folder.is_dir():
        names |= {entry.name.rsplit(".", 1)[0] for entry in folder.iterdir() if entry.name.endswith(".yaml")}
    stored = ConfigStore.instance().repo.get(group, {})
    names |= {name.rsplit(".", 1)[0] for name in stored if isinstance(name, str) and name.endswith(".yaml")}
    return sorted(name for name in names if not name.startswith("_"))  # _alignment...: shared parts, not options


def _override_values(override: Any) -> list[Any]:
    """The concrete values of an override: one, or each element of a choice sweep."""
    from hydra.core.override_parser.types import ChoiceSweep

    if isinstance(override.value(), ChoiceSweep):
        return list(override.sweep_iterator())
    if override.is_sweep_override():
        return []  # range/interval sweeps: Hydra checks the generated values
    return [override.value()]


def check_overrides(overrides: list[str]) -> None:
    """Reject unknown keys, unknown group options and invalid values with one line."""
    import difflib

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from tlrun.config import GROUPS, METHOD_GROUPS, OVERLAY_GROUPS, check_value, schema_field
    from tlrun.errors import ConfigError

    parser = OverridesParser.create()
    for text in overrides:
        try:
            parser.parse_overrides([text])
        except OverrideParseException as exc:
            raise ConfigError(f"cannot parse override {text!r} ({str(exc).splitlines()[0][:100]}); quote a value "
                              "that has spaces or special characters for Hydra inside the shell's quotes, e.g. "
                              "'data.root=\"~/my data\"'") from None
    parsed = parser.parse_overrides(overrides)
    methods = selected_methods(parsed)
    experiment = any(o.key_or_group == "experiment" and not o.is_delete() for o in parsed)
    for override in parsed:
        key = override.key_or_group
        if key == "hydra" or key.startswith(("hydra.", "hydra/")) or override.is_delete():
            continue
        if key in GROUPS or key in OVERLAY_GROUPS:
            options = group_options(key)
            # A list selects several options at once (logger=[tensorboard,mlflow]).
            chosen = [item for value in _override_values(override)
                      for item in (value if isinstance(value, list) else [value])]
            for value in chosen:
                if value is None and key in OVERLAY_GROUPS:
                    continue
                if str(value) not in options:
                    close = difflib.get_close_matches(str(value), options, n=3)
                    hint = f"did you mean {' or '.join(close)}? " if close else ""
                    raise ConfigError(f"unknown option {key}={value}: {hint}valid options: {', '.join(options)}")
            continue
        if "/" in key:
            raise ConfigError(f"unknown config group '{key}'; groups: {', '.join(GROUPS + OVERLAY_GROUPS)}")
        if _is_tracker_key(key):
            _check_tracker_key(override, parsed, experiment)
            continue
        group = key.split(".", 1)[0]
        if group in METHOD_GROUPS and "." in key:
            if experiment:  # an experiment may pick the method: the composed config is checked instead
                continue
            for method in methods[group]:  # a key of each method the overrides select (sweeps: each one)
                field = schema_field(key, methods={group: method})
                for value in _override_values(override):
                    check_value(key, field, value)
            continue
        field = schema_field(key)
        for value in _override_values(override):
            check_value(key, field, value)


def _is_tracker_key(key: str) -> bool:
    from tlrun.config.logger import TRACKERS

    parts = key.split(".")
    return len(parts) > 2 and parts[0] == "logger" and parts[1] in TRACKERS


def _check_tracker_key(override: Any, parsed: list[Any], experiment: bool) -> None:
    """``logger.mlflow.tracking_uri=...``: a key of a tracker's sub-node, which exists only when the logger=
    override switches that tracker on (in every job of a sweep)."""
    import dataclasses

    from tlrun.config import check_value
    from tlrun.config.logger import TRACKERS
    from tlrun.errors import ConfigError

    key = override.key_or_group
    _, tracker, rest = key.split(".", 2)
    selections = [[]]  # logger=none, the default
    for other in parsed:
        if other.key_or_group == "logger" and not other.is_delete():
            selections = [value if isinstance(value, list) else [value] for value in _override_values(other)]
    if not experiment and any(tracker not in map(str, chosen) for chosen in selections):
        raise ConfigError(f"{key} configures the {tracker} tracker, which this command does not switch on; add "
                          f"logger={tracker} (or logger=[tensorboard,mlflow] for both)")
    fields = {f.name: f for f in dataclasses.fields(TRACKERS[tracker])}
    if rest not in fields:
        raise ConfigError(f"unknown key '{key}': valid keys in 'logger.{tracker}': {', '.join(sorted(fields))}")
    for value in _override_values(override):
        check_value(key, fields[rest], value)


def selected_methods(parsed: list[Any]) -> dict[str, list[str]]:
    """The methods each method group's override selects (every value of a sweep), else its default."""
    from tlrun.config import METHOD_GROUPS

    methods = {group: ["none"] for group in METHOD_GROUPS}
    for override in parsed:
        if override.key_or_group in METHOD_GROUPS and not override.is_delete():
            methods[override.key_or_group] = [str(value) for value in _override_values(override)] or ["none"]
    return methods


# Keys whose value is a path (besides the schema's path_field keys): Hydra's own output folders.
_HYDRA_PATH_KEYS = ("hydra.run.dir", "hydra.sweep.dir")


def _is_path_key(key: str) -> bool:
    from tlrun.config import schema_field

    if key in _HYDRA_PATH_KEYS:
        return True
    try:
        return bool(schema_field(key).metadata.get("path"))
    except TlrunError:
        return False


def quote_path_values(overrides: list[str]) -> list[str]:
    """Path keys as a shell hands them over: ``~`` expanded, and a value with spaces or other characters
    Hydra's grammar does not take bare (``data.root=/data/my photos``) quoted for Hydra, so it means what
    the user typed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    prepared = []
    for text in overrides:
        key, sep, value = text.partition("=")
        if not sep or key.startswith("~") or not _is_path_key(key.lstrip("+")):
            prepared.append(text)
            continue
        if value.startswith("~"):
            value = os.path.expanduser(value)
        candidate = f"{key}={value}"
        try:
            parser.parse_overrides([candidate])
        except OverrideParseException:
            if "'" not in value:
                candidate = f"{key}='{value}'"
            elif '"' not in value:
                candidate = f'{key}="{value}"'
        prepared.append(candidate)
    return prepared


def scratch_for_other_ranks(argv: list[str]) -> list[str]:
    """Under torchrun only rank 0 writes the run folder; the other ranks get a private scratch folder
    (removed when they finish) and learn rank 0's folder by broadcast."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or int(os.environ.get("RANK", "0")) == 0:
        return argv
    import tempfile

    scratch = tempfile.mkdtemp(prefix=f"tlrun-rank{os.environ['RANK']}-")
    kept = [a for a in argv if not a.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
    return [*kept, f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]


def check_new_run(overrides: list[str], compose: bool = False) -> None:
    """Before Hydra creates a new run folder: a given hydra.run.dir holds no results and can be created;
    with ``compose``, the whole config also composes and validates here. A run of tlrun's own config
    validates it in the ValidateRun callback instead, after Hydra's composition and before the folder."""
    from pathlib import Path

    from tlrun.paths import check_can_create
    from tlrun.rundir import refuse_results

    fixed = [a.split("=", 1)[1] for a in overrides if a.startswith("hydra.run.dir=")]
    folder = Path(fixed[-1].strip("'\"")) if fixed else Path("outputs")
    if fixed:
        refuse_results(folder)
    check_can_create(folder, "hydra.run.dir")
    if compose:
        validate_composed([a for a in overrides if not a.startswith(("hydra.", "hydra/"))])


def compose_config(overrides: list[str]) -> Any:
    """The run's config as Hydra will compose it (without its own hydra node); ConfigError if it cannot."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from tlrun.config import register_configs
    from tlrun.errors import ConfigError

    register_configs()  # the schema and the model options (a caller outside main() may not have yet)
    task = [a for a in overrides if not a.startswith(("hydra.", "hydra/"))]
    try:
        with initialize_config_module("tlrun.conf", version_base="1.3"):
            return compose(CONFIG_NAME, overrides=task)
    except HydraException as exc:  # Hydra's own message is one clear line; keep it
        raise ConfigError(str(exc).strip().splitlines()[0]) from None
    finally:
        GlobalHydra.instance().clear()


def validate_composed(overrides: list[str]) -> None:
    """Compose the run's config as Hydra will and validate it (before Hydra writes anything)."""
    from tlrun.config import validate_config

    validate_config(compose_config(overrides))


def print_group_help(argv: list[str]) -> bool:
    """``tlrun --help NAME...`` (or ``-h NAME``): print the options and keys of config groups, sections or
    dotted keys (``tlrun.reference.group_help``) and return True; an unknown name is one error line (exit 2).
    False when no bare name follows the flag, so plain ``tlrun --help`` stays Hydra's own help."""
    flags = [i for i, arg in enumerate(argv) if arg in ("--help", "-h")]
    names = []
    for arg in argv[flags[0] + 1:] if flags else []:
        if arg.startswith("-") or "=" in arg:
            break
        names.append(arg)
    if not names:
        return False
    from tlrun.reference import group_help

    try:
        text = "\n".join(group_help(name) for name in names)
    except TlrunError as exc:
        if debug_mode():
            raise
        fail(str(exc), exc.exit_code)
    print(text, end="")
    return True


def print_app_help(argv: list[str]) -> bool:
    """Bare ``tlrun --help`` (or ``-h``): the app help of ``hydra.help`` (header, config groups, the default
    config, footer), printed from one composition. Hydra's own renderer builds a config repository per
    group option (~100 deep copies, ~3 s here); this prints the same sections in a fraction of that, and
    leaves out the shared ``_`` parts (``_alignment``) that are not options."""
    if argv not in (["--help"], ["-h"]):
        return False
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    from tlrun.config import GROUPS, OVERLAY_GROUPS, register_configs

    register_configs()
    try:
        with initialize_config_module("tlrun.conf", version_base="1.3"):
            cfg = compose(CONFIG_NAME, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    help_cfg = cfg.hydra.help
    groups = "\n".join(f"{group}: {', '.join(group_options(group))}" for group in sorted(GROUPS + OVERLAY_GROUPS))
    with open_dict(cfg):
        del cfg["hydra"]
    print(f"{help_cfg.header}\n== Config groups ==\n{groups}\n\n== Config ==\n{OmegaConf.to_yaml(cfg)}\n"
          f"{help_cfg.footer}")
    return True


def _run_task(cfg: Any) -> Any:
    from tlrun.runner import run_job

    metrics = run_job(cfg)
    if cfg.get("optimized_metric"):  # an optimising sweeper (Optuna) reads the task's return value
        return float(metrics.get(cfg.optimized_metric, float("nan")))
    return metrics


def main() -> None:
    """Console entry point (``tlrun``)."""
    from tlrun.interrupts import INTERRUPTS

    with INTERRUPTS.before_job():
        _main()


def _main() -> None:
    # tlrun --help <group or key>: that group's options and keys with their help (tlrun.reference).
    if print_group_help(sys.argv[1:]) or print_app_help(sys.argv[1:]):
        sys.exit(0)
    import hydra
    from hydra._internal.utils import get_args_parser

    from tlrun.config import register_configs
    from tlrun.rundir import resolve_resume

    register_configs()
    argv = sys.argv[1:]
    if not any(flag in argv for flag in _INSPECT_FLAGS):
        try:
            args = get_args_parser().parse_args(argv)
            overrides = quote_path_values(args.overrides)
            check_overrides(overrides)
            # Paths resolve_resume adds (the run folder) are quoted for Hydra like the user's own.
            resolved = scratch_for_other_ranks(quote_path_values(resolve_resume(overrides, args.multirun)))
            starts_a_run = not (args.multirun or args.help or args.hydra_help or args.cfg)
            if starts_a_run and not any(a.startswith("train.resume=") for a in resolved):
                # The config itself is validated by tlrun.callbacks.ValidateRun (with the user's own primary
                # config, --config-name/-cp/-cd, by the job).
                check_new_run(resolved)
            if resolved != args.overrides:
                flags = [a for a in argv if a not in args.overrides]
                sys.argv = [sys.argv[0], *flags, *resolved]
        except TlrunError as exc:
            if debug_mode():
                raise
            fail(str(exc), exc.exit_code)
    # Hydra records the task's module for the config search path: keep it tlrun.cli.
    try:
        hydra.main(version_base="1.3", config_path="conf", config_name=CONFIG_NAME)(_run_task)()
    except ValueError as exc:  # Hydra's own command-line checks (e.g. -m together with --cfg)
        if debug_mode() or "can be specified" not in str(exc):
            raise
        fail(f"{exc}; run them one at a time")


if __name__ == "__main__":
    main()
