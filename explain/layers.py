"""The layer table of any PyTorch model: output shapes, layer geometry, parameters and theoretical receptive fields.

:func:`layer_table` runs **one** forward pass of a random ``1 x C x H x W`` input (eval mode, ``torch.no_grad()``)
under a :class:`torch.overrides.TorchFunctionMode` that follows the input through every torch function the model
calls: module code, functional calls inside ``forward`` (``F.relu``, ``F.max_pool2d``, ``F.pad``...), tensor
methods and operators (``+``, ``relu_``, ``torch.cat``, slicing...). Every tensor that depends on the input carries
a receptive-field record per spatial axis (height, width), and forward hooks read the record of each module's
output. Because the records travel with the tensors, branches, concatenations and residual additions are
handled on the real data-flow graph, not on the order in which modules happen to be registered or executed.

Per axis a record holds the three numbers of the classic recurrence (all in input pixels; pixel centres at
``0 .. W-1``)::

    r      size of the receptive field of one output unit
    j      jump: distance between the receptive-field centres of adjacent output units
    start  centre of the receptive field of output unit 0

and a windowed layer with kernel ``k``, stride ``S``, dilation ``d`` and padding-before ``P`` maps them as
``m = d*(k-1)+1``, ``j' = j*S``, ``r' = r + (m-1)*j``, ``start' = start + ((m-1)/2 - P)*j``, starting from
``r = 1, j = 1, start = 0`` at the input. The box of unit ``i`` covers pixels ``start + i*j +- (r-1)/2``.
Arithmetic is done with exact fractions.

Exact (the box is exactly the set of input pixels a unit is connected to, counting padding positions):
    * convolutions (``conv1d/2d/3d``, any stride, dilation, groups, integer or ``"same"``/``"valid"`` padding),
    * max, average and LP pooling (functional and module paths, ``ceil_mode``, ``max_pool2d_with_indices``),
    * adaptive pooling when the input size is divisible by the output size, and global pooling (whole input),
    * ``F.pad`` / padding modules, including asymmetric TensorFlow "SAME" padding (``start`` moves by the
      padding before), and negative padding (cropping),
    * basic slicing (``x[..., 1:, ::2]``), integer indexing, ``permute``/``transpose``/``movedim``, reshapes
      that keep the spatial dimensions and everything after them (``view(N, g, C // g, H, W)``),
    * every op that keeps the spatial size (activations, normalisation, dropout, ``+``, ``*``, ``torch.cat``
      along channels, ``Linear`` or ``LayerNorm`` over channels-last channels...): the union of its inputs'
      receptive fields, exact when the inputs' centres and jumps agree, as in residual blocks (the 1x1 stride-2
      shortcut is contained in the main branch) and Inception/DenseNet concatenations.

Global context is kept apart from the local box. When every unit also depends on one fixed region of the input
(a squeeze-excitation gate ``x * sigmoid(pool(x))``, ``x * x.mean((2, 3), keepdim=True)``, a DeepLab image-pooling
branch upsampled and concatenated, a ``softmax``/``cumsum``/``sort``/``flip``/``roll`` or matrix product along H
or W), ``receptive_field``/``jump``/``start`` describe the local, sliding-window part and :attr:`LayerInfo.context`
is the extra box every unit sees (usually the whole input). The context is dropped as soon as every unit's local
box contains it.

Conservative (the reported box always *contains* every input pixel a unit depends on, but may be larger):
    * unions of inputs whose centres or jumps differ: the largest jump is kept and the box is grown until it
      contains every input's box for every unit (no torchvision classifier needs this),
    * adaptive pooling with a non-divisible size, ``F.interpolate``/``Upsample`` (every mode, incl. antialias),
      transposed convolutions and ``pixel_shuffle``/``pixel_unshuffle``: the input window of every output unit is
      computed, and the smallest box centred on a regular grid that contains all of them is reported (a
      fractional size is rounded up),
    * a context interval that is not a single region (two separate global branches) is replaced by its hull.

Not spatial (``receptive_field`` is ``None``): outputs whose spatial axes are gone (flatten, ``Linear`` on
flattened features, reductions over H and W without ``keepdim``, reshapes that merge H or W, ops of unknown
geometry that change the spatial size, concatenation along H or W, attention over flattened tokens). They still
carry their whole-input dependency, so a later broadcast back onto a feature map becomes context.

Conventions and limits:
    * any other op that keeps the spatial size (element-wise maths, activations, ``torch.where``, custom ops...)
      is assumed to be pointwise in space: the union of its inputs;
    * normalisation statistics are treated as constants: GroupNorm, InstanceNorm and LayerNorm over H and W
      strictly make every unit depend on the whole map, which is conventionally ignored (BatchNorm in eval mode,
      which the pass uses, is exactly pointwise);
    * reflect and replicate padding have zero-padding geometry (the mirrored pixels lie inside the box); circular
      padding's wrap-around to the opposite border is not followed;
    * a module that runs several times (``ResNet``'s shared ``relu``) reports its **last** execution, and
      ``executions`` says how many there were; a sub-module called through ``.forward()`` directly (not through
      ``__call__``) is not seen by hooks and reports ``executions == 0``;
    * in-place writes through a view into another tensor (``x[:, :c].add_(y)``) update the view only, and
      advanced (tensor) indexing along H or W is treated like an op of unknown geometry;
    * for an axis with a single unit (a global pooling output) ``jump`` is nominal (the pooled extent).

The library never prints; it raises :class:`~explain.errors.UsageError` (or :class:`~explain.errors.LayerError`)
for bad input, and the model is left exactly as found (training flags, hooks, parameters, gradients).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from explain.errors import LayerError, TargetError, UsageError
from explain.modules import resolve_layer

if TYPE_CHECKING:
    from explain.backbones.base import Backbone
    from explain.manifest import Manifest

__all__ = ["LAYERS_CSV", "LayerInfo", "layer_table", "layers_manifest", "missing_receptive_fields_note",
           "part_view_layer", "receptive_field", "write_layers"]

LAYERS_CSV = "layers.csv"
"""The layer table as CSV in a ``layers --out`` folder."""


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerInfo:
    """One row of the layer table.

    Attributes:
        name: Dotted module name, as accepted by ``--layer``.
        type: Class name of the module, e.g. ``"Conv2d"``.
        output_shape: Shape of the module's output in the forward pass, without the batch dimension (the first
            tensor when the output is a tuple or list); ``None`` if the module did not run or returned no tensor.
        kernel: Kernel size per spatial dimension of a convolution or pooling module, else ``None``.
        stride: Stride per spatial dimension, else ``None``.
        padding: Padding per spatial dimension, a string (``"same"``, ``"valid"``), the ``(left, right, top,
            bottom)`` tuple of a padding module, or ``None``.
        dilation: Dilation per spatial dimension, else ``None``.
        receptive_field: Theoretical receptive field ``(h, w)`` of one output unit, in input pixels; ``None`` when
            the output is not spatial (or did not depend on the input).
        jump: Distance ``(dy, dx)`` in input pixels between the receptive-field centres of adjacent output units.
        start: Input-pixel coordinate ``(y, x)`` of the receptive-field centre of output unit ``(0, 0)``; pixel
            centres are at ``0 .. W-1``.
        params: Number of parameters of the module including its children.
        executions: How many times the module ran in the forward pass (a reused module runs several times; the
            other fields then describe its last execution).
        grid: Size ``(h, w)`` of the output's spatial grid (number of units along each axis), or ``None``.
        context: Box ``(x0, y0, x1, y1)`` (pixel-edge coordinates, unclipped, like :meth:`unit_box`) that every
            unit depends on *in addition to* its own receptive field, through global context such as
            squeeze-excitation gates or a softmax over H or W; ``None`` when units depend on their receptive field
            only. Clipped to the input it is usually the whole image.
    """

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    kernel: tuple[int, ...] | None
    stride: tuple[int, ...] | None
    padding: tuple[int, ...] | str | None
    dilation: tuple[int, ...] | None
    receptive_field: tuple[int, int] | None
    jump: tuple[float, float] | None
    start: tuple[float, float] | None
    params: int
    executions: int
    grid: tuple[int, int] | None = None
    context: tuple[float, float, float, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of every field (tuples become lists)."""
        out: dict[str, Any] = {}
        for key in self.__dataclass_fields__:
            value = getattr(self, key)
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def unit_box(self, y: int, x: int, clip_to: tuple[int, int] | None = None) -> tuple[float, float, float, float]:
        """Return the receptive-field box of output unit ``(y, x)`` as ``(x0, y0, x1, y1)`` in input pixels.

        The box uses pixel-edge coordinates like PIL's crop boxes: pixel ``i`` spans ``[i, i + 1)``, so the box
        covers pixels ``x0 .. x1 - 1`` and ``image.crop(box)`` cuts out exactly the receptive field.

        Args:
            y: Row of the unit in the layer's output grid.
            x: Column of the unit in the layer's output grid.
            clip_to: Input size ``(h, w)`` to clip the box to; unclipped boxes can extend past the image border.

        Raises:
            LayerError: the layer's output is not spatial.
            TargetError: ``(y, x)`` is outside the layer's output grid.
        """
        if self.receptive_field is None or self.jump is None or self.start is None:
            raise LayerError(f"layer {self.name!r} ({self.type}) has no spatial receptive field")
        if self.grid is not None and not (0 <= y < self.grid[0] and 0 <= x < self.grid[1]):
            raise TargetError(
                f"unit ({y}, {x}) is outside the {self.grid[0]}x{self.grid[1]} output grid of layer {self.name!r}"
            )
        box: list[float] = []
        for index, unit in ((1, x), (0, y)):
            centre = self.start[index] + unit * self.jump[index]
            half = (self.receptive_field[index] - 1) / 2
            box.extend((centre - half, centre + half + 1))
        x0, x1, y0, y1 = box
        if clip_to is not None:
            height, width = clip_to
            x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
            y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
        return (x0, y0, x1, y1)


def layer_table(
    model: nn.Module,
    input_size: tuple[int, int] = (224, 224),
    device: str | torch.device | None = "cpu",
    in_channels: int | None = None,
) -> list[LayerInfo]:
    """Run one forward pass and describe every named sub-module of ``model``.

    Args:
        model: Any ``torch.nn.Module`` taking a ``(1, C, H, W)`` tensor; it is run in eval mode under
            ``torch.no_grad()`` and left exactly as found (training flags, hooks, parameters).
        input_size: Input height and width in pixels.
        device: Device of the input tensor; it must be the model's device (the model is not moved). ``None`` uses
            the device of the model's first parameter. ``"meta"`` works for a model built on the meta device.
        in_channels: Channels of the input; by default the ``in_channels`` of the first module that has one
            (the first convolution), else 3.

    Returns:
        One :class:`LayerInfo` per named sub-module, in registration order (the root module is left out).

    Raises:
        UsageError: bad ``input_size``, a device that is not the model's, or the forward pass failed.
    """
    from explain.modules import check_eager

    check_eager(model)
    size = _check_size(input_size)
    dev, dtype = _input_device_dtype(model, device)
    channels = in_channels if in_channels is not None else _guess_in_channels(model)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((1, channels, *size), generator=generator).to(device=dev, dtype=dtype)

    names = {module: name for name, module in model.named_modules() if name}
    runs: dict[str, _Run] = {name: _Run() for name in names.values()}
    tracker = _Tracker()
    flags = [(module, module.training) for module in model.modules()]
    handles = []
    try:
        model.eval()
        for module, name in names.items():
            handles.append(module.register_forward_hook(_make_hook(runs[name], tracker)))
        with torch.no_grad(), tracker:
            tracker.track(sample, _input_record(len(size)))
            try:
                model(sample)
            except Exception as exc:  # the user's model failed on this input: a usage problem, not a bug here
                raise UsageError(
                    f"could not run the model on a 1x{channels}x{size[0]}x{size[1]} input: {exc}"
                ) from exc
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags:
            module.training = flag
        tracker.clear()

    return [_info(name, module, runs[name]) for module, name in names.items()]


def missing_receptive_fields_note(rows: Sequence[LayerInfo], task: str = "classification") -> str | None:
    """Why no row has a receptive field although layers have spatial outputs (``None`` when some row has one).

    A torchvision detector is the common case: its transform resizes the photo and copies it into a padded batch
    (an in-place write into another tensor), so the tracer loses the input there and no later layer gets a box.
    """
    spatial = any(row.output_shape is not None and len(row.output_shape) >= 3 for row in rows)
    if not spatial or any(row.receptive_field is not None for row in rows):
        return None
    why = ("the detector's transform resizes the photo and copies it into a padded batch, and receptive fields "
           "are not followed through that copy" if task == "detection" else
           "the input reaches them only through operations whose geometry is not followed (such as a copy into "
           "another tensor)")
    return f"no layer has a receptive field, so the RF and jump columns are empty: {why}"


def layers_manifest(
    backbone: Backbone, rows: Sequence[LayerInfo], input_size: tuple[int, int], argv: Sequence[str] = ()
) -> Manifest:
    """The manifest of a ``layers`` run: one item per row of the table (:meth:`LayerInfo.as_dict`), with the input
    size and the backbone's default CAM and feature layers at run level, and a warning when no layer has a receptive
    field (:func:`missing_receptive_fields_note`)."""
    from explain.manifest import Manifest

    extra = {"input_size": list(input_size), "default_layer": backbone.default_layer,
             "feature_layer": backbone.feature_layer}
    note = missing_receptive_fields_note(rows, str(backbone.extra.get("task", "classification")))
    return Manifest(command="layers", argv=list(argv), model=backbone.manifest_record(),
                    items=[row.as_dict() for row in rows], extra=extra, warnings=[note] if note else [])


def write_layers(manifest: Manifest, out: Path) -> None:
    """Write the table of a :func:`layers_manifest` as ``layers.csv`` into ``out`` (sizes as ``32x112x112``) and
    list it under the manifest's ``outputs``; the caller saves the manifest last."""
    from explain.manifest import csv_text, write_text

    columns = [name for name in LayerInfo.__dataclass_fields__]
    def cell(value: Any) -> Any:
        if isinstance(value, list):
            return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        return value

    cells = [{key: cell(value) for key, value in item.items()} for item in manifest.items]
    write_text(Path(out) / LAYERS_CSV, csv_text(cells, columns))
    manifest.extra["outputs"] = {"table": LAYERS_CSV}


def receptive_field(
    model: nn.Module,
    layer: str,
    input_size: tuple[int, int] = (224, 224),
    device: str | torch.device | None = "cpu",
    in_channels: int | None = None,
) -> LayerInfo:
    """Return the :class:`LayerInfo` row of one layer (see :func:`layer_table` for the arguments).

    Raises:
        LayerError: ``layer`` is not a sub-module of ``model``; the message suggests the closest names.
        UsageError: as :func:`layer_table`.
    """
    resolve_layer(model, layer)
    for row in layer_table(model, input_size, device=device, in_channels=in_channels):
        if row.name == layer:
            return row
    raise LayerError(f"layer {layer!r} is not listed in the layer table")  # pragma: no cover - resolve_layer checked


def part_view_layer(rows: Sequence[LayerInfo], input_size: tuple[int, int], fraction: float = 0.5) -> str | None:
    """The deepest layer of a :func:`layer_table` whose units each see only a part of the input, or ``None``.

    Candidates ran once, have a spatial grid, and a receptive field at most ``fraction`` of the input's shorter
    side in both directions; blocks (modules with sub-modules, such as ``_blocks.5`` or ``layer1``) are preferred
    to single operations, whose output may be clamped (ReLU6) or not yet normalised. Among the candidates the
    one with the largest receptive field wins (the later one on ties): the most abstract units whose receptive
    field still picks out a region.
    """
    limit = fraction * min(input_size)
    fits = [r for r in rows if r.executions == 1 and r.grid is not None and r.receptive_field is not None
            and max(r.receptive_field) <= limit]
    parents = {r.name.rpartition(".")[0] for r in rows}
    blocks = [r for r in fits if r.name in parents]
    chosen = blocks or fits
    if not chosen:
        return None
    return max(enumerate(chosen), key=lambda item: (max(item[1].receptive_field or (0,)), item[0]))[1].name


# --------------------------------------------------------------------------------------------------------------------
# Receptive-field records
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Axis:
    """Receptive field along one input axis.

    Unit ``i`` depends on input pixels ``s + i*j +- (r-1)/2`` (its local box) and, when ``g`` is set, also on the
    fixed interval ``g`` shared by every unit (global context such as a squeeze-excitation gate).
    """

    r: Fraction
    j: Fraction
    s: Fraction
    g: tuple[Fraction, Fraction] | None = None

    @property
    def lo(self) -> Fraction:
        return self.s - (self.r - 1) / 2

    @property
    def hi(self) -> Fraction:
        return self.s + (self.r - 1) / 2

    def unit(self, i: int) -> _Axis:
        """Unit ``i`` alone, its context folded in, as one fixed box."""
        lo, hi = self.lo + i * self.j, self.hi + i * self.j
        if self.g is not None:
            lo, hi = min(lo, self.g[0]), max(hi, self.g[1])
        return _Axis(hi - lo + 1, self.j, (lo + hi) / 2)

    def whole(self, n: int) -> _Axis:
        """The union of units ``0 .. n-1`` as one unit (what a global pooling over the axis sees)."""
        lo, hi = self.lo, self.hi + (max(n, 1) - 1) * self.j
        if self.g is not None:
            lo, hi = min(lo, self.g[0]), max(hi, self.g[1])
        return _Axis(hi - lo + 1, self.j * max(n, 1), (lo + hi) / 2)


@dataclass(frozen=True)
class _Rec:
    """Receptive-field record of one tensor.

    ``axes[a]`` describes input axis ``a`` (height, width); ``dims[a]`` is the (negative) dimension of the tensor
    that runs along it, or ``None`` when the tensor has no such dimension any more (then ``axes[a]`` is the fixed
    box that every element depends on).
    """

    axes: tuple[_Axis, ...]
    dims: tuple[int | None, ...]

    def collapsed(self, shape: Sequence[int]) -> _Rec:
        """Every spatial dimension lost: each element depends on the union of all units."""
        axes = tuple(ax if p is None else ax.whole(shape[p]) for ax, p in zip(self.axes, self.dims))
        return _Rec(axes, (None,) * len(axes))


def _tidy(rec: _Rec, shape: Sequence[int]) -> _Rec:
    """Drop context intervals that every unit's local box already contains."""
    axes: list[_Axis] = []
    for ax, p in zip(rec.axes, rec.dims):
        if ax.g is not None and p is not None and -p <= len(shape):
            last = max(shape[p], 1) - 1
            if all(ax.lo + i * ax.j <= ax.g[0] and ax.g[1] <= ax.hi + i * ax.j for i in (0, last)):
                ax = replace(ax, g=None)
        axes.append(ax)
    return _Rec(tuple(axes), rec.dims)


def _input_record(n_axes: int) -> _Rec:
    one = _Axis(Fraction(1), Fraction(1), Fraction(0))
    return _Rec((one,) * n_axes, tuple(range(-n_axes, 0)))


def _union(aligned: Sequence[_Axis], fixed: Sequence[tuple[Fraction, Fraction]], n_out: int) -> _Axis:
    """Union of the receptive fields of several inputs along one axis.

    ``aligned`` inputs move with the output units (their unit ``i`` feeds output unit ``i``); ``fixed`` intervals
    feed every output unit (broadcast or mixed inputs). The local boxes of the aligned inputs are united exactly
    when their jumps and centres agree, otherwise into the smallest unit-centred box that contains all of them for
    every unit. Fixed intervals (and the aligned inputs' own context) become the context interval, which is
    dropped when every unit's local box already contains it. Without aligned inputs every unit sees the same box.
    """
    boxes = list(fixed) + [ax.g for ax in aligned if ax.g is not None]
    if not aligned:
        lo, hi = min(b[0] for b in boxes), max(b[1] for b in boxes)
        return _Axis(hi - lo + 1, Fraction(0), (lo + hi) / 2)
    last = max(n_out, 1) - 1
    if all(ax.j == aligned[0].j and ax.s == aligned[0].s for ax in aligned):
        base = _Axis(max(ax.r for ax in aligned), aligned[0].j, aligned[0].s)
    else:
        jump = max(ax.j for ax in aligned)
        centre = (min(ax.lo for ax in aligned) + max(ax.hi for ax in aligned)) / 2
        half = Fraction(0)
        for ax in aligned:
            for i in (0, last):
                c = centre + i * jump
                half = max(half, c - (ax.lo + i * ax.j), (ax.hi + i * ax.j) - c)
        base = _Axis(2 * half + 1, jump, centre)
    if not boxes:
        return base
    g = (min(b[0] for b in boxes), max(b[1] for b in boxes))
    if all(base.lo + i * base.j <= g[0] and g[1] <= base.hi + i * base.j for i in (0, last)):
        return base
    return replace(base, g=g)


def _generic(out_shape: Sequence[int], items: Sequence[tuple[_Rec, Sequence[int], frozenset[int] | None]]) -> _Rec:
    """Record of an op that keeps the spatial dimensions where they are (elementwise, broadcasting, cat...).

    Each item is an input's record, its shape, and the (negative) dimensions along which the op mixes all
    elements (``None``: along every dimension, and nothing survives as spatial). An input dimension of the same
    size at the same position in the output is aligned; a size-1 dimension is broadcast (every unit depends on
    the same box); anything else loses the axis.
    """
    out_nd = len(out_shape)
    n_axes = len(items[0][0].axes)
    axes: list[_Axis] = []
    dims: list[int | None] = []
    for a in range(n_axes):
        moving: list[_Axis] = []
        fixed: list[tuple[Fraction, Fraction]] = []
        aligned: int | None = None
        kept: int | None = None
        for rec, shape, mixed in items:
            ax, p = rec.axes[a], rec.dims[a]
            if p is None:
                fixed.append((ax.lo, ax.hi))
                continue
            n_in = shape[p]
            present = mixed is not None and len(shape) <= out_nd and -p <= out_nd
            if present and p not in mixed and out_shape[p] == n_in and (ax.j != 0 or n_in == 1):
                moving.append(ax)
                aligned = p if aligned is None else aligned
            else:
                whole = ax.whole(n_in)
                fixed.append((whole.lo, whole.hi))
                if present and kept is None and (n_in == 1 or out_shape[p] == n_in):
                    kept = p
        pos = aligned if aligned is not None else kept
        axes.append(_union(moving, fixed, out_shape[pos] if pos is not None else 1))
        dims.append(pos)
    return _Rec(tuple(axes), tuple(dims))


def _lost(items: Sequence[tuple[_Rec, Sequence[int]]]) -> _Rec:
    """Conservative record when the geometry of an op is unknown: every element depends on everything."""
    return _generic((), [(rec, shape, None) for rec, shape in items])


def _linear_axis(ax: _Axis, span: int, stride: Fraction | int, offset: Fraction | int) -> _Axis:
    """Output unit ``i`` sees input units ``i*stride + offset .. i*stride + offset + span`` (a conv or pooling)."""
    centre = Fraction(offset) + Fraction(span, 2)
    return replace(ax, r=ax.r + span * ax.j, j=ax.j * stride, s=ax.s + centre * ax.j)


def _window_axis(ax: _Axis, windows: Sequence[tuple[int, int]], step: Fraction) -> _Axis:
    """Output unit ``i`` sees input units ``windows[i][0] .. windows[i][1]``; units are ``step`` input units apart.

    Returns the smallest box centred on ``c0 + i*step`` that contains every window (exact for regular windows).
    """
    if not windows:
        return ax
    if len(windows) > 1 and len(set(windows)) == 1:  # every unit sees the same input units: a broadcast
        step = Fraction(0)
    top = max(hi - i * step for i, (_, hi) in enumerate(windows))
    bottom = min(lo - i * step for i, (lo, _) in enumerate(windows))
    centre, half = (top + bottom) / 2, (top - bottom) / 2
    return replace(ax, r=ax.r + 2 * half * ax.j, j=ax.j * step, s=ax.s + centre * ax.j)


def _spatial(
    rec: _Rec,
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    nd: int,
    per_axis: Callable[[int, _Axis, int, int], _Axis],
) -> _Rec:
    """Apply a windowed op over the last ``nd`` dimensions; ``per_axis(k, axis, n_in, n_out)`` maps one axis."""
    axes: list[_Axis] = []
    dims: list[int | None] = []
    same_rank = len(out_shape) == len(in_shape) and len(in_shape) > nd
    for ax, p in zip(rec.axes, rec.dims):
        if p is None:
            axes.append(ax)
            dims.append(None)
        elif same_rank and -nd <= p <= -1:
            axes.append(per_axis(nd + p, ax, in_shape[p], out_shape[p]))
            dims.append(p)
        else:  # the op mixes a dimension that runs along this axis in an unknown way
            axes.append(ax.whole(in_shape[p]))
            dims.append(None)
    return _Rec(tuple(axes), tuple(dims))


# --------------------------------------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------------------------------------


def _param(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    if len(args) > index:
        return args[index]
    return default


def _tuple(value: Any, nd: int, default: int | None = None) -> tuple[int, ...]:
    """An int or a sequence of ints as an ``nd``-tuple (``None`` or an empty sequence give ``default``)."""
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        if default is None:
            raise ValueError("missing value")
        value = default
    if isinstance(value, (list, tuple, torch.Size)):
        items = [operator.index(v) for v in value]
        return tuple(items * nd) if len(items) == 1 else tuple(items)
    return (operator.index(value),) * nd


def _nd_from_name(name: str) -> int:
    for nd in (1, 2, 3):
        if f"{nd}d" in name:
            return nd
    return 2


def _dims(value: Any, ndim: int) -> list[int] | None:
    """A ``dim`` argument as a list of non-negative dimensions, or ``None`` for "all"."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        return [operator.index(v) % ndim for v in value]
    return [operator.index(value) % ndim]


# --------------------------------------------------------------------------------------------------------------------
# Op handlers: each returns the record of the output from the record of the first argument, or None ("generic")
# --------------------------------------------------------------------------------------------------------------------

MAX_INPUT_PIXELS = 4096 * 4096  # a traced forward pass allocates real activations
_CONV = {"conv1d", "conv2d", "conv3d"}
_CONV_T = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_MAX_POOL = {f"max_pool{n}d{s}" for n in (1, 2, 3) for s in ("", "_with_indices")}
_AVG_POOL = {"avg_pool1d", "avg_pool2d", "avg_pool3d"}
_LP_POOL = {"lp_pool1d", "lp_pool2d", "lp_pool3d"}
_ADAPTIVE = {f"adaptive_{k}_pool{n}d{s}" for k in ("avg", "max") for n in (1, 2, 3) for s in ("", "_with_indices")}
_PAD = {"pad", "constant_pad_nd"} | {f"{k}_pad{n}d" for k in ("reflection", "replication") for n in (1, 2, 3)}
_INTERPOLATE = {"interpolate", "upsample", "upsample_nearest", "upsample_bilinear"}
_PERMUTE = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "T", "mT", "H", "mH", "adjoint"}
_RESHAPE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel"}
# name -> (positional index of ``dim``, default when absent: None = all dimensions)
_REDUCE: dict[str, tuple[int, int | None]] = {
    **{
        n: (1, None)
        for n in (
            "sum", "mean", "nansum", "nanmean", "amax", "amin", "max", "min", "prod", "std", "var", "std_mean",
            "var_mean", "logsumexp", "median", "nanmedian", "argmax", "argmin", "all", "any", "count_nonzero",
            "aminmax",
        )
    },
    "mode": (1, -1),
    "kthvalue": (2, -1),
    "norm": (2, None),
    "quantile": (2, None),
    "nanquantile": (2, None),
}
# ops that mix all elements along ``dim``: name -> (positional index of the dim argument, its default)
_MIX_DIM: dict[str, tuple[int, Any]] = {
    "softmax": (1, None), "log_softmax": (1, None), "softmin": (1, None), "cumsum": (1, None),
    "cumprod": (1, None), "cummax": (1, None), "cummin": (1, None), "logcumsumexp": (1, None),
    "sort": (1, -1), "argsort": (1, -1), "msort": (1, 0), "flip": (1, None), "roll": (2, None),
}
_MATMUL = {"matmul", "mm", "bmm", "baddbmm", "addmm", "addbmm", "mv", "rmatmul"}
_MIX_ALL = {
    "einsum", "tensordot", "inner", "outer", "dot", "kron", "scaled_dot_product_attention", "grid_sample",
    "unfold", "fold", "embedding", "affine_grid", "cdist", "bilinear",
}
_NO_DEPENDENCE = {
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like", "new_zeros",
    "new_ones", "new_empty", "new_full", "new_tensor", "zero", "fill", "normal", "uniform",
}
_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


def _conv(
    name: str, args: Sequence[Any], kwargs: dict[str, Any], rec: _Rec, x: Sequence[int], y: Sequence[int]
) -> _Rec:
    weight = _param(args, kwargs, 1, "weight")
    nd = weight.dim() - 2
    kernel = tuple(int(k) for k in weight.shape[2:])
    transposed = name in _CONV_T
    if name in ("convolution", "_convolution"):
        transposed = bool(_param(args, kwargs, 6, "transposed", False))
        dil_index = 5
    else:
        dil_index = 7 if transposed else 5
    stride = _tuple(_param(args, kwargs, 3, "stride", 1), nd, 1)
    padding = _param(args, kwargs, 4, "padding", 0)
    dilation = _tuple(_param(args, kwargs, dil_index, "dilation", 1), nd, 1)
    spans = [d * (k - 1) for k, d in zip(kernel, dilation)]
    if isinstance(padding, str):
        before = [span // 2 for span in spans] if padding == "same" else [0] * nd
    else:
        before = list(_tuple(padding, nd, 0))

    def per_axis(k: int, ax: _Axis, n_in: int, n_out: int) -> _Axis:
        if transposed:  # out[o] gets in[i] for o = i*S - P + t*d: i in [(o + P - span) / S, (o + P) / S]
            return replace(
                ax,
                r=ax.r + Fraction(spans[k], stride[k]) * ax.j,
                j=ax.j / stride[k],
                s=ax.s + (Fraction(before[k]) - Fraction(spans[k], 2)) / stride[k] * ax.j,
            )
        return _linear_axis(ax, spans[k], stride[k], -before[k])

    return _spatial(rec, x, y, nd, per_axis)


def _pool(
    name: str, args: Sequence[Any], kwargs: dict[str, Any], rec: _Rec, x: Sequence[int], y: Sequence[int]
) -> _Rec:
    nd = _nd_from_name(name)
    if name in _LP_POOL:
        kernel = _tuple(_param(args, kwargs, 2, "kernel_size"), nd)
        stride = _tuple(_param(args, kwargs, 3, "stride"), nd, 0) if _param(args, kwargs, 3, "stride") else kernel
        padding, dilation = (0,) * nd, (1,) * nd
    else:
        kernel = _tuple(_param(args, kwargs, 1, "kernel_size"), nd)
        raw_stride = _param(args, kwargs, 2, "stride")
        stride = kernel if raw_stride is None or raw_stride == [] or raw_stride == () else _tuple(raw_stride, nd)
        padding = _tuple(_param(args, kwargs, 3, "padding", 0), nd, 0)
        dilation = _tuple(_param(args, kwargs, 4, "dilation", 1), nd, 1) if name in _MAX_POOL else (1,) * nd

    def per_axis(k: int, ax: _Axis, n_in: int, n_out: int) -> _Axis:
        return _linear_axis(ax, dilation[k] * (kernel[k] - 1), stride[k], -padding[k])

    return _spatial(rec, x, y, nd, per_axis)


def _adaptive_windows(n_in: int, n_out: int) -> list[tuple[int, int]]:
    return [((i * n_in) // n_out, -((-(i + 1) * n_in) // n_out) - 1) for i in range(n_out)]


def _adaptive(name: str, rec: _Rec, x: Sequence[int], y: Sequence[int]) -> _Rec:
    def per_axis(k: int, ax: _Axis, n_in: int, n_out: int) -> _Axis:
        return _window_axis(ax, _adaptive_windows(n_in, n_out), Fraction(n_in, max(n_out, 1)))

    return _spatial(rec, x, y, _nd_from_name(name), per_axis)


def _pad(
    args: Sequence[Any], kwargs: dict[str, Any], rec: _Rec, x: Sequence[int], y: Sequence[int]
) -> _Rec | None:
    pad = _param(args, kwargs, 1, "pad", None)
    if pad is None:
        pad = _param(args, kwargs, 1, "padding", None)
    pad = [operator.index(v) for v in pad]
    if len(y) != len(x):
        return None
    axes: list[_Axis] = []
    for ax, p in zip(rec.axes, rec.dims):
        k = -p - 1 if p is not None else -1
        if p is not None and 2 * k + 1 < len(pad):
            ax = replace(ax, s=ax.s - pad[2 * k] * ax.j)
        axes.append(ax)
    return _Rec(tuple(axes), rec.dims)


def _interpolate_windows(
    n_in: int, n_out: int, mode: str, align_corners: bool, scale: float | None, antialias: bool
) -> list[tuple[int, int]]:
    if mode == "area":
        return _adaptive_windows(n_in, n_out)
    ratios = [Fraction(n_in, n_out)]
    if scale:
        ratios.append(1 / Fraction(scale))
    support = {"linear": 1, "bilinear": 1, "trilinear": 1, "bicubic": 2}.get(mode, 0)
    windows: list[tuple[int, int]] = []
    for i in range(n_out):
        lows: list[int] = []
        highs: list[int] = []
        for ratio in ratios:
            if mode == "nearest":
                lo = hi = math.floor(i * ratio)
            elif mode == "nearest-exact":
                lo = hi = math.floor((i + Fraction(1, 2)) * ratio)
            else:
                if align_corners:
                    centre = Fraction(i * (n_in - 1), n_out - 1) if n_out > 1 else Fraction(0)
                else:
                    centre = (i + Fraction(1, 2)) * ratio - Fraction(1, 2)
                width = support * max(Fraction(1), ratio) if antialias else Fraction(support)
                if antialias or support == 0:
                    lo, hi = math.floor(centre - width), math.ceil(centre + width)
                else:
                    base = math.floor(max(centre, Fraction(0)))
                    lo, hi = base - (support - 1), base + support
            lows.append(lo)
            highs.append(hi)
        windows.append((min(max(min(lows), 0), n_in - 1), min(max(max(highs), 0), n_in - 1)))
    return windows


def _interpolate(
    name: str, args: Sequence[Any], kwargs: dict[str, Any], rec: _Rec, x: Sequence[int], y: Sequence[int]
) -> _Rec:
    nd = len(x) - 2
    if name == "upsample_bilinear":  # F.upsample_bilinear(input, size, scale_factor): align_corners=True
        mode, align = "bilinear", True
    else:
        mode = str(_param(args, kwargs, 3, "mode", "nearest"))
        align = bool(_param(args, kwargs, 4, "align_corners", False))
    antialias = bool(_param(args, kwargs, 6, "antialias", False))
    scale = _param(args, kwargs, 2, "scale_factor", None)
    scales = list(scale) if isinstance(scale, (list, tuple)) else [scale] * nd

    def per_axis(k: int, ax: _Axis, n_in: int, n_out: int) -> _Axis:
        windows = _interpolate_windows(n_in, n_out, mode, align, scales[k] if k < len(scales) else None, antialias)
        if align and mode not in ("nearest", "nearest-exact", "area") and n_out > 1:
            return _window_axis(ax, windows, Fraction(n_in - 1, n_out - 1))
        return _window_axis(ax, windows, Fraction(n_in, max(n_out, 1)))

    return _spatial(rec, x, y, nd, per_axis)


def _pixel_shuffle(
    name: str, args: Sequence[Any], kwargs: dict[str, Any], rec: _Rec, x: Sequence[int], y: Sequence[int]
) -> _Rec:
    key = "upscale_factor" if name == "pixel_shuffle" else "downscale_factor"
    factor = operator.index(_param(args, kwargs, 1, key))

    def per_axis(k: int, ax: _Axis, n_in: int, n_out: int) -> _Axis:
        if name == "pixel_shuffle":
            return _window_axis(ax, [(i // factor, i // factor) for i in range(n_out)], Fraction(1, factor))
        return _window_axis(ax, [(i * factor, i * factor + factor - 1) for i in range(n_out)], Fraction(factor))

    return _spatial(rec, x, y, 2, per_axis)


def _permute(
    func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], rec: _Rec, x: Sequence[int]
) -> _Rec | None:
    """Find the dimension permutation by running the op on a zero-memory meta tensor with distinct sizes."""
    if len(x) > len(_PRIMES):
        return None
    probe = torch.empty((), device="meta").expand(*_PRIMES[: len(x)])
    moved = func(probe, *args[1:], **kwargs)
    if not isinstance(moved, torch.Tensor) or moved.dim() != len(x):
        return None
    source = [_PRIMES.index(int(s)) for s in moved.shape]  # output dim k comes from input dim source[k]
    nd = len(x)
    dims = tuple(None if p is None else source.index(nd + p) - nd for p in rec.dims)
    return _Rec(rec.axes, dims)


def _reshape(rec: _Rec, x: Sequence[int], y: Sequence[int]) -> _Rec:
    present = [len(x) + p for p in rec.dims if p is not None]
    if not present:
        return rec
    tail = tuple(x[min(present) :])
    if len(y) >= len(tail) and tuple(y[len(y) - len(tail) :]) == tail:
        return rec
    return rec.collapsed(x)


def _reduce(
    name: str, args: Sequence[Any], kwargs: dict[str, Any], rec: _Rec, x: Sequence[int], y: Sequence[int]
) -> _Rec | None:
    index, default = _REDUCE[name]
    raw = _param(args, kwargs, index, "dim", default)
    if isinstance(raw, torch.Tensor):  # torch.max(a, b) and friends: elementwise
        return None
    if isinstance(raw, bool):  # std(x, unbiased) and the like
        raw = default
    nd = len(x)
    reduced = set(_dims(raw, nd) or range(nd)) if nd else set()
    keepdim = len(y) == nd
    if not keepdim and len(y) != nd - len(reduced):
        return rec.collapsed(x)
    axes: list[_Axis] = []
    dims: list[int | None] = []
    for ax, p in zip(rec.axes, rec.dims):
        if p is None:
            axes.append(ax)
            dims.append(None)
            continue
        q = nd + p
        if q in reduced:
            axes.append(ax.whole(x[p]))
            dims.append(p if keepdim else None)
        else:
            axes.append(ax)
            dims.append(p if keepdim else q - sum(1 for d in reduced if d < q) - len(y))
    return _Rec(tuple(axes), tuple(dims))


def _getitem(args: Sequence[Any], rec: _Rec, x: Sequence[int], y: Sequence[int]) -> _Rec | None:
    index = args[1] if len(args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    if any(
        isinstance(i, bool) or not (i is None or i is Ellipsis or isinstance(i, (int, slice)) or _is_int(i))
        for i in items
    ):
        return None  # advanced indexing: geometry unknown, use the generic rule
    nd = len(x)
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    mapping: dict[int, tuple[str, int, int, int]] = {}  # input dim -> (kind, first, step, output dim)
    q = out = 0
    for item in items:
        if item is None:
            out += 1
        elif item is Ellipsis:
            for _ in range(nd - consumed):
                mapping[q] = ("slice", 0, 1, out)
                q, out = q + 1, out + 1
        elif isinstance(item, slice):
            first, _stop, step = item.indices(x[q])
            mapping[q] = ("slice", first, step, out)
            q, out = q + 1, out + 1
        else:
            mapping[q] = ("int", operator.index(item) % x[q], 1, -1)
            q += 1
    while q < nd:
        mapping[q] = ("slice", 0, 1, out)
        q, out = q + 1, out + 1
    if out != len(y):
        return None
    axes: list[_Axis] = []
    dims: list[int | None] = []
    for ax, p in zip(rec.axes, rec.dims):
        if p is None:
            axes.append(ax)
            dims.append(None)
            continue
        kind, first, step, out_dim = mapping[nd + p]
        if kind == "int":
            axes.append(ax.unit(first))
            dims.append(None)
        else:
            axes.append(replace(ax, j=ax.j * step, s=ax.s + first * ax.j))
            dims.append(out_dim - len(y))
    return _Rec(tuple(axes), tuple(dims))


def _is_int(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _mixed_dims(name: str, args: Sequence[Any], kwargs: dict[str, Any], t: Any, ndim: int) -> frozenset[int] | None:
    """Dimensions (negative) along which op ``name`` mixes every element of argument ``t``."""
    first = args[0] if args else None
    second = args[1] if len(args) > 1 else None
    if name in _MIX_ALL or name.startswith("fft"):
        return None
    if name == "linear":
        return frozenset({-1}) if t is first else None
    if name in _MATMUL:
        left, right = (second, first) if name == "rmatmul" else (first, second)
        if name in ("baddbmm", "addmm", "addbmm"):
            left, right = args[1] if len(args) > 1 else None, args[2] if len(args) > 2 else None
            if t is not left and t is not right:
                return frozenset()
        return frozenset({-1}) if t is left else frozenset({-2}) if t is right else None
    if name in _MIX_DIM and t is first:
        index, default = _MIX_DIM[name]
        key = "dims" if name in ("flip", "roll") else "dim"
        dims = _dims(_param(args, kwargs, index, key, default), ndim) if ndim else []
        if dims is None:
            return frozenset(range(-ndim, 0))
        return frozenset(d - ndim for d in dims)
    return frozenset()


# --------------------------------------------------------------------------------------------------------------------
# The tracking mode
# --------------------------------------------------------------------------------------------------------------------


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", "") or ""
    if name == "__get__":  # a property such as Tensor.T or Tensor.data
        name = getattr(getattr(func, "__self__", None), "__name__", name) or name
    return name.strip("_")


class _Tracker(TorchFunctionMode):
    """Carries a :class:`_Rec` along with every tensor that depends on the input."""

    def __init__(self) -> None:
        super().__init__()
        self._store: dict[int, tuple[torch.Tensor, _Rec]] = {}  # id -> (tensor kept alive, record)

    def track(self, tensor: torch.Tensor, rec: _Rec | None) -> None:
        if rec is None:
            self._store.pop(id(tensor), None)
        else:
            self._store[id(tensor)] = (tensor, rec)

    def record(self, tensor: Any) -> _Rec | None:
        entry = self._store.get(id(tensor))
        return entry[1] if entry is not None and entry[0] is tensor else None

    def clear(self) -> None:
        self._store.clear()

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        inputs: list[tuple[torch.Tensor, tuple[int, ...], _Rec]] = []
        seen: set[int] = set()
        for t in _tensors((args, kwargs)):
            rec = self.record(t)
            if rec is not None and id(t) not in seen:
                seen.add(id(t))
                inputs.append((t, tuple(t.shape), rec))
        result = func(*args, **kwargs)
        if not inputs:
            return result
        name = _op_name(func)
        outputs = list(_tensors(result))
        if name == "setitem" and args and isinstance(args[0], torch.Tensor):
            outputs = [args[0]]
        done: set[int] = set()
        for out in outputs:
            if id(out) in done:
                continue
            done.add(id(out))
            try:
                rec = self._derive(func, name, args, kwargs, inputs, tuple(out.shape))
            except Exception:  # an op this module does not understand: depend on everything, stay correct
                rec = _lost([(r, s) for _, s, r in inputs])
            self.track(out, None if rec is None else _tidy(rec, out.shape))
        return result

    def _derive(
        self,
        func: Any,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        inputs: Sequence[tuple[torch.Tensor, tuple[int, ...], _Rec]],
        y: tuple[int, ...],
    ) -> _Rec | None:
        if name in _NO_DEPENDENCE:
            return None
        if not args and "input" in kwargs:
            args = (kwargs["input"],)
            kwargs = {k: v for k, v in kwargs.items() if k != "input"}
        main = next((item for item in inputs if args and item[0] is args[0]), None)
        rec: _Rec | None = None
        if main is not None and name != "setitem":
            rec = self._special(func, name, args, kwargs, main[2], main[1], y)
        if rec is None:
            items = [(r, s, _mixed_dims(name, args, kwargs, t, len(s))) for t, s, r in inputs]
            return _generic(y, items)
        others = [(r, s, None) for t, s, r in inputs if t is not main[0]] if main is not None else []
        return _generic(y, [(rec, y, frozenset()), *others]) if others else rec

    @staticmethod
    def _special(
        func: Any,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        rec: _Rec,
        x: tuple[int, ...],
        y: tuple[int, ...],
    ) -> _Rec | None:
        if name in _CONV or name in _CONV_T or name in ("convolution", "_convolution"):
            return _conv(name, args, kwargs, rec, x, y)
        if name in _MAX_POOL or name in _AVG_POOL or name in _LP_POOL:
            return _pool(name, args, kwargs, rec, x, y)
        if name in _ADAPTIVE:
            return _adaptive(name, rec, x, y)
        if name in _PAD:
            return _pad(args, kwargs, rec, x, y)
        if name in _INTERPOLATE:
            return _interpolate(name, args, kwargs, rec, x, y)
        if name in ("pixel_shuffle", "pixel_unshuffle"):
            return _pixel_shuffle(name, args, kwargs, rec, x, y)
        if name in _PERMUTE:
            return _permute(func, args, kwargs, rec, x)
        if name in _RESHAPE:
            return _reshape(rec, x, y)
        if name in _REDUCE:
            return _reduce(name, args, kwargs, rec, x, y)
        if name == "getitem":
            return _getitem(args, rec, x, y)
        return None


# --------------------------------------------------------------------------------------------------------------------
# Hooks and table rows
# --------------------------------------------------------------------------------------------------------------------


class _Run:
    """What the forward hooks saw of one module."""

    __slots__ = ("count", "shape", "rec", "full_shape")

    def __init__(self) -> None:
        self.count = 0
        self.shape: tuple[int, ...] | None = None
        self.rec: _Rec | None = None
        self.full_shape: tuple[int, ...] | None = None


def _make_hook(run: _Run, tracker: _Tracker) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        run.count += 1
        tensor = output if isinstance(output, torch.Tensor) else next(_tensors(output), None)
        if isinstance(output, dict) or tensor is None:
            run.shape, run.rec, run.full_shape = None, None, None
            return
        shape = tuple(int(s) for s in tensor.shape)
        run.shape = shape[1:] if shape else ()
        run.rec = tracker.record(tensor)
        run.full_shape = shape

    return hook


def _info(name: str, module: nn.Module, run: _Run) -> LayerInfo:
    rf = jump = start = grid = context = None
    rec = run.rec
    if rec is not None and run.full_shape is not None and len(rec.axes) == 2 and all(p is not None for p in rec.dims):
        rf = tuple(int(math.ceil(ax.r)) for ax in rec.axes)
        jump = tuple(float(ax.j) for ax in rec.axes)
        start = tuple(float(ax.s) for ax in rec.axes)
        grid = tuple(run.full_shape[p] for p in rec.dims if p is not None)
        if any(ax.g is not None for ax in rec.axes):
            spans = [
                ax.g if ax.g is not None else (lambda w: (w.lo, w.hi))(ax.whole(run.full_shape[p]))
                for ax, p in zip(rec.axes, rec.dims)
                if p is not None
            ]
            (y0, y1), (x0, x1) = spans
            context = (float(x0), float(y0), float(x1 + 1), float(y1 + 1))
    kernel, stride, padding, dilation = _geometry(module)
    return LayerInfo(
        name=name,
        type=type(module).__name__,
        output_shape=run.shape,
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        receptive_field=rf,  # type: ignore[arg-type]
        jump=jump,  # type: ignore[arg-type]
        start=start,  # type: ignore[arg-type]
        params=sum(p.numel() for p in module.parameters()),
        executions=run.count,
        grid=grid,  # type: ignore[arg-type]
        context=context,
    )


def _geometry(
    module: nn.Module,
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None, tuple[int, ...] | str | None, tuple[int, ...] | None]:
    """Kernel, stride, padding and dilation of a convolution, pooling or padding module (``None`` if absent)."""
    kernel_attr = getattr(module, "kernel_size", None)
    padding_attr = getattr(module, "padding", None)
    if kernel_attr is None:
        if isinstance(padding_attr, (tuple, list)) and all(isinstance(v, int) for v in padding_attr):
            return None, None, tuple(padding_attr), None  # padding modules: (left, right, top, bottom)
        return None, None, None, None
    nd = len(kernel_attr) if isinstance(kernel_attr, (tuple, list)) else _nd_from_name(type(module).__name__.lower())
    try:
        kernel = _tuple(kernel_attr, nd)
        stride = _tuple(getattr(module, "stride", None), nd, 0) if getattr(module, "stride", None) else kernel
        padding: tuple[int, ...] | str | None
        padding = padding_attr if isinstance(padding_attr, str) else _tuple(padding_attr, nd, 0)
        if getattr(module, "tf_same_padding", False):
            padding = "tf-same"  # padding computed from the input size at each call (asymmetric)
        dilation = _tuple(getattr(module, "dilation", 1), nd, 1)
    except (TypeError, ValueError):
        return None, None, None, None
    return kernel, stride, padding, dilation


# --------------------------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------------------------


def _check_size(input_size: Any) -> tuple[int, int]:
    try:
        height, width = (operator.index(v) for v in input_size)
    except (TypeError, ValueError):
        raise UsageError(f"input size must be two integers (height, width), got {input_size!r}") from None
    if height < 1 or width < 1:
        raise UsageError(f"input size must be positive, got {height}x{width}")
    if height * width > MAX_INPUT_PIXELS:
        raise UsageError(f"input size {height}x{width} is too large to trace: at most {MAX_INPUT_PIXELS} pixels "
                         "(4096x4096); receptive fields and jumps do not depend on the input size")
    return height, width


def _input_device_dtype(model: nn.Module, device: str | torch.device | None) -> tuple[torch.device, torch.dtype]:
    tensors = [*model.parameters(), *model.buffers()]
    model_device = tensors[0].device if tensors else None
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
    try:
        dev = torch.device(device) if device is not None else (model_device or torch.device("cpu"))
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"unknown device {device!r}: {exc}") from None
    if model_device is not None and (
        dev.type != model_device.type or (dev.index is not None and dev.index != model_device.index)
    ):
        raise UsageError(f"the model is on {model_device} but the layer table was asked to run on {dev}")
    return dev, dtype


def _guess_in_channels(model: nn.Module) -> int:
    for module in model.modules():
        channels = getattr(module, "in_channels", None)
        if isinstance(channels, int) and channels > 0:
            return channels
    return 3
