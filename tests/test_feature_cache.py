"""Feature cache for frozen backbones: same training with and without it, keys that never go stale,
auto mode that steps aside for random augmentation, models that do not split cleanly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import TINY, assert_one_line_error, read_metrics, run_tlrun
from tlrun.config import TlrunConfig
from tlrun.data.datasets import ImageDataset
from tlrun.data.sources import ImageSet
from tlrun.data.transforms import ImageGeometry, build_transform
from tlrun.engine import Placement
from tlrun.errors import ConfigError
from tlrun.feature_cache import build_feature_cache, forward_from_features, plan_cut, prefix_output
from tlrun.freeze import make_plan
from tlrun.models.factory import build_model

FOLDER_RUN = ["model=mobilenet_v2", "data=imagefolder", "data.image_size=32", "train.epochs=2",
              "train.batch_size=8", *TINY]


# partial: one batch per epoch. Several steps of a BatchNorm stage on 2x2 maps amplify float rounding
# (batch-size-dependent conv kernels) as much as device.threads=1 vs 2 does, cache or no cache.
@pytest.mark.parametrize("freeze, batch_and_size", [("all", ["train.batch_size=8"]),
                                                    ("partial", ["train.batch_size=32", "data.image_size=64"])])
def test_cache_on_and_off_train_identically_and_save_the_whole_model(tmp_path: Path, image_folder: Path,
                                                                     freeze: str, batch_and_size: list):
    from tlrun.artifacts import load_run_model

    runs = {}
    # partial keeps MobileNetV2's dropout in the trained suffix: the random stream must match too.
    for mode in ("off", "on", "disk"):
        run_dir = tmp_path / mode
        options = ["train.cache_features=on", "train.cache_features_memory_mb=0"] if mode == "disk" else \
            [f"train.cache_features={mode}"]
        result = run_tlrun([*FOLDER_RUN, *batch_and_size, f"freeze={freeze}", f"data.root={image_folder}", *options,
                            f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"], tmp_path)
        assert result.returncode == 0, result.stderr
        runs[mode] = run_dir
    off, on, disk = (pd.read_csv(runs[m] / "ft_history.csv") for m in ("off", "on", "disk"))
    columns = ["train_loss", "train_acc", "val_loss", "val_acc"]
    np.testing.assert_allclose(on[columns].to_numpy(), off[columns].to_numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(disk[columns].to_numpy(), off[columns].to_numpy(), rtol=1e-5, atol=1e-6)
    metrics = {m: read_metrics(d) for m, d in runs.items()}
    assert metrics["on"]["test_acc"] == metrics["off"]["test_acc"]
    assert metrics["off"]["feature_cache"] == {"mode": "off", "reason": "train.cache_features=off"}
    assert metrics["on"]["feature_cache"]["cut"] == ("head:classifier.1" if freeze == "all" else "blocks:features.13")
    assert metrics["on"]["feature_cache"]["train"]["storage"] == "memory"
    assert metrics["disk"]["feature_cache"]["train"]["storage"] == "disk"
    assert metrics["disk"]["feature_cache"]["train"]["status"] == "hit"  # same key as the "on" run
    # ft_model.pt is the whole network (prefix + suffix) and equals the one trained on images.
    saved_on = torch.load(runs["on"] / "ft_model.pt", weights_only=False)["state_dict"]
    saved_off = torch.load(runs["off"] / "ft_model.pt", weights_only=False)["state_dict"]
    assert saved_on.keys() == saved_off.keys()
    for key in saved_on:
        torch.testing.assert_close(saved_on[key], saved_off[key], rtol=1e-4, atol=1e-5)
    model = load_run_model(runs["on"]).model
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 3)


def _tiny_setup(tmp_path: Path, pixels: torch.Tensor, geometry: ImageGeometry, seed: int = 0):
    cfg = OmegaConf.structured(TlrunConfig)
    cfg.model.name, cfg.data.cache_dir, cfg.freeze.strategy = "small_resnet", str(tmp_path / "cache"), "partial"
    torch.manual_seed(seed)
    built = build_model("small_resnet", 3, None, None)
    plan = make_plan(built.model, built.head_name, "partial", geometry.crop_size)
    labels = np.arange(len(pixels)) % 3
    transform = build_transform(geometry, None, train=False)
    dataset = ImageDataset(ImageSet(labels, pixels=pixels), transform)
    return cfg, built.model, plan, dataset


def _status(cfg, model, plan, dataset, geometry) -> str:
    cache, info = build_feature_cache(cfg, model, plan, Placement(torch.device("cpu")), geometry.crop_size,
                                      dataset, dataset, 0)
    assert cache is not None, info
    return info["train"]["status"]


def test_cache_key_changes_with_weights_transforms_and_data(tmp_path: Path):
    pixels = torch.randint(0, 256, (10, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    geometry = ImageGeometry(16, 16, (0.5,) * 3, (0.25,) * 3)
    cfg, model, plan, dataset = _tiny_setup(tmp_path, pixels, geometry)
    assert _status(cfg, model, plan, dataset, geometry) == "miss"
    assert _status(cfg, model, plan, dataset, geometry) == "hit"
    # The trained suffix's weights are not part of the key ...
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    assert _status(cfg, model, plan, dataset, geometry) == "hit"
    # ... the frozen prefix's are.
    with torch.no_grad():
        next(model.get_submodule(plan.frozen_modules[0]).parameters()).mul_(1.01)
    assert _status(cfg, model, plan, dataset, geometry) == "miss"
    # Transforms: another normalisation.
    dataset.transform = build_transform(ImageGeometry(16, 16, (0.4,) * 3, (0.25,) * 3), None, train=False)
    assert _status(cfg, model, plan, dataset, geometry) == "miss"
    # Data: one pixel of one image.
    dataset.images.pixels[3, 0, 5, 5] ^= 1
    assert _status(cfg, model, plan, dataset, geometry) == "miss"
    # Each miss wrote the features the prefix gives now.
    features = np.load(sorted((tmp_path / "cache" / "features").glob("*-train-*.npy"), key=os.path.getmtime)[-1])
    model.eval()
    cut = plan_cut(cfg, model, plan, Placement(torch.device("cpu")), 16)[0]
    expected = prefix_output(model, cut, torch.stack([dataset[i][0] for i in range(len(dataset))]))
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_files_are_keyed_by_content(tmp_path: Path, image_folder: Path):
    from tlrun.cache import images_digest
    from tlrun.data.imagefolder import scan_split

    _, images = scan_split(image_folder, None, "error")
    before = images_digest(images)
    assert images_digest(images) == before
    path = images.paths[0]
    path.write_bytes(path.read_bytes() + b"\0")  # same name, new content
    assert images_digest(images) != before


class Tokens(nn.Module):
    """A ViT-like forward: reshaping glue between blocks, so no cut after a frozen block is exact."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.mix1, self.mix2, self.mix3, self.mix4 = (nn.Linear(8, 8) for _ in range(4))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2) + 1.0
        x = self.mix4(self.mix3(self.mix2(torch.relu(self.mix1(x)))))
        return self.head(x.mean(1))


def test_model_that_does_not_split_cleanly_trains_on_images(tmp_path: Path):
    model = Tokens()
    plan = make_plan(model, "head", "partial", 16)
    cfg = OmegaConf.structured(TlrunConfig)
    placement = Placement(torch.device("cpu"))
    cut, reason = plan_cut(cfg, model, plan, placement, 16)
    assert cut is None and "does not split cleanly" in reason
    cfg.train.cache_features = "on"
    with pytest.raises(ConfigError, match="train.cache_features=on but Tokens's forward does not split cleanly"):
        plan_cut(cfg, model, plan, placement, 16)
    # freeze=all cuts at the head's input, which this model feeds straight to its output.
    plan_all = make_plan(model, "head", "all", 16)
    cut, _ = plan_cut(cfg, model, plan_all, placement, 16)
    assert cut is not None and cut.kind == "head"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        features = prefix_output(model.eval(), cut, x)
        with forward_from_features(model, cut):
            from_features = model(features)
        torch.testing.assert_close(from_features, model(x))
    assert "forward" not in vars(model)  # the full forward is back


def test_auto_turns_itself_off_with_random_augmentation(tmp_path: Path, image_folder: Path):
    run_dir = tmp_path / "run"
    result = run_tlrun([*FOLDER_RUN, "freeze=all", f"data.root={image_folder}", "train.epochs=1",
                        "data.augment.hflip=true", f"data.cache_dir={tmp_path / 'cache'}",
                        f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr
    log = (run_dir / "tlrun.log").read_text()
    assert "Feature cache off: data.augment.hflip draw random transforms" in log
    assert read_metrics(run_dir)["feature_cache"]["mode"] == "off"
    assert not (tmp_path / "cache" / "features").exists()


@pytest.mark.parametrize("overrides, needle", [
    (["freeze=all", "data.augment.rotation=10"], "train.cache_features=on but data.augment.rotation draw random"),
    (["freeze=none"], "needs a frozen backbone, but freeze=none"),
    (["freeze=all", "distill=kd"], "serves fine-tuning runs only"),
])
def test_cache_on_that_cannot_hold_is_one_line(tmp_path: Path, overrides: list, needle: str):
    result = run_tlrun(["train.cache_features=on", *overrides, *TINY], tmp_path)
    assert_one_line_error(result, needle)
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("metrics.json"))
