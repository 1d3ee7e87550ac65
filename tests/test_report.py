"""The report library: its data equals the engines', hand-checked channels and receptive fields, escaped pages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from explain.backbones.base import Backbone, Preprocess
from explain.report import Reporter, ReportOptions, page_names
from explain.report_render import _REFERENCES, ReportPage, index_html, mpl_text, page_html
from tests.browser import parse_html
from explain.targets import ClassTarget

HOSTILE = ["<b>bold</b>", "a$b$c & <i>", "<script>alert(1)</script>", "plain"]


pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    """conv 3x3 (valid) -> ReLU -> conv 1x1 = ``head`` (the default layer) -> ReLU -> mean -> linear.

    Weights are set by hand: ``stem`` channel c is the sum of colour channel c over a 3x3 window; ``head`` copies
    those three channels and adds a fourth that is twice channel 0 (the most active channel for any image whose red
    channel dominates, and where the red channel is largest).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 3, bias=False)
        self.act1 = nn.ReLU()
        self.head = nn.Conv2d(3, 4, 1, bias=False)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(4, 4)
        with torch.no_grad():
            self.stem.weight.zero_()
            for c in range(3):
                self.stem.weight[c, c] = 1.0
            self.head.weight.zero_()
            for c in range(3):
                self.head.weight[c, c, 0, 0] = 1.0
            self.head.weight[3, 0, 0, 0] = 2.0
            self.fc.weight.copy_(torch.eye(4) + 0.1)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act2(self.head(self.act1(self.stem(x)))).mean(dim=(2, 3)))


def tiny_backbone() -> Backbone:
    preprocess = Preprocess(resize=None, crop=(12, 12), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return Backbone(name="tiny", model=Tiny().eval(), preprocess=preprocess, class_names=list(HOSTILE),
                    default_layer="head", feature_layer="head", weights="hand-set")


def test_most_active_channel_and_receptive_field_by_hand() -> None:
    """Input: zeros, red = 1 on pixel (y 5, x 7) and 0.5 on (2, 2), green 0.25 on (9, 9).

    The stem's red map is the 3x3 box sum, so the head's channel 3 (= 2 x red) has the largest mean,
    2 (9 x 1 + 9 x 0.5) / 100; its peak 2.0 sits at every unit of the 10x10 grid whose 3x3 window covers (5, 7):
    y 3..5, x 5..7 (so does every channel's peak: all are saturated, and the channel with the largest mean is
    shown); the first in row-major order is (3, 5), whose receptive field is the box x 5..8, y 3..6.
    """
    backbone = tiny_backbone()
    x = torch.zeros(1, 3, 12, 12)
    x[0, 0, 5, 7] = 1.0
    x[0, 0, 2, 2] = 0.5
    x[0, 1, 9, 9] = 0.25  # a little green: classes 1 and 2 do not tie
    reporter = Reporter(backbone, ReportOptions(top=3, cams=2, samples=0, layer="head"))
    (exp,) = reporter.explain(x)
    ch = exp.channel
    assert (ch.layer, ch.channel, ch.channels) == ("head", 3, 4)
    assert ch.activation.shape == (10, 10)
    # every channel's peak is a box sum shared by 9 units: all saturated, so the largest mean and its first peak
    assert ch.unit == (3, 5) and ch.value == pytest.approx(2.0) and ch.ties == 9 and ch.saturated == 4
    assert ch.mean == pytest.approx(2.0 * (9 * 1.0 + 9 * 0.5) / 100)
    assert ch.box == (5.0, 3.0, 8.0, 6.0) and ch.rf_size == (3, 3)
    assert ch.centre == (4.0, 6.0)  # pixel centres: rows 3..5, columns 5..7
    # prediction: logits = (I + 0.1) @ mean(head) -> class 3 (twice channel 0) first, then class 0
    assert [p.index for p in exp.predictions] == [3, 0, 1]
    assert [c.index for c in exp.classes] == [3, 0] and [c.rank for c in exp.classes] == [1, 2]
    assert exp.classes[0].name == HOSTILE[3] and exp.classes[1].name == HOSTILE[0]
    assert exp.smoothgrad_info["samples"] == 0 and exp.smoothgrad.shape == (3, 12, 12)


def test_report_data_equals_the_engines(lite0, samples: Path) -> None:
    """Each section holds exactly what the engine returns when asked on its own (other batch, explicit class)."""
    from explain.activations import feature_maps
    from explain.cam import compute_cams
    from explain.guided import guided_backprop
    from explain.images import load_image
    from explain.layers import receptive_field
    from explain.predict import top_classes
    from explain.saliency import saliency

    images = [load_image(samples / name).image for name in ("chelsea.png", "coffee.png")]
    x = torch.stack([lite0.preprocess(im) for im in images])
    reporter = Reporter(lite0, ReportOptions(samples=2, cams=3, top=5))
    explanations = reporter.explain(x, seeds=[11, 42])
    model, layer = lite0.model, lite0.default_layer
    assert reporter.channel_layer == "_blocks.5"  # the deepest block whose units see at most half the input
    row = receptive_field(model, reporter.channel_layer, lite0.input_size)
    for i, exp in enumerate(explanations):
        xi = x[i:i + 1]
        ref_top = top_classes(compute_cams(model, xi, layer, [ClassTarget(0)]).logits, lite0.class_names, 5)[0]
        assert [p.index for p in exp.predictions] == [p.index for p in ref_top]
        np.testing.assert_allclose([p.prob for p in exp.predictions], [p.prob for p in ref_top], rtol=1e-4)
        assert [c.index for c in exp.classes] == [p.index for p in ref_top[:3]]
        for cls in exp.classes:
            ref = compute_cams(model, xi, layer, [ClassTarget(cls.index)], "gradcam++").maps[0]
            np.testing.assert_allclose(cls.cam, ref.map, atol=1e-4)
            np.testing.assert_allclose(cls.cam_layer, ref.maps_layer[layer], rtol=1e-3, atol=1e-6)
            assert cls.score == pytest.approx(ref.score, rel=1e-4)
        top = ClassTarget(exp.top.index)
        guided = guided_backprop(model, xi, [top]).maps[0].gradient
        scale = np.abs(guided).max()
        np.testing.assert_allclose(exp.guided, guided, atol=1e-4 * scale)
        with_cam = guided_backprop(model, xi, [top], with_cam="gradcam++", cam_layers=[layer]).maps[0]
        np.testing.assert_allclose(exp.guided_cam, with_cam.gradient, atol=1e-4 * scale)
        np.testing.assert_allclose(exp.guided_cam, exp.guided * exp.classes[0].cam[None], atol=1e-4 * scale)
        smooth = saliency(model, xi, [top], samples=2, seed=[[11, 42][i]]).maps[0].gradient
        np.testing.assert_allclose(exp.smoothgrad, smooth, atol=1e-4 * np.abs(smooth).max())
        assert exp.cam_layer == layer and exp.channel.layer == "_blocks.5"
        maps = feature_maps(model, xi, reporter.channel_layer).maps[0]
        assert exp.channel.channel == int(np.argmax(maps.max(axis=(1, 2))))  # no saturated value in a block output
        np.testing.assert_allclose(exp.channel.activation, maps[exp.channel.channel], atol=1e-5)
        y, x_ = exp.channel.unit
        assert exp.channel.value == pytest.approx(float(maps[exp.channel.channel].max()), abs=1e-5)
        assert exp.channel.box == row.unit_box(y, x_, clip_to=lite0.input_size)
    # the model is left as found
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def _tiny_page(display: str) -> ReportPage:
    from PIL import Image

    from explain.data import Sample
    from explain.images import LoadedImage

    backbone = tiny_backbone()
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (20, 16, 3), dtype=np.uint8))
    tensor = backbone.preprocess(photo)
    reporter = Reporter(backbone, ReportOptions(top=4, cams=3, samples=2))
    (exp,) = reporter.explain(tensor[None])
    loaded = LoadedImage(path=Path(display), display=display, image=photo, sha256="0" * 64, original_mode="RGB")
    sample = Sample(loaded, tensor, backbone.preprocess.geometry(*photo.size))
    return ReportPage.of(sample, exp, backbone, reporter.options, "page.html")


def test_user_text_is_escaped_in_pages_and_figures() -> None:
    """Hostile class names and a hostile file name show as text: no tag of theirs reaches the page; ``$`` does not
    turn into mathtext in the figures (which would garble or crash them)."""
    display = "photos/<img src=x onerror=alert(1)>$x$.jpg"
    report = _tiny_page(display)
    document = page_html(report)
    parsed = parse_html(document)
    assert {tag for tag, _ in parsed.tags} <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3",
                                              "p", "a", "div", "figure", "figcaption", "img", "table", "thead",
                                              "tbody", "tr", "th", "td", "details", "summary", "ul", "li", "b", "code",
                                              "br"}
    assert not any(tag == "script" for tag, _ in parsed.tags)
    bold = [tag for tag, _ in parsed.tags if tag in ("b", "i")]
    assert len(bold) == _REFERENCES.count("<b>")  # only the method names of the explanations: none from a class
    text = "".join(parsed.text)
    for name in HOSTILE:
        assert name in text  # the literal names, as text
    assert display in text
    assert all(a.get("onerror") is None for _, a in parsed.tags)
    from matplotlib.text import Text

    from explain.manifest import literal_text
    from explain.report_render import pdf_figure

    drawn = [t for t in literal_text(pdf_figure(report)).findobj(Text) if t.get_text()]
    assert any("$x$.jpg" in t.get_text() for t in drawn)  # drawn as written: no backslash, no mathematics
    assert not any(r"\$" in t.get_text() or t.get_parse_math() for t in drawn)
    assert mpl_text("a$b$c") == "a$b$c"
    index = index_html([_index_entry(report)], [("<b>bad</b>.jpg", "not an image: <oops>")], "tiny")
    parsed = parse_html(index)
    assert "b" not in {tag for tag, _ in parsed.tags}
    text = "".join(parsed.text)
    assert display in text and "<b>bad</b>.jpg" in text and "not an image: <oops>" in text


def _index_entry(report: ReportPage):
    from explain.report_render import IndexEntry

    return IndexEntry.of(report)


def test_a_page_embeds_every_image() -> None:
    report = _tiny_page("a.png")
    parsed = parse_html(page_html(report))
    images = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert len(images) == 4  # photo, CAMs, gradients, channel (no index: no neighbours)
    assert all(str(a["src"]).startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for a in images)
    metas = [a for tag, a in parsed.tags if tag == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert metas and "default-src 'none'" in str(metas[0]["content"])


def test_page_names_never_overwrite_the_index_or_each_other() -> None:
    """Not index.html or manifest, and unique ignoring case (macOS and Windows folders ignore case)."""
    assert page_names(["a", "index", "INDEX", "index_page", "manifest", "b"]) == [
        "a.html", "index_page.html", "INDEX_page_2.html", "index_page_3.html", "manifest_page.html", "b.html"]


def test_bad_options_are_refused() -> None:
    from explain.errors import UsageError

    for opts in (ReportOptions(fmt="docx"), ReportOptions(samples=-1), ReportOptions(top=0),
                 ReportOptions(noise=float("nan")), ReportOptions(metric="hamming"), ReportOptions(colormap="nope")):
        with pytest.raises(UsageError):
            opts.check()


def test_report_noise_has_the_saliency_bound() -> None:
    """The report checks SmoothGrad's noise with the same bound as saliency, before any work starts."""
    from explain.errors import UsageError
    from explain.report import ReportOptions

    for bad in (5.0, float("inf"), float("nan"), -0.1):
        with pytest.raises(UsageError, match=r"--noise must be a fraction of the input range in \[0, 1\]"):
            ReportOptions(noise=bad).check()
    assert ReportOptions(noise=1.0).check().noise == 1.0


def test_pdf_sheet_keeps_print_margins() -> None:
    """Nothing is drawn within 10 mm of the A4 paper's edges (the sheet used to reach 1 mm from them)."""
    import io

    from PIL import Image

    from explain.report_render import pdf_figure

    fig = pdf_figure(_tiny_page("a_rather_long_file_name_to_widen_the_title.png"))
    assert tuple(fig.get_size_inches()) == pytest.approx((8.27, 11.69))
    dpi = 72
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    ink = np.asarray(Image.open(buffer).convert("L")) < 250
    rows, cols = np.nonzero(ink)
    height, width = ink.shape
    mm = 25.4 / dpi
    margins = [cols.min() * mm, (width - 1 - cols.max()) * mm, rows.min() * mm, (height - 1 - rows.max()) * mm]
    assert min(margins) >= 10.0, margins


def test_strongest_unit_passes_over_saturated_channels() -> None:
    """ReLU6-like maps: channel 0 is 6 almost everywhere (the old 'most active channel', whose 'peak' was the first
    of many ties); channel 1 has one real peak 5.5; channel 2 reaches 6 at one unit, a value repeated in the layer."""
    from explain.activations import strongest_unit

    maps = np.zeros((3, 4, 5), dtype=np.float32)
    maps[0] = 6.0
    maps[0, 3, 4] = 1.0
    maps[1, 2, 3] = 5.5
    maps[1, 0, 0] = 2.0
    maps[2, 1, 1] = 6.0
    peak = strongest_unit(maps)
    assert (peak.channel, peak.unit, peak.value, peak.ties, peak.saturated) == (1, (2, 3), 5.5, 1, 2)
    everywhere = np.full((2, 3, 3), 6.0, dtype=np.float32)
    everywhere[1, 0, 0] = 0.0
    assert strongest_unit(everywhere) == strongest_unit(everywhere)  # deterministic
    fallback = strongest_unit(everywhere)
    assert (fallback.channel, fallback.unit, fallback.ties, fallback.saturated) == (0, (0, 0), 9, 2)


def test_report_unit_view_sees_part_of_the_image_and_says_so(lite0, samples: Path) -> None:
    """On the embedded model the view used the head (ReLU6, 7x7 units that each see 851 px): a channel saturated at
    6 almost everywhere, 'peak at (0, 2)' and a box over the whole photo. Now: a unit of a mid block that sees a
    part of the input, a single unsaturated peak, and a caption that says what the box is."""
    from explain.images import load_image
    from explain.report_render import channel_caption

    image = load_image(samples / "chelsea.png").image
    x = lite0.preprocess(image)[None]
    (exp,) = Reporter(lite0, ReportOptions(samples=0)).explain(x)
    ch = exp.channel
    assert ch.rf_size is not None and max(ch.rf_size) <= 112 and ch.box is not None
    assert (ch.box[2] - ch.box[0]) * (ch.box[3] - ch.box[1]) < 0.25 * 224 * 224
    assert ch.ties == 1 and ch.value == pytest.approx(float(ch.activation.max()))
    assert int((ch.activation == ch.value).sum()) == 1
    # --layer _head_act (ReLU6): the saturated channels are passed over and the caption says so
    (head,) = Reporter(lite0, ReportOptions(samples=0, layer="_head_act")).explain(x)
    assert head.channel.layer == "_head_act" and head.channel.value < 6.0 and head.channel.ties == 1
    assert head.channel.saturated > 0
    page = _page_of(lite0, image, x[0], head)
    caption = channel_caption(page)
    assert f"{head.channel.saturated} of 1280 channels were passed over" in caption
    assert "covers the whole 224x224 input" in caption and "--layer" in caption
    page = _page_of(lite0, image, x[0], exp)
    assert "The yellow box is the part of the 224x224 model input this unit sees" in channel_caption(page)
    # a block output is signed: a diverging colour map centred on 0
    from matplotlib.figure import Figure

    from explain.report_render import draw_channel

    fig = Figure()
    draw_channel(fig, page)
    shown = fig.axes[0].get_images()[0]
    low, high = shown.get_clim()
    assert ch.activation.min() < 0 and shown.get_cmap().name == "RdBu_r" and low == pytest.approx(-high)


def _page_of(backbone, image, tensor, exp) -> ReportPage:
    from explain.data import Sample
    from explain.images import LoadedImage

    loaded = LoadedImage(path=Path("c.png"), display="c.png", image=image, sha256="0" * 64, original_mode="RGB")
    sample = Sample(loaded, tensor, backbone.preprocess.geometry(*image.size))
    return ReportPage.of(sample, exp, backbone, ReportOptions(), "page.html")


def test_sheet_colour_bars_fit_their_maps_and_titles_never_overlap(lite0, samples: Path) -> None:
    """The PDF sheet of chelsea.png: the CAM row's colour bar was a layout cell taller than the maps, the gradient
    row's "guided Grad-CAM++" and "SmoothGrad (n=16, noise 0.15)" titles ran into each other, and the unit view's
    "(extends beyond the image, ...)" ran into "the receptive field, zoomed"."""
    from explain.images import load_image
    from explain.report_render import pdf_figure

    image = load_image(samples / "chelsea.png").image
    x = lite0.preprocess(image)[None]
    (exp,) = Reporter(lite0, ReportOptions(samples=16)).explain(x)
    assert exp.channel.box is not None and exp.channel.box[2] - exp.channel.box[0] < 83  # clipped by the border
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = pdf_figure(_page_of(lite0, image, x[0], exp))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    from matplotlib.axes import Axes

    every_axes = fig.findobj(Axes)  # the sheet is made of sub-figures
    bars = [ax for ax in every_axes if getattr(ax, "_colorbar", None) is not None]
    assert len(bars) == 3  # CAM row, SmoothGrad, channel map
    for bar in bars:
        (picture,) = [ax for ax in every_axes if bar in ax.child_axes]
        assert bar.get_window_extent(renderer).height == pytest.approx(picture.get_window_extent(renderer).height,
                                                                       abs=1.0)
    titles = [ax.title.get_window_extent(renderer) for ax in every_axes if ax.get_title()]
    for i, one in enumerate(titles):
        for other in titles[i + 1:]:
            assert not one.overlaps(other), (one, other)
