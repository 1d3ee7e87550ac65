"""What an audit is told about its images: true labels, object boxes and groups, read and checked.

Three small file formats, all keyed by the image's path relative to the DATASET folder (``/`` separators):

* **Labels** (``--labels``, CSV, required): a ``path`` column plus one of (tried in this order)

  - ``imagenet_ids``: ``;``-separated class indices, any one of which counts as correct (a Caltech "airplanes"
    photo is right as ``airliner``, ``warplane`` or ``wing``);
  - ``class_index``: one class index;
  - ``class_name``: one class name, resolved like ``--target`` (exact, else unique prefix, case-insensitive).

* **Boxes** (``--boxes``, optional): a CSV ``path,x0,y0,x1,y1`` (several rows per image: the union of the boxes) or
  a COCO JSON file (``images[].file_name`` and ``annotations[].bbox = [x, y, w, h]``), in the pixels of the image
  file as a viewer shows it (after EXIF orientation, which is how :func:`explain.images.load_image` loads it).
  :func:`boxes_to_input` maps them through the preprocessing's crop onto the model-input grid. Every box is also
  kept as a :class:`BoxObject` with its class and object id (the detection audit's ground truth): the CSV's
  optional ``class`` (name or index) and ``object_id`` columns, COCO's ``category_id`` (named by ``categories``),
  ``id`` and ``iscrowd``. A CSV row whose four coordinates are all empty lists its image without an object (a
  detector audit then still counts that image's false positives); a COCO image without annotations is listed too.
  Without ``--labels`` (the detection audit) the images the boxes file lists are the ones audited.

* **Groups** (``--groups``, optional): a CSV with a ``path`` column and one or more attribute columns (e.g.
  ``colour``, ``site``); each attribute gets its own summary. For the detection audit an optional ``object_id``
  column makes a row apply to that one object (rows without it apply to every object of the image).

Bad rows never stop an audit: a label row naming a missing file or an unknown class is a per-input error (that
image is not audited), a box that lies outside its image is a per-image warning (its metrics are NaN), group rows
that match no audited image are counted in a warning and audited images without a group land in
:data:`NO_GROUP`. Only an unreadable file or missing columns is a usage error (nothing sensible can be done).

A box row or annotation that is not a box is refused, never repaired, and never dropped silently: each one becomes
a :class:`BoxProblem` naming the file, the line (CSV) or the annotation (COCO: position and ``id``) and the reason
(a missing path; too few or too many fields; a value that is not a number; ``nan``/``inf``; an empty or inverted
box; a COCO ``bbox`` that is not four numbers or has a negative width or height; an annotation whose ``image_id``
the file does not list or whose ``category_id`` its ``categories`` do not name). The rest of the file is used.
An inverted box (``x1 < x0`` or ``y1 < y0``) is refused rather than swapped: an audit should measure the ground truth
as written, and a swapped corner pair is as likely a typo in one number as two exchanged columns. The problems
become run warnings (:func:`box_warnings`, at most :data:`SHOWN_PER_KIND` lines per kind plus one "and K more"
line) and, for a row that names an image, a note on that image (:attr:`BoxFile.notes`).
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from explain.csvfile import ConflictingRows, csv_rows, read_text
from explain.errors import InputError, TargetError, UsageError, shortlist

if TYPE_CHECKING:
    from explain.backbones.base import Geometry
    from explain.images import ImageFile

__all__ = [
    "NO_GROUP", "SHOWN_PER_KIND", "AuditInputs", "Box", "BoxFile", "BoxObject", "BoxProblem", "GroupFile",
    "LabelFile", "MappedBoxes", "TrueLabel", "box_warnings", "boxes_to_input", "load_audit_inputs", "parse_boxes",
    "parse_groups", "parse_labels", "relative_key",
]

NO_GROUP = "(no group)"
"""Group value of an audited image that the groups file does not mention."""

Box = tuple[float, float, float, float]
"""``(x0, y0, x1, y1)`` in pixels, ``x0 < x1`` and ``y0 < y1``."""

SHOWN_PER_KIND = 5
"""Refused box rows of one kind listed one per warning line; the rest are summed up in one more line."""


@dataclass(frozen=True)
class TrueLabel:
    """The correct answer(s) for one image.

    Attributes:
        indices: the accepted class indices (any one counts as correct), in the order given.
        name: how to show it: the file's ``class_name`` if present, else the first accepted class's name.
    """

    indices: tuple[int, ...]
    name: str


@dataclass
class LabelFile:
    """Parsed labels: ``labels[path]`` plus one error per bad row (``InputError(path, reason)``)."""

    labels: dict[str, TrueLabel] = field(default_factory=dict)
    errors: list[InputError] = field(default_factory=list)
    source: str = ""


@dataclass(frozen=True)
class BoxObject:
    """One annotated object.

    Attributes:
        box: ``(x0, y0, x1, y1)`` in original-image pixels.
        object_id: the CSV's ``object_id`` (else the row's 1-based ordinal among its image's rows) or COCO's
            annotation ``id`` (else its position in ``annotations``).
        category: the class as written (CSV ``class``, COCO category name, or COCO ``category_id`` as text when
            the file has no ``categories``); ``None`` when the file gives no classes.
        where: where it was read, for messages (``"gt.csv line 3"``, ``"gt.json annotations[5] (id 17)"``).
        crowd: COCO ``iscrowd``: a region of many objects (ignored by the detection audit, as COCO does).
    """

    box: Box
    object_id: str
    category: str | None = None
    where: str = ""
    crowd: bool = False


@dataclass(frozen=True)
class BoxProblem:
    """One box row or annotation that was refused.

    Attributes:
        source: the boxes file's name.
        place: where in it: ``"line 3"`` (CSV) or ``"annotations[4] (id 17)"`` (COCO, position from 0).
        kind: the class of problem (``"not numeric"``, ``"inverted box"``, ...), to sum up many alike.
        reason: what is wrong, with the values.
        key: the image the row names, ``None`` when it names none the file lists.
    """

    source: str
    place: str
    kind: str
    reason: str
    key: str | None = None

    def __str__(self) -> str:
        return f"{self.source} {self.place}: {self.reason}; ignored"


class _Refused(ValueError):
    """A row or annotation that is not a box: ``kind`` (for summaries) and ``reason``."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


@dataclass
class BoxFile:
    """Parsed boxes: ``boxes[path]`` (original-image pixels) and the rows that were refused.

    Attributes:
        boxes: every image's boxes (their union is the classifier audit's object region).
        notes: per image, the rows naming it that were not a box and were ignored (the text of their problem).
        objects: the same boxes as :class:`BoxObject` (class, id), per image.
        listed: every image the file names, in order of first mention (also those without a valid box).
        has_classes: the file gives classes (a CSV ``class`` column, COCO ``category_id``).
        problems: every refused row or annotation, in file order (also those that name no image).
    """

    boxes: dict[str, list[Box]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    objects: dict[str, list[BoxObject]] = field(default_factory=dict)
    listed: dict[str, None] = field(default_factory=dict)
    has_classes: bool = False
    problems: list[BoxProblem] = field(default_factory=list)

    def note(self, key: str, text: str) -> None:
        self.notes.setdefault(key, []).append(text)

    def refuse(self, problem: BoxProblem) -> None:
        """Record a refused row (and a note on its image when it names one)."""
        self.problems.append(problem)
        if problem.key:
            self.note(problem.key, str(problem))

    def add(self, key: str, obj: BoxObject) -> None:
        """Add one valid object (and its box)."""
        self.boxes.setdefault(key, []).append(obj.box)
        self.objects.setdefault(key, []).append(obj)


@dataclass
class GroupFile:
    """Parsed groups: the attribute ``columns``, ``values[path][column]`` and, for per-object rows (an ``object_id``
    column, detection audits), ``objects[(path, object_id)][column]``."""

    columns: list[str] = field(default_factory=list)
    values: dict[str, dict[str, str]] = field(default_factory=dict)
    objects: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)


@dataclass
class AuditInputs:
    """The images to audit and everything known about them.

    Attributes:
        root: the DATASET folder.
        files: the audited images (found on disk and labelled), sorted by key.
        keys: ``files[i]``'s path relative to ``root`` (the key of every table and output row).
        labels, boxes, groups: the parsed files (``boxes``/``groups`` empty when not given).
        errors: per-input problems (label rows for missing files, unknown classes, unreadable folders).
        warnings: run-level notes (unlabelled images skipped, box or group rows that match nothing).
    """

    root: Path
    files: list[ImageFile]
    keys: list[str]
    labels: LabelFile
    boxes: BoxFile
    groups: GroupFile
    errors: list[InputError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def group_of(self, key: str) -> dict[str, str]:
        """The image's value for every group column (:data:`NO_GROUP` where the file says nothing)."""
        row = self.groups.values.get(key, {})
        return {column: row.get(column) or NO_GROUP for column in self.groups.columns}


# --------------------------------------------------------------------------------------------------------------
# Reading


def relative_key(raw: str) -> str:
    """Normalise a path written in a CSV into a key: ``/`` separators, no leading ``./``."""
    text = raw.strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return PurePosixPath(text).as_posix() if text else ""


def _label_from_row(row: dict[str, str], column: str, class_names: Sequence[str]) -> tuple[int, ...]:
    """The accepted indices of one labels row (raises TargetError for an unknown class or bad index)."""
    from explain.targets import resolve_class

    value = row.get(column, "")
    if not value:
        raise TargetError(f"empty {column}")
    if column == "class_name":
        return (resolve_class(value, class_names),)
    parts = [p.strip() for p in value.split(";") if p.strip()] if column == "imagenet_ids" else [value]
    indices = []
    for part in parts:
        if not re.fullmatch(r"\d+", part):
            raise TargetError(f"{column} {value!r} is not a class index (or a ';'-separated list of them)")
        indices.append(resolve_class(part, class_names))
    return tuple(dict.fromkeys(indices))


def parse_labels(path: Path, class_names: Sequence[str]) -> LabelFile:
    """Read a labels CSV (see the module docstring).

    Args:
        path: the CSV.
        class_names: the model's class names (indices are checked against their number).

    Returns:
        The labels and one :class:`InputError` per bad row (empty or unknown class, index out of range, the same
        path labelled twice with different classes: that path is refused, naming both lines).

    Raises:
        UsageError: unreadable file, no ``path`` column, or none of the label columns.
    """
    needs = "path plus one of imagenet_ids, class_index, class_name"
    columns, rows = csv_rows(path, "labels", needs)
    column = next((c for c in ("imagenet_ids", "class_index", "class_name") if c in columns), None)
    if column is None:
        raise UsageError(f"the labels file {str(path)!r} needs a header with the columns {needs} "
                         f"(found: {', '.join(columns)})")
    result = LabelFile(source=Path(path).name)
    duplicates = ConflictingRows(result.source, "classes")
    for line, row, _ in rows:
        key = relative_key(row.get("path", ""))
        if not key:
            continue
        try:
            indices = _label_from_row(row, column, class_names)
        except TargetError as exc:
            result.errors.append(InputError(key, f"{result.source} line {line}: {exc}"))
            continue
        name = row.get("class_name") or class_names[indices[0]]
        shown = f"{column} {row[column]}" + (f" ({name})" if column != "class_name" else "")
        conflict = duplicates.add(key, line, frozenset(indices), shown)
        if conflict is not None:
            result.errors.append(InputError(key, f"{conflict}; it is not audited"))
            result.labels.pop(key, None)
        elif key not in duplicates.refused:
            result.labels[key] = TrueLabel(indices, name)
    return result


_CORNERS = ("x0", "y0", "x1", "y1")


def _shown(value: Any) -> str:
    """A CSV value as a message shows it: empty text as ``''``, long values cut."""
    text = str(value) if not isinstance(value, str) or value else "''"
    return text if len(text) <= 40 else text[:37] + "..."


def _json(value: Any) -> str:
    """A JSON value as a message shows it (long values cut)."""
    return _shown(json.dumps(value))


def _numbers(values: Sequence[Any]) -> tuple[float, ...]:
    """Four values (a box or a COCO bbox) as finite floats.

    Raises:
        _Refused: a value is not a number (JSON ``true``/``false`` included), or is ``nan``/``inf``.
    """
    shown = ", ".join(_shown(v) for v in values)
    try:
        if any(isinstance(v, bool) for v in values):
            raise ValueError
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise _Refused("not numeric", f"not four numbers ({shown})") from None
    if not all(math.isfinite(v) for v in numbers):
        raise _Refused("non-finite coordinates", f"non-finite coordinate(s) ({shown})")
    return numbers


def _corners(x0: float, y0: float, x1: float, y1: float) -> Box:
    """``(x0, y0, x1, y1)`` if it is a box (``x0 < x1``, ``y0 < y1``).

    Raises:
        _Refused: an inverted box (refused, not swapped: see the module docstring) or one of zero width or height.
    """
    box = (x0, y0, x1, y1)
    inverted = [name for name, bad in (("x1 < x0", x1 < x0), ("y1 < y0", y1 < y0)) if bad]
    if inverted:
        raise _Refused("inverted box", f"empty box {_fmt_box(box)}: inverted ({' and '.join(inverted)}); not "
                                       "swapped: x0,y0 is the top-left corner, x1,y1 the bottom-right one")
    if x1 == x0 or y1 == y0:
        raise _Refused("empty box", f"empty box {_fmt_box(box)}: zero width or height; needs x0 < x1 and y0 < y1")
    return box


def _csv_box(row: dict[str, str], fields: int, columns: Sequence[str]) -> Box | None:
    """One CSV row's box; ``None`` when its four coordinates are empty (an image without objects).

    A short row is fine while it reaches the last coordinate column (later optional columns read as empty); a long
    row is refused, since its values may sit in the wrong columns.

    Raises:
        _Refused: wrong number of fields, or the coordinates are not a box.
    """
    header = f"the header ({','.join(columns)}) has {len(columns)}"
    if fields > len(columns):
        raise _Refused("wrong number of fields", f"{fields} fields where {header}: values may be in the wrong columns")
    if fields <= max(columns.index(c) for c in _CORNERS):
        raise _Refused("wrong number of fields", f"only {fields} field(s) where {header}: a coordinate is missing")
    values = [row[c] for c in _CORNERS]
    if not any(values):
        return None
    return _corners(*_numbers(values))


def _boxes_csv(path: Path) -> BoxFile:
    columns, rows = csv_rows(path, "boxes", "path,x0,y0,x1,y1")
    missing = [c for c in _CORNERS if c not in columns]
    if missing:
        raise UsageError(f"the boxes file {str(path)!r} needs the columns path,x0,y0,x1,y1 "
                         f"(missing: {', '.join(missing)})")
    source = Path(path).name
    result = BoxFile(has_classes="class" in columns)
    ordinal: dict[str, int] = {}
    for line, row, fields in rows:
        key = relative_key(row.get("path", ""))
        if not key and not any(row.values()):
            continue  # a row of empty fields
        if key:
            result.listed.setdefault(key)
            if any(row.get(c) for c in _CORNERS):
                ordinal[key] = ordinal.get(key, 0) + 1
        try:
            if not key:
                raise _Refused("no path", "no path: the row names no image")
            box = _csv_box(row, fields, columns)
        except _Refused as exc:
            result.refuse(BoxProblem(source, f"line {line}", exc.kind, exc.reason, key or None))
            continue
        if box is not None:
            result.add(key, BoxObject(box, row.get("object_id") or str(ordinal[key]),
                                      row.get("class") if result.has_classes else None, f"{source} line {line}"))
    return result


def _coco_images(images: Sequence[Any], source: str, result: BoxFile) -> dict[Any, str]:
    """``image id -> key`` of COCO ``images``; lists every named image in ``result`` and refuses unnamed entries."""
    names: dict[Any, str] = {}
    for number, image in enumerate(images):
        key = relative_key(str(image.get("file_name") or "")) if isinstance(image, dict) else ""
        if not key:
            result.refuse(BoxProblem(source, f"images[{number}]", "image entry without file_name",
                                     f"{_json(image)} has no file_name; its annotations cannot be placed"))
            continue
        result.listed.setdefault(key)
        if isinstance(image.get("id"), (int, str)):
            names[image["id"]] = key
    return names


def _coco_box(ann: Any, key: str | None) -> Box:
    """A COCO annotation's ``bbox = [x, y, w, h]`` as ``(x, y, x + w, y + h)``.

    Raises:
        _Refused: not a JSON object, no listed image (``key`` is ``None``), a bbox that is not four finite numbers,
            a negative or zero width or height.
    """
    if not isinstance(ann, dict):
        raise _Refused("not an annotation", f"not a JSON object ({_json(ann)})")
    if key is None:
        image_id = ann.get("image_id")
        raise _Refused("unknown image", "no image_id" if image_id is None else
                       f"image_id {_json(image_id)} is not the id of any entry of images")
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise _Refused("bbox not [x, y, w, h]", f"bbox {_json(bbox)} is not [x, y, w, h]")
    x, y, w, h = _numbers(bbox)
    if w < 0 or h < 0:
        raise _Refused("negative size", f"bbox [{x:g}, {y:g}, {w:g}, {h:g}]: negative width or height")
    return _corners(x, y, x + w, y + h)


def _coco_category(ann: dict[str, Any], categories: dict[Any, str]) -> str | None:
    """The annotation's class: named by ``categories``, else ``category_id`` as text when the file has none.

    Raises:
        _Refused: a ``category_id`` that the file's ``categories`` do not list (it would be read as a class index).
    """
    category = ann.get("category_id")
    if category is None:
        return None
    if not categories:
        return str(category)
    try:
        return categories[category]
    except (KeyError, TypeError):
        raise _Refused("unknown category", f"category_id {_json(category)} is not in categories") from None


def _boxes_coco(path: Path) -> BoxFile:
    try:
        data = json.loads(read_text(path, "boxes"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"the boxes file {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise UsageError(f"the boxes file {str(path)!r} is not COCO JSON: it needs 'images' and 'annotations' lists")
    source = Path(path).name
    result = BoxFile(has_classes=any(isinstance(a, dict) and "category_id" in a for a in data["annotations"]))
    names = _coco_images(data["images"], source, result)
    categories = {c["id"]: str(c.get("name", c["id"])) for c in data.get("categories") or []
                  if isinstance(c, dict) and isinstance(c.get("id"), (int, str))}
    for number, ann in enumerate(data["annotations"]):
        known = isinstance(ann, dict) and isinstance(ann.get("image_id"), (int, str))
        key = names.get(ann["image_id"]) if known else None
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        place = f"annotations[{number}]" + (f" (id {ann_id})" if ann_id is not None else "")
        try:
            box = _coco_box(ann, key)
            category = _coco_category(ann, categories)
        except _Refused as exc:
            result.refuse(BoxProblem(source, place, exc.kind, exc.reason, key))
            continue
        assert key is not None  # _coco_box refuses an annotation of no listed image
        object_id = str(ann_id) if ann_id is not None else str(number)
        result.add(key, BoxObject(box, object_id, category, f"{source} {place}", bool(ann.get("iscrowd"))))
    return result


def parse_boxes(path: Path) -> BoxFile:
    """Read object boxes from a CSV (``path,x0,y0,x1,y1``) or a COCO JSON file (by suffix ``.json``).

    Rows and annotations that are not a box are refused (see the module docstring): each is a
    :class:`BoxProblem` in :attr:`BoxFile.problems` (and a note on its image), the rest of the file is used.

    Raises:
        UsageError: unreadable file, missing columns, or a JSON file that is not COCO.
    """
    return _boxes_coco(path) if Path(path).suffix.lower() == ".json" else _boxes_csv(path)


def box_warnings(problems: Sequence[BoxProblem], limit: int = SHOWN_PER_KIND) -> list[str]:
    """Warning lines for refused box rows, readable however many there are.

    Each kind of problem gets its first ``limit`` rows one per line (``"gt.csv line 3: not four numbers (a, b, c, d);
    ignored"``) and, if there are more, one line ``"gt.csv: and K more row(s) ignored for the same reason (not
    numeric): line 9, line 10, ..."`` (its first ``limit`` places).
    """
    by_kind: dict[str, list[BoxProblem]] = {}
    for problem in problems:
        by_kind.setdefault(problem.kind, []).append(problem)
    lines: list[str] = []
    for kind, alike in by_kind.items():
        lines += [str(p) for p in alike[:limit]]
        rest = alike[limit:]
        if rest:
            places = ", ".join(p.place for p in rest[:limit]) + (", ..." if len(rest) > limit else "")
            lines.append(f"{rest[0].source}: and {len(rest)} more row(s) ignored for the same reason ({kind}): "
                         f"{places}")
    return lines


def parse_groups(path: Path, per_object: bool = False) -> GroupFile:
    """Read a groups CSV: ``path`` plus one or more attribute columns (every other column is one attribute).

    Args:
        path: the CSV.
        per_object: an ``object_id`` column is a key, not an attribute: a row with an object id applies to that
            object only (:attr:`GroupFile.objects`), one without to the whole image (detection audits).

    Raises:
        UsageError: unreadable file, no ``path`` column or no attribute column.
    """
    columns, rows = csv_rows(path, "groups", "path,group (or path plus several attribute columns)")
    keys = ("path", "object_id") if per_object else ("path",)
    attributes = [c for c in columns if c and c not in keys]
    if not attributes:
        raise UsageError(f"the groups file {str(path)!r} has no group column: it needs path,group "
                         "(or path plus several attribute columns)")
    result = GroupFile(columns=attributes)
    for _, row, _ in rows:
        key = relative_key(row.get("path", ""))
        if not key:
            continue
        values = {c: row.get(c, "") for c in attributes}
        if per_object and row.get("object_id"):
            result.objects[(key, row["object_id"])] = values
        else:
            result.values[key] = values
    return result


# --------------------------------------------------------------------------------------------------------------
# Matching files and tables


def _key_of(file: ImageFile, root: Path) -> str:
    try:
        return file.path.relative_to(root).as_posix()
    except ValueError:  # pragma: no cover - find_images walks below root
        return file.display


def _error_key(display: str, root: Path) -> str:
    """The key (path relative to DATASET) of an entry that :func:`explain.images.find_images` reported while
    walking ``root``: its display path starts with ``root`` as given (nothing for ``.``)."""
    return posixpath.relpath(display, root.as_posix()) if display != root.as_posix() else display


def _unmatched(kind: str, source: str, keys: Sequence[str]) -> str:
    shown = shortlist(keys, 3)
    return f"{len(keys)} {kind} row(s) of {source} name no audited image ({shown}); they are ignored"


def load_audit_inputs(
    dataset: str | Path,
    labels: str | Path | None,
    class_names: Sequence[str],
    boxes: str | Path | None = None,
    groups: str | Path | None = None,
    exclude: Sequence[str | Path] = (),
) -> AuditInputs:
    """List DATASET, read the labels, boxes and groups, and match them up.

    Folders in ``exclude`` (the audit's own output folder) are not walked into, so a re-run never audits its own
    overlays.

    The audited images are the image files under ``dataset`` that have a valid label; a labels row for a file that
    is not there is an error for that path; image files without a label are skipped with one warning. Without
    ``labels`` (the detection audit) the boxes file plays that part: the images it lists are audited (with or
    without objects) and its groups file may hold per-object rows (an ``object_id`` column).

    Box rows that were refused (:attr:`BoxFile.problems`) become warnings (:func:`box_warnings`); the image is still
    audited, without those boxes. Without ``labels`` a refused row naming an audited image is left out of the
    warnings: the detection audit reports it as an error of that image.

    Raises:
        UsageError: DATASET is not a folder, a file cannot be read, neither labels nor boxes are given, or nothing
            at all can be audited.
    """
    from explain.images import find_images

    root = Path(dataset)
    if not root.is_dir():
        raise UsageError(f"DATASET {str(root)!r} is not a folder")
    if labels is None and boxes is None:
        raise UsageError("an audit needs ground truth: --labels for a classifier, --boxes for a detector")
    label_file = parse_labels(Path(labels), class_names) if labels is not None else None
    box_file = parse_boxes(Path(boxes)) if boxes is not None else BoxFile()
    group_file = parse_groups(Path(groups), per_object=labels is None) if groups is not None else GroupFile()
    # What defines the audited images: the labels, or (detection) the images the boxes file lists.
    listing: dict[str, Any] = label_file.labels if label_file is not None else box_file.listed
    source = label_file.source if label_file is not None else Path(str(boxes)).name
    found, find_errors = find_images([root], exclude=exclude)
    by_key = {_key_of(f, root): f for f in found}
    # The walk names what it could not read by the DATASET path as given: key them like every other error.
    unreadable = [InputError(_error_key(e.path, root), e.reason) for e in find_errors]
    errors = unreadable + (list(label_file.errors) if label_file is not None else [])
    warnings: list[str] = []
    for key in sorted(set(listing) - set(by_key) - {e.path for e in unreadable}):
        reason = "is a folder" if (root / key).is_dir() else "no such image file in DATASET"
        errors.append(InputError(key, f"listed in {source} but {reason}"))
    keys = sorted(k for k in by_key if k in listing)
    unlabelled = sorted(k for k in by_key if k not in listing and k not in {e.path for e in errors})
    if unlabelled:
        warnings.append(f"{len(unlabelled)} image(s) in DATASET have no row in {source} and are not "
                        f"audited ({', '.join(unlabelled[:3])}{' ...' if len(unlabelled) > 3 else ''})")
    audited = set(keys)
    if boxes is not None and label_file is not None:
        stray = sorted(set(box_file.boxes) - audited)
        if stray:
            warnings.append(_unmatched("box", Path(boxes).name, stray))
    # A detection audit makes a refused row of an audited image an error of that image
    # (explain.audit_detection.resolve_ground_truth reads BoxFile.notes): warn here about the others only.
    reported_later = audited if label_file is None else set()
    warnings += box_warnings([p for p in box_file.problems if p.key not in reported_later])
    if groups is not None:
        warnings += _group_warnings(group_file, keys, Path(groups).name)
    if not keys:
        raise UsageError(f"nothing to audit: no image under {str(root)!r} has a valid row in {source}"
                         + (f" (first problem: {errors[0]})" if errors else ""))
    return AuditInputs(root=root, files=[by_key[k] for k in keys], keys=keys,
                       labels=label_file if label_file is not None else LabelFile(source=source), boxes=box_file,
                       groups=group_file, errors=errors, warnings=warnings)


def _group_warnings(group_file: GroupFile, keys: Sequence[str], name: str) -> list[str]:
    """Warnings about group rows that name no audited image and audited images without a group."""
    warnings = []
    named = set(group_file.values) | {path for path, _ in group_file.objects}
    stray = sorted(named - set(keys))
    if stray and len(stray) == len(named):
        example = keys[0] if keys else "sub/photo.jpg"
        warnings.append(f"no row of {name} names an audited image (its paths must be relative to "
                        f"DATASET, like {example!r}); every image falls in the group {NO_GROUP!r}")
    elif stray:
        warnings.append(_unmatched("group", name, stray))
    missing = [k for k in keys if k not in named]
    if missing:
        warnings.append(f"{len(missing)} audited image(s) are not in {name}; they form the group {NO_GROUP!r}")
    return warnings


# --------------------------------------------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class MappedBoxes:
    """An image's boxes on the model-input grid.

    Attributes:
        boxes: the visible parts, ``(x0, y0, x1, y1)`` in model-input pixels (clipped to the grid).
        status: ``"none"`` (no box given), ``"ok"``, ``"clipped"`` (part of a box lies outside the image or the
            model's crop) or ``"outside"`` (every box lies entirely outside the crop: box metrics are undefined).
        notes: human-readable warnings.
    """

    boxes: tuple[Box, ...]
    status: str
    notes: tuple[str, ...] = ()


def _fmt_box(box: Box) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


def boxes_to_input(boxes: Sequence[Box], geometry: Geometry) -> MappedBoxes:
    """Map original-image boxes onto the model-input grid.

    The crop box ``(cx0, cy0, cx1, cy1)`` of :class:`~explain.backbones.base.Geometry` becomes the ``W x H`` input,
    so ``x' = (x - cx0) * W / (cx1 - cx0)`` and ``y' = (y - cy0) * H / (cy1 - cy0)``. A box is first clipped to the
    image (a box reaching outside the photo is a labelling mistake worth a note) and then to the crop; what the
    model never saw is lost.

    Args:
        boxes: boxes in original-image pixels.
        geometry: the image's preprocessing geometry.

    Returns:
        The visible boxes, a status and notes (see :class:`MappedBoxes`).
    """
    if not boxes:
        return MappedBoxes((), "none")
    width, height = geometry.image_size
    cx0, cy0, cx1, cy1 = geometry.crop_box
    grid_h, grid_w = geometry.model_input
    sx, sy = grid_w / (cx1 - cx0), grid_h / (cy1 - cy0)
    visible: list[Box] = []
    notes: list[str] = []
    clipped = False
    for box in boxes:
        x0, y0, x1, y1 = box
        ix0, iy0, ix1, iy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
        if ix1 <= ix0 or iy1 <= iy0:
            notes.append(f"box {_fmt_box(box)} lies outside the {width}x{height} image; ignored")
            continue
        if (ix0, iy0, ix1, iy1) != (x0, y0, x1, y1):
            notes.append(f"box {_fmt_box(box)} reaches outside the {width}x{height} image; clipped")
            clipped = True
        gx0, gy0 = max((ix0 - cx0) * sx, 0.0), max((iy0 - cy0) * sy, 0.0)
        gx1, gy1 = min((ix1 - cx0) * sx, float(grid_w)), min((iy1 - cy0) * sy, float(grid_h))
        if gx1 <= gx0 or gy1 <= gy0:
            notes.append(f"box {_fmt_box(box)} lies outside the model's centre crop; ignored")
            continue
        if (gx0, gy0, gx1, gy1) != ((ix0 - cx0) * sx, (iy0 - cy0) * sy, (ix1 - cx0) * sx, (iy1 - cy0) * sy):
            clipped = True
        visible.append((gx0, gy0, gx1, gy1))
    if not visible:
        return MappedBoxes((), "outside", tuple(notes))
    return MappedBoxes(tuple(visible), "clipped" if clipped else "ok", tuple(notes))
