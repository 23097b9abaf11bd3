"""distill=dkd (Zhao et al. 2022) and distill=fitnet (Romero et al. 2015): the losses against NumPy
computations of the papers' equations, DKD's KD identity, the hint regressor and stage, and real runs
that share one teacher stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, assert_one_line_error, read_metrics, run_tlrun
from tlrun.errors import ConfigError
from tlrun.methods.dkd import DecoupledKDLoss, dkd_parts, dkd_warmup
from tlrun.methods.fitnet import HintLoss, HintRegressor, HintStage
from tlrun.methods.kd import soft_target_kl


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (p * np.log(p / q)).sum(axis=1)


def np_dkd_terms(student: np.ndarray, teacher: np.ndarray, y: np.ndarray, T: float):
    """TCKD and NCKD per sample from the paper's definitions (b: binary, p̂: non-target distribution)."""
    p_s, p_t = np_softmax(student / T), np_softmax(teacher / T)
    rows = np.arange(len(y))
    b_s = np.stack([p_s[rows, y], 1 - p_s[rows, y]], axis=1)
    b_t = np.stack([p_t[rows, y], 1 - p_t[rows, y]], axis=1)
    keep = np.ones_like(p_s, dtype=bool)
    keep[rows, y] = False
    hat_s = p_s[keep].reshape(len(y), -1) / b_s[:, 1:]
    hat_t = p_t[keep].reshape(len(y), -1) / b_t[:, 1:]
    return np_kl(b_t, b_s), np_kl(hat_t, hat_s), p_t[rows, y]


STUDENT = np.array([[1.0, 2.0, 0.5, -1.0], [0.3, -0.2, 2.5, 0.0], [-1.0, 0.5, 0.2, 1.5]])
TEACHER = np.array([[0.2, 3.0, -1.0, 0.4], [1.0, 0.0, 4.0, -2.0], [0.0, 0.0, 2.0, 1.0]])
LABELS = np.array([1, 2, 3])


def test_dkd_terms_and_loss_match_numpy_from_the_papers_equations():
    T, alpha, beta = 2.0, 0.5, 3.0
    tckd, nckd, p_target = dkd_parts(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS), T)
    np_tckd, np_nckd, np_pt = np_dkd_terms(STUDENT, TEACHER, LABELS, T)
    np.testing.assert_allclose(tckd.numpy(), np_tckd, rtol=1e-5)
    np.testing.assert_allclose(nckd.numpy(), np_nckd, rtol=1e-5)
    np.testing.assert_allclose(p_target.numpy(), np_pt, rtol=1e-5)
    ce = -np.log(np_softmax(STUDENT)[np.arange(3), LABELS]).mean()
    loss, logs = DecoupledKDLoss(T, alpha, beta, warmup_fraction=0.1)(
        torch.tensor(STUDENT, dtype=torch.float32), torch.tensor(TEACHER, dtype=torch.float32),
        torch.tensor(LABELS), progress=0.5)
    expected = ce + T ** 2 * (alpha * np_tckd.mean() + beta * np_nckd.mean())
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logs["tckd_loss"] == pytest.approx(T ** 2 * np_tckd.mean(), rel=1e-5)
    assert logs["nckd_loss"] == pytest.approx(T ** 2 * np_nckd.mean(), rel=1e-5)
    assert logs["ce_loss"] == pytest.approx(ce, rel=1e-5) and logs["dkd_warmup"] == 1.0


def test_kd_is_tckd_plus_the_teachers_non_target_mass_times_nckd():
    """The paper's identity KL(p^T ‖ p^S) = TCKD + (1 − p^T_t) · NCKD, per sample and before T²: DKD with
    α = 1 and β = 1 − p^T_t (no decoupling) is classical KD."""
    torch.manual_seed(0)
    student, teacher = torch.randn(64, 7, dtype=torch.float64) * 3, torch.randn(64, 7, dtype=torch.float64) * 3
    teacher[:8] *= 10  # very confident teachers: p^T_t -> 1 or -> 0
    labels = torch.randint(0, 7, (64,))
    T = 4.0
    tckd, nckd, p_target = dkd_parts(student, teacher, labels, T)
    kl = F.kl_div(F.log_softmax(student / T, 1), F.log_softmax(teacher / T, 1), reduction="none",
                  log_target=True).sum(1)
    torch.testing.assert_close(tckd + (1 - p_target) * nckd, kl, rtol=1e-9, atol=1e-12)
    assert ((tckd + (1 - p_target) * nckd).mean() * T ** 2).item() == pytest.approx(
        soft_target_kl(student, teacher, T).item(), rel=1e-9)


def test_dkd_with_alpha_and_beta_zero_is_cross_entropy_and_gradients_stay_finite():
    torch.manual_seed(1)
    student, teacher, labels = torch.randn(8, 5), torch.randn(8, 5) * 50, torch.randint(0, 5, (8,))
    loss, _ = DecoupledKDLoss(4.0, 0.0, 0.0, label_smoothing=0.1)(student, teacher, labels)
    assert loss.item() == pytest.approx(F.cross_entropy(student, labels, label_smoothing=0.1).item(), rel=1e-6)
    # A near-one-hot teacher (logits x 50) and a student that learns from it: no NaN through the masked terms.
    s = student.clone().requires_grad_(True)
    DecoupledKDLoss(4.0)(s, teacher, labels)[0].backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one class index per image"):
        DecoupledKDLoss(4.0)(student, teacher, F.one_hot(labels, 5).float())


def test_dkd_warmup_ramps_the_kd_terms_linearly():
    assert [dkd_warmup(p, 0.2) for p in (0.0, 0.05, 0.1, 0.2, 0.9)] == pytest.approx([0.0, 0.25, 0.5, 1.0, 1.0])
    assert dkd_warmup(0.0, 0.0) == 1.0  # no warm-up
    student, teacher = (torch.tensor(a, dtype=torch.float32) for a in (STUDENT, TEACHER))
    y = torch.tensor(LABELS)
    loss_fn = DecoupledKDLoss(4.0, 1.0, 8.0, warmup_fraction=0.2)
    full, logs = loss_fn(student, teacher, y, progress=1.0)
    quarter, quarter_logs = loss_fn(student, teacher, y, progress=0.05)
    start, _ = loss_fn(student, teacher, y, progress=0.0)
    kd_terms = logs["tckd_loss"] + 8.0 * logs["nckd_loss"]
    assert start.item() == pytest.approx(logs["ce_loss"], rel=1e-6)
    assert quarter.item() == pytest.approx(logs["ce_loss"] + 0.25 * kd_terms, rel=1e-6)
    assert full.item() == pytest.approx(logs["ce_loss"] + kd_terms, rel=1e-6)
    assert quarter_logs["dkd_warmup"] == pytest.approx(0.25)


def test_dkd_refuses_mixed_labels_and_transfer_images_at_validation():
    from tlrun.cli import compose_config
    from tlrun.config import register_configs, validate_config

    register_configs()
    with pytest.raises(ConfigError, match="MixUp/CutMix"):
        validate_config(compose_config(["distill=dkd", "data.augment.mixup_alpha=0.2"]))
    with pytest.raises(ConfigError, match="distill.transfer_images=0"):
        validate_config(compose_config(["distill=dkd", "distill.transfer_images=10"]))
    with pytest.raises(ConfigError, match="distill.student_layer=<student module>"):
        validate_config(compose_config(["distill=fitnet", "distill.teacher_layer=conv2"]))


@pytest.mark.parametrize("student_shape, teacher_shape, pooled", [
    ((32, 8, 8), (48, 8, 8), False),   # channels differ
    ((32, 8, 8), (48, 4, 4), True),    # channels and spatial size differ (pooled down)
    ((16, 4, 4), (8, 6, 6), True),     # student map smaller than the teacher's (pooled up)
    ((100,), (64,), False),            # vector -> vector
])
def test_hint_regressor_maps_student_features_to_the_teachers_shape(student_shape, teacher_shape, pooled):
    regressor = HintRegressor(student_shape, teacher_shape)
    out = regressor(torch.randn(5, *student_shape))
    assert tuple(out.shape) == (5, *teacher_shape)
    assert (regressor.pool_to is not None) == pooled
    if len(student_shape) == 3:
        assert isinstance(regressor.proj, torch.nn.Conv2d) and regressor.proj.kernel_size == (1, 1)
    else:
        assert isinstance(regressor.proj, torch.nn.Linear)


def test_hint_regressor_refuses_a_map_to_vector_pair():
    with pytest.raises(ValueError, match="both must be feature maps"):
        HintRegressor((32, 4, 4), (100,))


def test_hint_loss_matches_numpy():
    rng = np.random.default_rng(0)
    prediction, hint = rng.normal(size=(4, 3, 2, 2)), rng.normal(size=(4, 3, 2, 2))
    expected = np.mean([0.5 * np.sum((prediction[i] - hint[i]) ** 2) for i in range(4)])
    assert HintLoss()(torch.tensor(prediction), torch.tensor(hint)).item() == pytest.approx(expected, rel=1e-6)
    assert HintLoss()(torch.tensor(hint), torch.tensor(hint)).item() == 0.0


def test_hint_stage_trains_the_student_up_to_its_guided_layer_and_releases_the_models():
    from tlrun.models.factory import build_model

    torch.manual_seed(0)
    student, teacher = build_model("lenet", 3, None, None).model, build_model("lenet", 3, None, None).model
    teacher.eval().requires_grad_(False)
    # conv1.1 is a BatchNorm whose output the next ReLU(inplace=True) overwrites: the tap keeps a copy, so
    # the hint sees the BatchNorm's output (negative values too) and the 1x1 conv's backward still has it.
    stage = HintStage(student, "conv1.1", teacher, "conv1.0", lambda x: x, image_size=16, epochs=1)
    assert stage.regressor.describe() == "conv1x1 (32, 16, 16) -> (32, 16, 16)"
    assert [name for name, _ in stage.named_parameters()] == ["regressor.proj.weight", "regressor.proj.bias"]
    student.train()
    loss, logits, logs = stage(torch.randn(4, 3, 16, 16), 0.0)
    assert tuple(logits.shape) == (4, 3) and logs["hint_loss"] == pytest.approx(loss.item()) and loss.item() > 0
    assert (stage._student_tap.features < 0).any()
    loss.backward()
    assert student.conv1[0].weight.grad.abs().sum() > 0 and stage.regressor.proj.weight.grad.abs().sum() > 0
    assert student.conv2[0].weight.grad is None and student.fc.weight.grad is None  # above the guided layer
    assert all(p.grad is None for p in teacher.parameters())
    stage.close()
    assert tuple(teacher(torch.randn(2, 3, 16, 16)).shape) == (2, 3)  # the stopping hook is gone
    with pytest.raises(ConfigError, match=r"distill.teacher_layer=conv7 is not a module of the model; choose one "
                                          r"of: conv1, conv1.0"):
        HintStage(student, "conv2", teacher, "conv7", lambda x: x, image_size=16, epochs=1)
    assert not student.conv2._forward_hooks  # the student's tap went with the failed stage


def test_dkd_and_fitnet_runs_share_the_teacher_stage_and_report_their_losses(tmp_path: Path):
    common = ["model=lenet", "distill.teacher_model=lenet", "distill.teacher_epochs=1", "data=digits",
              "data.image_size=16", "data.max_per_class=10", "train.epochs=2",
              f"data.cache_dir={tmp_path / 'cache'}", *TINY]
    dkd_dir, fitnet_dir = tmp_path / "dkd", tmp_path / "fitnet"
    dkd = run_tlrun(["distill=dkd", "distill.warmup_fraction=0.5", *common, f"hydra.run.dir={dkd_dir}"], tmp_path)
    assert dkd.returncode == 0, dkd.stderr[-3000:]
    # Feature maps of other channels and sizes (32x8x8 -> 48x4x4); KD online, after the hooks are gone.
    fitnet = run_tlrun(["distill=fitnet", "distill.student_layer=conv1", "distill.teacher_layer=conv2",
                        "distill.hint_epochs=1", "distill.teacher_logits=online", *common,
                        f"hydra.run.dir={fitnet_dir}"], tmp_path)
    assert fitnet.returncode == 0, fitnet.stderr[-3000:]

    metrics = {name: read_metrics(run) for name, run in (("dkd", dkd_dir), ("fitnet", fitnet_dir))}
    assert [metrics[n]["teacher_source"] for n in ("dkd", "fitnet")] == ["stage trained", "stage cache hit"]
    assert metrics["dkd"]["teacher_test_acc"] == metrics["fitnet"]["teacher_test_acc"]
    assert {m["pipeline"] for m in metrics.values()} == {"kd"}
    assert metrics["dkd"]["distill_method"] == "dkd" and metrics["dkd"]["alpha"] == 1.0
    assert metrics["dkd"]["beta"] == 8.0 and metrics["dkd"]["warmup_fraction"] == 0.5
    assert metrics["fitnet"]["distill_method"] == "fitnet" and metrics["fitnet"]["teacher_logits"] == "online"
    assert metrics["fitnet"]["hint_regressor"].startswith("conv1x1 (32, 8, 8) -> (48, 4, 4)")

    dkd_history = pd.read_csv(dkd_dir / "ft_history.csv")
    assert {"tckd_loss", "nckd_loss", "ce_loss", "dkd_warmup"} <= set(dkd_history.columns)
    # The ramp: below full weight in epoch 1 (progress < 0.5), full in epoch 2.
    assert dkd_history["dkd_warmup"].iloc[0] < 1 and dkd_history["dkd_warmup"].iloc[-1] == 1.0
    assert (dkd_history["nckd_loss"] > 0).all()

    # One history: the hint epoch, then the KD epochs; the best epoch is a KD one.
    history = pd.read_csv(fitnet_dir / "ft_history.csv")
    assert history["epoch"].tolist() == [1, 2, 3] and history["hint_stage"].tolist() == [1, 0, 0]
    assert history["hint_loss"].notna().tolist() == [True, False, False] and history["hint_loss"].iloc[0] > 0
    assert history["kd_loss"].notna().tolist() == [False, True, True]
    assert metrics["fitnet"]["best_epoch"] >= 2 and metrics["fitnet"]["epochs_run"] == 3

    for key, name, needle in (("student_layer", "conv9", "distill.student_layer=conv9 is not a module"),
                              ("teacher_layer", "features.3", "distill.teacher_layer=features.3 is not a module")):
        layers = {"student_layer": "conv1", "teacher_layer": "conv2", key: name}
        bad = run_tlrun(["distill=fitnet", *(f"distill.{k}={v}" for k, v in layers.items()), *common], tmp_path)
        assert bad.returncode == 2
        assert_one_line_error(bad, needle, "choose one of: conv1, conv1.0")
    assert len(list((tmp_path / "cache" / "teachers").glob("*/ft_model.pt"))) == 1
