"""Builds folders of awkward image files for tests: broken files that must be refused and odd ones that must load.

Valid images are made from a real photo (``sample_images/chelsea.png``) when it is there and from synthetic
content otherwise, so the tests run from the repository alone. Every image whose content a test checks carries
a known marker or colour; the constants below say where.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_SOURCE = Path(__file__).parents[1] / "sample_images" / "chelsea.png"

RED = (255, 0, 0)
MARKER = 24
"""Side of the red square drawn in the stored top-left corner of ``exif_rotated.jpg`` and ``cmyk.jpg``."""
EXIF_SIZE = (120, 80)
"""Stored (width, height) of ``exif_rotated.jpg``; orientation 6 makes it display as 80x120, marker top-right."""
EXIF_ORIENTATION = 6
BOMB_SIZE = (40000, 40000)
GIF_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
"""Solid colours of the frames of ``anim.gif``, first frame first."""
GRAY16_SIZE = (256, 32)
"""``gray16.png`` is a horizontal 16-bit ramp from 0 (left) to 65535 (right)."""
RGBA_TRANSPARENT = (0, 0, 16, 16)
"""Box (x0, y0, x1, y1) of ``rgba.png`` that is fully transparent (colour underneath: red)."""
RGBA_HALF = (16, 0, 32, 16)
"""Box of ``rgba.png`` that is black at alpha 128 (so it must come out mid-grey on white)."""


def source_image(source: Path | None = DEFAULT_SOURCE, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """Return the RGB content that valid test images are made from.

    Args:
        source: A photo to use; if it is ``None`` or missing, deterministic synthetic content is made instead.
        size: Size of the returned image (the photo is resized to it).

    Returns:
        An RGB image of ``size``.
    """
    if source is not None and Path(source).is_file():
        with Image.open(source) as photo:
            return photo.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 127 + 100 * np.sin(x / 17.0) * np.cos(y / 23.0)
    green = 255 * x / max(width - 1, 1)
    blue = 255 * y / max(height - 1, 1)
    pixels = np.stack([red, green, blue], axis=-1)
    pixels[(x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(width, height) / 5) ** 2] = (40, 40, 40)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def _with_marker(image: Image.Image) -> Image.Image:
    marked = image.copy()
    marked.paste(RED, (0, 0, MARKER, MARKER))
    return marked


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(tag + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)


def bomb_png(width: int = BOMB_SIZE[0], height: int = BOMB_SIZE[1]) -> bytes:
    """Return a tiny, well-formed PNG whose header claims ``width`` x ``height`` 8-bit RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_bytes(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, **options)
    return buffer.getvalue()


def make_bad_folder(root: Path, source: Path | None = DEFAULT_SOURCE) -> dict[str, str | None]:
    """Write a folder of awkward image files.

    Args:
        root: Folder to write into (created if needed).
        source: Photo that valid images are made from; synthetic content is used if it is missing.

    Returns:
        File name -> ``None`` for files that must load, or a short substring of the reason for files that
        must be refused.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    photo = source_image(source)
    expected: dict[str, str | None] = {}

    normal = _jpeg_bytes(photo)
    (root / "normal.jpg").write_bytes(normal)
    expected["normal.jpg"] = None

    (root / "empty.jpg").write_bytes(b"")
    expected["empty.jpg"] = "empty file"

    (root / "truncated.jpg").write_bytes(normal[: len(normal) // 2])
    expected["truncated.jpg"] = "truncated"

    (root / "text.jpg").write_text("This is a text file with an image extension.\n" * 20, encoding="utf-8")
    expected["text.jpg"] = "not an image"

    Image.new("RGB", (1, 1), (10, 20, 30)).save(root / "tiny_1x1.png")
    expected["tiny_1x1.png"] = "too small"

    (root / "bomb.png").write_bytes(bomb_png())
    expected["bomb.png"] = "too large"

    _with_marker(photo).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    expected["cmyk.jpg"] = None

    width, height = GRAY16_SIZE
    ramp = np.rint(np.linspace(0, 65535, width)).astype(np.uint16)
    Image.fromarray(np.tile(ramp, (height, 1))).save(root / "gray16.png")  # mode I;16 -> 16-bit grayscale PNG
    expected["gray16.png"] = None

    rgba = photo.convert("RGBA")
    rgba.paste((255, 0, 0, 0), RGBA_TRANSPARENT)
    rgba.paste((0, 0, 0, 128), RGBA_HALF)
    rgba.save(root / "rgba.png")
    expected["rgba.png"] = None

    frames = [Image.new("RGB", (64, 48), colour) for colour in GIF_COLOURS]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    expected["anim.gif"] = None

    exif = Image.Exif()
    exif[0x0112] = EXIF_ORIENTATION
    _with_marker(photo.resize(EXIF_SIZE, Image.Resampling.BICUBIC)).save(
        root / "exif_rotated.jpg", quality=95, exif=exif.tobytes()
    )
    expected["exif_rotated.jpg"] = None

    photo.quantize(colors=64, method=Image.Quantize.FASTOCTREE).save(root / "palette.png")
    expected["palette.png"] = None

    return expected
