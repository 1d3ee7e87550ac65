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
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from explain.errors import InputError, TargetError, UsageError

if TYPE_CHECKING:
    from explain.backbones.base import Geometry
    from explain.images import ImageFile

__all__ = [
    "NO_GROUP", "AuditInputs", "Box", "BoxFile", "BoxObject", "GroupFile", "LabelFile", "MappedBoxes", "TrueLabel",
    "boxes_to_input", "load_audit_inputs", "parse_boxes", "parse_groups", "parse_labels", "relative_key",
]

NO_GROUP = "(no group)"
"""Group value of an audited image that the groups file does not mention."""

Box = tuple[float, float, float, float]
"""``(x0, y0, x1, y1)`` in pixels, ``x0 < x1`` and ``y0 < y1``."""


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
        where: where it was read, for messages (``"gt.csv line 3"``, ``"gt.json annotation 5"``).
        crowd: COCO ``iscrowd``: a region of many objects (ignored by the detection audit, as COCO does).
    """

    box: Box
    object_id: str
    category: str | None = None
    where: str = ""
    crowd: bool = False


@dataclass
class BoxFile:
    """Parsed boxes: ``boxes[path]`` (original-image pixels) and per-image notes on rows that were dropped.

    Attributes:
        boxes: every image's boxes (their union is the classifier audit's object region).
        notes: per image, the rows that were not a box and were ignored.
        objects: the same boxes as :class:`BoxObject` (class, id), per image.
        listed: every image the file names, in order of first mention (also those without a valid box).
        has_classes: the file gives classes (a CSV ``class`` column, COCO ``category_id``).
    """

    boxes: dict[str, list[Box]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    objects: dict[str, list[BoxObject]] = field(default_factory=dict)
    listed: dict[str, None] = field(default_factory=dict)
    has_classes: bool = False

    def note(self, key: str, text: str) -> None:
        self.notes.setdefault(key, []).append(text)

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


def _read_text(path: Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise UsageError(f"cannot read the {what} file {str(path)!r}: {reason}") from None


def _csv_rows(path: Path, what: str, needs: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line number, row)`` pairs of a CSV with a ``path`` column.

    Raises:
        UsageError: unreadable file, or no ``path`` column.
    """
    reader = csv.DictReader(io.StringIO(_read_text(path, what)))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if "path" not in columns:
        raise UsageError(f"the {what} file {str(path)!r} needs a header with the columns {needs} "
                         f"(found: {', '.join(columns) or 'nothing'})")
    reader.fieldnames = columns
    rows = [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if isinstance(k, str)})
            for row in reader]
    return columns, rows


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
        path labelled twice with different classes).

    Raises:
        UsageError: unreadable file, no ``path`` column, or none of the label columns.
    """
    needs = "path plus one of imagenet_ids, class_index, class_name"
    columns, rows = _csv_rows(path, "labels", needs)
    column = next((c for c in ("imagenet_ids", "class_index", "class_name") if c in columns), None)
    if column is None:
        raise UsageError(f"the labels file {str(path)!r} needs a header with the columns {needs} "
                         f"(found: {', '.join(columns)})")
    result = LabelFile(source=Path(path).name)
    for line, row in rows:
        key = relative_key(row.get("path", ""))
        if not key:
            continue
        try:
            indices = _label_from_row(row, column, class_names)
        except TargetError as exc:
            result.errors.append(InputError(key, f"{result.source} line {line}: {exc}"))
            continue
        name = row.get("class_name") or class_names[indices[0]]
        label = TrueLabel(indices, name)
        previous = result.labels.get(key)
        if previous is not None and previous.indices != indices:
            result.errors.append(InputError(key, f"{result.source} line {line}: labelled twice with different "
                                                 f"classes ({previous.name} and {name})"))
            continue
        result.labels[key] = label
    return result


def _box_from_values(values: Sequence[Any]) -> Box | str:
    """``(x0, y0, x1, y1)`` from four values, or the reason they are not a box."""
    try:
        x0, y0, x1, y1 = (float(v) for v in values)
    except (TypeError, ValueError):
        return f"not four numbers: {', '.join(str(v) for v in values)}"
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return "box has non-finite coordinates"
    if x1 <= x0 or y1 <= y0:
        return f"empty box ({x0:g}, {y0:g}, {x1:g}, {y1:g}): needs x0 < x1 and y0 < y1"
    return (x0, y0, x1, y1)


def _boxes_csv(path: Path) -> BoxFile:
    columns, rows = _csv_rows(path, "boxes", "path,x0,y0,x1,y1")
    missing = [c for c in ("x0", "y0", "x1", "y1") if c not in columns]
    if missing:
        raise UsageError(f"the boxes file {str(path)!r} needs the columns path,x0,y0,x1,y1 "
                         f"(missing: {', '.join(missing)})")
    result = BoxFile(has_classes="class" in columns)
    ordinal: dict[str, int] = {}
    for line, row in rows:
        key = relative_key(row.get("path", ""))
        if not key:
            continue
        result.listed.setdefault(key)
        values = [row.get(c) for c in ("x0", "y0", "x1", "y1")]
        if not any(values):
            continue  # an image without objects
        ordinal[key] = ordinal.get(key, 0) + 1
        box = _box_from_values(values)
        where = f"{Path(path).name} line {line}"
        if isinstance(box, str):
            result.note(key, f"{where}: {box}; row ignored")
        else:
            result.add(key, BoxObject(box, row.get("object_id") or str(ordinal[key]),
                                      row.get("class") if result.has_classes else None, where))
    return result


def _boxes_coco(path: Path) -> BoxFile:
    try:
        data = json.loads(_read_text(path, "boxes"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"the boxes file {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise UsageError(f"the boxes file {str(path)!r} is not COCO JSON: it needs 'images' and 'annotations' lists")
    names = {img.get("id"): relative_key(str(img.get("file_name", "")))
             for img in data["images"] if isinstance(img, dict)}
    categories = {c.get("id"): str(c.get("name", c.get("id"))) for c in data.get("categories") or []
                  if isinstance(c, dict)}
    result = BoxFile(has_classes=any(isinstance(a, dict) and "category_id" in a for a in data["annotations"]))
    result.listed.update((key, None) for key in names.values() if key)
    for number, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            continue
        key = names.get(ann.get("image_id"))
        if not key:
            continue  # an annotation of an image the file does not list: nothing to attach it to
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            result.note(key, f"annotation {number}: bbox is not [x, y, w, h]; ignored")
            continue
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            result.note(key, f"annotation {number}: bbox {bbox} is not numeric; ignored")
            continue
        box = _box_from_values([x, y, x + w, y + h])
        if isinstance(box, str):
            result.note(key, f"annotation {number}: {box}; ignored")
        else:
            result.add(key, _coco_object(box, ann, number, categories, Path(path).name))
    return result


def _coco_object(box: Box, ann: dict[str, Any], number: int, categories: dict[Any, str], source: str) -> BoxObject:
    """A COCO annotation as a :class:`BoxObject` (category named by ``categories`` when it lists the id)."""
    category = ann.get("category_id")
    name = None if category is None else categories.get(category, str(category))
    object_id = str(ann["id"]) if ann.get("id") is not None else str(number)
    return BoxObject(box, object_id, name, f"{source} annotation {number}", bool(ann.get("iscrowd")))


def parse_boxes(path: Path) -> BoxFile:
    """Read object boxes from a CSV (``path,x0,y0,x1,y1``) or a COCO JSON file (by suffix ``.json``).

    Rows that are not a box (non-numeric, empty or inverted) become notes on their image and are ignored.

    Raises:
        UsageError: unreadable file, missing columns, or a JSON file that is not COCO.
    """
    return _boxes_coco(path) if Path(path).suffix.lower() == ".json" else _boxes_csv(path)


def parse_groups(path: Path, per_object: bool = False) -> GroupFile:
    """Read a groups CSV: ``path`` plus one or more attribute columns (every other column is one attribute).

    Args:
        path: the CSV.
        per_object: an ``object_id`` column is a key, not an attribute: a row with an object id applies to that
            object only (:attr:`GroupFile.objects`), one without to the whole image (detection audits).

    Raises:
        UsageError: unreadable file, no ``path`` column or no attribute column.
    """
    columns, rows = _csv_rows(path, "groups", "path,group (or path plus several attribute columns)")
    keys = ("path", "object_id") if per_object else ("path",)
    attributes = [c for c in columns if c and c not in keys]
    if not attributes:
        raise UsageError(f"the groups file {str(path)!r} has no group column: it needs path,group "
                         "(or path plus several attribute columns)")
    result = GroupFile(columns=attributes)
    for _, row in rows:
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


def _unmatched(kind: str, source: str, keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    return f"{len(keys)} {kind} row(s) of {source} name no audited image ({shown}); they are ignored"


def load_audit_inputs(
    dataset: str | Path,
    labels: str | Path | None,
    class_names: Sequence[str],
    boxes: str | Path | None = None,
    groups: str | Path | None = None,
) -> AuditInputs:
    """List DATASET, read the labels, boxes and groups, and match them up.

    The audited images are the image files under ``dataset`` that have a valid label; a labels row for a file that
    is not there is an error for that path; image files without a label are skipped with one warning. Without
    ``labels`` (the detection audit) the boxes file plays that part: the images it lists are audited (with or
    without objects) and its groups file may hold per-object rows (an ``object_id`` column).

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
    found, find_errors = find_images([root])
    by_key = {_key_of(f, root): f for f in found}
    errors = list(find_errors) + (list(label_file.errors) if label_file is not None else [])
    warnings: list[str] = []
    for key in sorted(set(listing) - set(by_key)):
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
