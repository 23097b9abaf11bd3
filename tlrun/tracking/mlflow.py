"""logger=mlflow: one MLflow run per tlrun run (per sweep job), continued when the run is resumed.

* Store: ``logger.mlflow.tracking_uri``; null = an embedded sqlite store in the project's outputs,
  ``<cwd>/outputs/mlflow/mlflow.db`` with artefacts in ``<cwd>/outputs/mlflow/artifacts/`` (no server;
  ``mlflow ui --backend-store-uri sqlite:///outputs/mlflow/mlflow.db`` shows it), or an http(s) server.
* The MLflow run id is kept in ``<run>/tracking.json``: a resume (``train.resume=...``) reopens that run,
  in the store it started in, and logs only the epochs the run does not hold yet. Params are the
  resolved config, logged once when the run starts (MLflow params cannot change).
* Fail fast: an http(s) server is probed (``GET /health``, a few seconds) before anything is created,
  and MLflow's own HTTP retries are kept short, so a dead server costs seconds, not minutes.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from omegaconf import DictConfig

from tlrun.errors import ConfigError
from tlrun.paths import check_can_create
from tlrun.tracking import TrackerError
from tlrun.tracking.backends import (FAILED, INSTALL_HINT, Backend, RunInfo, one_line, read_tracking_file, text,
                                     write_tracking_file)

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5
# MLflow retries a failed request 7 times with back-off (minutes against a dead server): keep it short.
# Set only when unset, so a user's own MLFLOW_HTTP_REQUEST_* settings win.
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
MAX_PARAM_LENGTH = 6000  # MLflow's limit for a param value
MAX_TAG_LENGTH = 5000


def local_store(project_dir: Path) -> str:
    """The embedded store: sqlite in <project>/outputs/mlflow/ (MLflow 3 refuses a plain file store)."""
    return f"sqlite:///{(Path(project_dir) / 'outputs' / 'mlflow' / 'mlflow.db').absolute()}"


def open_backend(node: DictConfig, info: RunInfo) -> "MlflowBackend":
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise TrackerError(f"logger=mlflow needs the mlflow package ({exc})", f"install it with {INSTALL_HINT}") from None
    record = read_tracking_file(info.run_dir).get("mlflow") or {}
    # A resumed run goes on in the store it started in (the default store depends on the cwd).
    uri = record.get("tracking_uri") or node.tracking_uri or local_store(info.project_dir)
    artifact_root = _prepare_store(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        run_id, logged = _continue_run(client, record) if record.get("run_id") else (None, 0)
        if run_id is None:
            experiment_id = _experiment(client, str(node.experiment_name), artifact_root, uri)
            run_id = _start_run(client, experiment_id, info)
            write_tracking_file(info.run_dir, "mlflow", {"tracking_uri": uri, "experiment_id": experiment_id,
                                                         "run_id": run_id})
    except TrackerError:
        raise
    except Exception as exc:  # MlflowException, a database error...: one line naming the store
        raise TrackerError(f"the MLflow store logger.mlflow.tracking_uri={uri} refused the run "
                           f"({type(exc).__name__}: {one_line(str(exc))})",
                           "check the URI, the server and its permissions") from exc
    return MlflowBackend(info, client, run_id, logged)


def _prepare_store(uri: str) -> Optional[str]:
    """Check the store can be reached before anything is created; the artefact root for a new experiment
    (beside a sqlite database; a server decides its own)."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        for name, value in HTTP_SETTINGS.items():
            os.environ.setdefault(name, value)
        _probe(uri)
        return None
    if scheme == "sqlite":
        database = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
        if database is None or not database.name:
            raise TrackerError(f"logger.mlflow.tracking_uri={uri} names no database file",
                               "use sqlite:////absolute/path/mlflow.db")
        try:
            check_can_create(database.parent, "logger.mlflow.tracking_uri")
        except ConfigError as exc:
            problem = str(exc).split("; choose")[0]
            raise TrackerError(f"the MLflow store {uri} cannot be created: {problem}",
                               "fix logger.mlflow.tracking_uri") from None
        database.parent.mkdir(parents=True, exist_ok=True)
        return (database.parent / "artifacts").absolute().as_uri()
    if scheme in ("", "file"):
        raise TrackerError(f"logger.mlflow.tracking_uri={uri} is a plain file store, which MLflow 3 refuses",
                           "use null (the sqlite store in outputs/mlflow/), sqlite:////path/mlflow.db or an "
                           "http(s):// server")
    return None  # another database (postgresql://...) or a managed service: MLflow checks it


def _probe(uri: str) -> None:
    """A quick GET <uri>/health with no retries: an unreachable server is one line in seconds."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:  # noqa: S310 - the user's server
            response.read(64)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):  # an authenticating proxy: the API calls carry MLflow's credentials
            return
        raise TrackerError(f"logger.mlflow.tracking_uri={uri} answered HTTP {exc.code} to GET /health, so it is "
                           "not an MLflow tracking server", "fix the URI") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackerError(f"logger.mlflow.tracking_uri={uri} is unreachable ({reason})",
                           "start the server, fix the URI") from None


def _experiment(client, name: str, artifact_root: Optional[str], uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_root)
    if experiment.lifecycle_stage == "deleted":
        raise TrackerError(f"the MLflow experiment {name!r} in {uri} is deleted",
                           "restore it (mlflow experiments restore) or choose another logger.mlflow.experiment_name")
    return experiment.experiment_id


def _start_run(client, experiment_id: str, info: RunInfo) -> str:
    from mlflow.entities import Param

    run = client.create_run(experiment_id, run_name=info.name, tags=dict(info.tags))
    params = [Param(key, text(value)[:MAX_PARAM_LENGTH]) for key, value in info.hparams.items()]
    client.log_batch(run.info.run_id, params=params)  # once: params cannot change, not even on resume
    return run.info.run_id


def _continue_run(client, record: dict) -> tuple[Optional[str], int]:
    """(run id, last epoch it holds) of the run tracking.json names; (None, 0) when the store lost it."""
    from mlflow.exceptions import MlflowException

    run_id = record["run_id"]
    try:
        client.get_run(run_id)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise
        log.warning("the MLflow run %s of this run folder is not in %s (deleted?): a new MLflow run starts and "
                    "gets the epochs from ft_history.csv", run_id, record.get("tracking_uri"))
        return None, 0
    client.update_run(run_id, status="RUNNING")
    logged = max((m.step for m in client.get_metric_history(run_id, "epoch")), default=0)
    return run_id, logged


class MlflowBackend(Backend):
    name = "MLflow"

    def __init__(self, info: RunInfo, client, run_id: str, logged_through: int) -> None:
        super().__init__(info, logged_through)
        self.client, self.run_id = client, run_id

    def write_epochs(self, epochs: list[tuple[int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, epoch) for epoch, values in epochs
                                                    for key, value in values.items()])

    def write_run(self, metrics: dict, numbers: dict[str, float], texts: dict[str, str], files: list[Path]) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, 0) for key, value in numbers.items()],
                              tags=[RunTag(key, value[:MAX_TAG_LENGTH]) for key, value in texts.items()])
        for path in files:
            self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str, error: Optional[BaseException]) -> None:
        if status == FAILED and error is not None:
            self.client.set_tag(self.run_id, "tlrun.error", one_line(f"{type(error).__name__}: {error}", 1000))
        self.client.set_terminated(self.run_id, status)
