"""Progressive resizing: phases drive the one engine; sizes in the history, optimizer state carried over."""

from __future__ import annotations

import pandas as pd
import torch

from conftest import TINY, assert_one_line_error, read_metrics, run_tlrun


def test_phases_record_sizes_and_carry_the_optimizer(tmp_path):
    run_dir = tmp_path / "run"
    result = run_tlrun(["model=lenet", "data=digits", "data.max_per_class=40",
                        "train.progressive_resizing=[{image_size:12,epochs:1},{image_size:20,epochs:2,lr:0.001}]",
                        "train.batch_size=32", f"hydra.run.dir={run_dir}", *TINY], tmp_path)
    assert result.returncode == 0, result.stderr
    history = pd.read_csv(run_dir / "ft_history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["image_size"].tolist() == [12, 20, 20]
    metrics = read_metrics(run_dir)
    assert metrics["image_size"] == 20 and metrics["epochs_run"] == 3
    assert metrics["best_epoch"] in (2, 3)  # selection within the last phase, at the final size
    saved = torch.load(run_dir / "ft_model.pt", weights_only=False)
    assert saved["preprocess"]["crop_size"] == 20
    # One AdamW across phases: its step count is the sum of every phase's steps (3 epochs x 8 batches).
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    steps = [float(state["step"]) for state in last["optimizer"]["state"].values()]
    assert steps and all(step == 3 * (280 // 32) for step in steps)
    # Phase 2 restarted its own schedule at lr 0.001: the logged lr of epoch 2 is cosine's middle.
    assert abs(history["lr"].iloc[1] - 0.0005) < 1e-9


def test_bad_phases_are_one_line(tmp_path):
    result = run_tlrun(["train.progressive_resizing=[{image_size:4,epochs:1}]", *TINY], tmp_path)
    assert_one_line_error(result, "train.progressive_resizing", "image_size must be a whole number >= 8")
    result = run_tlrun(["distill=kd", "train.progressive_resizing=[{image_size:32,epochs:1}]", *TINY], tmp_path)
    assert_one_line_error(result, "fine-tuning only")
