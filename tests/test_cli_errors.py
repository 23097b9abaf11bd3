"""Bad input: one clear line, non-zero exit, no traceback, no run folder left behind."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conftest import (TINY, assert_one_line_error, make_image_folder, read_metrics, run_dirs, run_tlrun,
                      run_tlrun_process)


@pytest.mark.parametrize("args, needles", [
    (["train.epoch=3"], ["unknown key 'train.epoch'", "did you mean 'train.epochs'"]),
    (["+train.epoch=3"], ["unknown key 'train.epoch'", "train.epochs"]),
    (["model=resnet19"], ["unknown option model=resnet19", "resnet18"]),
    (["freeze=parital"], ["unknown option freeze=parital", "partial"]),
    (["train.optimizer=adamm"], ["train.optimizer", "sgd, adam, adamw"]),
    (["train.lr=fast"], ["train.lr", "must be a number"]),
    (["train.epochs=0"], ["train.epochs", ">= 1"]),
    (["data.split=[0.5,0.2]"], ["data.split", "sum to 1"]),
    (["-m", "freeze=all,nonsense"], ["unknown option freeze=nonsense"]),
])
def test_bad_overrides_fail_before_any_work(tmp_path: Path, args, needles):
    result = run_tlrun(args, tmp_path)
    assert_one_line_error(result, *needles)
    assert result.returncode == 2
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_missing_data_root(tmp_path: Path):
    result = run_tlrun(["data=imagefolder", *TINY], tmp_path)
    assert_one_line_error(result, "data.root")
    assert run_dirs(tmp_path) == []


def test_nonexistent_data_root(tmp_path: Path):
    result = run_tlrun(["data=imagefolder", f"data.root={tmp_path / 'nope'}", *TINY], tmp_path)
    assert_one_line_error(result, "does not exist")
    assert run_dirs(tmp_path) == []


def test_empty_class_folder(tmp_path: Path):
    root = make_image_folder(tmp_path / "imgs", per_class=3)
    (root / "empty_class").mkdir()
    result = run_tlrun(["data=imagefolder", f"data.root={root}", *TINY], tmp_path)
    assert_one_line_error(result, "empty_class", "has no images")
    assert run_dirs(tmp_path) == []


def test_corrupt_image_is_named(tmp_path: Path):
    root = make_image_folder(tmp_path / "imgs", per_class=3)
    bad = root / "circle" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    result = run_tlrun(["data=imagefolder", f"data.root={root}", *TINY], tmp_path)
    assert_one_line_error(result, "broken.png", "data.bad_images=skip")
    assert run_dirs(tmp_path) == []


def test_offline_weights_give_one_line(tmp_path: Path):
    # An empty hub cache and no network route: the download must fail with a clear message.
    env = {"TORCH_HOME": str(tmp_path / "torch_home"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9"}
    result = run_tlrun(["model=efficientnet_b0", "train.epochs=1", *TINY], tmp_path, env=env)
    assert_one_line_error(result, "efficientnet_b0", "model.weights=null", "model.weights_path=")
    assert result.returncode == 2
    assert run_dirs(tmp_path) == []


def test_device_cuda_without_gpu(tmp_path: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run_tlrun(["device=cuda", "train.progress=none"], tmp_path)
    assert_one_line_error(result, "device=cuda")


def test_real_entry_point_exit_codes_and_debug_traceback(tmp_path: Path):
    # A fresh interpreter: the console entry point's exit code, its one line, and the full trace on request.
    result = run_tlrun_process(["train.epoch=3"], tmp_path)
    assert_one_line_error(result, "unknown key 'train.epoch'")
    assert result.returncode == 2 and not (tmp_path / "outputs").exists()
    result = run_tlrun_process(["train.epoch=3"], tmp_path, env={"TLRUN_DEBUG": "1"})
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_sweep_goes_on_after_a_failed_job_and_exits_non_zero(tmp_path: Path):
    result = run_tlrun(["-m", "model=lenet", "data.image_size=16", "data.max_per_class=5", "train.epochs=1",
                        "data=imagefolder,digits", *TINY], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("tlrun: error:")]
    assert len(errors) == 2 and "data.root" in errors[0] and "1 of 2 sweep jobs failed" in errors[1]
    (sweep,) = (tmp_path / "multirun").glob("*/*")
    assert (sweep / "0" / "failed.json").is_file()
    assert (sweep / "1" / "metrics.json").is_file()  # the good job still ran
    summary = pd.read_csv(sweep / "sweep_summary.csv")
    assert summary["status"].tolist() == ["failed", "ok"] and summary["data"].tolist() == ["imagefolder", "digits"]
    assert "data.root" in summary.loc[0, "error"]
    assert summary.loc[1, "test_acc"] == read_metrics(sweep / "1")["test_acc"]  # the job's own figure


def test_download_dataset_offline_gives_one_line(tmp_path: Path):
    env = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    result = run_tlrun(["data=cifar10", f"data.cache_dir={tmp_path / 'cache'}", "model=lenet", *TINY], tmp_path, env=env)
    assert_one_line_error(result, "could not download cifar10", "data=digits")
    assert run_dirs(tmp_path) == []


@pytest.mark.parametrize("args", [["adaptation=dann", "distill=kd", "data.target=digits_m"],
                                  ["distill=kd", "data.target=digits_m"]])
def test_adaptation_and_distillation_do_not_mix(tmp_path: Path, args):
    result = run_tlrun([*args, *TINY], tmp_path)
    assert_one_line_error(result, "cannot be combined")
    assert run_dirs(tmp_path) == []


def test_worker_wrapped_errors_become_one_line():
    from tlrun.runner import one_line

    wrapped = ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\ntlrun.errors.DataError: cannot decode image /a/b.png (OSError); fix it')
    assert one_line(wrapped) == "cannot decode image /a/b.png (OSError); fix it"
    assert one_line("plain message") == "plain message"
