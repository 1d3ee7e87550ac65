"""Writing a detection audit's outputs from its journal: object and image tables, summary, pictures, dashboard.

Like :mod:`explain.audit_outputs`, everything is rebuilt from the journaled records (sorted by path, objects in file
order) each time, so an interrupted-then-resumed run writes exactly what an uninterrupted one writes. Files:

* ``objects.csv`` / ``objects.jsonl``: one row per ground-truth object (:data:`explain.audit_detection.OBJECT_COLUMNS`
  plus the group columns; the JSON lines hold every field);
* ``images.csv``: one row per photo (detections, true and false positives);
* ``summary.json``, ``dashboard.html``, ``overlays/`` (JPEG pictures of the worst examples) and ``manifest.json``
  (last; one item per object).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explain.audit_detection import IMAGE_COLUMNS, OBJECT_COLUMNS, detection_summary, join_groups
from explain.audit_outputs import OVERLAY_SIDE, _jpeg, _jsonl_text, error_records
from explain.audit_summary import small_group_warnings
from explain.manifest import Manifest, csv_text, safe_stem, write_bytes, write_text
from explain.run import output_stems

if TYPE_CHECKING:
    from PIL import Image

    from explain.audit import AuditResult, Journal
    from explain.audit_detection import DetectionTask
    from explain.audit_inputs import AuditInputs
    from explain.backbones.base import Backbone
    from explain.detection.targets import Detection
    from explain.run import RunSettings

__all__ = ["DETECTION_OUTPUTS", "render_worst", "write_detection_outputs"]

DETECTION_OUTPUTS = {"objects_csv": "objects.csv", "objects_jsonl": "objects.jsonl", "images_csv": "images.csv",
                     "summary": "summary.json", "dashboard": "dashboard.html", "journal": "audit-journal.jsonl"}


def _object_key(record: dict[str, Any]) -> tuple[str, str]:
    return record["path"], str(record["object_id"])


def _detections_of(path: str, objects: Sequence[dict[str, Any]], image: dict[str, Any]) -> list[Detection]:
    """The photo's counted detections (matched and false positives), rebuilt from the records."""
    from explain.detection.targets import Detection

    found = [(r["det_rank"], r["det_class"], r["score"], r["det_box"]) for r in objects
             if r["path"] == path and r.get("matched")]
    found += [(f["rank"], f["class"], f["score"], f["box"]) for f in image.get("false_positive_detections", [])]
    return [Detection(image_index=0, rank=int(rank) - 1, label=int(label), score=float(score),
                      box=tuple(float(v) for v in box), source=-1)  # type: ignore[arg-type]
            for rank, label, score, box in sorted(found)]


def draw_ground_truth(image: Image.Image, box: Sequence[float]) -> None:
    """Draw an object's box dashed, white on black, so it never looks like a detection (solid, class colours)."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 200))
    dash = 4 * width
    x0, y0, x1, y1 = (float(v) for v in box)
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = max(abs(bx - ax), abs(by - ay))
        for start in range(0, max(1, int(length)), 2 * dash):  # one dash per step, not per pixel
            t0, t1 = start / max(length, 1.0), min(start + dash, length) / max(length, 1.0)
            segment = (ax + (bx - ax) * t0, ay + (by - ay) * t0, ax + (bx - ax) * t1, ay + (by - ay) * t1)
            draw.line(segment, fill=(0, 0, 0), width=width + 2)
            draw.line(segment, fill=(255, 255, 255), width=width)


def render_worst(task: DetectionTask, inputs: AuditInputs, objects: Sequence[dict[str, Any]],
                 images: Sequence[dict[str, Any]], chosen: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """Thumbnails of the chosen objects: the photo with its counted detections (thin, untagged) and the object's
    box (dashed white); for a matched object its detection's map underneath and that detection framed and
    tagged."""
    from explain.detection.figures import blend, draw_detections, to_pil
    from explain.images import load_image

    by_key = {_object_key(r): r for r in objects}
    image_of = {r["path"]: r for r in images}
    file_of = dict(zip(inputs.keys, inputs.files, strict=True))
    names = task.backbone.class_names
    pictures: dict[tuple[str, str], Image.Image] = {}
    for key in chosen:
        record = by_key[key]
        photo = load_image(file_of[key[0]].path, display=file_of[key[0]].display).image
        detections = _detections_of(key[0], objects, image_of[key[0]])
        if record.get("matched"):
            heat = task.detection_map(photo, int(record["det_rank"]) - 1)
            base = to_pil(blend(photo, heat)) if heat is not None else photo
            picture = draw_detections(base, detections, names, explained=[int(record["det_rank"]) - 1], tag_all=False)
        else:
            picture = draw_detections(photo, detections, names, tag_all=False)
        draw_ground_truth(picture, record["box"])
        picture.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE))
        pictures[key] = picture
    return pictures


def _manifest_item(record: dict[str, Any], image: dict[str, Any], inputs: AuditInputs,
                   overlay_file: str | None) -> dict[str, Any]:
    width, height = image["width"], image["height"]
    detection = None
    if record.get("matched"):
        detection = {"rank": record["det_rank"], "index": record["det_class"], "name": record["det_name"],
                     "score": record["score"], "box": record["det_box"]}
    return {
        "input": (inputs.root / record["path"]).as_posix(), "input_sha256": image.get("input_sha256"),
        "geometry": {"crop_box": [0.0, 0.0, float(width), float(height)], "model_input": [height, width]},
        "object": {"id": record["object_id"], "index": record["class"], "name": record["class_name"],
                   "box": record["box"], "size": record["size"]},
        "matched": record["matched"], "detection": detection, "iou": record["iou"],
        "energy_in_box": record["energy_in_box"],
        "outputs": {"overlay": overlay_file} if overlay_file else {},
    }


def _outside_warnings(objects: Sequence[dict[str, Any]]) -> list[str]:
    return [f"{r['path']} object {r['object_id']}: {note}" for r in objects if r.get("box_status") == "outside"
            for note in r.get("notes", [])]


def write_detection_outputs(backbone: Backbone, task: DetectionTask, inputs: AuditInputs, journal: Journal,
                            out: Path, settings: RunSettings, layer: str) -> AuditResult:
    """Rebuild every output of a detection audit from ``journal`` and write the manifest last."""
    from explain.audit import AuditResult
    from explain.dashboard import render_detection_dashboard
    from explain.html import png_data_uri

    records = journal.records()
    objects = [r for r in records if r.get("kind") == "object"]
    images = [r for r in records if r.get("kind") == "image"]
    taken = sorted({k for r in records for k in r} | set(OBJECT_COLUMNS) | set(IMAGE_COLUMNS))
    group_fields = join_groups(objects, images, inputs, taken)
    write_text(out / DETECTION_OUTPUTS["objects_csv"], csv_text(objects, [*OBJECT_COLUMNS, *group_fields]))
    write_text(out / DETECTION_OUTPUTS["objects_jsonl"], _jsonl_text(objects))
    write_text(out / DETECTION_OUTPUTS["images_csv"], csv_text(images, [*IMAGE_COLUMNS, *group_fields]))
    errors = error_records(inputs, journal)
    opts = task.opts
    body = detection_summary(objects, images, group_fields, opts.worst)
    warnings = [*inputs.warnings, *_outside_warnings(objects), *small_group_warnings(body["groups"])]
    summary = {
        "command": "audit", "task": "detection", "dataset": inputs.root.as_posix(), "model": backbone.name,
        "layer": None if opts.method == "guided" else layer, "method": opts.method,
        "options": {"iou": opts.iou, "score_threshold": opts.score_threshold, "min_size": opts.min_size},
        "counts": {"images": len(images), "objects": len(objects), "errors": len(errors)},
        **body,
        "errors": errors, "warnings": warnings,
    }
    write_text(out / DETECTION_OUTPUTS["summary"],
               json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    chosen = list(dict.fromkeys((w["path"], w["object_id"]) for rows in summary["worst"].values() for w in rows))
    pictures = render_worst(task, inputs, objects, images, chosen) if chosen else {}
    overlay_files = {}
    paths = list(dict.fromkeys(key[0] for key in pictures))
    stems = dict(zip(paths, output_stems(paths)))  # a.jpg, a.png: two names
    for key, picture in pictures.items():
        overlay_files[key] = f"overlays/{stems[key[0]]}_object{safe_stem(str(key[1]))}.jpg"
        write_bytes(out / overlay_files[key], _jpeg(picture))
    uris = {f"{k[0]}#{k[1]}": png_data_uri(p, fmt="JPEG") for k, p in pictures.items()}
    write_text(out / DETECTION_OUTPUTS["dashboard"], render_detection_dashboard(summary, objects, uris, opts.style))
    manifest = Manifest(command="audit", argv=settings.argv, model=backbone.manifest_record(),
                        extra={"task": "detection", "dataset": inputs.root.as_posix(), "layer": summary["layer"],
                               "method": opts.method, "outputs": dict(DETECTION_OUTPUTS)})
    image_of = {r["path"]: r for r in images}
    manifest.items = [_manifest_item(r, image_of[r["path"]], inputs, overlay_files.get(_object_key(r)))
                      for r in objects]
    manifest.errors = errors
    manifest.warnings = warnings
    manifest.save(out)
    return AuditResult(manifest=manifest, summary=summary, out=out, records=records)
