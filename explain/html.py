"""Self-contained HTML pages: escaping, embedded images and one shared stylesheet.

Reports and audit dashboards are opened from disk, mailed around and attached to papers' supplements, so every page
written here is a single file: images are embedded as ``data:`` URIs, the stylesheet is inline, and a
Content-Security-Policy ``<meta>`` forbids scripts and every network request. The policy is a second line of defence:
the first is that every value a user supplies (file names, class names, group names) goes through :func:`esc`, and only
:class:`Markup` (HTML we built ourselves) is inserted unescaped.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from typing import Any

from explain.manifest import literal_text

__all__ = ["CSP", "Markup", "canvas_data_uri", "esc", "figure_data_uri", "img", "join", "page", "png_data_uri", "table"]

CSP = "default-src 'none'; img-src data: 'self'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
"""The pages' Content-Security-Policy: no scripts, no fetches, images only embedded or next to the page."""

_STYLE = """
:root { color-scheme: light; --ink: #1d232a; --muted: #5b6570; --line: #d9dee3; --accent: #1f6feb; --bad: #b42318; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1280px; padding: 24px 28px 48px; font: 15px/1.45 system-ui, -apple-system,
       "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--ink); background: #fff; }
h1 { font-size: 1.55em; margin: 0 0 4px; overflow-wrap: anywhere; }
h2 { font-size: 1.2em; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1em; margin: 12px 0 6px; }
p.meta, .muted { color: var(--muted); font-size: .9em; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: .92em; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f5f7f9; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 14px; }
.grid.small { grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); }
figure { margin: 0; } figure img { width: 100%; height: auto; display: block; border: 1px solid var(--line); }
figcaption { font-size: .85em; color: var(--muted); margin-top: 4px; overflow-wrap: anywhere; }
img.wide { max-width: 100%; height: auto; }
.error { color: var(--bad); } .ok { color: #067647; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
details > summary { cursor: pointer; color: var(--accent); }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em;
       overflow-wrap: anywhere; }
"""


class Markup(str):
    """A string of HTML built by this program, inserted into pages as is (everything else is escaped)."""

    __slots__ = ()


def esc(value: object) -> Markup:
    """Escape any value for use in HTML text or a quoted attribute; :class:`Markup` passes through unchanged.

    Args:
        value: anything; ``None`` becomes the empty string, floats and ints their ``str``.

    Returns:
        Safe markup: ``&``, ``<``, ``>``, ``"`` and ``'`` are replaced by entities.
    """
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[object], sep: str = "\n") -> Markup:
    """Concatenate fragments, escaping those that are not :class:`Markup`."""
    return Markup(sep.join(esc(part) for part in parts))


SCREEN_DPI_SCALE = 2 / 3
"""Resolution of the figures embedded in HTML pages (report, audit dashboard) relative to ``--dpi``: 100 dpi at the
default 150, for a page on a screen; ``--dpi 300`` gives 200."""


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_data_uri(image: Any, max_side: int | None = None, fmt: str = "PNG", quality: int = 88) -> str:
    """Embed a picture as a ``data:`` URI.

    Args:
        image: a ``PIL.Image.Image`` or a ``uint8`` NumPy array ``(H, W)`` / ``(H, W, 3|4)``; float arrays in [0, 1]
            are scaled to ``uint8``.
        max_side: if given, shrink (never enlarge) so that the longer side is at most this many pixels.
        fmt: ``"PNG"`` (lossless: maps, figures) or ``"JPEG"`` (photos and thumbnails, much smaller).
        quality: JPEG quality.

    Returns:
        ``data:image/png;base64,...`` or ``data:image/jpeg;base64,...``.
    """
    import numpy as np
    from PIL import Image

    if isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        image = Image.fromarray(array)
    fmt = fmt.upper()
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=quality, optimize=True)
        return _data_uri(buffer.getvalue(), "image/jpeg")
    image.save(buffer, format="PNG", optimize=False)
    return _data_uri(buffer.getvalue(), "image/png")


def figure_data_uri(figure: Any, fmt: str = "png", dpi: int = 110) -> str:
    """Render a matplotlib figure into a ``data:`` URI and close it.

    Args:
        figure: a ``matplotlib.figure.Figure``.
        fmt: ``"png"`` or ``"svg"``.
        dpi: resolution for PNG.
    """
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        literal_text(figure).savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(figure)
    mime = "image/svg+xml" if fmt == "svg" else "image/png"
    return _data_uri(buffer.getvalue(), mime)


def canvas_data_uri(figure: Any, fmt: str = "PNG", quality: int = 92) -> str:
    """Render a figure once, at its own size and dpi, into a quickly encoded ``data:`` URI.

    For figures whose layout is already tight (``layout="constrained"``): about twice as fast as
    :func:`figure_data_uri` (``savefig(bbox_inches="tight")`` draws twice, and zlib level 6 is slower than level 1).

    Args:
        figure: a ``matplotlib.figure.Figure``.
        fmt: ``"PNG"`` (lossless, zlib level 1: plots with flat colours) or ``"JPEG"`` (figures made mostly of photos
            and maps: about a quarter of the PNG's size; full-resolution colour, no chroma subsampling, so thin
            coloured detail such as guided-backprop edges and the text stay crisp).
        quality: JPEG quality.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(literal_text(figure))
    canvas.draw()
    picture = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    buffer = io.BytesIO()
    if fmt.upper() == "JPEG":
        picture.save(buffer, format="JPEG", quality=quality, subsampling=0, optimize=True)
        return _data_uri(buffer.getvalue(), "image/jpeg")
    picture.save(buffer, format="PNG", compress_level=1)
    return _data_uri(buffer.getvalue(), "image/png")


def img(src: str, alt: object, *, width: int | None = None, cls: str | None = None) -> Markup:
    """An ``<img>`` tag; ``src`` and ``alt`` are escaped (a data URI survives escaping unchanged)."""
    attrs = [f'src="{esc(src)}"', f'alt="{esc(alt)}"']
    if width is not None:
        attrs.append(f'width="{int(width)}"')
    if cls:
        attrs.append(f'class="{esc(cls)}"')
    return Markup(f"<img {' '.join(attrs)}>")


def _cell(value: object, tag: str) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    css = ' class="num"' if numeric else ""
    if isinstance(value, float):
        value = "" if value != value else f"{value:.3f}"  # NaN -> empty cell
    return f"<{tag}{css}>{esc(value)}</{tag}>"


def table(headers: Sequence[object], rows: Iterable[Sequence[object]], cls: str | None = None) -> Markup:
    """A table; cells are escaped unless they are :class:`Markup`, numbers right-aligned, floats to 3 decimals."""
    head = "".join(_cell(h, "th") for h in headers)
    body = "\n".join("<tr>" + "".join(_cell(v, "td") for v in row) + "</tr>" for row in rows)
    css = f' class="{esc(cls)}"' if cls else ""
    return Markup(f"<table{css}><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>")


def page(title: object, body: Markup, *, css: str = "") -> str:
    """A whole self-contained HTML document.

    Args:
        title: the page title (escaped).
        body: the page's content; must be :class:`Markup` (build it with :func:`esc`, :func:`table`, :func:`img`).
        css: extra stylesheet rules appended to the shared ones.

    Raises:
        TypeError: if ``body`` is a plain string (it might hold unescaped user text).
    """
    if not isinstance(body, Markup):
        raise TypeError("page body must be Markup; escape user text with esc()")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<meta name=\"generator\" content=\"cnn-explain\">\n<title>{esc(title)}</title>\n"
        f"<style>{_STYLE}{css}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
