"""Runs of ``cnn-explain filters`` and ``cnn-explain activations``: figures, raw arrays and the manifest.

``filters`` writes, per layer (flat in the output folder, ``SLUG`` = the layer name made file-safe)::

    filters_SLUG.FMT            the figure (``filters_SLUG_norms.FMT`` with ``view="norms"``)
    filters_SLUG_weights.npy    the layer's complete weights (out, in / groups, kh, kw), float32
    filters_SLUG_tiles.npy      the drawn values after normalisation (see explain.filters), or
    filters_SLUG_norms.npy      the drawn kernel norms

``activations`` writes, per image (``STEM`` from the input's path)::

    STEM/activations_SLUG.FMT   the model input beside the chosen feature maps
    STEM/activations_SLUG.npy   the layer's complete output (C, H, W) for the image, float32
    STEM/rf_SLUG_cC_yY_xX.FMT   per --unit: theoretical vs effective receptive field
    STEM/rf_SLUG_cC_yY_xX.npy   the effective receptive field (H, W) at model-input resolution, float32

The caller saves the manifest last (:meth:`explain.manifest.Manifest.save`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from explain.device import model_device
from explain.errors import LayerError, UsageError
from explain.figures import FigureStyle
from explain.manifest import Manifest, write_npy
from explain.run import layer_slug

if TYPE_CHECKING:
    from explain.backbones.base import Backbone
    from explain.data import Batch, Sample
    from explain.filters import FilterGrid
    from explain.images import ImageFile
    from explain.layers import LayerInfo
    from explain.run import RunSettings
    from explain.targets import NeuronTarget

__all__ = [
    "ActivationOptions", "FilterOptions", "build_filter_grids", "resolve_activation_options", "run_activations",
    "run_filters",
]

SCALE_DOCS = {
    "shared": "one colour scale for every tile of an image: min..max over the shown maps (tiles compare)",
    "tile": "each tile from its own min to its own max (patterns of weak channels visible; colours do not compare)",
}
ERF_DEFINITION = ("effective receptive field: sum over colour channels of |d unit / d input| for the image, at "
                  "model-input resolution; theoretical receptive field: the box of input pixels the unit is "
                  "connected to (model-input pixels, pixel edges, x0 y0 x1 y1)")


# --------------------------------------------------------------------------------------------------------------------
# filters
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class FilterOptions:
    """What ``cnn-explain filters`` draws (see :func:`explain.filters.filter_grid` for each field).

    Attributes:
        layers: convolutions to draw; empty: the first convolution.
        view: ``kernels`` or ``norms``.
        norm: ``symmetric``, ``symmetric-filter`` or ``minmax``.
        sort: ``index`` or ``norm``.
        channels: output channels, e.g. ``"0-15,32"``.
        in_channels: input channels (columns) of the kernels and matrix views.
        limit: output channels drawn by default.
        show_all: draw every channel.
        fmt: figure format (png, svg, pdf).
        style: resolution and titles of the figures (:class:`explain.figures.FigureStyle`).
    """

    layers: list[str] = field(default_factory=list)
    view: str = "kernels"
    norm: str = "symmetric"
    sort: str = "index"
    channels: str | None = None
    in_channels: str | None = None
    limit: int | None = None
    show_all: bool = False
    fmt: str = "png"
    style: FigureStyle = FigureStyle()


def build_filter_grids(backbone: Backbone, opts: FilterOptions) -> list[FilterGrid]:
    """Check every option and select the filters of every layer, before anything is written.

    Raises:
        LayerError, TargetError, UsageError: one clear message for the first bad option.
    """
    from explain.figures import check_format
    from explain.filters import filter_grid, first_conv

    opts.fmt = check_format(opts.fmt)
    layers = list(dict.fromkeys(opts.layers)) or [first_conv(backbone.model)]
    return [
        filter_grid(backbone.model, layer, view=opts.view, norm=opts.norm, sort=opts.sort, channels=opts.channels,
                    in_channels=opts.in_channels, limit=opts.limit, show_all=opts.show_all)
        for layer in layers
    ]


def run_filters(backbone: Backbone, opts: FilterOptions, out_dir: str | Path, argv: Sequence[str] = ()) -> Manifest:
    """Draw the filters of each layer and write figures and arrays into ``out_dir``.

    Returns:
        The run's :class:`Manifest` (not yet saved: the caller saves it last).
    """
    from explain.filters import NORM_DOCS, filter_figure

    grids = build_filter_grids(backbone, opts)
    out = Path(out_dir)
    manifest = Manifest(command="filters", argv=argv, model=backbone.manifest_record(),
                        extra={"view": opts.view, "norm": opts.norm, "sort": opts.sort,
                               "normalisation": NORM_DOCS[opts.norm]})
    for grid in grids:
        slug = layer_slug(grid.layer)
        base = f"filters_{slug}" + ("_norms" if grid.kind == "norms" else "")
        outputs = {"figure": f"{base}.{opts.fmt}", "weights": f"filters_{slug}_weights.npy"}
        values_key = "norms" if grid.kind == "norms" else "tiles"
        outputs[values_key] = f"{base}_{values_key}.npy" if grid.kind != "norms" else f"{base}.npy"
        write_npy(out / outputs["weights"], grid.weight)
        write_npy(out / outputs[values_key], grid.tiles)
        opts.style.save(out / outputs["figure"], filter_figure(grid, titled=opts.style.title))
        item: dict[str, Any] = {"input": None, **grid.as_dict(), "outputs": outputs}
        item["filter_norms"] = [round(float(v), 6) for v in grid.filter_norms[grid.channels]]
        manifest.items.append(item)
    return manifest


# --------------------------------------------------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ActivationOptions:
    """What ``cnn-explain activations`` draws.

    Attributes:
        layer: the layer whose feature maps are drawn (``None``: receptive fields only, which needs ``units``).
        top: how many channels, by mean activation per image (default :data:`explain.activations.DEFAULT_TOP`).
        channels: chosen channels instead, e.g. ``"0-15,32"``.
        show_all: every channel.
        scale: ``shared`` or ``tile`` colour scale.
        units: ``LAYER:C:Y:X`` units whose theoretical and effective receptive fields are drawn.
        colormap: colour map of the feature maps; ``auto``: viridis, or the diverging RdBu_r centred on 0 when the
            maps have negative values (:func:`explain.activations.activation_colormap`).
        erf_colormap: colour map of the effective receptive fields.
        fmt: figure format.
        top_k: predicted classes listed per item.
        style: resolution and titles of the figures (:class:`explain.figures.FigureStyle`).
    """

    layer: str | None = None
    top: int | None = None
    channels: str | None = None
    show_all: bool = False
    scale: str = "shared"
    units: list[str] = field(default_factory=list)
    colormap: str = "auto"
    erf_colormap: str = "inferno"
    fmt: str = "png"
    top_k: int = 5
    style: FigureStyle = FigureStyle()


@dataclass
class ActivationPlan:
    """The checked options: the layer's output shape, the chosen channels, the units and their receptive fields."""

    layer: str | None
    shape: tuple[int, int, int] | None
    channels: list[int] | None
    units: list[tuple[NeuronTarget, LayerInfo]]


def resolve_activation_options(backbone: Backbone, opts: ActivationOptions, device: Any = None) -> ActivationPlan:
    """Check every option before any work (one blank forward pass; one layer-table pass with units).

    ``device`` is the model's device (default: where its first parameter lives).

    Raises:
        LayerError, TargetError, UsageError: one clear message for the first bad option.
    """
    from explain.activations import AUTO_CMAP, SCALES, check_unit, layer_output_shapes, parse_unit, shapes_from_table
    from explain.figures import check_colormap, check_format
    from explain.filters import parse_channels
    from explain.modules import resolve_layer

    if opts.layer is None and not opts.units:
        raise UsageError("activations needs --layer NAME (a layer with a spatial output; 'cnn-explain layers' "
                         "lists them) or --unit LAYER:CHANNEL:Y:X")
    if opts.top is not None and opts.channels is not None:
        raise UsageError("give either --top K or --channels LIST, not both")
    if opts.show_all and (opts.top is not None or opts.channels is not None):
        raise UsageError("--all shows every channel; leave out --top and --channels")
    if opts.top is not None and opts.top < 1:
        raise UsageError(f"--top must be at least 1, got {opts.top}")
    if opts.scale not in SCALES:
        raise UsageError(f"unknown --scale {opts.scale!r}: choose shared or tile")
    if opts.colormap != AUTO_CMAP:
        check_colormap(opts.colormap)
    check_colormap(opts.erf_colormap)
    opts.fmt = check_format(opts.fmt)
    if opts.channels is not None:
        if opts.layer is None:
            raise UsageError("--channels chooses feature maps of --layer; add --layer NAME")
        parse_channels(opts.channels, None, "--channels")  # the syntax now, the range after the probe
    units = [parse_unit(spec) for spec in dict.fromkeys(opts.units)]
    if device is None:
        device = model_device(backbone.model, "cpu")
    if opts.layer is not None:
        resolve_layer(backbone.model, opts.layer)
    for unit in units:
        resolve_layer(backbone.model, unit.layer)
    names = ([opts.layer] if opts.layer is not None else []) + [u.layer for u in units]
    rows: dict[str, LayerInfo] = {}
    if units:  # the layer table's forward pass gives the shapes too: no separate probe
        from explain.layers import layer_table

        table = layer_table(backbone.model, backbone.input_size, device=device)
        shapes = shapes_from_table(table, names)
        rows = {row.name: row for row in table}
    else:
        shapes = layer_output_shapes(backbone.model, names, backbone.input_size, device=device)
    channels = None
    shape = shapes[opts.layer] if opts.layer is not None else None
    if opts.channels is not None and shape is not None:
        channels = parse_channels(opts.channels, shape[0], "--channels")
    resolved: list[tuple[NeuronTarget, LayerInfo]] = []
    for unit in units:
        check_unit(unit, shapes[unit.layer])
        row = rows[unit.layer]
        if row.receptive_field is None:
            raise LayerError(f"layer {unit.layer!r} has no theoretical receptive field in the layer table; "
                             "choose a convolution, block or stage")
        resolved.append((unit, row))
    return ActivationPlan(layer=opts.layer, shape=shape, channels=channels, units=resolved)


def run_activations(
    backbone: Backbone,
    files: Sequence[ImageFile],
    opts: ActivationOptions,
    out_dir: str | Path,
    settings: RunSettings | None = None,
    plan: ActivationPlan | None = None,
) -> Manifest:
    """Draw feature maps (and receptive fields of ``opts.units``) for every image, batch by batch.

    Args:
        plan: the result of :func:`resolve_activation_options` when the caller already checked the options.

    Returns:
        The run's :class:`Manifest` (not yet saved: the caller saves it last).
    """
    from explain.activations import effective_receptive_field, feature_maps
    from explain.run import RunSettings, for_each_batch, stem_map

    settings = settings or RunSettings()
    plan = plan or resolve_activation_options(backbone, opts, settings.device)
    out = Path(out_dir)
    stems = stem_map(files)
    if plan.channels is not None:
        selection = "chosen"
    elif opts.show_all:
        selection = "all"
    else:
        selection = f"top{opts.top or _default_top()} by mean activation"
    extra: dict[str, Any] = {"layer": plan.layer, "selection": selection if plan.layer else None,
                             "scale": opts.scale, "scale_definition": SCALE_DOCS[opts.scale],
                             "units": [str(u) for u, _ in plan.units] or None}
    if plan.units:
        extra["receptive_field_definition"] = ERF_DEFINITION
    manifest = Manifest(command="activations", argv=settings.argv, model=backbone.manifest_record(), extra=extra)

    def handle(batch: Batch) -> list[dict[str, Any]]:
        assert batch.tensor is not None
        model = backbone.model
        x = batch.tensor.to(settings.device)
        fmaps = feature_maps(model, x, plan.layer) if plan.layer is not None else None
        predictions = _predictions(fmaps.output if fmaps else None, backbone.class_names, opts.top_k)
        erfs = [effective_receptive_field(model, x, unit) for unit, _ in plan.units]
        items = []
        for i, sample in enumerate(batch.samples):
            stem = stems[sample.loaded.display]
            image01 = _model_input(backbone, sample)
            prediction = predictions[i] if predictions else None
            if fmaps is not None:
                items.append(_activation_item(out, stem, sample, image01, fmaps.maps[i], plan, opts, prediction))
            for (unit, row), erf in zip(plan.units, erfs):
                items.append(_unit_item(out, stem, sample, image01, unit, row, erf.maps[i], float(erf.values[i]),
                                        opts, prediction))
        return items

    return for_each_batch(backbone, files, manifest, settings, handle)


def _default_top() -> int:
    from explain.activations import DEFAULT_TOP

    return DEFAULT_TOP


def _model_input(backbone: Backbone, sample: Sample) -> np.ndarray:
    """What the model saw, de-normalised to an ``(H, W, 3)`` picture in [0, 1]."""
    pixels = backbone.preprocess.denormalize(sample.tensor.detach().float().cpu())
    return pixels.clamp(0.0, 1.0).permute(1, 2, 0).numpy()


def _predictions(output: Any, class_names: Sequence[str], k: int) -> list[list[dict[str, Any]]] | None:
    """Top-``k`` classes when the model's output is a ``(N, classes)`` tensor of logits."""
    import torch

    from explain.run import predictions_of

    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[1] != len(class_names):
        return None
    return predictions_of(output.detach().float().cpu(), class_names, k)


def _base_item(sample: Sample, prediction: list[dict[str, Any]] | None) -> dict[str, Any]:
    from explain.run import image_record

    item = image_record(sample, prediction)
    if sample.loaded.notes:
        item["notes"] = list(sample.loaded.notes)
    return item


def _activation_item(
    out: Path, stem: str, sample: Sample, image01: np.ndarray, maps: np.ndarray, plan: ActivationPlan,
    opts: ActivationOptions, prediction: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    from explain.activations import activation_figure, channel_means, select_channels

    assert plan.layer is not None
    channels = select_channels(maps, top=opts.top, channels=plan.channels, show_all=opts.show_all)
    shown = maps[channels]
    means = channel_means(shown)
    c, h, w = maps.shape
    base = f"{stem}/activations_{layer_slug(plan.layer)}"
    outputs = {"figure": f"{base}.{opts.fmt}", "activations": f"{base}.npy"}
    write_npy(out / outputs["activations"], maps)
    if plan.channels is not None:
        how = f"{len(channels)} chosen of {c} channels"
    elif opts.show_all:
        how = f"all {c} channels"
    else:
        how = f"top {len(channels)} of {c} channels by mean activation"
    scale_text = "shared colour scale" if opts.scale == "shared" else "colour scale per tile (min..max of each)"
    title = f"{opts.style.name(sample.loaded.display)} · {plan.layer} ({c}x{h}x{w})\n{how} · {scale_text}"
    fig = activation_figure(image01, shown, channels, opts.style.title_of(title), scale=opts.scale,
                             colormap=opts.colormap)
    opts.style.save(out / outputs["figure"], fig)
    item = _base_item(sample, prediction)
    item.update({
        "method": "activations", "layer": plan.layer, "shape": [c, h, w], "scale": opts.scale,
        "channels": channels,
        "channel_means": [round(float(v), 6) for v in means],
        "channel_max": [round(float(m.max()), 6) for m in shown],
        "outputs": outputs,
    })
    return item


def _unit_item(
    out: Path, stem: str, sample: Sample, image01: np.ndarray, unit: NeuronTarget, row: LayerInfo, erf: np.ndarray,
    value: float, opts: ActivationOptions, prediction: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    from explain.activations import erf_stats, receptive_field_figure

    assert unit.y is not None and unit.x is not None and row.receptive_field is not None
    height, width = erf.shape
    box = row.unit_box(unit.y, unit.x)
    clipped = row.unit_box(unit.y, unit.x, clip_to=(height, width))
    centre = ((box[1] + box[3]) / 2 - 0.5, (box[0] + box[2]) / 2 - 0.5)
    stats = erf_stats(erf, clipped)
    base = f"{stem}/rf_{layer_slug(unit.layer)}_c{unit.channel}_y{unit.y}_x{unit.x}"
    outputs = {"figure": f"{base}.{opts.fmt}", "erf": f"{base}.npy"}
    write_npy(out / outputs["erf"], erf)
    rf_h, rf_w = row.receptive_field
    jump = f", jump {row.jump[1]:g} px" if row.jump else ""
    title = (f"{opts.style.name(sample.loaded.display)} · unit {unit} (value {value:.3g}) · "
             f"theoretical receptive field {rf_w}x{rf_h} px{jump}")
    fig = receptive_field_figure(image01, erf, clipped, centre, title, stats, colormap=opts.erf_colormap,
                                 rf_size=(rf_h, rf_w))
    opts.style.save(out / outputs["figure"], fig)
    item = _base_item(sample, prediction)
    item.update({
        "method": "receptive-field", "layer": unit.layer, "unit": str(unit), "value": round(value, 6),
        "theoretical_rf": {"size": [rf_h, rf_w], "box": [round(v, 3) for v in box],
                           "box_clipped": [round(v, 3) for v in clipped],
                           "centre": [round(v, 3) for v in centre]},
        "effective_rf": stats,
        "outputs": outputs,
    })
    return item
