"""Knowledge distillation: the loss against a hand computation, teacher stage and logit caches."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import TINY, assert_one_line_error, make_image_folder, read_metrics, run_dirs, run_tlrun
from tlrun.methods.kd import DistillationLoss, distillation_loss, soft_target_kl


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


def train_tiny_teacher(tmp_path: Path, name: str = "teacher", per_class: int = 10) -> Path:
    """A 1-epoch LeNet run folder on digits at 16 px, to serve as distill.teacher."""
    run_dir = tmp_path / name
    made = run_tlrun(["model=lenet", "train.epochs=1", "data.image_size=16", f"data.max_per_class={per_class}",
                      f"hydra.run.dir={run_dir}", *TINY], tmp_path)
    assert made.returncode == 0, made.stderr
    return run_dir


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    """One finished 1-epoch LeNet run, the read-only distill.teacher of the tests below."""
    return train_tiny_teacher(tmp_path_factory.mktemp("teacher"))


def test_teacher_stage_and_logits_are_cached_across_runs(tmp_path: Path):
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    first = run_tlrun([*KD_TINY, cache, "distill.temperature=2"], tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_tlrun([*KD_TINY, cache, "distill.temperature=5", "distill.alpha=0.3", "distill.latency=true"], tmp_path)
    assert second.returncode == 0, second.stderr
    runs = [d for d in run_dirs(tmp_path)]
    metrics = sorted((read_metrics(d) for d in runs), key=lambda m: m["temperature"])
    assert [m["teacher_source"] for m in metrics] == ["stage trained", "stage cache hit"]
    assert [m["teacher_logits_cache"] for m in metrics] == ["miss", "hit"]
    for m in metrics:
        assert m["compression_ratio"] == pytest.approx(m["params_teacher"] / m["params_student"])
        assert m["student_test_acc"] == m["test_acc"]
    # Latency only when asked (distill.latency=true), after training, on copies of the models.
    assert "latency_ms_teacher" not in metrics[0]
    assert metrics[1]["latency_ms_teacher"] > 0 and metrics[1]["latency_ms_student"] > 0
    # One teacher (trained once, then the cached stage): the same test accuracy in both runs.
    assert metrics[0]["teacher_test_acc"] == metrics[1]["teacher_test_acc"]
    history = pd.read_csv(runs[0] / "ft_history.csv")
    assert {"kd_loss", "ce_loss"} <= set(history.columns)
    assert len(list((tmp_path / "cache" / "teachers").glob("*/ft_model.pt"))) == 1


def test_teacher_from_run_folder_and_class_mismatch(tmp_path: Path, tiny_teacher: Path):
    teacher_run = tiny_teacher
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


@pytest.mark.parametrize("method", ["kd", "meta"])
def test_a_missing_teacher_is_refused_before_any_data_is_loaded(tmp_path: Path, method: str):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    for teacher in (tmp_path / "nope", empty):
        result = run_tlrun([f"distill={method}", "model=lenet", f"distill.teacher={teacher}", *TINY], tmp_path)
        assert_one_line_error(result, f"distill.teacher={teacher}: no ft_model.pt")
        assert "Data " not in result.stderr + result.stdout  # refused at config validation
        assert run_dirs(tmp_path) == []


def test_teacher_logits_cache_is_invalidated_when_teacher_weights_change(tmp_path: Path, tiny_teacher: Path):
    teacher_a = tiny_teacher
    # Same architecture, classes and preprocessing; only the weights differ.
    teacher_b = tmp_path / "teacher_b"
    teacher_b.mkdir()
    saved = torch.load(teacher_a / "ft_model.pt", weights_only=False)
    saved["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in saved["state_dict"].items()}
    torch.save(saved, teacher_b / "ft_model.pt")
    statuses = []
    for number, teacher in enumerate((teacher_a, teacher_a, teacher_b)):
        run_dir = tmp_path / f"kd{number}"
        result = run_tlrun(["distill=kd", "model=lenet", f"distill.teacher={teacher}", "train.epochs=1",
                            "data.image_size=16", "data.max_per_class=10", f"data.cache_dir={tmp_path / 'c'}",
                            f"hydra.run.dir={run_dir}", *TINY], tmp_path)
        assert result.returncode == 0, result.stderr
        statuses.append(read_metrics(run_dir)["teacher_logits_cache"])
    assert statuses == ["miss", "hit", "miss"]
    # Two teachers, each with its train-set and test-set logits.
    assert len(list((tmp_path / "c" / "teacher_logits").glob("*.pt"))) == 4


def test_kd_sweep_trains_the_teacher_once_and_summarises_with_a_failed_job(tmp_path: Path):
    result = run_tlrun(["-m", *KD_TINY, f"data.cache_dir={tmp_path / 'cache'}", "distill.temperature=1,4",
                        f"distill.teacher=null,{tmp_path / 'missing'}"], tmp_path)
    assert result.returncode == 2  # a job failed: the sweep says so
    (sweep,) = (tmp_path / "multirun").glob("*/*")
    logs = "".join(p.read_text() for p in sweep.glob("*/tlrun.log"))
    assert logs.count("Teacher stage: fine-tuning") == 1 and logs.count("Teacher stage: cache hit") == 1
    for split in ("train", "test"):  # the teacher's test-set pass (teacher_test_acc) is shared too
        assert logs.count(f"Teacher logits ({split}): computing") == 1
        assert logs.count(f"Teacher logits ({split}): cache hit") == 1
    summary = pd.read_csv(sweep / "sweep_summary.csv")
    assert len(summary) == 4 and summary["status"].tolist().count("failed") == 2
    assert summary.loc[summary["status"] == "failed", "error"].str.contains("no ft_model.pt").all()
    assert (sweep / "sweep_heatmap.png").is_file()


def test_optuna_search_optimises_the_named_metric(tmp_path: Path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = run_tlrun(["hparams_search=kd_optuna", *KD_TINY, f"data.cache_dir={tmp_path / 'cache'}",
                        "hydra.sweeper.n_trials=2"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (sweep,) = (tmp_path / "multirun").glob("*/*")
    best = (sweep / "optimization_results.yaml").read_text()
    assert "distill.temperature" in best and "best_value" in best
    summary = pd.read_csv(sweep / "sweep_summary.csv")
    assert len(summary) == 2 and (summary["status"] == "ok").all()
    assert {"distill.temperature", "distill.alpha"} <= set(summary.columns)


# --- distill.teacher_logits: cached | online | auto ------------------------------------------------------

def test_teacher_view_is_identity_for_same_geometry_and_renormalises_otherwise():
    from tlrun.data.transforms import ImageGeometry
    from tlrun.pipelines.distill import to_teacher_view

    torch.manual_seed(0)
    student = ImageGeometry(16, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    pixels = torch.rand(2, 3, 16, 16)
    images = (pixels - 0.5) / 0.25
    assert to_teacher_view(images, student, student) is images
    imagenet = ImageGeometry(16, 16, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    expected = (pixels - torch.tensor(imagenet.mean).view(1, 3, 1, 1)) / torch.tensor(imagenet.std).view(1, 3, 1, 1)
    assert torch.allclose(to_teacher_view(images, student, imagenet), expected, atol=1e-5)
    bigger = ImageGeometry(32, 32, imagenet.mean, imagenet.std)
    assert to_teacher_view(images, student, bigger).shape == (2, 3, 32, 32)


def test_online_teacher_matches_cached_logits_on_deterministic_transforms(tiny_teacher: Path):
    """The first batch's KD loss is the same whether the teacher's logits were cached or computed online."""
    from omegaconf import OmegaConf

    from tlrun.artifacts import load_run_model
    from tlrun.data.datasets import ImageDataset
    from tlrun.data.loaders import make_loader
    from tlrun.data.splits import load_run_data
    from tlrun.data.transforms import build_transform
    from tlrun.engine import Placement
    from tlrun.pipelines.distill import (CachedTeacher, DistillationStep, Indexed, OnlineTeacher, predict_logits)

    teacher = load_run_model(tiny_teacher, "cpu")
    saved_cfg = OmegaConf.create(teacher.config)
    data = load_run_data(saved_cfg.data, 0)
    placement = Placement(torch.device("cpu"))
    train = data.splits["train"]
    cached = predict_logits(teacher.model, make_loader(ImageDataset(train, build_transform(teacher.geometry, None, False)),
                                                       64, False, 0), placement)
    loader = make_loader(Indexed(ImageDataset(train, build_transform(teacher.geometry, saved_cfg.data.augment, True))),
                         8, True, 0)
    batch = next(iter(loader))
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, len(data.classes)))
    losses = []
    for source in (CachedTeacher(cached, placement), OnlineTeacher(teacher, teacher.geometry, placement)):
        out = DistillationStep(student, placement, source, DistillationLoss(4.0, 0.9))(batch, 0.0)
        losses.append(out.loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_online_and_cached_runs_agree_and_auto_goes_online_with_augmentation(tmp_path: Path, tiny_teacher: Path):
    teacher_run = tiny_teacher
    common = ["distill=kd", "model=lenet", f"distill.teacher={teacher_run}", "train.epochs=1", "data.image_size=16",
              "data.max_per_class=10", f"data.cache_dir={tmp_path / 'c'}", "device.deterministic=true", *TINY]
    runs = {}
    for name, extra in (("cached", ["distill.teacher_logits=cached"]), ("online", ["distill.teacher_logits=online"]),
                        ("auto_plain", []), ("auto_aug", ["data.augment.hflip=true"])):
        run_dir = tmp_path / name
        result = run_tlrun([*common, *extra, f"hydra.run.dir={run_dir}"], tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name] = read_metrics(run_dir)
    assert [runs[n]["teacher_logits"] for n in ("cached", "online", "auto_plain", "auto_aug")] == \
        ["cached", "online", "cached", "online"]
    assert runs["online"]["teacher_logits_cache"] == "none" and runs["cached"]["teacher_logits_cache"] in ("hit", "miss")
    for m in runs.values():
        assert m["epoch_time_s_mean"] > 0
    # Deterministic transforms: the online teacher sees exactly the cached images, so training matches.
    cached, online = (pd.read_csv(tmp_path / n / "ft_history.csv") for n in ("cached", "online"))
    assert online["kd_loss"].iloc[0] == pytest.approx(cached["kd_loss"].iloc[0], rel=1e-4)
    assert online["train_loss"].iloc[0] == pytest.approx(cached["train_loss"].iloc[0], rel=1e-4)
    assert runs["online"]["test_acc"] == pytest.approx(runs["cached"]["test_acc"], abs=1e-9)


def test_cached_logits_stay_aligned_with_files_through_the_in_memory_store(tmp_path: Path):
    """Image files, shuffled batches, train/val split and max_per_class: the cached teacher logits looked up by
    index equal the online teacher's on the very batch images, with the uint8 store on and off."""
    root = make_image_folder(tmp_path / "images", per_class=14)
    data = ["data=imagefolder", f"data.root={root}", "data.image_size=16", "data.max_per_class=12"]
    teacher_run = tmp_path / "teacher"
    made = run_tlrun(["model=lenet", "train.epochs=8", *data, f"hydra.run.dir={teacher_run}", *TINY], tmp_path)
    assert made.returncode == 0, made.stderr
    common = ["distill=kd", "model=lenet", f"distill.teacher={teacher_run}", "train.epochs=2", *data,
              "distill.temperature=1", "distill.alpha=1", "train.batch_size=8", "device.deterministic=true", *TINY]
    histories = {}
    for store in ("0", "1024"):
        for mode in ("cached", "online"):
            run_dir = tmp_path / f"{mode}-{store}"
            result = run_tlrun([*common, f"distill.teacher_logits={mode}", f"data.in_memory_max_mb={store}",
                                f"data.cache_dir={tmp_path / ('c' + store)}", f"hydra.run.dir={run_dir}"], tmp_path)
            assert result.returncode == 0, result.stderr[-2000:]
            histories[run_dir.name] = pd.read_csv(run_dir / "ft_history.csv")
    reference = histories["online-0"]
    for name, history in histories.items():
        assert history["kd_loss"].tolist() == pytest.approx(reference["kd_loss"].tolist(), rel=1e-3), name


def test_mixup_distils_on_the_teacher_view_of_the_mixed_images():
    """Function matching: with MixUp the online teacher gets the very mixed batch the student trains on,
    the hard term uses the mixed label probabilities and accuracy is scored on their argmax."""
    from omegaconf import OmegaConf

    from tlrun.data.transforms import batch_mixer
    from tlrun.engine import Placement
    from tlrun.methods.kd import distillation_loss
    from tlrun.pipelines.distill import DistillationStep

    torch.manual_seed(0)
    samples = [(torch.rand(3, 8, 8), k % 3, k) for k in range(6)]  # (image, label, training index)
    mixer = batch_mixer(OmegaConf.create({"mixup_alpha": 1.0, "cutmix_alpha": 0.0}), num_classes=3)
    images, targets, index = mixer(samples)
    assert torch.equal(index, torch.arange(6))  # the index passes through the mixer unchanged
    assert targets.shape == (6, 3) and torch.allclose(targets.sum(1), torch.ones(6))
    unmixed = torch.stack([s[0] for s in samples])
    assert not torch.allclose(images, unmixed)

    seen = []
    teacher_net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))

    def teacher(batch_images, batch_index):
        seen.append(batch_images)
        return teacher_net(batch_images)

    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    out = DistillationStep(student, Placement(torch.device("cpu")), teacher, DistillationLoss(2.0, 0.5))(
        (images, targets, index), 0.0)
    assert torch.equal(seen[0], images)
    expected, _ = distillation_loss(student(images), teacher_net(images), targets, 2.0, 0.5)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(out.targets, targets.argmax(1))


def test_mixup_kd_runs_with_the_online_teacher_and_is_refused_with_cached_logits(tmp_path: Path, tiny_teacher: Path):
    teacher_run = tiny_teacher
    common = ["distill=kd", "model=lenet", f"distill.teacher={teacher_run}", "train.epochs=1", "data.image_size=16",
              "data.max_per_class=10", f"data.cache_dir={tmp_path / 'c'}", "data.augment.mixup_alpha=0.4", *TINY]
    refused = run_tlrun([*common, "distill.teacher_logits=cached", f"hydra.run.dir={tmp_path / 'cached'}"], tmp_path)
    assert_one_line_error(refused, "distill.teacher_logits=online")
    ran = run_tlrun([*common, f"hydra.run.dir={tmp_path / 'auto'}"], tmp_path)
    assert ran.returncode == 0, ran.stderr[-2000:]
    metrics = read_metrics(tmp_path / "auto")
    assert metrics["teacher_logits"] == "online" and metrics["teacher_logits_cache"] == "none"
    history = pd.read_csv(tmp_path / "auto" / "ft_history.csv")
    assert history["kd_loss"].iloc[0] > 0 and history["ce_loss"].iloc[0] > 0


def test_transfer_images_are_the_left_out_unlabelled_images():
    from omegaconf import OmegaConf

    from tlrun.data.splits import left_out_images, load_run_data
    from tlrun.errors import DataError

    data_cfg = OmegaConf.create({"name": "digits", "root": None, "cache_dir": None, "bad_images": "error",
                                 "classes": None, "split": [0.6, 0.2, 0.2], "max_per_class": 20})
    run = load_run_data(data_cfg, 0)
    transfer = left_out_images(data_cfg, 0, run, 300)
    used = set().union(*(split.ids for split in run.splits.values()))
    assert len(transfer) == 300 and not used & set(transfer.ids)
    assert (transfer.labels == -1).all()
    assert transfer.ids == left_out_images(data_cfg, 0, run, 300).ids  # seeded
    assert transfer.ids != left_out_images(data_cfg, 1, run, 300).ids
    assert len(left_out_images(data_cfg, 0, run, 10**6)) == 1797 - len(used)  # all that is left, no more
    data_cfg.max_per_class = None
    with pytest.raises(DataError, match="data.max_per_class"):
        left_out_images(data_cfg, 0, load_run_data(data_cfg, 0), 10)


def test_transfer_batch_joins_the_soft_term_only():
    from tlrun.engine import Placement
    from tlrun.pipelines.distill import DistillationStep

    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    labelled = (torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 1]), torch.arange(4))
    transfer = (torch.randn(6, 3, 2, 2), torch.full((6,), -1), torch.arange(6))
    teacher_logits, transfer_logits = torch.randn(4, 3), torch.randn(6, 3)
    step = DistillationStep(student, Placement(torch.device("cpu")), lambda x, i: teacher_logits[i],
                            DistillationLoss(2.0, 0.6), transfer_teacher=lambda x, i: transfer_logits[i])
    out = step((labelled, transfer), 0.0)
    logits = student(torch.cat([labelled[0], transfer[0]]))
    kd = soft_target_kl(logits, torch.cat([teacher_logits, transfer_logits]), 2.0)
    ce = torch.nn.functional.cross_entropy(logits[:4], labelled[1])
    assert out.loss.item() == pytest.approx((0.6 * kd + 0.4 * ce).item(), rel=1e-6)
    assert out.logits.shape == (4, 3) and torch.equal(out.targets, labelled[1])


def test_kd_with_transfer_images_end_to_end_and_refusals(tmp_path: Path):
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    args = [*KD_TINY, cache, "data=digits", "data.max_per_class=10", "distill.transfer_images=40"]
    first = run_tlrun([*args, f"hydra.run.dir={tmp_path / 'a'}"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    metrics = read_metrics(tmp_path / "a")
    assert metrics["transfer_images"] == 40 and metrics["teacher_logits_cache"] == "miss"
    # 40 transfer images in batches of train.batch_size: the epoch is as long as the longer set.
    assert "Transfer set: 40 unlabelled images" in (tmp_path / "a" / "tlrun.log").read_text()
    again = run_tlrun([*args, f"hydra.run.dir={tmp_path / 'b'}"], tmp_path)
    assert again.returncode == 0 and read_metrics(tmp_path / "b")["teacher_logits_cache"] == "hit"
    no_pool = run_tlrun([*KD_TINY, cache, "data=digits", "data.max_per_class=null", "distill.transfer_images=40",
                         f"hydra.run.dir={tmp_path / 'c'}"], tmp_path)
    assert_one_line_error(no_pool, "data.max_per_class")
    mixed = run_tlrun([*args, "data.augment.mixup_alpha=0.4", f"hydra.run.dir={tmp_path / 'd'}"], tmp_path)
    assert_one_line_error(mixed, "mixup_alpha=0")
    meta = run_tlrun(["distill=meta", "distill.transfer_images=40", "data=digits", *TINY,
                      f"hydra.run.dir={tmp_path / 'e'}"], tmp_path)
    assert_one_line_error(meta, "unknown key 'distill.transfer_images'", "valid keys in distill=meta")  # a KD-only key


def test_latency_is_measured_on_a_copy_of_the_model():
    from tlrun.pipelines.distill import latency_ms

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert latency_ms(model, 8, repeats=2) > 0
    assert model.training  # not switched to eval, not moved, weights and BN statistics untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
