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

from conftest import read_metrics, run_dirs, run_tlrun
from tlrun import distributed
from tlrun.data.loaders import make_loader
from tlrun.data.sources import OPENCV_DIGITS
from tlrun.errors import DataError

RUN = ["model=lenet", "data.image_size=16", "train.epochs=3", "train.progress=none", "train.plots=false", "device=cpu"]


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([command, "--standalone", "--nproc_per_node=2", "-m", "tlrun", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.process
def test_torchrun_two_processes_write_one_run_folder(tmp_path: Path):
    before = set(Path(tempfile.gettempdir()).glob("tlrun-rank*"))
    result = torchrun(RUN, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)  # one folder for both ranks
    metrics = read_metrics(run_dir)
    assert metrics["device_settings"]["world_size"] == 2
    # DistributedDataParallel kept the ranks in step: rank 0 compared every rank's weight digest at the end.
    assert metrics["device_settings"]["ranks_in_sync"] is True
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


@pytest.mark.slow  # two torchrun launches; the DDP-wrapped DANN step is covered fast below
@pytest.mark.skipif(not OPENCV_DIGITS.is_file(), reason="opencv-doc is not installed")
def test_torchrun_trains_dann_and_kd_with_ddp_and_identical_ranks(tmp_path: Path):
    """DANN's discriminator is part of the DDP-wrapped step; KD's frozen teacher stays outside it."""
    tiny = [*RUN, "train.epochs=1", "data.max_per_class=12", "data.image_size=16"]
    dann = torchrun([*tiny, "adaptation=dann", "data=cvdigits", "data.target=cvdigits_m",
                     "adaptation.discriminator_width=16", "hydra.run.dir=dann"], tmp_path)
    assert dann.returncode == 0, dann.stderr[-3000:]
    # The teacher stage is trained by whichever rank takes its lock, alone; the other waits, then loads it.
    kd = torchrun([*tiny, "distill=kd", "distill.teacher_model=lenet", "distill.teacher_epochs=1",
                   f"data.cache_dir={tmp_path / 'cache'}", "hydra.run.dir=kd"], tmp_path)
    assert kd.returncode == 0, kd.stderr[-3000:]
    logs = kd.stdout + kd.stderr
    assert logs.count("Teacher stage: fine-tuning") == 1 and "Teacher stage: cache hit" in logs
    for name, history_column in (("dann", "domain_loss"), ("kd", "kd_loss")):
        metrics = read_metrics(tmp_path / name)
        assert metrics["device_settings"]["world_size"] == 2
        assert metrics["device_settings"]["ranks_in_sync"] is True
        assert history_column in (tmp_path / name / "ft_history.csv").read_text().splitlines()[0]


def test_ranks_in_sync_compares_the_weight_digests_of_every_rank(monkeypatch):
    model = torch.nn.Linear(3, 2)
    digest = distributed.weights_digest(model)
    assert digest == distributed.weights_digest(model)
    with torch.no_grad():
        model.weight[0, 0] += 1e-6  # one parameter one ulp-scale step away: another digest
    assert distributed.weights_digest(model) != digest
    assert distributed.ranks_in_sync(model) is None  # one process: nothing to compare
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "all_gather_object", lambda out, value: out.__setitem__(slice(None), [value, digest]))
    assert distributed.ranks_in_sync(model) is False
    monkeypatch.setattr(distributed.dist, "all_gather_object", lambda out, value: out.__setitem__(slice(None), [value, value]))
    assert distributed.ranks_in_sync(model) is True


def test_sync_batchnorm_on_cpu_is_refused_under_torchrun(monkeypatch):
    from tlrun.errors import ConfigError

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ConfigError, match="device.sync_batchnorm=true needs CUDA"):
        distributed.data_parallel(torch.nn.BatchNorm1d(2), torch.device("cpu"), sync_batchnorm=True)


def test_the_dann_step_trains_inside_distributed_data_parallel(tmp_path: Path):
    """In-process (one gloo rank): the adaptation step, discriminator included, runs through DDP's forward
    and backward, and every trainable parameter of model and method gets its reduced gradient."""
    import torch.distributed as dist
    from omegaconf import OmegaConf

    from tlrun.engine import Placement
    from tlrun.features import FeatureTap
    from tlrun.methods.dann import Dann, DannConfig
    from tlrun.pipelines.adaptation import AdaptationStep

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
        method = Dann(OmegaConf.structured(DannConfig(discriminator_width=8, warmup_batch_norm="source")),
                      feature_dim=4, num_classes=3)
        step = AdaptationStep(model, FeatureTap(model, "5"), Placement(torch.device("cpu")), method)
        # As tlrun.distributed.data_parallel wraps it: in the source warm-up the network takes source-only steps
        # and the discriminator trains on the side, so every parameter gets a gradient (no unused ones to find).
        assert not getattr(step, "find_unused_parameters", False)
        parallel = torch.nn.parallel.DistributedDataParallel(step)
        batch = ((torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])), (torch.randn(6, 3, 8, 8), torch.zeros(6)))
        for _warmup_step in range(2):  # DDP raises at the second step if a parameter's gradient never came
            step.zero_grad(set_to_none=True)
            out = parallel(batch, 0.25)
            out.loss.backward()
            assert "domain_acc" in out.logs and out.logs["lambda"] == 0.0
            assert all(p.grad is not None for p in step.parameters() if p.requires_grad)
        method.start_progress.fill_(0.0)  # the warm-up is over: the discriminator trains
        out = parallel(batch, 0.5)
        out.loss.backward()
        assert {"domain_loss", "domain_acc", "lambda"} <= set(out.logs)
        missing = [name for name, p in step.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, missing
        assert any(name.startswith("method.adversarial.discriminator") for name, _ in step.named_parameters())
    finally:
        dist.destroy_process_group()
