"""Writing an audit's outputs from its journal: CSV, JSON lines, summary, overlays, dashboard, manifest.

Every file is rebuilt from the journaled records (sorted by path) each time, so an interrupted-then-resumed run
writes exactly what an uninterrupted one writes. Files are written atomically and ``manifest.json`` comes last.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explain.audit_summary import small_group_warnings, summarize
from explain.manifest import Manifest, csv_text, write_bytes, write_text
from explain.run import output_stems

if TYPE_CHECKING:
    from PIL import Image

    from explain.audit import AuditOptions, AuditResult, Journal
    from explain.audit_inputs import AuditInputs
    from explain.audit_task import AuditTask
    from explain.backbones.base import Backbone
    from explain.run import RunSettings

__all__ = ["OUTPUTS", "group_field", "write_outputs"]

OUTPUTS = {"images_csv": "images.csv", "images_jsonl": "images.jsonl", "summary": "summary.json",
           "dashboard": "dashboard.html", "journal": "audit-journal.jsonl"}
OVERLAY_SIDE = 320


def group_field(column: str, taken: Sequence[str]) -> str:
    """The record field of a group column: its own name, or ``group_<name>`` when a record field has that name."""
    return column if column not in taken else f"group_{column}"


def _jsonl_text(records: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n" for r in records)


def _join_groups(records: list[dict[str, Any]], inputs: AuditInputs, taken: Sequence[str]) -> list[str]:
    fields = [group_field(c, taken) for c in inputs.groups.columns]
    for record in records:
        values = inputs.group_of(record["path"])
        for column, name in zip(inputs.groups.columns, fields, strict=True):
            record[name] = values[column]
    return fields


# --------------------------------------------------------------------------------------------------------------
# Overlays of the worst examples


def _draw_boxes(image: Image.Image, boxes: Sequence[tuple[float, float, float, float]]) -> None:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 160))
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0, y0, x1, y1), outline=(255, 255, 255), width=width + 2)
        draw.rectangle((x0, y0, x1, y1), outline=(20, 200, 60), width=width)


def render_overlays(backbone: Backbone, inputs: AuditInputs, paths: Sequence[str], layer: str,
                    settings: RunSettings) -> dict[str, Image.Image]:
    """Grad-CAM++ overlays (predicted class, boxes drawn in green) of a few images, as thumbnails."""
    from explain.cam import compute_cams
    from explain.data import iter_batches
    from explain.figures import map_to_image, overlay
    from explain.targets import TopK

    by_key = dict(zip(inputs.keys, inputs.files, strict=True))
    key_of = {f.display: k for k, f in by_key.items()}
    files = [by_key[p] for p in paths if p in by_key]
    result: dict[str, Image.Image] = {}
    for batch in iter_batches(files, backbone.preprocess, batch_size=settings.batch_size):
        if batch.tensor is None:
            continue
        cams = compute_cams(backbone.model, batch.tensor.to(settings.device), layer, [TopK(1)], "gradcam++")
        for sample, cam in zip(batch.samples, cams.maps, strict=True):
            image = sample.loaded.image
            picture = overlay(image, map_to_image(cam.map, image.size, sample.geometry.crop_box), alpha=0.5)
            key = key_of[sample.loaded.display]
            _draw_boxes(picture, inputs.boxes.boxes.get(key, []))
            picture.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE))
            result[key] = picture
    return result


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85, optimize=True)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------------
# Manifest and summary


def _display(inputs: AuditInputs, key: str) -> str:
    return (inputs.root / key).as_posix()


def _manifest_item(record: dict[str, Any], inputs: AuditInputs, backbone: Backbone,
                   overlay_file: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "input": _display(inputs, record["path"]),
        "input_sha256": record.get("input_sha256"),
        "geometry": {"crop_box": record.get("crop_box"), "model_input": list(backbone.input_size)},
        "prediction": [{"index": record["pred_class"], "name": record["pred_name"], "prob": record["prob"]}],
        "target": {"index": record["true_class"], "name": record["true_name"], "prob": record["true_prob"]},
        "correct": record["correct"],
        "outputs": {"overlay": overlay_file} if overlay_file else {},
    }
    return item


def error_records(inputs: AuditInputs, journal: Journal) -> list[dict[str, str]]:
    """The manifest's ``errors``: inputs refused while reading the ground truth and images that failed in a run."""
    errors = [{"input": _display(inputs, e.path), "error": e.reason} for e in inputs.errors]
    errors += [{"input": _display(inputs, e["input"]), "error": e["error"]} for e in journal.errors()]
    return sorted(errors, key=lambda e: (e["input"], e["error"]))


def write_outputs(backbone: Backbone, task: AuditTask, inputs: AuditInputs, journal: Journal, opts: AuditOptions,
                  out: Path, settings: RunSettings) -> AuditResult:
    """Rebuild every output of the audit from ``journal`` and write the manifest last."""
    from explain.audit import AuditResult
    from explain.dashboard import render_dashboard
    from explain.html import png_data_uri

    layer = task.config().get("layer") or backbone.default_layer
    records = journal.records()
    task.merge_final(records, journal.final)
    group_fields = _join_groups(records, inputs, list(records[0]) if records else list(task.columns))
    columns = [*task.columns, *group_fields]
    write_text(out / OUTPUTS["images_csv"], csv_text(records, columns))
    write_text(out / OUTPUTS["images_jsonl"], _jsonl_text(records))
    errors = error_records(inputs, journal)
    body = summarize(records, group_fields, steps=opts.steps, shift=opts.shift, worst=opts.worst,
                     sanity=(journal.final or {}).get("sanity"))
    warnings = [*inputs.warnings, *small_group_warnings(body["groups"])]
    summary = {
        "command": "audit", "task": task.name, "dataset": inputs.root.as_posix(), "model": backbone.name,
        "layer": layer, "method": "gradcam++",
        "options": {"sanity": opts.sanity, "randomisation": opts.randomisation, "cascade": opts.cascade,
                    "shift": opts.shift, "steps": opts.steps, "seed": opts.seed},
        "counts": {"images": len(records), "errors": len(errors)}, **body,
        "errors": errors, "warnings": warnings,
    }
    write_text(out / OUTPUTS["summary"], json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    worst_paths = list(dict.fromkeys(p for paths in body["worst"].values() for p in paths))
    pictures = render_overlays(backbone, inputs, worst_paths, layer, settings) if worst_paths else {}
    overlay_files = {}
    for (key, picture), stem in zip(pictures.items(), output_stems(list(pictures))):  # a.jpg, a.png: two files
        overlay_files[key] = f"overlays/{stem}.jpg"
        write_bytes(out / overlay_files[key], _jpeg(picture))
    uris = {key: png_data_uri(picture, fmt="JPEG") for key, picture in pictures.items()}
    write_text(out / OUTPUTS["dashboard"], render_dashboard(summary, records, uris, opts.style))
    manifest = Manifest(command="audit", argv=settings.argv, model=backbone.manifest_record(),
                        extra={"task": task.name, "dataset": inputs.root.as_posix(), "layer": layer,
                               "method": "gradcam++", "outputs": dict(OUTPUTS)})
    manifest.items = [_manifest_item(r, inputs, backbone, overlay_files.get(r["path"])) for r in records]
    manifest.errors = errors
    manifest.warnings = warnings
    manifest.save(out)
    return AuditResult(manifest=manifest, summary=summary, out=out, records=records)
