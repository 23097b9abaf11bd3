"""Faults a long run meets: non-finite loss, a full disk while checkpointing, GPU out of memory."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from conftest import TINY, assert_one_line_error, run_dirs, run_tlrun
from tlrun import checkpoint
from tlrun.errors import CheckpointError
from tlrun.runner import describe_failure


def test_non_finite_loss_stops_with_one_line_and_exit_3(tmp_path: Path):
    result = run_tlrun(["model=lenet", "data.image_size=16", "train.lr=1e30", "train.epochs=2", *TINY], tmp_path)
    assert result.returncode == 3
    assert_one_line_error(result, "loss became", "epoch 1", "lower train.lr")
    assert run_dirs(tmp_path) == []  # nothing useful was produced: no folder left behind


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")])
def test_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch, failure):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"epoch": 1}, path)

    def no_space(obj, handle):
        handle.write(b"partial")
        raise failure

    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    with pytest.raises(CheckpointError, match="previous version is intact"):
        checkpoint.save_atomic({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


def test_gpu_out_of_memory_gets_a_hint():
    message, code = describe_failure(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert code == 4 and "train.batch_size" in message and "device.amp" in message
    assert describe_failure(RuntimeError("some bug")) is None  # bugs keep their traceback
