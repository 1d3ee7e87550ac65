"""`audit --task detection`: matching by hand, a hand-built detector with known answers, groups, resume, the
dashboard in a browser, and the command line on a user's checkpoint with a COCO file."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from explain.audit_detection import (
    DetectionAuditOptions, DetectionTask, detection_summary, match_detections, object_energy, resolve_ground_truth,
    run_detection_audit, size_bucket,
)
from explain.audit_inputs import parse_boxes
from explain.audit_summary import describe_gap, small_group_warnings
from explain.backbones.base import Backbone
from explain.detection.models import DetectionPreprocess
from explain.run import RunSettings
from tests.test_detection_models import tiny_detector

NAMES = ["__background__", "red", "green"]
RED_SCORE = math.exp(10) / (math.exp(1) + math.exp(10) + math.exp(0))  # SSD softmax of logits (bg 1, red 10, 0)


# --------------------------------------------------------------------------------------------------------------
# Pure parts: matching, sizes, ground truth


def test_matching_is_greedy_by_score_same_class_and_ignores_crowds() -> None:
    objects = [((0, 0, 10, 10), 1), ((20, 0, 30, 10), 2), ((0, 20, 10, 30), None)]
    detections = [((0, 0, 10, 10), 1, 0.9),    # a perfect duplicate, but less confident than the next one
                  ((1, 0, 11, 10), 1, 0.95),   # takes object 0 first: IoU 90 / 110
                  ((20, 0, 30, 10), 1, 0.8),   # right place, wrong class: a false positive
                  ((0, 20, 10, 25), 2, 0.6),   # class-agnostic object 2, IoU 50 / 100 = 0.5 exactly
                  ((45, 45, 55, 55), 1, 0.7)]  # on a crowd region: ignored
    m = match_detections(objects, detections, iou=0.5, crowds=[((40, 40, 60, 60), None)])
    assert m.detection_of == [1, None, 3]
    assert m.iou[0] == pytest.approx(90 / 110) and m.iou[1] is None and m.iou[2] == pytest.approx(0.5)
    assert m.best_iou == pytest.approx([1.0, 1.0, 0.5])
    assert m.false_positives == [0, 2] and m.ignored == [4]
    # A stricter IoU misses object 2; with no detections everything is missed with best IoU 0.
    assert match_detections(objects, detections, iou=0.51).detection_of == [1, None, None]
    empty = match_detections(objects, [], iou=0.5)
    assert empty.detection_of == [None] * 3 and empty.best_iou == [0.0] * 3 and empty.false_positives == []


def test_size_buckets_are_cocos() -> None:
    assert [size_bucket(a) for a in (31 * 33, 32 * 32, 95 * 97, 96 * 96)] == ["small", "medium", "medium", "large"]


def test_object_energy_by_hand() -> None:
    heat = torch.zeros(1, 64, 64)
    heat[0, 5:10, 5:10] = 1.0     # 25 units inside the box
    heat[0, 3:5, 5:10] = 1.0      # 10 units in the ring out to 2x (box 5..10 -> 2.5..12.5)
    heat[0, 60:62, 60:62] = 2.5   # 10 units elsewhere, more than 15 px from the box
    values, zero = object_energy(torch.stack([heat[0], torch.zeros(64, 64)]), [(5.0, 5.0, 10.0, 10.0)] * 2)
    assert zero["energy_in_box"] is None and zero["pointing_hit"] is None and "zero everywhere" in zero["notes"][0]
    assert values["energy_in_box"] == pytest.approx(25 / 45, rel=1e-5)
    assert values["energy_around_box"] == pytest.approx(10 / 45, rel=1e-5)
    assert values["pointing_hit"] is False  # the maximum (2.5) lies far from the box


def test_ground_truth_from_csv_and_coco(tmp_path: Path) -> None:
    gt = tmp_path / "gt.csv"
    gt.write_text("path,x0,y0,x1,y1,class,object_id\na.png,1,2,3,4,Red,\na.png,5,5,9,9,2,cup\nb.png,,,,,,\n"
                  "a.png,1,1,2,2,blue,\na.png,1,1,2,2,__background__,\nc.png,3,3,1,1,red,\n")
    boxes = parse_boxes(gt)
    assert list(boxes.listed) == ["a.png", "b.png", "c.png"] and boxes.has_classes
    truth, errors = resolve_ground_truth(boxes, NAMES)
    assert [(o.object_id, o.label, o.box) for o in truth["a.png"]] == [("1", 1, (1, 2, 3, 4)), ("cup", 2, (5, 5, 9, 9))]
    reasons = {e.reason for e in errors}
    assert any("gt.csv line 5: unknown class name 'blue'" in r for r in reasons)
    assert any("line 6: class '__background__' is the background" in r for r in reasons)
    assert any(e.path == "c.png" and "empty box" in e.reason for e in errors)
    coco = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "empty.png"}],
            "categories": [{"id": 7, "name": "red"}, {"id": 8, "name": "zebra"}],
            "annotations": [{"id": 11, "image_id": 1, "bbox": [0, 0, 4, 4], "category_id": 7},
                            {"id": 12, "image_id": 1, "bbox": [0, 0, 4, 4], "category_id": 8},
                            {"id": 13, "image_id": 1, "bbox": [8, 8, 4, 4], "category_id": 7, "iscrowd": 1}]}
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    boxes = parse_boxes(tmp_path / "gt.json")
    assert list(boxes.listed) == ["a.png", "empty.png"]
    truth, errors = resolve_ground_truth(boxes, NAMES)
    assert [(o.object_id, o.label, o.crowd) for o in truth["a.png"]] == [("11", 1, False), ("13", 1, True)]
    assert len(errors) == 1 and "unknown class name 'zebra'" in errors[0].reason


def test_summary_and_group_gaps_by_hand() -> None:
    def obj(path: str, matched: bool | None, light: str, **kw: Any) -> dict[str, Any]:
        return {"kind": "object", "path": path, "object_id": "1", "matched": matched, "size": "small",
                "light": light, "area": 10.0, "score": kw.get("score"), "iou": kw.get("iou"),
                "energy_in_box": kw.get("energy"), "area_share": 0.1 if matched else None, "best_iou": 0.0}

    objects = [obj("a", True, "day", score=0.9, iou=0.8, energy=0.6), obj("a", False, "day"),
               obj("b", True, "night", score=0.7, iou=0.6, energy=0.2), obj("b", None, "night")]
    images = [{"path": "a", "detections": 2, "true_positives": 1, "false_positives": 1, "light": "day"},
              {"path": "b", "detections": 1, "true_positives": 1, "false_positives": 0, "light": "night"}]
    s = detection_summary(objects, images, ["light"], worst=5)
    o = s["overall"]
    assert (o["objects"], o["detected"], o["recall"], o["objects_outside_image"]) == (3, 2, pytest.approx(2 / 3), 1)
    assert o["precision"] == pytest.approx(2 / 3) and o["false_positives_per_image"] == 0.5
    light = s["groups"]["light"]
    assert light["groups"]["day"]["recall"] == 0.5 and light["groups"]["night"]["recall"] == 1.0
    assert light["gap"]["recall"] == {"gap": 0.5, "highest": "night", "lowest": "day", "tie": False,
                                      "n": {"day": 2, "night": 1}, "undefined": []}  # b's outside object: not counted
    energy = light["gap"]["mean_energy_in_box"]
    assert (energy["gap"], energy["highest"], energy["lowest"]) == (0.4, "day", "night")
    fp = light["gap"]["false_positives_per_image"]
    assert fp["highest"] == "day" and fp["n"] == {"day": 1, "night": 1}  # per-image rate: counts images
    assert s["groups"]["size"]["groups"]["small"]["objects"] == 3
    assert s["worst"]["missed"] == [{"path": "a", "object_id": "1"}]
    assert s["worst"]["off_object"] == [{"path": "b", "object_id": "1"}]  # 0.2 < 0.5; a's 0.6 is on its object


# --------------------------------------------------------------------------------------------------------------
# A hand-built detector with known answers


def tiny_backbone() -> Backbone:
    """The coloured-squares SSD of test_detection_models, its anchors shrunk to one 8 x 8 cell: a square filling a
    cell is detected with exactly that cell as its box (the two anchors coincide; NMS keeps one)."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

    model = tiny_detector()
    model.anchor_generator = DefaultBoxGenerator([[]], min_ratio=0.125, max_ratio=0.125)
    return Backbone(name="tiny_ssd", model=model, preprocess=DetectionPreprocess(crop=(64, 64)), class_names=NAMES,
                    default_layer="backbone.body.0", feature_layer="backbone.body.0", weights="hand-set",
                    weights_sha256=None, extra={"task": "detection"})


def photo(path: Path, squares: list[tuple[tuple[int, int, int, int], int]]) -> None:
    """A black 64 x 64 photo with squares ``((x0, y0, x1, y1), channel)`` (0 red, 1 green)."""
    pixels = np.zeros((64, 64, 3), np.uint8)
    for (x0, y0, x1, y1), channel in squares:
        pixels[y0:y1, x0:x1, channel] = 255
    Image.fromarray(pixels).save(path)


def tiny_dataset(tmp: Path) -> tuple[Path, Path, Path]:
    root = tmp / "ds"
    root.mkdir()
    photo(root / "a.png", [((16, 16, 24, 24), 0), ((40, 40, 48, 48), 1)])  # both found
    photo(root / "b.png", [((8, 40, 16, 48), 0), ((40, 40, 48, 48), 1)])   # the green one is not annotated
    photo(root / "c.png", [((24, 8, 32, 16), 0)])                           # annotated as empty
    photo(root / "d.png", [((16, 16, 24, 24), 0)])                          # annotated with the wrong class
    photo(root / "e.png", [((16, 16, 24, 24), 0), ((40, 40, 56, 48), 0)])  # a second, unannotated red object
    (root / "broken.png").write_bytes(b"not a png")
    gt = tmp / "gt.csv"
    gt.write_text("path,x0,y0,x1,y1,class\n"
                  "a.png,16,16,24,24,red\na.png,40,40,48,48,green\na.png,100,100,120,120,red\n"
                  "b.png,8,40,16,50,red\nb.png,40,8,48,16,green\nb.png,1,1,5,5,blue\n"
                  "c.png,,,,,\nd.png,16,16,24,24,green\ne.png,16,16,24,24,red\nbroken.png,0,0,8,8,red\n")
    groups = tmp / "groups.csv"
    groups.write_text("path,object_id,light\na.png,,day\nb.png,,night\nb.png,2,dusk\nd.png,,day\ne.png,,day\n"
                      "e.png,9,dusk\n")
    return root, gt, groups


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("tiny_audit")
    root, gt, groups = tiny_dataset(tmp)
    backbone = tiny_backbone()
    opts = DetectionAuditOptions(boxes=gt, groups=groups, worst=4)
    result = run_detection_audit(backbone, root, opts, tmp / "out", RunSettings(batch_size=2))
    return result, backbone, tmp


def objects_of(result: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["path"], r["object_id"]): r for r in result.records if r["kind"] == "object"}


def test_detected_objects_have_the_hand_derived_score_iou_and_all_the_energy(tiny_run: Any) -> None:
    result, _, _ = tiny_run
    objects = objects_of(result)
    for key, box, iou in ((("a.png", "1"), [16, 16, 24, 24], 1.0), (("a.png", "2"), [40, 40, 48, 48], 1.0),
                          (("b.png", "1"), [8, 40, 16, 48], 64 / 80)):  # b's box is 2 px taller than the square
        r = objects[key]
        assert r["matched"] is True and r["det_box"] == box
        assert r["score"] == pytest.approx(RED_SCORE, rel=1e-5) and r["iou"] == pytest.approx(iou, rel=1e-5)
        # Grad-CAM++ at the colour layer: only the detection's own colour channel has a gradient, so the map is
        # that colour's square, which lies inside the object's box.
        assert r["energy_in_box"] == pytest.approx(1.0) and r["energy_around_box"] == 0.0 and r["pointing_hit"]
    assert objects[("a.png", "2")]["det_name"] == "green" and objects[("a.png", "2")]["size"] == "small"
    assert objects[("b.png", "1")]["area_share"] == pytest.approx(80 / 4096, rel=1e-5)


def test_missed_objects_false_positives_and_the_class_rule(tiny_run: Any) -> None:
    result, _, _ = tiny_run
    objects = objects_of(result)
    missed = objects[("b.png", "2")]  # nothing green up there
    assert missed["matched"] is False and missed["best_iou"] == 0.0
    assert missed["energy_in_box"] is None and missed["score"] is None
    wrong = objects[("d.png", "1")]  # a red square annotated green: found at IoU 1, but not the same class
    assert wrong["matched"] is False and wrong["best_iou"] == 1.0
    images = {r["path"]: r for r in result.records if r["kind"] == "image"}
    assert {p: r["false_positives"] for p, r in images.items()} == {"a.png": 0, "b.png": 1, "c.png": 1, "d.png": 1,
                                                                     "e.png": 2}
    (fp,) = images["b.png"]["false_positive_detections"]
    assert fp["name"] == "green" and fp["box"] == [40, 40, 48, 48]
    overall = result.summary["overall"]
    assert (overall["objects"], overall["detected"], overall["false_positives"]) == (6, 4, 5)
    assert overall["precision"] == pytest.approx(4 / 9) and overall["recall"] == pytest.approx(4 / 6)


def test_a_map_shared_with_an_unannotated_object_looks_past_its_own(tiny_run: Any) -> None:
    result, _, _ = tiny_run
    e = objects_of(result)[("e.png", "1")]
    # The red channel's map covers both red squares: 64 of the 192 red pixels are the object's; the other square
    # lies beyond the ring out to twice the box.
    assert e["matched"] is True and e["iou"] == 1.0
    assert e["energy_in_box"] == pytest.approx(1 / 3, rel=1e-5) and e["energy_around_box"] == 0.0
    assert result.summary["worst"]["off_object"] == [{"path": "e.png", "object_id": "1"}]


def test_bad_rows_and_boxes_outside_are_reported_not_fatal(tiny_run: Any) -> None:
    result, _, tmp = tiny_run
    outside = objects_of(result)[("a.png", "3")]
    assert outside["box_status"] == "outside" and outside["matched"] is None
    assert any("lies outside the 64x64 image" in n for n in outside["notes"])
    assert any("a.png object 3" in w for w in result.manifest.warnings)
    assert any("1 per-object group row(s) name no audited object (e.png object 9)" in w
               for w in result.manifest.warnings)
    errors = {Path(e["input"]).name: e["error"] for e in result.manifest.errors}
    assert set(errors) == {"b.png", "broken.png"}
    assert "unknown class name 'blue'" in errors["b.png"]
    rows = list(csv.DictReader((tmp / "out" / "objects.csv").open()))
    assert len(rows) == len(result.manifest.items) == 7  # a 1-3, b 1-2, d 1, e 1 (the blue row, broken.png fail)
    assert rows[0]["box"] == "16.0; 16.0; 24.0; 24.0" and rows[0]["light"] == "day"


def test_group_recall_gaps_by_hand(tiny_run: Any) -> None:
    result, _, _ = tiny_run
    light = result.summary["groups"]["light"]
    # day: a1, a2, e1 found, d1 missed (a3 lies outside: not counted); night: b1 found; dusk: b2 missed
    recall = {n: g["recall"] for n, g in light["groups"].items()}
    assert recall == {"(no group)": None, "day": pytest.approx(3 / 4), "dusk": 0.0, "night": 1.0}
    assert light["gap"]["recall"] == {"gap": 1.0, "highest": "night", "lowest": "dusk", "tie": False,
                                      "n": {"(no group)": 0, "day": 4, "dusk": 1, "night": 1},
                                      "undefined": ["(no group)"]}
    # false positives per image, image-level groups: day = a (0), d (1), e (2); night = b (1); c has no group
    fp = {n: g["false_positives_per_image"] for n, g in light["groups"].items()}
    assert fp == {"(no group)": 1.0, "day": 1.0, "dusk": None, "night": 1.0}
    # a tie: two different groups and "no gap" (this read "(no group) over (no group)"); dusk has no images
    tie = light["gap"]["false_positives_per_image"]
    assert (tie["gap"], tie["tie"], tie["highest"], tie["lowest"]) == (0, True, "(no group)", "day")
    assert tie["undefined"] == ["dusk"] and tie["n"] == {"(no group)": 1, "day": 3, "dusk": 0, "night": 1}
    assert describe_gap("false_positives_per_image", tie) == (
        "no false positives per image gap between (no group) n=1, day n=3 and night n=1; undefined for dusk n=0")
    assert "group 'night' (by light) has only 1 object: its rates are unreliable" in small_group_warnings(
        result.summary["groups"])
    assert light["groups"]["day"]["mean_energy_in_box"] == pytest.approx((1 + 1 + 1 / 3) / 3, rel=1e-5)
    assert result.summary["groups"]["size"]["groups"]["small"]["recall"] == pytest.approx(4 / 6)


def test_model_left_as_found(tiny_run: Any) -> None:
    _, backbone, _ = tiny_run
    model = backbone.model
    assert model.score_thresh == 0.5 and not model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())
    assert "postprocess_detections" not in model.__dict__
    assert all(p.grad is None for p in model.parameters())


class Crash(Exception):
    pass


class CrashingTask(DetectionTask):
    """Fails on its ``crash_at``-th batch (after journaling the earlier ones)."""

    crash_at: int | None = None

    def records(self, batch: Any, keys: Any) -> list[dict[str, Any]]:
        calls = getattr(self, "calls", 0)
        self.calls = calls + 1
        if self.crash_at is not None and calls == self.crash_at:
            raise Crash()
        return super().records(batch, keys)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tiny_run: Any, tmp_path: Path) -> None:
    result, backbone, tmp = tiny_run
    root, gt, groups = tmp / "ds", tmp / "gt.csv", tmp / "groups.csv"
    opts = DetectionAuditOptions(boxes=gt, groups=groups, worst=4)

    def factory(crash_at: int | None) -> Any:
        def build(*args: Any) -> DetectionTask:
            task = CrashingTask(*args)
            task.crash_at = crash_at
            return task
        return build

    with pytest.raises(Crash):
        run_detection_audit(backbone, root, opts, tmp_path, RunSettings(batch_size=1), task_factory=factory(3))
    assert not (tmp_path / "manifest.json").exists()
    journal = (tmp_path / "audit-journal.jsonl").read_text().splitlines()
    assert len(journal) == 5  # header + a, b, broken (an error), c; d crashed
    run_detection_audit(backbone, root, opts, tmp_path, RunSettings(batch_size=1), task_factory=factory(None))
    clean = tmp_path.parent / f"{tmp_path.name}_clean"
    run_detection_audit(backbone, root, opts, clean, RunSettings(batch_size=1))
    for name in ("objects.csv", "objects.jsonl", "images.csv", "summary.json"):
        assert (tmp_path / name).read_bytes() == (clean / name).read_bytes(), name
    # batches of 1 give the same records as the fixture's batches of 2
    assert (clean / "objects.jsonl").read_bytes() == (tmp / "out" / "objects.jsonl").read_bytes()


def test_dashboard_loads_cleanly_in_a_browser(tiny_run: Any, tmp_path: Path) -> None:
    from browser import load_page

    _, _, tmp = tiny_run
    page = tmp / "out" / "dashboard.html"
    html = page.read_text()
    assert "<script" not in html.lower() and "http://" not in html and "https://" not in html
    loaded = load_page(page, screenshot=tmp_path / "dashboard.png")
    assert loaded.broken_images == [] and loaded.console_errors == [] and loaded.dialogs == []
    for text in ("Detection audit of", "Missed objects", "By size", "By light", "Most confident false positives",
                 "Inputs that failed (2)"):
        assert text in loaded.text, text
    assert loaded.images >= 8
    overlays = [i["outputs"]["overlay"] for i in json.loads((tmp / "out" / "manifest.json").read_text())["items"]
                if i["outputs"]]
    assert overlays and all((tmp / "out" / o).is_file() for o in overlays)


def test_user_text_is_escaped_in_the_dashboard() -> None:
    from explain.dashboard import render_detection_dashboard

    evil = "<img src=x onerror=alert(1)>"
    objects = [{"kind": "object", "path": f"{evil}.png", "object_id": "<q>7</q>", "class": 1, "class_name": "<i>c",
                "matched": False, "size": "small", "area": 4.0, "best_iou": 0.0, "g": "<script>"}]
    images = [{"path": f"{evil}.png", "detections": 1, "true_positives": 0, "false_positives": 1, "g": "<script>",
               "false_positive_detections": [{"rank": 1, "class": 1, "name": "<u>n", "score": 0.9,
                                              "box": [0, 0, 1, 1]}]}]
    summary = {"dataset": "<ds>", "model": "m", "method": "gradcam++", "layer": "l",
               "options": {"iou": 0.5, "score_threshold": 0.5}, "counts": {"images": 1, "objects": 1, "errors": 1},
               **detection_summary(objects, images, ["g"], worst=3),
               "errors": [{"input": "<x>", "error": "<y>"}], "warnings": ["<w>"]}
    html = render_detection_dashboard(summary, objects, {})
    for raw in ("<img src=x", "<q>7", "<i>c", "<script>", "<ds>", "<x>", "<w>", "<u>n"):
        assert raw not in html
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in html


# --------------------------------------------------------------------------------------------------------------
# The command line: a user's checkpoint with custom classes and a COCO file

DETECTOR = "fasterrcnn_mobilenet_v3_large_fpn"
runner = CliRunner()


def audit(*args: str) -> Any:
    from cli.main import app

    return runner.invoke(app, ["audit", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Random Faster R-CNN weights for background + 2 classes, saved nested and DataParallel-prefixed."""
    from explain.backbones import load_backbone

    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = load_backbone(DETECTOR, "none", num_classes=3).model
    with torch.no_grad():
        for p in model.parameters():  # torchvision's init makes every score tie
            p.add_(torch.randn_like(p) * 0.05)
    torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in model.state_dict().items()}}, folder / "pets.pth")
    (folder / "pets.txt").write_text("tabby\nastronaut\n")
    return folder / "pets.pth", folder / "pets.txt"


def first_detection(weights: Path, classes: Path, picture: Path) -> tuple[list[float], str]:
    """The checkpoint's most confident detection on ``picture`` at the audit's settings (the test's ground truth)."""
    from explain.backbones import load_backbone
    from explain.detection.engine import trace_detector
    from explain.detection.models import configure_detector
    from explain.images import load_image

    backbone = load_backbone(DETECTOR, str(weights), classes=classes)
    configure_detector(backbone.model, score_threshold=0.3, min_size=160)
    x = backbone.preprocess(load_image(picture).image)
    with torch.no_grad():
        trace, _ = trace_detector(backbone.model.eval(), [x])
    best = trace.detections[0][0]
    return list(best.box), backbone.class_names[best.label]


def test_cli_end_to_end_with_coco_ground_truth(checkpoint: tuple[Path, Path], samples: Path, tmp_path: Path) -> None:
    weights, classes = checkpoint
    root = tmp_path / "ds"
    root.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        (root / name).write_bytes((samples / name).read_bytes())
    box, name = first_detection(weights, classes, root / "chelsea.png")
    x0, y0, x1, y1 = box
    coco = {"images": [{"id": 1, "file_name": "chelsea.png"}, {"id": 2, "file_name": "coffee.png"}],
            "categories": [{"id": 1, "name": name}, {"id": 2, "name": "zebra"}],
            "annotations": [{"id": 10, "image_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": 1},
                            {"id": 11, "image_id": 1, "bbox": [900, 900, 20, 20], "category_id": 1},
                            {"id": 12, "image_id": 2, "bbox": [10, 10, 50, 50], "category_id": 2}]}
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    result = audit(str(root), "--task", "detection", "--boxes", str(tmp_path / "gt.json"), "--model", DETECTOR,
                   "--weights", str(weights), "--classes", str(classes), "--min-size", "160", "--score-threshold",
                   "0.3", "--method", "gradcam", "--worst", "2", "--out", str(out))
    assert result.exit_code == 1, result.output  # the zebra row failed, the rest was audited
    assert "unknown class name 'zebra'" in result.output and "lies outside the 451x300 image" in result.output
    assert "recall" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "detection" and manifest["model"]["num_classes"] == 3
    items = {i["object"]["id"]: i for i in manifest["items"]}
    assert set(items) == {"10", "11"}
    found = items["10"]
    assert found["matched"] is True and found["iou"] == pytest.approx(1.0, abs=1e-4)
    assert found["detection"]["rank"] == 1 and found["detection"]["name"] == name
    assert 0.0 <= found["energy_in_box"] <= 1.0 and items["11"]["matched"] is None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"images": 2, "objects": 2, "errors": 1}
    assert summary["overall"]["recall"] == 1.0 and summary["overall"]["false_positives"] >= 0
    assert (out / "dashboard.html").stat().st_size > 10_000
    again = audit(str(root), "--task", "detection", "--boxes", str(tmp_path / "gt.json"), "--model", DETECTOR,
                  "--weights", str(weights), "--classes", str(classes), "--min-size", "160", "--score-threshold",
                  "0.3", "--method", "gradcam", "--worst", "2", "--out", str(out), "--quiet")
    assert again.exit_code == 1  # resumed: nothing redone, the same outputs
    assert json.loads((out / "summary.json").read_text()) == summary
    # A detector is audited as one even without --task; classifier labels are then a usage error.
    wrong = audit(str(root), "--labels", str(tmp_path / "gt.json"), "--model", DETECTOR, "--weights", str(weights),
                  "--classes", str(classes), "--out", str(tmp_path / "o2"))
    assert wrong.exit_code == 2 and "--labels is for classifiers" in wrong.output


def test_cli_usage_errors_exit_2(tmp_path: Path, samples: Path) -> None:
    (tmp_path / "gt.csv").write_text("path,x0,y0,x1,y1,class\nchelsea.png,1,1,9,9,tabby\n")
    result = audit(str(samples), "--task", "detection", "--labels", str(tmp_path / "gt.csv"))
    assert result.exit_code == 2 and "--labels is for classifiers" in result.output
    result = audit(str(samples), "--task", "detection")
    assert result.exit_code == 2 and "needs --boxes" in result.output
    result = audit(str(samples), "--task", "detection", "--boxes", str(tmp_path / "gt.csv"), "--model",
                   "efficientnet_lite0")
    assert result.exit_code == 2 and "is a classification model" in result.output
    result = audit(str(samples), "--task", "segmentation", "--boxes", str(tmp_path / "gt.csv"))
    assert result.exit_code == 2 and "choose classification or detection" in result.output


# --------------------------------------------------------------------------------------------------------------
# The detect panel's colour bar


def test_detection_panel_has_a_labelled_colour_bar_for_maps_only() -> None:
    from explain.detection.figures import blend, detection_panel
    from explain.detection.targets import Detection

    image = Image.new("RGB", (120, 60), (90, 90, 90))
    heat = np.tile(np.linspace(0, 1, 120, dtype=np.float32), (60, 1))
    d = Detection(image_index=0, rank=0, label=1, score=0.9, box=(10.0, 10.0, 30.0, 50.0), source=0)
    fig = detection_panel(image, blend(image, heat, "viridis"), d, "t", "Grad-CAM++ at l", "viridis",
                          "Grad-CAM++ of the class logit, normalised")
    (bar,) = fig.axes[2].child_axes
    assert bar.get_ylabel() == "Grad-CAM++ of the class logit, normalised"
    assert [t.get_text() for t in bar.get_yticklabels()] == ["0", "0.5", "1 (max)"]
    # The bar sits right of the enlarged box panel and spans exactly its height.
    fig.savefig(io.BytesIO(), format="png")  # lay the figure out
    crop, where = fig.axes[2].get_position(), bar.get_position()
    assert where.x0 > crop.x1 and where.y0 == pytest.approx(crop.y0) and where.y1 == pytest.approx(crop.y1)
    assert detection_panel(image, blend(image, heat), d, "t", "guided").axes[2].child_axes == []  # no scale


def test_boxes_and_area_shares_of_a_photo_over_4_megapixels_are_in_the_photos_frame() -> None:
    """A detector sees a bounded copy of a photo over 4 MP; the audit wrote its detection boxes in the copy's pixels
    beside ground-truth boxes in the photo's, and divided the copy's box areas by the photo's area."""
    from explain.audit_detection import photo_box
    from explain.audit_inputs import boxes_to_input
    from explain.detection.models import DetectionPreprocess

    geometry = DetectionPreprocess(crop=(800, 800)).geometry(6000, 4000)  # 24 MP
    grid_h, grid_w = geometry.model_input
    assert grid_w * grid_h <= 4_000_000 and grid_w < 6000
    box = (600.0, 400.0, 3600.0, 2400.0)  # a quarter of the photo
    (visible,) = boxes_to_input([box], geometry).boxes
    assert photo_box(visible, geometry) == pytest.approx(list(box), abs=0.01)
    x0, y0, x1, y1 = visible
    assert (x1 - x0) * (y1 - y0) / (grid_w * grid_h) == pytest.approx(0.25, abs=1e-3)
    small = DetectionPreprocess(crop=(800, 800)).geometry(640, 480)
    assert photo_box((1.5, 2.0, 30.25, 40.0), small) == [1.5, 2.0, 30.25, 40.0]
