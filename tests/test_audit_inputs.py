"""Labels, boxes and groups of an audit: parsing, matching and the box geometry, with hand-derived answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from explain.audit_inputs import (
    NO_GROUP, boxes_to_input, load_audit_inputs, parse_boxes, parse_groups, parse_labels,
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
    text = "path,class_index\n1.jpg,4\n2.jpg,5\n1.jpg,3\n3.jpg,x\n"
    labels = parse_labels(write(tmp_path / "l.csv", text), NAMES)
    assert labels.labels["1.jpg"].indices == (4,)
    assert labels.labels["1.jpg"].name == "dalmatian"  # no class_name column: the model's name
    reasons = sorted(e.reason for e in labels.errors)
    assert any("out of range" in r for r in reasons)
    assert any("labelled twice" in r for r in reasons)
    assert any("not a class index" in r for r in reasons)


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
