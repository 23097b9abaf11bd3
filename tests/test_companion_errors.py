"""tlrun-predict, tlrun-rank, tlrun-report on bad input: one line, exit 2, no traceback, nothing on disk changed.

In-process and without training: argument errors must fail before torch loads or any run is read, so
the run folders given here do not even exist. Tests run as root (chmod cannot make a folder
unwritable), so "read-only" is simulated where the code asks: os.access for the output-folder check,
and a failing open/write for the sweep summary.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import tlrun.paths
import tlrun.sweep
from tlrun import predict_cli, rank_cli

RANK_ARGS = ["digits", "--models", "lenet:null"]


@pytest.fixture(autouse=True)
def user_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in tmp_path (a default output folder would show in the snapshot), without debug tracebacks."""
    monkeypatch.chdir(tmp_path)
    for name in ("TLRUN_DEBUG", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any ``import torch`` now fails: argument errors must be raised before torch loads."""
    monkeypatch.setitem(sys.modules, "torch", None)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root with its content hash (folders: 'dir'): what "no change on disk" compares."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def call(main, args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, prog: str, *needles: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """os.access reports ``folder`` unwritable (as it would for a non-root user or a read-only mount)."""
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path).resolve() == folder.resolve() and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


# --- the range tables ---------------------------------------------------------------------------

@pytest.mark.parametrize("module", [predict_cli, rank_cli], ids=["predict", "rank"])
def test_every_numeric_argument_has_a_declared_range(module):
    numeric = {action.dest for action in module.build_parser()._actions if action.type in (int, float)}
    assert numeric == set(module.ARG_RANGES), "add the new argument's range to ARG_RANGES"


def test_commands_import_no_torch():
    code = "import sys, tlrun.predict_cli, tlrun.rank_cli, tlrun.sweep; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


# --- tlrun-predict -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, needles", [
    (["--threads", "-1"], ["invalid value for --threads: -1", ">= 1"]),
    (["--threads", "0"], ["--threads", ">= 1"]),
    (["--workers", "-1"], ["invalid value for --workers: -1", ">= 0"]),
    (["--top-k", "0"], ["invalid value for --top-k: 0", ">= 1"]),
    (["--grid", "-1"], ["invalid value for --grid: -1", ">= 0"]),
    (["--weights", "1", "-2"], ["invalid value for --weights: -2.0", ">= 0"]),
    (["--weights", "0", "0"], ["--weights are all 0", "positive weight"]),
    (["--weights", "1"], ["--weights gives 1 number for 2 runs", "one per run"]),
    (["--weights", "nan", "1"], ["--weights: nan; it must be a finite number"]),
], ids=["threads", "threads0", "workers", "top_k", "grid", "weight_negative", "weights_zero", "weights_count",
        "weights_nan"])
def test_predict_bad_numbers_fail_before_loading(tmp_path, capsys, no_torch, args, needles):
    before = snapshot(tmp_path)
    code, out, err = call(predict_cli.main, ["run_a", "run_b", "photos", *args, "--out", "p"], capsys)
    assert_one_line_error(code, err, "tlrun-predict", *needles)
    assert snapshot(tmp_path) == before


def test_predict_out_inside_a_file(tmp_path, capsys, no_torch):
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    code, out, err = call(predict_cli.main, ["run_a", "photos", "--out", str(tmp_path / "notes.txt" / "p")], capsys)
    assert_one_line_error(code, err, "tlrun-predict", "--out=", "notes.txt is a file, not a folder",
                          "choose another --out")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("given", ["existing", "new_child", "default"])
def test_predict_read_only_out(tmp_path, capsys, monkeypatch, no_torch, given):
    (tmp_path / "ro").mkdir()
    read_only(monkeypatch, tmp_path / "ro" if given != "default" else tmp_path)
    out = {"existing": ["--out", str(tmp_path / "ro")], "new_child": ["--out", str(tmp_path / "ro" / "a" / "b")],
           "default": []}[given]
    before = snapshot(tmp_path)
    code, _, err = call(predict_cli.main, ["run_a", "photos", *out], capsys)
    needles = {"existing": ["is read-only", "choose a writable --out"],
               "new_child": ["cannot be created", "is read-only", "choose a writable --out"],
               "default": ["--out=predictions", "cannot be created", "read-only"]}[given]
    assert_one_line_error(code, err, "tlrun-predict", *needles)
    assert snapshot(tmp_path) == before


# --- tlrun-rank ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, needles", [
    (["--max-per-class", "0"], ["invalid value for --max-per-class: 0", ">= 1"]),
    (["--batch-size", "0"], ["invalid value for --batch-size: 0", ">= 1"]),
    (["--threads", "-1"], ["invalid value for --threads: -1", ">= 1"]),
    (["--image-size", "4"], ["invalid value for --image-size: 4", ">= 8"]),
    (["--seed", "-1"], ["invalid value for --seed: -1", ">= 0"]),
    (["--seed", str(2**32)], ["--seed", f"<= {2**32 - 1}"]),
], ids=["max_per_class", "batch_size", "threads", "image_size", "seed_negative", "seed_large"])
def test_rank_bad_numbers_fail_before_loading(tmp_path, capsys, no_torch, args, needles):
    before = snapshot(tmp_path)
    code, out, err = call(rank_cli.main, [*RANK_ARGS, *args, "--out", "r"], capsys)
    assert_one_line_error(code, err, "tlrun-rank", *needles)
    assert snapshot(tmp_path) == before


def test_rank_out_inside_a_file(tmp_path, capsys, no_torch):
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    code, out, err = call(rank_cli.main, [*RANK_ARGS, "--out", str(tmp_path / "notes.txt" / "r")], capsys)
    assert_one_line_error(code, err, "tlrun-rank", "notes.txt is a file, not a folder", "choose another --out")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("given", ["explicit", "default"])
def test_rank_read_only_out(tmp_path, capsys, monkeypatch, no_torch, given):
    (tmp_path / "ro").mkdir()
    read_only(monkeypatch, tmp_path / "ro" if given == "explicit" else tmp_path)
    out = ["--out", str(tmp_path / "ro")] if given == "explicit" else []
    before = snapshot(tmp_path)
    code, _, err = call(rank_cli.main, [*RANK_ARGS, *out], capsys)
    assert_one_line_error(code, err, "tlrun-rank", "read-only", "choose a writable --out")
    assert snapshot(tmp_path) == before


def test_rank_missing_data_folder_fails_before_loading(tmp_path, capsys, no_torch):
    code, _, err = call(rank_cli.main, ["./no/such/folder", "--models", "lenet:null", "--out", "r"], capsys)
    assert_one_line_error(code, err, "tlrun-rank", "not a folder")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args", [["bbc_news"], ["digits", "--source", "rotten_tomatoes"]], ids=["data", "source"])
def test_rank_refuses_text_data_before_loading(tmp_path, capsys, no_torch, args):
    before = snapshot(tmp_path)
    code, _, err = call(rank_cli.main, [*args, "--models", "lenet:null", "--out", "r"], capsys)
    assert_one_line_error(code, err, "tlrun-rank", "is text data", "ranks image backbones", "freeze=all")
    assert snapshot(tmp_path) == before


# --- tlrun-report --------------------------------------------------------------------------------

def make_sweep(root: Path, jobs: dict[int, str]) -> Path:
    """A hand-made sweep: job i swept over train.lr, its metrics.json text given (None: still running)."""
    sweep = root / "sweep"
    for num, metrics in jobs.items():
        job = sweep / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"train.lr={0.1 / (num + 1)}", "seed=0"]))
        if metrics is not None:
            (job / "metrics.json").write_text(metrics)
    return sweep


def ok_metrics(acc: float) -> str:
    return json.dumps({"test_acc": acc, "best_val_acc": acc})


@pytest.mark.parametrize("broken, needle", [
    ("metrics.json", "metrics.json is not valid JSON"),
    ("metrics_list", "metrics.json is not a JSON object"),
    ("failed.json", "failed.json is not valid JSON"),
    ("overrides.yaml", "overrides.yaml is not valid YAML"),
])
def test_report_summarises_around_an_unreadable_job(tmp_path, capsys, broken, needle):
    sweep = make_sweep(tmp_path, {0: ok_metrics(0.5), 1: ok_metrics(0.6), 2: ok_metrics(0.7)})
    job = sweep / "1"
    if broken == "metrics.json":
        (job / "metrics.json").write_text('{"test_acc": 0.6, "best_v')  # truncated by a killed job
    elif broken == "metrics_list":
        (job / "metrics.json").write_text("[0.6]")
    elif broken == "failed.json":
        (job / "metrics.json").unlink()
        (job / "failed.json").write_text('{"job": 1, "err')
    else:
        (job / ".hydra" / "overrides.yaml").write_text("[train.lr=0.05, seed=0")
    code, out, err = call(tlrun.sweep.main, [str(sweep)], capsys)
    assert code == 1, err  # a job did not finish well: a script can tell (as for failed jobs)
    assert "Traceback" not in err and "3 jobs (0 failed, 1 unreadable)" in out
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert table["status"].tolist() == ["ok", "unreadable", "ok"]
    assert needle in table.loc[1, "error"] and str(job) in table.loc[1, "error"]
    assert "rerun this job" in table.loc[1, "error"]
    assert table.loc[[0, 2], "test_acc"].tolist() == [0.5, 0.7]
    assert (sweep / "sweep_heatmap.png").is_file()


def test_report_exit_codes(tmp_path, capsys):
    sweep = make_sweep(tmp_path, {0: ok_metrics(0.5), 1: ok_metrics(0.6)})
    code, out, err = call(tlrun.sweep.main, [str(sweep)], capsys)
    assert code == 0 and err == "" and "2 jobs (0 failed)" in out
    (sweep / "1" / "metrics.json").unlink()
    (sweep / "1" / "failed.json").write_text(json.dumps({"job": 1, "error": "boom"}))
    code, out, err = call(tlrun.sweep.main, [str(sweep)], capsys)
    assert code == 1 and "2 jobs (1 failed)" in out


def refuse_writes(monkeypatch: pytest.MonkeyPatch, folder: Path, error: int) -> None:
    """open() for writing inside ``folder`` fails as on a read-only folder (tlrun.sweep's first write is
    its lock file, so that is where the real code meets the error)."""
    real_open = open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+") and Path(file).resolve().is_relative_to(folder.resolve()):
            raise OSError(error, os.strerror(error), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(tlrun.sweep, "open", guarded_open, raising=False)
    monkeypatch.setattr(tlrun.paths, "open", guarded_open, raising=False)  # the summary's lock file


@pytest.mark.parametrize("error", [errno.EACCES, errno.EROFS], ids=["permission", "read_only_fs"])
def test_report_on_a_read_only_sweep(tmp_path, capsys, monkeypatch, error):
    sweep = make_sweep(tmp_path, {0: ok_metrics(0.5), 1: ok_metrics(0.6), 2: None})
    refuse_writes(monkeypatch, sweep, error)
    before = snapshot(tmp_path)
    code, out, err = call(tlrun.sweep.main, [str(sweep)], capsys)
    assert_one_line_error(code, err, "tlrun-report", f"sweep folder {sweep} cannot be written",
                          os.strerror(error), "not saved as sweep_summary.csv", "make the folder writable")
    assert out.startswith("| job | train.lr | status |") and "3 jobs (0 failed)" in out  # the table is still shown
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("stage", ["csv", "heatmap"])
def test_report_write_failure_leaves_previous_files(tmp_path, capsys, monkeypatch, stage):
    sweep = make_sweep(tmp_path, {0: ok_metrics(0.5), 1: ok_metrics(0.6)})
    for name in ("sweep_summary.csv", "sweep_heatmap.png", ".sweep_summary.lock"):
        (sweep / name).write_text("previous" if name != ".sweep_summary.lock" else "")
    before = snapshot(tmp_path)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if stage == "csv":
        real_to_csv = pd.DataFrame.to_csv

        def to_csv(self, path_or_buf=None, *args, **kwargs):
            if path_or_buf is not None:
                raise full
            return real_to_csv(self, path_or_buf, *args, **kwargs)

        monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    else:
        def plot_heatmap(*args, **kwargs):
            raise full

        monkeypatch.setattr(tlrun.sweep, "plot_heatmap", plot_heatmap)
    code, out, err = call(tlrun.sweep.main, [str(sweep)], capsys)
    assert_one_line_error(code, err, "tlrun-report", "cannot be written", "No space left on device")
    assert snapshot(tmp_path) == before  # no temporary file left, old summary and heatmap untouched
