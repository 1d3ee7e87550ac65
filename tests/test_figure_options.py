"""``--dpi``, ``--title/--no-title`` and ``--title-path/--no-title-path`` on ascent, neighbours, tsne, report and
audit, and the layout of untitled activations and filters figures (cam, guided-backprop and activations:
tests/test_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.test_cli import _svg_texts, run

GALLERY = Path(__file__).resolve().parents[1] / "sample_images" / "gallery"
QUERY = GALLERY / "llama" / "image_0001.jpg"


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def _margins(path: Path) -> dict[str, int]:
    """The white border of a PNG on each side, in pixels."""
    from PIL import Image

    with Image.open(path) as image:
        ink = np.asarray(image.convert("L")) < 250
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return {"top": int(rows[0]), "bottom": int(ink.shape[0] - 1 - rows[-1]), "left": int(cols[0]),
            "right": int(ink.shape[1] - 1 - cols[-1])}


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _item_figure(out: Path) -> Path:
    return out / _manifest(out)["items"][0]["outputs"]["figure"]


@pytest.mark.parametrize("command", [("activations", "SAMPLE", "-l", "_blocks.5", "--top", "3"),
                                     ("activations", "SAMPLE", "-l", "_blocks.5"), ("filters",)])
def test_untitled_activations_and_filters_are_laid_out_without_the_band(
        command: tuple[str, ...], samples: Path, tmp_path: Path) -> None:
    """They place their title by hand: --no-title lays the figure out without it (same width and side margins, a
    narrow top margin), rather than hiding it and cropping the picture to 0.05 inch all round."""
    args = [str(samples / "chelsea.png") if a == "SAMPLE" else a for a in command]
    figures = {}
    for flag in ("--title", "--no-title"):
        out = tmp_path / flag
        assert run(*args, "-o", str(out), "-q", "--dpi", "100", flag).exit_code == 0
        figures[flag] = _item_figure(out)
    (titled_w, titled_h), (width, height) = _size(figures["--title"]), _size(figures["--no-title"])
    titled, untitled = _margins(figures["--title"]), _margins(figures["--no-title"])
    assert width == titled_w and height < titled_h
    assert untitled["left"] == titled["left"] and untitled["right"] == titled["right"]
    assert untitled["bottom"] == titled["bottom"] >= 10  # 0.1 inch and more: nothing cut at the edge
    assert 5 <= untitled["top"] <= 30  # a margin, not a blank band (or the 'model input' label's room)
    assert titled["top"] < 15  # the titled figure's title starts at its top


@pytest.fixture(scope="module")
def gallery_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample gallery indexed without labels: neighbours are captioned with their paths."""
    out = tmp_path_factory.mktemp("figures") / "idx"
    assert run("index", str(GALLERY), "-o", str(out), "-q", "--workers", "0").exit_code == 0
    return out


def test_ascent_figures_take_the_dpi(tmp_path: Path) -> None:
    """The grid at --dpi; the snapshot strip keeps its 2/3 of it (100 by default). Neither has a title of its own:
    each image is labelled with its objective, which --no-title keeps."""
    common = ("ascent", "--target", "1", "--steps", "2", "--size", "64", "--snapshots", "2", "-q")
    sizes = {}
    for dpi in ("150", "75"):
        out = tmp_path / dpi
        assert run(*common, "-o", str(out), "--dpi", dpi, "--no-title", "--no-title-path").exit_code == 0
        outputs = _manifest(out)["outputs"]
        sizes[dpi] = _size(out / outputs["grid"]), _size(out / outputs["snapshots"])
    (grid, strip), (half_grid, half_strip) = sizes["150"], sizes["75"]
    assert half_grid == (grid[0] // 2, grid[1] // 2) and half_strip == (strip[0] // 2, strip[1] // 2)
    out = tmp_path / "svg"
    assert run(*common, "-o", str(out), "--format", "svg", "--no-title").exit_code == 0
    assert "logit" in " ".join(_svg_texts(out / _manifest(out)["outputs"]["grid"]))


def test_neighbours_figures_take_the_dpi_and_leave_folders_out(gallery_index: Path, tmp_path: Path) -> None:
    """A neighbour without a label is captioned with its path in the gallery; --no-title-path: its file name."""
    sizes, texts = {}, {}
    for flag, dpi in (("--title-path", "150"), ("--no-title-path", "75")):
        for fmt in ("png", "svg"):
            out = tmp_path / f"{flag}{fmt}"
            result = run("neighbours", "-i", str(gallery_index), str(QUERY), "-k", "3", "-o", str(out), "-q",
                         "--dpi", dpi, "--format", fmt, flag, "--no-title")
            assert result.exit_code == 0, result.output
            if fmt == "png":
                sizes[dpi] = _size(_item_figure(out))
            else:
                texts[flag] = " ".join(_svg_texts(_item_figure(out)))
    assert sizes["75"] == (sizes["150"][0] // 2, sizes["150"][1] // 2)
    assert "llama/image_0005.jpg" in texts["--title-path"]
    assert "image_0005.jpg" in texts["--no-title-path"] and "llama/" not in texts["--no-title-path"]
    assert "query" in texts["--no-title-path"]  # panel labels stay


def test_tsne_figures_take_the_dpi_and_drop_their_titles(gallery_index: Path, tmp_path: Path) -> None:
    """The scatter plot at --dpi, the overview at 110/150 of it; --no-title: neither says 'PCA of 36 images', and
    the overview keeps its panel labels."""
    outputs = {}
    for flag, dpi, fmt in (("--title", "150", "png"), ("--title", "75", "png"), ("--title", "150", "svg"),
                           ("--no-title", "150", "svg")):
        out = tmp_path / f"{flag}{dpi}{fmt}"
        result = run("tsne", "-i", str(gallery_index), "--method", "pca", "-o", str(out), "-q", "--dpi", dpi,
                     "--format", fmt, flag)
        assert result.exit_code == 0, result.output
        outputs[flag, dpi, fmt] = {key: out / name for key, name in _manifest(out)["outputs"].items()}
    full, half = outputs["--title", "150", "png"], outputs["--title", "75", "png"]
    assert _size(full["scatter"]) == (1125, 1050) and _size(half["scatter"]) == (562, 525)
    assert _size(full["overview"])[0] == pytest.approx(16.5 * 110, abs=3)
    assert _size(half["overview"])[0] == pytest.approx(16.5 * 55, abs=3)
    for key in ("scatter", "overview"):
        assert "PCA of 36 images" in " ".join(_svg_texts(outputs["--title", "150", "svg"][key]))
        assert "PCA of" not in " ".join(_svg_texts(outputs["--no-title", "150", "svg"][key]))
    assert "feature map, coloured by label" in " ".join(_svg_texts(outputs["--no-title", "150", "svg"]["overview"]))


def _visible_texts(figure: Any) -> str:
    """Every text a matplotlib figure draws (its sub-figures and axes included)."""
    from matplotlib.text import Text

    return " ".join(t.get_text() for t in figure.findobj(Text) if t.get_visible() and t.get_text())


def _report_figures(monkeypatch: pytest.MonkeyPatch, fmt: str, *args: str) -> list:
    """Run ``report`` on chelsea.png and return the figures it drew (HTML sections or PDF pages), as drawn."""
    import explain.report_render as render

    figures: list = []
    if fmt == "pdf":
        original = render.pdf_figure
        monkeypatch.setattr(render, "pdf_figure", lambda page: figures.append(original(page)) or figures[-1])
    else:
        original_uri = render.canvas_data_uri
        monkeypatch.setattr(render, "canvas_data_uri", lambda fig, **kw: figures.append(fig) or original_uri(fig, **kw))
    result = run("report", *args, "--format", fmt, "--samples", "0", "-q")
    assert result.exit_code == 0, result.output
    monkeypatch.undo()
    return figures


def test_report_figures_take_the_dpi_and_titles(samples: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """HTML figures at 2/3 of --dpi (100 by default, 50 for --dpi 75), PDF pages at --dpi; --no-title: no section
    or page title (panel labels stay); --no-title-path: page and PDF titles name the file, not its folders."""
    photo = str(samples / "chelsea.png")
    default = _report_figures(monkeypatch, "html", photo, "-o", str(tmp_path / "html"))
    paper = _report_figures(monkeypatch, "html", photo, "-o", str(tmp_path / "paper"), "--dpi", "75", "--no-title",
                            "--no-title-path")
    assert [f.dpi for f in default] == [100] * len(default) and [f.dpi for f in paper] == [50] * len(paper)
    assert "top class: tiger cat" in " ".join(_visible_texts(f) for f in default)
    drawn = " ".join(_visible_texts(f) for f in paper)
    assert "top class" not in drawn and "guided backprop" in drawn and "#1 tiger cat" in drawn
    page = (tmp_path / "paper" / "chelsea.html").read_text(encoding="utf-8")
    assert "<h1>chelsea.png</h1>" in page and "<title>chelsea.png · cnn-explain report</title>" in page
    assert str(samples) not in page
    assert f"<h1>{photo}</h1>" in (tmp_path / "html" / "chelsea.html").read_text(encoding="utf-8")

    sheets = {flags: _report_figures(monkeypatch, "pdf", photo, "-o", str(tmp_path / "-".join(flags)), *flags)[0]
              for flags in (("--dpi", "100"), ("--no-title-path",), ("--no-title",))}
    assert sheets["--dpi", "100"].dpi == 100 and sheets["--no-title",].dpi == 150
    assert f"{photo}\nefficientnet_lite0" in _visible_texts(sheets["--dpi", "100"])
    assert "chelsea.png\nefficientnet_lite0" in _visible_texts(sheets["--no-title-path",])
    assert str(samples) not in _visible_texts(sheets["--no-title-path",])
    untitled = _visible_texts(sheets["--no-title",])
    assert "chelsea" not in untitled and "top class" not in untitled and "nearest" not in untitled
    assert "top 5 predictions" in untitled and "guided backprop" in untitled


def test_audit_dashboard_plots_take_the_dpi_and_titles(samples: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard's plots at 2/3 of --dpi (100 by default); --no-title: the plots' titles are gone (their axis
    labels stay); --no-title-path: the page names the dataset folder, not its parents."""
    import explain.dashboard as dashboard

    root = tmp_path / "photos" / "ds"
    root.mkdir(parents=True)
    for name in ("chelsea.png", "coffee.png"):
        (root / name).write_bytes((samples / name).read_bytes())
    labels = tmp_path / "labels.csv"
    labels.write_text("path,class_name\nchelsea.png,tabby\ncoffee.png,espresso\n")
    plots: dict[str, list[tuple[Any, int]]] = {}
    original = dashboard.figure_data_uri
    for flags in ((), ("--dpi", "75", "--no-title", "--no-title-path")):
        drawn = plots.setdefault(" ".join(flags), [])
        monkeypatch.setattr(dashboard, "figure_data_uri",
                            lambda fig, dpi, drawn=drawn: drawn.append((fig, dpi)) or original(fig, dpi=dpi))
        result = run("audit", str(root), "--labels", str(labels), "-o", str(tmp_path / "out" / str(len(plots))),
                     "--steps", "2", "--shift", "2", "--sanity", "0", "--worst", "1", "-q", *flags)
        assert result.exit_code == 0, result.output
    default, paper = plots[""], plots["--dpi 75 --no-title --no-title-path"]
    assert {dpi for _, dpi in default} == {100} and {dpi for _, dpi in paper} == {50}
    titled = " ".join(_visible_texts(fig) for fig, _ in default)
    untitled = " ".join(_visible_texts(fig) for fig, _ in paper)
    assert "Grad-CAM++ is better below the diagonal" in titled and "translation test" in titled
    assert "better below" not in untitled and "translation test" not in untitled
    assert "deletion AUC, random map" in untitled  # axis labels stay
    page = (tmp_path / "out" / "2" / "dashboard.html").read_text(encoding="utf-8")
    assert "<h1>Audit of ds</h1>" in page and "photos" not in page
    assert f"<h1>Audit of {root.as_posix()}</h1>" in (tmp_path / "out" / "1" / "dashboard.html").read_text()


def test_no_title_path_keeps_a_name_for_the_current_folder() -> None:
    """``audit . --no-title-path`` titles its page 'Audit of .', not 'Audit of ' ('.' has no file name)."""
    from explain.figures import FigureStyle

    style = FigureStyle(title_path=False)
    assert style.name(".") == "." and style.name("photos/ds") == "ds" and style.name("a/b/cat.jpg") == "cat.jpg"
    assert FigureStyle().name("a/b/cat.jpg") == "a/b/cat.jpg"
