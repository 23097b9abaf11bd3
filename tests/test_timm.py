"""timm backbones: stages from feature_info, head via reset_classifier, weights through timm's loader,
preprocessing from timm's data config, and the run folder / predict / rank on a timm model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import TINY, assert_one_line_error, read_metrics, run_tlrun
from tlrun.freeze import count_params, make_plan
from tlrun.models.factory import build_model, build_source_model

timm = pytest.importorskip("timm")

DIGITS = ["data=digits", "data.image_size=32", "data.max_per_class=10", "train.epochs=1", *TINY]


def trainable(model: torch.nn.Module) -> int:
    return count_params(p for p in model.parameters() if p.requires_grad)


def params_of(model: torch.nn.Module, *names: str) -> int:
    return sum(count_params(model.get_submodule(name).parameters()) for name in names)


def test_resnet18_linear_probe_trains_the_head_only_and_uses_the_feature_cache(tmp_path: Path):
    result = run_tlrun(["model=timm", "model.name=resnet18", "model.weights=null", "freeze=all", *DIGITS,
                        f"hydra.run.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}"], tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = read_metrics(tmp_path / "run")
    assert metrics["model"] == "timm/resnet18" and metrics["params_trainable"] == 512 * 10 + 10
    assert metrics["feature_cache"]["mode"] == "on" and metrics["feature_cache"]["cut"] == "head:fc"
    assert metrics["freeze_stages"] == 5  # act1 (stem), layer1..layer4: timm's feature_info


@pytest.mark.parametrize("name, last_stage", [
    ("test_convnext", ["stages.3", "norm_pre", "head.norm"]),
    ("test_efficientnet", ["blocks.4", "conv_head", "bn2"]),
])
def test_partial_trains_exactly_the_last_feature_stage_and_the_head(name: str, last_stage: list[str]):
    built = build_model(f"timm/{name}", 10, weights=None)
    plan = make_plan(built.model, built.head_name, "partial", 64)
    assert [stage[-1] for stage in plan.stages[:-1]] == [level["module"] for level in built.model.feature_info][:-1]
    assert trainable(built.model) == params_of(built.model, *last_stage, built.head_name)
    assert built.model.get_classifier().out_features == 10  # timm's own reset_classifier


def test_timm_vit_is_cut_block_by_block_and_discriminative_gives_each_block_its_lr():
    built = build_model("timm/test_vit", 5, weights=None)
    plan = make_plan(built.model, built.head_name, "discriminative", 160, lr_decay=2.0)
    depth = len(built.model.blocks)
    assert len(plan.stages) == depth and plan.stages[0][0] == "patch_embed"
    lrs = [group["lr"] for group in plan.param_groups(built.model, 1.0)]
    assert lrs == [2.0 ** -(depth - index) for index in range(depth)] + [1.0]


def test_weights_path_reproduces_the_saved_models_logits(tmp_path: Path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    saved = timm.create_model("test_convnext", pretrained=False, num_classes=7).eval()
    images = torch.randn(2, 3, 64, 64)
    save_file(saved.state_dict(), str(tmp_path / "weights.safetensors"))
    torch.save({"state_dict": saved.state_dict()}, tmp_path / "weights.pth")
    for file in ("weights.safetensors", "weights.pth"):
        built = build_source_model("timm/test_convnext", weights_path=str(tmp_path / file))
        assert built.weights_source == "weights_path" and built.head_name == "head.fc"
        assert torch.equal(built.model.eval()(images), saved(images))
    # The same file fine-tuned through tlrun: pretrained body, new 10-class head.
    result = run_tlrun(["model=timm", "model.name=test_convnext", f"model.weights_path={tmp_path / 'weights.pth'}",
                        "freeze=all", *DIGITS, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = read_metrics(tmp_path / "run")
    assert metrics["weights_source"] == "weights_path" and metrics["backbone_lr_mult"] == 0.1
    state = torch.load(tmp_path / "run" / "ft_model.pt", weights_only=True)["state_dict"]
    assert torch.equal(state["stages.0.blocks.0.conv_dw.weight"], saved.state_dict()["stages.0.blocks.0.conv_dw.weight"])


def test_preprocessing_follows_timms_data_config_unless_data_overrides_it(tmp_path: Path):
    built = build_source_model("timm/test_vit", weights=None)
    config = timm.data.resolve_model_data_config(built.model)
    assert built.preprocess.crop_size == config["input_size"][-1] == 160
    assert built.preprocess.mean == config["mean"] and built.preprocess.interpolation == "bicubic"
    result = run_tlrun(["model=timm", "model.name=test_vit", "model.weights=null", "freeze=all", "data=digits",
                        "data.max_per_class=5", "data.image_size=null", "train.epochs=1", *TINY,
                        f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert read_metrics(tmp_path / "run")["image_size"] == 160


@pytest.mark.parametrize("args, needles", [
    (["model.name=test_convnext.r160_in1k"], ["pretrained timm weights for test_convnext.r160_in1k not found",
                                               "model.weights_path=", "model.weights=null"]),
    (["model.name=resnt18", "model.weights=null"], ["unknown timm model 'resnt18'", "did you mean resnet18"]),
    (["model.name=resnet18.no_such_tag"], ["no pretrained tag 'no_such_tag'", "a1_in1k"]),
    (["model.name=resnet18", "model.weights=IMAGENET1K_V1"], ["timm picks weights by the name's tag"]),
    (["model.name=test_convnext", "model.weights_path=/nonexistent/w.safetensors"], ["model.weights_path"]),
])
def test_timm_model_errors_are_one_line_and_leave_no_run_folder(tmp_path: Path, args: list[str], needles: list[str]):
    result = run_tlrun(["model=timm", *args, "freeze=all", *DIGITS], tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("metrics.json"))


def test_predict_and_rank_accept_timm_models(tmp_path: Path):
    from tlrun.predict_cli import main as predict_main
    from tlrun.rank_cli import main as rank_main

    run = tmp_path / "run"
    result = run_tlrun(["model=timm", "model.name=test_efficientnet", "model.weights=null", "freeze=all", *DIGITS,
                        f"hydra.run.dir={run}"], tmp_path)
    assert result.returncode == 0, result.stderr
    with pytest.raises(SystemExit) as done:
        predict_main([str(run), "split:test", "--out", str(tmp_path / "pred"), "--threads", "1"])
    assert done.value.code == 0
    predicted = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert predicted["accuracy"] == read_metrics(run)["test_acc"]  # rebuilt from ft_model.pt's timm/ id
    with pytest.raises(SystemExit) as done:
        rank_main(["digits", "--models", "timm/test_efficientnet:null", "timm/test_convnext:null", "--image-size",
                   "32", "--max-per-class", "6", "--out", str(tmp_path / "rank"), "--threads", "1"])
    assert done.value.code == 0
    table = pd.read_csv(tmp_path / "rank" / "rank.csv")
    assert set(table["model"]) == {"timm/test_efficientnet", "timm/test_convnext"}
    dims = dict(zip(table["model"], table["feature_dim"]))  # the head's input of each timm model
    assert dims == {f"timm/{name}": timm.create_model(name).num_features
                    for name in ("test_efficientnet", "test_convnext")}
