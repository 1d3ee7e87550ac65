"""Figures: heat maps laid back on the full photo, and side-by-side panels with colour bars.

Matplotlib is used through ``matplotlib.figure.Figure`` (never pyplot), so nothing opens a window and figures are
safe to make from any thread. Colour maps are matplotlib's names (``inferno``, ``viridis``, ``jet``, ...); heat
maps default to :data:`DEFAULT_COLORMAP`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from explain.display import resize_plane
from explain.errors import UsageError
from explain.manifest import write_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

FORMATS = ("png", "svg", "pdf")
#: The colour map of every heat map (CAMs, segmentation and detection maps): perceptually uniform, its lightness
#: rising steadily from 0 to 1, so brightness reads as relevance, also in grey print and for colour-blind readers
#: (jet's lightness peaks mid-scale and draws edges that are not in the map).
DEFAULT_COLORMAP = "inferno"
#: Font size of the panel titles of a figure row (the figure's own title is larger).
PANEL_TITLE_SIZE = 10.0
#: Probabilities below this are written ``<1e-4``: more digits would claim a precision softmax does not have.
PROB_FLOOR = 1e-4


def format_prob(p: float) -> str:
    """A probability for a figure title or caption, never rounded to a misleading ``0.00``.

    Two decimals from 0.01 up (``0.57``, ``1.00``), two significant digits below (``0.0012`` for 0.00116,
    ``0.00010``), and ``<1e-4`` under :data:`PROB_FLOOR` (including an underflowed 0); NaN is ``nan``.
    """
    p = float(p)
    if p != p:
        return "nan"
    if p >= 0.01:
        return f"{p:.2f}"
    if p < PROB_FLOOR:
        return "<1e-4"
    return f"{p:#.2g}"


def check_colormap(name: str) -> Any:
    """The matplotlib colour map ``name``.

    Raises:
        UsageError: unknown name, with suggestions.
    """
    import matplotlib

    from explain.errors import suggest

    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise UsageError(f"unknown colour map {name!r}{suggest(name, list(matplotlib.colormaps))}") from None


def check_format(fmt: str) -> str:
    """Normalise a ``--format`` value (png, svg or pdf)."""
    value = fmt.lower().lstrip(".")
    if value not in FORMATS:
        raise UsageError(f"unknown figure format {fmt!r}: choose png, svg or pdf")
    return value


MIN_DPI, MAX_DPI = 30, 1200
"""Bounds of :attr:`FigureStyle.dpi` (``--dpi``): below, text is unreadable; above, a figure is hundreds of MB."""


@dataclass(frozen=True)
class FigureStyle:
    """How a command's figures are written: for the screen (the default) or for a paper.

    Attributes:
        dpi: resolution of PNG figures (and of the images inside SVG/PDF ones), pixels per inch.
        title: draw each figure's title (input, target, method, layer); the panels keep their own labels.
        title_path: name an input in titles by its path as given; ``False``: by its file name only, so that a
            figure does not show the folders it came from.
    """

    dpi: int = 150
    title: bool = True
    title_path: bool = True

    def check(self) -> FigureStyle:
        """``self``, or a UsageError for a ``dpi`` outside [:data:`MIN_DPI`, :data:`MAX_DPI`]."""
        if not MIN_DPI <= self.dpi <= MAX_DPI:
            raise UsageError(f"--dpi must lie in [{MIN_DPI}, {MAX_DPI}] (got {self.dpi})")
        return self

    def name(self, display: str) -> str:
        """An input's name for a figure title: its path as the user gave it, or only its file (or folder) name."""
        return display if self.title_path else PurePosixPath(display).name or display  # "." has no name

    def title_of(self, text: str) -> str:
        """A figure's title to draw: ``text``, or ``""`` without :attr:`title` (for figures that lay out their title
        band by hand, and are laid out without one when it is empty)."""
        return text if self.title else ""

    def scaled_dpi(self, scale: float = 1.0) -> int:
        """:attr:`dpi` times ``scale``: a figure drawn at a lower resolution by default (a strip of many small
        cells, a wide overview) keeps its ratio to ``--dpi`` (150 x 2/3 = 100)."""
        return max(1, round(self.dpi * scale))

    def save(self, path: Path, figure: Any, scale: float = 1.0) -> Path:
        """Write ``figure`` atomically (:func:`explain.manifest.write_figure`) at :meth:`scaled_dpi`; without
        :attr:`title`, its title (the ``suptitle`` and figure-level texts of it and its sub-figures) is hidden, and a
        figure that had one is cropped to what is left (a constrained layout already closes the band)."""
        hidden = not self.title and hide_titles(figure)
        return write_figure(path, figure, dpi=self.scaled_dpi(scale), tight=hidden)


def hide_titles(figure: Any) -> bool:
    """Hide a figure's own title: the ``suptitle`` and the texts placed on the figure itself (titles drawn with
    ``fig.text``), and those of its sub-figures; axes titles (panel labels) stay. Returns whether there was any."""
    titles = list(figure.texts)  # the suptitle is one of them
    for text in titles:
        text.set_visible(False)
        text.set_in_layout(False)
    hidden = [hide_titles(sub) for sub in getattr(figure, "subfigs", [])]
    return bool(titles) or any(hidden)


def draw_unit_box(ax: Any, box: Sequence[float], colour: str = "#ffd400", style: str = "-") -> Any:
    """Outline a receptive field ``(x0, y0, x1, y1)`` (pixel edges, clipped to the picture) on an ``imshow`` axes.

    The box is drawn over the axes frame: a side that lies on the picture's border (the visible part of a box
    that extends beyond the picture) would otherwise hide under the frame, leaving a lone line. Returns the patch.
    """
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = box
    # imshow centres pixel i on i: pixel-edge coordinates shift by half a pixel
    return ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour,
                                  linewidth=1.6, linestyle=style, zorder=3.0, clip_on=False))


def box_beyond_note(box: Sequence[float], rf_size: tuple[int, int] | None) -> str:
    """``""``, or what to say when a receptive field of ``rf_size`` ``(h, w)`` was clipped to ``box``:
    ``"extends beyond the image, 201x224 inside"``."""
    inside = (int(round(box[2] - box[0])), int(round(box[3] - box[1])))
    if rf_size is None or (rf_size[1], rf_size[0]) == inside:
        return ""
    return f"extends beyond the image, {inside[0]}x{inside[1]} inside"


def map_to_image(map01: np.ndarray, image_size: tuple[int, int], crop_box: Sequence[float]) -> np.ndarray:
    """Place a model-input map back onto the original photo.

    Args:
        map01: ``(H, W)`` map at model-input resolution.
        image_size: ``(width, height)`` of the original photo.
        crop_box: ``(x0, y0, x1, y1)`` of the model input in original pixels (``Geometry.crop_box``).

    Returns:
        ``(height, width)`` float32 array: the map resized (bilinear) to the crop box and pasted at its place;
        ``NaN`` where the model saw nothing (outside the crop).
    """
    width, height = image_size
    x0, y0, x1, y1 = crop_box
    box_w, box_h = max(1, int(round(x1 - x0))), max(1, int(round(y1 - y0)))
    resized = resize_plane(map01, (box_w, box_h), smooth=True)
    full = np.full((height, width), np.nan, dtype=np.float32)
    ox, oy = int(round(x0)), int(round(y0))
    sx0, sy0 = max(0, -ox), max(0, -oy)
    dx0, dy0 = max(0, ox), max(0, oy)
    w = min(box_w - sx0, width - dx0)
    h = min(box_h - sy0, height - dy0)
    if w > 0 and h > 0:
        full[dy0:dy0 + h, dx0:dx0 + w] = resized[sy0:sy0 + h, sx0:sx0 + w]
    return full


def colour_rgb(map01: np.ndarray, colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """``colormap`` applied to values in [0, 1] (clipped; NaN as 0): float32 RGB ``(..., 3)`` in [0, 1].

    Looked up in 8 bits (the colour map's own 256-entry table) and then scaled: matplotlib's float lookup makes a
    float64 RGBA copy, 128 MB for a 4 MP map, several times over in one figure.
    """
    rgba = check_colormap(colormap)(np.clip(np.nan_to_num(map01), 0.0, 1.0), bytes=True)
    return rgba[..., :3].astype(np.float32) / np.float32(255.0)


def overlay(image: Image.Image, full_map: np.ndarray, colormap: str = DEFAULT_COLORMAP,
            alpha: float = 0.5) -> Image.Image:
    """Blend a colour-mapped ``full_map`` (values in [0, 1], NaN outside the crop) over ``image``.

    Inside the crop: ``(1 - alpha) * photo + alpha * colour(map)``. Outside it the photo is dimmed, so that it is
    visible which part of the photo the model never saw.
    """
    from PIL import Image as PILImage

    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"--alpha must lie in [0, 1] (got {alpha})")
    photo = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    seen = ~np.isnan(full_map)
    colours = colour_rgb(full_map, colormap)
    out = np.where(seen[..., None], (1.0 - alpha) * photo + alpha * colours, 0.45 * photo)
    return PILImage.fromarray(np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8))


def heatmap_panel(
    image: Image.Image,
    full_map: np.ndarray,
    overlaid: Image.Image,
    title: str,
    colormap: str = DEFAULT_COLORMAP,
    map_label: str = "relevance (normalised)",
) -> Figure:
    """Input | heat map with colour bar | overlay, in one row, under ``title``.

    The three panel titles share one font size (:data:`PANEL_TITLE_SIZE`); the colour bar is exactly as tall as
    the heat map (an inset of its axes, which fit the picture).
    """
    from matplotlib.figure import Figure

    width, height = image.size
    aspect = height / width
    fig = Figure(figsize=(12.0, 4.0 * aspect + 0.9), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=PANEL_TITLE_SIZE)
    cmap = check_colormap(colormap).with_extremes(bad="#dddddd")
    shown = axes[1].imshow(np.ma.masked_invalid(full_map), cmap=cmap, vmin=0.0, vmax=1.0)
    axes[1].set_title("heat map (grey: outside the model's crop)", fontsize=PANEL_TITLE_SIZE)
    bar = fig.colorbar(shown, cax=axes[1].inset_axes((1.03, 0.0, 0.04, 1.0)))
    bar.set_label(map_label, fontsize=8)
    bar.ax.tick_params(labelsize=8)
    axes[2].imshow(overlaid)
    axes[2].set_title("overlay", fontsize=PANEL_TITLE_SIZE)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=11)
    return fig
