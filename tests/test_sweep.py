"""Sweep summaries built from job folders: rows, swept keys, failed jobs, heatmap, tlrun-report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tlrun.sweep import collect, write_report


def make_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None = None,
             failure: str | None = None) -> Path:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if failure is not None:
        (job / "failed.json").write_text(json.dumps({"job": num, "error": failure}))
    return job


@pytest.fixture
def kd_sweep(tmp_path: Path) -> Path:
    """A 4×4 T×α grid (jobs numbered as Hydra does, 0..15); job 5 failed, job 15 is still running."""
    sweep = tmp_path / "sweep"
    num = 0
    for temperature in (1, 3, 5, 10):
        for alpha in (0.3, 0.5, 0.7, 0.9):
            overrides = ["distill=kd", f"distill.temperature={temperature}", f"distill.alpha={alpha}"]
            if num == 5:
                make_job(sweep, num, overrides, failure="teacher classes differ")
            elif num == 15:
                make_job(sweep, num, overrides)
            else:
                make_job(sweep, num, overrides, {"test_acc": temperature / 10 + alpha / 100, "wall_time_s": 1.5,
                                                 "teacher_test_acc": 0.99, "student_test_acc": 0.5})
            num += 1
    return sweep


def test_summary_has_one_row_per_job_with_swept_values_and_status(kd_sweep: Path):
    frame, swept = collect(kd_sweep, final=True)
    assert swept == ["distill.temperature", "distill.alpha"]  # distill=kd is the same everywhere
    assert len(frame) == 16 and frame["job"].tolist() == [str(i) for i in range(16)]
    assert list(frame.columns[:4]) == ["job", "distill.temperature", "distill.alpha", "status"]
    assert frame.loc[5, "status"] == "failed" and frame.loc[5, "error"] == "teacher classes differ"
    assert frame.loc[15, "status"] == "incomplete"
    assert frame.loc[6, "test_acc"] == pytest.approx(0.3 + 0.007)
    assert collect(kd_sweep, final=False)[0].loc[15, "status"] == "running"


def test_write_report_writes_csv_and_heatmap(kd_sweep: Path):
    report = write_report(kd_sweep)
    assert report.jobs == 16 and report.failed == 1
    written = pd.read_csv(kd_sweep / "sweep_summary.csv")
    assert len(written) == 16 and written["status"].value_counts().to_dict() == {"ok": 14, "failed": 1,
                                                                                 "incomplete": 1}
    assert report.heatmap == kd_sweep / "sweep_heatmap.png" and report.heatmap.stat().st_size > 5000


def test_seeds_are_averaged_not_plotted(tmp_path: Path):
    sweep = tmp_path / "sweep"
    for num, (lr, seed, acc) in enumerate([(0.1, 0, 0.5), (0.1, 1, 0.7), (0.01, 0, 0.9), (0.01, 1, 0.8)]):
        make_job(sweep, num, [f"train.lr={lr}", f"seed={seed}"], {"test_acc": acc})
    report = write_report(sweep)
    assert report.swept == ["train.lr", "seed"] and report.heatmap is not None


def run_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tlrun.sweep", *args], capture_output=True, text=True, timeout=120)


def test_tlrun_report_rebuilds_a_past_sweep(kd_sweep: Path):
    result = run_report(str(kd_sweep), "--metric", "student_test_acc")
    assert result.returncode == 1  # one job failed: a script can tell
    assert "16 jobs (1 failed)" in result.stdout and "Traceback" not in result.stderr
    assert (kd_sweep / "sweep_summary.csv").is_file() and (kd_sweep / "sweep_heatmap.png").is_file()


@pytest.mark.parametrize("case", ["missing", "empty", "metric"])
def test_tlrun_report_bad_input_is_one_line(kd_sweep: Path, tmp_path: Path, case: str):
    args = {"missing": [str(tmp_path / "nope")], "empty": [str(tmp_path)],
            "metric": [str(kd_sweep), "--metric", "target_acc"]}[case]
    if case == "empty":
        args = [str(kd_sweep / "0" / ".hydra")]
    result = run_report(*args)
    lines = [line for line in result.stderr.splitlines() if line.startswith("tlrun-report: error:")]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr
    assert {"missing": "not a folder", "empty": "no sweep jobs", "metric": "test_acc"}[case] in lines[0]
