"""explain.html: escaping, embedded images, the page shell; and the headless-browser harness the report tests use."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explain.html import CSP, Markup, esc, img, join, page, png_data_uri, table
from tests.browser import load_page, parse_html

HOSTILE = "<img src=x onerror=alert(1)>.jpg"


def test_esc_escapes_markup_characters_and_passes_markup_through() -> None:
    assert esc(HOSTILE) == "&lt;img src=x onerror=alert(1)&gt;.jpg"
    assert esc('a"b\'c&') == "a&quot;b&#x27;c&amp;"
    assert esc(None) == ""
    assert esc(Markup("<b>x</b>")) == "<b>x</b>"
    assert join(["<i>", Markup("<br>")]) == "&lt;i&gt;\n<br>"


def test_hostile_text_stays_text_in_tables_attributes_and_titles() -> None:
    document = page(HOSTILE, Markup(table(["file"], [[HOSTILE]]) + img("data:image/png;base64,AA", HOSTILE)))
    parsed = parse_html(document)
    assert [tag for tag, _ in parsed.tags].count("img") == 1  # only our own <img>, the name did not become one
    (alt,) = [attrs["alt"] for tag, attrs in parsed.tags if tag == "img"]
    assert alt == HOSTILE
    assert sum(HOSTILE in chunk for chunk in parsed.text) == 2  # title and table cell, as text
    assert not any(tag == "script" for tag, _ in parsed.tags)


def test_page_refuses_plain_strings_and_carries_the_policy() -> None:
    with pytest.raises(TypeError):
        page("t", "<p>unescaped</p>")  # type: ignore[arg-type]
    document = page("t", Markup("<p>x</p>"))
    (policy,) = [a["content"] for t, a in parse_html(document).tags if t == "meta" and a.get("http-equiv")]
    assert policy == CSP
    assert "script-src" not in policy and "default-src 'none'" in policy  # no scripts, no fetches


def test_table_formats_numbers_and_blanks_nan() -> None:
    rows = parse_html(table(["a", "b"], [[0.12345, float("nan")], [3, True]])).text
    assert "0.123" in rows and "nan" not in " ".join(rows).lower()


def test_png_data_uri_round_trips_and_shrinks() -> None:
    array = (np.arange(64 * 32 * 3) % 251).astype(np.uint8).reshape(64, 32, 3)
    uri = png_data_uri(array)
    assert uri.startswith("data:image/png;base64,")
    import io

    back = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    np.testing.assert_array_equal(back, array)
    small = png_data_uri(Image.fromarray(array), max_side=16, fmt="JPEG")
    decoded = Image.open(io.BytesIO(base64.b64decode(small.split(",", 1)[1])))
    assert small.startswith("data:image/jpeg;base64,") and decoded.size == (8, 16)
    floats = png_data_uri(np.full((4, 4), 0.5, dtype=np.float32))
    gray = np.asarray(Image.open(io.BytesIO(base64.b64decode(floats.split(",", 1)[1]))))
    assert gray.dtype == np.uint8 and int(gray[0, 0]) == 128


def test_canvas_data_uri_jpeg_is_close_to_the_png_and_much_smaller() -> None:
    """A photo-like figure: the JPEG keeps full-resolution colour (no 4:2:0 smearing of thin coloured lines) and is a
    fraction of the lossless PNG."""
    import io

    from matplotlib.figure import Figure

    from explain.html import canvas_data_uri

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:160, 0:160] / 160.0
    photo = np.stack([np.sin(6 * x + 3 * y), np.cos(5 * y), x * y], axis=-1) * 0.4 + 0.5
    photo += rng.normal(0.0, 0.08, photo.shape)
    photo[::9, :, 0] = 1.0  # thin red lines
    photo[::9, :, 1:] = 0.0

    def draw() -> Figure:
        fig = Figure(figsize=(3, 3), dpi=100, layout="constrained")
        fig.add_subplot().imshow(np.clip(photo, 0, 1))
        return fig

    def decode(uri: str) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"), float)

    png, jpeg = canvas_data_uri(draw()), canvas_data_uri(draw(), fmt="JPEG")
    assert png.startswith("data:image/png;base64,") and jpeg.startswith("data:image/jpeg;base64,")
    assert len(jpeg) < 0.5 * len(png)
    lossless, lossy = decode(png), decode(jpeg)
    assert np.abs(lossless - lossy).mean() < 4.0
    red_rows = (lossless[..., 0] > 200) & (lossless[..., 1] < 60)  # the thin red lines keep their colour
    assert red_rows.sum() > 500 and np.median(lossy[red_rows][:, 1]) < 90


def test_browser_harness_sees_broken_images_console_errors_and_dialogs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="missing.png"><script>console.error("boom");alert("hi")'
                   "</script></body></html>", encoding="utf-8")
    result = load_page(bad)
    assert result.broken_images == ["missing.png"]
    assert any("boom" in message for message in result.console_errors)
    assert result.dialogs == ["hi"]


def test_our_page_loads_clean_and_shows_a_hostile_name_as_text(tmp_path: Path) -> None:
    photo = png_data_uri(Image.new("RGB", (40, 30), (200, 30, 30)), fmt="JPEG")
    body = Markup(f"<h1>{esc(HOSTILE)}</h1>" + img(photo, HOSTILE) + table(["name"], [[HOSTILE]]))
    target = tmp_path / "page.html"
    target.write_text(page(HOSTILE, body), encoding="utf-8")
    result = load_page(target, screenshot=tmp_path / "page.png")
    assert result.images == 1 and result.broken_images == []
    assert result.console_errors == [] and result.dialogs == []
    assert result.text.count(HOSTILE) == 2
    assert (tmp_path / "page.png").read_bytes().startswith(b"\x89PNG")
