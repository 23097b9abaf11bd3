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
    from tlrun.runner import one_line

    try:
        code = run()
    except TlrunError as exc:
        if debug_mode():
            raise
        print(f"{prog}: error: {one_line(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)
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
    return sorted(names)


def refuse_finished_run_dir(path: str) -> None:
    """Stop before Hydra writes .hydra/ into a finished run folder (never touch a user's results)."""
    from pathlib import Path

    from tlrun.errors import ConfigError
    from tlrun.runner import RESULT_FILES

    existing = [name for name in RESULT_FILES if (Path(path) / name).exists()]
    if existing:
        raise ConfigError(f"run folder {path} already holds results ({', '.join(existing)}); "
                          "tlrun never overwrites them: choose another hydra.run.dir")


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

    from tlrun.config import GROUPS, OVERLAY_GROUPS, check_value, schema_field
    from tlrun.errors import ConfigError

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        raise ConfigError(f"cannot parse override: {str(exc).splitlines()[0]}") from None
    for override in parsed:
        key = override.key_or_group
        if key == "hydra.run.dir" and isinstance(override.value(), str):
            refuse_finished_run_dir(override.value())
        if key == "hydra" or key.startswith(("hydra.", "hydra/")) or override.is_delete():
            continue
        if key in GROUPS or key in OVERLAY_GROUPS:
            options = group_options(key)
            for value in _override_values(override):
                if value is None and key in OVERLAY_GROUPS:
                    continue
                if str(value) not in options:
                    close = difflib.get_close_matches(str(value), options, n=3)
                    hint = f"did you mean {' or '.join(close)}? " if close else ""
                    raise ConfigError(f"unknown option {key}={value}: {hint}valid options: {', '.join(options)}")
            continue
        if "/" in key:
            raise ConfigError(f"unknown config group '{key}'; groups: {', '.join(GROUPS + OVERLAY_GROUPS)}")
        field = schema_field(key)
        for value in _override_values(override):
            check_value(key, field, value)


def _resumable_folder(path: "Any") -> bool:
    from tlrun.runner import run_status

    return (path / "checkpoints" / "last.pt").is_file() and run_status(path) in (None, "interrupted")


def resolve_resume(argv: list[str]) -> list[str]:
    """train.resume=<run folder|checkpoint|auto> → the run goes on in that folder (hydra.run.dir).

    auto picks the newest resumable run under outputs/ whose overrides equal this command's (apart
    from train.resume); with none, a new run starts."""
    from pathlib import Path

    import yaml

    from tlrun.errors import ConfigError

    given = [a for a in argv if a.startswith("train.resume=")]
    if not given or given[-1].split("=", 1)[1] in ("", "null"):
        return argv
    value = given[-1].split("=", 1)[1]
    rest = [a for a in argv if not a.startswith("train.resume=")]
    if any(a.startswith("hydra.run.dir=") for a in rest) or "-m" in rest or "--multirun" in rest:
        raise ConfigError("train.resume picks the run folder itself: drop hydra.run.dir and -m")
    if value == "auto":
        wanted = sorted(a for a in rest if not a.startswith("-"))
        candidates = []
        for overrides in Path("outputs").glob("*/*/.hydra/overrides.yaml"):
            folder = overrides.parent.parent
            previous = sorted(a for a in yaml.safe_load(overrides.read_text()) or []
                              if not a.startswith("train.resume="))
            if previous == wanted and _resumable_folder(folder):
                candidates.append(folder)
        if not candidates:
            print("tlrun: train.resume=auto: no unfinished run with these overrides under outputs/; starting a new run",
                  file=sys.stderr)
            return rest
        folder = max(candidates, key=lambda f: (f / "checkpoints" / "last.pt").stat().st_mtime)
        print(f"tlrun: resuming {folder.resolve()}", file=sys.stderr)
    else:
        path = Path(value).expanduser()
        folder = path.parent.parent if path.is_file() and path.parent.name == "checkpoints" else \
            path.parent if path.is_file() else path
        if not folder.is_dir():
            raise ConfigError(f"train.resume={value}: no such run folder; give the folder of an interrupted run "
                              "(or train.resume=auto)")
    return [*rest, f"train.resume={folder.resolve()}", f"hydra.run.dir={folder.resolve()}"]


def scratch_for_other_ranks(argv: list[str]) -> list[str]:
    """Under torchrun only rank 0 writes the run folder; the other ranks get a private scratch folder
    (removed when they finish) and learn rank 0's folder by broadcast."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or int(os.environ.get("RANK", "0")) == 0:
        return argv
    import tempfile

    scratch = tempfile.mkdtemp(prefix=f"tlrun-rank{os.environ['RANK']}-")
    kept = [a for a in argv if not a.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
    return [*kept, f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]


def _run_task(cfg: Any) -> Any:
    from tlrun.runner import run_job

    metrics = run_job(cfg)
    if cfg.get("optimized_metric"):  # an optimising sweeper (Optuna) reads the task's return value
        return float(metrics.get(cfg.optimized_metric, float("nan")))
    return metrics


def main() -> None:
    """Console entry point (``tlrun``)."""
    import hydra
    from hydra._internal.utils import get_args_parser

    from tlrun.config import register_configs

    register_configs()
    argv = sys.argv[1:]
    if not any(flag in argv for flag in _INSPECT_FLAGS):
        try:
            args = get_args_parser().parse_args(argv)
            check_overrides(args.overrides)
            resolved = scratch_for_other_ranks(resolve_resume(args.overrides))
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
