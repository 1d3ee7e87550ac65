"""Grad-CAM / Grad-CAM++ over image files: maps, overlays on the full photo, panels, raw arrays and a manifest.

Outputs are written image by image as batches finish (memory stays bounded on large folders); the manifest is
written last by the caller (:meth:`explain.manifest.Manifest.save`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explain.errors import UsageError
from explain.figures import FigureStyle
from explain.manifest import Manifest, write_bytes, write_npy
from explain.run import (
    RunSettings, class_target_record, for_each_batch, image_record, layer_slug, predictions_of, stem_map, target_slug,
)
from explain.targets import ClassTarget, TopK, parse_neuron, parse_target

if TYPE_CHECKING:
    from explain.backbones.base import Backbone
    from explain.cam import CamMap
    from explain.data import Batch, Sample
    from explain.images import ImageFile

METHOD_TITLES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}


@dataclass
class CamOptions:
    """What to explain and how to draw it.

    Attributes:
        method: ``gradcam`` or ``gradcam++``.
        layers: dotted layer names (several: maps fused by the mean of their normalised maps); empty: the
            backbone's default layer.
        targets: ``--target`` values: class index, class name, ``topK``. Empty (and no neurons): ``top1``.
        neurons: ``--neuron`` values: ``LAYER:C`` or ``LAYER:C:Y:X``.
        fmt: figure format for the panels (``png``, ``svg``, ``pdf``); overlays are always PNG at photo size
            (scaled down to :data:`explain.display.DISPLAY_MAX_PIXELS` for a larger photo).
        colormap: matplotlib colour map name.
        alpha: heat opacity in the overlay.
        top_k: how many predicted classes each manifest item lists.
        style: resolution and titles of the figures (:class:`explain.figures.FigureStyle`).
    """

    method: str = "gradcam++"
    layers: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    neurons: list[str] = field(default_factory=list)
    fmt: str = "png"
    colormap: str = "inferno"  # explain.figures.DEFAULT_COLORMAP
    alpha: float = 0.5
    top_k: int = 5
    style: FigureStyle = FigureStyle()


def _method_slug(method: str) -> str:
    return method.replace("++", "pp")


def resolve_cam_options(backbone: Backbone, opts: CamOptions) -> tuple[Any, list[str], list[Any]]:
    """Check every option before any work: ``(method class, layers, targets)``.

    Raises:
        UsageError, LayerError, TargetError: one clear message for the first bad option.
    """
    from explain.cam import get_method
    from explain.figures import check_colormap, check_format
    from explain.modules import resolve_layer

    method = get_method(opts.method)
    layers = list(dict.fromkeys(opts.layers)) or [backbone.default_layer]
    for layer in layers:
        resolve_layer(backbone.model, layer)
    targets: list[Any] = [parse_target(t, backbone.class_names) for t in opts.targets]
    for spec in opts.neurons:
        neuron = parse_neuron(spec)
        resolve_layer(backbone.model, neuron.layer)
        targets.append(neuron)
    if not targets:
        targets = [TopK(1)]
    check_colormap(opts.colormap)
    check_format(opts.fmt)
    if not 0.0 <= opts.alpha <= 1.0:
        raise UsageError(f"--alpha must lie in [0, 1] (got {opts.alpha})")
    return method, layers, targets


def run_cam(
    backbone: Backbone,
    files: Sequence[ImageFile],
    opts: CamOptions,
    out_dir: str | Path,
    settings: RunSettings | None = None,
) -> Manifest:
    """Explain every image in ``files`` and write its figures and arrays into ``out_dir``.

    Returns:
        The run's :class:`Manifest` (not yet saved: the caller saves it last).
    """
    settings = settings or RunSettings()
    method, layers, targets = resolve_cam_options(backbone, opts)
    out = Path(out_dir)
    stems = stem_map(files)
    manifest = Manifest(command="cam", argv=settings.argv, model=backbone.manifest_record(),
                        extra={"method": method.name, "layers": layers})

    def handle(batch: Batch) -> list[dict[str, Any]]:
        result = method(backbone.model, layers)(batch.tensor.to(settings.device), targets)
        predictions = predictions_of(result.logits, backbone.class_names, opts.top_k)
        for layer, layer_map in (result.maps[0].maps_layer.items() if result.maps else ()):
            warning = (f"layer {layer!r} gives a {layer_map.shape[0]}x{layer_map.shape[1]} map: one cell cannot "
                       "show where anything is; pick an earlier layer with a spatial output")
            if layer_map.size == 1 and warning not in manifest.warnings:
                manifest.warnings.append(warning)
        return [
            _write_item(out, stems[sample.loaded.display], sample, cam, backbone, opts, layers, method.name,
                        predictions[i] if predictions else None, result.probabilities)
            for i, sample in enumerate(batch.samples)
            for cam in result.for_image(i)
        ]

    return for_each_batch(backbone, files, manifest, settings, handle)


def _write_item(
    out: Path, stem: str, sample: Sample, cam: CamMap, backbone: Backbone, opts: CamOptions,
    layers: list[str], method: str, prediction: list[dict[str, Any]] | None, probs: Any,
) -> dict[str, Any]:
    from explain.figures import heatmap_panel, map_to_image, overlay

    loaded = sample.loaded
    base = f"{stem}/{_method_slug(method)}_{target_slug(cam.target)}"
    outputs: dict[str, Any] = {"map": f"{base}.npy", "overlay": f"{base}.png", "figure": f"{base}_panel.{opts.fmt}"}
    write_npy(out / outputs["map"], cam.map)
    if len(layers) == 1:
        outputs["map_layer"] = f"{base}_layer.npy"
        write_npy(out / outputs["map_layer"], cam.maps_layer[layers[0]])
    else:
        outputs["map_layer"] = {}
        for layer in layers:
            outputs["map_layer"][layer] = f"{base}_layer_{layer_slug(layer)}.npy"
            write_npy(out / outputs["map_layer"][layer], cam.maps_layer[layer])
    shown = loaded.shown.image  # the photo, scaled down to a bounded size when it is huge
    full = map_to_image(cam.map, shown.size, sample.shown_crop_box())
    blended = overlay(shown, full, opts.colormap, opts.alpha)
    write_bytes(out / outputs["overlay"], _png_bytes(blended))
    if isinstance(cam.target, ClassTarget):
        target, what = class_target_record(cam.target.index, cam.score, cam.rank, backbone.class_names, probs,
                                           cam.image_index)
    else:
        target = {"neuron": str(cam.target), "score": round(cam.score, 4)}
        what = f"neuron {cam.target} · value {cam.score:.3g}"
    layer_text = ", ".join(layers)
    title = f"{opts.style.name(loaded.display)}\n{what} · {METHOD_TITLES.get(method, method)} at {layer_text}"
    fig = heatmap_panel(shown, full, blended, title, opts.colormap)
    opts.style.save(out / outputs["figure"], fig)
    item = image_record(sample, prediction)
    item.update({"method": method, "layer": layers[0] if len(layers) == 1 else layers, "target": target,
                 "outputs": outputs})
    if loaded.notes:
        item["notes"] = list(loaded.notes)
    return item


def _png_bytes(image: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
