"""Detections and which of them to explain; segmentation class targets.

A detector's output for one photo is a list of :class:`Detection` sorted by confidence (the detector's own order).
A :class:`DetectionRequest` chooses from it, in one of three ways:

* by rank (``ranks=(0,)``, the default: the most confident detection; ``--detection 1`` on the command line);
* by class and box: the detection of class ``label`` (any class when ``None``) whose box overlaps ``box`` with
  IoU >= ``min_iou`` (0.5 by default), the best-overlapping one when several do;
* by score: every detection whose confidence is at least ``score_threshold``.

What is explained for a chosen detection (``component``): ``"score"``, its class logit (see
:mod:`explain.detection.engine` for the exact definition per detector family), or one of its box coordinates
``"x0"``, ``"y0"``, ``"x1"``, ``"y1"`` (in photo pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from explain.errors import TargetError, UsageError

__all__ = ["BOX_COMPONENTS", "Detection", "DetectionRequest", "box_coverage", "box_iou", "iou_matrix", "parse_box",
           "select_detections"]

#: What can be explained of a detection: its class score, or a coordinate of its box.
BOX_COMPONENTS = ("score", "x0", "y0", "x1", "y1")


@dataclass(frozen=True)
class Detection:
    """One detection of a detector, traced back to the candidate it came from.

    Attributes:
        image_index: position of the photo in the batch.
        rank: 0-based position in the detector's output (sorted by confidence, best first).
        label: class index (for torchvision detectors 0 is the background class, never detected).
        score: the detector's confidence (softmax probability for R-CNN and SSD, sigmoid for RetinaNet,
            ``sqrt(sigmoid(class) * sigmoid(centerness))`` for FCOS).
        box: ``(x0, y0, x1, y1)`` in photo pixels.
        source: the candidate row the detection came from: the RoI (proposal) index for R-CNN, the anchor
            (location) index, all feature levels concatenated, for the one-stage detectors.
    """

    image_index: int
    rank: int
    label: int
    score: float
    box: tuple[float, float, float, float]
    source: int


@dataclass(frozen=True)
class DetectionRequest:
    """Which detections of each photo to explain, and what of them.

    Attributes:
        ranks: 0-based ranks to explain (used when neither ``box`` nor ``score_threshold`` is given).
        label: with ``box``: the class the detection must have (``None``: any class).
        box: ``(x0, y0, x1, y1)`` in photo pixels that the detection must overlap.
        min_iou: the overlap ``box`` needs (intersection over union).
        score_threshold: explain every detection with confidence >= this.
        component: ``"score"`` or a box coordinate (:data:`BOX_COMPONENTS`).
    """

    ranks: tuple[int, ...] = (0,)
    label: int | None = None
    box: tuple[float, float, float, float] | None = None
    min_iou: float = 0.5
    score_threshold: float | None = None
    component: str = "score"

    def __post_init__(self) -> None:
        if self.component not in BOX_COMPONENTS:
            raise UsageError(f"unknown detection component {self.component!r}: "
                             f"choose one of {', '.join(BOX_COMPONENTS)}")
        if not self.ranks and self.box is None and self.score_threshold is None:
            raise UsageError("no detection chosen: give a rank, a box or a score threshold")
        if any(r < 0 for r in self.ranks):
            raise UsageError("detection ranks start at 1 on the command line (0 in the library)")
        if not 0.0 < self.min_iou <= 1.0:
            raise UsageError(f"the IoU a box needs must lie in (0, 1] (got {self.min_iou})")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (x1 > x0 and y1 > y0):
                raise UsageError(f"box {list(self.box)} is empty: give x0,y0,x1,y1 with x1 > x0 and y1 > y0")

    @property
    def mode(self) -> str:
        """``"box"``, ``"threshold"`` or ``"rank"``."""
        return "box" if self.box is not None else ("threshold" if self.score_threshold is not None else "rank")

    def describe(self) -> str:
        """A phrase for notes, e.g. ``"rank 1"`` or ``"class 3 overlapping [10, 10, 50, 50] with IoU >= 0.5"``."""
        if self.mode == "box":
            what = "a detection" if self.label is None else f"a detection of class {self.label}"
            return f"{what} overlapping {[round(v, 1) for v in self.box or ()]} with IoU >= {self.min_iou:g}"
        if self.mode == "threshold":
            return f"a detection with score >= {self.score_threshold:g}"
        return "detection rank " + ", ".join(str(r + 1) for r in self.ranks)


def _overlaps(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(inter (len(a), len(b)), area_a, area_b)`` of two sets of ``(x0, y0, x1, y1)`` boxes, in float64."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    return iw * ih, (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), 0.0)


def iou_matrix(a: Any, b: Any) -> np.ndarray:
    """``(len(a), len(b))`` IoU of two sets of ``(x0, y0, x1, y1)`` boxes (0 for disjoint or empty boxes)."""
    inter, area_a, area_b = _overlaps(a, b)
    return _ratio(inter, area_a[:, None] + area_b[None, :] - inter)


def box_coverage(dets: Any, regions: Any) -> np.ndarray:
    """``(D, R)``: the share of each detection's area inside each region (COCO's crowd overlap)."""
    inter, area, _ = _overlaps(dets, regions)
    return _ratio(inter, area[:, None])


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 for disjoint or empty boxes)."""
    return float(iou_matrix(a, b)[0, 0])


def select_detections(detections: Sequence[Detection], request: DetectionRequest) -> tuple[list[Detection], str | None]:
    """The detections of one photo that ``request`` chooses, and a note when it chooses none.

    Returns:
        ``(chosen, note)``: ``chosen`` in rank order (box mode: the single best-overlapping detection);
        ``note`` is ``None`` when something was chosen, else why nothing was (never an exception: a photo without
        a matching detection is a result, not an error).
    """
    if not detections:
        return [], "the detector found nothing above its candidate threshold"
    if request.mode == "box":
        assert request.box is not None
        scored = [(box_iou(d.box, request.box), d.score, d) for d in detections
                  if request.label is None or d.label == request.label]
        best = [s for s in scored if s[0] >= request.min_iou]
        if not best:
            top = max((s[0] for s in scored), default=0.0)
            return [], f"no {request.describe()[2:]} (best IoU {top:.2f})"
        return [max(best, key=lambda s: (s[0], s[1]))[2]], None
    if request.mode == "threshold":
        chosen = [d for d in detections if d.score >= float(request.score_threshold or 0.0)]
        return chosen, None if chosen else f"no {request.describe()[2:]} (best {detections[0].score:.3g})"
    chosen = [detections[r] for r in request.ranks if r < len(detections)]
    missing = [r + 1 for r in request.ranks if r >= len(detections)]
    note = f"only {len(detections)} detection(s): no rank {', '.join(map(str, missing))}" if missing else None
    return chosen, note


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` (commas or spaces) -> a box in photo pixels.

    Raises:
        TargetError: not four numbers, or an empty box.
    """
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise TargetError(f"--box must be four numbers x0,y0,x1,y1 in photo pixels, got {text!r}")
    x0, y0, x1, y1 = values
    if not (x1 > x0 and y1 > y0):
        raise TargetError(f"--box {text!r} is empty: x1 must exceed x0 and y1 must exceed y0")
    return x0, y0, x1, y1
