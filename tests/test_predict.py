"""tlrun-predict: a run's own split reproduces its test_acc, TTA/ensemble columns, errors in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY, read_metrics, run_tlrun

BASE_COLUMNS = ["path", "predicted_class", "probability", "top_k"]
LABEL_COLUMNS = ["true_class", "correct"]
TTA_COLUMNS = ["predicted_class_no_tta", "probability_no_tta"]


def _train(cwd: Path, name: str, lr: float) -> Path:
    # Same seed = same split: both runs have the same test split and can be compared on it.
    run_dir = cwd / name
    result = run_tlrun(["model=lenet", "data=digits", "data.image_size=16", "train.epochs=1", f"train.lr={lr}",
                        f"hydra.run.dir={run_dir}", *TINY], cwd)
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    cwd = tmp_path_factory.mktemp("predict")
    return _train(cwd, "run_a", 0.01), _train(cwd, "run_b", 0.003)


def predict_main(args: list[str], capsys) -> tuple[int, str, str]:
    from tlrun.predict_cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--threads", "1"])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_own_test_split_reproduces_test_acc(runs, tmp_path, capsys):
    run_a, _ = runs
    code, out, err = predict_main([str(run_a), "split:test", "--out", str(tmp_path / "p")], capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert list(table.columns) == BASE_COLUMNS + LABEL_COLUMNS
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["accuracy"] == read_metrics(run_a)["test_acc"]  # exactly: same split, same preprocessing
    split = pd.read_csv(run_a / "split.csv", dtype={"sample": str})
    assert table["path"].astype(str).tolist() == split.loc[split.split == "test", "sample"].tolist()
    assert table["correct"].mean() == summary["accuracy"]
    top = table["top_k"].iloc[0].split(";")
    assert len(top) == 5 and top[0].split(":")[0] == str(table["predicted_class"].iloc[0])
    for name in ("predictions.png", "confusion_matrix.png"):
        assert (tmp_path / "p" / name).stat().st_size > 1000


def test_ensemble_with_tta_reports_members_side_by_side(runs, tmp_path, capsys):
    run_a, run_b = runs
    out_dir = tmp_path / "ens"
    code, out, err = predict_main([str(run_a), str(run_b / "ft_model.pt"), "split:test", "--tta", "flip",
                                   "--weights", "1", "3", "--top-k", "2", "--out", str(out_dir)], capsys)
    assert code == 0, err
    table = pd.read_csv(out_dir / "predictions.csv")
    assert list(table.columns) == BASE_COLUMNS + LABEL_COLUMNS + TTA_COLUMNS + [
        "m1_predicted_class", "m1_probability", "m2_predicted_class", "m2_probability"]
    assert all(len(cell.split(";")) == 2 for cell in table["top_k"])
    summary = pd.DataFrame(json.loads((out_dir / "summary.json").read_text())["members"])
    assert summary["member"].tolist() == ["m1", "m2", "ensemble"]
    assert summary["weight"].tolist() == [1, 3, 4]
    # Without TTA each member reproduces its own run's test accuracy; the TTA gain is reported.
    assert summary["acc"].iloc[0] == read_metrics(run_a)["test_acc"]
    assert summary["acc"].iloc[1] == read_metrics(run_b)["test_acc"]
    assert np.allclose(summary["tta_gain"], summary["acc_tta_flip"] - summary["acc"])
    assert "| ensemble |" in out


def test_class_mismatch_is_one_line(runs, tmp_path, capsys):
    run_a, _ = runs
    saved = torch.load(run_a / "ft_model.pt", weights_only=False)
    saved["classes"] = [f"c{i}" for i in range(10)]
    torch.save(saved, tmp_path / "other.pt")
    code, out, err = predict_main([str(run_a), str(tmp_path / "other.pt"), "split:test",
                                   "--out", str(tmp_path / "x")], capsys)
    assert code == 2
    assert err.count("tlrun-predict: error:") == 1 and "classes differ" in err
    assert not (tmp_path / "x").exists()


def _digit_pngs(folder: Path, per_class: dict[str, int]) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for name, count in per_class.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        picks = np.flatnonzero(digits.target == int(name))[:count]
        for i in picks:
            Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(folder / name / f"{i}.png")


def test_labelled_folder_and_single_file(runs, tmp_path, capsys):
    run_a, _ = runs
    _digit_pngs(tmp_path / "imgs", {"3": 4, "7": 5})
    code, out, err = predict_main([str(run_a), str(tmp_path / "imgs"), "--tta", "flip+crops",
                                   "--out", str(tmp_path / "f")], capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "f" / "predictions.csv", dtype={"true_class": str})
    assert list(table.columns) == BASE_COLUMNS + LABEL_COLUMNS + TTA_COLUMNS
    assert sorted(table["true_class"].tolist()) == ["3"] * 4 + ["7"] * 5
    assert (tmp_path / "f" / "confusion_matrix.png").is_file()
    one = next((tmp_path / "imgs" / "3").iterdir())
    code, out, err = predict_main([str(run_a), str(one), "--out", str(tmp_path / "one")], capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "one" / "predictions.csv")
    assert list(table.columns) == BASE_COLUMNS and len(table) == 1
    assert 0 < table["probability"].iloc[0] <= 1
    # The output folder is never overwritten.
    code, out, err = predict_main([str(run_a), str(one), "--out", str(tmp_path / "one")], capsys)
    assert code == 2 and "never overwrites" in err


@pytest.mark.parametrize("case", ["missing_run", "empty_folder", "unknown_class_folder", "bad_split"])
def test_bad_inputs_are_one_line(runs, tmp_path, case, capsys):
    run_a, _ = runs
    args = {"missing_run": [str(tmp_path / "nope"), str(tmp_path)],
            "empty_folder": [str(run_a), str(tmp_path / "empty")],
            "unknown_class_folder": [str(run_a), str(tmp_path / "mixed")],
            "bad_split": [str(run_a), "split:holdout"]}[case]
    (tmp_path / "empty").mkdir()
    _digit_pngs(tmp_path / "mixed", {"3": 1})
    (tmp_path / "mixed" / "cats").mkdir()
    code, out, err = predict_main([*args, "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tlrun-predict: error:"), err
    needle = {"missing_run": "no ft_model.pt", "empty_folder": "no images", "unknown_class_folder": "cats",
              "bad_split": "split:test"}[case]
    assert needle in lines[0]


@pytest.mark.process
def test_console_script_error_has_no_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "TLRUN_DEBUG")}
    result = subprocess.run([sys.executable, "-m", "tlrun.predict_cli", str(tmp_path / "missing"), str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("tlrun-predict: error:") and "Traceback" not in result.stderr
