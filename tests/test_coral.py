"""Deep CORAL (adaptation=coral): the loss against a direct NumPy computation, and a real run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY, read_metrics, run_dirs, run_tlrun
from tlrun.data.sources import OPENCV_DIGITS
from tlrun.methods.coral import CoralConfig, coral_loss, feature_covariance


def numpy_coral(source: np.ndarray, target: np.ndarray) -> float:
    """Sun & Saenko 2016, Eq. 1-3, written out: C = (DᵀD − (1ᵀD)ᵀ(1ᵀD)/n)/(n−1), ‖C_S − C_T‖²_F / 4d²."""
    def covariance(features: np.ndarray) -> np.ndarray:
        n = features.shape[0]
        ones = np.ones((1, n))
        return (features.T @ features - (ones @ features).T @ (ones @ features) / n) / (n - 1)

    d = source.shape[1]
    return float(np.sum((covariance(source) - covariance(target)) ** 2) / (4 * d * d))


@pytest.mark.parametrize("n_source, n_target, d", [(8, 8, 3), (5, 11, 6), (2, 3, 1)])
def test_coral_loss_matches_numpy(n_source: int, n_target: int, d: int):
    rng = np.random.default_rng(n_source + d)
    source = rng.normal(size=(n_source, d))
    target = rng.normal(loc=0.5, scale=2.0, size=(n_target, d))
    value = coral_loss(torch.from_numpy(source), torch.from_numpy(target)).item()
    assert value == pytest.approx(numpy_coral(source, target), rel=1e-10)
    np.testing.assert_allclose(feature_covariance(torch.from_numpy(source)).numpy(), np.cov(source, rowvar=False)
                               .reshape(d, d), rtol=1e-10)


def test_coral_is_zero_for_equal_covariances_and_ignores_a_mean_shift():
    features = torch.randn(20, 4, dtype=torch.float64)
    assert coral_loss(features, features + 3.0).item() == pytest.approx(0.0, abs=1e-12)  # second order only
    assert coral_loss(features, 2.0 * features).item() > 0


def test_coral_gradient_moves_source_covariance_towards_target():
    torch.manual_seed(0)
    source = torch.randn(64, 3, requires_grad=True)
    target = 3.0 * torch.randn(64, 3)
    before = coral_loss(source, target).item()
    optimizer = torch.optim.SGD([source], lr=50.0)
    for _ in range(20):
        optimizer.zero_grad()
        coral_loss(source, target).backward()
        optimizer.step()
    assert coral_loss(source, target).item() < 0.5 * before


def test_coral_needs_two_samples_per_domain():
    with pytest.raises(ValueError, match="n >= 2"):
        coral_loss(torch.randn(1, 3), torch.randn(4, 3))


@pytest.mark.skipif(not OPENCV_DIGITS.is_file(), reason="opencv-doc is not installed")
def test_adaptation_coral_run(tmp_path: Path):
    result = run_tlrun(["adaptation=coral", "model=lenet", "data=cvdigits", "data.target=cvdigits_m",
                        "data.max_per_class=12", "data.image_size=16", "train.epochs=2", "train.batch_size=16",
                        "adaptation.warmup_epochs=0", "adaptation.warmup_source_acc=0", *TINY],
                       tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    history = pd.read_csv(run_dir / "ft_history.csv")
    assert (history["coral_loss"] > 0).all()
    assert 0 < history["lambda"].iloc[0] < history["lambda"].iloc[-1] <= 1.0  # the shared DANN ramp
    metrics = read_metrics(run_dir)
    assert metrics["pipeline"] == "coral" and metrics["adaptation"] == "coral"
    assert set(metrics["domain_gap_after"]) == {"mmd", "a_distance"}


def test_a_key_of_another_method_is_refused_with_corals_keys(tmp_path: Path):
    result = run_tlrun(["adaptation=coral", "adaptation.discriminator_width=8"], tmp_path)
    assert result.returncode == 2
    keys = ", ".join(sorted(field.name for field in dataclasses.fields(CoralConfig)))
    assert f"valid keys in adaptation=coral: {keys}" in result.stderr and "discriminator_width" not in keys
    assert not list(tmp_path.rglob("*.json"))
