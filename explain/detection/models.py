"""Torchvision detectors and segmenters in the backbone registry: loaders, preprocessing, default layers.

They join the classifier registry (:mod:`explain.backbones`) with families ``"detection"`` and
``"segmentation"``, so ``cnn-explain models`` lists them and ``cnn-explain layers --model NAME`` shows their
backbone and FPN layers. Weights follow the same rules as for classifiers:

* ``None`` / ``DEFAULT``: torchvision's default weights, read **offline** from torch's hub cache (never downloaded;
  a missing file is a clear :class:`~explain.errors.WeightsUnavailableError` naming the file and URL);
* a torchvision weights name (``COCO_V1``, ``COCO_WITH_VOC_LABELS_V1``): the same, class names from the weights'
  metadata (no network);
* ``"none"``: random weights (the backbone too: nothing is downloaded), ``num_classes`` as asked (default: the
  default weights' class count: 91 COCO categories for detectors, 21 VOC categories for segmenters);
* a checkpoint file: a state_dict for the named architecture, read with ``weights_only=True``; the class count
  comes from the checkpoint's predictor shapes, the names from ``--classes`` (for detectors the file may leave out
  the background class 0: it is added as ``__background__``).

Preprocessing differs from classifiers on purpose:

* detectors take the photo itself as a ``[0, 1]`` tensor at its own size; they resize and normalise internally
  (``GeneralizedRCNNTransform``), so their "model input" is the full photo and every map is returned at photo
  resolution;
* segmenters take the photo resized so that its shorter side is 520 pixels (torchvision's ``SemanticSegmentation``
  preset), normalised with the ImageNet mean and std, without cropping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explain.backbones import BackboneSpec, is_weights_file, register, torchvision_available
from explain.backbones.base import Backbone, Geometry
from explain.display import DISPLAY_MAX_PIXELS, display_copy, display_size
from explain.errors import ModelError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from explain.backbones import LoadRequest

__all__ = [
    "DETECTORS", "SEGMENTERS", "DetectionPreprocess", "SegmentationPreprocess", "configure_detector",
    "detector_kind", "task_of",
]

#: Torchvision detectors the engine can trace (two-stage R-CNN, RetinaNet, FCOS, SSD).
DETECTORS = (
    "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn", "ssd300_vgg16", "ssdlite320_mobilenet_v3_large",
)
#: Torchvision semantic segmenters (their output is ``{"out": (N, C, H, W) logits}``).
SEGMENTERS = (
    "fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SEGMENTATION_RESIZE = 520
BACKGROUND = "__background__"


@dataclass(frozen=True)
class DetectionPreprocess:
    """Photo -> ``(3, H, W)`` float tensor in [0, 1] at the photo's own size (detectors resize internally).

    A photo of more than ``max_pixels`` pixels is first scaled down (antialiased, aspect ratio kept) to the size
    figures draw it at (:func:`explain.display.display_copy`): the detector resizes its input to about 1 MP
    (``min_size`` 800, ``max_size`` 1333 for R-CNN) in any case, and a float tensor of a 99 MP photo alone would
    take 1.2 GB. The detector then sees a smoothly downsampled photo where it would have sampled the full one.

    Attributes:
        crop: the nominal ``(height, width)`` the detector resizes to (``min_size`` for R-CNN-style transforms, the
            fixed size for SSD); used for layer tables only.
        max_pixels: largest photo handed to the detector at its own size.
    """

    crop: tuple[int, int]
    max_pixels: int = DISPLAY_MAX_PIXELS

    def __call__(self, image: Image.Image) -> torch.Tensor:
        import numpy as np
        import torch

        array = np.asarray(display_copy(image, self.max_pixels).image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def geometry(self, width: int, height: int) -> Geometry:
        """The whole photo is the model input (scaled down when larger than ``max_pixels``)."""
        input_width, input_height = display_size(width, height, self.max_pixels)
        return Geometry(image_size=(width, height), crop_box=(0.0, 0.0, float(width), float(height)),
                        model_input=(input_height, input_width))

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "detector", "scale": "[0, 1]", "resize": "inside the model", "nominal_size": list(self.crop),
                "max_pixels": self.max_pixels}


@dataclass(frozen=True)
class SegmentationPreprocess:
    """Resize the shorter side to ``resize`` (bilinear, no crop), scale to [0, 1], normalise per channel."""

    resize: int = SEGMENTATION_RESIZE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def crop(self) -> tuple[int, int]:
        """Nominal input size (for layer tables)."""
        return self.resize, self.resize

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` after resizing (torchvision's rounding: the long side is truncated)."""
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize

    def __call__(self, image: Image.Image) -> torch.Tensor:
        import numpy as np
        import torch
        from PIL import Image as PILImage

        size = self.resized_size(*image.size)
        if size != image.size:
            image = image.resize(size, PILImage.BILINEAR)
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        x = torch.from_numpy(array).permute(2, 0, 1)
        return ((x - x.new_tensor(self.mean).view(3, 1, 1)) / x.new_tensor(self.std).view(3, 1, 1)).contiguous()

    def geometry(self, width: int, height: int) -> Geometry:
        """The whole photo, resized."""
        rw, rh = self.resized_size(width, height)
        return Geometry(image_size=(width, height), crop_box=(0.0, 0.0, float(width), float(height)),
                        model_input=(rh, rw))

    def as_dict(self) -> dict[str, Any]:
        return {"resize": self.resize, "crop": None, "mean": list(self.mean), "std": list(self.std),
                "interpolation": "bilinear"}


def task_of(backbone: Backbone) -> str:
    """``"detection"``, ``"segmentation"`` or ``"classification"``."""
    return str(backbone.extra.get("task", "classification"))


def detector_kind(model: Any) -> str:
    """``"rcnn"``, ``"retinanet"``, ``"fcos"`` or ``"ssd"`` for a torchvision detector.

    Raises:
        ModelError: not one of those detector classes.
    """
    from torchvision.models.detection.fcos import FCOS
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD

    for cls, kind in ((GeneralizedRCNN, "rcnn"), (RetinaNet, "retinanet"), (FCOS, "fcos"), (SSD, "ssd")):
        if isinstance(model, cls):
            return kind
    raise ModelError(f"{type(model).__name__} is not a torchvision detector (Faster R-CNN, RetinaNet, FCOS or SSD)")


def configure_detector(
    model: Any, score_threshold: float | None = None, min_size: int | None = None, max_size: int | None = None,
    detections_per_image: int | None = None,
) -> None:
    """Change a detector's postprocessing threshold, resize sizes and detection cap (``None``: leave as is).

    ``score_threshold`` is the detector's own candidate threshold (``box_score_thresh`` of R-CNN,
    ``score_thresh`` of the others): only candidates above it can become detections. ``min_size``/``max_size``
    are the internal resize of R-CNN, RetinaNet and FCOS (SSD has a fixed size and ignores them).
    """
    kind = detector_kind(model)
    post = model.roi_heads if kind == "rcnn" else model
    if score_threshold is not None:
        post.score_thresh = float(score_threshold)
    if detections_per_image is not None:
        post.detections_per_img = int(detections_per_image)
    if kind != "ssd":
        if min_size is not None:
            model.transform.min_size = (int(min_size),)
        if max_size is not None:
            model.transform.max_size = int(max_size)


def candidate_threshold(model: Any) -> float:
    """The detector's own candidate score threshold."""
    kind = detector_kind(model)
    return float((model.roi_heads if kind == "rcnn" else model).score_thresh)


# --- building -----------------------------------------------------------------------------------------------

def _build(arch: str, num_classes: int, aux: bool = False) -> Any:
    """``arch`` with random weights (backbone too: no download) and ``num_classes`` outputs."""
    import warnings

    from torchvision.models import get_model

    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
    if arch in SEGMENTERS and not arch.startswith("lraspp"):
        kwargs["aux_loss"] = aux
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_model(arch, **kwargs)


def _default_classes(arch: str) -> list[str]:
    from explain.backbones.torchvision_models import weights_enum

    return list(weights_enum(arch, "DEFAULT").meta["categories"])


def _reference_count(arch: str) -> int:
    return 21 if arch in SEGMENTERS else 91


def _checkpoint_model(arch: str, request: LoadRequest) -> tuple[Any, str, str]:
    """A user checkpoint (a state_dict) for ``arch``; the class count comes from its predictor shapes."""
    import torch

    from explain.backbones import sha256_file
    from explain.backbones.checkpoint import extract_state_dict, load_exactly, read_checkpoint

    path = Path(str(request.weights)).expanduser()
    obj = read_checkpoint(path, trust=request.trust_checkpoint)
    if isinstance(obj, torch.nn.Module) and not isinstance(obj, torch.jit.ScriptModule):
        return obj, str(path), sha256_file(path)
    if isinstance(obj, torch.jit.ScriptModule):
        raise ModelError(f"{str(path)!r} is a TorchScript archive; detectors and segmenters need a state_dict "
                         "(their postprocessing must be traced in Python)")
    state = extract_state_dict(obj, path)
    aux = any(k.startswith("aux_classifier.") for k in state)
    reference = _build(arch, _reference_count(arch), aux).state_dict()
    counts = {round(v.shape[0] * _reference_count(arch) / reference[k].shape[0])
              for k, v in state.items()
              if k in reference and v.ndim >= 1 and reference[k].ndim >= 1 and v.shape[0] != reference[k].shape[0]}
    if len(counts) > 1:
        raise ModelError(f"{str(path)!r}: its head shapes imply different class counts {sorted(counts)}; "
                         f"is --model {arch} right?")
    found = counts.pop() if counts else _reference_count(arch)
    if request.num_classes is not None and request.num_classes not in (found, found - 1):
        raise ModelError(f"{str(path)!r} has {found} classes but {request.num_classes} were asked for "
                         "(--classes/--num-classes)")
    return load_exactly(_build(arch, found, aux), state, arch, path), str(path), sha256_file(path)


def _class_names(arch: str, request: LoadRequest, count: int, defaults: Callable[[], list[str]]) -> list[str]:
    names = request.class_names
    if names is not None:
        if len(names) == count:
            return list(names)
        if arch in DETECTORS and len(names) == count - 1:
            return [BACKGROUND, *names]
        extra = " (or one fewer, without the background class)" if arch in DETECTORS else ""
        raise ModelError(f"--classes lists {len(names)} names but the model has {count} classes{extra}")
    found = defaults()
    return found if len(found) == count else [f"class_{i}" for i in range(count)]


def _output_count(model: Any, arch: str) -> int:
    """Number of classes of a built detector or segmenter."""
    if arch in SEGMENTERS:
        head = model.classifier
        last = [m for m in head.modules() if type(m).__name__ == "Conv2d"][-1]
        return int(last.out_channels)
    kind = detector_kind(model)
    if kind == "rcnn":
        return int(model.roi_heads.box_predictor.cls_score.out_features)
    if kind == "ssd":
        return int(model.head.classification_head.num_columns)
    return int(model.head.classification_head.num_classes)


def _default_layer(model: Any, arch: str) -> str:
    """The last stage of the feature extractor: every head output depends on it (see the module docstring)."""
    if arch in SEGMENTERS:
        return f"backbone.{list(dict(model.backbone.named_children()))[-1]}"
    if hasattr(model.backbone, "body"):
        return f"backbone.body.{list(dict(model.backbone.body.named_children()))[-1]}"
    if arch.startswith("ssdlite"):
        return "backbone.features.0"  # feeds every SSDLite level (features.1 only the coarser ones)
    return "backbone.features"


def _load(spec: BackboneSpec, request: LoadRequest) -> Backbone:
    import torch

    from explain.backbones import sha256_file
    from explain.backbones.torchvision_models import build_pretrained, weights_enum

    arch = spec.name
    if torch.get_default_device().type == "meta":
        # Tracing a detector needs real tensors (NMS has no meta kernel): make the caller build a real model.
        raise NotImplementedError("detectors and segmenters are not built on the meta device")
    weights = request.weights or "DEFAULT"
    defaults = lambda: _default_classes(arch)  # noqa: E731
    if weights.lower() == "none":
        count = request.num_classes or _reference_count(arch)
        if request.class_names is not None and arch in DETECTORS and request.num_classes == len(request.class_names):
            count = len(request.class_names) + (request.class_names[0] != BACKGROUND)
        model, label, digest = _build(arch, count), "none", None
    elif is_weights_file(weights):
        model, label, digest = _checkpoint_model(arch, request)
    else:
        entry = weights_enum(arch, weights)
        model, path = build_pretrained(arch, entry)
        label, digest = entry.name, sha256_file(path)
        defaults = lambda: list(entry.meta["categories"])  # noqa: E731
    model.eval()
    count = _output_count(model, arch)
    names = _class_names(arch, request, count, defaults)
    if arch in SEGMENTERS:
        preprocess: Any = SegmentationPreprocess()
        task = "segmentation"
    else:
        size = model.transform.fixed_size or (model.transform.min_size[0],) * 2
        preprocess = DetectionPreprocess(crop=(int(size[0]), int(size[1])))
        task = "detection"
    layer = _default_layer(model, arch)
    return Backbone(name=arch, model=model, preprocess=preprocess, class_names=names, default_layer=layer,
                    feature_layer=layer, weights=label, weights_sha256=digest, extra={"task": task})


for _arch in DETECTORS:
    register(BackboneSpec(name=_arch, family="detection", description=f"torchvision detector {_arch}",
                          default_weights="DEFAULT", loader=_load, available=torchvision_available(_arch)))
for _arch in SEGMENTERS:
    register(BackboneSpec(name=_arch, family="segmentation", description=f"torchvision segmenter {_arch}",
                          default_weights="DEFAULT", loader=_load, available=torchvision_available(_arch)))
