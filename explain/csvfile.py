"""The small CSV files users hand to commands (labels, boxes, groups): one reader that keeps line numbers, and one
rule for a path listed twice with different values.

Used by the audit's ground truth (:mod:`explain.audit_inputs`) and the gallery index's ``--labels``
(:mod:`explain.gallery`), so that both read a file the same way and word its problems the same way.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from explain.errors import UsageError

__all__ = ["ConflictingRows", "CsvRow", "csv_rows", "read_text"]


class CsvRow(NamedTuple):
    """One data row of a CSV file.

    Attributes:
        line: its line number in the file (1 is the header), as :class:`csv.DictReader` counts it.
        values: column -> stripped text; a short row's missing fields read as ``""``.
        fields: how many fields the line held (a long row's extra fields are dropped from ``values``).
    """

    line: int
    values: dict[str, str]
    fields: int


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of a ``what`` file (``"labels"``, ``"boxes"``...), a byte-order mark dropped.

    Raises:
        UsageError: the file cannot be read or is not UTF-8.
    """
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise UsageError(f"cannot read the {what} file {str(path)!r}: {reason}") from None


def csv_rows(path: Path, what: str, needs: str, required: Sequence[str] = ("path",)) -> tuple[list[str], list[CsvRow]]:
    """The header (column names stripped) and the rows of a CSV file with a header line.

    Args:
        path: the file.
        what: what the file is, for messages (``"labels"``).
        needs: the columns to name when some are missing (``"path,label[,class_name]"``).
        required: columns the header must hold.

    Raises:
        UsageError: unreadable file, or a required column missing.
    """
    reader = csv.DictReader(io.StringIO(read_text(path, what)))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if any(name not in columns for name in required):
        raise UsageError(f"the {what} file {str(path)!r} needs a header with the columns {needs} "
                         f"(found: {', '.join(columns) or 'nothing'})")
    reader.fieldnames = columns
    rows = []
    for row in reader:
        present = sum(1 for k, v in row.items() if isinstance(k, str) and v is not None)
        values = {k: (v or "").strip() for k, v in row.items() if isinstance(k, str)}
        rows.append(CsvRow(reader.line_num, values, present + len(row.get(None) or [])))  # type: ignore[call-overload]
    return columns, rows


@dataclass
class ConflictingRows:
    """Rows that give one path different values: the path is refused, never settled by the first or last row.

    Args:
        source: the file's name, for messages.
        what: what the rows give, plural, for messages (``"classes"``, ``"labels"``).
    """

    source: str
    what: str
    refused: set[str] = field(default_factory=set)
    _first: dict[str, tuple[int, Hashable, str]] = field(default_factory=dict)

    def add(self, key: str, line: int, value: Hashable, shown: str) -> str | None:
        """Record a row; return a message when it gives ``key`` another value than the key's first row.

        A refused key stays refused (:attr:`refused`); later rows for it return ``None``, so each key gets one
        message.

        Args:
            key: the path the row names.
            line: the row's line number.
            value: what the row gives, compared for equality.
            shown: that value as the message shows it (``"imagenet_ids 401 (accordion)"``).
        """
        first = self._first.setdefault(key, (line, value, shown))
        if key in self.refused or first[1] == value:
            return None
        self.refused.add(key)
        return f"{self.source} lines {first[0]} and {line} give it different {self.what}: {first[2]} and {shown}"
