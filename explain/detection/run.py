"""``detect`` and ``segment`` over image files: explanations, figures, raw arrays and a manifest.

Outputs per photo (folder named after the input): ``detections.png`` (every detection, the explained ones framed)
or ``classes.png`` (the predicted class map); per explained detection / class mask: ``*.npy`` (the map at photo
resolution for detectors, at model-input resolution for segmenters), ``*_layer.npy`` (CAMs: the map at the layer's
resolution), ``*_gradient.npy`` (guided backprop: ``dY/dinput``), ``*.png`` (the map over the photo, box or region
drawn) and ``*_panel.{png,svg,pdf}``. A photo larger than :data:`explain.display.DISPLAY_MAX_PIXELS` is drawn
scaled down to that size, and so is the photo a detector is handed (its maps and gradients have that size; boxes
stay in photo pixels), so memory stays bounded whatever the photo's size. The manifest lists all of it (``items``:
one per explained detection or mask; ``images``: every photo's detections or classes, and a note when nothing was
explained); it is written last by the caller.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from explain.display import panel_copy, resize_plane
from explain.errors import InputError, ModelError, UsageError
from explain.figures import FigureStyle
from explain.manifest import Manifest, write_bytes, write_npy
from explain.run import RunSettings, keep_finished_on_interrupt, layer_slug, stem_map

if TYPE_CHECKING:
    from explain.backbones.base import Backbone
    from explain.detection.engine import DetectionMap, SegmentationMap
    from explain.detection.targets import Detection, DetectionRequest
    from explain.images import ImageFile, LoadedImage

METHOD_TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "guided": "guided backprop"}
COMPONENT_TEXT = {"score": "class logit", "x0": "box x0", "y0": "box y0", "x1": "box x1", "y1": "box y1"}


@dataclass
class DetectOptions:
    """What ``detect`` explains and how it draws it.

    Attributes:
        method: ``gradcam``, ``gradcam++`` or ``guided``.
        layers: CAM layers (empty: the model's default, its last backbone stage).
        ranks: 1-based detection ranks to explain (rank mode; default ``[1]``, the top detection).
        box: ``"x0,y0,x1,y1"`` in photo pixels: explain the detection overlapping it (IoU >= ``min_iou``).
        target: with ``box``: the class the detection must have (index or name); ``None``: any class.
        min_iou: the overlap ``box`` needs.
        score_threshold: explain every detection with confidence >= this (also lowers the detector's own
            candidate threshold when that is higher).
        component: ``score`` (class logit) or a box coordinate ``x0``/``y0``/``x1``/``y1``.
        candidate_threshold: the detector's own candidate threshold (default: the model's, 0.05 for most).
        min_size: the detector's internal resize (shorter side; default: the model's, 800 for R-CNN).
        fmt: panel format (``png``, ``svg``, ``pdf``).
        colormap: matplotlib colour map for CAMs.
        alpha: heat opacity over the photo.
        style: resolution and titles of the figures (:class:`explain.figures.FigureStyle`).
    """

    method: str = "gradcam++"
    layers: list[str] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    box: str | None = None
    target: str | None = None
    min_iou: float = 0.5
    score_threshold: float | None = None
    component: str = "score"
    candidate_threshold: float | None = None
    min_size: int | None = None
    fmt: str = "png"
    colormap: str = "inferno"  # explain.figures.DEFAULT_COLORMAP
    alpha: float = 0.5
    style: FigureStyle = FigureStyle()


@dataclass
class SegmentOptions:
    """What ``segment`` explains.

    Attributes:
        method: ``gradcam``, ``gradcam++`` or ``guided``.
        layers: CAM layers (empty: the model's default).
        targets: classes (index or name); empty: every predicted class except the background.
        mask: an image file whose non-black pixels form the region (resized to the model input); ``None``: the
            pixels predicted as the class.
        fmt, colormap, alpha, style: as for ``detect``.
    """

    method: str = "gradcam++"
    layers: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    mask: Path | None = None
    fmt: str = "png"
    colormap: str = "inferno"  # explain.figures.DEFAULT_COLORMAP
    alpha: float = 0.5
    style: FigureStyle = FigureStyle()


def _require_task(backbone: Backbone, task: str, command: str) -> None:
    from explain.detection.models import task_of

    found = task_of(backbone)
    if found != task:
        other = {"detection": "detect", "segmentation": "segment", "classification": "cam"}[found]
        raise ModelError(f"{backbone.name} is a {found} model, not a {task} model: use 'cnn-explain {other}' "
                         f"('cnn-explain models' lists the {task} models)")


def _check_common(backbone: Backbone, method: str, layers: Sequence[str], fmt: str, colormap: str,
                  alpha: float) -> tuple[str, list[str]]:
    from explain.detection.engine import _check_method
    from explain.figures import check_colormap, check_format
    from explain.modules import resolve_layer

    key = _check_method(method)
    names = [] if key == "guided" else (list(dict.fromkeys(layers)) or [backbone.default_layer])
    for name in names:
        resolve_layer(backbone.model, name)
    check_format(fmt)
    check_colormap(colormap)
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"--alpha must lie in [0, 1] (got {alpha})")
    return key, names


def resolve_detect_options(backbone: Backbone, opts: DetectOptions) -> tuple[str, list[str], DetectionRequest]:
    """Check every option before any work and configure the detector: ``(method, layers, request)``.

    Raises:
        ModelError: not a detector. UsageError, LayerError, TargetError: the first bad option.
    """
    from explain.detection.models import candidate_threshold, configure_detector
    from explain.detection.targets import DetectionRequest, parse_box
    from explain.targets import resolve_class

    _require_task(backbone, "detection", "detect")
    method, layers = _check_common(backbone, opts.method, opts.layers, opts.fmt, opts.colormap, opts.alpha)
    chosen_modes = sum([bool(opts.ranks), opts.box is not None, opts.score_threshold is not None])
    if chosen_modes > 1:
        raise UsageError("choose detections one way: --detection RANK, --box (with --target), or --score-threshold")
    if opts.target is not None and opts.box is None:
        raise UsageError("--target needs --box: the detection of that class overlapping the box is explained")
    if any(r < 1 for r in opts.ranks):
        raise UsageError("--detection ranks start at 1 (the most confident detection)")
    for name, value in (("--score-threshold", opts.score_threshold), ("--candidate-threshold",
                                                                      opts.candidate_threshold)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise UsageError(f"{name} must lie in [0, 1] (got {value})")
    if opts.min_size is not None and opts.min_size < 32:
        raise UsageError(f"--min-size must be at least 32 pixels (got {opts.min_size})")
    label = None if opts.target is None else resolve_class(opts.target, backbone.class_names)
    request = DetectionRequest(
        ranks=tuple(r - 1 for r in (opts.ranks or [1])), label=label,
        box=None if opts.box is None else parse_box(opts.box), min_iou=opts.min_iou,
        score_threshold=opts.score_threshold, component=opts.component,
    )
    threshold = opts.candidate_threshold
    if opts.score_threshold is not None and opts.score_threshold < candidate_threshold(backbone.model):
        threshold = min(threshold if threshold is not None else 1.0, opts.score_threshold)
    configure_detector(backbone.model, score_threshold=threshold, min_size=opts.min_size)
    return method, layers, request


def _photos(files: Sequence[ImageFile], manifest: Manifest, settings: RunSettings,
            preprocess: Callable[[LoadedImage], Any]) -> Iterator[list[tuple[LoadedImage, Any]]]:
    """Decode ``files`` ``batch_size`` at a time and make each one's model input with ``preprocess``; bad files
    become manifest errors (the run goes on)."""
    from explain.images import load_image

    batch: list[tuple[LoadedImage, Any]] = []
    pending = 0
    for file in files:
        pending += 1
        try:
            loaded = load_image(file.path, display=file.display)
            batch.append((loaded, preprocess(loaded)))
        except InputError as exc:
            manifest.add_error(exc.path, exc.reason)
        except Exception as exc:  # noqa: BLE001 - any failure here belongs to this file only
            manifest.add_error(file.display, f"cannot preprocess: {exc}")
        if pending == settings.batch_size:
            yield batch
            _advance(settings, pending)
            batch, pending = [], 0
    if pending:
        yield batch
        _advance(settings, pending)


def _advance(settings: RunSettings, n: int) -> None:
    if settings.on_batch is not None:
        settings.on_batch(n)


def _png(image: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _method_slug(method: str) -> str:
    return method.replace("++", "pp")


def _write_arrays(out: Path, base: str, fmt: str, m: DetectionMap | SegmentationMap) -> dict[str, Any]:
    """Write what every explained detection or mask has (the map, the layer maps, a guided gradient) and return
    the item's ``outputs``, with the names of the overlay and the panel that the caller draws."""
    outputs: dict[str, Any] = {"map": f"{base}.npy", "overlay": f"{base}.png", "figure": f"{base}_panel.{fmt}"}
    write_npy(out / outputs["map"], m.map)
    if len(m.maps_layer) == 1:
        outputs["map_layer"] = f"{base}_layer.npy"
        write_npy(out / outputs["map_layer"], next(iter(m.maps_layer.values())))
    elif m.maps_layer:
        outputs["map_layer"] = {layer: f"{base}_layer_{layer_slug(layer)}.npy" for layer in m.maps_layer}
        for layer, path in outputs["map_layer"].items():
            write_npy(out / path, m.maps_layer[layer])
    if m.gradient is not None:
        outputs["gradient"] = f"{base}_gradient.npy"
        write_npy(out / outputs["gradient"], m.gradient)
    return outputs


def _image_record(loaded: LoadedImage, geometry: Any) -> dict[str, Any]:
    return {"input": loaded.display, "input_sha256": loaded.sha256, "geometry": geometry.as_dict()}


# --- detect -------------------------------------------------------------------------------------------------

def detection_record(d: Detection, class_names: Sequence[str]) -> dict[str, Any]:
    """A detection as the manifest lists it (rank 1-based, box in photo pixels)."""
    return {"rank": d.rank + 1, "index": d.label, "name": class_names[d.label], "score": round(d.score, 6),
            "box": [round(v, 2) for v in d.box]}


def run_detect(backbone: Backbone, files: Sequence[ImageFile], opts: DetectOptions, out_dir: str | Path,
               settings: RunSettings | None = None) -> Manifest:
    """Explain the chosen detections of every photo in ``files`` and write the outputs into ``out_dir``.

    Returns:
        The run's :class:`Manifest` (not yet saved: the caller saves it last).
    """
    from explain.detection.engine import explain_detections

    settings = settings or RunSettings()
    method, layers, request = resolve_detect_options(backbone, opts)
    out = Path(out_dir)
    stems = stem_map(files)
    images: list[dict[str, Any]] = []
    manifest = Manifest(command="detect", argv=settings.argv, model=backbone.manifest_record(), extra={
        "method": method, "layers": layers, "selection": _selection_record(request, backbone.class_names),
        "images": images})
    backbone.model.to(settings.device)
    with keep_finished_on_interrupt(manifest):  # Ctrl-C: the caller keeps the finished items
        # the detector's preprocessing bounds a photo exactly as its drawn copy is bounded: made once, used for both
        for batch in _photos(files, manifest, settings, lambda loaded: backbone.preprocess(loaded.shown.image)):
            if not batch:
                continue
            result = explain_detections(backbone.model, [t.to(settings.device) for _, t in batch], request, method,
                                        layers, photo_sizes=[loaded.image.size for loaded, _ in batch])
            for i, (loaded, _) in enumerate(batch):
                stem = stems[loaded.display]
                geometry = backbone.preprocess.geometry(*loaded.image.size)
                explained = [m.detection.rank for m in result.maps[i]]
                boxes = _draw_all(loaded, result.detections[i], backbone.class_names, explained)
                write_bytes(out / f"{stem}/detections.png", _png(boxes))
                context = {rank: _draw_all(loaded, result.detections[i], backbone.class_names, [rank], tag_all=False)
                           for rank in explained}
                record = {**_image_record(loaded, geometry), "outputs": {"detections": f"{stem}/detections.png"},
                          "detections": [detection_record(d, backbone.class_names) for d in result.detections[i]]}
                if result.notes[i]:
                    record["note"] = result.notes[i]
                    manifest.warnings.append(f"{loaded.display}: {result.notes[i]}")
                images.append(record)
                for m in result.maps[i]:
                    manifest.items.append(_write_detection(out, stem, loaded, geometry, m, context[m.detection.rank],
                                                           backbone, opts, method, layers))
            for warning in result.warnings:
                if warning not in manifest.warnings:
                    manifest.warnings.append(warning)
    return manifest


def _draw_all(loaded: LoadedImage, detections: Sequence[Detection], class_names: Sequence[str],
              explained: Sequence[int], tag_all: bool = True) -> Any:
    from explain.detection.figures import draw_detections

    shown = [_shown_detection(loaded, d) for d in detections]
    return draw_detections(loaded.shown.image, shown, class_names, explained, tag_all=tag_all, min_side=480)


def _shown_detection(loaded: LoadedImage, d: Detection) -> Detection:
    """``d`` with its box in the pixels of the photo as figures draw it (:attr:`LoadedImage.shown`)."""
    return dataclasses.replace(d, box=loaded.shown.box(d.box))


def _selection_record(request: DetectionRequest, class_names: Sequence[str]) -> dict[str, Any]:
    record: dict[str, Any] = {"mode": request.mode, "component": request.component}
    if request.mode == "rank":
        record["ranks"] = [r + 1 for r in request.ranks]
    elif request.mode == "box":
        record.update(box=list(request.box or ()), min_iou=request.min_iou,
                      target=None if request.label is None else {"index": request.label,
                                                                 "name": class_names[request.label]})
    else:
        record["score_threshold"] = request.score_threshold
    return record


def _write_detection(out: Path, stem: str, loaded: LoadedImage, geometry: Any, m: DetectionMap, boxes: Any,
                     backbone: Backbone, opts: DetectOptions, method: str, layers: list[str]) -> dict[str, Any]:
    from explain.detection.figures import blend, detection_panel, draw_box, guided_image, to_pil

    d = m.detection
    suffix = "" if m.component == "score" else f"_{m.component}"
    base = f"{stem}/{_method_slug(method)}_rank{d.rank + 1}_{d.label}{suffix}"
    outputs = _write_arrays(out, base, opts.fmt, m)
    # the map and the photo as drawn have one size: the detector was handed the photo bounded like its drawn copy
    shown = guided_image(m.gradient) if m.gradient is not None else blend(loaded.shown.image, m.map, opts.colormap,
                                                                           opts.alpha)
    drawn = _shown_detection(loaded, d)
    write_bytes(out / outputs["overlay"], _png(draw_box(to_pil(shown), drawn)))
    name = backbone.class_names[d.label]
    where = METHOD_TITLES[method] + (f" at {', '.join(layers)}" if layers else " (dY/dphoto)")
    title = (f"{opts.style.name(loaded.display)}\n#{d.rank + 1} {name} · confidence {d.score:.2f} · explained: "
             f"{COMPONENT_TEXT[m.component]} = {m.value:.3g}")
    label = f"{METHOD_TITLES[method]} of the {COMPONENT_TEXT[m.component]}, normalised"
    panel = detection_panel(panel_copy(boxes), shown, drawn, title, where,
                            None if m.gradient is not None else opts.colormap, label)
    opts.style.save(out / outputs["figure"], panel)
    item = _image_record(loaded, geometry)
    item.update({
        "prediction": None, "method": method, "layer": layers[0] if len(layers) == 1 else layers,
        "detection": detection_record(d, backbone.class_names),
        "target": {"index": d.label, "name": name, "score": round(m.value, 4), "component": m.component,
                   "explained": COMPONENT_TEXT[m.component]},
        "outputs": outputs,
    })
    notes = list(m.notes) + list(loaded.notes)
    if notes:
        item["notes"] = notes
    return item


# --- segment ------------------------------------------------------------------------------------------------

def resolve_segment_options(backbone: Backbone, opts: SegmentOptions) -> tuple[str, list[str], list[int] | None]:
    """Check every option before any work: ``(method, layers, class indices or None for the default)``."""
    from explain.targets import resolve_class

    _require_task(backbone, "segmentation", "segment")
    method, layers = _check_common(backbone, opts.method, opts.layers, opts.fmt, opts.colormap, opts.alpha)
    classes = [resolve_class(t, backbone.class_names) for t in opts.targets] or None
    if opts.mask is not None:
        if not Path(opts.mask).is_file():
            raise UsageError(f"--mask {str(opts.mask)!r} does not exist")
        if classes is None:
            raise UsageError("--mask needs --target: the class whose logits are summed over the mask")
    return method, layers, classes


def _read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A mask image (non-black = inside) resized (nearest) to ``size`` = ``(height, width)``."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as image:
            gray = image.convert("L").resize((size[1], size[0]), PILImage.NEAREST)
    except OSError as exc:
        raise UsageError(f"cannot read --mask {str(path)!r}: {exc}") from exc
    return np.asarray(gray) > 0


def run_segment(backbone: Backbone, files: Sequence[ImageFile], opts: SegmentOptions, out_dir: str | Path,
                settings: RunSettings | None = None) -> Manifest:
    """Explain class masks of every photo in ``files`` and write the outputs into ``out_dir``."""
    method, layers, classes = resolve_segment_options(backbone, opts)
    settings = settings or RunSettings()
    out = Path(out_dir)
    stems = stem_map(files)
    images: list[dict[str, Any]] = []
    manifest = Manifest(command="segment", argv=settings.argv, model=backbone.manifest_record(), extra={
        "method": method, "layers": layers, "region": "mask" if opts.mask else "predicted", "images": images})
    backbone.model.to(settings.device)
    with keep_finished_on_interrupt(manifest):
        for batch in _photos(files, manifest, settings, lambda loaded: backbone.preprocess(loaded.image)):
            for group in _same_size(batch):
                _segment_group(group, backbone, opts, method, layers, classes, out, stems, manifest)
    return manifest


def _same_size(batch: list[tuple[LoadedImage, Any]]) -> list[list[tuple[LoadedImage, Any]]]:
    groups: dict[tuple[int, ...], list[tuple[LoadedImage, Any]]] = {}
    for pair in batch:
        groups.setdefault(tuple(pair[1].shape), []).append(pair)
    return list(groups.values())


def _segment_group(group: list[tuple[LoadedImage, Any]], backbone: Backbone, opts: SegmentOptions, method: str,
                   layers: list[str], classes: list[int] | None, out: Path, stems: dict[str, str],
                   manifest: Manifest) -> None:
    import torch

    from explain.detection.engine import SegmentationTarget, explain_segmentation

    x = torch.stack([t for _, t in group])
    size = (int(x.shape[-2]), int(x.shape[-1]))
    mask = None if opts.mask is None else _read_mask(Path(opts.mask), size)
    indices = classes if classes is not None else list(range(1, backbone.num_classes))
    targets = [SegmentationTarget(c, mask) for c in indices]
    result = explain_segmentation(backbone.model, x, targets, method, layers)
    for i, (loaded, _) in enumerate(group):
        stem = stems[loaded.display]
        geometry = backbone.preprocess.geometry(*loaded.image.size)
        predicted = _class_map_to_photo(result.predicted[i], loaded.shown.image.size)  # as drawn
        write_bytes(out / f"{stem}/classes.png", _png(_class_picture(predicted, backbone.class_names)))
        write_npy(out / f"{stem}/classes.npy", result.predicted[i].astype(np.int64))
        present = [int(c) for c in np.unique(result.predicted[i])]
        record = {**_image_record(loaded, geometry), "outputs": {"classes": f"{stem}/classes.png",
                                                                   "class_map": f"{stem}/classes.npy"},
                  "classes": [{"index": c, "name": backbone.class_names[c],
                               "fraction": round(float((result.predicted[i] == c).mean()), 5)} for c in present]}
        maps = result.for_image(i)
        notes = result.notes[i] if classes is not None else []
        if not maps:
            notes = notes or ["only the background class is predicted: nothing to explain (name a class with "
                              "--target)"]
        if notes:
            record["notes"] = notes
            manifest.warnings.extend(f"{loaded.display}: {n}" for n in notes)
        manifest.extra["images"].append(record)
        for m in maps:
            manifest.items.append(_write_mask(out, stem, loaded, geometry, m, predicted, backbone, opts, method,
                                              layers))
    for warning in result.warnings:
        if warning not in manifest.warnings:
            manifest.warnings.append(warning)


def _class_map_to_photo(predicted: np.ndarray, photo_size: tuple[int, int]) -> np.ndarray:
    return resize_plane(predicted, photo_size, smooth=False)


def _class_picture(predicted: np.ndarray, class_names: Sequence[str]) -> Any:
    from explain.detection.figures import class_map_rgb, to_pil

    return to_pil(class_map_rgb(predicted, class_names))


def _write_mask(out: Path, stem: str, loaded: LoadedImage, geometry: Any, m: SegmentationMap,
                predicted: np.ndarray, backbone: Backbone, opts: SegmentOptions, method: str,
                layers: list[str]) -> dict[str, Any]:
    from explain.detection.figures import blend, segmentation_panel, to_pil
    from explain.figures import map_to_image

    name = backbone.class_names[m.target]
    base = f"{stem}/{_method_slug(method)}_{m.target}{'_mask' if m.region == 'mask' else ''}"
    outputs = _write_arrays(out, base, opts.fmt, m)
    outputs["mask"] = f"{base}_region.npy"
    write_npy(out / outputs["mask"], m.mask.astype(np.uint8))
    photo, crop_box = loaded.shown.image, loaded.shown.box(geometry.crop_box)  # bounded for drawing
    full = np.nan_to_num(map_to_image(m.map, photo.size, crop_box))
    region = map_to_image(m.mask.astype(np.float32), photo.size, crop_box) > 0.5
    write_bytes(out / outputs["overlay"], _png(to_pil(blend(photo, full, opts.colormap, opts.alpha))))
    where = METHOD_TITLES[method] + (f" at {', '.join(layers)}" if layers else "")
    region_text = "pixels predicted as it" if m.region == "predicted" else "the given mask"
    title = (f"{opts.style.name(loaded.display)}\nclass {m.target} {name}: sum of its logits over {region_text} "
             f"({m.pixels} px of the model's {m.mask.shape[1]}x{m.mask.shape[0]} output) = {m.value:.4g}")
    fig = segmentation_panel(panel_copy(photo), panel_copy(predicted), backbone.class_names, panel_copy(full),
                             panel_copy(region), title,
                             f"{where} (white: the region)", opts.colormap)
    opts.style.save(out / outputs["figure"], fig)
    item = _image_record(loaded, geometry)
    item.update({"prediction": None, "method": method, "layer": layers[0] if len(layers) == 1 else layers,
                 "target": {"index": m.target, "name": name, "score": round(m.value, 4), "region": m.region,
                            "pixels": m.pixels},
                 "outputs": outputs})
    if loaded.notes:
        item["notes"] = list(loaded.notes)
    return item
