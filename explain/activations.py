"""Feature maps of a layer, the channels that respond most to an image, and theoretical vs effective receptive fields.

Feature maps
    :func:`feature_maps` records a layer's output ``(N, C, H, W)`` during one batched forward pass (eval mode, no
    gradients). :func:`top_channels` ranks the channels of one image by their **mean activation** over the map
    (largest first; ties go to the lower index). :func:`activation_figure` draws the chosen maps next to the
    model input, each tile titled with its channel and its maximum. Colour scale (``scale``):

    ``shared`` (default)
        one scale for every tile of the figure, from the minimum to the maximum over the shown maps, so that
        tiles can be compared: a weak channel looks dark.
    ``tile``
        each tile from its own minimum to its own maximum: the spatial pattern of weak channels is visible, but
        colours do not compare between tiles.

Receptive fields of one unit ``LAYER:C:Y:X``
    The **theoretical** receptive field is the box of input pixels the unit is connected to
    (:meth:`explain.layers.LayerInfo.unit_box`). The **effective** receptive field (Luo et al. 2016,
    https://arxiv.org/abs/1701.04128) is how much each input pixel actually moves the unit:
    ``ERF[y, x] = sum_c |d unit / d input[c, y, x]|`` for the image at hand (:func:`effective_receptive_field`).
    It is exactly zero outside the theoretical box and usually concentrated in its middle; :func:`erf_stats`
    measures how concentrated (the share of the box that holds 90 % of the gradient mass, and the spread).

Everything leaves the model exactly as found (training flags, hooks, parameters and their ``.grad``); bad layers
and units raise :class:`~explain.errors.LayerError` / :class:`~explain.errors.TargetError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from explain.errors import LayerError, TargetError, UsageError
from explain.figures import box_beyond_note, check_colormap, draw_unit_box

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from torch import nn

    from explain.targets import NeuronTarget

__all__ = [
    "DEFAULT_TOP", "SCALES", "Erf", "FeatureMaps", "activation_figure", "effective_receptive_field", "erf_stats",
    "feature_maps", "layer_output_shapes", "parse_unit", "receptive_field_figure", "scale_maps", "select_channels",
    "shapes_from_table", "strongest_unit", "top_channels", "PeakUnit", "activation_colormap",
]

SCALES = ("shared", "tile")
#: ``--colormap auto``: :data:`SEQUENTIAL_CMAP` for maps without negative values, :data:`DIVERGING_CMAP` centred on
#: 0 for signed maps (a pre-activation, a block output with a residual sum), so the sign reads at a glance.
AUTO_CMAP, SEQUENTIAL_CMAP, DIVERGING_CMAP = "auto", "viridis", "RdBu_r"
#: Channels drawn by default.
DEFAULT_TOP = 16
#: Share of the gradient mass used to say how concentrated an effective receptive field is.
ERF_MASS = 0.9


# --------------------------------------------------------------------------------------------------------------------
# Layers and units
# --------------------------------------------------------------------------------------------------------------------


def layer_output_shapes(
    model: nn.Module, layers: Sequence[str], input_size: tuple[int, int], device: Any = "cpu", in_channels: int = 3,
) -> dict[str, tuple[int, int, int]]:
    """``(C, H, W)`` of each layer's output, from one forward pass of a blank ``1 x in_channels x H x W`` input.

    Checks before any real work that every layer exists, runs once per forward pass and has a spatial output.

    Raises:
        LayerError: unknown layer (with suggestions), a layer that runs more than once or not at all, an output
            that is not ``(N, C, H, W)``, or a ``1 x 1`` output (nothing spatial to show).
    """
    import torch

    from explain.hooks import LayerTap, eval_mode

    names = list(dict.fromkeys(layers))
    blank = torch.zeros((1, in_channels, *input_size), device=device)
    with eval_mode(model), LayerTap(model, names, spatial=names) as tap, torch.no_grad():
        model(blank)
    tap.require_all()
    shapes = {}
    for name in names:
        out = tap.outputs[name]
        c, h, w = (int(s) for s in out.shape[1:])
        if h * w == 1:
            raise LayerError(
                f"layer {name!r} gives a 1x1 map (shape {tuple(out.shape)}): there is nothing spatial to show; "
                "choose an earlier layer (run 'cnn-explain layers' to see the output shapes)"
            )
        shapes[name] = (c, h, w)
    return shapes


def shapes_from_table(rows: Sequence[Any], layers: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """:func:`layer_output_shapes` read from a :func:`explain.layers.layer_table` (no extra forward pass).

    Raises:
        LayerError: as :func:`layer_output_shapes`.
    """
    by_name = {row.name: row for row in rows}
    shapes = {}
    for name in dict.fromkeys(layers):
        row = by_name.get(name)
        if row is None or row.executions == 0:
            raise LayerError(f"layer {name!r} did not run during the forward pass (it is not used by the model's "
                             "forward, or only in training mode); choose a layer on the path from the input to the "
                             "output")
        if row.executions > 1:
            raise LayerError(f"layer {name!r} runs more than once per forward pass (the module is shared, e.g. one "
                             "ReLU reused inside a block), so its output is ambiguous; choose a layer that runs once")
        shape = row.output_shape
        if shape is None or len(shape) != 3:
            got = f"a tensor of shape (1, {', '.join(map(str, shape))})" if shape is not None else "no tensor"
            raise LayerError(
                f"layer {name!r} gives {got}, but this method needs a layer with a spatial (N, C, H, W) output, "
                "e.g. a convolution, a block or a stage; run 'cnn-explain layers' to see the output shapes"
            )
        c, h, w = (int(v) for v in shape)
        if h * w == 1:
            raise LayerError(
                f"layer {name!r} gives a 1x1 map (shape (1, {c}, 1, 1)): there is nothing spatial to show; "
                "choose an earlier layer (run 'cnn-explain layers' to see the output shapes)"
            )
        shapes[name] = (c, h, w)
    return shapes


def parse_unit(spec: str) -> NeuronTarget:
    """Parse ``LAYER:C:Y:X`` (one unit of a layer's output).

    Raises:
        TargetError: a malformed unit or a ``LAYER:C`` channel (a unit needs a position).
    """
    from explain.targets import parse_neuron

    try:
        unit = parse_neuron(spec)
    except TargetError:
        raise TargetError(f"bad --unit {spec!r}: expected LAYER:CHANNEL:Y:X, e.g. _blocks.5:12:7:7") from None
    if not unit.is_unit:
        raise TargetError(f"bad --unit {spec!r}: a unit needs a position, LAYER:CHANNEL:Y:X (e.g. {spec}:7:7)")
    return unit


def check_unit(unit: NeuronTarget, shape: tuple[int, int, int]) -> None:
    """Check a unit's channel and position against the layer's output ``(C, H, W)``.

    Raises:
        TargetError: channel or position out of range.
    """
    c, h, w = shape
    if not 0 <= unit.channel < c:
        raise TargetError(f"unit {unit}: channel {unit.channel} is out of range, layer {unit.layer!r} has {c} "
                          f"channels (0..{c - 1})")
    assert unit.y is not None and unit.x is not None
    if not (0 <= unit.y < h and 0 <= unit.x < w):
        raise TargetError(f"unit {unit}: position ({unit.y}, {unit.x}) is outside the {h}x{w} output grid of layer "
                          f"{unit.layer!r} (Y in 0..{h - 1}, X in 0..{w - 1})")


# --------------------------------------------------------------------------------------------------------------------
# Feature maps and channels
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class FeatureMaps:
    """A layer's output for a batch.

    Attributes:
        layer: dotted layer name.
        maps: ``(N, C, H, W)`` float32 array, the layer's output as it left the layer.
        output: the model's output for the batch (a tensor on the model's device, e.g. logits).
    """

    layer: str
    maps: np.ndarray
    output: Any


def feature_maps(model: nn.Module, x: torch.Tensor, layer: str) -> FeatureMaps:
    """Run ``model`` on the batch ``x`` (eval mode, no gradients) and record the output of ``layer``.

    Raises:
        LayerError: unknown layer, a layer that runs more than once or not at all, or a non-spatial output.
    """
    import torch

    from explain.hooks import LayerTap, eval_mode

    with eval_mode(model), LayerTap(model, [layer], spatial=[layer]) as tap, torch.no_grad():
        output = model(x.detach().clone())  # a copy: a model may modify its input in place
    tap.require_all()
    maps = tap.outputs[layer].detach().float().cpu().numpy()
    return FeatureMaps(layer=layer, maps=maps, output=output)


def channel_means(maps: np.ndarray) -> np.ndarray:
    """Mean activation of every channel over the spatial map: ``(..., C, H, W) -> (..., C)``."""
    arr = np.asarray(maps, dtype=np.float64)
    return arr.reshape(*arr.shape[:-2], -1).mean(axis=-1)


def top_channels(maps: np.ndarray, k: int) -> list[int]:
    """The ``k`` channels of one image's ``(C, H, W)`` maps with the largest mean activation, largest first.

    Ties are broken by the lower channel index.
    """
    if k < 1:
        raise UsageError(f"--top must be at least 1, got {k}")
    means = channel_means(maps)
    order = np.argsort(-means, kind="stable")
    return [int(c) for c in order[:k]]


@dataclass(frozen=True)
class PeakUnit:
    """The unit :func:`strongest_unit` picked in one image's ``(C, H, W)`` layer output.

    Attributes:
        channel: its channel.
        unit: its ``(y, x)`` in the channel's map.
        value: its activation.
        saturated: channels whose peak value is repeated in the layer (a clamp such as ReLU6's 6 reached by many
            units); they are passed over unless every channel is saturated.
        ties: units of ``channel`` that share ``value`` (1 unless every channel was saturated).
    """

    channel: int
    unit: tuple[int, int]
    value: float
    saturated: int
    ties: int


def strongest_unit(maps: np.ndarray) -> PeakUnit:
    """The unit with the largest activation of a ``(C, H, W)`` layer output whose value is not saturated.

    A channel's peak counts as saturated when the same value occurs at another unit of the layer, in any channel:
    that is a clamp (ReLU6 at 6, a hard sigmoid at 1), and "the peak" would be an arbitrary first one among many.
    The strongest unit among the other channels' peaks is taken (ties: the lower channel). If every channel is
    saturated, the channel with the largest mean (:func:`top_channels`) is taken with its first peak unit in
    row-major order, and :attr:`PeakUnit.ties` says how many units share that value.
    """
    arr = np.asarray(maps, dtype=np.float32)
    flat = arr.reshape(arr.shape[0], -1)
    peaks = flat.max(axis=1)
    values, counts = np.unique(flat, return_counts=True)
    repeated = counts[np.searchsorted(values, peaks)] > 1
    if repeated.all():
        channel = top_channels(arr, 1)[0]
    else:
        channel = int(np.argmax(np.where(repeated, -np.inf, peaks)))
    index = int(np.argmax(flat[channel]))
    unit = (index // arr.shape[2], index % arr.shape[2])
    return PeakUnit(channel=channel, unit=unit, value=float(peaks[channel]),
                    saturated=int(repeated.sum()),
                    ties=int((flat[channel] == peaks[channel]).sum()))


def select_channels(
    maps: np.ndarray, top: int | None = None, channels: Sequence[int] | None = None, show_all: bool = False,
) -> list[int]:
    """The channels to draw for one image: ``channels`` as given, every channel, or the top ``top`` by mean."""
    total = int(np.asarray(maps).shape[0])
    if channels is not None:
        return list(channels)
    if show_all:
        return list(range(total))
    return top_channels(maps, min(top or DEFAULT_TOP, total))


def activation_colormap(maps: np.ndarray, colormap: str = AUTO_CMAP) -> tuple[str, bool]:
    """The colour map of feature maps and whether their scale is centred on 0 (they have negative values).

    ``colormap`` :data:`AUTO_CMAP` picks :data:`DIVERGING_CMAP` for signed maps, else :data:`SEQUENTIAL_CMAP`; any
    other name is kept (a signed map is still centred on 0).
    """
    signed = bool(np.asarray(maps).size) and float(np.nanmin(maps)) < 0.0
    if colormap != AUTO_CMAP:
        return colormap, signed
    return (DIVERGING_CMAP if signed else SEQUENTIAL_CMAP), signed


def scale_maps(maps: np.ndarray, scale: str = "shared",
               centred: bool = False) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Map ``(K, H, W)`` feature maps to ``[0, 1]`` for drawing.

    With ``centred`` (signed maps, a diverging colour map), 0 maps to 0.5 and the scale is symmetric:
    ``[-m, m]`` with ``m`` the largest ``|value|`` (of all maps, or of each tile).

    Returns:
        The scaled maps and, for ``shared``, the ``(low, high)`` values of the colour scale (``None`` for ``tile``).
        A constant map (or set of maps) becomes 0 (0.5 when centred).
    """
    if scale not in SCALES:
        raise UsageError(f"unknown --scale {scale!r}: choose shared or tile")
    arr = np.asarray(maps, dtype=np.float64)
    if centred:
        axes = None if scale == "shared" else (1, 2)
        m = np.abs(arr).max(axis=axes, keepdims=axes is not None)
        out = (0.5 + 0.5 * arr / np.where(m > 0, m, 1.0)).astype(np.float32)
        return out, ((-float(m), float(m)) if scale == "shared" else None)
    if scale == "shared":
        lo, hi = float(arr.min()), float(arr.max())
        span = hi - lo
        return ((arr - lo) / span if span > 0 else np.zeros_like(arr)).astype(np.float32), (lo, hi)
    lo_t = arr.min(axis=(1, 2), keepdims=True)
    span_t = arr.max(axis=(1, 2), keepdims=True) - lo_t
    out = np.where(span_t > 0, (arr - lo_t) / np.where(span_t > 0, span_t, 1.0), 0.0)
    return out.astype(np.float32), None


# --------------------------------------------------------------------------------------------------------------------
# Effective receptive fields
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Erf:
    """Effective receptive fields of one unit for a batch.

    Attributes:
        unit: the unit.
        maps: ``(N, H, W)`` float32: ``sum_c |d unit / d input[c]|`` per image, at model-input resolution.
        values: ``(N,)`` the unit's activation per image.
    """

    unit: NeuronTarget
    maps: np.ndarray
    values: np.ndarray


def effective_receptive_field(model: nn.Module, x: torch.Tensor, unit: NeuronTarget) -> Erf:
    """``sum_c |d unit / d input[c, y, x]|`` for every image of the batch ``x`` (eval mode, one backward pass).

    Images are independent in eval mode, so the gradient of the sum of the unit over the batch gives each image's
    own gradient. Only the input's gradient is computed: parameters' ``.grad`` are left untouched.

    Raises:
        LayerError: bad layer (see :func:`feature_maps`).
        TargetError: the unit's channel or position is outside the layer's output.
    """
    import torch

    from explain.hooks import LayerTap, eval_mode

    if not unit.is_unit:
        raise TargetError(f"{unit} is a channel, not a unit: give LAYER:CHANNEL:Y:X")
    with torch.inference_mode(False), eval_mode(model), LayerTap(model, [unit.layer], spatial=[unit.layer]) as tap, \
            torch.enable_grad():
        inputs = x.detach().clone().requires_grad_(True)  # a normal tensor even for a caller in inference mode
        model(inputs.clone())  # a non-leaf copy: a model may modify its input in place, which a leaf forbids
        tap.require_all()
        out = tap.outputs[unit.layer]
        check_unit(unit, tuple(int(s) for s in out.shape[1:]))  # type: ignore[arg-type]
        values = out[:, unit.channel, unit.y, unit.x]
        if not values.requires_grad:
            raise LayerError(f"layer {unit.layer!r} does not depend on the input through autograd; "
                             "its effective receptive field cannot be computed")
        (grad,) = torch.autograd.grad(values.sum(), inputs)
    erf = grad.detach().abs().sum(dim=1).float().cpu().numpy()
    return Erf(unit=unit, maps=erf, values=values.detach().float().cpu().numpy())


def erf_stats(erf: np.ndarray, box: tuple[float, float, float, float]) -> dict[str, Any]:
    """How an effective receptive field ``(H, W)`` sits in the theoretical box ``(x0, y0, x1, y1)`` (clipped).

    Returns:
        ``mass_in_box`` (share of the gradient mass inside the box: 1 up to rounding), ``area_90`` (the smallest
        share of the box's pixels that holds 90 % of the mass), ``centre`` ``(y, x)`` and ``std`` ``(y, x)`` of the
        mass in pixels, ``support`` (the box ``(x0, y0, x1, y1)`` of the non-zero pixels) and ``all_zero``.
    """
    arr = np.asarray(erf, dtype=np.float64)
    total = float(arr.sum())
    if total <= 0:
        return {"all_zero": True, "mass_in_box": None, "area_90": None, "centre": None, "std": None, "support": None}
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    inside = arr[y0:y1, x0:x1]
    mass_in = float(inside.sum()) / total
    values = np.sort(inside.ravel())[::-1]
    needed = int(np.searchsorted(np.cumsum(values), ERF_MASS * float(values.sum()))) + 1
    ys, xs = np.indices(arr.shape)
    cy, cx = float((ys * arr).sum() / total), float((xs * arr).sum() / total)
    sy = float(np.sqrt(((ys - cy) ** 2 * arr).sum() / total))
    sx = float(np.sqrt(((xs - cx) ** 2 * arr).sum() / total))
    nz_y, nz_x = np.nonzero(arr)
    return {
        "all_zero": False,
        "mass_in_box": round(mass_in, 6),
        "area_90": round(min(needed, values.size) / max(values.size, 1), 6),
        "centre": [round(cy, 2), round(cx, 2)],
        "std": [round(sy, 2), round(sx, 2)],
        "support": [int(nz_x.min()), int(nz_y.min()), int(nz_x.max()) + 1, int(nz_y.max()) + 1],
    }


# --------------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------------


def _tile_label(channel: int, peak: float) -> str:
    return f"c{channel} · max {peak:.3g}"


def activation_figure(
    image01: np.ndarray,
    maps: np.ndarray,
    channels: Sequence[int],
    title: str,
    scale: str = "shared",
    colormap: str = AUTO_CMAP,
) -> Figure:
    """The model input beside a grid of feature maps.

    Args:
        image01: ``(H, W, 3)`` model input in ``[0, 1]`` (what the model saw).
        maps: ``(K, h, w)`` the maps to draw, raw values.
        channels: the channel index of each map (tile titles).
        title: figure title; ``""``: none, and no band for it (``--no-title``).
        scale: ``shared`` or ``tile`` (module docstring).
        colormap: matplotlib colour map of the maps, or :data:`AUTO_CMAP` (:func:`activation_colormap`); signed
            maps get a scale centred on 0.
    """
    from matplotlib.figure import Figure

    from explain.filters import build_mosaic, grid_columns, label_size, to_rgba

    raw = np.asarray(maps, dtype=np.float32)
    name, centred = activation_colormap(raw, colormap)
    cmap = check_colormap(name)
    scaled, limits = scale_maps(raw, scale, centred)
    n = raw.shape[0]
    ncols = grid_columns(n)
    mosaic = build_mosaic(to_rgba(scaled, cmap), ncols, gap=0.08, band=0.3, min_tile_px=56)
    mh, mw = mosaic.image.shape[:2]
    grid_w = float(min(max(ncols * 1.45, 3.5), 11.0))
    per_px = grid_w / mw
    grid_h = mh * per_px
    image_side = float(min(max(grid_h, 2.5), 4.2))
    left, gap, right, bottom = 0.15, 0.35, (1.0 if limits else 0.2), 0.15
    body_h = max(grid_h, image_side)
    # untitled: room for the "model input" label above the (vertically centred) picture
    top = 0.25 + 0.18 * (title.count("\n") + 1) if title else max(0.1, 0.3 - (body_h - image_side) / 2)
    width = left + image_side + gap + grid_w + right
    height = bottom + body_h + top
    fig = Figure(figsize=(width, height))
    img_ax = fig.add_axes((left / width, (bottom + (body_h - image_side) / 2) / height, image_side / width,
                           image_side / height))
    img_ax.imshow(np.clip(image01, 0.0, 1.0))
    img_ax.set_title("model input", fontsize=8)
    img_ax.set_xticks([])
    img_ax.set_yticks([])
    gx = left + image_side + gap
    ax = fig.add_axes((gx / width, (bottom + (body_h - grid_h) / 2) / height, grid_w / width, grid_h / height))
    ax.imshow(mosaic.image, interpolation="nearest")
    ax.set_xlim(-0.5, mw - 0.5)
    ax.set_ylim(mh - 0.5, -0.5)
    ax.axis("off")
    labels = [_tile_label(int(c), float(m.max())) for c, m in zip(channels, raw)]
    size = label_size(mosaic.tile[1] * per_px * 72, max(len(t) for t in labels), cap=9.0)
    size = min(size, mosaic.band * per_px * 72 * 0.8)
    for i, text in enumerate(labels):
        x, y = mosaic.centre_top(i)
        ax.text(x, y, text, ha="center", va="center", fontsize=size, color="#222222")
    if limits is not None:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        box = ax.get_position()
        cax = fig.add_axes((box.x1 + 0.12 / width, box.y0, 0.13 / width, box.height))
        bar = fig.colorbar(ScalarMappable(Normalize(*limits), cmap=cmap), cax=cax)
        bar.set_label("activation (shared scale)", fontsize=7)
        bar.ax.tick_params(labelsize=7)
    if title:
        fig.text(0.5, 1.0 - 0.1 / height, title, ha="center", va="top", fontsize=9, linespacing=1.35)
    return fig


def receptive_field_figure(
    image01: np.ndarray,
    erf: np.ndarray,
    box: tuple[float, float, float, float],
    centre: tuple[float, float],
    title: str,
    stats: dict[str, Any],
    colormap: str = "inferno",
    rf_size: tuple[int, int] | None = None,
) -> Figure:
    """Theoretical vs effective receptive field of one unit on one image.

    Panels: the model input with the theoretical box (yellow) and the unit's centre; the effective receptive field
    ``|d unit / d input|`` (summed over colours, divided by its maximum) with the same box; and, when the box is
    smaller than the input, both zoomed to the box.

    Args:
        image01: ``(H, W, 3)`` model input in ``[0, 1]``.
        erf: ``(H, W)`` effective receptive field (raw).
        box: the theoretical box ``(x0, y0, x1, y1)`` clipped to the input (pixel edges).
        centre: the receptive-field centre ``(y, x)`` of the unit in input pixels.
        title: figure title.
        stats: :func:`erf_stats` of ``erf`` in ``box``.
        colormap: colour map of the effective receptive field.
        rf_size: the unclipped theoretical receptive field ``(h, w)``, to say when ``box`` was clipped.
    """
    from matplotlib.figure import Figure

    cmap = check_colormap(colormap)
    height, width = erf.shape
    peak = float(erf.max())
    heat = erf / peak if peak > 0 else np.zeros_like(erf)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    zoom = (x1 - x0) * (y1 - y0) < 0.6 * height * width
    panels = 4 if zoom else 3
    fig = Figure(figsize=(3.1 * panels + 0.6, 3.1 * height / width + 1.0), layout="constrained")
    axes = list(fig.subplots(1, panels))
    axes[0].imshow(np.clip(image01, 0.0, 1.0))
    draw_unit_box(axes[0], box, "#ffd400")
    axes[0].plot([centre[1]], [centre[0]], marker="+", color="#ffd400", markersize=9, mew=1.6)
    covers = (x0, y0, x1, y1) == (0, 0, width, height)
    title0 = "model input (the theoretical RF covers all of it)" if covers else "model input + theoretical RF (box)"
    beyond = "" if covers else box_beyond_note(box, rf_size)
    title0 += f"\n({beyond})" if beyond else ""
    if not stats.get("all_zero") and stats.get("std"):
        from matplotlib.patches import Ellipse

        (cy, cx), (sy, sx) = stats["centre"], stats["std"]
        axes[0].add_patch(Ellipse((cx, cy), 4 * sx, 4 * sy, fill=False, edgecolor="#4fc3f7", linewidth=1.4,
                                  linestyle="--"))
        title0 += "\nand effective RF (dashed: ±2 std)"
    axes[0].set_title(title0, fontsize=8.5)
    axes[0].set_xlim(-0.5, width - 0.5)  # marks near the border must not widen the view
    axes[0].set_ylim(height - 0.5, -0.5)
    shown = axes[1].imshow(heat, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    draw_unit_box(axes[1], box, "white")  # solid, like the theoretical box of the first panel (dashed = effective RF)
    axes[1].set_title("effective RF  sum_c |d unit / d input|\n(box: theoretical RF)", fontsize=8.5)
    bar = fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.02)
    bar.set_label("/ its maximum", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    if zoom:
        axes[2].imshow(np.clip(image01[y0:y1, x0:x1], 0.0, 1.0), interpolation="nearest")
        size = f"theoretical RF {rf_size[1]}x{rf_size[0]} px" if rf_size else "theoretical RF"
        if rf_size is None or (rf_size[1], rf_size[0]) != (x1 - x0, y1 - y0):
            size += f" ({x1 - x0}x{y1 - y0} inside the input)"
        axes[2].set_title(size, fontsize=8.5)
        axes[3].imshow(heat[y0:y1, x0:x1], cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        axes[3].set_title("effective RF inside it", fontsize=8.5)
    else:
        axes[2].imshow(np.clip(image01, 0.0, 1.0))
        axes[2].imshow(heat, cmap=cmap, vmin=0.0, vmax=1.0, alpha=np.clip(heat * 1.5, 0.0, 0.85))
        axes[2].set_title("effective RF over the input", fontsize=8.5)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    lines = [title]
    if stats.get("all_zero"):
        lines.append("the gradient is zero everywhere (the unit is saturated or dead for this image)")
    else:
        lines.append(f"{ERF_MASS:.0%} of the gradient mass lies in {stats['area_90']:.1%} of the theoretical box · "
                     f"spread (std) {stats['std'][0]:.1f} x {stats['std'][1]:.1f} px · "
                     f"mass outside the box {1 - stats['mass_in_box']:.1g}")
    fig.suptitle("\n".join(lines), fontsize=9.5)
    return fig
