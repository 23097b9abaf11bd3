"""Preemption and resume: a real SIGTERM mid-run, bit-exact continuation, refusals, device settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import TINY, assert_one_line_error, history_written, read_metrics, run_dirs, run_tlrun, sigterm_after

RUN = ["model=lenet", "data.image_size=32", "data.max_per_class=60", "train.epochs=5", "seed=3", *TINY]


def start_tlrun(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "TLRUN_DEBUG")}
    return subprocess.Popen([sys.executable, "-m", "tlrun", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def interrupt_after_two_epochs(args: list[str], cwd: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """Start a run, send SIGTERM once two epochs are in its history (i.e. during epoch 3)."""
    process = start_tlrun(args, cwd)
    deadline = time.time() + 240
    history = None
    while time.time() < deadline and process.poll() is None:
        found = list(cwd.glob("outputs/*/*/ft_history.csv"))
        if found and len(found[0].read_text().splitlines()) >= 3:
            history = found[0]
            break
        time.sleep(0.05)
    assert history is not None, "the run ended or stalled before its second epoch"
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    return history.parent, subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "ft_model.pt", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("reference")
    result = run_tlrun([*RUN, f"hydra.run.dir={cwd / 'run'}"], cwd)
    assert result.returncode == 0, result.stderr
    return cwd / "run"


def test_sigterm_then_resume_auto_matches_an_uninterrupted_run(tmp_path: Path, reference: Path, monkeypatch):
    from tlrun.engine import Engine

    with monkeypatch.context() as patch:  # SIGTERM during epoch 3, in this process (tlrun's handlers)
        sigterm_after(patch, Engine, "write_history", history_written(2))
        stopped = run_tlrun(RUN, tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    check_stopped_then_resumed_bit_exactly(run_dir, stopped, tmp_path, reference)


@pytest.mark.slow  # fast coverage: the in-process SIGTERM above; real processes stay fast in test_trust
@pytest.mark.process
def test_a_real_sigterm_then_resume_auto_matches_an_uninterrupted_run(tmp_path: Path, reference: Path):
    run_dir, stopped = interrupt_after_two_epochs(RUN, tmp_path)
    check_stopped_then_resumed_bit_exactly(run_dir, stopped, tmp_path, reference)


def check_stopped_then_resumed_bit_exactly(run_dir: Path, stopped: subprocess.CompletedProcess, tmp_path: Path,
                                           reference: Path) -> None:
    assert stopped.returncode == 75, stopped.stderr
    assert "Traceback" not in stopped.stderr and "train.resume=" in stopped.stderr
    status = read_metrics(run_dir)
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM" and status["epochs_done"] >= 2
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)  # intact, loadable
    assert state["epoch"] == status["epochs_done"]
    # Without resume the folder is protected; train.resume=auto finds it by its overrides.
    resumed = run_tlrun([*RUN, "train.resume=auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir}" in resumed.stderr and run_dirs(tmp_path) == [run_dir]
    assert read_metrics(run_dir)["test_acc"] == read_metrics(reference)["test_acc"]
    columns = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    ours, theirs = pd.read_csv(run_dir / "ft_history.csv"), pd.read_csv(reference / "ft_history.csv")
    assert ours["epoch"].tolist() == [1, 2, 3, 4, 5]  # no duplicate epochs
    pd.testing.assert_frame_equal(ours[columns], theirs[columns])
    reference_weights = weights(reference)
    assert all(torch.equal(value, reference_weights[key]) for key, value in weights(run_dir).items())
    # A finished run is never resumed or overwritten.
    again = run_tlrun([*RUN, f"train.resume={run_dir}"], tmp_path)
    assert_one_line_error(again, "already finished")


def test_resume_refusals_are_one_line(tmp_path: Path, reference: Path):
    assert_one_line_error(run_tlrun([*RUN, f"train.resume={tmp_path / 'nope'}"], tmp_path), "no such run folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_tlrun([*RUN, f"train.resume={empty}"], tmp_path), "no checkpoints/last.pt")
    # A truncated checkpoint and one written by another model.
    broken = tmp_path / "broken"
    (broken / "checkpoints").mkdir(parents=True)
    data = (reference / "checkpoints" / "last.pt").read_bytes()
    (broken / "checkpoints" / "last.pt").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_tlrun([*RUN, f"train.resume={broken}"], tmp_path), "truncated")
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "last.pt").write_bytes(data)
    result = run_tlrun(["model=small_resnet", *RUN[1:], f"train.resume={other}"], tmp_path)
    assert_one_line_error(result, "another model")
    assert "metrics.json" not in {p.name for p in other.iterdir()}


def test_bf16_autocast_on_cpu_and_device_settings_in_metrics(tmp_path: Path):
    result = run_tlrun(["model=lenet", "data.image_size=16", "data.max_per_class=10", "train.epochs=1",
                        "device.amp=bf16", "device.deterministic=true", *TINY], tmp_path)
    assert result.returncode == 0, result.stderr
    settings = read_metrics(run_dirs(tmp_path)[0])["device_settings"]
    assert settings["type"] == "cpu" and settings["amp"] == "bf16" and settings["deterministic"] is True
    assert settings["threads"] == 1 and settings["pin_memory"] is False


def test_fp16_on_cpu_is_refused(tmp_path: Path):
    result = run_tlrun(["model=lenet", "device.amp=fp16", *TINY], tmp_path)
    assert_one_line_error(result, "device.amp=fp16 needs a GPU")
    assert run_dirs(tmp_path) == []
