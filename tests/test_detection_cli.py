"""`cnn-explain detect` / `segment` end to end: a user detector checkpoint with custom classes, manifests, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
DETECTOR = "fasterrcnn_mobilenet_v3_large_fpn"


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A user's detector: random Faster R-CNN weights for 3 classes (background + 2), a class-name file without
    the background, saved the way training scripts do (a nested, DataParallel-prefixed state_dict)."""
    from explain.backbones import load_backbone

    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = load_backbone(DETECTOR, "none", num_classes=3).model
    with torch.no_grad():
        for p in model.parameters():  # jitter: torchvision's init makes every score tie
            p.add_(torch.randn_like(p) * 0.05)
    torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in model.state_dict().items()}},
               folder / "pets.pth")
    (folder / "pets.txt").write_text("tabby\nastronaut\n")
    return folder / "pets.pth", folder / "pets.txt"


@pytest.fixture(scope="module")
def detect_run(checkpoint, samples: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    weights, classes = checkpoint
    out = tmp_path_factory.mktemp("detect")
    bad = out.parent / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    result = run("detect", str(samples / "chelsea.png"), str(bad), "--model", DETECTOR, "--weights", str(weights),
                 "--classes", str(classes), "--min-size", "160", "--detection", "1", "--detection", "3",
                 "--out", str(out), "--quiet")
    assert result.exit_code == 1, result.output  # one input failed, the other was explained
    return json.loads((out / "manifest.json").read_text()), out


def test_checkpoint_with_custom_classes_end_to_end(detect_run, checkpoint):
    manifest, out = detect_run
    assert manifest["command"] == "detect" and manifest["model"]["num_classes"] == 3
    assert manifest["model"]["weights"] == str(checkpoint[0]) and len(manifest["model"]["weights_sha256"]) == 64
    (error,) = manifest["errors"]
    assert error["input"].endswith("broken.jpg") and "not an image" in error["error"]
    (image,) = manifest["images"]
    assert len(image["detections"]) > 3
    assert {d["name"] for d in image["detections"]} <= {"tabby", "astronaut"}
    items = manifest["items"]
    assert [i["detection"]["rank"] for i in items] == [1, 3]
    for item in items:
        d = item["detection"]
        assert d == image["detections"][d["rank"] - 1]
        assert item["target"]["name"] == d["name"] and item["target"]["component"] == "score"
        heat = np.load(out / item["outputs"]["map"])
        assert heat.shape == (300, 451) and heat.dtype == np.float32 and 0.0 <= heat.min() <= heat.max() <= 1.0
        assert np.load(out / item["outputs"]["map_layer"]).ndim == 2
        for key in ("overlay", "figure"):
            assert (out / item["outputs"][key]).stat().st_size > 1000
    assert (out / image["outputs"]["detections"]).is_file()
    assert items[0]["target"]["score"] != items[1]["target"]["score"]


def test_box_and_class_choose_the_overlapping_detection(detect_run, checkpoint, samples, tmp_path):
    manifest, _ = detect_run
    wanted = manifest["images"][0]["detections"][1]
    x0, y0, x1, y1 = wanted["box"]
    box = f"{x0 + 1},{y0 + 1},{x1 - 1},{y1 - 1}"
    result = run("detect", str(samples / "chelsea.png"), "--model", DETECTOR, "--weights", str(checkpoint[0]),
                 "--classes", str(checkpoint[1]), "--min-size", "160", "--box", box, "--target", wanted["name"],
                 "--method", "guided", "--out", str(tmp_path), "--json", "--quiet")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    (item,) = payload["items"]
    assert item["detection"]["name"] == wanted["name"]
    assert payload["selection"]["mode"] == "box"
    assert np.load(tmp_path / item["outputs"]["gradient"]).shape == (3, 300, 451)


def test_nothing_explained_is_a_warning_per_photo_and_exit_2(checkpoint, samples, tmp_path):
    result = run("detect", str(samples / "chelsea.png"), "--model", DETECTOR, "--weights", str(checkpoint[0]),
                 "--classes", str(checkpoint[1]), "--min-size", "160", "--box", "0,0,5,5", "--out", str(tmp_path),
                 "--quiet")
    assert result.exit_code == 2, result.output  # DESIGN: 2 when nothing could be done
    manifest = json.loads((tmp_path / "manifest.json").read_text())  # the run is complete: it says what happened
    assert manifest["items"] == [] and "best IoU" in manifest["images"][0]["note"]
    assert "best IoU" in result.stderr and "nothing was produced for any input" in result.stderr


def test_usage_errors_exit_2(checkpoint, samples, tmp_path):
    photo = str(samples / "chelsea.png")
    result = run("detect", photo, "--model", "lraspp_mobilenet_v3_large", "--weights", "none", "--out", str(tmp_path))
    assert result.exit_code == 2 and "segmentation model" in result.stderr and "cnn-explain segment" in result.stderr
    result = run("detect", photo, "--model", DETECTOR, "--weights", "none", "--target", "1", "--out", str(tmp_path))
    assert result.exit_code == 2 and "--target needs --box" in result.stderr
    result = run("detect", photo, "--model", DETECTOR, "--weights", "none", "--layer", "backbone.bodyy.16",
                 "--out", str(tmp_path))
    assert result.exit_code == 2 and "did you mean" in result.stderr
    result = run("detect", photo, "--model", DETECTOR, "--weights", "COCO_V1", "--out", str(tmp_path))
    assert result.exit_code == 2 and "never downloads" in result.stderr
    assert not (tmp_path / "manifest.json").exists()


def test_segment_end_to_end(samples, tmp_path):
    result = run("segment", str(samples / "coffee.png"), "--model", "lraspp_mobilenet_v3_large", "--weights",
                 "none", "--num-classes", "3", "--target", "1", "--target", "2", "--out", str(tmp_path), "--quiet")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (image,) = manifest["images"]
    class_map = np.load(tmp_path / image["outputs"]["class_map"])
    assert class_map.shape == (520, 780)  # coffee.png is 600 x 400: shorter side to 520
    explained = {i["target"]["index"] for i in manifest["items"]}
    assert explained == {c for c in (1, 2) if (class_map == c).any()}
    assert result.exit_code == (0 if explained else 2), result.output  # random weights: maybe no class 1 or 2
    for item in manifest["items"]:
        region = np.load(tmp_path / item["outputs"]["mask"]).astype(bool)
        assert np.array_equal(region, class_map == item["target"]["index"])
        assert item["target"]["pixels"] == int(region.sum())
        assert (tmp_path / item["outputs"]["figure"]).stat().st_size > 1000


def test_layers_lists_detector_layers():
    result = run("layers", "--model", DETECTOR, "--weights", "none", "--size", "128", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    names = {row["name"] for row in payload["items"]}
    assert payload["default_layer"] == "backbone.body.16" and "backbone.fpn.layer_blocks.0" in names


def test_segment_with_a_user_mask(samples, tmp_path):
    from PIL import Image

    mask = Image.new("L", (600, 400))
    mask.paste(255, (100, 50, 300, 250))
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "out"
    result = run("segment", str(samples / "coffee.png"), "--model", "lraspp_mobilenet_v3_large", "--weights",
                 "none", "--num-classes", "3", "--target", "2", "--mask", str(tmp_path / "mask.png"),
                 "--method", "guided", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    (item,) = json.loads((out / "manifest.json").read_text())["items"]
    region = np.load(out / item["outputs"]["mask"]).astype(bool)
    assert item["target"]["region"] == "mask" and item["target"]["pixels"] == int(region.sum()) == 260 * 260
    rows, cols = np.nonzero(region)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (65, 324, 130, 389)
    assert np.load(out / item["outputs"]["gradient"]).shape == (3, 520, 780)
    result = run("segment", str(samples / "coffee.png"), "--model", "lraspp_mobilenet_v3_large", "--weights",
                 "none", "--mask", str(tmp_path / "mask.png"), "--out", str(out))
    assert result.exit_code == 2 and "--mask needs --target" in result.stderr


@pytest.mark.parametrize("command", ["detect", "segment"])
def test_ctrl_c_keeps_the_finished_photos_in_a_partial_manifest(command, checkpoint, samples, tmp_path, monkeypatch):
    """detect and segment run their own loop: Ctrl-C printed only "error: interrupted" and listed nothing."""
    import explain.detection.engine
    import explain.detection.run

    module, name = ((explain.detection.engine, "explain_detections") if command == "detect"
                    else (explain.detection.run, "_segment_group"))
    real, calls = getattr(module, name), []

    def interrupted_after_one(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted_after_one)
    model = (["--model", DETECTOR, "--weights", str(checkpoint[0]), "--classes", str(checkpoint[1]),
              "--min-size", "160", "--detection", "1"] if command == "detect"
             else ["--model", "lraspp_mobilenet_v3_large", "--weights", "none", "--num-classes", "3", "--mask",
                   str(_half_mask(tmp_path)), "--target", "1"])
    out = tmp_path / "out"
    photos = [str(samples / name) for name in ("chelsea.png", "coffee.png", "camera.png")]
    result = runner.invoke(app, [command, *photos, *model, "--batch-size", "1", "--out", str(out), "--quiet"])
    assert result.exit_code == 130, result.output
    assert "1 of 3 inputs finished" in result.stderr and "manifest.partial.json" in result.stderr
    assert not (out / "manifest.json").exists()
    partial = json.loads((out / "manifest.partial.json").read_text())
    assert {item["input"] for item in partial["items"]} == {photos[0]}
    assert all((out / path).is_file() for item in partial["items"] for path in item["outputs"].values()
               if isinstance(path, str))


def _half_mask(folder: Path) -> Path:
    from PIL import Image

    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255
    path = folder / "mask.png"
    Image.fromarray(mask).save(path)
    return path
