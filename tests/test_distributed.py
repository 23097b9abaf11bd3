"""torchrun data parallelism on CPU (gloo): one run folder, rank 0 writes, accuracy like one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import TINY, read_metrics, run_dirs, run_tlrun
from tlrun import distributed
from tlrun.data.pipeline import make_loader
from tlrun.errors import DataError

RUN = ["model=lenet", "data.image_size=32", "train.epochs=3", "train.progress=none", "device=cpu"]


def test_torchrun_two_processes_write_one_run_folder(tmp_path: Path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    before = set(Path(tempfile.gettempdir()).glob("tlrun-rank*"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "tlrun", *RUN],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)  # one folder for both ranks
    metrics = read_metrics(run_dir)
    assert metrics["device_settings"]["world_size"] == 2
    assert len((run_dir / "ft_history.csv").read_text().splitlines()) == 4  # header + 3 epochs, written once
    assert set(Path(tempfile.gettempdir()).glob("tlrun-rank*")) == before  # scratch folders removed
    (tmp_path / "single").mkdir()
    single = run_tlrun([*RUN, "device.threads=1"], tmp_path / "single")
    assert single.returncode == 0, single.stderr
    alone = read_metrics(run_dirs(tmp_path / "single")[0])
    assert metrics["test_acc"] > 0.6 and abs(metrics["test_acc"] - alone["test_acc"]) < 0.15


def test_world_size_larger_than_the_data_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    dataset = torch.utils.data.TensorDataset(torch.zeros(3, 1), torch.zeros(3))
    with pytest.raises(DataError, match="torchrun started 4 processes"):
        make_loader(dataset, batch_size=2, train=True, seed=0)
    loader = make_loader(torch.utils.data.TensorDataset(torch.zeros(10, 1), torch.zeros(10)), 2, True, 0)
    assert len(loader.sampler) == 3  # this rank's shard of 10 over 4 ranks (padded)
