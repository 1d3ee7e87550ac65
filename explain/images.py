"""Image input: finding image files and loading them safely as 8-bit RGB.

Two steps, both of which report a bad input as an :class:`~explain.errors.InputError` (so a run over a folder goes on
with the next file) and never print, warn or exit:

* :func:`find_images` turns the ``IMAGES...`` arguments of a command (any mix of files and folders) into an ordered,
  de-duplicated list of :class:`ImageFile`, leaving out the folders it is told to (a run's own output folder) and
  the output folders of earlier runs, and reporting image-named entries that are not readable files (broken links,
  link loops, pipes, devices).
* :func:`load_image` reads one file and returns a :class:`LoadedImage`: an RGB ``PIL.Image`` that is ready for a
  model, the SHA-256 of the file and notes on every non-trivial conversion that was made.

Conversions made by :func:`load_image` (in this order):

1. Only the first frame of an animated or multi-page file (GIF, WebP, APNG, TIFF, MPO) is used.
2. The EXIF orientation tag is applied, so the image is upright as a viewer shows it.
3. The colour mode is converted to RGB (see :func:`to_rgb`):

   * grayscale (``L``, ``1``), palette (``P``) and ``YCbCr``/``HSV``/``LAB`` images: PIL's conversion;
   * anything with transparency (``RGBA``, ``LA``, ``PA``, ``P`` or ``L``/``RGB`` with a transparency key):
     composited on a white background;
   * ``CMYK``: PIL's conversion (an embedded ICC profile is not used);
   * 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``, and ``I`` when every value lies in ``0..65535``): scaled by the
     full 16-bit range, ``v8 = round(v16 * 255 / 65535)``. PIL's own ``convert`` clips at 255 instead, which turns
     almost every 16-bit image white. A 32-bit ``I`` image with values outside ``0..65535`` is stretched from its
     own minimum and maximum to ``0..255``;
   * 32-bit float (``F``): values in ``[0, 1]`` are multiplied by 255; any other range is stretched from the image's
     own finite minimum and maximum to ``0..255``. NaN and infinite values become 0.

Safety limits:

* Images with fewer than :data:`MIN_SIDE` pixels on either side are refused: a network resizes its input to a few
  hundred pixels, and a smaller image carries too little information to explain (they are also often icons,
  tracking pixels or thumbnails picked up by accident).
* Images with more than ``max_pixels`` pixels (default :data:`DEFAULT_MAX_PIXELS`) are refused from the size in
  the file header, before any pixel data is decoded (decompression-bomb guard). While a file is being loaded this
  limit also replaces PIL's own ``Image.MAX_IMAGE_PIXELS`` guard (which PIL also applies to sizes found while
  decoding, such as GIF frames and TIFF tiles); PIL's setting is restored afterwards. Because that setting is
  process-wide, loads are serialised by a lock; use processes, not threads, to load in parallel.
* Files larger than ``8 * max_pixels`` bytes (800 MB by default, at least 64 MiB) are refused before being read.
* Truncated images are refused; PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set by this module.
* EPS files are never opened (PIL would run Ghostscript on them).

Warnings that PIL emits while reading a file (for example about odd EXIF data) are caught and added to the notes.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from explain.display import DisplayCopy, display_copy
from explain.errors import InputError, UsageError, os_reason
from explain.manifest import holds_run_manifest

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
"""File extensions (lower case, with the dot) that :func:`find_images` picks up when it walks a folder."""

DEFAULT_MAX_PIXELS: int = 100_000_000
"""Default largest image, in pixels (width * height), that :func:`load_image` decodes: 100 megapixels."""

MIN_SIDE: int = 16
"""Smallest accepted width and height, in pixels; smaller images are refused by :func:`load_image`."""

_BYTES_PER_PIXEL_LIMIT = 8  # 16-bit RGBA, uncompressed: no single image within the pixel limit needs more
_MIN_BYTES_LIMIT = 64 * 1024 * 1024
_HASH_CHUNK = 1024 * 1024
_EXIF_ORIENTATION = 0x0112
_NEVER_OPEN = frozenset({"EPS"})  # PIL decodes EPS by running Ghostscript in a subprocess
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_PIL_LIMIT_LOCK = threading.Lock()

# Leading bytes of formats that users commonly have; used only to word error messages.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


@dataclass(frozen=True)
class ImageFile:
    """One image file found by :func:`find_images`.

    Attributes:
        path: Path of the file, built from what the user gave (not resolved).
        display: The path as the user gave it, or for a file found inside a folder, the folder as the user gave it
            joined with the file's path relative to that folder; always with ``/`` separators. Use it in messages
            and manifests.
    """

    path: Path
    display: str


@dataclass
class LoadedImage:
    """An image file decoded into an RGB image that is ready for a model.

    Attributes:
        path: Path of the file that was read.
        display: Name of the input for messages and manifests (see :attr:`ImageFile.display`).
        image: The image in mode ``"RGB"``, upright (EXIF orientation applied), first frame only.
        sha256: Hex SHA-256 of the file's bytes.
        original_mode: PIL mode of the image in the file (of its first frame), e.g. ``"CMYK"`` or ``"I;16"``.
        notes: Human-readable notes on every non-trivial conversion, e.g. ``"CMYK converted to RGB"``.
    """

    path: Path
    display: str
    image: Image.Image
    sha256: str
    original_mode: str
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """The ``(width, height)`` of :attr:`image`."""
        return self.image.size

    @cached_property
    def shown(self) -> DisplayCopy:
        """The photo as figures draw it: :attr:`image`, scaled down to at most
        :data:`explain.display.DISPLAY_MAX_PIXELS` pixels when larger (made once). Model inputs use :attr:`image`."""
        return display_copy(self.image)


# --------------------------------------------------------------------------------------------------------------
# Finding files


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


_FileKey = tuple[int, int]
"""``(st_dev, st_ino)``: the identity of a folder, whatever the spelling of its path."""


def _folder_keys(folders: Iterable[str | Path]) -> frozenset[_FileKey]:
    """The identities of the existing folders among ``folders`` (missing ones cannot be met in a walk)."""
    keys: set[_FileKey] = set()
    for folder in folders:
        try:
            info = os.stat(folder)
        except (OSError, ValueError):
            continue
        if stat.S_ISDIR(info.st_mode):
            keys.add((info.st_dev, info.st_ino))
    return frozenset(keys)


def _is_excluded(path: Path, exclude: frozenset[_FileKey]) -> bool:
    if not exclude:
        return False
    try:
        info = os.stat(path)
    except OSError:  # pragma: no cover - vanished between listing and stat
        return False
    return (info.st_dev, info.st_ino) in exclude


URL_REASON = "URLs are not supported: download the file first"
"""The error of an input that names a URL (``http://...``) rather than a local file."""
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _stat_path(path: Path) -> tuple[int | None, str]:
    """The mode of what ``path`` leads to (following symbolic links), or ``None`` and the reason it cannot be used.

    The reasons are the ones an input gets both when it is named explicitly and when a folder walk meets it.
    """
    try:
        return path.stat().st_mode, ""
    except FileNotFoundError:
        if path.is_symlink():
            return None, "broken symbolic link: no such file or folder at its target"
        return None, "no such file or folder"
    except NotADirectoryError:
        return None, "no such file or folder (a parent is not a folder)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "symbolic link loop (too many levels of symbolic links)"
        return None, os_reason(exc, "cannot access: {}")


def _not_regular_reason(mode: int) -> str:
    """The reason for something that exists but is neither a regular file nor a folder."""
    kinds = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"))
    kind = next((name for test, name in kinds if test(mode)), "of an unknown kind")
    return f"not a regular file or folder ({kind})"


def _odd_entry(path: Path) -> tuple[bool, str | None]:
    """An image-named folder entry that is not plainly a regular file: ``(is_file, reason_to_report)``.

    A symbolic link to a regular file is a file; a symbolic link to a folder is silently not followed (as for any
    folder link); a broken link, a link loop, a named pipe or a device is reported with the explicit case's reason.
    """
    mode, reason = _stat_path(path)
    if mode is None:
        return False, reason
    if stat.S_ISREG(mode):
        return True, None
    if stat.S_ISDIR(mode):
        return False, None
    return False, _not_regular_reason(mode)


def _walk_folder(
    folder: Path, display: Path, errors: list[InputError], exclude: frozenset[_FileKey] = frozenset()
) -> Iterator[ImageFile]:
    """Yield the image files below ``folder`` in sorted order; unreadable sub-folders and image-named entries that
    cannot be read as files are added to ``errors``.

    Entries are sorted by name within each folder and a sub-folder's files come at the position of the
    sub-folder's name, so the order is that of the sorted relative paths compared component by component.
    Hidden files and folders (names starting with ``.``), names without an image extension, symbolic links to
    folders, the folders in ``exclude`` and the output folders of earlier runs (sub-folders holding a cnn-explain
    ``manifest.json``) are skipped silently. Because folder links are never followed, a walk cannot loop.
    """
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as exc:
        errors.append(InputError(display.as_posix(), f"cannot read folder: {exc.strerror or exc}"))
        return
    for entry in entries:
        if _is_hidden(entry.name):
            continue
        path, shown = folder / entry.name, display / entry.name
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:  # pragma: no cover - vanished or unreadable between listing and stat
            continue
        if is_dir:
            if not _is_excluded(path, exclude) and not holds_run_manifest(path):
                yield from _walk_folder(path, shown, errors, exclude)
            continue
        if not _is_image_name(entry.name):
            continue
        try:
            is_file, reason = entry.is_file(), None
        except OSError:  # a symbolic link loop, say: _odd_entry names it
            is_file = False
        if not is_file:
            is_file, reason = _odd_entry(path)
        if is_file:
            yield ImageFile(path=path, display=shown.as_posix())
        elif reason is not None:
            errors.append(InputError(shown.as_posix(), reason))


def _identity(path: Path) -> str:
    """A key that is the same for two spellings of the same file (``a.jpg``, ``./a.jpg``, a symbolic link)."""
    try:
        return os.path.normcase(str(path.resolve()))
    except (OSError, RuntimeError):  # pragma: no cover - symlink loops
        return os.path.normcase(os.path.abspath(path))


def find_images(
    inputs: Sequence[str | Path], exclude: Iterable[str | Path] = ()
) -> tuple[list[ImageFile], list[InputError]]:
    """Expand files and folders into the list of image files to process.

    Folders are walked recursively in sorted order (see below) and contribute only files whose extension is in
    :data:`IMAGE_EXTENSIONS` (compared case-insensitively); hidden files and folders (names starting with ``.``)
    inside them are skipped and symbolic links to folders are not followed (so a walk never loops). An image-named
    entry that cannot be read as a file (a broken symbolic link, a link loop, a named pipe, a device) is reported
    as an error with the same reason it gets when named explicitly. A file named explicitly is always included,
    whatever its extension, so that :func:`load_image` can say what is wrong with it. The same file reached twice
    (named twice, or also found in a folder) is kept once, at its first occurrence.

    ``exclude`` names folders a walk must not enter, typically the run's output folder: without it, outputs
    written inside an input folder would be read back as inputs on the next run. Folders are compared by identity
    (device and inode), so any spelling of the path, or a symbolic link to it, matches. Like hidden folders, an
    excluded folder is still walked when it is named explicitly in ``inputs`` (the user asked for it), and so is an
    input folder inside an excluded one; only sub-folders met during a walk are left out. For the same reason a walk
    does not enter a sub-folder that holds a cnn-explain ``manifest.json``
    (:func:`explain.manifest.holds_run_manifest`): it is the output folder of an earlier run, whatever its name.

    Order: the inputs in the order given; within a folder, paths relative to it sorted component by component by
    plain string comparison (so ``B.jpg`` < ``a.jpg``, and the files of sub-folder ``a`` come before ``a.jpg``).

    Args:
        inputs: Paths of files and folders, as the user gave them.
        exclude: Folders to leave out of folder walks (missing ones are ignored).

    Returns:
        The image files in order, and one :class:`InputError` per input that does not exist (reason
        ``"no such file or folder"``; :data:`URL_REASON` for a URL), is a broken symbolic link or a link loop, is
        neither a file nor a folder, or per folder that cannot be read. An empty folder contributes nothing and no
        error; whether that is a problem is for the caller to decide.
    """
    found: list[ImageFile] = []
    errors: list[InputError] = []
    seen: set[str] = set()
    skip = _folder_keys(exclude)

    def add(item: ImageFile) -> None:
        key = _identity(item.path)
        if key not in seen:
            seen.add(key)
            found.append(item)

    for given in inputs:
        path = Path(given)
        display = path.as_posix()
        mode, reason = _stat_path(path)
        if mode is None and _URL.match(str(given)):  # as a path, "http://host/x" would read "http:/host/x"
            errors.append(InputError(str(given), URL_REASON))
        elif mode is None:
            errors.append(InputError(display, reason))
        elif stat.S_ISDIR(mode):
            for item in _walk_folder(path, path, errors, skip):
                add(item)
        elif stat.S_ISREG(mode):
            add(ImageFile(path=path, display=display))
        else:
            errors.append(InputError(display, _not_regular_reason(mode)))
    return found, errors


# --------------------------------------------------------------------------------------------------------------
# Loading


def file_sha256(path: str | Path) -> str:
    """Return the hex SHA-256 of a file's bytes, read in chunks.

    Args:
        path: The file.

    Returns:
        64 lower-case hex digits.

    Raises:
        InputError: The file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
                digest.update(chunk)
    except OSError as exc:
        raise InputError(Path(path).as_posix(), _os_reason(exc)) from None
    return digest.hexdigest()


def _os_reason(exc: OSError) -> str:
    return os_reason(exc, "cannot read file: {}")


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:g} MP"


def _sniff(data: bytes) -> str | None:
    """Name the image format that ``data`` starts like, or ``None``."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def _not_an_image_reason(data: bytes) -> str:
    """Word the reason for a file that PIL cannot identify."""
    like = _sniff(data)
    if like is not None:
        return f"truncated or corrupt image data: starts like a {like} file but its header cannot be read"
    head = data[:4096]
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc", b"ftypavif"):
        return "not an image: cannot identify image file (HEIC/AVIF is not supported by this Pillow installation)"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return "not an image: cannot identify image file (the file contains text)"
    return "not an image: cannot identify image file"


def _first_line(exc: object) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _PilLimit:
    """Context manager: hold the lock and set PIL's process-wide ``MAX_IMAGE_PIXELS``; restore it on exit."""

    def __init__(self) -> None:
        self._saved: int | None = None

    def __enter__(self) -> _PilLimit:
        _PIL_LIMIT_LOCK.acquire()
        self._saved = Image.MAX_IMAGE_PIXELS
        return self

    def set(self, limit: int | None) -> None:
        """Set PIL's limit (``None`` disables PIL's check; we check the header size ourselves)."""
        Image.MAX_IMAGE_PIXELS = limit

    def __exit__(self, *exc_info: object) -> None:
        Image.MAX_IMAGE_PIXELS = self._saved
        _PIL_LIMIT_LOCK.release()


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low..high`` linearly to ``0..255`` (rounded, clipped); a constant image (``high <= low``) becomes 0."""
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _gray_to_rgb(gray8: np.ndarray) -> Image.Image:
    return Image.fromarray(gray8, mode="L").convert("RGB")


def _composite_on_white(image: Image.Image, notes: list[str]) -> Image.Image:
    rgba = image.convert("RGBA")
    alpha = rgba.getchannel("A")
    if alpha.getextrema()[0] == 255:  # fully opaque: nothing to composite
        return rgba.convert("RGB")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba.convert("RGB"), mask=alpha)
    notes.append("alpha composited on white")
    return background


def to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Convert a decoded image of any PIL mode to 8-bit RGB, as described in the module docstring.

    Args:
        image: A loaded image (any mode). It is not modified.

    Returns:
        A new image in mode ``"RGB"`` and the notes on what was done (empty for lossless conversions such as
        grayscale or palette to RGB).

    Raises:
        ValueError: PIL cannot convert the mode to RGB.
    """
    notes: list[str] = []
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        notes.append("16-bit scaled to 8-bit")
        return _gray_to_rgb(_scale_to_uint8(values, 0.0, 65535.0)), notes
    if mode == "I":
        values = np.asarray(image)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low >= 0 and high <= 65535:
            notes.append("16-bit scaled to 8-bit")
            return _gray_to_rgb(_scale_to_uint8(values, 0.0, 65535.0)), notes
        notes.append(f"32-bit integer range [{low}, {high}] stretched to 8-bit")
        return _gray_to_rgb(_scale_to_uint8(values, float(low), float(high))), notes
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            notes.append("NaN or infinite values set to 0")
        values = np.where(finite, values, 0.0)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if low >= 0.0 and high <= 1.0:
            notes.append("float in [0, 1] scaled to 8-bit")
            return _gray_to_rgb(_scale_to_uint8(values, 0.0, 1.0)), notes
        notes.append(f"float range [{low:g}, {high:g}] stretched to 8-bit")
        return _gray_to_rgb(_scale_to_uint8(values, low, high)), notes
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_white(image, notes), notes
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif mode not in ("RGB", "L", "1", "P"):
        notes.append(f"{mode} converted to RGB")
    return image.convert("RGB"), notes


def _frame_note(image: Image.Image) -> str | None:
    """Say which frame was used if the image has several; never raises."""
    try:
        frames = int(getattr(image, "n_frames", 1))
    except Exception:  # noqa: BLE001 - counting frames decodes headers of later frames, which may be corrupt
        if getattr(image, "is_animated", False):
            return f"animated {image.format}: first frame used (later frames unreadable)"
        return None
    if frames <= 1:
        return None
    kind = "animated" if image.format in ("GIF", "WEBP", "PNG", "FLI") else "multi-frame"
    return f"{kind} {image.format}: first of {frames} frames used"


def load_image(path: str | Path, display: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read an image file and return it as an upright 8-bit RGB image.

    The file is read once: its bytes are hashed and decoded from memory. The width and height in the file
    header are checked against ``max_pixels`` and :data:`MIN_SIDE` before any pixel data is decoded. See the
    module docstring for the conversions made and the safety limits.

    Args:
        path: The image file.
        display: Name of the input for messages and manifests; defaults to ``path`` with ``/`` separators.
        max_pixels: Largest accepted ``width * height`` (decompression-bomb guard).

    Returns:
        The decoded image with its hash, original mode and notes.

    Raises:
        InputError: The file cannot be used; ``reason`` says why, e.g. ``"empty file (0 bytes)"``,
            ``"not an image: cannot identify image file"``, ``"image too large: 40000x40000 = 1600.0 MP exceeds
            the 100 MP limit (decompression-bomb guard)"``, ``"image too small: ..."`` or
            ``"truncated or corrupt image data: ..."``.
        UsageError: ``max_pixels`` is not a positive integer.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise UsageError(f"max_pixels must be a positive integer, not {max_pixels!r}")
    path = Path(path)
    name = display if display is not None else path.as_posix()

    def fail(reason: str) -> InputError:
        return InputError(name, reason)

    max_bytes = max(max_pixels * _BYTES_PER_PIXEL_LIMIT, _MIN_BYTES_LIMIT)
    try:
        with open(path, "rb") as handle:
            size_on_disk = os.fstat(handle.fileno()).st_size
            if size_on_disk > max_bytes:
                raise fail(
                    f"file too large: {size_on_disk / 1e6:.1f} MB exceeds the {max_bytes / 1e6:g} MB limit "
                    f"for a {_megapixels(max_pixels)} image"
                )
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise fail(_os_reason(exc)) from None
    if not data:
        raise fail("empty file (0 bytes)")
    if len(data) > max_bytes:  # the file grew while we read it
        raise fail(f"file too large: exceeds the {max_bytes / 1e6:g} MB limit for a {_megapixels(max_pixels)} image")
    sha256 = hashlib.sha256(data).hexdigest()

    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught, _PilLimit() as pil_limit:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image, original_mode = _decode(data, max_pixels, pil_limit, fail, notes)
    for warning in caught:
        note = f"decoder warning: {_first_line(warning.message)}"
        if note not in notes:
            notes.append(note)
    return LoadedImage(path=path, display=name, image=image, sha256=sha256, original_mode=original_mode, notes=notes)


def _decode(
    data: bytes,
    max_pixels: int,
    pil_limit: _PilLimit,
    fail: Callable[[str], InputError],
    notes: list[str],
) -> tuple[Image.Image, str]:
    """Open, check, decode and convert; runs with PIL's limit lock held and warnings recorded."""
    pil_limit.set(None)  # PIL would refuse a bomb without telling us its size; we check the header ourselves
    try:
        opened = Image.open(io.BytesIO(data), formats=[f for f in _open_formats() if f not in _NEVER_OPEN])
    except UnidentifiedImageError:
        raise fail(_not_an_image_reason(data)) from None
    except Exception as exc:  # noqa: BLE001 - any plugin error while reading a header means an unusable file
        raise fail(f"truncated or corrupt image data: {_first_line(exc)}") from None

    with opened:
        width, height = opened.size
        if width * height > max_pixels:
            raise fail(
                f"image too large: {width}x{height} = {width * height / 1e6:.1f} MP exceeds the "
                f"{_megapixels(max_pixels)} limit (decompression-bomb guard)"
            )
        if width < MIN_SIDE or height < MIN_SIDE:
            raise fail(f"image too small: {width}x{height} pixels; at least {MIN_SIDE} pixels on each side are needed")
        original_mode = opened.mode

        # From here on PIL's own guard (applied to frames and tiles found while decoding) refuses anything above
        # max_pixels: it raises above twice its setting.
        pil_limit.set((max_pixels + 1) // 2)
        try:
            opened.load()
        except Image.DecompressionBombError as exc:
            raise fail(f"image too large: {_first_line(exc)} (decompression-bomb guard)") from None
        except MemoryError:
            raise fail(f"not enough memory to decode a {width}x{height} image") from None
        except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, struct.error...
            raise fail(f"truncated or corrupt image data: {_first_line(exc)}") from None

        frame = opened
        try:
            orientation = opened.getexif().get(_EXIF_ORIENTATION)
        except Exception as exc:  # noqa: BLE001 - malformed EXIF must not make a readable image unusable
            orientation = None
            notes.append(f"EXIF data unreadable, orientation not applied: {_first_line(exc)}")
        if isinstance(orientation, int) and 2 <= orientation <= 8:
            try:
                frame = ImageOps.exif_transpose(opened)
            except Exception as exc:  # noqa: BLE001
                notes.append(f"EXIF orientation {orientation} could not be applied: {_first_line(exc)}")
            else:
                notes.append(f"EXIF orientation {orientation} applied")

        try:
            rgb, conversion_notes = to_rgb(frame)
        except MemoryError:
            raise fail(f"not enough memory to convert a {width}x{height} image") from None
        except Exception as exc:  # noqa: BLE001
            raise fail(f"unsupported image mode {original_mode}: {_first_line(exc)}") from None
        notes.extend(conversion_notes)

        frame_note = _frame_note(opened)  # after conversion: counting frames moves the file to later frames
        if frame_note is not None:
            notes.insert(0, frame_note)
    return rgb, original_mode


def _open_formats() -> list[str]:
    """Names of the formats PIL can open in this installation."""
    Image.init()
    return list(Image.OPEN)
