"""Tiny hand-built detector and segmenter whose answers are known (helpers for test_detection*.py and
test_segmentation*.py; no tests here).

Both see colour through a 1x1 convolution with set weights: channel 0 is "redness" ``relu(R - G - B)``, channel 1
"greenness" ``relu(G - R - B)``. The detector is a torchvision :class:`~torchvision.models.detection.SSD` on a
64 x 64 input with one 8 x 8 feature map (average-pooled colour), whose class-1 logit at an anchor is
``10 * redness`` of the anchor's cell and class-2 logit ``10 * greenness`` (background: a constant 1), and whose box
regression is zero (boxes = anchors). The segmenter's class-1 / class-2 logits are ``10 * redness`` /
``10 * greenness`` per pixel, the background logit a constant 0.5.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

RED = (8, 8, 24, 24)  # x0, y0, x1, y1: a red square on a black 64 x 64 photo (two by two 8-px cells)
GREEN = (40, 40, 56, 56)


def colour_conv() -> nn.Conv2d:
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0]]).view(2, 3, 1, 1))
        conv.bias.zero_()
    return conv


def two_squares(size: int = 64) -> torch.Tensor:
    """A black ``[0, 1]`` photo with the red and green squares."""
    x = torch.zeros(3, size, size)
    x0, y0, x1, y1 = RED
    x[0, y0:y1, x0:x1] = 1.0
    x0, y0, x1, y1 = GREEN
    x[1, y0:y1, x0:x1] = 1.0
    return x


class _Features(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(colour_conv(), nn.ReLU(), nn.AvgPool2d(8))
        self.out_channels = 2

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict([("0", self.body(x))])


def tiny_detector() -> nn.Module:
    """The hand-built SSD (3 classes: background, red, green)."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD, SSDHead

    anchors = DefaultBoxGenerator([[]], min_ratio=0.2, max_ratio=0.4)
    per_location = anchors.num_anchors_per_location()
    head = SSDHead([2], per_location, 3)
    with torch.no_grad():
        cls = head.classification_head.module_list[0]
        cls.weight.zero_()
        cls.bias.zero_()
        for a in range(per_location[0]):
            cls.bias[a * 3] = 1.0
            cls.weight[a * 3 + 1, 0, 1, 1] = 10.0
            cls.weight[a * 3 + 2, 1, 1, 1] = 10.0
        reg = head.regression_head.module_list[0]
        reg.weight.zero_()
        reg.bias.zero_()
    model = SSD(_Features(), anchors, (64, 64), 3, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
                head=head, score_thresh=0.5, detections_per_img=10)
    return model.eval()


class TinySegmenter(nn.Module):
    """Per-pixel classes from colour (see the module docstring); returns ``{"out": logits}``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(colour_conv(), nn.ReLU())
        self.classifier = nn.Conv2d(2, 3, 1)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]).view(3, 2, 1, 1))
            self.classifier.bias.copy_(torch.tensor([0.5, 0.0, 0.0]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.classifier(self.features(x))}


def box_mean(map_: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = box
    return float(map_[y0:y1, x0:x1].mean())
