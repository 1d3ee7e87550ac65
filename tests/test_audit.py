"""The audit runner, its summary arithmetic, the journal (resume), the classification task and the dashboard.

Known answers: summaries of hand-made records; a box covering the whole picture holds all of the energy; energy in a
box recomputed in NumPy from an independently computed Grad-CAM++ map; accuracy equal to ``predict``'s; a resumed
run whose files equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from explain.audit import JOURNAL, AuditOptions, Journal, JournalMismatchError, run_audit, sanity_sample
from explain.audit_summary import (
    describe_gap, group_count, group_gaps, group_summary, right_for_wrong_reason, small_group_warnings, summarize,
    worst_examples,
)
from explain.audit_task import AuditTask, rounded
from explain.errors import UsageError

# --------------------------------------------------------------------------------------------------------------
# Summary arithmetic on hand-made records


def rec(path: str, correct: bool, prob: float, **extra: Any) -> dict[str, Any]:
    base = {"path": path, "correct": correct, "prob": prob, "true_prob": prob if correct else 0.1,
            "energy_in_box": None, "box_area": None, "pointing_hit": None, "deletion_auc": None,
            "deletion_auc_random": None, "insertion_auc": None, "insertion_auc_random": None, "sanity_rho": None,
            "shift_prob_change": None, "shift_top1_kept": None, "shift_peak_move": None}
    base.update(extra)
    return base


def near(value: float) -> Any:
    return pytest.approx(value, abs=1e-6)  # summaries are rounded to 6 decimals


RECORDS = [
    rec("a", True, 0.9, energy_in_box=0.8, box_area=0.25, pointing_hit=True, colour="colour",
        deletion_auc=0.1, deletion_auc_random=0.3, insertion_auc=0.7, insertion_auc_random=0.5, sanity_rho=0.2),
    rec("b", True, 0.6, energy_in_box=0.1, box_area=0.5, pointing_hit=False, colour="gray",
        deletion_auc=0.4, deletion_auc_random=0.2, insertion_auc=0.3, insertion_auc_random=0.5, sanity_rho=-0.4),
    rec("c", False, 0.7, energy_in_box=0.2, box_area=0.1, pointing_hit=True, colour="gray",
        deletion_auc=0.2, deletion_auc_random=0.3, insertion_auc=0.6, insertion_auc_random=0.4),
    rec("d", True, 0.8, energy_in_box=0.3, box_area=0.4, pointing_hit=False, colour="colour",
        shift_prob_change=0.1, shift_top1_kept=0.75, shift_peak_move=4.0),
    rec("e", False, 0.95, colour="gray"),
]


def test_summary_by_hand() -> None:
    s = summarize(RECORDS, ["colour"], steps=8, shift=4, worst=5)
    assert s["overall"]["accuracy"] == near(3 / 5)
    assert s["overall"]["mean_prob"] == near((0.9 + 0.6 + 0.7 + 0.8 + 0.95) / 5)
    loc = s["localisation"]
    assert loc["images_with_box"] == 4
    assert loc["mean_energy_in_box"] == near((0.8 + 0.1 + 0.2 + 0.3) / 4)
    assert loc["pointing_accuracy"] == near(2 / 4)
    f = s["faithfulness"]
    assert f["images"] == 3
    assert f["share_deletion_below_random"] == near(2 / 3)  # a and c below, b above
    assert f["share_insertion_above_random"] == near(2 / 3)
    assert f["mean_deletion_auc_random"] == near((0.3 + 0.2 + 0.3) / 3)
    assert s["sanity"]["images"] == 2 and s["sanity"]["median_rank_correlation"] == near(-0.1)
    assert s["sanity"]["gradcam_median_rank_correlation"] is None  # no reference values in these records
    assert s["translation"]["top1_kept"] == near(0.75)


def test_right_for_the_wrong_reason_is_correct_and_below_a_uniform_map() -> None:
    # a: 0.8 > 0.25 (on the object); b: 0.1 < 0.5 (ratio 0.2); c: wrong; d: 0.3 < 0.4 (ratio 0.75).
    assert [r["path"] for r in right_for_wrong_reason(RECORDS)] == ["b", "d"]


def test_group_gaps_name_the_groups() -> None:
    block = group_summary(RECORDS, "colour")
    assert block["groups"]["colour"]["accuracy"] == 1.0
    assert block["groups"]["gray"]["accuracy"] == near(1 / 3)
    gap = block["gap"]["accuracy"]
    assert gap == {"gap": near(2 / 3), "highest": "colour", "lowest": "gray", "tie": False,
                   "n": {"colour": 2, "gray": 3}, "undefined": []}
    energy = block["gap"]["mean_energy_in_box"]  # colour (0.8+0.3)/2 = 0.55, gray (0.1+0.2)/2 = 0.15
    assert energy["gap"] == near(0.4) and energy["highest"] == "colour"
    assert describe_gap("accuracy", gap) == "accuracy gap 0.667 (colour n=2 over gray n=3)"


def test_a_tie_names_two_different_groups_and_says_there_is_no_gap() -> None:
    # indoor and outdoor both 1 of 2 correct: the gap is 0, which used to read "indoor over indoor"
    records = [rec("a", True, 0.9, light="indoor"), rec("b", False, 0.9, light="indoor"),
               rec("c", True, 0.9, light="outdoor"), rec("d", False, 0.9, light="outdoor")]
    gap = group_summary(records, "light")["gap"]["accuracy"]
    assert gap["gap"] == 0 and gap["tie"] is True
    assert {gap["highest"], gap["lowest"]} == {"indoor", "outdoor"}
    assert describe_gap("accuracy", gap) == "no accuracy gap between indoor n=2 and outdoor n=2"
    three = group_gaps({k: {"n": 4, "recall": 0.5} for k in ("a", "b", "c")}, ["recall"])["recall"]
    assert (three["highest"], three["lowest"], three["tie"]) == ("a", "b", True)
    assert describe_gap("recall", three) == "no recall gap between a n=4, b n=4 and c n=4"


def test_groups_where_a_metric_is_undefined_are_left_out_and_named() -> None:
    groups = {"dusk": {"n": 3, "m": float("nan")}, "indoor": {"n": 5, "m": 0.7}, "night": {"n": 0, "m": None},
              "outdoor": {"n": 7, "m": 0.2}}
    gap = group_gaps(groups, ["m", "missing_everywhere"])
    assert "missing_everywhere" not in gap  # no record without two defined groups
    m = gap["m"]
    assert (m["gap"], m["highest"], m["lowest"], m["tie"]) == (pytest.approx(0.5), "indoor", "outdoor", False)
    assert m["undefined"] == ["dusk", "night"] and m["n"] == {"dusk": 3, "indoor": 5, "night": 0, "outdoor": 7}
    assert describe_gap("m", m) == "m gap 0.500 (indoor n=5 over outdoor n=7); undefined for dusk n=3 and night n=0"
    # one defined group against a NaN one: nothing to compare (it used to be "indoor over indoor", gap NaN)
    assert group_gaps({"indoor": {"n": 2, "m": 0.5}, "outdoor": {"n": 2, "m": float("nan")}}, ["m"]) == {}


def test_small_groups_get_a_warning_with_their_size() -> None:
    records = [rec(f"c{i}", i % 2 == 0, 0.9, colour="colour") for i in range(12)]
    records += [rec("g1", True, 0.9, colour="grayscale"), rec("g2", True, 0.9, colour="grayscale")]
    body = summarize(records, ["colour"], steps=4, shift=2, worst=1)
    gap = body["groups"]["colour"]["gap"]["accuracy"]
    assert gap["highest"] == "grayscale" and gap["n"] == {"colour": 12, "grayscale": 2}
    assert describe_gap("accuracy", gap) == "accuracy gap 0.500 (grayscale n=2 over colour n=12)"
    assert small_group_warnings(body["groups"]) == [
        "group 'grayscale' (by colour) has only 2 images: its rates are unreliable"]
    assert small_group_warnings(body["groups"], minimum=2) == []
    # detection groups count objects (and images for the per-image rates)
    detection = {"light": {"groups": {"day": {"objects": 10, "images": 4}, "dusk": {"objects": 1, "images": 1},
                                      "fog": {"objects": 0, "images": 2}}}}
    assert small_group_warnings(detection) == [
        "group 'dusk' (by light) has only 1 object: its rates are unreliable",
        "group 'fog' (by light) has no objects: its rates are unreliable"]
    assert group_count(detection["light"]["groups"]["day"], "false_positives_per_image") == (4, "images")
    assert group_count(detection["light"]["groups"]["day"], "recall") == (10, "objects")


def test_dashboard_group_ticks_show_the_group_size() -> None:
    from explain.dashboard import _tick

    assert _tick("grayscale", {"n": 2}) == "grayscale (n=2)"
    assert _tick("a" * 30, {"objects": 5, "images": 3}) == "a" * 17 + "… (n=5)"


def test_worst_examples() -> None:
    worst = worst_examples(RECORDS, 1)
    assert worst == {"confident_mistakes": ["e"], "right_for_wrong_reason": ["b"], "least_faithful": ["b"]}


def test_rounding_and_sanity_sample() -> None:
    assert rounded(1 / 3) == 0.333333 and rounded(float("nan")) is None and rounded(None) is None
    keys = [f"k{i}" for i in range(20)]
    assert sanity_sample(keys, 5, 0) == sanity_sample(list(reversed(keys)), 5, 0)
    assert len(sanity_sample(keys, 5, 0)) == 5 and sanity_sample(keys, 50, 0) == frozenset(keys)


# --------------------------------------------------------------------------------------------------------------
# The journal


def test_journal_drops_a_torn_last_line_and_refuses_another_configuration(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL
    journal = Journal(path, {"a": 1})
    journal.append(0, [{"path": "x"}], [])
    journal.append(1, [{"path": "y"}], [{"input": "z", "error": "bad"}])
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"batch": 2, "records": [{"pa')  # a kill in the middle of a write
    again = Journal(path, {"a": 1})
    assert sorted(again.batches) == [0, 1]
    assert path.read_bytes() == whole  # the torn line is gone, so the next append starts on a fresh line
    assert [r["path"] for r in again.records()] == ["x", "y"] and again.errors() == [{"input": "z", "error": "bad"}]
    with pytest.raises(JournalMismatchError, match="different a.*--restart"):
        Journal(path, {"a": 2})
    assert Journal(path, {"a": 2}, restart=True).batches == {}
    path.write_text("not json\n")
    with pytest.raises(UsageError, match="not an audit journal"):
        Journal(path, {"a": 2})


# --------------------------------------------------------------------------------------------------------------
# The runner with a fake task: resume equals an uninterrupted run


class Crash(Exception):
    pass


class FakeTask(AuditTask):
    """Records from the pixels only (cheap); optionally crashes at one batch."""

    name = "fake"
    columns = ("path", "pred_class", "prob", "correct")

    def __init__(self, crash_at: int | None = None) -> None:
        self.crash_at = crash_at
        self.calls: list[list[str]] = []

    def config(self) -> dict[str, Any]:
        return {"task": self.name}

    def records(self, batch: Any, keys: Sequence[str]) -> list[dict[str, Any]]:
        if self.crash_at is not None and len(self.calls) == self.crash_at:
            raise Crash()
        self.calls.append(list(keys))
        means = batch.tensor.mean(dim=(1, 2, 3)).tolist()
        return [{"path": k, "pred_class": 0, "pred_name": "x", "prob": rounded(abs(m)), "true_prob": 0.5,
                 "true_class": 1, "true_name": "y", "correct": m > 0, "input_sha256": s.loaded.sha256,
                 "crop_box": list(s.geometry.crop_box)} for k, m, s in zip(keys, means, batch.samples)]


def fake_dataset(tmp_path: Path, samples: Path) -> tuple[Path, Path]:
    root = tmp_path / "ds"
    root.mkdir()
    pictures = sorted((samples / "gallery" / "llama").glob("*.jpg"))[:5] + [samples / "chelsea.png"]
    lines = ["path,class_index"]
    for i, picture in enumerate(pictures):
        name = f"img{i}{picture.suffix}"
        (root / name).write_bytes(picture.read_bytes())
        lines.append(f"{name},1")
    (root / "broken.jpg").write_text("not an image")
    lines.append("broken.jpg,1")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    return root, labels


def run_fake(lite0: Any, root: Path, labels: Path, out: Path, task: FakeTask, **kw: Any) -> Any:
    from explain.run import RunSettings

    opts = AuditOptions(labels=labels, worst=0, **kw)
    return run_audit(lite0, root, opts, out, RunSettings(batch_size=2), task_factory=lambda *a: task)


def test_interrupted_audit_resumes_without_redoing_and_equals_a_clean_run(lite0: Any, samples: Path,
                                                                          tmp_path: Path) -> None:
    root, labels = fake_dataset(tmp_path, samples)
    clean = run_fake(lite0, root, labels, tmp_path / "clean", FakeTask())
    crashing = FakeTask(crash_at=2)
    with pytest.raises(Crash):
        run_fake(lite0, root, labels, tmp_path / "resumed", crashing)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    resumed_task = FakeTask()
    resumed = run_fake(lite0, root, labels, tmp_path / "resumed", resumed_task)
    done_first = {k for keys in crashing.calls for k in keys}
    done_second = {k for keys in resumed_task.calls for k in keys}
    # batches of 2 in sorted order: [broken.jpg, img0], [img1, img2] done, then the crash
    assert done_first == {"img0.jpg", "img1.jpg", "img2.jpg"} and not done_first & done_second  # nothing redone
    assert len(done_first | done_second) == 6
    for name in ("images.csv", "images.jsonl", "summary.json"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
    assert resumed.manifest.errors == clean.manifest.errors
    assert [e["input"] for e in clean.manifest.errors] == [f"{root.as_posix()}/broken.jpg"]
    # A completed audit re-run with the same folder redoes nothing and rewrites the same files.
    third = FakeTask()
    run_fake(lite0, root, labels, tmp_path / "resumed", third)
    assert third.calls == []
    assert (tmp_path / "resumed" / "images.csv").read_bytes() == (tmp_path / "clean" / "images.csv").read_bytes()


def test_a_different_configuration_needs_a_new_folder_or_restart(lite0: Any, samples: Path, tmp_path: Path) -> None:
    root, labels = fake_dataset(tmp_path, samples)
    run_fake(lite0, root, labels, tmp_path / "out", FakeTask())
    labels.write_text(labels.read_text().replace(",1\n", ",2\n"))
    with pytest.raises(JournalMismatchError, match="different dataset, labels_sha256\\); pick a new --out"):
        run_fake(lite0, root, labels, tmp_path / "out", FakeTask())
    again = FakeTask()
    run_fake(lite0, root, labels, tmp_path / "out", again, restart=True)
    assert sum(len(c) for c in again.calls) == 6


def test_classification_options_are_part_of_the_configuration(lite0: Any, samples: Path, tmp_path: Path) -> None:
    from explain.audit import classification_task, run_config
    from explain.audit_inputs import load_audit_inputs

    root, labels = fake_dataset(tmp_path, samples)
    inputs = load_audit_inputs(root, labels, lite0.class_names)
    configs = [run_config(classification_task(lite0, inputs, opts, "cpu"), lite0, inputs, opts, 8)
               for opts in (AuditOptions(labels=labels, sanity=2), AuditOptions(labels=labels, sanity=2, steps=3),
                            AuditOptions(labels=labels, sanity=2, seed=1))]
    assert configs[0]["steps"] != configs[1]["steps"] and configs[0]["seed"] != configs[2]["seed"]
    assert configs[0]["sanity"] == 2  # the count: the sample is drawn from the readable images once they are known
    assert configs[0]["model"]["weights_sha256"] == lite0.weights_sha256


# --------------------------------------------------------------------------------------------------------------
# The classification task on the embedded model


@pytest.fixture(scope="module")
def real_audit(lite0: Any, samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A small real audit: chelsea (cat ids), a dalmatian labelled goldfish (wrong), a llama, a broken file."""
    from explain.run import RunSettings

    tmp = tmp_path_factory.mktemp("real_audit")
    root = tmp / "ds"
    (root / "pets").mkdir(parents=True)
    (root / "pets" / "chelsea.png").write_bytes((samples / "chelsea.png").read_bytes())
    (root / "pets" / "dog.jpg").write_bytes((samples / "gallery" / "dalmatian" / "image_0001.jpg").read_bytes())
    (root / "llama.jpg").write_bytes((samples / "gallery" / "llama" / "image_0001.jpg").read_bytes())
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp / "labels.csv").write_text(
        "path,imagenet_ids\npets/chelsea.png,281;282;285\npets/dog.jpg,1\nllama.jpg,355\nbroken.jpg,1\n"
        "missing.jpg,3\n")
    # chelsea.png is 451 x 300: a box over the whole photo; the dog gets a box inside the crop; the llama one
    # far outside its image.
    (tmp / "boxes.csv").write_text("path,x0,y0,x1,y1\npets/chelsea.png,0,0,451,300\n"
                                   "pets/dog.jpg,60,40,180,150\nllama.jpg,5000,5000,6000,6000\n")
    (tmp / "groups.csv").write_text("path,kind\npets/chelsea.png,pet\npets/dog.jpg,pet\nllama.jpg,farm\n"
                                    "nowhere.jpg,farm\n")
    opts = AuditOptions(labels=tmp / "labels.csv", boxes=tmp / "boxes.csv", groups=tmp / "groups.csv",
                        sanity=3, shift=4, steps=2, worst=2)
    result = run_audit(lite0, root, opts, tmp / "out", RunSettings(batch_size=4))
    return result, root, tmp


def test_records_of_a_real_audit(real_audit: Any, lite0: Any) -> None:
    result, root, _ = real_audit
    by_path = {r["path"]: r for r in result.records}
    assert sorted(by_path) == ["llama.jpg", "pets/chelsea.png", "pets/dog.jpg"]
    cat, dog, llama = by_path["pets/chelsea.png"], by_path["pets/dog.jpg"], by_path["llama.jpg"]
    assert cat["correct"] and cat["pred_class"] in (281, 282, 285) and cat["true_class"] == cat["pred_class"]
    assert not dog["correct"] and dog["true_class"] == 1 and dog["true_name"] == lite0.class_names[1]
    # the whole photo is inside the box (clipped to the centre crop): all of the energy, the whole grid, a hit
    assert cat["box_status"] == "clipped" and cat["energy_in_box"] == 1.0 and cat["box_area"] == 1.0
    assert cat["pointing_hit"] is True
    assert llama["box_status"] == "outside" and llama["energy_in_box"] is None
    assert any("outside the" in n for n in llama["notes"])
    # the sample of 3 is drawn from the readable images (it held broken.jpg when drawn from every listed file)
    assert sum(r["sanity_rho"] is not None for r in result.records) == 3
    for r in result.records:
        assert r["shift_top1_kept"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert 0.0 <= r["deletion_auc"] <= 1.0 and 0.0 <= r["insertion_auc_random"] <= 1.0
    errors = {e["input"]: e["error"] for e in result.manifest.errors}
    assert set(errors) == {f"{root.as_posix()}/broken.jpg", f"{root.as_posix()}/missing.jpg"}
    assert any("nowhere.jpg" in w for w in result.manifest.warnings)
    assert result.summary["groups"]["kind"]["groups"]["pet"]["n"] == 2


def test_energy_in_box_of_a_wrong_prediction_uses_the_true_class_map(real_audit: Any, lite0: Any) -> None:
    """Recompute the dog's energy in NumPy from an independent Grad-CAM++ of the true class (1, goldfish)."""
    from explain.audit_inputs import boxes_to_input
    from explain.cam import compute_cams
    from explain.images import load_image
    from explain.targets import ClassTarget

    result, root, _ = real_audit
    dog = next(r for r in result.records if r["path"] == "pets/dog.jpg")
    loaded = load_image(root / "pets" / "dog.jpg")
    x = lite0.preprocess(loaded.image)[None]
    cam = compute_cams(lite0.model, x, lite0.default_layer, [ClassTarget(1)]).maps[0].map.astype(np.float64)
    (x0, y0, x1, y1), = boxes_to_input([(60, 40, 180, 150)], lite0.preprocess.geometry(*loaded.image.size)).boxes
    centres = np.arange(224) + 0.5
    mask = ((centres[:, None] >= y0) & (centres[:, None] < y1)) & ((centres[None, :] >= x0) & (centres[None, :] < x1))
    assert dog["box_area"] == pytest.approx(mask.mean(), abs=1e-6)
    assert dog["energy_in_box"] == pytest.approx((cam * mask).sum() / cam.sum(), abs=2e-5)
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    ys, xs = np.nonzero(mask)
    near = np.min((ys - peak[0]) ** 2 + (xs - peak[1]) ** 2) <= 15 ** 2
    assert dog["pointing_hit"] is bool(near)


def test_accuracy_equals_predict(real_audit: Any, lite0: Any) -> None:
    from explain.images import find_images
    from explain.predict import predict

    result, root, _ = real_audit
    files, _ = find_images([root])
    predictions = predict(lite0, files, top_k=1).predictions
    top1 = {Path(p.input).relative_to(root).as_posix(): p.top[0].index for p in predictions}
    for r in result.records:
        assert r["pred_class"] == top1[r["path"]]
    assert result.summary["overall"]["accuracy"] == pytest.approx(sum(r["correct"] for r in result.records) / 3)


def test_outputs_and_manifest(real_audit: Any) -> None:
    result, root, tmp = real_audit
    out = tmp / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "audit"
    for name in manifest["outputs"].values():
        assert (out / name).is_file(), name
    csv_lines = (out / "images.csv").read_text().splitlines()
    assert csv_lines[0].endswith(",notes,kind") and len(csv_lines) == 4
    overlays = [i["outputs"]["overlay"] for i in manifest["items"] if i["outputs"]]
    assert overlays and all((out / o).is_file() for o in overlays)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"images": 3, "errors": 2}
    assert not math.isnan(summary["faithfulness"]["mean_deletion_auc"])


def test_dashboard_loads_cleanly_in_a_browser(real_audit: Any, tmp_path: Path) -> None:
    from browser import load_page

    result, _, tmp = real_audit
    html = (tmp / "out" / "dashboard.html").read_text()
    assert "<script" not in html.lower() and "http://" not in html and "https://" not in html
    loaded = load_page(tmp / "out" / "dashboard.html", screenshot=tmp_path / "dashboard.png")
    assert loaded.broken_images == [] and loaded.console_errors == [] and loaded.dialogs == []
    assert "Audit of" in loaded.text and "Worst examples" in loaded.text and "By kind" in loaded.text
    assert loaded.images >= 5


def test_user_text_is_escaped_in_the_dashboard(lite0: Any, samples: Path, tmp_path: Path) -> None:
    from explain.dashboard import render_dashboard

    records = [rec("<img src=x onerror=alert(1)>.jpg", False, 0.9, true_name="<b>cat</b>", pred_name="dog",
                   group="<script>")]
    summary = {"dataset": "<ds>", "model": "m", "method": "gradcam++", "layer": "l",
               "counts": {"images": 1, "errors": 0}, **summarize(records, ["group"], steps=0, shift=0, worst=3),
               "errors": [{"input": "<x>", "error": "<y>"}], "warnings": ["<w>"]}
    html = render_dashboard(summary, records, {})
    for raw in ("<img src=x", "<b>cat", "<script>", "<ds>", "<x>", "<w>"):
        assert raw not in html
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in html


def test_a_tall_narrow_worst_example_stays_a_thumbnail(tmp_path: Path) -> None:
    """A 80x300 photo (Caltech's flamingo/image_0002.jpg) was scaled to the column's width: a picture 1,100 px tall."""
    from browser import load_page
    from PIL import Image

    from explain.dashboard import render_dashboard
    from explain.html import png_data_uri

    records = [rec(name, False, p, true_name="flamingo", pred_name="crane") for name, p in (("tall.jpg", 0.9),
                                                                                           ("wide.jpg", 0.8))]
    summary = {"dataset": "ds", "model": "m", "method": "gradcam++", "layer": "l", "counts": {"images": 2, "errors": 0},
               **summarize(records, [], steps=0, shift=0, worst=3), "errors": [], "warnings": []}
    pictures = {"tall.jpg": Image.new("RGB", (80, 300), (200, 60, 60)), "wide.jpg": Image.new("RGB", (600, 300))}
    page = tmp_path / "dashboard.html"
    page.write_text(render_dashboard(summary, records, {k: png_data_uri(v) for k, v in pictures.items()}))
    loaded = load_page(page, width=1280)
    shown = [size for size in loaded.image_sizes if size[0] * 3 < size[1] * 1.1]  # the tall picture's aspect
    assert shown and all(height <= 320 for _, height in shown), loaded.image_sizes
    assert any(width >= 250 and abs(height / width - 0.5) < 0.02 for width, height in loaded.image_sizes)


def test_faithfulness_translation_and_sanity_are_wired_to_the_metrics(real_audit: Any, lite0: Any) -> None:
    """Recompute the llama's numbers image by image with explain.metrics (batching must not change them)."""
    import zlib

    import torch

    from explain.cam import compute_cams
    from explain.images import load_image
    from explain.metrics import deletion_curves, insertion_curves, random_maps, translation_test
    from explain.targets import TopK

    result, root, _ = real_audit
    llama = next(r for r in result.records if r["path"] == "llama.jpg")
    x = lite0.preprocess(load_image(root / "llama.jpg").image)[None]
    cam = compute_cams(lite0.model, x, lite0.default_layer, [TopK(1)])
    assert int(cam.logits.argmax()) == llama["pred_class"]
    pred = torch.tensor([llama["pred_class"]])
    heat = torch.from_numpy(cam.maps[0].map)[None]
    baseline = random_maps((1, 224, 224), like=(7, 7), seed=zlib.crc32(b"llama.jpg"))
    expected = {
        "deletion_auc": deletion_curves(lite0.model, x, heat, pred, steps=2).auc,
        "deletion_auc_random": deletion_curves(lite0.model, x, baseline, pred, steps=2).auc,
        "insertion_auc": insertion_curves(lite0.model, x, heat, pred, steps=2).auc,
        "insertion_auc_random": insertion_curves(lite0.model, x, baseline, pred, steps=2).auc,
    }
    for key, value in expected.items():
        assert llama[key] == pytest.approx(float(value[0]), abs=2e-4), key
    shifted = translation_test(lite0.model, x, lite0.default_layer, shift=4)
    assert llama["shift_top1_kept"] == pytest.approx(float(shifted.top1_kept.float().mean()))
    assert llama["shift_prob_change"] == pytest.approx(float(shifted.prob_change.abs().mean()), abs=2e-4)
    from explain.metrics import sanity_correlations

    sampled = [r for r in result.records if r["sanity_rho"] is not None]  # sorted by path, as the sample
    assert len(sampled) >= 2  # one network calibrated on all of them, whatever their batches
    xs = torch.stack([lite0.preprocess(load_image(root / r["path"]).image) for r in sampled])
    pred = torch.tensor([r["pred_class"] for r in sampled])
    from explain.hooks import channels_last_layout, prefers_channels_last

    # in the task's memory layout: a randomised network's Grad-CAM map is nearly flat, and its rank correlation
    # moves by ~0.005 between layouts (llama.jpg)
    with channels_last_layout(lite0.model, prefers_channels_last(lite0.model)):
        for field, method in (("sanity_rho", "gradcam++"), ("sanity_rho_gradcam", "gradcam")):
            rho = sanity_correlations(lite0.model, xs, lite0.default_layer, pred, method=method, seed=0)
            assert [r[field] for r in sampled] == pytest.approx(rho.tolist(), abs=1e-3), field


def test_sanity_cascade_is_summarised_and_does_not_depend_on_batching(real_audit: Any, lite0: Any) -> None:
    """The summary holds one cascade row per step, the last being the per-image numbers; another batch size and
    the full randomisation alone (--no-cascade) give the same per-image numbers."""
    import statistics

    from explain.metrics import cascade_length
    from explain.run import RunSettings

    result, root, tmp = real_audit
    sanity = result.summary["sanity"]
    cascade = sanity["cascade"]
    assert sanity["randomisation"] == "recalibrated" and len(cascade) == cascade_length(lite0.model)
    assert [row["randomised_from"] for row in cascade[:2]] == ["_fc", "_conv_head"]
    assert cascade[-1]["randomised_from"] == "(all)"
    rho = [r["sanity_rho"] for r in result.records if r["sanity_rho"] is not None]
    assert cascade[-1]["gradcam++"]["median"] == pytest.approx(statistics.median(rho), abs=1e-6)
    assert cascade[-1]["gradcam++"]["images"] == len(rho) == sanity["images"]
    # Randomising only the classifier keeps Grad-CAM++ maps (alpha ~ 1/2 with a linear head): a known property.
    assert cascade[0]["gradcam++"]["median"] > 0.9
    html = (tmp / "out" / "dashboard.html").read_text()
    assert "cascading randomisation" in html
    opts = AuditOptions(labels=tmp / "labels.csv", sanity=3, shift=0, steps=0, worst=0, cascade=False)
    again = run_audit(lite0, root, opts, tmp / "again", RunSettings(batch_size=1))
    assert len(again.summary["sanity"]["cascade"]) == 1
    for field in ("sanity_rho", "sanity_rho_gradcam"):
        assert [r[field] for r in again.records] == pytest.approx([r[field] for r in result.records], abs=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Known answers on a hand-built model


def colour_model() -> Any:
    """class 0 ("red") = 100 x mean red, class 1 ("green") = 100 x mean green; the layer ``act`` is ReLU(R, G)."""
    from collections import OrderedDict

    import torch
    from torch import nn

    conv = nn.Conv2d(3, 2, 1, bias=False)
    fc = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0
        conv.weight[1, 1] = 1.0
        fc.weight.copy_(100.0 * torch.eye(2))
    return nn.Sequential(OrderedDict(conv=conv, act=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
                                     fc=fc)).eval()


def square_image(path: Path, colour: tuple[int, int, int], x0: int, y0: int, side: int = 16) -> None:
    from PIL import Image

    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[y0:y0 + side, x0:x0 + side] = colour
    Image.fromarray(pixels).save(path)


def test_known_answers_on_a_colour_model(tmp_path: Path) -> None:
    """A red square explained by a model that sums red: the map is the square, so every metric is known.

    * energy in the square's box = 1 (all of the map), box area = 256 / 4096, pointing hit;
    * a box in the far corner: energy 0 and no hit (41 px from the square, beyond the 15 px tolerance);
    * deletion removes the square first, so the probability drops at once: AUC below the random map's; insertion
      puts it back first: AUC above;
    * shifting by 4 px moves the square, its peak with it (peak displacement 0) and keeps the probability;
    * a green square labelled red: wrong, and the red map is empty, so its energy is undefined (None).
    """
    from explain.backbones.base import Backbone, Preprocess
    from explain.run import RunSettings

    root = tmp_path / "ds"
    root.mkdir()
    square_image(root / "red_box.png", (255, 0, 0), 4, 4)
    square_image(root / "red_far.png", (255, 0, 0), 4, 4)
    square_image(root / "green.png", (0, 255, 0), 20, 20)
    (tmp_path / "labels.csv").write_text("path,class_name\nred_box.png,red\nred_far.png,red\ngreen.png,red\n")
    (tmp_path / "boxes.csv").write_text("path,x0,y0,x1,y1\nred_box.png,4,4,20,20\nred_far.png,48,48,64,64\n"
                                        "green.png,20,20,36,36\n")
    backbone = Backbone(name="colour", model=colour_model(),
                        preprocess=Preprocess(resize=None, crop=(64, 64), mean=(0.0,) * 3, std=(1.0,) * 3),
                        class_names=["red", "green"], default_layer="act", feature_layer="act", weights="hand-set",
                        weights_sha256="0" * 64)
    opts = AuditOptions(labels=tmp_path / "labels.csv", boxes=tmp_path / "boxes.csv", sanity=0, shift=4, steps=8,
                        worst=0)
    result = run_audit(backbone, root, opts, tmp_path / "out", RunSettings(batch_size=3))
    records = {r["path"]: r for r in result.records}
    box, far, green = records["red_box.png"], records["red_far.png"], records["green.png"]
    p0 = 1.0 / (1.0 + math.exp(-100.0 * 256 / 4096))  # logits (6.25, 0)
    assert box["correct"] and box["pred_name"] == "red" and box["prob"] == pytest.approx(p0, abs=1e-6)
    assert box["energy_in_box"] == 1.0 and box["box_area"] == 0.0625 and box["pointing_hit"] is True
    assert far["energy_in_box"] == 0.0 and far["pointing_hit"] is False
    assert box["deletion_auc"] < box["deletion_auc_random"] and box["insertion_auc"] > box["insertion_auc_random"]
    # step 1 of 8 deletes 512 of 4096 pixels, the whole square first: p(red) falls from 1 to 0.5 (equal logits)
    assert box["deletion_auc"] == pytest.approx(0.125 * (p0 + 0.5) / 2 + 0.875 * 0.5, abs=1e-5)
    assert box["shift_peak_move"] == 0.0 and box["shift_top1_kept"] == 1.0 and box["shift_prob_change"] == 0.0
    assert not green["correct"] and green["true_class"] == 0 and green["pred_name"] == "green"
    assert green["energy_in_box"] is None and green["box_status"] == "ok"
    assert right_for_wrong_reason(list(records.values())) == [far]  # correct, no energy on its object


def test_sanity_sample_is_drawn_from_readable_images(tmp_path: Path) -> None:
    """Issue 15: ``--sanity 4`` ran on 2 images without a word: the sample was drawn before unreadable files
    were dropped. It is drawn from the images every batch could read."""
    from explain.backbones.base import Backbone, Preprocess
    from explain.run import RunSettings

    root = tmp_path / "ds"
    root.mkdir()
    good = [f"g{i}.png" for i in range(4)]
    bad = {f"b{i}.png" for i in range(3)}
    for i, name in enumerate(good):
        square_image(root / name, (255, 0, 0) if i % 2 else (0, 255, 0), 4 * i, 8)
    for name in bad:
        (root / name).write_bytes(b"not an image")
    rows = "".join(f"{name},red\n" for name in [*good, *sorted(bad)])
    (tmp_path / "labels.csv").write_text("path,class_name\n" + rows)
    assert sanity_sample([*good, *bad], 4, 0) & bad  # the old sample (of every listed file) hit unreadable ones
    backbone = Backbone(name="colour", model=colour_model(),
                        preprocess=Preprocess(resize=None, crop=(64, 64), mean=(0.0,) * 3, std=(1.0,) * 3),
                        class_names=["red", "green"], default_layer="act", feature_layer="act", weights="hand-set",
                        weights_sha256="0" * 64)
    opts = AuditOptions(labels=tmp_path / "labels.csv", sanity=4, shift=0, steps=0, worst=0, cascade=False)
    result = run_audit(backbone, root, opts, tmp_path / "out", RunSettings(batch_size=2))
    assert sorted(e["input"] for e in result.manifest.errors) == sorted(f"{root.as_posix()}/{b}" for b in bad)
    lines = [json.loads(line) for line in (tmp_path / "out" / JOURNAL).read_text().splitlines()]
    final = next(line for line in lines if "final" in line)["final"]
    assert sorted(final["sanity"]["keys"]) == good


def test_cli_gap_line_names_two_groups_with_their_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    from cli.audit_command import _print_gaps

    records = [rec("a", True, 0.9, light="indoor"), rec("b", False, 0.9, light="indoor"),
               rec("c", True, 0.9, light="outdoor"), rec("d", False, 0.9, light="outdoor"),
               rec("e", True, 0.9, colour="[gray]"), rec("f", False, 0.9, colour="colour")]
    body = summarize(records, ["light", "colour"], steps=4, shift=2, worst=1)
    _print_gaps(SimpleNamespace(summary=body, out=Path("out")), "accuracy")  # type: ignore[arg-type]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "groups by light: no accuracy gap between indoor n=2 and outdoor n=2"
    assert lines[1] == "groups by colour: accuracy gap 1.000 ([gray] n=1 over colour n=1)"  # not eaten as markup


def test_dashboard_caption_keeps_small_probabilities_visible() -> None:
    from explain.dashboard import _caption

    record = rec("x.png", False, 0.00116, true_name="tabby", pred_name="tiger")
    assert "(p 0.0012)" in _caption(record)  # was "(p 0.001)"


def test_probability_histogram_legend_sits_above_the_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    """The legend used to sit inside the axes, over the tallest bars."""
    import explain.dashboard as dashboard

    figures: list[Any] = []
    monkeypatch.setattr(dashboard, "_plot", lambda fig, alt, cls=None: figures.append(fig))
    records = [{"true_prob": p, "correct": p > 0.3} for p in (0.05, 0.1, 0.5, 0.5, 0.55, 0.95, 0.97, 0.99)]
    dashboard._probability_plot(records)
    (fig,) = figures
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.y0 >= ax.get_window_extent(renderer).y1 - 1  # entirely above the plotting area
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["correct (6)", "wrong (2)"]


def test_worst_overlays_of_a_jpg_and_a_png_are_two_files(lite0: Any, samples: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: overlays were named by the stem alone, so a.jpg and a.png wrote one overlays/a.jpg."""
    import explain.audit_outputs
    from PIL import Image

    from explain.run import RunSettings

    root = tmp_path / "ds"
    root.mkdir()
    for name in ("a.jpg", "a.png"):
        with Image.open(samples / "chelsea.png") as image:
            image.convert("RGB").resize((64, 48)).save(root / name)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,class_index\na.jpg,1\na.png,1\n")
    shades = iter(range(0, 250, 50))
    monkeypatch.setattr(explain.audit_outputs, "render_overlays", lambda backbone, inputs, paths, layer, settings: {
        p: Image.new("RGB", (8, 8), (next(shades),) * 3) for p in paths})
    class ConfidentlyWrong(FakeTask):
        def records(self, batch: Any, keys: Sequence[str]) -> list[dict[str, Any]]:
            return [{**r, "correct": False, "prob": 0.9} for r in super().records(batch, keys)]

    result = run_audit(lite0, root, AuditOptions(labels=labels, worst=2), tmp_path / "out", RunSettings(batch_size=2),
                       task_factory=lambda *a: ConfidentlyWrong())
    overlays = [item["outputs"]["overlay"] for item in result.manifest.items]
    assert sorted(overlays) == ["overlays/a_jpg.jpg", "overlays/a_png.jpg"]
    assert (tmp_path / "out" / overlays[0]).read_bytes() != (tmp_path / "out" / overlays[1]).read_bytes()


# --- issue 15: the dashboard's wording says what it shows ------------------------------------------------------
def test_confident_mistakes_are_confident() -> None:
    """The list was the most probable mistakes whatever their probability (p 0.2 was a "confident mistake")."""
    from explain.audit_summary import CONFIDENT_PROB
    from explain.dashboard import _worst

    records = [*RECORDS, rec("f", False, 0.3, colour="gray"), rec("g", False, 0.5, colour="gray")]
    assert CONFIDENT_PROB == 0.5
    assert worst_examples(records, 5)["confident_mistakes"] == ["e", "c", "g"]  # f (p 0.3) is not confident
    summary = {"worst": {"confident_mistakes": ["e"]}, "localisation": {"images_with_box": 0}}
    assert "<h3>Confident mistakes (wrong class at p &gt;= 0.5)</h3>" in _worst(summary, NAMED, {})


NAMED = [{**r, "true_name": "tabby", "pred_name": "tiger"} for r in RECORDS]


def test_worst_examples_caption_mentions_green_boxes_only_when_there_are_boxes() -> None:
    from explain.dashboard import _worst

    summary = {"worst": {"confident_mistakes": ["e"]}, "localisation": {"images_with_box": 0}}
    assert "Grad-CAM++ of the predicted class.</p>" in _worst(summary, NAMED, {})
    summary["localisation"]["images_with_box"] = 4
    assert "Grad-CAM++ of the predicted class; boxes in green.</p>" in _worst(summary, NAMED, {})


def test_group_table_leaves_out_the_box_columns_without_boxes() -> None:
    from explain.dashboard import _groups

    boxless = [{**r, "energy_in_box": None, "box_area": None, "pointing_hit": None} for r in RECORDS]
    for records, boxed in ((RECORDS, True), (boxless, False)):
        html = str(_groups(summarize(records, ["colour"], steps=8, shift=0, worst=1)))
        assert ("<th>energy in box</th>" in html) is boxed and ("<th>pointing</th>" in html) is boxed
        assert "<th>mean true prob</th>" in html


def test_group_bars_tell_zero_from_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A recall of 0 and a recall nobody measured both drew no bar at all."""
    import explain.dashboard as dashboard
    from matplotlib.colors import to_rgba

    figures: list[Any] = []
    monkeypatch.setattr(dashboard, "_plot", lambda fig, alt, cls=None: figures.append(fig))
    groups = {"night": {"objects": 4, "recall": 0.0, "mean_iou": None},
              "day": {"objects": 5, "recall": 0.6, "mean_iou": 0.7},
              "dusk": {"objects": 0, "recall": None, "mean_iou": None}}
    dashboard._group_plot("light", groups, ("recall", "mean_iou"))
    (fig,) = figures
    ax = fig.axes[0]
    recall_bars, iou_bars = ax.containers
    marks = {(round(t.get_position()[0], 6), t.get_text()) for t in ax.texts}
    centre = [round(p.get_x() + p.get_width() / 2, 6) for p in recall_bars.patches]
    iou_centre = [round(p.get_x() + p.get_width() / 2, 6) for p in iou_bars.patches]
    assert marks == {(centre[0], "0"), (centre[2], "n/a"), (iou_centre[0], "n/a"), (iou_centre[2], "n/a")}
    zero = next(t for t in ax.texts if t.get_text() == "0")
    assert to_rgba(zero.get_color()) == recall_bars.patches[0].get_facecolor()  # in the bar's colour
    assert ax.get_title() == "by light (n/a: no data)"
    dashboard._group_plot("light", {"day": groups["day"]}, ("recall", "mean_iou"))
    assert len(figures[1].axes[0].texts) == 0 and figures[1].axes[0].get_title() == "by light"
