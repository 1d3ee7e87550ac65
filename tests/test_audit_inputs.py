"""Labels, boxes and groups of an audit: parsing, matching and the box geometry, with hand-derived answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from explain.audit_inputs import (
    NO_GROUP, box_warnings, boxes_to_input, load_audit_inputs, parse_boxes, parse_groups, parse_labels,
)
from explain.backbones.base import Geometry, Preprocess
from explain.errors import UsageError

NAMES = ["tabby cat", "tiger cat", "goldfish", "great white shark", "dalmatian"]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_imagenet_ids_accept_any_listed_class_and_keep_the_class_name(tmp_path: Path) -> None:
    labels = parse_labels(write(tmp_path / "l.csv", "path,class_name,imagenet_ids\n"
                                                      "a/1.jpg,felines,0;1\n./b/2.jpg,fish, 2 \n"), NAMES)
    assert labels.errors == []
    assert labels.labels["a/1.jpg"].indices == (0, 1)
    assert labels.labels["a/1.jpg"].name == "felines"
    assert labels.labels["b/2.jpg"].indices == (2,)  # './' dropped, spaces stripped


def test_class_names_resolve_exactly_or_by_unique_prefix_and_bad_rows_are_per_row_errors(tmp_path: Path) -> None:
    text = "path,class_name\n1.jpg,Goldfish\n2.jpg,great\n3.jpg,zebra\n4.jpg,t\n5.jpg,dalmatian\n"
    labels = parse_labels(write(tmp_path / "l.csv", text), NAMES)
    assert {k: v.indices for k, v in labels.labels.items()} == {"1.jpg": (2,), "2.jpg": (3,), "5.jpg": (4,)}
    errors = {e.path: e.reason for e in labels.errors}
    assert set(errors) == {"3.jpg", "4.jpg"}
    assert "line 4" in errors["3.jpg"] and "unknown class name 'zebra'" in errors["3.jpg"]
    assert "ambiguous" in errors["4.jpg"]


def test_class_index_out_of_range_and_conflicting_duplicates_are_errors(tmp_path: Path) -> None:
    text = "path,class_index\n1.jpg,4\n2.jpg,5\n1.jpg,3\n3.jpg,x\n4.jpg,4\n1.jpg,4\n"
    labels = parse_labels(write(tmp_path / "l.csv", text), NAMES)
    assert "1.jpg" not in labels.labels  # neither row is trusted over the other
    assert labels.labels["4.jpg"].name == "dalmatian"  # no class_name column: the model's name
    reasons = {e.path: e.reason for e in labels.errors}
    assert "out of range" in reasons["2.jpg"] and "not a class index" in reasons["3.jpg"]
    assert reasons["1.jpg"] == ("l.csv lines 2 and 4 give it different classes: class_index 4 (dalmatian) and "
                                "class_index 3 (great white shark); it is not audited")
    assert len(labels.errors) == 3  # one error for 1.jpg, though line 7 repeats line 2


def test_conflicting_imagenet_ids_name_the_lines_and_the_ids(tmp_path: Path) -> None:
    """Issue 15: the message read 'different classes (accordion and accordion)' for ids 401 and 1."""
    text = "path,class_name,imagenet_ids\na.jpg,accordion,401\nb.jpg,cat,0;1\na.jpg,accordion,1\nb.jpg,cat,1;0\n"
    labels = parse_labels(write(tmp_path / "l.csv", text), NAMES * 100)
    assert [(e.path, e.reason) for e in labels.errors] == [
        ("a.jpg", "l.csv lines 2 and 4 give it different classes: imagenet_ids 401 (accordion) and imagenet_ids 1 "
                  "(accordion); it is not audited")]
    assert list(labels.labels) == ["b.jpg"]  # the same ids in another order agree


def test_labels_without_the_needed_columns_are_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="imagenet_ids, class_index, class_name"):
        parse_labels(write(tmp_path / "l.csv", "path,label\na.jpg,3\n"), NAMES)
    with pytest.raises(UsageError, match="path"):
        parse_labels(write(tmp_path / "m.csv", "file,class_index\na.jpg,3\n"), NAMES)
    with pytest.raises(UsageError, match="cannot read"):
        parse_labels(tmp_path / "missing.csv", NAMES)


def test_box_csv_rows_are_unioned_and_bad_rows_become_notes(tmp_path: Path) -> None:
    text = "path,x0,y0,x1,y1\na.jpg,1,2,3,4\na.jpg,10,10,20,30\nb.jpg,5,5,5,9\nc.jpg,x,1,2,3\n"
    boxes = parse_boxes(write(tmp_path / "b.csv", text))
    assert boxes.boxes == {"a.jpg": [(1.0, 2.0, 3.0, 4.0), (10.0, 10.0, 20.0, 30.0)]}
    assert "empty box" in boxes.notes["b.jpg"][0]
    assert "not four numbers" in boxes.notes["c.jpg"][0]
    with pytest.raises(UsageError, match="missing: y1"):
        parse_boxes(write(tmp_path / "c.csv", "path,x0,y0,x1\na.jpg,1,2,3\n"))


def test_coco_boxes_are_xywh(tmp_path: Path) -> None:
    coco = {"images": [{"id": 7, "file_name": "sub/a.jpg"}, {"id": 8, "file_name": "b.jpg"}],
            "annotations": [{"image_id": 7, "bbox": [10, 20, 30, 40]}, {"image_id": 7, "bbox": [0, 0, 5, 5]},
                            {"image_id": 8, "bbox": [1, 1, 0, 3]}, {"image_id": 99, "bbox": [0, 0, 1, 1]}]}
    boxes = parse_boxes(write(tmp_path / "boxes.json", json.dumps(coco)))
    assert boxes.boxes == {"sub/a.jpg": [(10.0, 20.0, 40.0, 60.0), (0.0, 0.0, 5.0, 5.0)]}
    assert "empty box" in boxes.notes["b.jpg"][0]
    with pytest.raises(UsageError, match="COCO"):
        parse_boxes(write(tmp_path / "x.json", "[1, 2]"))


def test_groups_take_every_other_column_as_an_attribute(tmp_path: Path) -> None:
    groups = parse_groups(write(tmp_path / "g.csv", "path,colour,site\na.jpg,gray,x\nb.jpg,colour,y\n"))
    assert groups.columns == ["colour", "site"]
    assert groups.values["b.jpg"] == {"colour": "colour", "site": "y"}
    with pytest.raises(UsageError, match="no group column"):
        parse_groups(write(tmp_path / "h.csv", "path\na.jpg\n"))


def _dataset(tmp_path: Path, samples: Path) -> Path:
    root = tmp_path / "ds"
    (root / "cats").mkdir(parents=True)
    for name in ("chelsea.png", "coffee.png"):
        (root / "cats" / name).write_bytes((samples / name).read_bytes())
    (root / "rocket.jpg").write_bytes((samples / "rocket.jpg").read_bytes())
    return root


def test_matching_reports_missing_files_unlabelled_images_and_stray_groups(tmp_path: Path, samples: Path) -> None:
    root = _dataset(tmp_path, samples)
    labels = write(tmp_path / "l.csv", "path,class_index\ncats/chelsea.png,1\ncats/coffee.png,9\ngone.jpg,0\n")
    groups = write(tmp_path / "g.csv", "path,colour\ncats/chelsea.png,colour\nnowhere.png,gray\n")
    boxes = write(tmp_path / "b.csv", "path,x0,y0,x1,y1\nelsewhere.png,0,0,1,1\n")
    inputs = load_audit_inputs(root, labels, NAMES, boxes, groups)
    assert inputs.keys == ["cats/chelsea.png"]
    errors = {e.path: e.reason for e in inputs.errors}
    assert "no such image file" in errors["gone.jpg"]
    assert "out of range" in errors["cats/coffee.png"]
    text = " | ".join(inputs.warnings)
    assert "rocket.jpg" in text and "no row in l.csv" in text  # unlabelled image: skipped, said once
    assert "1 group row(s) of g.csv name no audited image (nowhere.png)" in text
    assert "1 box row(s) of b.csv" in text
    assert inputs.group_of("cats/chelsea.png") == {"colour": "colour"}
    assert inputs.group_of("other.png") == {"colour": NO_GROUP}


@pytest.mark.parametrize("spelling", ["relative", "dot", "absolute"])
def test_unreadable_files_get_one_entry_under_their_key(tmp_path: Path, samples: Path, monkeypatch,
                                                         spelling: str) -> None:
    """Issue 15: with a relative DATASET a broken link and a FIFO were listed as ``ds/ds/p.jpg`` and again as
    'listed in labels.csv but no such image file', though the file exists."""
    import os

    root = _dataset(tmp_path, samples)
    (root / "p.jpg").symlink_to(root / "missing.jpg")
    os.mkfifo(root / "f.jpg")
    labels = write(tmp_path / "l.csv", "path,class_index\ncats/chelsea.png,1\np.jpg,2\nf.jpg,3\n")
    monkeypatch.chdir(tmp_path if spelling == "relative" else root)
    dataset = {"relative": Path(root.name), "dot": Path("."), "absolute": root}[spelling]
    inputs = load_audit_inputs(dataset, labels, NAMES)
    assert sorted((e.path, e.reason) for e in inputs.errors) == [
        ("f.jpg", "not a regular file or folder (a named pipe)"),
        ("p.jpg", "broken symbolic link: no such file or folder at its target"),
    ]
    assert inputs.keys == ["cats/chelsea.png"]


def test_nothing_to_audit_is_a_usage_error(tmp_path: Path, samples: Path) -> None:
    root = _dataset(tmp_path, samples)
    with pytest.raises(UsageError, match="nothing to audit"):
        load_audit_inputs(root, write(tmp_path / "l.csv", "path,class_index\nx.png,1\n"), NAMES)
    with pytest.raises(UsageError, match="not a folder"):
        load_audit_inputs(tmp_path / "nope", tmp_path / "l.csv", NAMES)


# --- geometry ---------------------------------------------------------------------------------------------------
LITE = Preprocess(resize=256, crop=(224, 224), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic")


def test_boxes_map_through_the_centre_crop() -> None:
    # 512 x 256: resized to 512 x 256 (no change), crop left = (512-224)/2 = 144, top = (256-224)/2 = 16.
    geometry = LITE.geometry(512, 256)
    assert geometry.crop_box == (144.0, 16.0, 368.0, 240.0)
    mapped = boxes_to_input([(154, 36, 254, 136)], geometry)
    assert mapped.status == "ok" and mapped.boxes == ((10.0, 20.0, 110.0, 120.0),)
    # 1024 x 512 is the same picture at twice the size: every coordinate halves on the grid.
    big = boxes_to_input([(308, 72, 508, 272)], LITE.geometry(1024, 512))
    assert big.boxes == ((10.0, 20.0, 110.0, 120.0),)


def test_boxes_are_clipped_to_crop_and_image_and_lost_when_outside() -> None:
    geometry = LITE.geometry(512, 256)
    partly = boxes_to_input([(100, 0, 200, 100)], geometry)  # reaches left of the crop and above it
    assert partly.status == "clipped" and partly.boxes == ((0.0, 0.0, 56.0, 84.0),)
    outside_crop = boxes_to_input([(0, 0, 100, 100)], geometry)
    assert outside_crop.status == "outside" and outside_crop.boxes == ()
    assert "outside the model's centre crop" in outside_crop.notes[0]
    off_image = boxes_to_input([(600, 10, 700, 50), (154, 36, 254, 300)], geometry)
    assert off_image.status == "clipped"
    assert off_image.boxes == ((10.0, 20.0, 110.0, 224.0),)
    assert "lies outside the 512x256 image" in off_image.notes[0]
    assert "reaches outside the 512x256 image; clipped" in off_image.notes[1]
    assert boxes_to_input([], geometry).status == "none"


def test_geometry_with_padding_crop() -> None:
    # A crop larger than the image (zero padding): crop box starts at negative coordinates.
    geometry = Geometry(image_size=(100, 100), crop_box=(-12.0, -12.0, 212.0, 212.0), model_input=(224, 224))
    mapped = boxes_to_input([(0, 0, 100, 100)], geometry)
    assert mapped.status == "ok" and mapped.boxes == ((12.0, 12.0, 112.0, 112.0),)


def test_a_groups_file_that_matches_nothing_says_how_paths_must_look(tmp_path: Path, samples: Path) -> None:
    root = _dataset(tmp_path, samples)
    labels = write(tmp_path / "l.csv", "path,class_index\ncats/chelsea.png,1\n")
    groups = write(tmp_path / "g.csv", "path,colour\nds/cats/chelsea.png,colour\n")  # relative to the wrong folder
    inputs = load_audit_inputs(root, labels, NAMES, groups=groups)
    assert any("no row of g.csv names an audited image" in w and "'cats/chelsea.png'" in w for w in inputs.warnings)
    assert inputs.group_of("cats/chelsea.png") == {"colour": NO_GROUP}


# --- malformed ground-truth boxes: refused with file, line and reason, never dropped silently -----------------------
def _problems(boxes) -> dict[str, tuple[str, str]]:
    return {p.place: (p.kind, p.reason) for p in boxes.problems}


def test_malformed_csv_box_rows_are_refused_with_line_and_reason_and_good_rows_load(tmp_path: Path) -> None:
    text = ("path,x0,y0,x1,y1,class,object_id\n"
            "a.jpg,1,2,3,4,cat,\n"            # line 2: good
            "a.jpg,a,b,c,d,cat,\n"            # line 3: not numbers
            "a.jpg,1,2,3\n"                   # line 4: a coordinate missing
            "a.jpg,nan,0,inf,10,cat,\n"       # line 5: non-finite
            "b.jpg,100,100,10,10,dog,\n"      # line 6: inverted (refused, not swapped)
            "b.jpg,5,5,5,9,dog,\n"            # line 7: zero width
            ",1,2,3,4,dog,\n"                 # line 8: no path
            "b.jpg,1,2,3,4,dog,7,extra\n"     # line 9: one field too many
            "c.jpg,,,,,,\n"                   # line 10: an image without objects (not a problem)
            "a.jpg,10,10,20,30\n"             # line 11: good, short row ending after the coordinates
            ",,,,,,\n")                       # line 12: an empty row (skipped, not a problem)
    boxes = parse_boxes(write(tmp_path / "gt.csv", text))
    assert boxes.boxes == {"a.jpg": [(1.0, 2.0, 3.0, 4.0), (10.0, 10.0, 20.0, 30.0)]}
    # The row ordinal counts the refused rows too, so ids do not shift when a bad row is fixed.
    assert [(o.object_id, o.category, o.where) for o in boxes.objects["a.jpg"]] == [
        ("1", "cat", "gt.csv line 2"), ("5", "", "gt.csv line 11")]
    assert list(boxes.listed) == ["a.jpg", "b.jpg", "c.jpg"]
    problems = _problems(boxes)
    assert list(problems) == [f"line {n}" for n in (3, 4, 5, 6, 7, 8, 9)]
    assert problems["line 3"] == ("not numeric", "not four numbers (a, b, c, d)")
    assert problems["line 4"][0] == "wrong number of fields" and "only 4 field(s)" in problems["line 4"][1] \
        and "has 7" in problems["line 4"][1] and "coordinate is missing" in problems["line 4"][1]
    assert problems["line 5"] == ("non-finite coordinates", "non-finite coordinate(s) (nan, 0, inf, 10)")
    assert problems["line 6"][0] == "inverted box" and "(100, 100, 10, 10)" in problems["line 6"][1] \
        and "x1 < x0 and y1 < y0" in problems["line 6"][1] and "not swapped" in problems["line 6"][1]
    assert problems["line 7"][0] == "empty box" and "zero width or height" in problems["line 7"][1]
    assert problems["line 8"] == ("no path", "no path: the row names no image")
    assert problems["line 9"][0] == "wrong number of fields" and "8 fields" in problems["line 9"][1]
    assert {p.place: p.key for p in boxes.problems}["line 8"] is None
    # Every refused row that names an image is also a note on that image, with file and line.
    assert boxes.notes["b.jpg"][0].startswith("gt.csv line 6: empty box (100, 100, 10, 10): inverted")
    assert boxes.notes["b.jpg"][0].endswith("; ignored") and len(boxes.notes["a.jpg"]) == 3


def test_malformed_coco_annotations_are_refused_with_position_id_and_reason(tmp_path: Path) -> None:
    coco = {"images": [{"id": 1, "file_name": "a.jpg"}, {"file_name": "no_id.jpg"}, {"id": 3}, "junk"],
            "categories": [{"id": 7, "name": "cat"}],
            "annotations": [{"id": 10, "image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 7},  # good
                            {"id": 11, "image_id": 1, "bbox": [1, 2]},
                            {"id": 12, "image_id": 1, "bbox": [0, 0, -3, 4]},
                            {"id": 13, "image_id": 1, "bbox": [0, 0, 3, -4]},
                            {"id": 14, "image_id": 99, "bbox": [0, 0, 1, 1]},
                            {"id": 15, "bbox": [0, 0, 1, 1]},
                            "junk",
                            {"id": 17, "image_id": 1, "bbox": ["a", 0, 1, 1]},
                            {"id": 18, "image_id": 1, "bbox": [float("nan"), 0, 1, 1]},
                            {"id": 19, "image_id": 1, "bbox": [0, 0, 1, 1], "category_id": 8},
                            {"image_id": 1, "bbox": [5, 5, 0, 2]},
                            {"id": 21, "image_id": 1, "bbox": [True, 0, 1, 1]}]}
    boxes = parse_boxes(write(tmp_path / "gt.json", json.dumps(coco)))
    assert boxes.boxes == {"a.jpg": [(1.0, 2.0, 4.0, 6.0)]}
    assert [(o.object_id, o.category, o.where) for o in boxes.objects["a.jpg"]] == [
        ("10", "cat", "gt.json annotations[0] (id 10)")]
    assert list(boxes.listed) == ["a.jpg", "no_id.jpg"]
    problems = _problems(boxes)
    assert problems["images[2]"] == ("image entry without file_name",
                                     '{"id": 3} has no file_name; its annotations cannot be placed')
    assert problems["images[3]"][0] == "image entry without file_name"
    assert problems["annotations[1] (id 11)"] == ("bbox not [x, y, w, h]", "bbox [1, 2] is not [x, y, w, h]")
    assert problems["annotations[2] (id 12)"] == ("negative size", "bbox [0, 0, -3, 4]: negative width or height")
    assert problems["annotations[3] (id 13)"][0] == "negative size"
    assert problems["annotations[4] (id 14)"] == ("unknown image",
                                                  "image_id 99 is not the id of any entry of images")
    # No image_id must not match the image entry that has no id either.
    assert problems["annotations[5] (id 15)"] == ("unknown image", "no image_id")
    assert problems["annotations[6]"] == ("not an annotation", 'not a JSON object ("junk")')
    assert problems["annotations[7] (id 17)"] == ("not numeric", "not four numbers (a, 0, 1, 1)")
    assert problems["annotations[8] (id 18)"][0] == "non-finite coordinates"
    assert problems["annotations[9] (id 19)"] == ("unknown category", "category_id 8 is not in categories")
    assert problems["annotations[10]"][0] == "empty box"
    assert problems["annotations[11] (id 21)"][0] == "not numeric"  # JSON true is not a coordinate
    assert len(problems) == 13
    keys = {p.place: p.key for p in boxes.problems}
    assert keys["annotations[4] (id 14)"] is None and keys["annotations[6]"] is None
    assert keys["annotations[1] (id 11)"] == "a.jpg" and len(boxes.notes["a.jpg"]) == 8


def test_box_warnings_list_a_few_of_each_kind_and_count_the_rest(tmp_path: Path) -> None:
    rows = "".join(f"a.jpg,x{i},0,1,1\n" for i in range(8)) + "a.jpg,9,9,1,1\n"
    boxes = parse_boxes(write(tmp_path / "gt.csv", "path,x0,y0,x1,y1\n" + rows))
    lines = box_warnings(boxes.problems, limit=3)
    assert lines[:3] == [f"gt.csv line {n}: not four numbers (x{n - 2}, 0, 1, 1); ignored" for n in (2, 3, 4)]
    assert lines[3] == ("gt.csv: and 5 more row(s) ignored for the same reason (not numeric): "
                        "line 5, line 6, line 7, ...")
    assert len(lines) == 5 and lines[4].startswith("gt.csv line 10: empty box (9, 9, 1, 1): inverted")
    assert len(box_warnings(boxes.problems)) == 5 + 1 + 1  # the default: five shown, then "and 3 more"
    assert box_warnings([]) == []


def test_classifier_audit_inputs_warn_about_every_refused_box_row(tmp_path: Path, samples: Path) -> None:
    root = _dataset(tmp_path, samples)
    labels = write(tmp_path / "l.csv", "path,class_index\ncats/chelsea.png,1\nrocket.jpg,2\n")
    boxes = write(tmp_path / "b.csv", "path,x0,y0,x1,y1\ncats/chelsea.png,a,b,c,d\ncats/chelsea.png,1,2,3\n"
                                      "rocket.jpg,nan,0,inf,10\nrocket.jpg,100,100,10,10\nrocket.jpg,5,6,70,80\n"
                                      "cats/coffee.png,x,0,1,1\n")
    inputs = load_audit_inputs(root, labels, NAMES, boxes)
    assert inputs.keys == ["cats/chelsea.png", "rocket.jpg"]  # both still audited
    assert inputs.boxes.boxes == {"rocket.jpg": [(5.0, 6.0, 70.0, 80.0)]}
    assert inputs.errors == []
    refused = [w for w in inputs.warnings if w.startswith("b.csv line")]
    # Grouped by kind (in order of first appearance), in file order within a kind.
    assert [w.split(":")[0] for w in refused] == ["b.csv line 2", "b.csv line 7", "b.csv line 3", "b.csv line 4",
                                                  "b.csv line 5"]
    assert "b.csv line 2: not four numbers (a, b, c, d); ignored" in refused
    assert "b.csv line 7: not four numbers (x, 0, 1, 1); ignored" in refused  # an image not audited: still said


def test_detection_audit_inputs_leave_rows_of_audited_images_to_the_per_image_errors(tmp_path: Path,
                                                                                    samples: Path) -> None:
    from explain.audit_detection import resolve_ground_truth

    root = _dataset(tmp_path, samples)
    coco = {"images": [{"id": 1, "file_name": "rocket.jpg"}],
            "annotations": [{"id": 5, "image_id": 1, "bbox": [1, 2]}, {"id": 6, "image_id": 42, "bbox": [0, 0, 1, 1]},
                            {"id": 7, "image_id": 1, "bbox": [0, 0, 9, 9]}]}
    inputs = load_audit_inputs(root, None, NAMES, write(tmp_path / "gt.json", json.dumps(coco)))
    assert inputs.keys == ["rocket.jpg"] and inputs.boxes.boxes == {"rocket.jpg": [(0.0, 0.0, 9.0, 9.0)]}
    text = " | ".join(inputs.warnings)
    assert "gt.json annotations[1] (id 6): image_id 42 is not the id of any entry of images; ignored" in text
    assert "annotations[0]" not in text  # said once, as an error of rocket.jpg, not twice:
    _, errors = resolve_ground_truth(inputs.boxes, NAMES)
    assert [(e.path, e.reason) for e in errors] == [
        ("rocket.jpg", "gt.json annotations[0] (id 5): bbox [1, 2] is not [x, y, w, h]; ignored")]


def test_audit_cli_warns_about_malformed_boxes_and_goes_on(tmp_path: Path, samples: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    root = tmp_path / "ds"
    root.mkdir()
    (root / "chelsea.png").write_bytes((samples / "chelsea.png").read_bytes())
    labels = write(tmp_path / "l.csv", "path,class_name\nchelsea.png,tabby\n")
    boxes = write(tmp_path / "b.csv", "path,x0,y0,x1,y1\nchelsea.png,a,b,c,d\nchelsea.png,1,2,3\n"
                                      "chelsea.png,100,100,10,10\nchelsea.png,100,20,300,280\n")
    result = CliRunner().invoke(app, ["audit", str(root), "--labels", str(labels), "--boxes", str(boxes), "--out",
                                      str(tmp_path / "out"), "--steps", "2", "--shift", "0", "--sanity", "0",
                                      "--worst", "1", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "warning: b.csv line 2: not four numbers (a, b, c, d); ignored" in result.output
    assert "warning: b.csv line 3: only 4 field(s)" in result.output
    assert "warning: b.csv line 4: empty box (100, 100, 10, 10): inverted" in result.output
    record = json.loads((tmp_path / "out" / "images.jsonl").read_text().splitlines()[0])
    assert record["box_status"] == "ok" and record["energy_in_box"] is not None  # the good row was used
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sum("b.csv line" in w for w in manifest["warnings"]) == 3
