"""Guided backprop and gradient saliency over image files: images of the gradient, panels, raw arrays, manifest.

What is drawn (all at model-input resolution, pixel for pixel, next to the model input itself, i.e. the centre
crop the model saw, shown de-normalised):

* **gradient image** (``outputs.image``, PNG): the ``(3, H, W)`` gradient as an RGB picture,
  ``rgb = 0.5 + 0.5 * clip(g / s, -1, 1)``: grey where the gradient is zero, colours where the channels push up or
  down. ``s`` is the per-image scale below, shared by the three channels.
* **magnitude** (``outputs.magnitude``, PNG, grayscale, white = strong): ``clip(max_c |g_c| / s_m, 0, 1)``, the
  per-pixel maximum over colour channels as in Simonyan et al. 2014 (https://arxiv.org/abs/1312.6034, Sec. 3.1).
* **signed** (``outputs.signed``, PNG, with ``signed=True``): ``clip(sum_c g_c / s_s, -1, 1)`` in a diverging
  colour map centred on zero (red: increasing the pixel raises the score; blue: lowers it).

With gradient x input (saliency ``times_input``) every map above is of ``g·x`` instead of ``g``: the gradient
times the input (for SmoothGrad, times each noisy input before averaging); the panel titles say so
(:func:`map_titles`).

Per-image normalisation: each scale ``s`` is the 99th percentile of the absolute values of the map it normalises,
taken over its **non-zero** entries, and values beyond it are clipped. Leaving exact zeros out is a deliberate
deviation from a plain percentile: the guided rule and small receptive fields make most of a map exactly zero, and
a percentile over all pixels would then be tiny and saturate everything. A map that is zero everywhere is drawn
flat (grey, black, white) and the manifest item says ``"all_zero": true``.

For neuron targets that are single units (``LAYER:C:Y:X``, or ``LAYER:C`` with ``--unit max``) the unit's
theoretical receptive field (:func:`explain.layers.layer_table`) is drawn as a rectangle on the input and the
gradient, recorded in the manifest, and the panel adds a zoom on it.

Outputs are written image by image as batches finish; the caller saves the manifest last.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from explain.errors import UsageError
from explain.figures import DEFAULT_COLORMAP, FigureStyle, box_beyond_note, draw_unit_box
from explain.manifest import Manifest, safe_stem, write_bytes, write_npy
from explain.run import (
    RunSettings, class_target_record, for_each_batch, image_record, predictions_of, stem_map, target_slug,
)
from explain.targets import ClassTarget, TopK, parse_neuron, parse_target

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from explain.backbones.base import Backbone
    from explain.data import Batch, Sample
    from explain.guided import GradientMap, GradientResult
    from explain.layers import LayerInfo

__all__ = [
    "GradientOptions",
    "gradient_panel",
    "gradient_rgb",
    "image_seed",
    "magnitude_map",
    "map_formulas",
    "map_titles",
    "resolve_gradient_options",
    "robust_scale",
    "run_gradients",
    "signed_map",
]

#: The percentile of |value| that maps to full colour.
CLIP_PERCENTILE = 99.0

METHOD_TITLES = {
    "guided-backprop": "Guided backprop",
    "deconvnet": "Deconvnet",
    "guided-gradcam": "Guided Grad-CAM",
    "guided-gradcam++": "Guided Grad-CAM++",
    "gradient": "Gradient",
    "smoothgrad": "SmoothGrad",
}
_SLUGS = {
    "guided-backprop": "guided",
    "deconvnet": "deconvnet",
    "guided-gradcam": "guided_gradcam",
    "guided-gradcam++": "guided_gradcampp",
    "gradient": "gradient",
    "smoothgrad": "smoothgrad",
}
NORMALISATION = (
    f"per image: divided by the {CLIP_PERCENTILE:g}th percentile of |value| over non-zero entries, clipped; "
    "image: 0.5 + 0.5 * clip(g / s, -1, 1); magnitude: max over channels of |g|; signed: sum over channels"
)


# ---------------------------------------------------------------------------------------------------------------
# Turning gradients into pictures
# ---------------------------------------------------------------------------------------------------------------


def robust_scale(values: np.ndarray, percentile: float = CLIP_PERCENTILE) -> float:
    """The ``percentile``-th percentile of ``|values|`` over the non-zero entries (0.0 if all are zero)."""
    magnitude = np.abs(np.asarray(values, dtype=np.float64)).ravel()
    magnitude = magnitude[magnitude > 0]
    if magnitude.size == 0:
        return 0.0
    return float(np.percentile(magnitude, percentile))


def _normalise(values: np.ndarray, low: float) -> np.ndarray:
    scale = robust_scale(values)
    if scale == 0.0:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip(values / scale, low, 1.0).astype(np.float32)


def gradient_rgb(gradient: np.ndarray) -> np.ndarray:
    """``(3, H, W)`` gradient -> ``(H, W, 3)`` float32 picture in [0, 1]: ``0.5 + 0.5 * clip(g / s, -1, 1)``.

    One scale ``s`` for all channels (see :func:`robust_scale`); zero gradient is mid-grey. Other channel counts
    are drawn from their mean, as grey.
    """
    g = np.asarray(gradient, dtype=np.float32)
    if g.ndim != 3:
        raise UsageError(f"expected a (C, H, W) gradient, got shape {g.shape}")
    if g.shape[0] != 3:
        g = np.repeat(g.mean(0, keepdims=True), 3, axis=0)
    return (0.5 + 0.5 * _normalise(g, -1.0)).transpose(1, 2, 0)


def magnitude_map(gradient: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` -> ``(H, W)`` in [0, 1]: ``max_c |g_c|`` divided by its robust scale, clipped."""
    return _normalise(np.abs(np.asarray(gradient, dtype=np.float32)).max(0), 0.0)


def signed_map(gradient: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` -> ``(H, W)`` in [-1, 1]: ``sum_c g_c`` divided by its robust scale, clipped."""
    return _normalise(np.asarray(gradient, dtype=np.float32).sum(0), -1.0)


def _to_png(array01: np.ndarray, colormap: str | None = None, low: float = 0.0) -> bytes:
    """A [low, 1] array as PNG bytes: RGB arrays as they are, 2-D arrays through ``colormap`` (or as grey)."""
    from PIL import Image as PILImage

    if array01.ndim == 2 and colormap is not None:
        from explain.figures import check_colormap

        array01 = check_colormap(colormap)((array01 - low) / (1.0 - low))[..., :3]
    pixels = np.clip(np.asarray(array01) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    image = PILImage.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _draw_box(ax: Any, box: tuple[float, float, float, float] | None, dashed: bool = False) -> None:
    if box is not None:
        draw_unit_box(ax, box, style="--" if dashed else "-")


def map_formulas(times_input: bool) -> tuple[str, str]:
    """What the magnitude and signed panels draw: maps of the gradient ``g``, or of gradient x input ``g·x``."""
    drawn = "g·x" if times_input else "g"
    return f"max_c |{drawn}|", f"sum_c {drawn}"


def map_titles(times_input: bool) -> tuple[str, str]:
    """The titles of the magnitude and signed panels (:func:`map_formulas`)."""
    magnitude, signed = map_formulas(times_input)
    return f"magnitude: {magnitude}", f"signed: {signed}"


def gradient_panel(
    model_input: np.ndarray,
    gradient: np.ndarray,
    title: str,
    method_title: str,
    *,
    signed: bool = False,
    colormap: str = "RdBu_r",
    box: tuple[float, float, float, float] | None = None,
    cam: np.ndarray | None = None,
    cam_title: str = "CAM",
    rf_size: tuple[int, int] | None = None,
    times_input: bool = False,
) -> Figure:
    """One row: model input (with the receptive field) | [CAM overlay] | gradient image | magnitude | [signed] | [zoom].

    Args:
        model_input: ``(H, W, 3)`` picture in [0, 1] of what the model saw.
        gradient: ``(3, H, W)`` raw gradient.
        title: figure title.
        method_title: title of the gradient image.
        signed: add the signed map with a diverging colour map.
        colormap: the diverging colour map of the signed map.
        box: a unit's receptive field ``(x0, y0, x1, y1)`` in input pixels (clipped), drawn on the input and the
            gradient; a box smaller than 60 % of the input also gets zoomed views.
        cam: with guided Grad-CAM, the normalised CAM ``(H, W)``, shown over the input.
        cam_title: title of the CAM view.
        rf_size: the unclipped receptive field ``(h, w)``, to say when ``box`` was clipped at the border.
        times_input: ``gradient`` is gradient x input, so the map titles say ``g·x`` rather than ``g``.
    """
    from matplotlib.figure import Figure

    from explain.figures import check_colormap

    height, width = gradient.shape[-2:]
    zoom = box is not None and (box[2] - box[0]) * (box[3] - box[1]) < 0.6 * height * width
    panels = 3 + (cam is not None) + signed + (2 if zoom else 0)
    fig = Figure(figsize=(3.0 * panels + 0.4, 3.0 * height / width + 0.95), layout="constrained")
    axes = list(fig.subplots(1, panels, squeeze=False)[0])
    rgb = gradient_rgb(gradient)
    k = 0
    axes[k].imshow(np.clip(model_input, 0, 1))
    covers = box is not None and tuple(box) == (0.0, 0.0, float(width), float(height))
    if covers:
        size = f" {rf_size[1]}x{rf_size[0]} px" if rf_size is not None else ""
        axes[k].set_title(f"model input (the receptive field{size}\ncovers all of it)", fontsize=9)
        box = None
    else:
        beyond = box_beyond_note(box, rf_size) if box is not None else ""
        size = f" {rf_size[1]}x{rf_size[0]} px" if beyond and rf_size is not None else ""
        axes[k].set_title("model input" + (f" + receptive field{size}" if box is not None else "")
                          + (f"\n({beyond})" if beyond else ""), fontsize=8.5 if beyond else 9)
    _draw_box(axes[k], box)
    k += 1
    if cam is not None:
        axes[k].imshow(np.clip(model_input, 0, 1))
        axes[k].imshow(cam, cmap=DEFAULT_COLORMAP, alpha=0.5, vmin=0.0, vmax=1.0)
        axes[k].set_title(cam_title, fontsize=9)
        k += 1
    axes[k].imshow(rgb)
    axes[k].set_title(method_title, fontsize=9)
    _draw_box(axes[k], box, dashed=True)
    k += 1
    shown = axes[k].imshow(magnitude_map(gradient), cmap="gray", vmin=0.0, vmax=1.0)
    (magnitude_title, signed_title), formulas = map_titles(times_input), map_formulas(times_input)
    axes[k].set_title(magnitude_title, fontsize=9)
    bar = fig.colorbar(shown, ax=axes[k], fraction=0.046, pad=0.02)
    bar.set_label(f"{formulas[0]} / its p{CLIP_PERCENTILE:g}, clipped", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    k += 1
    if signed:
        cmap = check_colormap(colormap)
        shown = axes[k].imshow(signed_map(gradient), cmap=cmap, vmin=-1.0, vmax=1.0)
        axes[k].set_title(signed_title, fontsize=9)
        bar = fig.colorbar(shown, ax=axes[k], fraction=0.046, pad=0.02)
        bar.set_label(f"{formulas[1]} / p{CLIP_PERCENTILE:g} of its |.|, clipped", fontsize=7)
        bar.ax.tick_params(labelsize=7)
        k += 1
    if zoom:
        assert box is not None
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        axes[k].imshow(np.clip(model_input[y0:y1, x0:x1], 0, 1), interpolation="nearest")
        rf_text = f"receptive field {x1 - x0}x{y1 - y0} px"
        if rf_size is not None and (rf_size[1], rf_size[0]) != (x1 - x0, y1 - y0):
            rf_text = f"receptive field {rf_size[1]}x{rf_size[0]} px\n(inside the input: {x1 - x0}x{y1 - y0})"
        axes[k].set_title(rf_text, fontsize=9)
        # the zoomed gradient is re-normalised inside the box, so faint detail is visible
        axes[k + 1].imshow(gradient_rgb(gradient[:, y0:y1, x0:x1]), interpolation="nearest")
        axes[k + 1].set_title("gradient in the receptive field", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Runs over files
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class GradientOptions:
    """What to explain and how to draw it, for ``guided-backprop`` and ``saliency``.

    Attributes:
        command: ``"guided-backprop"`` or ``"saliency"``.
        targets: ``--target`` values (class index, name, ``topK``); empty and no neurons: ``top1``.
        neurons: ``--neuron`` values, ``LAYER:C`` or ``LAYER:C:Y:X``.
        unit: how ``LAYER:C`` neurons are explained: ``mean`` (channel mean) or ``max`` (highest unit per image).
        rule: guided-backprop only: ``guided`` or ``deconvnet``.
        with_cam: guided-backprop only: ``None``, ``gradcam`` or ``gradcam++``.
        layers: CAM layers for ``with_cam`` (empty: the backbone's default layer).
        samples: saliency only: 0 for the plain gradient, ``n`` for SmoothGrad.
        noise: saliency only: SmoothGrad noise level (fraction of each image's input range).
        times_input: saliency only: gradient x input.
        seed: SmoothGrad seed; each image's noise depends only on it and the image's content.
        signed: also draw the signed map.
        fmt: panel figure format: png, svg or pdf.
        colormap: diverging colour map of the signed map.
        top_k: how many predicted classes each manifest item lists.
        style: resolution and titles of the figures (:class:`explain.figures.FigureStyle`).
    """

    command: str = "guided-backprop"
    targets: list[str] = field(default_factory=list)
    neurons: list[str] = field(default_factory=list)
    unit: str = "mean"
    rule: str = "guided"
    with_cam: str | None = None
    layers: list[str] = field(default_factory=list)
    samples: int = 0
    noise: float = 0.15
    times_input: bool = False
    seed: int = 0
    signed: bool = False
    fmt: str = "png"
    colormap: str = "RdBu_r"
    top_k: int = 5
    style: FigureStyle = FigureStyle()


@dataclass
class _Resolved:
    targets: list[Any]
    cam_layers: list[str]
    cam_method: str | None


def resolve_gradient_options(backbone: Backbone, opts: GradientOptions) -> _Resolved:
    """Check every option before any work.

    Raises:
        UsageError, LayerError, TargetError: one clear message for the first bad option.
    """
    from explain.figures import check_colormap, check_format
    from explain.guided import GUIDED_RULES, UNIT_MODES, check_not_scripted
    from explain.modules import resolve_layer

    if opts.command not in ("guided-backprop", "saliency"):
        raise UsageError(f"unknown command {opts.command!r}")
    targets: list[Any] = [parse_target(t, backbone.class_names) for t in opts.targets]
    for spec in opts.neurons:
        neuron = parse_neuron(spec)
        resolve_layer(backbone.model, neuron.layer)
        targets.append(neuron)
    if not targets:
        targets = [TopK(1)]
    if opts.unit not in UNIT_MODES:
        raise UsageError(f"unknown --unit {opts.unit!r}: choose mean (channel mean) or max (highest unit per image)")
    check_colormap(opts.colormap)
    opts.fmt = check_format(opts.fmt)
    cam_layers: list[str] = []
    cam_method = None
    if opts.command == "guided-backprop":
        if opts.rule not in GUIDED_RULES:
            raise UsageError(f"unknown --rule {opts.rule!r}: choose guided or deconvnet")
        check_not_scripted(backbone.model, "guided backpropagation")
        if opts.with_cam is not None:
            from explain.cam import get_method

            if opts.rule != "guided":
                raise UsageError(
                    "--with-cam combines a CAM with guided backprop; it cannot be used with --rule deconvnet"
                )
            cam_method = get_method(opts.with_cam).name
            cam_layers = list(dict.fromkeys(opts.layers)) or [backbone.default_layer]
            for layer in cam_layers:
                resolve_layer(backbone.model, layer)
        elif opts.layers:
            raise UsageError("--layer chooses the CAM layer of --with-cam; add --with-cam gradcam or gradcam++")
    else:
        from explain.saliency import check_noise, check_samples

        check_samples(opts.samples, "--samples")
        check_noise(opts.noise, "--noise")
    return _Resolved(targets, cam_layers, cam_method)


def image_seed(seed: int, sha256: str) -> int:
    """A per-image noise seed that depends only on ``seed`` and the image's content (not on batching or order)."""
    return (int(sha256[:15], 16) ^ (int(seed) & 0x7FFFFFFFFFFFFFFF)) & 0x7FFFFFFFFFFFFFFF


def run_gradients(
    backbone: Backbone,
    files: Sequence[Any],
    opts: GradientOptions,
    out_dir: str | Path,
    settings: RunSettings | None = None,
) -> Manifest:
    """Explain every image in ``files`` with guided backprop or gradient saliency and write the outputs.

    Returns:
        The run's :class:`Manifest` (not yet saved: the caller saves it last).
    """
    from explain.guided import guided_backprop
    from explain.saliency import saliency

    settings = settings or RunSettings()
    resolved = resolve_gradient_options(backbone, opts)
    out = Path(out_dir)
    stems = stem_map(files)
    extra: dict[str, Any] = {"unit": opts.unit, "normalisation": NORMALISATION}
    if opts.command == "guided-backprop":
        extra.update({"rule": opts.rule, "with_cam": resolved.cam_method, "layers": resolved.cam_layers or None})
    else:
        extra.update({"samples": opts.samples, "noise": opts.noise if opts.samples else None,
                      "seed": opts.seed if opts.samples else None, "times_input": opts.times_input})
    manifest = Manifest(command=opts.command, argv=settings.argv, model=backbone.manifest_record(), extra=extra)
    fields = _FieldCache(backbone, settings.device)
    used: set[str] = set()

    def handle(batch: Batch) -> list[dict[str, Any]]:
        x = batch.tensor.to(settings.device)
        if opts.command == "guided-backprop":
            result = guided_backprop(
                backbone.model, x, resolved.targets, unit=opts.unit, rule=opts.rule,  # type: ignore[arg-type]
                with_cam=resolved.cam_method, cam_layers=resolved.cam_layers or None,
            )
        else:
            seeds = [image_seed(opts.seed, s.loaded.sha256) for s in batch.samples]
            result = saliency(
                backbone.model, x, resolved.targets, samples=opts.samples, noise=opts.noise, seed=seeds,
                times_input=opts.times_input, unit=opts.unit, batch_size=settings.batch_size,  # type: ignore[arg-type]
            )
        _add_warnings(manifest, result.warnings)
        predictions = predictions_of(result.logits, backbone.class_names, opts.top_k)
        return [
            _write_item(out, stems[sample.loaded.display], sample, gmap, result, backbone, opts,
                        predictions[i] if predictions else None, fields, used)
            for i, sample in enumerate(batch.samples)
            for gmap in result.for_image(i)
        ]

    for_each_batch(backbone, files, manifest, settings, handle)
    _add_warnings(manifest, fields.warnings)
    return manifest


def _add_warnings(manifest: Manifest, warnings: Sequence[str]) -> None:
    for warning in warnings:
        if warning not in manifest.warnings:
            manifest.warnings.append(warning)


class _FieldCache:
    """Theoretical receptive fields of the layers neuron units live in (one layer-table pass per run, lazily)."""

    def __init__(self, backbone: Backbone, device: Any) -> None:
        self.backbone = backbone
        self.device = device
        self._rows: dict[str, LayerInfo] | None = None
        self.warnings: list[str] = []

    def row(self, layer: str) -> LayerInfo | None:
        if self._rows is None:
            from explain.errors import ExplainError
            from explain.layers import layer_table

            try:
                table = layer_table(self.backbone.model, self.backbone.input_size, device=self.device)
            except ExplainError as exc:
                self.warnings.append(f"receptive fields not available ({exc}); units are shown without them")
                table = []
            self._rows = {r.name: r for r in table}
        return self._rows.get(layer)


def _write_item(
    out: Path, stem: str, sample: Sample, gmap: GradientMap, result: GradientResult, backbone: Backbone,
    opts: GradientOptions, prediction: list[dict[str, Any]] | None, fields: _FieldCache, used: set[str],
) -> dict[str, Any]:
    loaded = sample.loaded
    method = result.method
    slug = _SLUGS.get(method, safe_stem(method)) + ("_x_input" if result.times_input else "")
    base = f"{stem}/{slug}_{target_slug(gmap.target)}"
    if base in used:  # the same target asked for twice
        n = 2
        while f"{base}_{n}" in used:
            n += 1
        base = f"{base}_{n}"
    used.add(base)

    gradient = gmap.gradient
    outputs: dict[str, Any] = {"gradient": f"{base}.npy", "image": f"{base}.png", "magnitude": f"{base}_magnitude.png"}
    write_npy(out / outputs["gradient"], gradient)
    if gmap.guided is not None and gmap.cam is not None:
        outputs["guided"] = f"{base}_guided.npy"
        outputs["cam"] = f"{base}_cam.npy"
        write_npy(out / outputs["guided"], gmap.guided)
        write_npy(out / outputs["cam"], gmap.cam)
    write_bytes(out / outputs["image"], _to_png(gradient_rgb(gradient)))
    write_bytes(out / outputs["magnitude"], _to_png(magnitude_map(gradient)))
    if opts.signed:
        outputs["signed"] = f"{base}_signed.png"
        write_bytes(out / outputs["signed"], _to_png(signed_map(gradient), opts.colormap, low=-1.0))
    outputs["figure"] = f"{base}_panel.{opts.fmt}"

    probs = result.probabilities
    box = None
    rf_size = None
    title_method = METHOD_TITLES.get(method, method) + (" x input" if result.times_input else "")
    if result.samples:
        title_method += f" (n={result.samples}, noise {result.noise:g})"
    if isinstance(gmap.target, ClassTarget):
        target, what = class_target_record(gmap.target.index, gmap.score, gmap.rank, backbone.class_names, probs,
                                           gmap.image_index)
    else:
        neuron = gmap.target
        target = {"neuron": str(neuron), "layer": neuron.layer, "channel": neuron.channel,
                  "mode": "unit" if neuron.is_unit else "channel mean", "score": round(gmap.score, 4)}
        if neuron.is_unit:
            target["unit"] = [neuron.y, neuron.x]
            target["unit_choice"] = gmap.unit_choice
            if gmap.unit_choice == "max":
                target["requested"] = f"{neuron.layer}:{neuron.channel}"
            row = fields.row(neuron.layer)
            if row is not None and row.receptive_field is not None:
                height, width = result.input_size
                uy, ux = int(neuron.y), int(neuron.x)  # type: ignore[arg-type]
                box = row.unit_box(uy, ux, clip_to=(height, width))
                target["receptive_field"] = {
                    "box": [round(v, 3) for v in box],
                    "size": list(row.receptive_field),
                    "unclipped_box": [round(v, 3) for v in row.unit_box(uy, ux)],
                }
                rf_size = (int(row.receptive_field[0]), int(row.receptive_field[1]))
                if row.context is not None:
                    target["receptive_field"]["global_context"] = True
        chosen = " (highest unit)" if gmap.unit_choice == "max" else ""
        what = f"neuron {neuron}{chosen} · value {gmap.score:.3g}"
    lines = [opts.style.name(loaded.display), f"{what} · {title_method}"]
    if result.rectifiers is not None:
        total = sum(result.rectifiers.values())
        kinds = ", ".join(f"{k} {v}" for k, v in result.rectifiers.items() if v)
        lines.append(f"rectifiers guided: {total}"
                     + (f" ({kinds})" if kinds else " - none found: this is the plain gradient"))
    if result.cam_layers:
        lines[-1] += f" · CAM at {', '.join(result.cam_layers)}"
    model_input = backbone.preprocess.denormalize(sample.tensor).clamp(0, 1).permute(1, 2, 0).numpy()
    cam_title = f"{METHOD_TITLES.get(method, method).replace('Guided ', '')} at {', '.join(result.cam_layers)}"
    fig = gradient_panel(model_input, gradient, "\n".join(lines), title_method, signed=opts.signed,
                         colormap=opts.colormap, box=box, cam=gmap.cam, cam_title=cam_title, rf_size=rf_size,
                         times_input=result.times_input)
    opts.style.save(out / outputs["figure"], fig)

    item = image_record(sample, prediction)
    item.update({"method": method, "target": target, "outputs": outputs})
    if result.cam_layers:
        item["layer"] = result.cam_layers[0] if len(result.cam_layers) == 1 else list(result.cam_layers)
    if result.rectifiers is not None:
        item["rectifiers"] = dict(result.rectifiers)
    if result.unguided:
        item["unguided_activations"] = dict(result.unguided)
    if method in ("gradient", "smoothgrad"):
        item["times_input"] = result.times_input
    if result.samples:
        item["smoothgrad"] = {"samples": result.samples, "noise": result.noise,
                              "sigma": round(result.sigmas[gmap.image_index], 6),
                              "seed": result.seeds[gmap.image_index]}
    if not np.any(gradient):
        item["all_zero"] = True
    if loaded.notes:
        item["notes"] = list(loaded.notes)
    return item
