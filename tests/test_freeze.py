"""Freeze strategies: which stages train, frozen BatchNorm stays put, discriminative learning rates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tlrun.freeze import count_params, make_plan
from tlrun.models.factory import build_model
from tlrun.pipelines.common import make_optimizer
from omegaconf import OmegaConf


def _trainable_names(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_resnet_stages_and_partial_trains_layer4():
    built = build_model("resnet18", 10, weights=None)
    plan = make_plan(built.model, built.head_name, "partial", 64)
    assert [stage[0] for stage in plan.stages] == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    prefixes = {name.split(".")[0] for name in _trainable_names(built.model)}
    assert prefixes == {"layer4", "fc"}


def test_linear_probe_counts_resnet18():
    built = build_model("resnet18", 10, weights=None)
    make_plan(built.model, built.head_name, "all", 64)
    assert count_params(p for p in built.model.parameters() if p.requires_grad) == 512 * 10 + 10


def test_mobilenet_partial_is_the_stride_32_blocks():
    built = build_model("mobilenet_v2", 10, weights=None)
    plan = make_plan(built.model, built.head_name, "partial", 32)
    assert plan.stages[-1][:5] == [f"features.{i}" for i in range(14, 19)]


def test_vit_partial_trains_last_encoder_layers():
    built = build_model("vit_b_16", 5, weights=None)
    plan = make_plan(built.model, built.head_name, "partial", 224)
    trainable = _trainable_names(built.model)
    assert any("encoder_layer_11" in n for n in trainable) and not any("encoder_layer_0." in n for n in trainable)
    assert "class_token" not in trainable and "heads.head.weight" in trainable


def test_early_freezes_first_half():
    built = build_model("resnet18", 10, weights=None)
    plan = make_plan(built.model, built.head_name, "early", 64)
    assert plan.frozen_stages == [0, 1]
    assert not any(n.startswith(("conv1", "layer1.")) for n in _trainable_names(built.model))
    assert any(n.startswith("layer2.") for n in _trainable_names(built.model))


def test_frozen_batchnorm_statistics_do_not_move():
    torch.manual_seed(0)
    built = build_model("resnet18", 4, weights=None)
    model = built.model
    plan = make_plan(model, built.head_name, "partial", 32)
    frozen_bn = model.layer1[0].bn1
    trained_bn = model.layer4[0].bn1
    before_frozen = frozen_bn.running_mean.clone()
    before_trained = trained_bn.running_mean.clone()
    cfg = OmegaConf.create({"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0})
    optimizer = make_optimizer(cfg, plan.param_groups(model, 0.1))
    plan.set_train_mode(model)
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32) * 3 + 1), torch.randint(0, 4, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.equal(frozen_bn.running_mean, before_frozen)
    assert not frozen_bn.training and trained_bn.training
    assert not torch.equal(trained_bn.running_mean, before_trained)
    # The optimizer only holds trainable parameters.
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}


def test_discriminative_learning_rates_decay_by_factor():
    built = build_model("resnet18", 10, weights=None)
    plan = make_plan(built.model, built.head_name, "discriminative", 64, lr_decay=2.6)
    groups = plan.param_groups(built.model, 1e-2)
    lrs = [g["lr"] for g in groups]
    assert lrs[-1] == pytest.approx(1e-2)  # head
    for lower, upper in zip(lrs, lrs[1:]):
        assert upper / lower == pytest.approx(2.6)
    assert sum(len(g["params"]) for g in groups) == len(list(built.model.parameters()))


def test_a_pretrained_backbone_learns_at_backbone_lr_mult_and_random_init_at_the_heads_lr(tmp_path):
    from conftest import TINY, read_metrics, run_tlrun

    built = build_model("resnet18", 10, weights=None)
    plan = make_plan(built.model, built.head_name, "partial", 64, backbone_lr_mult=0.1)
    groups = plan.param_groups(built.model, 3e-3)
    assert [group["stage"] for group in groups] == [4, 5] and [group["lr"] for group in groups] == pytest.approx([3e-4, 3e-3])
    # Through a run: ImageNet MobileNetV2 (offline weights) gets the default 0.1, a random-init LeNet 1.0.
    common = ["data=digits", "data.image_size=32", "data.max_per_class=5", "train.epochs=1", "freeze=partial", *TINY]
    for model, expected in (("model=mobilenet_v2", 0.1), ("model=lenet", 1.0)):
        result = run_tlrun([model, *common, f"hydra.run.dir={tmp_path / model}"], tmp_path)
        assert result.returncode == 0, result.stderr
        assert read_metrics(tmp_path / model)["backbone_lr_mult"] == expected


def test_lp_ft_trains_the_head_alone_first_then_the_whole_network(tmp_path):
    """freeze=none + head_warmup_epochs=1: epoch 1 is exactly the linear probe's epoch 1 (same head updates,
    frozen BatchNorm), epoch 2 moves the backbone."""
    from conftest import TINY, run_tlrun
    import pandas as pd

    common = ["model=small_resnet", "data=digits", "data.image_size=16", "data.max_per_class=12", "train.epochs=2",
              "train.cache_features=off", *TINY]
    runs = {"lp": ["freeze=all"], "lpft": ["freeze=none", "freeze.head_warmup_epochs=1"], "ft": ["freeze=none"]}
    for name, args in runs.items():
        result = run_tlrun([*common, *args, f"hydra.run.dir={tmp_path / name}"], tmp_path)
        assert result.returncode == 0, result.stderr
    history = {name: pd.read_csv(tmp_path / name / "ft_history.csv") for name in runs}
    columns = ["train_loss", "train_acc", "val_loss", "val_acc"]
    assert history["lpft"].loc[0, columns].tolist() == history["lp"].loc[0, columns].tolist()
    assert history["lpft"].loc[0, "train_loss"] != history["ft"].loc[0, "train_loss"]
    states = {name: torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)["model"] for name in runs}
    backbone = [key for key in states["lp"] if not key.startswith("fc.") and states["lp"][key].is_floating_point()]
    assert any(not torch.equal(states["lpft"][key], states["lp"][key]) for key in backbone)  # epoch 2 trained it


def test_lp_ft_longer_than_the_run_is_refused_and_writes_nothing(tmp_path):
    from conftest import TINY, assert_one_line_error, run_tlrun

    result = run_tlrun(["model=lenet", "freeze=none", "freeze.head_warmup_epochs=4", "train.epochs=4", *TINY], tmp_path)
    assert_one_line_error(result, "freeze.head_warmup_epochs=4 leaves none of train.epochs=4")
    assert result.returncode == 2 and list(tmp_path.iterdir()) == []
