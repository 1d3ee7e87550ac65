"""Explaining one detection, or one class mask, at a time: Grad-CAM, Grad-CAM++ and guided backprop.

Detectors
---------
A detector's postprocessing (score threshold, per-class NMS, top-k) selects detections from many candidates and
is not usefully differentiable. Each detection is therefore traced back to the candidate it came from, and the
explained scalar ``Y`` is that candidate's own pre-activation class score:

* Faster R-CNN (Ren et al. 2015, https://arxiv.org/abs/1506.01497): the detection of class ``c`` from RoI ``r``
  has confidence ``softmax(z_r)_c`` where ``z_r = box_predictor(box_head(RoIAlign(features, proposal_r)))``;
  ``Y = z_rc``, the class logit of that RoI. Proposals are detached by torchvision's RPN, so ``Y`` depends on the
  features only through RoI ``r``'s pooled features: perturbing any other RoI leaves ``Y`` unchanged (tested).
* RetinaNet (Lin et al. 2017, https://arxiv.org/abs/1708.02002): confidence ``sigmoid(z_ac)`` for anchor ``a``;
  ``Y = z_ac``.
* FCOS (Tian et al. 2019, https://arxiv.org/abs/1904.01355): confidence ``sqrt(sigmoid(z_ac) sigmoid(o_a))`` with
  centerness ``o_a``; ``Y = z_ac`` (the class logit; centerness is class-agnostic and left out).
* SSD / SSDLite (Liu et al. 2016, https://arxiv.org/abs/1512.02325): confidence ``softmax(z_a)_c``; ``Y = z_ac``.

With ``component="x0"|"y0"|"x1"|"y1"`` ``Y`` is instead that coordinate of the candidate's decoded (unclipped) box,
in photo pixels: ``decode(t_a, anchor_a)`` with the class-specific regression of R-CNN or the class-agnostic one of
the others.

How the candidate is found: the detector runs unmodified; its ``postprocess_detections`` method is wrapped for the
duration of the call (an instance attribute, removed in ``finally``) to record its inputs (class logits,
regressions, proposals or anchors) and outputs. The candidates' confidences and clipped boxes are recomputed from
those inputs with the detector's own formulas and box coder, and each detection is matched to the candidate whose
class confidence and box equal its own (a mismatch raises: the trace is exact or nothing).

Maps: Grad-CAM / Grad-CAM++ channel weights come from :mod:`explain.cam` (the same classes the classifier CAMs
use). The detector resizes and pads the photo internally; the layer map (``map_layer``, at the layer's resolution
over the padded canvas, after the ReLU) is upsampled bilinearly to the canvas, cut to the resized photo (the
padding is dropped) and resized to the photo, then min-max normalised (``map``). Guided backpropagation
(:class:`explain.guided.GuidedRectifiers`) differentiates ``Y`` with respect to the photo itself, a ``[0, 1]``
tensor at its own size, through the detector's resize and normalisation.

Segmenters
----------
For a semantic segmenter with logits ``S`` of shape ``(C, H, W)`` (FCN, DeepLabV3, LR-ASPP: ``model(x)["out"]``)
the explained scalar for class ``c`` over a region ``M`` is ``Y = sum_{p in M} S_c(p)`` (Vinogradova et al. 2020,
https://arxiv.org/abs/2002.11434), with ``M`` the pixels predicted as ``c`` (``argmax_k S_k(p) = c``) by default,
or a user mask. An empty region is reported, not explained.

Conventions: models run in eval mode and are left as found (training flags, hooks, ``.grad``: gradients are taken
with :func:`torch.autograd.grad` with respect to activations or inputs only). Several photos share one forward
pass; the k-th chosen detections of all photos share one backward pass (photos do not interact in eval mode).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from explain.cam import normalize_maps
from explain.detection.models import detector_kind
from explain.detection.targets import BOX_COMPONENTS, Detection, DetectionRequest, select_detections
from explain.errors import ExplainError, UsageError
from explain.hooks import LayerTap, eval_mode
from explain.modules import resolve_layer

__all__ = [
    "DETECTION_METHODS", "DetectionMap", "DetectionResult", "DetectorTrace", "SegmentationMap",
    "SegmentationResult", "SegmentationTarget", "explain_detections", "explain_segmentation", "trace_detector",
]

#: Methods for detections and masks: the two CAMs of :mod:`explain.cam` and guided backpropagation.
DETECTION_METHODS = ("gradcam", "gradcam++", "guided")


class TraceError(ExplainError):
    """A detection could not be matched to a candidate (a detector this module does not know how to read)."""


# ---------------------------------------------------------------------------------------------------------------
# Tracing detections to their candidates
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Candidates:
    """One photo's candidates: class logits ``(M, C)``, confidences ``(M, C)``, decoded boxes ``(M, C|1, 4)``."""

    logits: torch.Tensor
    confidences: torch.Tensor
    boxes: torch.Tensor

    def boxes_of(self, label: int) -> torch.Tensor:
        return self.boxes[:, label] if self.boxes.shape[1] > 1 else self.boxes[:, 0]


@dataclass
class DetectorTrace:
    """One forward pass of a detector with every detection traced to its candidate.

    Attributes:
        kind: ``"rcnn"``, ``"retinanet"``, ``"fcos"`` or ``"ssd"``.
        detections: per photo, the detector's detections in its order (best first), boxes in photo pixels.
        candidates: per photo, the candidates' logits, confidences and decoded boxes (graph-connected tensors).
        resized: per photo, ``(height, width)`` after the detector's internal resize.
        originals: per photo, ``(height, width)`` of the photo (the frame of the detections' boxes).
        canvas: ``(height, width)`` of the padded batch the backbone saw.
        inputs: per photo, ``(height, width)`` of the tensor handed to the detector: the photo's own size, or a
            scaled-down copy's (maps are made at this size); empty: the same as ``originals``.
    """

    kind: str
    detections: list[list[Detection]]
    candidates: list[_Candidates]
    resized: list[tuple[int, int]]
    originals: list[tuple[int, int]]
    canvas: tuple[int, int]
    inputs: list[tuple[int, int]]

    def score(self, detection: Detection, component: str = "score") -> torch.Tensor:
        """The differentiable scalar ``Y`` of ``detection`` (see the module docstring)."""
        cand = self.candidates[detection.image_index]
        if component == "score":
            return cand.logits[detection.source, detection.label]
        k = BOX_COMPONENTS.index(component) - 1
        rh, rw = self.resized[detection.image_index]
        oh, ow = self.originals[detection.image_index]
        scale = ow / rw if k % 2 == 0 else oh / rh
        return cand.boxes_of(detection.label)[detection.source, k] * scale


@contextlib.contextmanager
def _wrap_method(owner: nn.Module, name: str, store: dict[str, Any]) -> Iterator[None]:
    """Record the arguments and result of ``owner.name(...)`` during the block (an instance attribute, removed)."""
    had = name in owner.__dict__
    previous = owner.__dict__.get(name)
    original = getattr(owner, name)

    def wrapped(*args: Any) -> Any:
        result = original(*args)
        # Shallow copies: the detectors' transform.postprocess rescales the boxes of these dicts in place.
        store["args"] = args
        store["result"] = [dict(r) for r in result] if isinstance(result, list) else result
        return result

    object.__setattr__(owner, name, wrapped)
    try:
        yield
    finally:
        if had:
            object.__setattr__(owner, name, previous)
        else:
            object.__delattr__(owner, name)


@contextlib.contextmanager
def _record_detector(model: nn.Module, kind: str, store: dict[str, Any]) -> Iterator[None]:
    """Record the postprocessing inputs/outputs and the transform's output of one forward pass."""

    def transform_hook(module: nn.Module, args: Any, output: Any) -> None:
        store["images"] = output[0]

    owner = model.roi_heads if kind == "rcnn" else model
    handle = model.transform.register_forward_hook(transform_hook)
    try:
        with _wrap_method(owner, "postprocess_detections", store):
            yield
    finally:
        handle.remove()


def _candidates(model: nn.Module, kind: str, args: tuple[Any, ...]) -> list[_Candidates]:
    """Every photo's candidates, recomputed from the postprocessing inputs with the detector's own formulas."""
    if kind == "rcnn":
        logits, regression, proposals, _ = args
        boxes = model.roi_heads.box_coder.decode(regression, proposals)  # (R, C, 4)
        counts = [len(p) for p in proposals]
        return [_Candidates(z, torch.softmax(z.detach(), -1), b)
                for z, b in zip(logits.split(counts), boxes.split(counts), strict=True)]
    if kind == "ssd":
        head, anchors, _ = args
        out = []
        for i, anchor in enumerate(anchors):
            z = head["cls_logits"][i]
            boxes = model.box_coder.decode_single(head["bbox_regression"][i], anchor)[:, None]
            out.append(_Candidates(z, torch.softmax(z.detach(), -1), boxes))
        return out
    head, anchors, _ = args
    out = []
    for i, per_level in enumerate(anchors):
        z = torch.cat([level[i] for level in head["cls_logits"]])
        regression = torch.cat([level[i] for level in head["bbox_regression"]])
        anchor = torch.cat(list(per_level))
        if kind == "fcos":
            centerness = torch.cat([level[i] for level in head["bbox_ctrness"]]).detach()
            confidence = torch.sqrt(torch.sigmoid(z.detach()) * torch.sigmoid(centerness))
            boxes = model.box_coder.decode(regression, anchor)
        else:
            confidence = torch.sigmoid(z.detach())
            boxes = model.box_coder.decode_single(regression, anchor)
        out.append(_Candidates(z, confidence, boxes[:, None]))
    return out


def _raw_detections(kind: str, result: Any) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(boxes, scores, labels)`` per photo, in the resized frame, from ``postprocess_detections``' result."""
    if kind == "rcnn":
        return list(zip(*result, strict=True))
    return [(d["boxes"], d["scores"], d["labels"]) for d in result]


def _match(cand: _Candidates, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
           size: tuple[int, int]) -> list[int]:
    """The candidate row of each detection: equal class confidence and equal clipped box."""
    from torchvision.ops import boxes as box_ops

    rows = []
    for box, score, label in zip(boxes.detach(), scores.detach(), labels.tolist(), strict=True):
        cand_boxes = box_ops.clip_boxes_to_image(cand.boxes_of(label).detach(), size)
        box_err = (cand_boxes - box).abs().amax(1) / box.abs().max().clamp(min=1.0)
        err = (cand.confidences[:, label] - score).abs() / score.abs().clamp(min=1e-6) + box_err
        row = int(err.argmin())
        if float(err[row]) > 1e-3:
            raise TraceError(f"could not trace a detection (class {label}, score {float(score):.4g}) back to its "
                             f"candidate (closest mismatch {float(err[row]):.2g})")
        rows.append(row)
    return rows


def trace_detector(model: nn.Module, images: Sequence[torch.Tensor],
                   photo_sizes: Sequence[tuple[int, int]] | None = None) -> tuple[DetectorTrace, Any]:
    """Run ``model`` on ``images`` (``[0, 1]`` tensors ``(3, H, W)``) and trace every detection to its candidate.

    Runs in the caller's grad mode and hooks (the caller decides where the autograd graph starts); the model should
    be in eval mode. Returns the trace and the detector's own output (a list of dicts, in the tensors' pixels).
    ``photo_sizes`` (``(width, height)`` per image) says that a tensor is a scaled-down copy of a larger photo: the
    detections' boxes (and box components, :meth:`DetectorTrace.score`) are then in the photo's pixels.

    Raises:
        TraceError: a detection that matches no candidate.
    """
    kind = detector_kind(model)
    store: dict[str, Any] = {}
    with _record_detector(model, kind, store):
        output = model(list(images))
    image_list = store["images"]
    resized = [(int(h), int(w)) for h, w in image_list.image_sizes]
    inputs = [(int(x.shape[-2]), int(x.shape[-1])) for x in images]
    originals = [(h, w) for w, h in photo_sizes] if photo_sizes is not None else list(inputs)
    if len(originals) != len(inputs):
        raise UsageError(f"got {len(originals)} photo sizes for {len(inputs)} images")
    cands = _candidates(model, kind, store["args"])
    detections: list[list[Detection]] = []
    for i, ((boxes, scores, labels), final) in enumerate(zip(_raw_detections(kind, store["result"]), output,
                                                             strict=True)):
        rows = _match(cands[i], boxes, scores, labels, resized[i])
        to_photo = final["boxes"].new_tensor([originals[i][1] / inputs[i][1], originals[i][0] / inputs[i][0]] * 2)
        photo_boxes = (final["boxes"].detach().float() * to_photo).cpu().tolist()
        detections.append([
            Detection(image_index=i, rank=r, label=int(label), score=float(score),
                      box=tuple(float(v) for v in photo_boxes[r]), source=row)  # type: ignore[arg-type]
            for r, (row, label, score) in enumerate(zip(rows, labels.tolist(), scores.detach().tolist(), strict=True))
        ])
    canvas = (int(image_list.tensors.shape[-2]), int(image_list.tensors.shape[-1]))
    return DetectorTrace(kind, detections, cands, resized, originals, canvas, inputs), output


# ---------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class DetectionMap:
    """The explanation of one detection.

    Attributes:
        detection: the explained detection.
        component: ``"score"`` or a box coordinate.
        value: the explained scalar ``Y`` (the class logit, or the coordinate in photo pixels).
        map: float32 ``(H, W)`` at the resolution of the photo tensor (the photo's, unless the detector was handed
            a scaled-down copy of a large photo): the normalised CAM in [0, 1], or for guided backprop the
            channel-summed absolute gradient normalised to [0, 1].
        maps_layer: CAMs: layer -> ``ReLU(sum_k w_k A_k)`` at the layer's resolution over the padded canvas.
        gradient: guided backprop: float32 ``(3, H, W)`` ``dY/dphoto`` (of the photo tensor); ``None`` for CAMs.
        notes: e.g. a layer the score does not depend on (its map is empty).
    """

    detection: Detection
    component: str
    value: float
    map: np.ndarray = field(repr=False)
    maps_layer: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    gradient: np.ndarray | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)


@dataclass
class DetectionResult:
    """One batch of photos.

    Attributes:
        method: ``"gradcam"``, ``"gradcam++"`` or ``"guided"``.
        layers: CAM layers (empty for guided backprop).
        detections: per photo, all of the detector's detections.
        maps: per photo, the explained detections' maps, in rank order.
        notes: per photo, why nothing was explained (``None`` when something was).
        warnings: run-level remarks (e.g. activations the guided rule does not cover).
    """

    method: str
    layers: tuple[str, ...]
    detections: list[list[Detection]]
    maps: list[list[DetectionMap]]
    notes: list[str | None]
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# Shared machinery: CAM from activations and gradients, layer map to photo
# ---------------------------------------------------------------------------------------------------------------


def _cam_class(method: str, model: nn.Module, layers: Sequence[str]) -> Any:
    from explain.cam import get_method

    return get_method(method)(model, list(layers))


def _layer_cam(cam: Any, a: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    """``ReLU(sum_k w_k A_k)`` ``(h, w)`` for one photo's activations ``(K, h, w)`` (zeros without gradient)."""
    if g is None:
        return torch.zeros(a.shape[-2:], dtype=a.dtype, device=a.device)
    w = cam.channel_weights(a[None], g[None])
    return torch.relu(torch.einsum("nk,nkhw->nhw", w, a[None]))[0]


def _to_photo(layer_map: torch.Tensor, canvas: tuple[int, int], valid: tuple[int, int],
              photo: tuple[int, int]) -> torch.Tensor:
    """Upsample a canvas-level map to the canvas, keep the ``valid`` top-left part, resize to the photo."""
    m = F.interpolate(layer_map[None, None].float(), size=canvas, mode="bilinear", align_corners=False)
    m = m[..., : valid[0], : valid[1]]
    if tuple(m.shape[-2:]) != tuple(photo):
        m = F.interpolate(m, size=photo, mode="bilinear", align_corners=False)
    return m[0, 0]


def _gradient_map(gradient: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` gradient -> ``(H, W)`` channel-summed magnitude, normalised to [0, 1]."""
    return normalize_maps(gradient.abs().sum(0))


def _slots(chosen: list[list[Detection]]) -> list[list[Detection]]:
    """Group the k-th chosen detection of every photo: one backward pass per group."""
    depth = max((len(c) for c in chosen), default=0)
    return [[c[k] for c in chosen if len(c) > k] for k in range(depth)]


def _check_method(method: str) -> str:
    key = method.strip().lower()
    aliases = {"guided-backprop": "guided", "gradcampp": "gradcam++", "gradcam-plus-plus": "gradcam++"}
    key = aliases.get(key, key)
    if key not in DETECTION_METHODS:
        raise UsageError(f"unknown method {method!r}: choose one of {', '.join(DETECTION_METHODS)}")
    return key


def _to_model(model: nn.Module, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    from explain.device import model_device

    device = model_device(model)
    return [(t.detach().to(device) if device is not None else t.detach()).clone() for t in tensors]


# ---------------------------------------------------------------------------------------------------------------
# Detections
# ---------------------------------------------------------------------------------------------------------------


def explain_detections(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    request: DetectionRequest | None = None,
    method: str = "gradcam++",
    layers: str | Sequence[str] | None = None,
    photo_sizes: Sequence[tuple[int, int]] | None = None,
) -> DetectionResult:
    """Explain chosen detections of a torchvision detector on a batch of photos.

    Args:
        model: a torchvision Faster R-CNN, RetinaNet, FCOS or SSD(Lite) (left as found; runs in eval mode).
        images: photos as ``[0, 1]`` float tensors ``(3, H, W)``, any sizes.
        request: which detections and what of them (default: the top detection's class score).
        method: ``"gradcam"``, ``"gradcam++"`` or ``"guided"`` (guided backpropagation).
        layers: CAM layer(s), dotted names (``cnn-explain layers``); several are fused by the mean of their
            normalised maps. Required for CAMs, ignored by guided backprop.
        photo_sizes: ``(width, height)`` of the photos when ``images`` are scaled-down copies of them
            (:class:`explain.detection.models.DetectionPreprocess` bounds large photos): boxes, ``request.box`` and
            box components are then in photo pixels, maps and gradients at the size of ``images``.

    Returns:
        A :class:`DetectionResult`; photos where nothing was chosen carry a note instead of maps.

    Raises:
        UsageError: unknown method, no layers for a CAM, bad images. LayerError: unknown or non-spatial layer.
        TraceError: a detection that cannot be traced (unknown detector internals).
    """
    request = request or DetectionRequest()
    method = _check_method(method)
    if not images:
        raise UsageError("no images given")
    for x in images:
        if not (isinstance(x, torch.Tensor) and x.dim() == 3 and x.is_floating_point()):
            raise UsageError("detector inputs must be float (3, H, W) tensors in [0, 1]")
    detector_kind(model)
    if method == "guided":
        return _guided_detections(model, images, request, photo_sizes)
    names = [layers] if isinstance(layers, str) else list(layers or [])
    if not names:
        raise UsageError("a CAM needs at least one layer (the CLI uses the model's default)")
    cam = _cam_class(method, model, names)
    return _cam_detections(model, images, request, cam, photo_sizes)


def _cam_detections(model: nn.Module, images: Sequence[torch.Tensor], request: DetectionRequest,
                    cam: Any, photo_sizes: Sequence[tuple[int, int]] | None) -> DetectionResult:
    layers = list(cam.layers)
    with torch.inference_mode(False), eval_mode(model):
        xs = _to_model(model, images)
        tap = LayerTap(model, layers, gradient_sources=layers, spatial=layers)
        with tap, torch.no_grad():
            trace, _ = trace_detector(model, xs, photo_sizes)
        tap.require_all()
        chosen, notes = _choose(trace, request)
        acts = [tap.outputs[layer] for layer in layers]
        results: dict[Detection, DetectionMap] = {}
        slots = _slots(chosen)
        for k, slot in enumerate(slots):
            ys = [trace.score(d, request.component) for d in slot]
            total = torch.stack(ys).sum()
            grads: Sequence[torch.Tensor | None] = (
                torch.autograd.grad(total, acts, retain_graph=k < len(slots) - 1, allow_unused=True)
                if total.requires_grad else [None] * len(acts)
            )
            for d, y in zip(slot, ys, strict=True):
                results[d] = _detection_cam(cam, trace, d, float(y.detach()), request.component, layers, acts, grads)
        del tap, acts
    return DetectionResult(method=cam.name, layers=tuple(layers), detections=trace.detections,
                           maps=[[results[d] for d in c] for c in chosen], notes=notes)


def _detection_cam(cam: Any, trace: DetectorTrace, d: Detection, value: float, component: str,
                   layers: list[str], acts: list[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> DetectionMap:
    i = d.image_index
    maps_layer: dict[str, np.ndarray] = {}
    photo_maps = []
    notes = []
    for layer, a, g in zip(layers, acts, grads, strict=True):
        gi = None if g is None else g[i]
        if gi is None or not bool(gi.any()):
            notes.append(f"the explained {component} does not depend on layer {layer!r} for this detection "
                         "(e.g. an FPN level its RoI was not pooled from): its map is empty")
            gi = None
        layer_map = _layer_cam(cam, a[i].detach(), gi)
        maps_layer[layer] = layer_map.detach().float().cpu().numpy()
        photo_maps.append(normalize_maps(_to_photo(layer_map.detach(), trace.canvas, trace.resized[i],
                                                   trace.inputs[i])))
    fused = photo_maps[0] if len(photo_maps) == 1 else torch.stack(photo_maps).mean(0)
    return DetectionMap(detection=d, component=component, value=value, map=fused.cpu().numpy(),
                        maps_layer=maps_layer, notes=notes)


def _choose(trace: DetectorTrace, request: DetectionRequest) -> tuple[list[list[Detection]], list[str | None]]:
    chosen, notes = [], []
    for dets in trace.detections:
        picked, note = select_detections(dets, request)
        chosen.append(picked)
        notes.append(note)
    return chosen, notes


def _guided_detections(model: nn.Module, images: Sequence[torch.Tensor], request: DetectionRequest,
                       photo_sizes: Sequence[tuple[int, int]] | None) -> DetectionResult:
    from explain.guided import GuidedRectifiers, no_rectifier_warning

    guided = GuidedRectifiers(model, "guided")
    with torch.inference_mode(False), eval_mode(model):
        leaves = [x.requires_grad_(True) for x in _to_model(model, images)]
        with torch.enable_grad(), guided:
            trace, _ = trace_detector(model, leaves, photo_sizes)
        chosen, notes = _choose(trace, request)
        results: dict[Detection, DetectionMap] = {}
        slots = _slots(chosen)
        for k, slot in enumerate(slots):
            ys = [trace.score(d, request.component) for d in slot]
            grads = torch.autograd.grad(torch.stack(ys).sum(), [leaves[d.image_index] for d in slot],
                                        retain_graph=k < len(slots) - 1, allow_unused=True)
            for d, y, g in zip(slot, ys, grads, strict=True):
                g = torch.zeros_like(leaves[d.image_index]) if g is None else g.detach()
                results[d] = DetectionMap(detection=d, component=request.component, value=float(y.detach()),
                                          map=_gradient_map(g).cpu().numpy(), gradient=g.float().cpu().numpy())
    warnings = [] if sum(guided.counts.values()) else [no_rectifier_warning("guided backprop")]
    if guided.unguided:
        listed = ", ".join(f"{name} {count}" for name, count in guided.unguided.items())
        warnings.append(f"the model also uses activations the guided rule is not defined for ({listed}); their "
                        "ordinary gradient passes through them")
    return DetectionResult(method="guided", layers=(), detections=trace.detections,
                           maps=[[results[d] for d in c] for c in chosen], notes=notes, warnings=warnings)


# ---------------------------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentationTarget:
    """A class and the region its logits are summed over.

    Attributes:
        index: the class.
        mask: ``None`` for the pixels predicted as the class, else a boolean ``(H, W)`` array at model-input
            resolution.
    """

    index: int
    mask: np.ndarray | None = field(default=None, compare=False, hash=False)


@dataclass
class SegmentationMap:
    """The explanation of one class mask of one image.

    Attributes:
        image_index: position in the batch.
        target: the class.
        region: ``"predicted"`` or ``"mask"``.
        pixels: number of pixels in the region.
        value: ``Y``, the sum of the class's logits over the region.
        map: float32 ``(H, W)`` at model-input resolution in [0, 1] (normalised CAM, or guided magnitude).
        mask: boolean ``(H, W)``: the region.
        maps_layer: CAMs: layer -> ``ReLU(sum_k w_k A_k)`` at the layer's resolution.
        gradient: guided backprop: ``(3, H, W)`` ``dY/dx`` for the normalised input ``x``.
    """

    image_index: int
    target: int
    region: str
    pixels: int
    value: float
    map: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)
    maps_layer: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    gradient: np.ndarray | None = field(default=None, repr=False)


@dataclass
class SegmentationResult:
    """One batch: the class map of every image, the explained masks, and notes for empty regions."""

    method: str
    layers: tuple[str, ...]
    predicted: np.ndarray  # (N, H, W) int64 argmax class map
    maps: list[SegmentationMap]
    notes: list[list[str]]
    warnings: list[str] = field(default_factory=list)

    def for_image(self, index: int) -> list[SegmentationMap]:
        return [m for m in self.maps if m.image_index == index]


def _segmentation_logits(output: Any) -> torch.Tensor:
    out = output["out"] if isinstance(output, dict) else output
    if not (isinstance(out, torch.Tensor) and out.dim() == 4):
        raise UsageError("a segmenter must return (N, C, H, W) logits or a dict with them under 'out'")
    return out


def _regions(logits: torch.Tensor, targets: Sequence[SegmentationTarget],
             ) -> tuple[list[list[tuple[SegmentationTarget, torch.Tensor]]], list[list[str]]]:
    """Per image, the (target, region mask) pairs to explain, and notes for empty regions."""
    n, c, h, w = logits.shape
    predicted = logits.detach().argmax(1)
    regions: list[list[tuple[SegmentationTarget, torch.Tensor]]] = [[] for _ in range(n)]
    notes: list[list[str]] = [[] for _ in range(n)]
    for t in targets:
        if not 0 <= t.index < c:
            from explain.errors import TargetError

            raise TargetError(f"class index {t.index} is out of range: the model has {c} classes (0..{c - 1})")
        if t.mask is not None and tuple(t.mask.shape) != (h, w):
            raise UsageError(f"mask shape {tuple(t.mask.shape)} differs from the logits' {(h, w)}")
        for i in range(n):
            m = (predicted[i] == t.index) if t.mask is None else torch.as_tensor(t.mask, device=logits.device)
            if not bool(m.any()):
                where = "predicted anywhere" if t.mask is None else "inside the mask (empty mask)"
                notes[i].append(f"class {t.index} is not {where}: nothing to explain")
                continue
            regions[i].append((t, m))
    return regions, notes


def explain_segmentation(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: Sequence[SegmentationTarget],
    method: str = "gradcam++",
    layers: str | Sequence[str] | None = None,
) -> SegmentationResult:
    """Explain class masks of a semantic segmenter on a batch of equally sized inputs.

    ``Y = sum_{p in M} S_c(p)`` per image and target (see the module docstring). Targets are applied to every
    image; an image where a target's region is empty gets a note instead of a map.

    Args:
        model: returns ``(N, C, H, W)`` logits or ``{"out": logits, ...}`` (torchvision segmenters).
        inputs: ``(N, 3, H, W)`` preprocessed images.
        targets: classes and regions.
        method: ``"gradcam"``, ``"gradcam++"`` or ``"guided"``.
        layers: CAM layer(s) (required for CAMs).

    Raises:
        UsageError, LayerError, TargetError: bad method, inputs, layers, class or mask.
    """
    method = _check_method(method)
    if not (isinstance(inputs, torch.Tensor) and inputs.dim() == 4):
        raise UsageError("segmenter inputs must be a (N, 3, H, W) tensor")
    if not targets:
        raise UsageError("no segmentation target given")
    if method == "guided":
        return _guided_segmentation(model, inputs, targets)
    names = [layers] if isinstance(layers, str) else list(layers or [])
    if not names:
        raise UsageError("a CAM needs at least one layer (the CLI uses the model's default)")
    for name in names:
        resolve_layer(model, name)
    cam = _cam_class(method, model, names)
    with torch.inference_mode(False), eval_mode(model):
        x = _to_model(model, [inputs])[0]
        tap = LayerTap(model, names, gradient_sources=names, spatial=names)
        with tap, torch.no_grad():
            logits = _segmentation_logits(model(x))
        tap.require_all()
        regions, notes = _regions(logits, targets)
        acts = [tap.outputs[name] for name in names]
        maps = []
        jobs = [(i, t, m) for i, pairs in enumerate(regions) for t, m in pairs]
        for j, (i, t, m) in enumerate(jobs):
            y = logits[i, t.index][m].sum()
            grads = torch.autograd.grad(y, acts, retain_graph=j < len(jobs) - 1, allow_unused=True) \
                if y.requires_grad else [None] * len(acts)
            layer_maps = {name: _layer_cam(cam, a[i].detach(), None if g is None else g[i])
                          for name, a, g in zip(names, acts, grads, strict=True)}
            ups = [normalize_maps(F.interpolate(lm[None, None].float(), size=x.shape[-2:], mode="bilinear",
                                                align_corners=False)[0, 0]) for lm in layer_maps.values()]
            fused = ups[0] if len(ups) == 1 else torch.stack(ups).mean(0)
            maps.append(SegmentationMap(
                image_index=i, target=t.index, region="predicted" if t.mask is None else "mask",
                pixels=int(m.sum()), value=float(y.detach()), map=fused.cpu().numpy(), mask=m.cpu().numpy(),
                maps_layer={k: v.detach().float().cpu().numpy() for k, v in layer_maps.items()}))
        predicted = logits.detach().argmax(1).cpu().numpy()
        del tap, acts
    return SegmentationResult(method=cam.name, layers=tuple(names), predicted=predicted, maps=maps, notes=notes)


def _guided_segmentation(model: nn.Module, inputs: torch.Tensor,
                         targets: Sequence[SegmentationTarget]) -> SegmentationResult:
    from explain.guided import GuidedRectifiers

    guided = GuidedRectifiers(model, "guided")
    with torch.inference_mode(False), eval_mode(model):
        leaf = _to_model(model, [inputs])[0].requires_grad_(True)
        with torch.enable_grad(), guided:
            logits = _segmentation_logits(model(leaf.clone()))
        regions, notes = _regions(logits, targets)
        jobs = [(i, t, m) for i, pairs in enumerate(regions) for t, m in pairs]
        maps = []
        for j, (i, t, m) in enumerate(jobs):
            y = logits[i, t.index][m].sum()
            (g,) = torch.autograd.grad(y, leaf, retain_graph=j < len(jobs) - 1)
            gi = g[i].detach()
            maps.append(SegmentationMap(
                image_index=i, target=t.index, region="predicted" if t.mask is None else "mask",
                pixels=int(m.sum()), value=float(y.detach()), map=_gradient_map(gi).cpu().numpy(),
                mask=m.cpu().numpy(), gradient=gi.float().cpu().numpy()))
        predicted = logits.detach().argmax(1).cpu().numpy()
    warnings = []
    if guided.unguided:
        listed = ", ".join(f"{name} {count}" for name, count in guided.unguided.items())
        warnings.append(f"the model also uses activations the guided rule is not defined for ({listed}); their "
                        "ordinary gradient passes through them")
    return SegmentationResult(method="guided", layers=(), predicted=predicted, maps=maps, notes=notes,
                              warnings=warnings)
