"""Meta-distillation: episodes, the functional MAML inner loop, ProtoNet, and tiny end-to-end runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import TINY, assert_one_line_error, read_metrics, run_dirs, run_tlrun
from tlrun.data.datasets import ImageDataset
from tlrun.data.episodes import EpisodeSampler
from tlrun.data.sources import ImageSet
from tlrun.data.splits import load_run_data
from tlrun.data.transforms import ImageGeometry, build_transform
from tlrun.errors import ConfigError, DataError
from tlrun.methods.maml import adapt, forward_with, trainable_params
from tlrun.methods.protonet import class_prototypes, prototype_head, prototype_logits
from tlrun.models.small import SMALL_PREPROCESS, Conv4
from tlrun.pipelines.meta import split_classes, use_batch_statistics


def digits_dataset(size: int = 16) -> ImageDataset:
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    pixels = torch.as_tensor(images.reshape(-1, 1, 8, 8) * 255 / 16, dtype=torch.uint8)
    geometry = ImageGeometry(crop_size=size, resize_size=size, mean=SMALL_PREPROCESS.mean, std=SMALL_PREPROCESS.std,
                             interpolation=SMALL_PREPROCESS.interpolation)
    return ImageDataset(ImageSet(labels=labels, pixels=pixels), build_transform(geometry, None, train=False))


@pytest.fixture(scope="module")
def episode():
    sampler = EpisodeSampler(digits_dataset(), [5, 6, 7, 8, 9], n_way=5, k_shot=5, n_query=10, seed=0)
    return sampler.sample()


def small_student(seed: int = 0) -> Conv4:
    torch.manual_seed(seed)
    model = Conv4(num_classes=5, width=8)
    use_batch_statistics(model)
    return model


def test_episode_shapes_labels_and_disjoint_sets(episode):
    assert episode.support_x.shape == (25, 3, 16, 16) and episode.query_x.shape == (50, 3, 16, 16)
    assert episode.support_y.tolist() == [k for k in range(5) for _ in range(5)]
    assert sorted(episode.classes) == [5, 6, 7, 8, 9]
    assert not set(episode.support_index.tolist()) & set(episode.query_index.tolist())
    labels = digits_dataset().images.labels
    assert [labels[i] for i in episode.support_index.tolist()] == [episode.classes[k] for k in episode.support_y]


def test_sampler_refuses_too_few_classes_or_images():
    dataset = digits_dataset()
    with pytest.raises(DataError, match="need 5 classes"):
        EpisodeSampler(dataset, [0, 1, 2], n_way=5, k_shot=1, n_query=5, seed=0)
    with pytest.raises(DataError, match="too few"):
        EpisodeSampler(dataset, range(10), n_way=5, k_shot=200, n_query=5, seed=0)


def test_inner_loop_lowers_the_query_loss(episode):
    """The adapted weights are used: query loss after 10 support steps is below the loss before."""
    model = small_student()
    params = trainable_params(model)
    with torch.no_grad():
        before = F.cross_entropy(forward_with(model, params, episode.query_x), episode.query_y).item()
    adapted, inner = adapt(model, params, episode.support_x, lambda z: F.cross_entropy(z, episode.support_y),
                           steps=10, lr=0.5, first_order=True)
    with torch.no_grad():
        after = F.cross_entropy(forward_with(model, adapted, episode.query_x), episode.query_y).item()
    assert inner[-1] < inner[0]
    assert after < before - 0.1, (before, after)
    assert all(torch.equal(p, model.state_dict()[name]) for name, p in params.items())  # θ itself untouched


def meta_gradient(episode, first_order: bool) -> dict[str, torch.Tensor]:
    model = small_student()
    params = trainable_params(model)
    adapted, _ = adapt(model, params, episode.support_x, lambda z: F.cross_entropy(z, episode.support_y),
                       steps=2, lr=0.1, first_order=first_order)
    loss = F.cross_entropy(forward_with(model, adapted, episode.query_x), episode.query_y)
    grads = torch.autograd.grad(loss, list(params.values()))
    return dict(zip(params, grads)), adapted


def test_second_order_meta_gradient_differs_from_first_order(episode):
    second, _ = meta_gradient(episode, first_order=False)
    first, adapted = meta_gradient(episode, first_order=True)
    assert all(torch.isfinite(g).all() for g in second.values())
    differences = [float((second[k] - first[k]).norm() / (first[k].norm() + 1e-12)) for k in first]
    assert max(differences) > 1e-3  # the Hessian term is really there
    # First order: the meta-gradient is the query gradient at the adapted weights, taken as constants.
    model = small_student()
    constants = {k: v.detach().requires_grad_(True) for k, v in adapted.items()}
    loss = F.cross_entropy(forward_with(model, constants, episode.query_x), episode.query_y)
    expected = torch.autograd.grad(loss, list(constants.values()))
    for (name, got), want in zip(first.items(), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_prototypes_and_prototype_head_agree():
    torch.manual_seed(0)
    features, labels = torch.randn(12, 7), torch.arange(3).repeat_interleave(4)
    prototypes = class_prototypes(features, labels, 3)
    normalised = F.normalize(features, dim=1)
    torch.testing.assert_close(prototypes[1], normalised[4:8].mean(0))
    logits = prototype_logits(features, prototypes, scale=10.0)
    torch.testing.assert_close(logits[0, 2], -10.0 * (normalised[0] - prototypes[2]).pow(2).sum())
    head_logits = prototype_head(prototypes, scale=10.0)(normalised)
    torch.testing.assert_close(head_logits.softmax(1), logits.softmax(1), rtol=1e-4, atol=1e-5)


def test_class_split_defaults_to_the_last_half_and_checks_names():
    classes = [str(i) for i in range(10)]
    split = split_classes(classes, None, n_way=5)
    assert split.train == [0, 1, 2, 3, 4] and split.test == [5, 6, 7, 8, 9]
    assert split_classes(classes, [0, 2, 4, 6, 8], n_way=5).test == [0, 2, 4, 6, 8]
    with pytest.raises(ConfigError, match="names 11"):
        split_classes(classes, [11, 1, 2, 3, 4], n_way=5)
    with pytest.raises(ConfigError, match="at least 5 on each side"):
        split_classes(classes, [0, 1, 2, 3, 4, 5, 6], n_way=5)


def test_data_classes_keeps_and_relabels_a_subset():
    cfg = OmegaConf.create({"name": "digits", "root": None, "cache_dir": None, "bad_images": "error",
                            "split": [0.7, 0.15, 0.15], "max_per_class": None, "classes": [7, 3]})
    data = load_run_data(cfg, seed=0)
    assert data.classes == ["3", "7"]
    assert set(np.unique(data.splits["train"].labels)) == {0, 1}
    cfg.classes = [3, 12]
    with pytest.raises(DataError, match="names 12"):
        load_run_data(cfg, seed=0)


META_TINY = ["distill=meta", "model=conv4", "data.image_size=16", "data.max_per_class=30", "train.epochs=1",
             "distill.episodes_per_epoch=4", "distill.meta_batch=2", "distill.n_query=3", "distill.k_shot=2",
             "distill.eval_shots=[1,2]", "distill.eval_episodes=3", "distill.val_episodes=2", "distill.inner_steps=1",
             "distill.eval_inner_steps=2", "distill.teacher_model=lenet", "distill.teacher_epochs=1", *TINY]


@pytest.mark.parametrize("mode", ["meta_distill", "maml", "protonet", "kd_finetune"])
def test_meta_modes_end_to_end(tmp_path, mode):
    result = run_tlrun([*META_TINY, f"distill.meta_mode={mode}", f"data.cache_dir={tmp_path / 'cache'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    metrics = read_metrics(run_dir)
    assert metrics["meta_mode"] == mode and metrics["meta_test_classes"] == ["5", "6", "7", "8", "9"]
    assert set(metrics["few_shot"]) == {"5way_1shot", "5way_2shot"}
    assert metrics["few_shot"]["5way_2shot"]["episodes"] == 3
    predictions = pd.read_csv(run_dir / "few_shot_predictions.csv")
    # test_acc is the headline (k_shot, else the last evaluated) shots' accuracy over the episodes' queries.
    shots = metrics["k_shot"] if metrics["k_shot"] in (1, 2) else 2
    headline = predictions[predictions["shots"] == shots]
    assert metrics["test_acc"] == pytest.approx((headline["true_class"] == headline["predicted_class"]).mean())
    assert list(predictions.columns) == ["shots", "episode", "query", "true_class", "predicted_class", "confidence"]
    assert len(predictions) == 2 * 3 * 5 * 3  # shots settings × episodes × ways × queries
    assert set(predictions["true_class"].astype(str)) <= {"5", "6", "7", "8", "9"}
    assert (mode == "maml") == ("teacher" not in metrics)
    assert (run_dir / "ft_history.csv").is_file() == (mode != "protonet")
    if mode in ("meta_distill", "maml"):
        history = pd.read_csv(run_dir / "ft_history.csv")
        assert {"inner_loss_first", "inner_loss_last", "val_acc"} <= set(history.columns)


def test_meta_with_too_many_ways_is_one_line(tmp_path):
    result = run_tlrun([*META_TINY, "distill.n_way=6"], tmp_path)
    assert_one_line_error(result, "6-way episodes need at least 6")
    assert run_dirs(tmp_path) == []
