"""Shared figure helpers: the probability formatter used in panel titles and captions."""

from __future__ import annotations

import pytest

from explain.figures import format_prob


@pytest.mark.parametrize(("p", "text"), [
    (0.00116, "0.0012"),  # the bug: the cam panel said "p 0.00"
    (0.5678, "0.57"),
    (1.0, "1.00"),
    (0.01, "0.01"),  # two decimals from 0.01 up
    (0.0099, "0.0099"),  # two significant digits below
    (0.005, "0.0050"),  # trailing zero kept: still two significant digits
    (0.0001, "0.00010"),
    (0.00009, "<1e-4"),
    (0.0, "<1e-4"),  # an underflowed softmax
    (float("nan"), "nan"),
])
def test_format_prob_known_values(p: float, text: str) -> None:
    assert format_prob(p) == text


def test_format_prob_never_prints_zero_for_a_positive_probability() -> None:
    values = [10.0 ** -k * m for k in range(1, 5) for m in (1.0, 1.16, 4.99, 9.5)]
    for p in values:
        text = format_prob(p)
        assert text.startswith("<") or float(text) == pytest.approx(p, rel=0.06, abs=0.005)
        assert text not in ("0.00", "0")


def test_cam_panel_colour_bar_is_as_tall_as_the_heat_map_and_titles_share_a_size() -> None:
    """The colour bar spans exactly the heat map's height (it was taller than a landscape photo's map), and the
    middle title is as large as 'input' and 'overlay' (it was smaller)."""
    import numpy as np
    from PIL import Image

    from explain.figures import heatmap_panel

    image = Image.new("RGB", (451, 300), (90, 120, 150))
    heat = np.full((300, 451), np.nan, dtype=np.float32)
    heat[38:262, 113:337] = np.linspace(0.0, 1.0, 224)[None]
    fig = heatmap_panel(image, heat, image, "title")
    fig.canvas.draw()
    panels = [ax for ax in fig.axes if ax.get_images()]
    maps = [ax for ax in panels if ax.get_images()[0].get_array().ndim == 2]
    (heat_ax,) = maps
    (bar,) = [ax for ax in [*fig.axes, *heat_ax.child_axes] if ax.get_ylabel() == "relevance (normalised)"]
    box, bar_box = heat_ax.get_window_extent(), bar.get_window_extent()  # where they were drawn, in pixels
    assert (bar_box.y0, bar_box.y1) == pytest.approx((box.y0, box.y1), abs=0.5)
    assert bar_box.x0 > box.x1  # beside the map, not over it
    panel_axes = [ax for ax in fig.axes if ax.get_title()]
    assert len(panel_axes) == 3
    assert len({ax.title.get_fontsize() for ax in panel_axes}) == 1


def test_heat_maps_default_to_a_perceptually_uniform_colour_map() -> None:
    """Every heat map's default is :data:`DEFAULT_COLORMAP` (it was jet, whose lightness peaks mid-scale): the
    library's options and drawing functions, and the CLI options, which cannot import it (``--help`` stays fast)."""
    import inspect

    import numpy as np
    from PIL import Image
    from typer.main import get_command

    from cli.main import app
    from explain.cam_run import CamOptions
    from explain.detection import figures as detection_figures
    from explain.detection.run import DetectOptions, SegmentOptions
    from explain.figures import DEFAULT_COLORMAP, heatmap_panel, overlay
    from explain.report import ReportOptions

    assert DEFAULT_COLORMAP in ("inferno", "viridis", "magma", "plasma", "cividis")
    assert {CamOptions().colormap, ReportOptions().colormap, DetectOptions().colormap,
            SegmentOptions().colormap} == {DEFAULT_COLORMAP}
    for function in (overlay, heatmap_panel, detection_figures.blend, detection_figures.segmentation_panel):
        assert inspect.signature(function).parameters["colormap"].default == DEFAULT_COLORMAP
    commands = get_command(app).commands
    for name in ("cam", "detect", "segment"):
        (option,) = [p for p in commands[name].params if p.name == "colormap"]
        assert option.default == DEFAULT_COLORMAP, name
    image = Image.new("RGB", (20, 10))
    fig = heatmap_panel(image, np.zeros((10, 20), np.float32), image, "t")
    (heat,) = [ax.get_images()[0] for ax in fig.axes if ax.get_images() and ax.get_images()[0].get_array().ndim == 2]
    assert heat.get_cmap().name.startswith(DEFAULT_COLORMAP)


@pytest.mark.parametrize("save", ["write_figure", "figure_data_uri", "canvas_data_uri"])
def test_user_text_with_dollars_is_drawn_as_written(save: str, tmp_path) -> None:
    """A class or file name with ``$`` (a ``--classes`` file with "$5 bill", a photo "cost$.jpg") was read as
    mathematics: a garbled title, or an error for an odd number of ``$`` (segment legends, detect tags, cam titles)."""
    from matplotlib.figure import Figure

    from explain.html import canvas_data_uri, figure_data_uri
    from explain.manifest import write_figure

    fig = Figure(figsize=(2, 1))
    ax = fig.subplots()
    ax.set_title("cost$.jpg: $5 bill")
    ax.legend(handles=ax.plot([0, 1], label="a $x^2$ class"))
    if save == "write_figure":
        write_figure(tmp_path / "f.png", fig)
    elif save == "figure_data_uri":
        figure_data_uri(fig)
    else:
        canvas_data_uri(fig)
    assert not ax.title.get_parse_math()
    assert not ax.get_legend().get_texts()[0].get_parse_math()
