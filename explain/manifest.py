"""Output folders: atomic writes and the ``manifest.json`` that lists every output of a run.

A manifest is written last, so its presence means the run completed. Scripts find outputs through it, never by
guessing file names. Schema (version 1) in DESIGN.md.

An output folder is used in two steps:

1. :func:`check_output_folder`, early (before a model is loaded): fails with a clear :class:`UsageError` when the
   folder cannot be created or written, and leaves no trace on disk.
2. :func:`begin_output`, once every option has been checked and right before the first output file is written:
   creates the folder and removes the ``manifest.json`` of a previous run there. Files of the new run overwrite
   those of the old one, so an old manifest left beside them would describe files that have changed; without it, an
   interrupted re-run leaves no manifest at all, which is what "incomplete" means. A usage error found before this
   step (an unknown layer, say) therefore never costs a previous good run its manifest.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import platform
import re
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from explain.errors import UsageError, os_reason

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, so output folders are not locked
    fcntl = None  # type: ignore[assignment]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
PARTIAL_MANIFEST_NAME = "manifest.partial.json"
"""What an interrupted run writes instead of ``manifest.json``: the finished items, so that ``manifest.json`` keeps
meaning a complete run (DESIGN.md) while the work already done stays findable."""


def _file_mode() -> int:
    """Permissions of a new file under the current umask (mkstemp alone would give 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through a temporary file in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda h: h.write(data))


def write_text(path: Path, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_npy(path: Path, array: Any) -> Path:
    """Atomically save a NumPy array (float arrays as float32) to ``path``."""
    import numpy as np

    arr = np.asarray(array)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
    return atomic_write(path, lambda h: np.save(h, arr, allow_pickle=False))


PAPER_FONTS = {"pdf.fonttype": 42, "ps.fonttype": 42}
"""matplotlib settings for PDF figures: TrueType (Type 42) fonts, not matplotlib's default Type 3, which publishers'
checkers (IEEE PDF eXpress, ACM) reject and which some viewers render poorly."""


def literal_text(figure: Any) -> Any:
    """Make every text of ``figure`` draw as written and return the figure.

    File and class names are user text and may hold ``$``, which matplotlib reads as mathematics (a garbled title, or
    an error for an unbalanced ``$``); the figures of this package use no mathematics. Every figure is saved through
    here (:func:`write_figure`, :func:`explain.html.figure_data_uri`, the report's PDF)."""
    from matplotlib.text import Text

    for text in figure.findobj(Text):
        text.set_parse_math(False)
    return figure


def write_figure(path: Path, figure: Any, dpi: int = 150, tight: bool = False) -> Path:
    """Atomically save a matplotlib figure; the format comes from the file suffix (png, svg, pdf).

    PDFs embed their fonts as TrueType (:data:`PAPER_FONTS`). ``tight``: crop the blank margins (what a hidden
    title leaves), keeping a 0.05 inch border."""
    import matplotlib

    fmt = path.suffix.lstrip(".").lower()
    # Light PNG compression: level 1 files are ~15% larger than level 6 and several times faster to write.
    extra: dict[str, Any] = {"pil_kwargs": {"compress_level": 1}} if fmt == "png" else {}
    if tight:
        extra.update(bbox_inches="tight", pad_inches=0.05)

    def save(handle: IO[bytes]) -> None:
        with matplotlib.rc_context(PAPER_FONTS):
            literal_text(figure).savefig(handle, format=fmt, dpi=dpi, **extra)

    return atomic_write(path, save)


_NO_FILES_HERE = "its file system does not let {} be created there (like /proc or /sys)"


def _folder_error(out: Path, exc: OSError) -> UsageError:
    reason = os_reason(exc)
    if isinstance(exc, FileNotFoundError) and exc.filename and Path(exc.filename).parent.is_dir():
        reason = _NO_FILES_HERE.format("folders")  # the parent is there: "no such file" would be false
    return UsageError(f"cannot create output folder {out}: {reason}")


def _check_existing(out: Path) -> bool:
    """``True`` if ``out`` exists (and is a writable folder); ``False`` if nothing is there; else a UsageError.

    Writability is probed by creating and removing a temporary file: permission bits say nothing for root, or on
    pseudo file systems such as ``/proc`` and ``/sys``. The file-system root and ``/dev`` are refused outright.
    """
    if not os.path.lexists(out):
        return False
    if not out.is_dir():
        what = "a broken symbolic link" if out.is_symlink() and not out.exists() else "an existing file"
        raise UsageError(f"cannot create output folder {out}: it is {what}")
    resolved = out.resolve()
    if resolved == Path(resolved.anchor) or resolved == Path("/dev"):
        raise UsageError(f"refusing to write into {resolved}: give --out a folder of its own")
    try:
        handle, probe = tempfile.mkstemp(prefix=".cnn-explain-probe-", dir=out)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        reason = _NO_FILES_HERE.format("files") if isinstance(exc, FileNotFoundError) else os_reason(exc)
        raise UsageError(f"cannot write to output folder {out}: {reason}") from None  # the folder is there
    return True


def check_output_folder(out: str | Path) -> Path:
    """Fail early, with one clear message, if ``out`` cannot be used as an output folder; change nothing on disk.

    An existing ``out`` must be a writable folder. A missing one is probed by creating it (and any missing parents)
    and removing again what was created, which catches every reason ``mkdir`` can fail (a parent that is a file,
    no permission, a read-only or pseudo file system such as ``/proc``) before a model is loaded.

    Args:
        out: the output folder.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        UsageError: ``"cannot create output folder OUT: reason"`` (or ``"cannot write to output folder OUT: ..."``).
    """
    out = Path(out)
    if _check_existing(out):
        return out
    created: list[Path] = []
    try:
        for folder in reversed(_missing_folders(out)):
            folder.mkdir()
            created.append(folder)
    except OSError as exc:
        raise _folder_error(out, exc) from None
    finally:
        _remove_empty(created[::-1])
    return out


def _missing_folders(out: Path) -> list[Path]:
    """``out`` and those of its parents that do not exist, innermost first."""
    missing: list[Path] = []
    folder = out
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def begin_output(out: str | Path) -> Path:
    """Start writing a run into ``out``: create the folder and remove the previous run's ``manifest.json``.

    Call it after every option has been checked and right before the first output file is written (see the module
    docstring for why). Other files of a previous run are left alone: the new run overwrites what it writes again,
    and only the new manifest (written last) says which files belong to it.

    Args:
        out: the output folder.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        UsageError: the folder cannot be created or written, or the old manifest cannot be removed.
    """
    out = Path(out)
    if not _check_existing(out):
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _folder_error(out, exc) from None
    for name in (MANIFEST_NAME, PARTIAL_MANIFEST_NAME):
        manifest = out / name
        try:
            manifest.unlink(missing_ok=True)
        except IsADirectoryError:
            raise UsageError(f"{manifest} is a folder; remove it or pick another --out") from None
        except OSError as exc:
            raise UsageError(f"cannot remove the previous run's {manifest}: {os_reason(exc)}") from None
    return out


LOCK_NAME = ".cnn-explain.lock"


class OutputInUseError(UsageError):
    """Another cnn-explain run holds the lock of the output folder."""


def _open_lock(path: Path) -> int:
    """Open ``path`` and take its exclusive lock without waiting: the file descriptor, or OutputInUseError naming
    the holder's pid. A lock file that was removed (by its releasing holder) while it was being opened is opened
    again, so two runs can never hold locks on two different files of one name."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputInUseError(f"{path.parent} is in use by another cnn-explain run (pid {holder})") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextmanager
def output_lock(out: str | Path) -> Iterator[Path]:
    """Hold the output folder ``out`` for one run: two runs writing into one folder would overwrite each other's
    files and manifest (and journal) silently.

    The lock is an ``fcntl.flock`` on the hidden file :data:`LOCK_NAME` inside ``out``, holding the pid of its
    holder; it is released, and the file removed, when the block ends however it ends (and by the system if the
    process dies). Folders created only to hold the lock are removed again if the run left them empty (a usage
    error found later leaves no trace). Without ``fcntl`` (Windows) nothing is locked.

    Raises:
        OutputInUseError: ``"OUT is in use by another cnn-explain run (pid N)"``.
        UsageError: the folder cannot be used or created (the messages of :func:`check_output_folder`).
    """
    out = Path(out)
    if fcntl is None:  # pragma: no cover - Windows
        yield check_output_folder(out)
        return
    created = [] if _check_existing(out) else _missing_folders(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _folder_error(out, exc) from None
    path = out / LOCK_NAME
    try:
        fd = _open_lock(path)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        yield out
    finally:
        path.unlink(missing_ok=True)  # while still locked: a run waiting on this file opens the next one
        os.close(fd)
        _remove_empty(created)


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove ``folders`` (innermost first) while they are empty (a file put there meanwhile stops it)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


TOOL_NAME = "cnn-explain"
_HEAD_BYTES = 4096
_TOOL_HEAD = re.compile(rb'^\s*\{\s*"schema_version"\s*:\s*\d+\s*,\s*"tool"\s*:\s*\{\s*"name"\s*:\s*"'
                        + re.escape(TOOL_NAME.encode()) + rb'"')


def holds_run_manifest(folder: str | Path) -> bool:
    """Whether ``folder`` holds the ``manifest.json`` of a cnn-explain run (its ``"tool"`` is this tool's name), or
    the ``manifest.partial.json`` of an interrupted one.

    Only the first bytes are read: :meth:`Manifest.to_json` writes ``schema_version`` and ``tool`` first, so a
    large manifest costs no more than a small one; any other ``manifest.json`` (a web app's, say) does not count.
    """
    return any(_is_run_manifest(Path(folder) / name) for name in (MANIFEST_NAME, PARTIAL_MANIFEST_NAME))


def _is_run_manifest(path: Path) -> bool:
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a named pipe would block the open
            return False
        with open(path, "rb") as handle:
            head = handle.read(_HEAD_BYTES)
    except OSError:
        return False
    return _TOOL_HEAD.match(head) is not None


def tool_record() -> dict[str, Any]:
    """Name and versions of the tool and the libraries that shape its results."""
    from importlib import metadata

    from explain import __version__

    versions = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "numpy", "pillow", "captum"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {"name": TOOL_NAME, "version": __version__, "versions": versions}


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Manifest:
    """What a run did: its items (one per input and target), the per-input errors and the outputs.

    Attributes:
        command: the CLI command (``predict``, ``cam`` ...).
        argv: the command line, for reproduction.
        model: the backbone's manifest record, or ``None`` for commands without a model.
        items: one dict per result; ``outputs`` maps roles to paths relative to the output folder.
        errors: ``{"input": ..., "error": ...}`` for every input that failed.
        warnings: run-level warnings.
        extra: command-specific run-level fields.
    """

    command: str
    argv: Sequence[str] = ()
    model: dict[str, Any] | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=utc_now)

    def add_error(self, input_name: str, reason: str) -> None:
        self.errors.append({"input": input_name, "error": reason})

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "tool": tool_record(),
            "command": self.command,
            "argv": list(self.argv),
            "created": self.created,
            "model": self.model,
        }
        data.update(self.extra)
        data["items"] = self.items
        data["errors"] = self.errors
        if self.warnings:
            data["warnings"] = self.warnings
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False)

    def save(self, out_dir: str | Path, name: str = MANIFEST_NAME) -> Path:
        """Write ``manifest.json`` (or ``name``) into ``out_dir`` (atomically). Call after every other output is
        written."""
        return write_text(Path(out_dir) / name, self.to_json() + "\n")


_RUN_FILE_SUFFIXES = frozenset({".json", ".jsonl", ".csv", ".html", ".png", ".svg", ".pdf", ".npy", ".txt", ".jpg"})


_STEM_BYTES = 120


def _clean_name(text: str, max_bytes: int) -> str:
    """``text`` with ``/`` as ``__``, every run of characters other than letters, digits, ``.``, ``-`` as ``_``,
    cut to ``max_bytes`` of UTF-8."""
    cleaned = re.sub(r"[^\w.-]+", "_", text.replace("/", "__")).strip("._")
    return cleaned.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore").rstrip("._")


def safe_stem(display: str, keep_extension: bool = False) -> str:
    """A file-system-safe, readable folder name for an input (``photos/cat 1.jpg`` -> ``photos__cat_1``).

    Letters and digits of any script are kept (``ünï 日本.png`` -> ``ünï_日本``), everything else becomes ``_``;
    the name is cut to at most 120 bytes of UTF-8 (file systems allow 255). A name that would end like a run-level
    file (``manifest.json.png`` -> ``manifest.json``) has its last dot replaced (``manifest_json``), so an input's
    folder can never take the place of the run's manifest, index page or tables.

    Args:
        display: the input's path as shown.
        keep_extension: keep the file's extension after a ``_`` (``cat.gif`` -> ``cat_gif``), to tell apart inputs
            that differ only by it; the extension survives the cut to 120 bytes.
    """
    has_extension = "." in Path(display).name
    stem, extension = display.rsplit(".", 1) if has_extension else (display, "")
    tail = _clean_name(extension, 16) if keep_extension else ""
    tail = f"_{tail}" if tail else ""
    cleaned = _clean_name(stem, _STEM_BYTES - len(tail.encode("utf-8")))
    cleaned = f"{cleaned}{tail}" if cleaned else tail.lstrip("_")
    suffix = Path(cleaned).suffix
    if suffix.lower() in _RUN_FILE_SUFFIXES:
        cleaned = f"{cleaned[: -len(suffix)]}_{suffix[1:]}"
    return cleaned or "image"


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    """One CSV cell. Text that a spreadsheet would run as a formula (``=cmd|...``, from a file, class or group name)
    gets a leading ``'`` (OWASP's CSV-injection advice); numbers are written as they are. The JSON outputs keep
    every value verbatim."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list):
        value = "; ".join(str(v) for v in value)
    if isinstance(value, str):
        return f"'{value}" if value.startswith(_FORMULA_STARTS) else value
    return str(value)


def csv_text(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A CSV table: one row per record, the given columns (booleans as 1/0, lists joined by ``; ``, formula-like
    text quoted)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([_cell(record.get(c)) for c in columns])
    return buffer.getvalue()
