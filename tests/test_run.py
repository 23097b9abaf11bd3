"""End-to-end runs of the real command on tiny data: the run folder is complete and correct."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import PLOTS, TINY, read_metrics, run_dirs, run_tlrun

RUN_FILES = ["ft_history.csv", "metrics.json", "checkpoints/best.pt", "checkpoints/last.pt", "ft_model.pt",
             "curves.png", "confusion_matrix.png", "classification_report.txt", "split.csv",
             ".hydra/config.yaml", ".hydra/overrides.yaml"]
HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s"]
METRIC_KEYS = ["pipeline", "best_epoch", "best_val_acc", "last_val_acc", "test_acc", "params_total",
               "params_trainable", "wall_time_s", "device"]


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("lenet")
    result = run_tlrun(["model=lenet", "data=digits", "data.image_size=16", "train.epochs=2", "train.lr=0.01", *TINY, *PLOTS], cwd)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(cwd)
    return run_dir


def test_run_folder_is_complete(lenet_run: Path):
    for name in RUN_FILES:
        assert (lenet_run / name).is_file(), name


def test_history_and_metrics(lenet_run: Path):
    history = pd.read_csv(lenet_run / "ft_history.csv")
    assert list(history.columns[:len(HISTORY_COLUMNS)]) == HISTORY_COLUMNS
    assert history["epoch"].tolist() == [1, 2]
    metrics = read_metrics(lenet_run)
    for key in METRIC_KEYS:
        assert key in metrics, key
    assert metrics["pipeline"] == "finetune"
    assert metrics["best_val_acc"] == pytest.approx(history["val_acc"].max())
    assert metrics["last_val_acc"] == pytest.approx(history["val_acc"].iloc[-1])
    # A from-scratch LeNet learns 8x8 digits well past chance (10%) in two epochs.
    assert metrics["test_acc"] > 0.6
    assert metrics["params_trainable"] == metrics["params_total"]


def test_split_is_saved_and_disjoint(lenet_run: Path):
    split = pd.read_csv(lenet_run / "split.csv")
    assert set(split["split"]) == {"train", "val", "test"}
    assert not split["sample"].duplicated().any()
    assert len(split) == 1797
    metrics = read_metrics(lenet_run)
    assert (split["split"] == "test").sum() == metrics["test_size"]


def test_model_file_reloads_and_reproduces_test_accuracy(lenet_run: Path):
    from tlrun.artifacts import load_run_model

    loaded = load_run_model(lenet_run)
    assert loaded.classes == [str(i) for i in range(10)]
    best = torch.load(lenet_run / "checkpoints/best.pt", weights_only=False)
    for key, value in best["model"].items():
        assert torch.equal(value, loaded.model.state_dict()[key])


def test_never_overwrites_a_finished_run(tmp_path: Path, lenet_run: Path):
    before = {p: p.read_bytes() for p in lenet_run.rglob("*") if p.is_file()}
    result = run_tlrun(["model=lenet", "train.epochs=1", f"hydra.run.dir={lenet_run}", *TINY], tmp_path)
    assert result.returncode != 0
    assert "already holds results" in result.stderr
    after = {p: p.read_bytes() for p in lenet_run.rglob("*") if p.is_file()}
    assert after == before  # not even Hydra's .hydra/ record is rewritten


def test_resnet18_linear_probe_trains_5130_parameters(tmp_path: Path):
    result = run_tlrun(["model=resnet18", "model.weights=null", "freeze=all", "data=digits", "train.epochs=1",
                        "data.max_per_class=8", "data.image_size=32", *TINY], tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = read_metrics(run_dirs(tmp_path)[0])
    assert metrics["params_trainable"] == 5130
    assert metrics["params_total"] == 11_181_642


@pytest.mark.parametrize("freeze", ["all", "partial"])
def test_image_folder_with_pretrained_mobilenet(tmp_path: Path, image_folder: Path, freeze: str):
    result = run_tlrun(["model=mobilenet_v2", f"freeze={freeze}", "data=imagefolder", f"data.root={image_folder}",
                        "data.image_size=64", "train.epochs=2", *TINY], tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = run_dirs(tmp_path)[0]
    metrics = read_metrics(run_dir)
    assert metrics["weights_source"].startswith("package")
    assert metrics["num_classes"] == 3 and metrics["freeze"] == freeze
    assert metrics["params_trainable"] < metrics["params_total"]
    report = (run_dir / "classification_report.txt").read_text()
    assert "circle" in report and "cross" in report


def test_cfg_job_prints_composed_config(tmp_path: Path):
    result = run_tlrun(["--cfg", "job", "model=resnet18", "freeze=partial"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name: resnet18" in result.stdout and "strategy: partial" in result.stdout
    assert not (tmp_path / "outputs").exists()


def test_experiment_file_overrides_groups(tmp_path: Path):
    result = run_tlrun(["--cfg", "job", "experiment=fashion_partial", "train.epochs=2"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name: fashion_mnist" in result.stdout and "strategy: partial" in result.stdout
    assert "epochs: 2" in result.stdout  # the command line wins over the experiment


def test_tab_completion_lists_group_options(tmp_path: Path):
    result = run_tlrun(["-sc", "query=bash"], tmp_path, env={"COMP_LINE": "tlrun freeze=pa"})
    assert result.returncode == 0, result.stderr
    assert "freeze=partial" in result.stdout.split()
    result = run_tlrun(["-sc", "query=bash"], tmp_path, env={"COMP_LINE": "tlrun model=efficientnet_l"})
    assert "model=efficientnet_lite0" in result.stdout.split()


def test_cli_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, tlrun.cli, tlrun.config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_checkpoints_hold_full_training_state(lenet_run: Path):
    last = torch.load(lenet_run / "checkpoints/last.pt", weights_only=False)
    for key in ("model", "optimizer", "scheduler", "epoch", "rng", "best", "history"):
        assert key in last, key
    assert last["epoch"] == 2 and len(last["history"]) == 2
    assert last["optimizer"]["state"], "optimizer state (momentum/Adam moments) is saved"
    assert not list((lenet_run / "checkpoints").glob("*.tmp*")), "no temp files left behind"


def test_early_stopping_and_batch_mixing(tmp_path: Path):
    # A vanishing learning rate cannot improve val_acc: patience 1 stops after epoch 2.
    # MixUp/CutMix turn labels into probabilities; the engine must still train and score.
    result = run_tlrun(["model=lenet", "data.image_size=16", "data.max_per_class=20", "train.epochs=6",
                        "train.lr=1e-12", "train.early_stopping.patience=1", "data.augment.mixup_alpha=0.4",
                        "data.augment.cutmix_alpha=1.0", "data.augment.hflip=true", *TINY], tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = read_metrics(run_dirs(tmp_path)[0])
    assert metrics["epochs_run"] == 2 and metrics["stopped_early"] is True
    assert metrics["best_epoch"] == 1


def test_efficientnet_lite0_on_an_image_folder(tmp_path: Path, image_folder: Path):
    result = run_tlrun(["model=efficientnet_lite0", "freeze=partial", "data=imagefolder", f"data.root={image_folder}",
                        "data.image_size=64", "train.epochs=1", *TINY], tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = read_metrics(run_dirs(tmp_path)[0])
    assert metrics["weights_source"].startswith("package efficientnet-lite0")
    assert 0 < metrics["params_trainable"] < metrics["params_total"]
