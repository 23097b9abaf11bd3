"""The trackers of one run: opened together before training, each one guarded during the run.

Opening checks every tracker (installed, reachable, configured): with ``logger.fail_on_error=true`` a
problem is one ``TrackerError`` line before any training, otherwise a warning and the run goes on
without that tracker. Once the run is going, a tracker that fails (a server that died) is dropped with
one warning and the run goes on: its run folder is the record.

:class:`Backend` keeps each tracker's step bookkeeping: every epoch is logged once, and epochs that the
tracker is missing (a resumed run that had no tracker yet, a crash between ft_history.csv and the
tracker) are caught up from ``ft_history.csv``, so a tracker never holds a duplicated or missing step.
"""

from __future__ import annotations

import csv
import importlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from omegaconf import DictConfig, OmegaConf

from tlrun.errors import RunInterrupted
from tlrun.interrupts import INTERRUPTS
from tlrun.tracking import TRACKING_FILE, Tracker, TrackerError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'tlrun[tracking]'"
# The trackers in the order they open; each module has open_backend(node, info) -> Backend.
BACKENDS = ("tensorboard", "mlflow")
# Uploaded when the run finishes, with the plots (*.png); the model file only with logger.log_model=true.
ARTIFACTS = ("ft_history.csv", "metrics.json", "classification_report.txt")
MODEL_FILE = "ft_model.pt"
HISTORY_FILE = "ft_history.csv"
# MLflow run statuses, also the outcome every tracker is closed with.
FINISHED, KILLED, FAILED = "FINISHED", "KILLED", "FAILED"


@dataclass
class RunInfo:
    """What every tracker records about the run, read once from the config and Hydra."""

    run_dir: Path
    name: str  # the run folder's name; in a sweep <sweep folder>/<job number>
    project_dir: Path  # the folder tlrun was started from: its outputs/ holds the run folders
    hparams: dict[str, Any]  # the resolved config, dotted keys: {"train.lr": 0.003, ...}
    tags: dict[str, str] = field(default_factory=dict)
    log_model: bool = False


def describe_run(cfg: DictConfig, run_dir: Path) -> RunInfo:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    run_dir = Path(run_dir).absolute()
    name, project, tags = run_dir.name, Path.cwd(), {"tlrun.run_dir": str(run_dir)}
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        project = Path(hydra.runtime.cwd)
        if hydra.job.override_dirname:
            tags["tlrun.overrides"] = hydra.job.override_dirname
        if hydra.mode == RunMode.MULTIRUN:
            sweep = Path(hydra.sweep.dir)
            tags.update({"tlrun.sweep_dir": str(sweep.absolute()), "tlrun.job_num": str(hydra.job.num)})
            name = f"{sweep.name}/{hydra.job.num}"
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    return RunInfo(run_dir, name, project, flatten(config), tags, bool(cfg.logger.log_model))


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: {"train": {"lr": 0.003}} -> {"train.lr": 0.003}; lists stay values."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def text(value: Any) -> str:
    """A value as the config spells it (null, true, [0.7, 0.15, 0.15]): for params, tags and hparams."""
    if value is None or isinstance(value, (bool, list, dict)):
        return json.dumps(value)
    return str(value)


def number(value: Any) -> Optional[float]:
    """A history or metrics value as a float (bools as 0/1, CSV text parsed); None when not a number."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip():
        try:
            return float(value)
        except ValueError:
            return None
    return None


def epoch_values(row: dict) -> dict[str, float]:
    """The numeric columns of one ft_history.csv row (the epoch column included)."""
    values = {str(key): number(value) for key, value in row.items()}
    return {key: value for key, value in values.items() if value is not None}


def history_rows(run_dir: Path, after: int, upto: Optional[int] = None) -> list[dict]:
    """The rows of ft_history.csv with ``after < epoch <= upto`` (no upper bound without ``upto``)."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [row for row in rows if (epoch := int(number(row.get("epoch")) or 0)) > after
            and (upto is None or epoch <= upto)]


def last_epoch(run_dir: Path) -> int:
    """The last epoch in ft_history.csv, 0 without one."""
    return max((int(number(row["epoch"]) or 0) for row in history_rows(run_dir, 0)), default=0)


def history_columns(run_dir: Path) -> set[str]:
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return set()
    with path.open(newline="") as handle:
        return set(next(csv.reader(handle), []))


def final_values(metrics: dict, run_dir: Path) -> tuple[dict[str, float], dict[str, str]]:
    """metrics.json as tracker values: its numbers (nested keys dotted) and its other values as text.
    A name that is also an ft_history.csv column (adaptation's target_acc) is logged as final.<name>, so
    the per-epoch curve keeps one value per step."""
    columns = history_columns(run_dir)
    numbers, texts = {}, {}
    for key, value in flatten(metrics).items():
        if value is None:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[f"final.{key}" if key in columns else key] = float(value)
        else:
            texts[key] = text(value)
    return numbers, texts


def artifacts(run_dir: Path, log_model: bool) -> list[Path]:
    """The run folder's files a tracker uploads at the end."""
    names = [*ARTIFACTS, *sorted(p.name for p in Path(run_dir).glob("*.png")), *([MODEL_FILE] if log_model else [])]
    return [Path(run_dir) / name for name in names if (Path(run_dir) / name).is_file()]


def read_tracking_file(run_dir: Path) -> dict:
    path = Path(run_dir) / TRACKING_FILE
    try:
        loaded = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        log.warning("%s is unreadable: a new tracker run starts", path)
        return {}
    return loaded if isinstance(loaded, dict) else {}


def write_tracking_file(run_dir: Path, section: str, record: dict) -> None:
    """Record one tracker's run in <run>/tracking.json (written through a rename: never half a file)."""
    path = Path(run_dir) / TRACKING_FILE
    content = {**read_tracking_file(run_dir), section: record}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)


def outcome(error: Optional[BaseException], finished: bool) -> str:
    """FINISHED, KILLED (interrupted: the run is resumable) or FAILED."""
    interrupted = isinstance(error, (RunInterrupted, KeyboardInterrupt))
    if error is None or (interrupted and finished):  # a signal after the results were complete
        return FINISHED
    return KILLED if interrupted else FAILED


def one_line(message: str, limit: int = 300) -> str:
    return " ".join(message.split())[:limit]


class Backend:
    """One tracker of the run. Subclasses implement ``write_epochs``, ``write_run`` and ``finish``."""

    name = "tracker"

    def __init__(self, info: RunInfo, logged_through: int) -> None:
        self.info = info
        self.logged_through = logged_through  # the last epoch this tracker holds

    def log_epoch(self, row: dict) -> None:
        epoch = int(number(row.get("epoch")) or 0)
        if epoch <= self.logged_through:  # already logged before a resume
            return
        # Normally just this row; after a gap, the rows the tracker lacks, from the CSV just written.
        rows = [row] if epoch == self.logged_through + 1 else history_rows(self.info.run_dir, self.logged_through, epoch)
        self._write(rows)

    def log_run(self, metrics: dict) -> None:
        self._write(history_rows(self.info.run_dir, self.logged_through))  # a resume with no epoch left to train
        numbers, texts = final_values(metrics, self.info.run_dir)
        self.write_run(metrics, numbers, texts, artifacts(self.info.run_dir, self.info.log_model))

    def _write(self, rows: Iterable[dict]) -> None:
        epochs = [(int(number(row["epoch"]) or 0), epoch_values(row)) for row in rows]
        if epochs:
            self.write_epochs(epochs)
            self.logged_through = max(epoch for epoch, _ in epochs)

    def write_epochs(self, epochs: list[tuple[int, dict[str, float]]]) -> None:
        raise NotImplementedError

    def write_run(self, metrics: dict, numbers: dict[str, float], texts: dict[str, str], files: list[Path]) -> None:
        raise NotImplementedError

    def finish(self, status: str, error: Optional[BaseException]) -> None:
        raise NotImplementedError

    def abandon(self) -> None:
        """Let go after a failure of this tracker: release what it holds, report nothing more."""


class Trackers(Tracker):
    """The opened trackers as one: a tracker that fails mid-run is dropped with one warning."""

    def __init__(self, backends: list[Backend]) -> None:
        self.backends = list(backends)
        self.finished = False

    def log_epoch(self, row: dict) -> None:
        self._each("logging an epoch", lambda backend: backend.log_epoch(row))

    def log_run(self, metrics: dict, run_dir: Path) -> None:
        self._each("logging the results", lambda backend: backend.log_run(metrics))
        self.finished = True

    def close(self, error: Optional[BaseException] = None) -> None:
        status = outcome(error, self.finished)
        with INTERRUPTS.shielded():  # a second signal must not cut the status update short
            self._each("closing", lambda backend: backend.finish(status, error))
        self.backends = []

    def _each(self, doing: str, call: Callable[[Backend], None]) -> None:
        for backend in list(self.backends):
            try:
                call(backend)
            except RunInterrupted:  # a signal outside training: the runner records it
                raise
            except Exception as exc:  # noqa: BLE001 - a tracker problem never fails the run
                self.backends.remove(backend)
                log.warning("%s stopped logging (%s while %s: %s); the run goes on, its run folder %s is the "
                            "record", backend.name, type(exc).__name__, doing, one_line(str(exc)), backend.info.run_dir)
                try:
                    backend.abandon()
                except Exception:  # noqa: BLE001 - already reported
                    pass


def open_backends(cfg: DictConfig, run_dir: Path) -> Tracker:
    """Open each tracker cfg.logger selects (TrackerError, or a warning with logger.fail_on_error=false)."""
    info = describe_run(cfg, run_dir)
    opened: list[Backend] = []
    for name in BACKENDS:
        node = cfg.logger.get(name)
        if node is None:
            continue
        try:
            opened.append(_open(name, node, info))
        except TrackerError as exc:
            if cfg.logger.fail_on_error:
                for backend in opened:
                    backend.abandon()
                raise
            log.warning("%s; the run goes on without logger=%s (logger.fail_on_error=false)", exc.problem, name)
    return Trackers(opened) if opened else Tracker()


def _open(name: str, node: DictConfig, info: RunInfo) -> Backend:
    module = importlib.import_module(f"tlrun.tracking.{name}")
    try:
        return module.open_backend(node, info)
    except TrackerError:
        raise
    except Exception as exc:  # an unexpected library error: still one line naming the tracker
        raise TrackerError(f"logger={name} could not start ({type(exc).__name__}: {one_line(str(exc))})",
                           f"check the logger.{name} settings") from exc
