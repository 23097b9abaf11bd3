"""Experiment tracking (logger=tensorboard, logger=mlflow), read back with each tracker's own reader:
TensorBoard's event reader, and MLflow's client against a real ``mlflow server`` and the embedded store.

The runs are tiny (lenet on 50 digits, 16 px). One module-scoped MLflow server serves one test (the
sweep and the SIGTERM-then-resume run), so pytest-xdist never starts two."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import PLOTS, TINY, assert_one_line_error, history_written, read_metrics, run_dirs, run_tlrun, sigterm_after
from test_trust import sigterm_when, start

RUN = ["model=lenet", "data=digits", "data.image_size=16", "data.max_per_class=5", "train.epochs=2", *TINY, *PLOTS]  # the plots are uploaded
UPLOADED = {"ft_history.csv", "metrics.json", "classification_report.txt", "curves.png", "confusion_matrix.png"}


def history(run: Path) -> list[dict]:
    with (run / "ft_history.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def only_run(mlflow, experiment: str):
    found = mlflow.search_runs([mlflow.get_experiment_by_name(experiment).experiment_id])
    assert len(found) == 1, [r.info.run_name for r in found]
    return found[0]


def assert_epochs_logged(mlflow, run_id: str, run: Path) -> None:
    """Every ft_history.csv column: exactly one value per epoch, equal to the CSV's."""
    rows = history(run)
    for column in rows[0]:
        logged = sorted((m.step, m.value) for m in mlflow.get_metric_history(run_id, column))
        assert logged == [(int(row["epoch"]), pytest.approx(float(row[column]))) for row in rows], column


def event_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar event of every event file in ``folder``, as written (no reader-side de-duplication)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    scalars.setdefault(value.tag, []).append((event.step, float(tensor_util.make_ndarray(value.tensor))))
    return scalars


def test_tensorboard_logs_every_history_column_and_the_hparams(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    run = tmp_path / "run"
    result = run_tlrun([*RUN, "logger=tensorboard", f"hydra.run.dir={run}"], tmp_path)
    assert result.returncode == 0, result.stderr
    folder = run / "tensorboard"
    assert [p for p in folder.iterdir() if p.is_dir()] == []  # one TensorBoard run: no timestamp sub-folder
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    rows = history(run)
    for column in rows[0]:
        assert [(s.step, s.value) for s in events.Scalars(column)] == \
            [(int(row["epoch"]), pytest.approx(float(row[column]))) for row in rows], column
    assert events.Scalars("test_acc")[0].value == pytest.approx(read_metrics(run)["test_acc"])
    assert {"plots/curves", "plots/confusion_matrix"} <= set(events.Tags()["images"])
    plugin = events.PluginTagToContent("hparams")
    assert metadata.EXPERIMENT_TAG not in plugin  # each job only its session: TensorBoard merges a sweep's
    hparams = metadata.parse_session_start_info_plugin_data(plugin[metadata.SESSION_START_INFO_TAG]).hparams
    assert hparams["train.lr"].number_value == pytest.approx(0.003)
    assert hparams["freeze.strategy"].string_value == "none" and hparams["model.name"].string_value == "lenet"
    assert hparams["device.channels_last"].bool_value is True
    assert hparams["data.split"].string_value == "[0.7, 0.15, 0.15]"
    end = metadata.parse_session_end_info_plugin_data(plugin[metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS
    assert not (run / "tracking.json").exists()  # only MLflow has a run to continue


@pytest.fixture(scope="module")
def local_store_run(tmp_path_factory) -> Path:
    """A run with the default store (no tracking_uri, no server) and logger.log_model=true; its cwd."""
    cwd = tmp_path_factory.mktemp("local_store")
    result = run_tlrun([*RUN, "logger=mlflow", "logger.log_model=true"], cwd)
    assert result.returncode == 0, result.stderr
    return cwd


def test_mlflow_default_store_is_in_outputs_and_log_model_uploads_the_model(local_store_run: Path):
    (run,) = run_dirs(local_store_run)
    store = local_store_run / "outputs" / "mlflow"
    mlflow = client(f"sqlite:///{store / 'mlflow.db'}")
    logged = only_run(mlflow, "tlrun")
    assert logged.info.run_id == json.loads((run / "tracking.json").read_text())["mlflow"]["run_id"]
    assert logged.info.run_name == run.name and logged.info.status == "FINISHED"
    assert logged.data.params["train.epochs"] == "2" and logged.data.params["freeze.strategy"] == "none"
    assert logged.data.params["model.weights"] == "null"
    assert logged.data.metrics["test_acc"] == pytest.approx(read_metrics(run)["test_acc"])
    assert logged.data.tags["model"] == "lenet" and logged.data.tags["tlrun.run_dir"] == str(run)
    assert_epochs_logged(mlflow, logged.info.run_id, run)
    assert {a.path for a in mlflow.list_artifacts(logged.info.run_id)} == UPLOADED | {"ft_model.pt"}
    (uploaded,) = (store / "artifacts").glob("*/artifacts/ft_model.pt")  # beside the database
    assert uploaded.read_bytes() == (run / "ft_model.pt").read_bytes()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, request) -> str:
    """A real ``mlflow server`` (sqlite backend, proxied artefacts) on a free localhost port. It takes ~10 s to
    boot (half of it creating its tables): the local-store run goes meanwhile."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port, log = free_port(), (root / "server.log").open("w")
    # No job runner (huey consumers): tlrun needs tracking only, and they cost seconds and processes.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "artifacts"),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        request.getfixturevalue("local_store_run")
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}"
            assert time.time() < deadline, "mlflow server did not answer /health in 120 s"
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker: the group we started
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def in_background(call) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test after join
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def sweep_and_interrupted_then_resumed_run(tmp_path: Path, uri: str, interrupted) -> None:
    """A sweep of two jobs, and a run of 20 epochs stopped by SIGTERM after 2 (exit 75) then resumed, both
    tracked at ``uri``. ``interrupted(args, run)`` starts that run and returns what waits for its end."""
    mlflow = client(uri)
    server = [f"logger.mlflow.tracking_uri={uri}"]
    run = tmp_path / "run"
    args = [*RUN, "train.epochs=20", "logger=[tensorboard,mlflow]", *server, "logger.mlflow.experiment_name=resume",
            f"hydra.run.dir={run}"]
    stopped_run = interrupted(args, run)

    sweep = tmp_path / "sweep"
    result = run_tlrun(["-m", *RUN, "seed=0,1", "logger=mlflow", *server, "logger.mlflow.experiment_name=sweep",
                        f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr
    experiment = mlflow.get_experiment_by_name("sweep").experiment_id
    jobs = {r.info.run_name: r for r in mlflow.search_runs([experiment])}
    assert sorted(jobs) == ["sweep/0", "sweep/1"]  # one MLflow run per job, named <sweep folder>/<job>
    for job in ("0", "1"):
        logged = jobs[f"sweep/{job}"]
        assert logged.info.status == "FINISHED"
        assert logged.data.tags["tlrun.sweep_dir"] == str(sweep) and logged.data.tags["tlrun.job_num"] == job
        assert f"seed={job}" in logged.data.tags["tlrun.overrides"].split(",")
        assert logged.data.params["seed"] == job and logged.data.params["train.lr"] == "0.003"
        assert_epochs_logged(mlflow, logged.info.run_id, sweep / job)
        assert {a.path for a in mlflow.list_artifacts(logged.info.run_id)} == UPLOADED  # no model by default

    stopped = stopped_run()
    assert stopped.returncode == 75, stopped.stderr
    run_id = json.loads((run / "tracking.json").read_text())["mlflow"]["run_id"]
    assert mlflow.get_run(run_id).info.status == "KILLED"
    assert 2 <= len(history(run)) < 20
    # The resume continues the same MLflow run and logs only the epochs it does not hold yet.
    resumed = run_tlrun([*args, f"train.resume={run}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    logged = only_run(mlflow, "resume")
    assert logged.info.run_id == run_id and logged.info.status == "FINISHED"
    assert len(history(run)) == 20
    assert_epochs_logged(mlflow, run_id, run)  # one value per epoch: nothing logged twice across the resume
    assert {a.path for a in mlflow.list_artifacts(run_id)} == UPLOADED
    scalars = event_scalars(run / "tensorboard")  # both sessions' event files, read raw
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) >= 2
    for column in history(run)[0]:
        assert [step for step, _ in scalars[column]] == list(range(1, 21)), column


def test_mlflow_sweep_and_interrupted_then_resumed_run(tmp_path: Path, monkeypatch):
    """In-process, on a SQLite store (the tracking protocol is MLflow's; the server: the slow test below)."""
    from tlrun.engine import Engine

    def interrupted(args: list[str], run: Path):
        with monkeypatch.context() as patch:
            sigterm_after(patch, Engine, "write_history", history_written(2))
            result = run_tlrun(args, tmp_path)
        return lambda: result

    sweep_and_interrupted_then_resumed_run(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", interrupted)


@pytest.mark.slow  # fast coverage: the SQLite-store version above; unreachable servers below
@pytest.mark.process
def test_mlflow_server_sweep_and_interrupted_then_resumed_run(tmp_path: Path, mlflow_server: str):
    def interrupted(args: list[str], run: Path):
        # Its own process, started first; a thread interrupts it while the in-process sweep runs (they overlap).
        process = start(args, tmp_path)
        stopper, stopping = in_background(lambda: sigterm_when(
            process, lambda: (run / "ft_history.csv").is_file() and len(history(run)) >= 2))

        def stopped() -> subprocess.CompletedProcess:
            stopper.join(timeout=300)
            if "error" in stopping:
                raise stopping["error"]
            return stopping["result"]
        return stopped

    sweep_and_interrupted_then_resumed_run(tmp_path, mlflow_server, interrupted)


def test_unreachable_server_is_one_line_before_training(tmp_path: Path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run_tlrun([*RUN, "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={uri}"], tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, f"logger.mlflow.tracking_uri={uri} is unreachable", "start the server",
                          "logger.fail_on_error=false")
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())
    assert "Epoch" not in result.stdout + result.stderr and "tlrun finetune pipeline" not in result.stdout


def test_unreachable_server_with_fail_on_error_false_warns_and_the_run_finishes(tmp_path: Path):
    uri = f"http://127.0.0.1:{free_port()}"
    result = run_tlrun([*RUN, "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={uri}",
                        "logger.fail_on_error=false"], tmp_path)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert [line for line in output.splitlines() if "is unreachable" in line] == \
        [line for line in output.splitlines() if "WARNING" in line and "tracking" in line]
    assert len([line for line in output.splitlines() if "is unreachable" in line]) == 1
    (run,) = run_dirs(tmp_path)
    assert "status" not in read_metrics(run) and (run / "ft_model.pt").is_file()  # the run finished
    assert any((run / "tensorboard").glob("events.out.tfevents.*"))  # the other tracker still logs
    assert not (run / "tracking.json").exists()


def test_a_tracker_failing_mid_run_is_dropped_with_one_warning(tmp_path: Path, monkeypatch, local_store_run: Path):
    from tlrun.tracking.mlflow import MlflowBackend

    uri = seed_store(tmp_path, local_store_run)

    def server_died(self, epochs):
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(MlflowBackend, "write_epochs", server_died)
    result = run_tlrun([*RUN, "logger=[tensorboard,mlflow]", "logger.mlflow.experiment_name=midrun"], tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "stopped logging" in line]
    assert len(warnings) == 1 and "MLflow" in warnings[0] and "ConnectionError" in warnings[0], warnings
    (run,) = run_dirs(tmp_path)
    assert read_metrics(run)["epochs_run"] == 2 and (run / "ft_model.pt").is_file()
    run_id = json.loads((run / "tracking.json").read_text())["mlflow"]["run_id"]
    assert client(uri).get_run(run_id).info.status == "RUNNING"  # no status update reached the dead server
    assert any((run / "tensorboard").glob("events.out.tfevents.*"))


def seed_store(cwd: Path, local_store_run: Path) -> str:
    """An existing project store in ``cwd`` (creating MLflow's tables costs seconds; local_store_run did). Its
    experiment tlrun keeps local_store_run's artefact folder: the tests that use it name their own."""
    (cwd / "outputs" / "mlflow").mkdir(parents=True)
    shutil.copy(local_store_run / "outputs" / "mlflow" / "mlflow.db", cwd / "outputs" / "mlflow")
    return f"sqlite:///{cwd / 'outputs' / 'mlflow' / 'mlflow.db'}"


def test_a_failed_run_is_failed_in_mlflow_and_leaves_no_run_folder(tmp_path: Path, local_store_run: Path):
    uri = seed_store(tmp_path, local_store_run)
    (tmp_path / "empty").mkdir()
    result = run_tlrun([*RUN, "data=imagefolder", f"data.root={tmp_path / 'empty'}", "logger=mlflow",
                        "logger.mlflow.experiment_name=failed"], tmp_path)
    assert_one_line_error(result, "has no class sub-folders")
    assert run_dirs(tmp_path) == [] and [p.name for p in (tmp_path / "outputs").iterdir()] == ["mlflow"]
    logged = only_run(client(uri), "failed")
    assert logged.info.status == "FAILED" and "has no class sub-folders" in logged.data.tags["tlrun.error"]


@pytest.mark.parametrize("logger, module", [("mlflow", "mlflow.tracking"), ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_tracker_package_names_the_extra(tmp_path: Path, monkeypatch, logger: str, module: str):
    monkeypatch.setitem(sys.modules, module, None)  # what `import` sees when the package is not installed
    result = run_tlrun([*RUN, f"logger={logger}"], tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, f"logger={logger} needs the", "pip install 'tlrun[tracking]'")
    assert run_dirs(tmp_path) == []


def test_tracker_keys_need_their_logger_option(tmp_path: Path):
    result = run_tlrun([*RUN, "logger.mlflow.tracking_uri=http://127.0.0.1:5000"], tmp_path)
    assert_one_line_error(result, "logger.mlflow.tracking_uri", "add logger=mlflow")
    result = run_tlrun([*RUN, "logger=mlflow", "logger.mlflow.tracking_url=http://127.0.0.1:5000"], tmp_path)
    assert_one_line_error(result, "unknown key 'logger.mlflow.tracking_url'", "tracking_uri")
    assert not (tmp_path / "outputs").exists()


def test_logger_none_and_the_cli_import_no_tracker_library(tmp_path: Path):
    code = ("import sys; from pathlib import Path; from tlrun.cli import compose_config; "
            "from tlrun.config import register_configs; from tlrun.tracking import Tracker, open_tracker; "
            "register_configs(); tracker = open_tracker(compose_config([]), Path('.')); "
            "print(type(tracker) is Tracker, sorted(m for m in ('torch', 'mlflow', 'tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "[]"]
