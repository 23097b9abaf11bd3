"""Run folders: unique by construction, their records never rewritten, resumable in place.

* A default run folder (``outputs/<date>/<time>``) is *claimed* with an exclusive ``mkdir`` when Hydra
  resolves ``hydra.run.dir``; a folder that already exists gets a suffix (``10-00-00_1``), so two runs
  started in the same second never share one.
* A folder that holds results is never written into again, except by an accepted resume.
* ``train.resume`` is checked *before* Hydra writes anything: a refused resume changes nothing on disk,
  and an accepted one keeps the run's original ``.hydra/`` record (``hydra.output_subdir=null``).

No torch import here: the CLI runs this before Hydra starts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from tlrun.errors import ConfigError
from tlrun.paths import check_can_create

# Files that make a folder a run's results: never overwritten.
RESULT_FILES = ("metrics.json", "ft_history.csv", "ft_model.pt")
# Overrides that may differ between a run and its resume: they change how it runs, not what it computes.
RESUME_FREE_KEYS = ("train.resume", "train.progress", "train.plots", "device.threads", "device.num_workers",
                    "device.pin_memory")
NEW_DIR_RESOLVER = "tlrun_new_dir"


# Parent folders (outputs/, outputs/<date>/) that this process created for a claimed run folder: a job
# refused before it produced anything removes them again, so a refusal leaves the disk as it was.
_CREATED_PARENTS: list[Path] = []


def claim_new_dir(base: str) -> str:
    """``base``, or ``base_1``, ``base_2``... : the first that this process creates itself (atomic mkdir)."""
    path = Path(base)
    missing = [parent for parent in [path.parent, *path.parent.parents] if not parent.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    _CREATED_PARENTS.extend(p.absolute() for p in missing)  # innermost first
    candidate, number = path, 0
    while True:
        try:
            candidate.mkdir()
            return str(candidate)
        except FileExistsError:
            number += 1
            candidate = path.with_name(f"{path.name}_{number}")


def remove_created_parents(run_dir: Path) -> None:
    """Remove the empty parent folders that claiming ``run_dir`` created (innermost first)."""
    for parent in list(_CREATED_PARENTS):
        if Path(run_dir).absolute().is_relative_to(parent):
            try:
                parent.rmdir()
            except OSError:  # not empty (another run is in it) or already gone
                continue
            _CREATED_PARENTS.remove(parent)


def register_resolver() -> None:
    """``${tlrun_new_dir:outputs/...}`` in conf/config.yaml. Cached like Hydra's own ``now``: Hydra copies
    the resolver cache into every sweep job's config, so a run resolves its folder once."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(NEW_DIR_RESOLVER):
        OmegaConf.register_new_resolver(NEW_DIR_RESOLVER, claim_new_dir, use_cache=True)


def run_status(run_dir: Path) -> Optional[str]:
    """ "ok"/"interrupted" from metrics.json, None when the run has not finished or stopped cleanly."""
    metrics = Path(run_dir) / "metrics.json"
    if not metrics.is_file():
        return None
    try:
        return json.loads(metrics.read_text()).get("status", "ok")
    except (ValueError, AttributeError):
        return "unreadable"


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / "checkpoints" / "last.pt").is_file()


def resumable(run_dir: Path) -> bool:
    """A run that stopped before finishing and can go on: interrupted (recorded), or killed after a checkpoint."""
    status = run_status(run_dir)
    return status == "interrupted" or (status is None and has_checkpoint(run_dir))


def refuse_results(run_dir: Path) -> None:
    """Stop before anything is written into a folder that holds a run's results."""
    existing = [name for name in RESULT_FILES if (Path(run_dir) / name).exists()]
    if existing:
        hint = " (or train.resume=<it> to continue that interrupted run)" if resumable(run_dir) else ""
        raise ConfigError(f"run folder {run_dir} already holds results ({', '.join(existing)}); tlrun never "
                          f"overwrites them: choose another hydra.run.dir{hint}")


def check_run_dir(run_dir: Path, resume: bool = False) -> None:
    """The job's own check of its folder: a resumable run to continue, or one without results (the CLI
    made the same check before Hydra wrote anything; this covers in-process and launcher jobs)."""
    if resume:
        check_resumable(run_dir, str(run_dir))
    else:
        refuse_results(run_dir)


def check_resumable(run_dir: Path, asked: str) -> None:
    """ConfigError unless ``run_dir`` is a run that ``train.resume`` can continue."""
    status = run_status(run_dir)
    if status not in (None, "interrupted"):
        raise ConfigError(f"train.resume={asked}: run {run_dir} already finished (metrics.json status {status}); "
                          "nothing to resume, and tlrun never overwrites results")
    if not resumable(run_dir):
        raise ConfigError(f"train.resume={asked}: nothing to resume in {run_dir}: no checkpoints/last.pt and no "
                          "interruption record (the process was killed before its first epoch ended); start the "
                          "run again without train.resume")


def recorded_overrides(run_dir: Path) -> Optional[list[str]]:
    import yaml

    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    return [str(item) for item in loaded] if isinstance(loaded, list) else None


def _as_dict(overrides: list[str]) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in overrides if not item.startswith("-"))
    return {key.lstrip("+"): value for key, value in (p if len(p) == 2 else (p[0], "") for p in pairs)
            if key.lstrip("+") not in RESUME_FREE_KEYS and not key.startswith(("hydra.", "hydra/"))}


def _flat(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def override_differences(recorded: list[str], given: list[str]) -> list[str]:
    """Keys whose composed value differs between a run's recorded overrides and this command's (free keys
    aside): ``seed=0`` given explicitly is the run's default seed, ``1e-3`` is ``0.001``. Overrides that no
    longer compose are compared as written."""
    from omegaconf import OmegaConf

    from tlrun.cli import compose_config

    try:
        before, now = (_flat(OmegaConf.to_container(compose_config(o), resolve=True)) for o in (recorded, given))
    except Exception:  # noqa: BLE001 - e.g. a group option removed since the run started
        before, now = _as_dict(recorded), _as_dict(given)
    return [f"{key}={now.get(key, '<unset>')} (the run has {before.get(key, '<unset>')})"
            for key in sorted(set(before) | set(now))
            if before.get(key) != now.get(key) and key not in RESUME_FREE_KEYS]


def check_same_overrides(run_dir: Path, given: list[str], asked: str) -> None:
    recorded = recorded_overrides(run_dir)
    if recorded is None:  # a checkpoint placed by hand: the engine checks that it fits this model and method
        return
    differences = override_differences(recorded, given)
    if differences:
        command = " ".join(["tlrun", *[o for o in recorded if not o.startswith("train.resume=")],
                            f"train.resume={run_dir}"])
        raise ConfigError(f"train.resume={asked}: this command differs from the run it resumes in "
                          f"{'; '.join(differences)}; a resume continues the same run: {command}")


def _auto_candidate(overrides: list[str]) -> Optional[Path]:
    """train.resume=auto: the newest resumable run under outputs/ launched with these overrides."""
    candidates = [overrides_file.parent.parent for overrides_file in Path("outputs").glob("*/*/.hydra/overrides.yaml")]
    matching = [folder for folder in candidates if resumable(folder)
                and not override_differences(recorded_overrides(folder) or ["<unreadable>=1"], overrides)]
    if not matching:
        return None
    return max(matching, key=lambda f: max((p.stat().st_mtime for p in (f / "metrics.json",
                                                                         f / "checkpoints" / "last.pt")
                                            if p.is_file()), default=0.0))


def _holds_a_run(folder: Path) -> bool:
    """Anything a resume could continue or a new run would overwrite (results, checkpoints, a record)."""
    return resumable(folder) or any((folder / name).exists() for name in RESULT_FILES)


def unquote(value: str) -> str:
    """A value as the user meant it: without the quotes Hydra's grammar needs (``'a b (1)'`` -> ``a b (1)``)."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def resolve_resume(argv: list[str], multirun: bool = False) -> list[str]:
    """train.resume=<run folder|checkpoint|auto> → the run goes on in that folder (hydra.run.dir).

    ``auto`` picks the newest resumable run under outputs/ whose overrides equal this command's (apart from
    the free keys); with a fixed ``hydra.run.dir=D`` it resumes D when D is resumable and starts the run in
    D when D holds no results yet (a cluster script re-submitted with the same folder). Every refusal
    happens here, before Hydra writes anything."""
    given = [a for a in argv if a.startswith("train.resume=")]
    if not given or given[-1].split("=", 1)[1] in ("", "null"):
        return argv
    value = unquote(given[-1].split("=", 1)[1])
    rest = [a for a in argv if not a.startswith("train.resume=")]
    if multirun:
        raise ConfigError("train.resume continues one run: drop -m (resume each job of a sweep on its own)")
    fixed = [unquote(a.split("=", 1)[1]) for a in rest if a.startswith("hydra.run.dir=")]
    rest = [a for a in rest if not a.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
    fixed_dir = Path(fixed[-1]).expanduser().resolve() if fixed else None
    if fixed_dir is not None and (value == "auto" or Path(value).expanduser().resolve() == fixed_dir):
        if not _holds_a_run(fixed_dir):
            print(f"tlrun: train.resume={value}: {fixed_dir} has nothing to resume yet; starting the run there",
                  file=sys.stderr)
            return [*rest, f"hydra.run.dir={fixed_dir}"]
        folder = fixed_dir
    elif value == "auto":
        found = _auto_candidate(rest)
        if found is None:
            print("tlrun: train.resume=auto: no unfinished run with these overrides under outputs/; "
                  "starting a new run", file=sys.stderr)
            return rest
        folder = found.resolve()
    else:
        path = Path(value).expanduser()
        folder = path.parent.parent if path.is_file() and path.parent.name == "checkpoints" else \
            path.parent if path.is_file() else path
        if not folder.is_dir():
            raise ConfigError(f"train.resume={value}: no such run folder; give the folder of an interrupted run "
                              "(or train.resume=auto)")
        folder = folder.resolve()
        if fixed_dir is not None and fixed_dir != folder:
            raise ConfigError(f"train.resume={value} continues the run in its own folder {folder}, but "
                              f"hydra.run.dir={fixed[-1]} names another; drop hydra.run.dir or give the same folder")
    check_resumable(folder, value)
    check_same_overrides(folder, rest, value)
    check_can_create(folder, "train.resume")  # the resume writes into it (a read-only disk is refused here)
    print(f"tlrun: resuming {folder}", file=sys.stderr)
    # The run's own .hydra/ record stays as it was written when the run started.
    return [*rest, f"train.resume={folder}", f"hydra.run.dir={folder}", "hydra.output_subdir=null"]
