"""The filters of a convolution as pictures: colour grids of first-layer filters, rows of kernels, weight matrices
and kernel-norm matrices.

Which picture a layer gets with ``view="kernels"`` (the default) depends on its shape
``W: (out, in / groups, kh, kw)``:

``rgb``
    A convolution reading the three colour channels of the image (``in == 3``, ``groups == 1``, e.g. the first
    layer): every filter is one colour image ``(kh, kw, RGB)``, in a grid titled with the filter indices.
``single``
    One kernel per filter (depthwise convolutions, or any layer with one input channel per group): a grid of
    ``kh x kw`` kernels in a diverging colour map.
``matrix``
    ``1 x 1`` convolutions: the weight matrix ``W[:, :, 0, 0]`` (output channels x input channels) as a heat map.
``kernels``
    Any other convolution: one row per output channel holding its input-channel kernels.

``view="norms"`` draws the kernel-norm matrix ``N[o, i] = ||W[o, i]||_2`` instead: output x input channels for
dense and grouped convolutions (pairs a grouped convolution does not connect are left blank), and one norm per
channel for depthwise convolutions.

Normalisation (``norm``) maps weights to display values ``v`` in ``[0, 1]``; it always uses a filter's complete
weights ``w_f = W[f]`` (all its input channels), whatever subset is drawn:

``symmetric`` (default)
    ``v = 0.5 + 0.5 * w / s`` with ``s = max |W|`` over the whole layer. Zero weights stay mid grey (in colour
    images) or white (in the diverging colour map ``RdBu_r``: red positive, blue negative), and filters keep their
    relative strength: a weak filter looks faint.
``symmetric-filter``
    The same with a scale per filter, ``s_f = max |w_f|``: zero stays grey and every filter uses the full range.
``minmax``
    ``v = (w - min w_f) / (max w_f - min w_f)`` per filter, the classic picture (zero has no fixed colour; kernel
    grids are drawn in grey levels). A constant filter becomes 0.5.

Large layers stay readable: by default at most :data:`DEFAULT_FILTERS` filters (``rgb``/``single``) or
:data:`DEFAULT_ROWS` output channels x :data:`DEFAULT_COLUMNS` input channels (``kernels``) are drawn, after
sorting (``sort="index"`` or ``"norm"``, the L2 norm of ``w_f``, largest first); ``limit`` changes the number,
``channels``/``in_channels`` pick them, ``show_all`` draws everything. Matrix and norm views are single heat maps
and show every channel by default. Every grid is drawn as one image, so even 512 channels render in about a second.

The library never prints; bad layers and channel lists raise :class:`~explain.errors.LayerError` or
:class:`~explain.errors.TargetError`. Weights are only read (the model is left exactly as found).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from explain.errors import LayerError, TargetError, UsageError, suggest

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from torch import nn

__all__ = [
    "DEFAULT_COLUMNS", "DEFAULT_FILTERS", "DEFAULT_ROWS", "NORMS", "SORTS", "VIEWS", "FilterGrid", "Mosaic",
    "build_mosaic", "conv_layers", "conv_module", "filter_figure", "filter_grid", "filter_norms", "first_conv",
    "grid_columns", "kernel_norm_matrix", "normalise_filters", "parse_channels",
]

NORMS = ("symmetric", "symmetric-filter", "minmax")
VIEWS = ("kernels", "norms")
SORTS = ("index", "norm")

#: Filters drawn by default in ``rgb`` and ``single`` grids.
DEFAULT_FILTERS = 64
#: Output channels (rows) drawn by default in the ``kernels`` view.
DEFAULT_ROWS = 16
#: Input channels (columns) drawn by default in the ``kernels`` view.
DEFAULT_COLUMNS = 16

SIGNED_CMAP = "RdBu_r"
NORMS_CMAP = "viridis"

NORM_DOCS = {
    "symmetric": "v = 0.5 + 0.5 * w / max|W| (layer-wide): zero is grey/white, filters keep their relative strength",
    "symmetric-filter": "v = 0.5 + 0.5 * w / max|w_f| per filter: zero is grey/white, each filter uses the full range",
    "minmax": "v = (w - min w_f) / (max w_f - min w_f) per filter",
}


# --------------------------------------------------------------------------------------------------------------------
# Finding convolutions and parsing channel lists
# --------------------------------------------------------------------------------------------------------------------


def conv_layers(model: nn.Module) -> list[str]:
    """Dotted names of every 2-D convolution (``nn.Conv2d`` and subclasses), in registration order."""
    from torch import nn

    return [name for name, module in model.named_modules() if name and isinstance(module, nn.Conv2d)]


def first_conv(model: nn.Module) -> str:
    """The first 2-D convolution of ``model`` (registration order).

    Raises:
        LayerError: the model has no 2-D convolution.
    """
    from explain.modules import check_eager

    check_eager(model)
    names = conv_layers(model)
    if not names:
        raise LayerError("the model has no 2-D convolution, so there are no filters to show")
    return names[0]


def conv_module(model: nn.Module, layer: str) -> nn.Module:
    """The ``nn.Conv2d`` called ``layer``.

    Raises:
        LayerError: unknown name (closest names suggested), or a module that is not a 2-D convolution (the
            convolutions inside it, or the closest ones, are suggested).
    """
    from torch import nn

    from explain.modules import resolve_layer

    module = resolve_layer(model, layer)
    if isinstance(module, nn.Conv2d):
        return module
    convs = conv_layers(model)
    inside = [name for name in convs if name.startswith(layer + ".")]
    if inside:
        hint = f" (convolutions inside it: {', '.join(inside[:3])}{', ...' if len(inside) > 3 else ''})"
    else:
        names = [name for name, _ in model.named_modules() if name]
        before = [name for name in names[:names.index(layer)] if name in set(convs)]
        hint = f" (the convolution before it: {before[-1]})" if before else suggest(layer, convs)
    raise LayerError(
        f"layer {layer!r} is a {type(module).__name__}, not a 2-D convolution{hint}; "
        "filters need a convolution: run 'cnn-explain layers' to list them"
    )


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_channels(spec: str | Sequence[int], total: int | None, option: str = "--channels") -> list[int]:
    """Parse a channel list such as ``"0-15,32,40-47"`` (or a sequence of ints) into sorted unique indices.

    Args:
        spec: comma-separated indices and inclusive ranges ``a-b``, or a sequence of integers.
        total: the number of channels; every index must lie in ``0 .. total - 1``. ``None`` checks the syntax
            only (before the layer's size is known) and returns ``[]``.
        option: the option name used in error messages.

    Raises:
        TargetError: a malformed list, an empty list, a reversed range or an index out of range.
    """
    indices: list[int] = []
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",")]
        for part in parts:
            match = _RANGE.match(part)
            if not match:
                raise TargetError(f"bad {option} {spec!r}: expected indices and ranges such as 0-15,32")
            lo = int(match.group(1))
            hi = int(match.group(2)) if match.group(2) is not None else lo
            if hi < lo:
                raise TargetError(f"bad {option} {spec!r}: range {part} runs backwards")
            if total is None:
                continue
            if hi >= total:
                raise TargetError(f"{option} {spec}: channel {hi} is out of range, the layer has {total} channels "
                                  f"(0..{total - 1})")
            indices.extend(range(lo, hi + 1))
    else:
        for value in spec:
            index = int(value)
            if total is not None and not 0 <= index < total:
                raise TargetError(f"{option}: channel {index} is out of range, the layer has {total} channels "
                                  f"(0..{total - 1})")
            indices.append(index)
    if total is None:
        return []
    if not indices:
        raise TargetError(f"{option} is empty: give indices and ranges such as 0-15,32")
    return sorted(set(indices))


# --------------------------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------------------------


def normalise_filters(weight: np.ndarray, norm: str = "symmetric") -> np.ndarray:
    """Display values in ``[0, 1]`` of a stack of filters ``(n, c, kh, kw)``, per :data:`NORMS` (module docstring).

    ``symmetric`` scales by ``max |weight|`` over everything passed in: pass the whole layer (and select filters
    afterwards) to get the layer-wide scale.
    """
    if norm not in NORMS:
        raise UsageError(f"unknown --norm {norm!r}: choose {', '.join(NORMS)}")
    w = np.asarray(weight, dtype=np.float64)
    axes = tuple(range(1, w.ndim))
    if norm == "symmetric":
        scale = float(np.max(np.abs(w))) if w.size else 0.0
        out = 0.5 + 0.5 * w / (scale if scale > 0 else 1.0)
    elif norm == "symmetric-filter":
        scale_f = np.max(np.abs(w), axis=axes, keepdims=True)
        out = 0.5 + 0.5 * w / np.where(scale_f > 0, scale_f, 1.0)
    else:
        lo = np.min(w, axis=axes, keepdims=True)
        hi = np.max(w, axis=axes, keepdims=True)
        span = hi - lo
        out = np.where(span > 0, (w - lo) / np.where(span > 0, span, 1.0), 0.5)
    return out.astype(np.float32)


def filter_norms(weight: np.ndarray) -> np.ndarray:
    """L2 norm of every output filter ``||W[f]||_2`` over its input channels and kernel, shape ``(out,)``."""
    w = np.asarray(weight, dtype=np.float64)
    return np.sqrt((w.reshape(w.shape[0], -1) ** 2).sum(axis=1)).astype(np.float32)


def kernel_norm_matrix(weight: np.ndarray, groups: int = 1) -> np.ndarray:
    """The kernel-norm matrix ``||W[o, i]||_2`` as an ``(out, in)`` array over absolute input channels.

    For a grouped convolution, the input channels an output channel does not see are ``NaN`` (the block structure
    of the groups stays visible). For a depthwise convolution this is a diagonal matrix; :func:`filter_norms` gives
    its diagonal.
    """
    w = np.asarray(weight, dtype=np.float64)
    out_ch, per_group = w.shape[:2]
    kernel = np.sqrt((w.reshape(out_ch, per_group, -1) ** 2).sum(axis=2))
    if groups == 1:
        return kernel.astype(np.float32)
    full = np.full((out_ch, per_group * groups), np.nan)
    out_per_group = out_ch // groups
    for o in range(out_ch):
        g = o // out_per_group
        full[o, g * per_group:(g + 1) * per_group] = kernel[o]
    return full.astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# The grid of one layer
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class FilterGrid:
    """What :func:`filter_figure` draws for one convolution, and the numbers behind it.

    Attributes:
        layer: dotted layer name.
        kind: ``rgb``, ``single``, ``matrix``, ``kernels`` or ``norms`` (module docstring).
        weight: the layer's complete weights ``(out, in / groups, kh, kw)``, float32.
        channels: output channels drawn, in drawing order (rows, or grid order).
        in_channels: input-channel columns drawn: absolute indices for dense convolutions, positions inside the
            group for grouped ones (``kernels``, ``matrix``); all absolute input channels for ``norms``; ``[]``
            for ``rgb`` and ``single``.
        tiles: the drawn values: ``rgb`` ``(n, kh, kw, 3)``, ``single`` ``(n, kh, kw)``, ``kernels``
            ``(rows, cols, kh, kw)`` and ``matrix`` ``(rows, cols)`` in ``[0, 1]`` after normalisation; ``norms``
            the raw kernel norms ``(rows, in)`` (``NaN`` where not connected) or ``(rows,)`` for depthwise layers.
        norm: the normalisation (``None`` for ``norms``).
        scale: ``max |W|`` of the layer (the ``symmetric`` scale).
        filter_norms: L2 norm of every output filter, ``(out,)``.
        groups: the convolution's groups.
        sort: ``index`` or ``norm``.
        notes: what was left out and how to see it.
    """

    layer: str
    kind: str
    weight: np.ndarray
    channels: list[int]
    in_channels: list[int]
    tiles: np.ndarray
    norm: str | None
    scale: float
    filter_norms: np.ndarray
    groups: int
    sort: str
    notes: list[str] = field(default_factory=list)

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def in_total(self) -> int:
        """Input channels of the layer (all groups)."""
        return int(self.weight.shape[1] * self.groups)

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weight.shape[2]), int(self.weight.shape[3])

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.weight.shape[1] == 1

    def describe(self) -> str:
        """One line: layer, type of convolution, shapes."""
        kh, kw = self.kernel
        what = "depthwise" if self.depthwise else (f"grouped ({self.groups} groups)" if self.groups > 1 else "")
        return (f"{self.layer}: {what + ' ' if what else ''}{kh}x{kw} convolution, {self.in_total} -> "
                f"{self.out_channels} channels")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description (no arrays but the channel lists)."""
        return {
            "layer": self.layer, "view": self.kind, "norm": self.norm, "sort": self.sort,
            "kernel": list(self.kernel), "in_channels_total": self.in_total, "out_channels": self.out_channels,
            "groups": self.groups, "scale": round(float(self.scale), 8), "channels": list(self.channels),
            "in_channels": list(self.in_channels), "notes": list(self.notes),
        }


def filter_grid(
    model: nn.Module,
    layer: str | None = None,
    view: str = "kernels",
    norm: str = "symmetric",
    sort: str = "index",
    channels: str | Sequence[int] | None = None,
    in_channels: str | Sequence[int] | None = None,
    limit: int | None = None,
    show_all: bool = False,
) -> FilterGrid:
    """Select, sort and normalise the filters of one convolution (see the module docstring for the choices).

    Args:
        model: the network (only read).
        layer: dotted name of a 2-D convolution; ``None`` for the first one.
        view: ``kernels`` (the picture that suits the layer) or ``norms`` (kernel-norm matrix).
        norm: ``symmetric``, ``symmetric-filter`` or ``minmax``.
        sort: ``index`` or ``norm`` (L2 norm of each filter, largest first); applied before the limit.
        channels: output channels to draw (``"0-15,32"`` or ints); default: the first ``limit`` after sorting.
        in_channels: input channels (columns) of the ``kernels``/``matrix`` views; positions inside the group for
            grouped convolutions. Default: the first :data:`DEFAULT_COLUMNS` (``kernels``) or all (``matrix``).
        limit: how many output channels to draw by default (:data:`DEFAULT_FILTERS` or :data:`DEFAULT_ROWS`).
        show_all: draw every channel (overrides the default limits).

    Raises:
        LayerError: ``layer`` is not a 2-D convolution.
        TargetError: bad ``channels`` / ``in_channels``.
        UsageError: bad ``view``, ``norm``, ``sort`` or ``limit``.
    """
    if view not in VIEWS:
        raise UsageError(f"unknown --view {view!r}: choose kernels or norms")
    if norm not in NORMS:
        raise UsageError(f"unknown --norm {norm!r}: choose {', '.join(NORMS)}")
    if sort not in SORTS:
        raise UsageError(f"unknown --sort {sort!r}: choose index or norm")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    name = layer if layer is not None else first_conv(model)
    module = conv_module(model, name)
    weight = module.weight.detach().to("cpu", dtype=module.weight.dtype).float().numpy().copy()
    groups = int(module.groups)
    out_ch, per_group, kh, kw = weight.shape
    norms = filter_norms(weight)
    scale = float(np.max(np.abs(weight))) if weight.size else 0.0
    depthwise = groups > 1 and per_group == 1

    if view == "norms":
        kind = "norms"
    elif per_group * groups == 3 and groups == 1:
        kind = "rgb"
    elif per_group == 1:
        kind = "single"
    elif (kh, kw) == (1, 1):
        kind = "matrix"
    else:
        kind = "kernels"

    notes: list[str] = []
    explicit = channels is not None
    if explicit:
        chosen = parse_channels(channels, out_ch, "--channels")  # type: ignore[arg-type]
    else:
        chosen = list(range(out_ch))
    if sort == "norm":
        chosen = sorted(chosen, key=lambda c: (-float(norms[c]), c))
    default_k = {"rgb": DEFAULT_FILTERS, "single": DEFAULT_FILTERS, "kernels": DEFAULT_ROWS}.get(kind)
    k = limit if limit is not None else default_k
    if not explicit and not show_all and k is not None and len(chosen) > k:
        what = "output channels" if kind == "kernels" else "filters"
        which = f"the {k} of {out_ch} {what} with the largest L2 norm" if sort == "norm" else \
            f"the first {k} of {out_ch} {what}"
        notes.append(f"showing {which}; --channels, --limit or --all for others")
        chosen = chosen[:k]

    columns: list[int] = []
    if kind in ("kernels", "matrix"):
        if in_channels is not None:
            option = "--in-channels" + (" (positions inside the group)" if groups > 1 else "")
            columns = parse_channels(in_channels, per_group, option)
        else:
            columns = list(range(per_group))
            if kind == "kernels" and not show_all and len(columns) > DEFAULT_COLUMNS:
                notes.append(f"showing input channels 0-{DEFAULT_COLUMNS - 1} of {per_group}; --in-channels or "
                             "--all for others")
                columns = columns[:DEFAULT_COLUMNS]
    elif in_channels is not None:
        raise UsageError("--in-channels applies to the kernels view of layers with several input channels per "
                         f"filter; {name!r} has {per_group} per filter" + (" (view norms)" if kind == "norms" else ""))

    values = normalise_filters(weight, norm)[chosen] if kind != "norms" else None
    if kind == "rgb":
        tiles = values.transpose(0, 2, 3, 1)  # type: ignore[union-attr]
    elif kind == "single":
        tiles = values[:, 0]  # type: ignore[index]
    elif kind == "kernels":
        tiles = values[:, columns]  # type: ignore[index]
    elif kind == "matrix":
        tiles = values[:, columns, 0, 0]  # type: ignore[index]
    else:
        tiles = norms[chosen] if depthwise else kernel_norm_matrix(weight, groups)[chosen]
        columns = [] if depthwise else list(range(per_group * groups))
    if groups > 1 and kind in ("kernels", "matrix"):
        notes.append(f"grouped convolution: columns are input positions inside each filter's group of {per_group}")
    return FilterGrid(layer=name, kind=kind, weight=weight, channels=[int(c) for c in chosen], in_channels=columns,
                      tiles=np.ascontiguousarray(tiles, dtype=np.float32), norm=None if kind == "norms" else norm,
                      scale=scale, filter_norms=norms, groups=groups, sort=sort, notes=notes)


# --------------------------------------------------------------------------------------------------------------------
# Mosaics: many small tiles drawn as one image (fast at any size)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Mosaic:
    """Tiles laid out in a grid, as one RGBA image.

    Attributes:
        image: ``(H, W, 4)`` float RGBA; gaps are transparent.
        origins: top-left pixel ``(x, y)`` of every tile, in tile order.
        tile: ``(height, width)`` of a tile in mosaic pixels (after upscaling).
        band: height in pixels of the label band above every tile row.
        ncols: columns of the grid.
    """

    image: np.ndarray
    origins: list[tuple[int, int]]
    tile: tuple[int, int]
    band: int
    ncols: int

    def centre_top(self, index: int) -> tuple[float, float]:
        """Where a tile's label goes: the middle of the band above tile ``index`` (image coordinates)."""
        x, y = self.origins[index]
        return x + self.tile[1] / 2 - 0.5, y - self.band / 2 - 0.5


def grid_columns(n: int) -> int:
    """A pleasant number of columns for ``n`` tiles: from ``ceil(sqrt(n))`` to twice that, the fewest empty slots."""
    if n <= 4:
        return max(n, 1)
    base = math.ceil(math.sqrt(n))
    return min(range(base, 2 * base + 1), key=lambda c: (c * math.ceil(n / c) - n, c))


def build_mosaic(
    rgba_tiles: np.ndarray,
    ncols: int,
    gap: float = 0.12,
    band: float = 0.0,
    min_tile_px: int = 24,
    max_side: int = 4096,
) -> Mosaic:
    """Lay ``(n, h, w, 4)`` RGBA tiles in a grid of ``ncols`` columns.

    Tiles are repeated by an integer factor so that a side is at least ``min_tile_px`` pixels (3x3 kernels stay
    crisp squares); ``gap`` and ``band`` (label space above each row) are fractions of the tile size.
    """
    tiles = np.asarray(rgba_tiles, dtype=np.float32)
    n, h, w = tiles.shape[:3]
    factor = max(1, math.ceil(min_tile_px / max(h, w)))
    ncols = max(1, min(ncols, n))
    # keep huge grids (--all on a 512x512 layer) to a few thousand pixels: no figure shows more anyway
    while factor > 1 and max(ncols, math.ceil(n / ncols)) * (factor * max(h, w) + 1) > max_side:
        factor -= 1
    if factor > 1:
        tiles = tiles.repeat(factor, axis=1).repeat(factor, axis=2)
    th, tw = h * factor, w * factor
    gap_px = max(1, round(gap * max(th, tw)))
    band_px = round(band * max(th, tw))
    nrows = math.ceil(n / ncols)
    height = nrows * (th + band_px) + (nrows - 1) * gap_px
    width = ncols * tw + (ncols - 1) * gap_px
    image = np.zeros((height, width, 4), dtype=np.float32)
    origins = []
    for i in range(n):
        r, c = divmod(i, ncols)
        x = c * (tw + gap_px)
        y = r * (th + band_px + gap_px) + band_px
        image[y:y + th, x:x + tw] = tiles[i]
        origins.append((x, y))
    return Mosaic(image=image, origins=origins, tile=(th, tw), band=band_px, ncols=ncols)


def to_rgba(values01: np.ndarray, cmap: Any, rgb: bool = False) -> np.ndarray:
    """Colour values in ``[0, 1]`` with a colour map; with ``rgb``, ``(..., 3)`` colours just get an alpha channel."""
    values = np.asarray(values01, dtype=np.float32)
    if rgb:
        alpha = np.ones(values.shape[:-1] + (1,), dtype=np.float32)
        return np.concatenate([np.clip(values, 0.0, 1.0), alpha], axis=-1)
    return np.asarray(cmap(np.clip(np.nan_to_num(values, nan=0.5), 0.0, 1.0)), dtype=np.float32)


def label_size(points_per_tile: float, chars: int, cap: float = 10.0) -> float:
    """A font size (points) for a label of ``chars`` characters over a tile ``points_per_tile`` wide."""
    return float(max(3.0, min(cap, points_per_tile / max(chars, 1) * 1.7)))


# --------------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------------


def _colormap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


def _title(grid: FilterGrid) -> str:
    kh, kw = grid.kernel
    shown = len(grid.channels)
    what = {
        "rgb": f"{shown} of {grid.out_channels} colour filters {kh}x{kw}",
        "single": f"{shown} of {grid.out_channels} {'depthwise ' if grid.depthwise else ''}kernels {kh}x{kw}",
        "kernels": f"{shown} output channels x {len(grid.in_channels)} input-channel kernels {kh}x{kw}",
        "matrix": f"1x1 weight matrix, {shown} output x {len(grid.in_channels)} input channels",
        "norms": "kernel norms ||W[o, i]||_2" if not grid.depthwise else "kernel norms ||W[c]||_2 per channel",
    }[grid.kind]
    sort = " · sorted by L2 norm (largest first)" if grid.sort == "norm" else ""
    return f"{grid.describe()}\n{what}{sort}"


def _norm_line(grid: FilterGrid) -> str:
    if grid.norm == "symmetric":
        zero = "grey" if grid.kind == "rgb" else "white"
        return f"normalisation: symmetric, 0 = {zero}, full colour at ±{grid.scale:.3g} (max |W| of the layer)"
    if grid.norm == "symmetric-filter":
        zero = "grey" if grid.kind == "rgb" else "white"
        return f"normalisation: symmetric per filter, 0 = {zero}, full colour at ±max |w| of each filter"
    if grid.norm == "minmax":
        return "normalisation: min-max per filter (black/dark = its minimum, white/bright = its maximum)"
    return ""


def filter_figure(grid: FilterGrid, title: str | None = None, titled: bool = True) -> Figure:
    """Draw a :class:`FilterGrid` (see the module docstring for what each kind looks like).

    Args:
        grid: what to draw.
        title: the first line of the title block (default: the layer, its shape and what is shown); the block goes
            on with the normalisation and the grid's notes.
        titled: ``False``: no title block, and no band for it (``--no-title``).
    """
    lines = [title if title is not None else _title(grid), _norm_line(grid), *grid.notes]
    text = "\n".join(line for line in lines if line) if titled else ""
    if grid.kind in ("rgb", "single"):
        return _tile_grid_figure(grid, text)
    if grid.kind == "kernels":
        return _kernel_rows_figure(grid, text)
    return _matrix_figure(grid, text)


def _signed_cmap(grid: FilterGrid) -> Any:
    return _colormap("gray" if grid.norm == "minmax" else SIGNED_CMAP)


def _figure_with_axes(
    content_w: float, content_h: float, text: str, left: float = 0.25, right: float = 0.25, bottom: float = 0.25,
    top_extra: float = 0.0,
) -> tuple[Figure, Axes, float]:
    """A figure with one axes of exactly ``content_w x content_h`` inches under a title block (none when ``text`` is
    empty): (fig, ax, top)."""
    from matplotlib.figure import Figure

    top = (0.22 + 0.17 * (text.count("\n") + 1) if text else 0.1) + top_extra
    width = left + content_w + right
    height = bottom + content_h + top
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((left / width, bottom / height, content_w / width, content_h / height))
    if text:
        fig.text(0.5, 1.0 - 0.1 / height, text, ha="center", va="top", fontsize=8.5, linespacing=1.35)
    return fig, ax, top


def _add_colorbar(fig: Figure, ax: Axes, cmap: Any, vmin: float, vmax: float, label: str, gap_in: float = 0.1) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    width_in, height_in = fig.get_size_inches()
    box = ax.get_position()
    cax = fig.add_axes((box.x1 + gap_in / width_in, box.y0, 0.12 / width_in, box.height))
    bar = fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap=cmap), cax=cax)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=7)


def _bar_label(grid: FilterGrid) -> tuple[float, float, str] | None:
    if grid.norm == "symmetric":
        return -grid.scale, grid.scale, "weight"
    if grid.norm == "symmetric-filter":
        return -1.0, 1.0, "weight / max |w| of its filter"
    return None


def _tile_grid_figure(grid: FilterGrid, text: str) -> Figure:
    n = len(grid.channels)
    ncols = grid_columns(n)
    cmap = _signed_cmap(grid)
    mosaic = build_mosaic(to_rgba(grid.tiles, cmap, rgb=grid.kind == "rgb"), ncols, gap=0.12, band=0.42)
    grid_w = float(min(max(ncols * 0.75, 3.0), 11.0))
    per_px = grid_w / mosaic.image.shape[1]
    grid_h = mosaic.image.shape[0] * per_px
    bar = _bar_label(grid) if grid.kind == "single" else None
    fig, ax, _ = _figure_with_axes(grid_w, grid_h, text, right=1.0 if bar else 0.25)
    ax.imshow(mosaic.image, interpolation="nearest")
    ax.set_xlim(-0.5, mosaic.image.shape[1] - 0.5)
    ax.set_ylim(mosaic.image.shape[0] - 0.5, -0.5)
    ax.axis("off")
    longest = max(len(f"#{c}") for c in grid.channels)
    size = label_size(mosaic.tile[1] * per_px * 72, longest + 1, cap=9.0)
    size = min(size, mosaic.band * per_px * 72 * 0.8)
    for i, channel in enumerate(grid.channels):
        x, y = mosaic.centre_top(i)
        ax.text(x, y, f"#{channel}", ha="center", va="center", fontsize=size, color="#222222")
    if bar:
        _add_colorbar(fig, ax, cmap, *bar)
    return fig


def _sparse_ticks(count: int, most: int = 24) -> list[int]:
    step = max(1, math.ceil(count / most))
    return list(range(0, count, step))


def _row_label(grid: FilterGrid, row: int) -> str:
    """An output channel, with the absolute input channels its group reads for grouped convolutions."""
    channel = grid.channels[row]
    if grid.groups == 1:
        return str(channel)
    per_group = int(grid.weight.shape[1])
    group = channel // (grid.out_channels // grid.groups)
    return f"{channel} (in {group * per_group}-{(group + 1) * per_group - 1})"


KERNEL_GAP = "#8a8a8a"
"""Colour of the gaps between the kernels of a kernel-rows figure: a grey that no diverging map's 0 (white) matches."""


def _kernel_rows_figure(grid: FilterGrid, text: str) -> Figure:
    rows, cols = len(grid.channels), len(grid.in_channels)
    cmap = _signed_cmap(grid)
    flat = grid.tiles.reshape(rows * cols, *grid.kernel)
    mosaic = build_mosaic(to_rgba(flat, cmap), cols, gap=0.15, band=0.0, min_tile_px=16)
    grid_w = float(min(max(cols * 0.45, 3.0), 12.0))
    per_px = grid_w / mosaic.image.shape[1]
    grid_h = mosaic.image.shape[0] * per_px
    bar = _bar_label(grid)
    fig, ax, _ = _figure_with_axes(grid_w, grid_h, text, left=1.0 if grid.groups == 1 else 1.5,
                                   right=1.0 if bar else 0.3, bottom=0.2,
                                   top_extra=0.45)
    ax.set_facecolor(KERNEL_GAP)  # the transparent gaps: grey, or kernels whose rim is near 0 (white) would merge
    ax.imshow(mosaic.image, interpolation="nearest")
    th, tw = mosaic.tile
    tile_pt = tw * per_px * 72
    size = label_size(tile_pt, 4, cap=8.0)
    xs = _sparse_ticks(cols)
    ys = _sparse_ticks(rows, most=64)
    ax.set_xticks([mosaic.origins[c][0] + tw / 2 - 0.5 for c in xs], [str(grid.in_channels[c]) for c in xs])
    ax.set_yticks([mosaic.origins[r * cols][1] + th / 2 - 0.5 for r in ys], [_row_label(grid, r) for r in ys])
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.tick_params(labelsize=size, length=0, pad=2)
    ax.set_ylabel("output channel", fontsize=8)
    ax.set_xlabel("input channel" + (" (inside the group)" if grid.groups > 1 else ""), fontsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if bar:
        _add_colorbar(fig, ax, cmap, *bar)
    return fig


def _matrix_figure(grid: FilterGrid, text: str) -> Figure:
    if grid.kind == "norms" and grid.tiles.ndim == 1:
        return _depthwise_norms_figure(grid, text)
    matrix = grid.tiles
    rows, cols = matrix.shape
    side = 6.0
    aspect = rows / cols
    width = side if aspect <= 1 else max(side / min(aspect, 3.0), 2.5)
    height = side * min(aspect, 1.0) if aspect <= 1 else side
    width, height = max(width, 2.5), max(height, 1.5)
    fig, ax, _ = _figure_with_axes(width, height, text, left=0.9, right=1.2, bottom=0.6)
    if grid.kind == "norms":
        cmap = _colormap(NORMS_CMAP).with_extremes(bad="#eeeeee")
        finite = matrix[np.isfinite(matrix)]
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto",
                  interpolation="nearest")
        _add_colorbar(fig, ax, cmap, 0.0, vmax, "||W[o, i]||_2 (blank: not connected)", gap_in=0.12)
        xlabel = "input channel"
        col_labels = grid.in_channels
    else:
        cmap = _signed_cmap(grid)
        ax.imshow(matrix, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        bar = _bar_label(grid)
        if bar:
            _add_colorbar(fig, ax, cmap, *bar, gap_in=0.12)
        xlabel = "input channel" + (" (inside the group)" if grid.groups > 1 else "")
        col_labels = grid.in_channels
    xs = _sparse_ticks(cols, 16)
    ys = _sparse_ticks(rows, 24)
    ax.set_xticks(xs, [str(col_labels[c]) for c in xs])
    ax.set_yticks(ys, [str(grid.channels[r]) for r in ys])
    ax.tick_params(labelsize=7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("output channel", fontsize=8)
    return fig


def _depthwise_norms_figure(grid: FilterGrid, text: str) -> Figure:
    n = len(grid.channels)
    fig, ax, _ = _figure_with_axes(float(min(max(n * 0.08, 4.0), 12.0)), 2.6, text, left=0.8, bottom=0.6)
    positions = np.arange(n)
    ax.bar(positions, grid.tiles, width=0.85, color="#3b6ea5")
    ticks = _sparse_ticks(n, 24)
    ax.set_xticks(ticks, [str(grid.channels[i]) for i in ticks])
    ax.set_xlim(-0.7, n - 0.3)
    ax.tick_params(labelsize=7)
    ax.set_xlabel("channel", fontsize=8)
    ax.set_ylabel("||W[c]||_2", fontsize=8)
    return fig
