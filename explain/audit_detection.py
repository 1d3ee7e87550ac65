"""``cnn-explain audit --task detection``: a dataset audit of an object detector, one record per ground-truth object.

The runner, its resumable journal and the input parsing are the classifier audit's (:mod:`explain.audit`,
:mod:`explain.audit_inputs`); this module holds the detection task and its summaries, and
:mod:`explain.audit_detection_outputs` writes the files.

Ground truth (``--boxes``): a CSV ``path,x0,y0,x1,y1,class`` (``class`` a name or index of the model's classes, or
absent for class-agnostic matching; optional ``object_id``; a row with empty coordinates lists an image without
objects) or a COCO JSON file (``images``, ``annotations[].bbox = [x, y, w, h]``, ``categories`` whose names are
resolved against the model's class names like ``--target``: exact, else a unique prefix, case-insensitive). Boxes are
in photo pixels. A row whose class is unknown (or the background) is a per-row error: that object is not audited,
the rest of its image is. A box reaching outside its photo is clipped and noted; one lying wholly outside is noted
and not audited (``matched`` is empty).

Per image, alone (so records never depend on the batch; see :class:`explain.audit_task.AuditTask`):

1. the detector runs once, every detection traced to its candidate (:func:`explain.detection.engine.trace_detector`);
   the **detections** are those with confidence >= ``score_threshold`` (the operating point; the detector's own
   candidate threshold is lowered to it when higher);
2. **matching** (COCO's rule, Lin et al. 2014, https://arxiv.org/abs/1405.0312, as in ``pycocotools``'
   ``evaluateImg``): detections in order of decreasing confidence (ties: the detector's order) each take the
   not-yet-matched object of the same class (any class when the ground truth gives none) with the highest IoU,
   provided IoU >= ``iou`` (ties: the first object). Unmatched detections are **false positives**, except those
   lying on a COCO crowd region (intersection over the detection's area >= ``iou``), which are ignored as COCO does.
   Duplicates of a matched object count as false positives;
3. every matched detection is explained (:func:`explain.detection.engine.explain_detections`, Grad-CAM++ by default,
   Chattopadhyay et al. 2018, https://arxiv.org/abs/1710.11063, of the class logit of the detection's own candidate)
   and its map ``M`` (photo resolution, min-max normalised) is compared with the object's visible box ``B``:

   * ``energy_in_box = sum_{p in B} M(p) / sum_p M(p)`` (the energy-based pointing game of Score-CAM, Wang et al.
     2020, https://arxiv.org/abs/1910.01279); a uniform map scores ``area_share = |B| / |photo|``;
   * ``energy_around_box``: the share in the surroundings, the ring between ``B`` and ``B`` enlarged 2x about its
     centre (clipped to the photo); the rest of the energy lies elsewhere;
   * ``pointing_hit``: the map's maximum lies within 15 photo pixels of ``B`` (TorchRay's convention).

   Missed objects have no map and these fields are empty; ``best_iou`` then says how close any detection came.

Objects are also grouped by size as COCO does (Lin et al. 2014): **small** (area < 32^2), **medium** (< 96^2) or
**large**, by the area of the box as given, in photo pixels (COCO uses the segmentation area where it has one).

Deviations: the explained scalar is a pre-NMS logit (see :mod:`explain.detection.engine`), not the post-NMS
confidence; false positives are counted per image and attributed to image-level groups only (a per-object group
has no false positives).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from explain.audit_inputs import NO_GROUP, AuditInputs, Box, BoxFile, boxes_to_input
from explain.audit_summary import _mean, _share, _values, group_gaps
from explain.audit_task import AuditTask, rounded
from explain.detection.targets import box_coverage, iou_matrix
from explain.errors import InputError, TargetError, UsageError, shortlist
from explain.figures import FigureStyle

if TYPE_CHECKING:
    import torch

    from explain.audit import AuditResult
    from explain.backbones.base import Backbone
    from explain.data import Batch, Sample
    from explain.detection.engine import DetectionMap
    from explain.detection.targets import Detection
    from explain.run import RunSettings

__all__ = [
    "DETECTION_GROUP_METRICS", "IMAGE_COLUMNS", "OBJECT_COLUMNS", "SIZE_COLUMN", "DetectionAuditOptions",
    "DetectionTask", "GroundTruthObject", "Matching", "detection_summary", "match_detections",
    "resolve_ground_truth", "run_detection_audit", "size_bucket",
]

SMALL_AREA = 32 ** 2
MEDIUM_AREA = 96 ** 2
SIZE_COLUMN = "size"
"""The built-in group column: ``small``, ``medium`` or ``large`` (COCO's object sizes)."""
AROUND_SCALE = 2.0
POINTING_TOLERANCE = 15.0
METHODS = ("gradcam", "gradcam++", "guided")

OBJECT_COLUMNS: tuple[str, ...] = (
    "path", "object_id", "class", "class_name", "box", "area", "size", "box_status", "matched", "score", "iou",
    "det_rank", "det_name", "det_box", "best_iou", "area_share", "energy_in_box", "energy_around_box",
    "pointing_hit", "notes",
)
IMAGE_COLUMNS: tuple[str, ...] = (
    "path", "width", "height", "objects", "detections", "true_positives", "false_positives", "ignored", "notes",
)
DETECTION_GROUP_METRICS: tuple[str, ...] = ("recall", "mean_score", "mean_iou", "mean_energy_in_box")


def photo_box(box: Sequence[float], geometry: Any) -> list[float]:
    """A detection's box, found on the model input (the photo, or its bounded copy when the photo is over 4 MP:
    :class:`explain.detection.models.DetectionPreprocess`), in the photo's own pixels, as ground-truth boxes are."""
    width, height = geometry.image_size
    grid_h, grid_w = geometry.model_input
    sx, sy = width / grid_w, height / grid_h
    x0, y0, x1, y1 = box
    return [rounded(x0 * sx), rounded(y0 * sy), rounded(x1 * sx), rounded(y1 * sy)]


def size_bucket(area: float) -> str:
    """COCO's object size: ``"small"`` below 32^2 pixels, ``"medium"`` below 96^2, else ``"large"``."""
    return "small" if area < SMALL_AREA else "medium" if area < MEDIUM_AREA else "large"


@dataclass
class DetectionAuditOptions:
    """What a detection audit is asked to do.

    Attributes:
        boxes: the ground truth, a CSV or COCO JSON file (required).
        groups: a groups CSV (``path`` [, ``object_id``], attribute columns), or ``None``.
        layer: the CAM layer (default: the detector's last backbone stage).
        method: ``gradcam``, ``gradcam++`` (default) or ``guided``.
        iou: the IoU a detection needs to match an object.
        score_threshold: the operating point: detections below it do not count.
        min_size: the detector's internal resize (shorter side); ``None``: the model's own.
        worst: how many worst examples per list the dashboard shows with pictures.
        restart: discard an existing journal in the output folder instead of resuming it.
        style: the dashboard plots' resolution and titles, and how the page names the dataset.
    """

    boxes: Path
    groups: Path | None = None
    layer: str | None = None
    method: str = "gradcam++"
    iou: float = 0.5
    score_threshold: float = 0.5
    min_size: int | None = None
    worst: int = 8
    restart: bool = False
    style: FigureStyle = FigureStyle()

    def check(self) -> None:
        """Raise :class:`UsageError` for an option out of range."""
        if not 0.0 < self.iou <= 1.0:
            raise UsageError(f"--iou must lie in (0, 1] (got {self.iou})")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise UsageError(f"--score-threshold must lie in [0, 1] (got {self.score_threshold})")
        if self.min_size is not None and self.min_size < 32:
            raise UsageError(f"--min-size must be at least 32 pixels (got {self.min_size})")
        if self.worst < 0:
            raise UsageError(f"--worst must be >= 0 (got {self.worst})")
        if self.method not in METHODS:
            raise UsageError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")


# --------------------------------------------------------------------------------------------------------------
# Ground truth


@dataclass(frozen=True)
class GroundTruthObject:
    """One annotated object, its class resolved against the model's classes.

    Attributes:
        object_id: the id from the file (see :class:`explain.audit_inputs.BoxObject`).
        box: ``(x0, y0, x1, y1)`` in photo pixels, as given.
        label: the model's class index, ``None`` for class-agnostic matching.
        crowd: a COCO crowd region (not an object to find; detections on it are ignored).
    """

    object_id: str
    box: Box
    label: int | None = None
    crowd: bool = False


def resolve_ground_truth(boxes: BoxFile, class_names: Sequence[str]) -> tuple[dict[str, list[GroundTruthObject]],
                                                                              list[InputError]]:
    """Resolve every object's class; rows that cannot be used become per-row errors.

    Returns:
        ``(objects per image, errors)``: rows that were not a box (:attr:`BoxFile.notes`) and objects whose class
        is unknown, ambiguous, out of range or the background are errors of their image; the image's other objects
        are kept.
    """
    from explain.targets import resolve_class

    errors = [InputError(key, text) for key, notes in boxes.notes.items() for text in notes]
    objects: dict[str, list[GroundTruthObject]] = {}
    for key, found in boxes.objects.items():
        kept = objects.setdefault(key, [])
        for obj in found:
            label = None
            if obj.category not in (None, ""):
                try:
                    label = resolve_class(str(obj.category), class_names)
                except TargetError as exc:
                    errors.append(InputError(key, f"{obj.where}: {exc}; object {obj.object_id} not audited"))
                    continue
                if label == 0 and class_names[0].startswith("__"):
                    errors.append(InputError(key, f"{obj.where}: class {class_names[0]!r} is the background, not "
                                                  f"an object; object {obj.object_id} not audited"))
                    continue
            kept.append(GroundTruthObject(obj.object_id, obj.box, label, obj.crowd))
    return objects, sorted(errors, key=lambda e: (e.path, e.reason))


# --------------------------------------------------------------------------------------------------------------
# Matching


@dataclass
class Matching:
    """The outcome of matching one image's detections with its objects.

    Attributes:
        detection_of: per object, the index of its detection (``None``: missed).
        iou: per object, the IoU with its detection (``None``: missed).
        best_iou: per object, the highest IoU with any detection of any class (0 without detections).
        false_positives: indices of the detections that match nothing and lie on no crowd region.
        ignored: indices of unmatched detections on a crowd region.
    """

    detection_of: list[int | None]
    iou: list[float | None]
    best_iou: list[float]
    false_positives: list[int] = field(default_factory=list)
    ignored: list[int] = field(default_factory=list)


def match_detections(
    objects: Sequence[tuple[Box, int | None]],
    detections: Sequence[tuple[Box, int, float]],
    iou: float = 0.5,
    crowds: Sequence[tuple[Box, int | None]] = (),
) -> Matching:
    """Greedy COCO-style matching of one image (see the module docstring).

    Args:
        objects: ``(box, class or None)`` per object (its visible box).
        detections: ``(box, class, score)`` per detection (above the operating threshold).
        iou: the IoU a match needs.
        crowds: ``(box, class or None)`` of crowd regions.

    Returns:
        A :class:`Matching`.
    """
    n_obj = len(objects)
    ious = iou_matrix([d[0] for d in detections], [o[0] for o in objects]) if n_obj and detections \
        else np.zeros((len(detections), n_obj))
    detection_of: list[int | None] = [None] * n_obj
    matched_iou: list[float | None] = [None] * n_obj
    order = sorted(range(len(detections)), key=lambda j: -detections[j][2])  # stable: ties keep the detector's order
    unmatched = []
    for j in order:
        label = detections[j][1]
        best, best_iou = None, iou
        for g in range(n_obj):
            same = objects[g][1] is None or objects[g][1] == label
            if detection_of[g] is None and same and ious[j, g] >= best_iou and (best is None or ious[j, g] > best_iou):
                best, best_iou = g, float(ious[j, g])
        if best is None:
            unmatched.append(j)
        else:
            detection_of[best], matched_iou[best] = j, best_iou
    ignored = _on_crowds(unmatched, detections, crowds, iou)
    return Matching(detection_of, matched_iou, [float(ious[:, g].max()) if len(detections) else 0.0
                                                for g in range(n_obj)],
                    [j for j in sorted(unmatched) if j not in ignored], sorted(ignored))


def _on_crowds(unmatched: Sequence[int], detections: Sequence[tuple[Box, int, float]],
               crowds: Sequence[tuple[Box, int | None]], iou: float) -> set[int]:
    if not crowds or not unmatched:
        return set()
    cover = box_coverage([detections[j][0] for j in unmatched], [c[0] for c in crowds])
    return {j for row, j in enumerate(unmatched)
            if any(cover[row, c] >= iou and crowds[c][1] in (None, detections[j][1]) for c in range(len(crowds)))}


# --------------------------------------------------------------------------------------------------------------
# The task


@dataclass(frozen=True)
class PhotoOnly:
    """Stand-in preprocessing for the runner's batches: an empty tensor (detector photos differ in size and cannot
    be stacked); the task preprocesses each decoded photo itself. Geometry is the real preprocessing's."""

    preprocess: Any

    def __call__(self, image: Any) -> torch.Tensor:
        import torch

        return torch.zeros(0)

    def geometry(self, width: int, height: int) -> Any:
        return self.preprocess.geometry(width, height)


@contextlib.contextmanager
def configured_detector(model: Any, score_threshold: float, min_size: int | None) -> Iterator[None]:
    """Lower the detector's candidate threshold to ``score_threshold`` (when higher) and set its internal resize,
    for the block only: the user's model is left as found."""
    from explain.detection.models import candidate_threshold, configure_detector, detector_kind

    kind = detector_kind(model)
    post = model.roi_heads if kind == "rcnn" else model
    saved = (post.score_thresh, getattr(model.transform, "min_size", None))
    threshold = score_threshold if score_threshold < candidate_threshold(model) else None
    configure_detector(model, score_threshold=threshold, min_size=min_size)
    try:
        yield
    finally:
        post.score_thresh = saved[0]
        if saved[1] is not None:
            model.transform.min_size = saved[1]


class DetectionTask(AuditTask):
    """Audit records of a torchvision detector: per image one ``kind="image"`` record (detections, false
    positives) and one ``kind="object"`` record per ground-truth object (see the module docstring).

    Args:
        backbone: the detector (left as found).
        truth: per image, its resolved objects (:func:`resolve_ground_truth`).
        opts: layer, method, IoU, score threshold, resize.
        device: where the model runs.
    """

    name = "detection"
    columns = OBJECT_COLUMNS

    def __init__(self, backbone: Backbone, truth: dict[str, list[GroundTruthObject]], opts: DetectionAuditOptions,
                 device: Any = "cpu") -> None:
        self.backbone = backbone
        self.truth = truth
        self.opts = opts
        self.layer = opts.layer or backbone.default_layer
        self.device = device

    def config(self) -> dict[str, Any]:
        o = self.opts
        return {"task": self.name, "method": o.method, "layer": None if o.method == "guided" else self.layer,
                "iou": o.iou, "score_threshold": o.score_threshold, "min_size": o.min_size,
                "around_scale": AROUND_SCALE, "tolerance": POINTING_TOLERANCE}

    def input_preprocess(self, preprocess: Any) -> Any:
        return PhotoOnly(preprocess)

    def records(self, batch: Batch, keys: Sequence[str]) -> list[dict[str, Any]]:
        from explain.hooks import eval_mode

        model = self.backbone.model
        with configured_detector(model, self.opts.score_threshold, self.opts.min_size), eval_mode(model):
            return [r for sample, key in zip(batch.samples, keys, strict=True) for r in self._image(sample, key)]

    # --- one image ------------------------------------------------------------------------------------------
    def _image(self, sample: Sample, key: str) -> list[dict[str, Any]]:
        import torch

        from explain.detection.engine import trace_detector

        x = self.backbone.preprocess(sample.loaded.image).to(self.device)
        with torch.no_grad():
            trace, _ = trace_detector(self.backbone.model, [x])
        dets = [d for d in trace.detections[0] if d.score >= self.opts.score_threshold]
        objects = [o for o in self.truth.get(key, []) if not o.crowd]
        crowds = [o for o in self.truth.get(key, []) if o.crowd]
        visible = [boxes_to_input([o.box], sample.geometry) for o in objects]
        audited = [i for i, v in enumerate(visible) if v.boxes]
        matching = match_detections([(visible[i].boxes[0], objects[i].label) for i in audited],
                                    [(d.box, d.label, d.score) for d in dets], self.opts.iou,
                                    [(c.box, c.label) for c in crowds])
        rows = [self._object_record(key, o, v, sample) for o, v in zip(objects, visible, strict=True)]
        matched = {}
        for slot, i in enumerate(audited):
            j = matching.detection_of[slot]
            rows[i].update(matched=j is not None, best_iou=rounded(matching.best_iou[slot]))
            if j is not None:
                matched[i] = dets[j]
                rows[i].update(self._detection_fields(dets[j], matching.iou[slot], sample.geometry))
        self._add_energy(rows, matched, visible, x)
        return [self._image_record(key, sample, dets, matching, len(objects)), *rows]

    def _object_record(self, key: str, obj: GroundTruthObject, visible: Any, sample: Sample) -> dict[str, Any]:
        x0, y0, x1, y1 = obj.box
        area = (x1 - x0) * (y1 - y0)
        grid_h, grid_w = sample.geometry.model_input  # the photo, or its bounded copy (a photo over 4 MP)
        share = None
        if visible.boxes:
            vx0, vy0, vx1, vy1 = visible.boxes[0]
            share = rounded((vx1 - vx0) * (vy1 - vy0) / (grid_w * grid_h))
        names = self.backbone.class_names
        return {
            "kind": "object", "path": key, "object_id": obj.object_id, "class": obj.label,
            "class_name": None if obj.label is None else names[obj.label], "box": [rounded(v) for v in obj.box],
            "area": rounded(area), "size": size_bucket(area), "box_status": visible.status, "area_share": share,
            "matched": None, "score": None, "iou": None, "det_rank": None, "det_class": None, "det_name": None,
            "det_box": None, "best_iou": None, "energy_in_box": None, "energy_around_box": None,
            "pointing_hit": None, "notes": list(visible.notes),
        }

    def _detection_fields(self, d: Detection, iou: float | None, geometry: Any) -> dict[str, Any]:
        return {"score": rounded(d.score), "iou": rounded(iou), "det_rank": d.rank + 1, "det_class": d.label,
                "det_name": self.backbone.class_names[d.label], "det_box": photo_box(d.box, geometry)}

    def _image_record(self, key: str, sample: Sample, dets: Sequence[Detection], matching: Matching,
                      n_objects: int) -> dict[str, Any]:
        names = self.backbone.class_names
        width, height = sample.geometry.image_size
        return {
            "kind": "image", "path": key, "input_sha256": sample.loaded.sha256, "width": width, "height": height,
            "objects": n_objects, "detections": len(dets),
            "true_positives": sum(j is not None for j in matching.detection_of),
            "false_positives": len(matching.false_positives), "ignored": len(matching.ignored),
            "false_positive_detections": [
                {"rank": dets[j].rank + 1, "class": dets[j].label, "name": names[dets[j].label],
                 "score": rounded(dets[j].score), "box": photo_box(dets[j].box, sample.geometry)}
                for j in matching.false_positives],
            "notes": list(sample.loaded.notes),
        }

    def _add_energy(self, rows: list[dict[str, Any]], matched: dict[int, Detection], visible: Sequence[Any],
                    x: torch.Tensor) -> None:
        """Explain the matched detections (one pass) and measure their maps against the objects' boxes."""
        if not matched:
            return
        import torch

        by_rank = self._explain(x, sorted({d.rank for d in matched.values()}))
        order = sorted(matched)
        for i in order:
            found = by_rank[matched[i].rank].detection
            if found.label != matched[i].label or not math.isclose(found.score, matched[i].score, rel_tol=1e-4):
                raise UsageError(f"{rows[i]['path']}: the detector's output changed between two passes over the "
                                 "same photo (is it deterministic?)")
        maps = torch.stack([torch.from_numpy(by_rank[matched[i].rank].map) for i in order])
        fields = object_energy(maps, [visible[i].boxes[0] for i in order])
        for i, values in zip(order, fields, strict=True):
            notes = values.pop("notes", [])
            rows[i].update(values)
            rows[i]["notes"].extend([*by_rank[matched[i].rank].notes, *notes])

    def _explain(self, x: torch.Tensor, ranks: Sequence[int]) -> dict[int, DetectionMap]:
        """The maps of the detections of ``ranks`` (0-based) on one photo tensor, by rank (one forward pass)."""
        from explain.detection.engine import explain_detections
        from explain.detection.targets import DetectionRequest

        result = explain_detections(self.backbone.model, [x], DetectionRequest(ranks=tuple(ranks)), self.opts.method,
                                    None if self.opts.method == "guided" else [self.layer])
        return {m.detection.rank: m for m in result.maps[0]}

    def detection_map(self, image: Any, rank: int) -> np.ndarray | None:
        """The map of the detection of ``rank`` (0-based) on a photo, at photo size (``None``: no such rank)."""
        from explain.hooks import eval_mode

        model = self.backbone.model
        x = self.backbone.preprocess(image).to(self.device)
        with configured_detector(model, self.opts.score_threshold, self.opts.min_size), eval_mode(model):
            found = self._explain(x, [rank]).get(rank)
        return None if found is None else found.map


def object_energy(maps: torch.Tensor, boxes: Sequence[Box]) -> list[dict[str, Any]]:
    """``energy_in_box``, ``energy_around_box`` and ``pointing_hit`` of ``(N, H, W)`` maps against one box each.

    A map that is zero everywhere (e.g. Grad-CAM++ with no positive gradient at the layer) has no energy to share:
    its fields are ``None`` and a ``notes`` entry says so. The surroundings are the box enlarged
    :data:`AROUND_SCALE` times about its centre, minus the box (clipped to the map by
    :func:`explain.metrics.boxes_to_mask`).
    """
    import torch

    from explain.metrics import boxes_to_mask, energy_in_mask, pointing_hits

    size = tuple(maps.shape[-2:])
    inside = torch.stack([boxes_to_mask([b], size) for b in boxes])
    grown = torch.stack([boxes_to_mask([_enlarged(b, AROUND_SCALE)], size) for b in boxes])
    maps = maps.float().clamp(min=0)
    energy = energy_in_mask(maps, inside)
    around = energy_in_mask(maps, grown & ~inside)  # NaN (-> None) when the box fills the photo
    hits = pointing_hits(maps, inside, tolerance=POINTING_TOLERANCE)
    empty = maps.flatten(1).sum(1) == 0
    return [{"energy_in_box": rounded(energy[k]), "energy_around_box": rounded(around[k]),
             "pointing_hit": None if bool(empty[k]) else bool(hits[k])} | (
                {"notes": ["the map is zero everywhere (no positive evidence at this layer): energy and pointing are "
                           "undefined; try --method gradcam or another --layer"]} if bool(empty[k]) else {})
            for k in range(len(boxes))]


def _enlarged(box: Box, scale: float) -> Box:
    x0, y0, x1, y1 = box
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, scale * (x1 - x0) / 2, scale * (y1 - y0) / 2
    return (cx - hw, cy - hh, cx + hw, cy + hh)


# --------------------------------------------------------------------------------------------------------------
# Summaries


def object_stats(objects: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Recall and the means over matched objects (objects wholly outside their photo are left out)."""
    audited = [r for r in objects if r.get("matched") is not None]
    found = [r for r in audited if r["matched"]]
    return {
        "objects": len(audited),
        "detected": len(found),
        "recall": _share([bool(r["matched"]) for r in audited]),
        "mean_score": _mean(_values(found, "score")),
        "mean_iou": _mean(_values(found, "iou")),
        "mean_energy_in_box": _mean(_values(found, "energy_in_box")),
        "mean_energy_around_box": _mean(_values(found, "energy_around_box")),
        "mean_area_share": _mean(_values(found, "area_share")),
        "pointing_accuracy": _share([bool(r["pointing_hit"]) for r in found if r.get("pointing_hit") is not None]),
    }


def image_stats(images: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Detections, false positives per image and precision at the operating point."""
    tp = sum(int(r["true_positives"]) for r in images)
    fp = sum(int(r["false_positives"]) for r in images)
    return {
        "images": len(images),
        "detections": sum(int(r["detections"]) for r in images),
        "false_positives": fp,
        "false_positives_per_image": round(fp / len(images), 6) if images else None,
        "images_with_false_positives": sum(1 for r in images if r["false_positives"]),
        "precision": round(tp / (tp + fp), 6) if tp + fp else None,
    }


def group_summary(objects: Sequence[dict[str, Any]], images: Sequence[dict[str, Any]],
                  column: str) -> dict[str, Any]:
    """Per-group object statistics (and false positives per image for image-level groups) with gaps."""
    names = sorted({str(r[column]) for r in objects if r.get(column) is not None}
                   | {str(r[column]) for r in images if r.get(column) is not None})
    groups = {}
    for name in names:
        stats = object_stats([r for r in objects if str(r.get(column)) == name])
        members = [r for r in images if str(r.get(column)) == name]
        stats["images"] = len(members)
        stats["false_positives_per_image"] = image_stats(members)["false_positives_per_image"]
        groups[name] = stats
    return {"groups": groups, "gap": group_gaps(groups, (*DETECTION_GROUP_METRICS, "false_positives_per_image"))}


def _ranked(rows: Sequence[dict[str, Any]], keep: Callable[[dict[str, Any]], bool],
            order: Callable[[dict[str, Any]], Any], n: int) -> list[dict[str, str]]:
    chosen = sorted((r for r in rows if keep(r)), key=order)[:n]
    return [{"path": r["path"], "object_id": r["object_id"]} for r in chosen]


OFF_OBJECT = 0.5
"""A matched detection "looks past" its object when less than this share of its map's energy lies on it."""


def worst_objects(objects: Sequence[dict[str, Any]], n: int) -> dict[str, list[dict[str, str]]]:
    """The worst examples: the largest missed objects, and matched detections whose map puts less than
    :data:`OFF_OBJECT` of its energy on the object, ranked by that energy relative to a uniform map
    (``energy_in_box / area_share``, lowest first)."""
    return {
        "missed": _ranked(objects, lambda r: r.get("matched") is False,
                          lambda r: (-float(r["area"]), r["path"], r["object_id"]), n),
        "off_object": _ranked(
            objects, lambda r: bool(r.get("matched")) and r.get("energy_in_box") is not None
            and float(r["energy_in_box"]) < OFF_OBJECT and bool(r["area_share"]),
            lambda r: (float(r["energy_in_box"]) / float(r["area_share"]), r["path"], r["object_id"]), n),
    }


def top_false_positives(images: Sequence[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The ``n`` most confident false positives over the dataset."""
    rows = [{"path": r["path"], **{k: fp[k] for k in ("rank", "class", "name", "score", "box")}}
            for r in images for fp in r.get("false_positive_detections", [])]
    return sorted(rows, key=lambda r: (-float(r["score"]), r["path"], r["rank"]))[:n]


def detection_summary(objects: Sequence[dict[str, Any]], images: Sequence[dict[str, Any]],
                      group_columns: Sequence[str], worst: int) -> dict[str, Any]:
    """The body of a detection audit's ``summary.json`` (without run metadata).

    Args:
        objects: the object records, group columns joined (and :data:`SIZE_COLUMN`).
        images: the image records, image-level group columns joined.
        group_columns: the user's group columns (the size groups are always reported first).
        worst: how many worst examples per list.
    """
    return {
        "overall": {**object_stats(objects), **image_stats(images),
                    "objects_outside_image": sum(1 for r in objects if r.get("matched") is None)},
        "groups": {column: group_summary(objects, images, column) for column in (SIZE_COLUMN, *group_columns)},
        "worst": worst_objects(objects, worst),
        "false_positives": top_false_positives(images, max(worst, 20)),
    }


def join_groups(objects: list[dict[str, Any]], images: list[dict[str, Any]], inputs: AuditInputs,
                taken: Sequence[str]) -> list[str]:
    """Add every group column to the records: an object's own row first, else its image's, else :data:`NO_GROUP`;
    image records get the image-level value. Returns the record fields of the columns."""
    from explain.audit_outputs import group_field

    groups = inputs.groups
    names = [group_field(c, taken) for c in groups.columns]
    for record in objects:
        row = groups.objects.get((record["path"], str(record["object_id"]))) or groups.values.get(record["path"], {})
        for column, name in zip(groups.columns, names, strict=True):
            record[name] = row.get(column) or NO_GROUP
    for record in images:
        row = groups.values.get(record["path"], {})
        for column, name in zip(groups.columns, names, strict=True):
            record[name] = row.get(column) or NO_GROUP
    return names


# --------------------------------------------------------------------------------------------------------------
# Running


def check_detector(backbone: Backbone, opts: DetectionAuditOptions) -> str:
    """Check the model and options before any work; returns the CAM layer.

    Raises:
        ModelError: not a detector. UsageError, LayerError: bad options or layer.
    """
    from explain.detection.models import detector_kind, task_of
    from explain.errors import ModelError
    from explain.modules import resolve_layer

    opts.check()
    if task_of(backbone) != "detection":
        raise ModelError(f"{backbone.name} is a {task_of(backbone)} model: 'audit --task detection' needs a "
                         "detector ('cnn-explain models' lists them)")
    detector_kind(backbone.model)
    layer = opts.layer or backbone.default_layer
    if opts.method != "guided":
        resolve_layer(backbone.model, layer)
    return layer


def _stray_object_groups(inputs: AuditInputs, truth: dict[str, list[GroundTruthObject]]) -> list[str]:
    """A warning for per-object group rows that name no audited object."""
    audited = set(inputs.keys)
    known = {(path, o.object_id) for path, objects in truth.items() for o in objects}
    stray = sorted(f"{path} object {oid}" for path, oid in inputs.groups.objects
                   if path in audited and (path, oid) not in known)
    if not stray:
        return []
    shown = shortlist(stray, 3)
    return [f"{len(stray)} per-object group row(s) name no audited object ({shown}); they are ignored"]


def run_detection_audit(
    backbone: Backbone,
    dataset: str | Path,
    opts: DetectionAuditOptions,
    out: str | Path,
    settings: RunSettings | None = None,
    *,
    task_factory: Callable[..., DetectionTask] | None = None,
    inputs: AuditInputs | None = None,
) -> AuditResult:
    """Audit a detector over DATASET against ground-truth boxes and write every output into ``out``.

    Args:
        backbone: a torchvision detector (left as found).
        dataset: the folder of photos; ground-truth paths are relative to it.
        opts: ground truth, groups and the matching/explanation options.
        out: output folder; also the journal's home (re-running with it resumes).
        settings: batch size (photos per journal entry), device, workers, progress callback and argv.
        task_factory: builds the task from ``(backbone, truth, opts, device)`` (tests inject failures).
        inputs: the dataset already read by :func:`explain.audit_inputs.load_audit_inputs` with these options
            (e.g. to size a progress bar first); default: read here.

    Returns:
        The :class:`explain.audit.AuditResult`; ``manifest.json`` is already written (last).

    Raises:
        UsageError: bad options, unreadable files, nothing to audit, or a journal of another configuration.
        ModelError: not a detector. LayerError: unknown layer.
    """
    from explain.audit import base_config, file_sha256, run_journaled
    from explain.audit_detection_outputs import write_detection_outputs
    from explain.audit_inputs import load_audit_inputs
    from explain.run import RunSettings

    settings = settings or RunSettings()
    layer = check_detector(backbone, opts)
    out = Path(out)
    if inputs is None:
        inputs = load_audit_inputs(dataset, None, backbone.class_names, opts.boxes, opts.groups, exclude=(out,))
    truth, errors = resolve_ground_truth(inputs.boxes, backbone.class_names)
    audited = set(inputs.keys)
    inputs.errors.extend(e for e in errors if e.path in audited)
    inputs.warnings.extend(_stray_object_groups(inputs, truth))
    task = (task_factory or DetectionTask)(backbone, truth, opts, settings.device)
    config = {**base_config(task, backbone, inputs, settings.batch_size), "boxes_sha256": file_sha256(opts.boxes)}
    journal = run_journaled(task, backbone, inputs, config, out, settings, restart=opts.restart)
    return write_detection_outputs(backbone, task, inputs, journal, out, settings, layer)
