"""Report renderers: the figures of a report, one self-contained HTML page per image, the index page, the PDF.

The same drawing functions fill a stand-alone figure (embedded in an HTML page as a PNG ``data:`` URI) or a
sub-figure of a PDF page, so both formats show the same panels:

* **Grad-CAM++** of the most likely classes, laid over the full photo (:func:`explain.figures.map_to_image`,
  :func:`explain.figures.overlay`: the part of the photo outside the model's centre crop is dimmed), each titled
  with its class, probability and score, with one colour bar (every map is min-max normalised on its own).
* **Gradients** of the top class, at model-input resolution next to the model input: guided backpropagation and
  guided Grad-CAM++ as RGB pictures ``0.5 + 0.5 * clip(g / s, -1, 1)`` with ``s`` the 99th percentile of ``|g|``
  over non-zero entries (:func:`explain.guided_run.gradient_rgb`, as ``guided-backprop`` draws them), and the
  SmoothGrad magnitude ``max_c |g_c| / s`` (:func:`explain.guided_run.magnitude_map`) with its colour bar.
* **Strongest unit** of a layer whose units see part of the image (:attr:`explain.report.Reporter.channel_layer`):
  its channel's map (raw values, colour bar) with the unit, the map upsampled over the model input with the unit's
  theoretical receptive field, and a zoom on that field when it is smaller than most of the input; the caption
  (:func:`channel_caption`) says what the box is and which saturated channels were passed over.
* **Nearest gallery images** (with an index): thumbnails with rank, distance and label.

Every value a user supplies (file names, class names, gallery paths and labels) is escaped with
:func:`explain.html.esc` in HTML, and drawn as written in figures (mathtext is off when a figure is saved:
:func:`explain.manifest.literal_text`).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from explain.activations import activation_colormap, scale_maps
from explain.figures import box_beyond_note, draw_unit_box, format_prob, hide_titles
from explain.html import SCREEN_DPI_SCALE, Markup, canvas_data_uri, esc, img, join, png_data_uri, table
from explain.html import page as html_page

if TYPE_CHECKING:
    from matplotlib.figure import Figure, FigureBase
    from PIL import Image

    from explain.backbones.base import Backbone
    from explain.report import ImageExplanation, ReportOptions

__all__ = ["IndexEntry", "ReportPage", "channel_caption", "draw_cams", "draw_channel", "draw_gradients", "index_html",
           "page_html",
           "pdf_figure"]

#: Longest side of the photo drawn in figures and embedded in pages (pixels).
PHOTO_SIDE = 480
#: Thumbnail side on the index page and for neighbours.
THUMB_SIDE = 120
#: The PDF sheet's paper (A4 portrait, inches) and its print margin on every side: 12 mm, above the 10 mm that
#: printers and journals ask for, so nothing is cut at the paper's edge.
A4_INCHES = (8.27, 11.69)
PDF_MARGIN = 12.0 / 25.4


def mpl_text(value: object, width: int | None = None) -> str:
    """User text for a matplotlib title, wrapped to ``width`` characters. Its ``$`` stays as it is: every figure is
    saved with mathtext off (:func:`explain.manifest.literal_text`), where ``\\$`` would be drawn with its
    backslash."""
    text = str(value)
    if width is not None and len(text) > width:
        text = "\n".join(textwrap.wrap(text, width, break_long_words=True, max_lines=2, placeholder="…"))
    return text


@dataclass
class ReportPage:
    """One image's report, ready to draw.

    Attributes:
        name: the page's file name (``<stem>.html``).
        display: the input as the user named it.
        sha256: SHA-256 of the file.
        photo: the upright RGB photo, shrunk to at most :data:`PHOTO_SIDE` pixels.
        crop_box: the model's crop in ``photo`` pixels.
        image_size: ``(width, height)`` of the original photo.
        model_input: ``(H, W, 3)`` what the model saw, in [0, 1].
        model: the backbone's name.
        explanation: the engines' results.
        options: the report options (colour map, opacity, SmoothGrad settings).
        notes: conversions applied when the file was read.
    """

    name: str
    display: str
    sha256: str
    photo: Image.Image
    crop_box: tuple[float, float, float, float]
    image_size: tuple[int, int]
    model_input: np.ndarray
    model: str
    explanation: ImageExplanation
    options: ReportOptions
    notes: Sequence[str] = ()

    @property
    def title(self) -> str:
        """The input's name in page and figure titles: its path as given, or its file name (``--no-title-path``)."""
        return self.options.style.name(self.display)

    @classmethod
    def of(cls, sample: Any, explanation: ImageExplanation, backbone: Backbone, options: ReportOptions,
           name: str) -> ReportPage:
        """Build a page from a decoded :class:`explain.data.Sample` and its explanation."""
        loaded = sample.loaded
        photo = loaded.image.copy()
        photo.thumbnail((PHOTO_SIDE, PHOTO_SIDE))
        scale = photo.size[0] / loaded.image.size[0]
        crop_box = tuple(float(v) * scale for v in sample.geometry.crop_box)
        pixels = backbone.preprocess.denormalize(sample.tensor.detach().float().cpu())
        model_input = pixels.clamp(0.0, 1.0).permute(1, 2, 0).numpy()
        return cls(name=name, display=loaded.display, sha256=loaded.sha256, photo=photo,
                   crop_box=crop_box,  # type: ignore[arg-type]
                   image_size=loaded.image.size, model_input=model_input, model=backbone.name,
                   explanation=explanation, options=options, notes=list(loaded.notes))


# ---------------------------------------------------------------------------------------------------------------
# Drawing (into a Figure or a SubFigure)
# ---------------------------------------------------------------------------------------------------------------


def _bare(axes: Sequence[Any]) -> None:
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def _colorbar(fig: FigureBase, shown: Any, ax: Any, label: str) -> None:
    """A colour bar right of ``ax``, exactly as tall as the picture in it (an inset of its axes, which fit the
    picture; a bar made with ``ax=`` is as tall as the layout cell instead, taller than a wide picture)."""
    bar = fig.colorbar(shown, cax=ax.inset_axes((1.04, 0.0, 0.05, 1.0)))
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=7)


def draw_cams(fig: FigureBase, page: ReportPage, fontsize: float = 9.0) -> None:
    """Grad-CAM++ of each explained class over the full photo, titled with class, probability and score."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from explain.figures import check_colormap, map_to_image, overlay

    classes = page.explanation.classes
    cmap = check_colormap(page.options.colormap)
    axes = fig.subplots(1, len(classes), squeeze=False)[0]
    for ax, cls in zip(axes, classes):
        full = map_to_image(cls.cam, page.photo.size, page.crop_box)
        ax.imshow(overlay(page.photo, full, page.options.colormap, page.options.alpha))
        ax.set_title(f"#{cls.rank} {mpl_text(cls.name, 30)} ({cls.index})\np {format_prob(cls.prob)} · score {cls.score:.2f}",
                     fontsize=fontsize)
    _bare(axes)
    _colorbar(fig, ScalarMappable(Normalize(0.0, 1.0), cmap=cmap), axes[-1], "Grad-CAM++ (min-max per map)")


def draw_gradients(fig: FigureBase, page: ReportPage, fontsize: float = 9.0) -> None:
    """Model input | guided backprop | guided Grad-CAM++ | SmoothGrad magnitude, for the top class."""
    from explain.guided_run import CLIP_PERCENTILE, gradient_rgb, magnitude_map

    exp = page.explanation
    info = exp.smoothgrad_info
    axes = fig.subplots(1, 4, squeeze=False)[0]
    h, w = page.model_input.shape[:2]
    axes[0].imshow(page.model_input)
    axes[0].set_title(f"model input ({w}x{h} crop)", fontsize=fontsize)
    axes[1].imshow(gradient_rgb(exp.guided))
    axes[1].set_title("guided backprop\n(RGB, grey = 0)", fontsize=fontsize)
    axes[2].imshow(gradient_rgb(exp.guided_cam))
    axes[2].set_title("guided Grad-CAM++\n(RGB, grey = 0)", fontsize=fontsize)
    shown = axes[3].imshow(magnitude_map(exp.smoothgrad), cmap="gray", vmin=0.0, vmax=1.0)
    what = f"SmoothGrad\n(n={info['samples']}, noise {info['noise']:g})" if info["samples"] else "input gradient"
    axes[3].set_title(f"{what}\nmax over RGB of |g|", fontsize=fontsize)
    _colorbar(fig, shown, axes[3], f"/ p{CLIP_PERCENTILE:g} of |g|, clipped")
    _bare(axes)
    top = exp.top
    fig.suptitle(f"top class: {mpl_text(top.name, 60)} ({top.index}) · p {format_prob(top.prob)} · score {top.score:.2f}",
                 fontsize=fontsize + 1)


def draw_channel(fig: FigureBase, page: ReportPage, fontsize: float = 9.0) -> None:
    """The strongest unit: its channel's map with the unit (red +), the map over the input with the part of the
    input that unit sees (its receptive field, yellow), and a zoom on that part. A signed map is drawn with a
    diverging colour map centred on 0 (:func:`explain.activations.activation_colormap`)."""
    from explain.figures import check_colormap, map_to_image

    ch = page.explanation.channel
    image = page.model_input
    height, width = image.shape[:2]
    box = ch.box
    zoom = _zoomed(page)
    axes = fig.subplots(1, 3 if zoom else 2, squeeze=False)[0]
    name, centred = activation_colormap(ch.activation)
    cmap = check_colormap(name)
    act01, limits = scale_maps(ch.activation[None], "shared", centred)
    assert limits is not None  # a shared scale has limits
    shown = axes[0].imshow(ch.activation, cmap=cmap, interpolation="nearest", vmin=limits[0], vmax=limits[1])
    axes[0].plot([ch.unit[1]], [ch.unit[0]], marker="+", color="black" if centred else "#ff3030", markersize=10,
                 mew=2)
    h, w = ch.activation.shape
    axes[0].set_title(f"channel {ch.channel} of {ch.channels} ({h}x{w} units)\n+ strongest unit: {ch.value:.3g} at "
                      f"(y {ch.unit[0]}, x {ch.unit[1]})", fontsize=fontsize)
    _colorbar(fig, shown, axes[0], "activation")
    up = map_to_image(act01[0], (width, height), (0.0, 0.0, float(width), float(height)))
    axes[1].imshow(image)
    axes[1].imshow(up, cmap=cmap, alpha=0.45, vmin=0.0, vmax=1.0)
    if box is not None and ch.rf_size is not None:
        draw_unit_box(axes[1], box)
        centre_y, centre_x = ch.centre if ch.centre is not None else ((box[1] + box[3]) / 2 - 0.5,
                                                                      (box[0] + box[2]) / 2 - 0.5)
        axes[1].plot([centre_x], [centre_y], marker="+", color="#ffd400", markersize=10, mew=2)
        where = ("covers the whole input" if _covers_input(page) else box_beyond_note(box, ch.rf_size)
                 or f"of the {width}x{height} input")
        where = textwrap.fill(f"({where})", 30)  # a long note would run into the zoom's title
        axes[1].set_title(f"what that unit sees: {ch.rf_size[1]}x{ch.rf_size[0]} px\n{where}", fontsize=fontsize)
    else:
        axes[1].set_title("channel map over the model input\n(no receptive field for this layer)", fontsize=fontsize)
    axes[1].set_xlim(-0.5, width - 0.5)
    axes[1].set_ylim(height - 0.5, -0.5)
    if zoom:
        assert box is not None
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        axes[2].imshow(image[y0:y1, x0:x1], interpolation="nearest")
        axes[2].set_title("the receptive field, zoomed", fontsize=fontsize)
    _bare(axes)


def _box_share(page: ReportPage) -> float | None:
    """The share of the model input that the unit's receptive field covers (``None`` without a field)."""
    box = page.explanation.channel.box
    height, width = page.model_input.shape[:2]
    return None if box is None else (box[2] - box[0]) * (box[3] - box[1]) / (height * width)


def _zoomed(page: ReportPage) -> bool:
    """Whether the channel section zooms on the receptive field (a box smaller than 60 % of the input)."""
    share = _box_share(page)
    return share is not None and share < 0.6


def _covers_input(page: ReportPage) -> bool:
    """Whether the unit's receptive field covers the whole model input (as every unit of a head layer's does)."""
    share = _box_share(page)
    return share is not None and share >= 0.999


def draw_neighbours(fig: FigureBase, page: ReportPage, fontsize: float = 7.5) -> None:
    """Thumbnails of the nearest gallery images, captioned with rank, distance and label (PDF pages)."""
    from explain.gallery_run import PLACEHOLDER, load_thumbnail

    neighbours = page.explanation.neighbours or []
    axes = fig.subplots(1, max(len(neighbours), 1), squeeze=False)[0]
    unit = "d" if page.options.metric == "l2" else "1-cos"
    for ax, n in zip(axes, neighbours):
        thumb = load_thumbnail(n.file, THUMB_SIDE)
        ax.imshow(np.asarray(thumb) if thumb is not None else np.full((8, 8, 3), PLACEHOLDER, np.uint8))
        ax.set_title(f"#{n.rank} {unit}={n.distance:.3g}\n{mpl_text(n.label or Path(n.path).name, 18)}",
                     fontsize=fontsize)
    _bare(axes)
    fig.suptitle("nearest gallery images", fontsize=fontsize + 1.5)


def _draw_header(fig: FigureBase, page: ReportPage) -> None:
    """PDF header: the photo with the model's crop, and the top-k probabilities as bars."""
    from matplotlib.patches import Rectangle

    left, right = fig.subplots(1, 2, width_ratios=[1.0, 1.3])
    left.imshow(page.photo)
    x0, y0, x1, y1 = page.crop_box
    left.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="#ffd400", lw=1.2,
                             linestyle="--"))
    left.set_xlim(-0.5, page.photo.size[0] - 0.5)
    left.set_ylim(page.photo.size[1] - 0.5, -0.5)
    left.set_title("input (dashed: the model's crop)", fontsize=8)
    _bare([left])
    preds = page.explanation.predictions
    labels = [mpl_text(f"{p.name} ({p.index})", 34) for p in preds]
    ypos = np.arange(len(preds))
    right.barh(ypos, [p.prob for p in preds], color="#1f6feb")
    right.set_yticks(ypos, labels, fontsize=7.5)
    right.invert_yaxis()
    right.set_xlim(0, 1)
    right.set_xlabel("probability", fontsize=8)
    right.tick_params(axis="x", labelsize=7)
    for y, p in zip(ypos, preds):
        right.text(min(p.prob + 0.02, 0.8), y, f"{p.prob:.3f}", va="center", fontsize=7)
    right.set_title(f"top {len(preds)} predictions", fontsize=8)


def _standalone(draw: Any, page: ReportPage, size: tuple[float, float]) -> str:
    """Draw one section into its own figure and embed it as a JPEG ``data:`` URI (photos and maps: a PNG would be
    four times larger; see :func:`~explain.html.canvas_data_uri`), at :data:`SCREEN_DPI_SCALE` of ``--dpi``, without
    its title under ``--no-title``."""
    from matplotlib.figure import Figure

    style = page.options.style
    fig = Figure(figsize=size, layout="constrained", dpi=style.scaled_dpi(SCREEN_DPI_SCALE))
    draw(fig, page)
    if not style.title:
        hide_titles(fig)
    return canvas_data_uri(fig, fmt="JPEG")


def pdf_figure(page: ReportPage) -> Figure:
    """One A4 page with every section of the report (vector text, raster images), inside :data:`PDF_MARGIN`.

    The page is a sub-figure in the middle cell of a 3x3 grid whose outer rows and columns are the margins
    (constrained layout's own ``rect`` would leave the title at the paper's edge). Its images are drawn at ``--dpi``;
    under ``--no-title`` the page and its sections have no titles (the panels keep their labels).
    """
    from matplotlib.figure import Figure

    sections: list[tuple[Any, float]] = [(_draw_header, 2.3), (draw_cams, 2.6), (draw_gradients, 2.2),
                                         (draw_channel, 2.3)]
    if page.explanation.neighbours:
        sections.append((draw_neighbours, 1.4))
    width, height = A4_INCHES
    fig = Figure(figsize=A4_INCHES, layout="constrained", dpi=page.options.style.dpi)
    grid = fig.add_gridspec(3, 3, width_ratios=[PDF_MARGIN, width - 2 * PDF_MARGIN, PDF_MARGIN],
                            height_ratios=[PDF_MARGIN, height - 2 * PDF_MARGIN, PDF_MARGIN], wspace=0, hspace=0)
    sheet = fig.add_subfigure(grid[1, 1])
    subs = sheet.subfigures(len(sections), 1, height_ratios=[r for _, r in sections])
    for sub, (draw, _) in zip(np.atleast_1d(subs), sections):
        draw(sub, page)
    sheet.suptitle(f"{mpl_text(page.title, 90)}\n{page.model} · Grad-CAM++ at {page.explanation.cam_layer}",
                   fontsize=10)
    if not page.options.style.title:
        hide_titles(fig)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------------------------

_CSS = "figure.natural img { width: auto; max-width: 100%; border: 0; }"

_REFERENCES = Markup("""<details><summary>How these pictures were made</summary>
<ul>
<li><b>Grad-CAM++</b> (Chattopadhyay et al. 2018, <a href="https://arxiv.org/abs/1710.11063">arXiv:1710.11063</a>):
channel weights <code>w_k = Σ_ij α_kij ReLU(∂Y/∂A_kij)</code> at the layer, map <code>ReLU(Σ_k w_k A_k)</code>,
upsampled bilinearly and min-max normalised per class; placed back on the full photo (outside the model's centre
crop the photo is dimmed).</li>
<li><b>Guided backpropagation</b> (Springenberg et al. 2015, <a href="https://arxiv.org/abs/1412.6806">
arXiv:1412.6806</a>): the input gradient with negative gradients stopped at every rectifier. <b>Guided
Grad-CAM++</b> (Selvaraju et al. 2017, <a href="https://arxiv.org/abs/1610.02391">arXiv:1610.02391</a>): guided
backpropagation times the class's CAM. Drawn as RGB <code>0.5 + 0.5·clip(g/s, −1, 1)</code>, with <code>s</code> the
99th percentile of |g| over non-zero entries.</li>
<li><b>SmoothGrad</b> (Smilkov et al. 2017, <a href="https://arxiv.org/abs/1706.03825">arXiv:1706.03825</a>): the
input gradient averaged over noisy copies of the image; drawn as the per-pixel maximum of |g| over colours.</li>
<li><b>Strongest unit</b>: the largest activation of a layer whose units each see a part of the image (by
default the deepest block whose receptive field is at most half the input; <code>--layer</code> otherwise), among
channels whose peak is not saturated (a value repeated in the layer, like ReLU6's 6); the box is that unit's
theoretical receptive field (every input pixel it is connected to).</li>
</ul></details>""")


def _cams_size(page: ReportPage) -> tuple[float, float]:
    """Figure size of the CAM row: three photos side by side with their titles and a colour bar."""
    width, height = page.photo.size
    per = 11.0 / max(len(page.explanation.classes), 1)
    return 11.0, min(per * height / width + 0.75, 6.0)


def _section(title: object, body: Markup) -> Markup:
    return Markup(f"<h2>{esc(title)}</h2>\n{body}")


def _figure_img(uri: str, alt: object, caption: object | None = None) -> Markup:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption is not None else ""
    return Markup(f'<figure class="natural">{img(uri, alt)}{cap}</figure>')


def _predictions_table(page: ReportPage) -> Markup:
    rows = [(p_rank, p.name, p.index, p.prob, p.logit)
            for p_rank, p in enumerate(page.explanation.predictions, start=1)]
    return table(["#", "class", "index", "probability", "score"], rows)


def _neighbours_html(page: ReportPage) -> Markup:
    from explain.gallery_run import load_thumbnail

    unit = "distance" if page.options.metric == "l2" else "1 − cosine"
    cells = []
    for n in page.explanation.neighbours or []:
        thumb = load_thumbnail(n.file, THUMB_SIDE)
        picture = (img(png_data_uri(thumb, fmt="JPEG"), f"neighbour {n.rank}: {n.path}") if thumb is not None
                   else Markup('<p class="error">image not found</p>'))
        label = f" · {n.label}" if n.label else ""
        cells.append(Markup(f"<figure>{picture}<figcaption>#{n.rank} · {esc(unit)} {n.distance:.4g}{esc(label)}"
                            f"<br><code>{esc(n.path)}</code></figcaption></figure>"))
    return Markup(f'<div class="grid small">{join(cells)}</div>')


def _head_html(page: ReportPage) -> Markup:
    """Title, model and sizes, conversion notes, the photo and the predictions table."""
    exp = page.explanation
    width, height = page.image_size
    h, w = page.model_input.shape[:2]
    meta = (f"{esc(page.model)} · photo {width}x{height} px, model input {w}x{h} px (centre crop) · "
            f'<a href="index.html">all reports</a>')
    notes = "".join(f'<p class="muted">note: {esc(n)}</p>' for n in page.notes)
    return Markup(
        f'<h1>{esc(page.title)}</h1>\n<p class="meta">{meta}</p>\n{notes}\n'
        f'<div class="grid"><figure>{img(png_data_uri(page.photo, fmt="JPEG"), page.title, cls="wide")}'
        f"<figcaption>input: {esc(page.title)}</figcaption></figure>\n"
        f'<div><h3>Top {len(exp.predictions)} predictions</h3>{_predictions_table(page)}</div></div>'
    )


def _cams_html(page: ReportPage) -> Markup:
    n = len(page.explanation.classes)
    return _section(f"Grad-CAM++ of the top {n} classes at {page.explanation.cam_layer}",
                    _figure_img(_standalone(draw_cams, page, _cams_size(page)), f"Grad-CAM++ of the top {n} classes"))


def _gradients_html(page: ReportPage) -> Markup:
    exp = page.explanation
    info = exp.smoothgrad_info
    smooth = (f"SmoothGrad with {info['samples']} noisy copies (noise {info['noise']:g} of the input range, "
              f"--seed {page.options.seed}, from which each image's noise follows with its content)"
              if info["samples"] else "the plain input gradient (--samples 0)")
    return _section(f"Gradients of the top class: {exp.top.name}",
                    _figure_img(_standalone(draw_gradients, page, (12.0, 3.5)),
                                "guided backprop, guided Grad-CAM++ and SmoothGrad",
                                f"guided backpropagation and guided Grad-CAM++ of class {exp.top.index}; {smooth}."))


def channel_caption(page: ReportPage) -> str:
    """What the strongest-unit figure shows, in words: the unit, the channels passed over, what the box is."""
    ch = page.explanation.channel
    h, w = ch.activation.shape
    parts = [f"The strongest unit of {ch.layer}: {ch.value:.3g} at (y {ch.unit[0]}, x {ch.unit[1]}) of channel "
             f"{ch.channel}'s {h}x{w} map (+; channel mean {ch.mean:.3g})."]
    if ch.ties > 1:
        parts.append(f"Every channel's peak is saturated (a value repeated in the layer): {ch.ties} units of this "
                     "channel share it, and the first is marked.")
    elif ch.saturated:
        parts.append(f"{ch.saturated} of {ch.channels} channels were passed over: their peak is a value repeated in "
                     "the layer (saturated, like ReLU6's 6), not a peak.")
    if ch.box is None or ch.rf_size is None:
        parts.append("The layer table gives no receptive field for this layer.")
        return " ".join(parts)
    height, width = page.model_input.shape[:2]
    size = f"{ch.rf_size[1]}x{ch.rf_size[0]} px"
    if _covers_input(page):
        parts.append(f"Its receptive field ({size}) covers the whole {width}x{height} input, as every unit of this "
                     "layer does: choose a mid layer with --layer to see a part of the image.")
    else:
        beyond = box_beyond_note(ch.box, ch.rf_size)
        parts.append(f"The yellow box is the part of the {width}x{height} model input this unit sees (its "
                     f"theoretical receptive field, {size}{'; ' + beyond if beyond else ''})"
                     + (", zoomed on the right." if _zoomed(page) else "."))
    return " ".join(parts)


def _channel_html(page: ReportPage) -> Markup:
    ch = page.explanation.channel
    size = (3.3 * (3 if _zoomed(page) else 2) + 1.2, 3.4)
    return _section(f"Strongest unit of {ch.layer}",
                    _figure_img(_standalone(draw_channel, page, size), f"channel {ch.channel} of {ch.layer}",
                                channel_caption(page)))


def page_html(page: ReportPage) -> str:
    """The whole self-contained HTML page of one image."""
    parts = [_head_html(page), _cams_html(page), _gradients_html(page), _channel_html(page)]
    neighbours = page.explanation.neighbours
    if neighbours is not None:
        parts.append(_section(f"{len(neighbours)} nearest gallery images", _neighbours_html(page)))
    parts.append(_REFERENCES)
    return html_page(f"{page.title} · cnn-explain report", join(parts), css=_CSS)


@dataclass
class IndexEntry:
    """One row of the index page."""

    name: str
    display: str
    top: str
    prob: float
    thumbnail: str

    @classmethod
    def of(cls, report: ReportPage) -> IndexEntry:
        top = report.explanation.top
        return cls(name=report.name, display=report.display, top=f"{top.name} ({top.index})", prob=top.prob,
                   thumbnail=png_data_uri(report.photo, max_side=THUMB_SIDE, fmt="JPEG"))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def index_html(entries: Sequence[IndexEntry], errors: Sequence[tuple[str, str]], model: str) -> str:
    """The index page: every report with a thumbnail and its top class, then every input that failed."""
    rows = []
    for e in entries:
        href = esc(quote(e.name))
        rows.append((Markup(f'<a href="{href}">{img(e.thumbnail, e.display, width=THUMB_SIDE)}</a>'),
                     Markup(f'<a href="{href}">{esc(e.display)}</a>'), e.top, e.prob))
    parts = [Markup(f"<h1>cnn-explain report</h1>\n<p class=\"meta\">{_count(len(entries), 'image')} explained · "
                    f"{len(errors)} could not be used · model {esc(model)}</p>")]
    if entries:
        parts.append(table(["", "input", "top class", "probability"], rows))
    if errors:
        parts.append(Markup(f'<h2 class="error">{_count(len(errors), "input")} could not be used</h2>'))
        parts.append(table(["input", "error"], errors, cls="errors"))
    return html_page("cnn-explain report", join(parts))
