"""Knowledge distillation: the loss against a hand computation, teacher stage and logit caches."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import TINY, assert_one_line_error, make_image_folder, read_metrics, run_dirs, run_tlrun
from tlrun.methods.kd import distillation_loss, soft_target_kl


def test_kd_loss_matches_hand_computation():
    student = torch.tensor([[1.0, 2.0, 0.5]])
    teacher = torch.tensor([[0.2, 3.0, -1.0]])
    target = torch.tensor([1])
    temperature, alpha = 2.0, 0.7
    p_t = [math.exp(v / temperature) for v in teacher[0].tolist()]
    p_t = [v / sum(p_t) for v in p_t]
    p_s = [math.exp(v / temperature) for v in student[0].tolist()]
    p_s = [v / sum(p_s) for v in p_s]
    kl = sum(t * math.log(t / s) for t, s in zip(p_t, p_s))
    soft = [math.exp(v) for v in student[0].tolist()]
    ce = -math.log(soft[1] / sum(soft))
    loss, parts = distillation_loss(student, teacher, target, temperature, alpha)
    assert parts["kd_loss"] == pytest.approx(kl * temperature ** 2, rel=1e-5)
    assert parts["ce_loss"] == pytest.approx(ce, rel=1e-5)
    assert loss.item() == pytest.approx(alpha * kl * temperature ** 2 + (1 - alpha) * ce, rel=1e-5)


def test_kd_alpha_ends_and_temperature_scaling():
    torch.manual_seed(0)
    student, teacher, target = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    only_ce, parts = distillation_loss(student, teacher, target, 4.0, 0.0)
    assert only_ce.item() == pytest.approx(parts["ce_loss"])
    only_kd, parts = distillation_loss(student, teacher, target, 4.0, 1.0)
    assert only_kd.item() == pytest.approx(parts["kd_loss"])
    # Identical logits: no soft loss at any temperature.
    assert soft_target_kl(student, student, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    # T^2 keeps the soft-gradient scale: at high T the gradient of T^2*KL tends to (s - t)/(N*C)... finite,
    # while the unscaled KL's gradient shrinks like 1/T^2.
    s = student.clone().requires_grad_(True)
    soft_target_kl(s, teacher, 20.0).backward()
    scaled = s.grad.norm().item()
    s.grad = None
    (soft_target_kl(s, teacher, 20.0) / 400).backward()
    assert scaled / s.grad.norm().item() == pytest.approx(400, rel=1e-4)
    assert 0.01 < scaled < 10


KD_TINY = ["distill=kd", "model=lenet", "distill.teacher_model=small_resnet", "distill.teacher_epochs=1",
           "train.epochs=1", "data.image_size=16", "data.max_per_class=15", *TINY]


def test_teacher_stage_and_logits_are_cached_across_runs(tmp_path: Path):
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    first = run_tlrun([*KD_TINY, cache, "distill.temperature=2"], tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_tlrun([*KD_TINY, cache, "distill.temperature=5", "distill.alpha=0.3"], tmp_path)
    assert second.returncode == 0, second.stderr
    runs = [d for d in run_dirs(tmp_path)]
    metrics = sorted((read_metrics(d) for d in runs), key=lambda m: m["temperature"])
    assert [m["teacher_source"] for m in metrics] == ["stage trained", "stage cache hit"]
    assert [m["teacher_logits_cache"] for m in metrics] == ["miss", "hit"]
    for m in metrics:
        assert m["compression_ratio"] == pytest.approx(m["params_teacher"] / m["params_student"])
        assert m["latency_ms_teacher"] > 0 and m["latency_ms_student"] > 0
        assert 0 <= m["teacher_test_acc"] <= 1 and m["student_test_acc"] == m["test_acc"]
    history = pd.read_csv(runs[0] / "ft_history.csv")
    assert {"kd_loss", "ce_loss"} <= set(history.columns)
    assert len(list((tmp_path / "cache" / "teachers").glob("*/ft_model.pt"))) == 1


def test_teacher_from_run_folder_and_class_mismatch(tmp_path: Path):
    teacher_run = tmp_path / "teacher"
    made = run_tlrun(["model=lenet", "train.epochs=1", "data.image_size=16", "data.max_per_class=10",
                      f"hydra.run.dir={teacher_run}", *TINY], tmp_path)
    assert made.returncode == 0, made.stderr
    ok = run_tlrun(["distill=kd", "model=lenet", f"distill.teacher={teacher_run}", "train.epochs=1",
                    "data.image_size=16", "data.max_per_class=10", f"data.cache_dir={tmp_path / 'c'}", *TINY], tmp_path)
    assert ok.returncode == 0, ok.stderr
    # A teacher of other classes cannot teach this data.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = make_image_folder(tmp_path / "shapes", per_class=4)
    bad = run_tlrun(["distill=kd", "model=lenet", f"distill.teacher={teacher_run}", "data=imagefolder",
                     f"data.root={folder}", "data.image_size=16", *TINY], elsewhere)
    assert_one_line_error(bad, "teacher classes")
    assert run_dirs(elsewhere) == []
