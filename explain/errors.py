"""Exception hierarchy of the library.

The library never prints or exits; it raises these. The CLI maps them to one line on stderr and an exit code:
``UsageError`` and its subclasses mean "bad usage or nothing could be done" (exit 2), while ``InputError``
is raised for one input file and is collected per file so that the rest of a run goes on.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ExplainError(Exception):
    """Base class of every error the library raises on purpose."""


class UsageError(ExplainError):
    """A mistake in how the library or CLI was asked to do something (bad name, bad option, missing file)."""


class ModelError(UsageError):
    """A model, its weights or a checkpoint could not be loaded."""


class WeightsUnavailableError(ModelError):
    """Weights are not on this machine and may not be downloaded."""


class UnsafeCheckpointError(ModelError):
    """A checkpoint needs arbitrary code execution to load and was not explicitly trusted."""


class LayerError(UsageError):
    """An unknown layer name or a layer that cannot be used for the requested method."""


class TargetError(UsageError):
    """An unknown, ambiguous or out-of-range class or neuron target."""


class DeviceError(UsageError):
    """The requested device is not available."""


class InputError(ExplainError):
    """One input (usually an image file) could not be used. Reported per file; the run goes on."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type[InputError], tuple[str, str]]:
        # Exceptions pickle as (cls, args); ours takes (path, reason), so say so (DataLoader workers pickle it).
        return (InputError, (self.path, self.reason))


def suggest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """Return a ``" (did you mean: a, b?)"`` suffix with the closest candidates, or ``""`` if none is close."""
    pool = list(candidates)
    close = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    if not close:
        lowered = name.lower()
        close = [c for c in pool if lowered in c.lower()][:n]
    return f" (did you mean: {', '.join(close)}?)" if close else ""


_OS_REASONS: tuple[tuple[type[OSError], str], ...] = (
    (FileNotFoundError, "no such file or folder"),
    (IsADirectoryError, "it is a folder, not a file"),
    (NotADirectoryError, "a part of the path is a file, not a folder"),
    (FileExistsError, "a file (or a broken symbolic link) of that name is in the way"),
    (PermissionError, "permission denied"),
)


def shortlist(items: Iterable[object], most: int) -> str:
    """Items for a message, comma-separated: at most ``most`` of them, then ``and N more``. Never ``and 1 more``: the
    one item would take no more room than those words, so it is named."""
    items = [str(item) for item in items]
    if len(items) <= most + 1:
        return ", ".join(items)
    return ", ".join(items[:most]) + f" and {len(items) - most} more"


def os_reason(exc: OSError, other: str = "{}") -> str:
    """Say in words why a file operation failed: the common causes by name, anything else through ``other``
    (a format string given the system's message, e.g. ``"cannot read file: {}"``)."""
    for kind, words in _OS_REASONS:
        if isinstance(exc, kind):
            return words
    return other.format(exc.strerror or exc)
