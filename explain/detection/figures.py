"""Figures for detectors and segmenters.

* :func:`draw_detections`: the photo with every detection's box and a ``class score`` tag (PIL, photo size); the
  explained detections are drawn thicker and numbered by rank.
* :func:`detection_panel`: one explained detection: the detections | its map over the photo with its box |
  the box region (with a margin) enlarged, the box drawn in both, so each map is visibly tied to its box; a colour
  bar beside the map panels says what the colours mean.
* :func:`segmentation_panel`: the predicted classes over the photo | the class map with a legend | the map of
  the explained class with its region outlined.

Matplotlib is used through ``matplotlib.figure.Figure`` only (no pyplot, no windows).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from explain.detection.targets import Detection
from explain.figures import DEFAULT_COLORMAP, check_colormap, colour_rgb

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

#: Box colours, cycled by class index (tab10 without its grey).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
EXPLAINED = "#ffffff"


#: The 21 class names of PASCAL VOC segmentation (torchvision's segmenters), background first.
VOC_CLASSES = ("__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
#: Classes named in a segmentation legend; the rest are summed up in one "+N more" line.
LEGEND_MAX = 12


def class_colour(label: int) -> str:
    """The box colour of a class."""
    return PALETTE[label % len(PALETTE)]


def voc_colour(index: int) -> tuple[int, int, int]:
    """The PASCAL VOC colour of class ``index`` (0-255 RGB), by the dataset's bit-interleaving rule.

    The index's bits are dealt out three at a time, lowest first, to red, green and blue, each landing one bit lower
    in its byte than the last (from bit 7 down), so 0 is black, 1 dark red ``(128, 0, 0)``, 15 (person)
    ``(192, 128, 128)``; the 256 indices of a byte get 256 different colours.
    """
    rgb = [0, 0, 0]
    for shift in range(7, -1, -1):
        for channel in range(3):
            rgb[channel] |= ((index >> channel) & 1) << shift
        index >>= 3
    return rgb[0], rgb[1], rgb[2]


def class_palette(class_names: Sequence[str]) -> np.ndarray:
    """One distinct RGB colour in [0, 1] per class of a segmenter, ``(len(class_names), 3)``; class 0 is black.

    The VOC classes get the PASCAL VOC palette (:func:`voc_colour`), so pictures read like the dataset's own; any
    other list gets hues spaced by the golden ratio (no two equal) cycling through three brightness and two
    saturation levels, so neighbouring indices differ in lightness too.
    """
    from matplotlib.colors import hsv_to_rgb

    count = len(class_names)
    if tuple(class_names) == VOC_CLASSES:
        return np.array([voc_colour(i) for i in range(count)], dtype=np.float64) / 255.0
    k = np.arange(count - 1, dtype=np.float64)
    hsv = np.stack([(k * 0.6180339887498949) % 1.0, np.where((k // 3) % 2 == 0, 0.85, 0.55),
                    np.array([0.95, 0.75, 0.55])[k.astype(int) % 3]], axis=-1)
    return np.concatenate([np.zeros((1, 3)), hsv_to_rgb(hsv).reshape(-1, 3)])


def detection_label(d: Detection, class_names: Sequence[str]) -> str:
    """``"#1 cat 0.87"``: rank (1-based), class name, confidence."""
    name = class_names[d.label] if 0 <= d.label < len(class_names) else str(d.label)
    return f"#{d.rank + 1} {name} {d.score:.2f}"


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def draw_detections(image: Image.Image, detections: Sequence[Detection], class_names: Sequence[str],
                    explained: Sequence[int] = (), max_boxes: int = 15, tag_all: bool = True,
                    min_side: int = 0) -> Image.Image:
    """The photo with boxes and ``#rank class score`` tags (the best ``max_boxes`` detections and every explained).

    Explained detections (by rank) get a thick box in a white frame; the others a thin one. Tags sit above the box
    (inside it when the box touches the top edge) on a filled background in the class colour, so they stay legible
    on any photo. With ``tag_all=False`` only the explained detections are tagged (the others are context).
    A photo whose longer side is under ``min_side`` pixels is first enlarged by a whole factor (nearest neighbour,
    so its pixels stay sharp): tags drawn at a legible size would otherwise cover a small photo. The result is then
    that much larger than the photo.
    """
    from PIL import Image as PILImage
    from PIL import ImageDraw

    canvas = image.convert("RGB")
    factor = -(-min_side // max(canvas.size)) if max(canvas.size) < min_side else 1
    canvas = canvas.resize((canvas.width * factor, canvas.height * factor), PILImage.Resampling.NEAREST) \
        if factor > 1 else canvas.copy()
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    scale = max(width, height)
    font = _font(max(12, scale // 36))
    thin, thick = max(1, scale // 400), max(3, scale // 150)
    chosen = set(explained)
    shown = [d for d in detections if d.rank < max_boxes or d.rank in chosen]
    for d in sorted(shown, key=lambda d: (d.rank in chosen, -d.rank)):  # explained ones last, on top
        colour = class_colour(d.label)
        x0, y0, x1, y1 = (v * factor for v in d.box)
        line = thick if d.rank in chosen else thin
        if d.rank in chosen:
            draw.rectangle((x0 - line, y0 - line, x1 + line, y1 + line), outline=EXPLAINED, width=max(1, line // 2))
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
        if not tag_all and d.rank not in chosen:
            continue
        text = detection_label(d, class_names)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y0 - th - 2 * line if y0 - th - 2 * line >= 0 else y0 + line
        tx = min(max(0.0, x0), max(0.0, width - tw - 4))
        draw.rectangle((tx, ty, tx + tw + 4, ty + th + 4), fill=colour)
        draw.text((tx + 2 - left, ty + 2 - top), text, fill="white", font=font)
    return canvas


def guided_image(gradient: np.ndarray) -> np.ndarray:
    """A ``(3, H, W)`` gradient as an RGB picture: ``0.5 + 0.15 g / std(g)``, clipped to [0, 1] (``(H, W, 3)``).

    The usual way guided backpropagation is shown (mid-grey is zero); a zero gradient is plain grey.
    """
    g = np.asarray(gradient, dtype=np.float32)
    std = float(g.std())
    picture = 0.5 + (0.15 * (g - g.mean()) / std if std > 0 else 0.0 * g)
    return np.clip(picture, 0.0, 1.0).transpose(1, 2, 0)


def _crop_box(box: Sequence[float], size: tuple[int, int], margin: float = 0.25) -> tuple[int, int, int, int]:
    """The box grown by ``margin`` of its size on each side (at least 16 px), clipped to the photo."""
    width, height = size
    x0, y0, x1, y1 = box
    mx, my = max(16.0, margin * (x1 - x0)), max(16.0, margin * (y1 - y0))
    return (max(0, int(x0 - mx)), max(0, int(y0 - my)), min(width, int(np.ceil(x1 + mx))),
            min(height, int(np.ceil(y1 + my))))


def _outline(ax: Any, box: Sequence[float], colour: str, offset: tuple[float, float] = (0.0, 0.0)) -> None:
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = box
    ax.add_patch(Rectangle((x0 - offset[0] - 0.5, y0 - offset[1] - 0.5), x1 - x0, y1 - y0, fill=False,
                           edgecolor=EXPLAINED, linewidth=3.2))
    ax.add_patch(Rectangle((x0 - offset[0] - 0.5, y0 - offset[1] - 0.5), x1 - x0, y1 - y0, fill=False,
                           edgecolor=colour, linewidth=1.8))


def detection_panel(
    boxes_image: Image.Image,
    shown: np.ndarray,
    detection: Detection,
    title: str,
    map_title: str,
    colormap: str | None = None,
    map_label: str = "map, normalised",
) -> Figure:
    """Detections | the map in context with the box | the box region enlarged (| colour bar).

    Args:
        boxes_image: the photo with the detections drawn (:func:`draw_detections`).
        shown: ``(H, W, 3)`` float RGB in [0, 1] at photo size: the map laid over the photo (or the guided picture).
        detection: the explained detection (its box is outlined in the map panels).
        title: the figure title.
        map_title: the title of the middle panel (e.g. ``"Grad-CAM++ at backbone.body.layer4"``).
        colormap: the colour map ``shown`` was coloured with (see :func:`blend`): a colour bar labelled
            ``map_label`` is drawn beside the map panels, 0 (no evidence) to 1 (the map's maximum). ``None`` (e.g.
            a guided-backprop picture, whose colours are gradient signs, not a scale): no colour bar.
        map_label: what the map is, e.g. ``"Grad-CAM++ of the class logit, normalised"``.
    """
    from matplotlib.figure import Figure

    height, width = shown.shape[:2]  # boxes_image may be an enlarged copy of a small photo
    cx0, cy0, cx1, cy1 = _crop_box(detection.box, (width, height))
    aspect = height / width
    # The crop panel is as tall as the others: its width follows the crop's own aspect ratio.
    crop_width = min(1.6, max(0.35, (cx1 - cx0) / max(1, cy1 - cy0) * aspect))
    fig = Figure(figsize=(4.3 * (2.0 + crop_width), 4.3 * aspect + 1.1), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=[1.0, 1.0, crop_width])
    colour = class_colour(detection.label)
    axes[0].imshow(boxes_image)
    axes[0].set_title("the detection (white frame) among the others", fontsize=9)
    axes[1].imshow(shown)
    _outline(axes[1], detection.box, colour)
    axes[1].set_title(map_title, fontsize=9)
    axes[2].imshow(shown[cy0:cy1, cx0:cx1], extent=(cx0 - 0.5, cx1 - 0.5, cy1 - 0.5, cy0 - 0.5))
    _outline(axes[2], detection.box, colour)
    axes[2].set_title("the box, enlarged", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if colormap is not None:
        _colour_bar(fig, axes[2], colormap, map_label, width=0.05 / crop_width)
    fig.suptitle(title, fontsize=11)
    return fig


def _colour_bar(fig: Figure, ax: Any, colormap: str, label: str, width: float = 0.05) -> None:
    """A vertical 0-1 colour bar of ``colormap`` just right of ``ax``, as tall as its picture and ``width`` of its
    width (the map was min-max normalised, so 1 is its maximum)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=check_colormap(colormap))
    bar = fig.colorbar(mappable, cax=ax.inset_axes((1.0 + 0.8 * width, 0.0, width, 1.0)))
    bar.set_ticks([0.0, 0.5, 1.0], labels=["0", "0.5", "1 (max)"])
    bar.ax.tick_params(labelsize=8)
    bar.set_label(label, fontsize=8)


def blend(image: Image.Image, map01: np.ndarray, colormap: str = DEFAULT_COLORMAP, alpha: float = 0.5) -> np.ndarray:
    """``(1 - alpha) photo + alpha colour(map)`` as float RGB ``(H, W, 3)`` (map at photo size, in [0, 1])."""
    photo = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return (1.0 - alpha) * photo + alpha * colour_rgb(map01, colormap)


def to_pil(rgb01: np.ndarray) -> Image.Image:
    """Float RGB in [0, 1] -> 8-bit PIL image."""
    from PIL import Image as PILImage

    return PILImage.fromarray(np.clip(rgb01 * 255.0 + 0.5, 0, 255).astype(np.uint8))


def draw_box(image: Image.Image, detection: Detection) -> Image.Image:
    """A copy of ``image`` with one detection's box (white under class colour)."""
    from PIL import ImageDraw

    out = image.copy()
    draw = ImageDraw.Draw(out)
    line = max(2, max(out.size) // 200)
    x0, y0, x1, y1 = detection.box
    draw.rectangle((x0 - line, y0 - line, x1 + line, y1 + line), outline=EXPLAINED, width=line)
    draw.rectangle((x0, y0, x1, y1), outline=class_colour(detection.label), width=line)
    return out


def class_map_rgb(predicted: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """``(H, W)`` class indices -> RGB in [0, 1], a colour per class (:func:`class_palette`; the background black)."""
    return class_palette(class_names)[predicted]


def _legend_handles(predicted: np.ndarray, class_names: Sequence[str], palette: np.ndarray) -> list[Any]:
    """Legend entries of the classes present in ``predicted``, largest area first (ties: lower index), at most
    :data:`LEGEND_MAX`; the rest as one last ``+N more`` entry with their total area."""
    from matplotlib.patches import Patch

    classes, counts = np.unique(predicted, return_counts=True)
    order = np.lexsort((classes, -counts))
    share = counts / max(1, predicted.size)

    def percent(p: float) -> str:
        return "<1%" if 0 < p < 0.005 else f"{100.0 * p:.0f}%"

    shown = order[:LEGEND_MAX] if len(order) <= LEGEND_MAX else order[:LEGEND_MAX - 1]
    handles: list[Any] = [Patch(facecolor=palette[classes[i]], edgecolor="grey",
                                label=f"{classes[i]} {class_names[classes[i]]} ({percent(share[i])})")
                          for i in shown]
    rest = order[len(shown):]
    if len(rest):
        handles.append(Patch(facecolor="none", edgecolor="none",
                             label=f"+{len(rest)} more ({percent(float(share[rest].sum()))})"))
    return handles


def segmentation_panel(
    image: Image.Image,
    predicted: np.ndarray,
    class_names: Sequence[str],
    map01: np.ndarray,
    region: np.ndarray,
    title: str,
    map_title: str,
    colormap: str = DEFAULT_COLORMAP,
) -> Figure:
    """Predicted classes over the photo | class map with legend | the map with the explained region outlined.

    The legend lists the classes present, largest area first (at most :data:`LEGEND_MAX` lines, the rest summed up
    as ``+N more``), in the colours of the class map (:func:`class_palette`). All arrays are at photo size:
    ``predicted`` int ``(H, W)``, ``map01`` float in [0, 1], ``region`` bool.
    """
    from matplotlib.figure import Figure

    photo = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    palette = class_palette(class_names)
    colours = palette[predicted]
    tinted = np.where((predicted > 0)[..., None], 0.45 * photo + 0.55 * colours, photo)
    width, height = image.size
    fig = Figure(figsize=(13.5, 4.3 * height / width + 1.1), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].imshow(tinted)
    axes[0].set_title("predicted classes over the photo", fontsize=9)
    axes[1].imshow(colours, interpolation="nearest")
    axes[1].set_title("class map", fontsize=9)
    handles = _legend_handles(predicted, class_names, palette)
    axes[1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    axes[2].imshow(blend(image, map01, colormap))
    axes[2].contour(region.astype(np.float32), levels=[0.5], colors="white", linewidths=1.6)
    axes[2].set_title(map_title, fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    _colour_bar(fig, axes[2], colormap, "relevance (normalised)")
    fig.suptitle(title, fontsize=11)
    return fig
