"""`cnn-explain filters` and `cnn-explain activations`: outputs found through the manifest, raw arrays that match the
model, and one clear line with exit code 2 for every bad option."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def load_manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_filters_default_first_layer(tmp_path: Path, lite0) -> None:
    out = tmp_path / "f"
    result = run("filters", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out)
    assert manifest["command"] == "filters" and manifest["norm"] == "symmetric"
    (item,) = manifest["items"]
    assert item["layer"] == "_conv_stem" and item["view"] == "rgb" and item["channels"] == list(range(32))
    for key in ("figure", "weights", "tiles"):
        assert (out / item["outputs"][key]).is_file(), key
    assert item["outputs"]["figure"].endswith(".png")
    weights = np.load(out / item["outputs"]["weights"])
    tiles = np.load(out / item["outputs"]["tiles"])
    assert weights.dtype == np.float32 and tiles.dtype == np.float32
    np.testing.assert_array_equal(weights, lite0.model._conv_stem.weight.detach().numpy())
    expected = (0.5 + 0.5 * weights / np.abs(weights).max()).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(tiles, expected, atol=1e-6)


def test_filters_deeper_layers_norms_and_svg(tmp_path: Path) -> None:
    out = tmp_path / "f"
    result = run("filters", "--layer", "_blocks.5._project_conv", "--layer", "_blocks.3._depthwise_conv",
                 "--view", "norms", "--sort", "norm", "--format", "svg", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    pointwise, depthwise = load_manifest(out)["items"]
    assert pointwise["view"] == depthwise["view"] == "norms"
    norms = np.load(out / pointwise["outputs"]["norms"])
    weights = np.load(out / pointwise["outputs"]["weights"])
    assert norms.shape == (80, 240) and weights.shape == (80, 240, 1, 1)
    order = pointwise["channels"]
    np.testing.assert_allclose(norms, np.abs(weights[order, :, 0, 0]), rtol=1e-5)
    assert np.load(out / depthwise["outputs"]["norms"]).shape == (144,)
    assert (out / depthwise["outputs"]["figure"]).read_text().lstrip().startswith("<?xml")


def test_activations_and_receptive_fields(tmp_path: Path, samples: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(samples / "chelsea.png", folder / "chelsea.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "a"
    result = run("activations", str(folder), "--layer", "_blocks.3._expand_act", "--top", "6",
                 "--unit", "_blocks.3:5:10:10", "--out", str(out), "--quiet")
    assert result.exit_code == 1, result.output  # one input failed, the other worked
    manifest = load_manifest(out)
    assert [e["input"].endswith("broken.jpg") for e in manifest["errors"]] == [True]
    maps_item, unit_item = manifest["items"]
    for item in manifest["items"]:
        for path in item["outputs"].values():
            assert (out / path).is_file(), path
    maps = np.load(out / maps_item["outputs"]["activations"])
    assert maps.dtype == np.float32 and maps.shape == (144, 56, 56) and maps_item["shape"] == [144, 56, 56]
    means = maps.reshape(144, -1).mean(1)
    assert maps_item["channels"] == [int(c) for c in np.argsort(-means, kind="stable")[:6]]
    np.testing.assert_allclose(maps_item["channel_means"], means[maps_item["channels"]], atol=1e-5)
    assert maps_item["prediction"][0]["name"]  # the same forward pass gives the prediction

    erf = np.load(out / unit_item["outputs"]["erf"])
    rf = unit_item["theoretical_rf"]
    assert unit_item["unit"] == "_blocks.3:5:10:10" and rf["size"] == [35, 35] and erf.shape == (224, 224)
    x0, y0, x1, y1 = (int(round(v)) for v in rf["box_clipped"])
    inside = np.zeros(erf.shape, dtype=bool)
    inside[y0:y1, x0:x1] = True
    assert erf[~inside].max() == 0.0 and erf[inside].sum() > 0
    assert unit_item["effective_rf"]["mass_in_box"] == pytest.approx(1.0)


def test_activations_chosen_channels_tile_scale_pdf(tmp_path: Path, samples: Path) -> None:
    out = tmp_path / "a"
    result = run("activations", str(samples / "chelsea.png"), "--layer", "_stem_act", "--channels", "0-3,9",
                 "--scale", "tile", "--format", "pdf", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    (item,) = load_manifest(out)["items"]
    assert item["channels"] == [0, 1, 2, 3, 9] and item["scale"] == "tile"
    assert (out / item["outputs"]["figure"]).read_bytes().startswith(b"%PDF")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["filters", "--layer", "_bn0"], "not a 2-D convolution"),
        (["filters", "--channels", "0-40"], "channel 40 is out of range"),
        (["activations", "IMG", "--layer", "_fc"], "spatial"),
        (["activations", "IMG", "--layer", "_blocks.5", "--channels", "5-x"], "bad --channels"),
        (["activations", "IMG", "--layer", "_blocks.5", "--top", "3", "--channels", "1"], "either --top"),
        (["activations", "IMG", "--unit", "_blocks.5:3"], "a unit needs a position"),
        (["activations", "IMG"], "needs --layer"),
    ],
)
def test_bad_options_one_line_exit_2(args: list[str], message: str, samples: Path, tmp_path: Path) -> None:
    args = [str(samples / "chelsea.png") if a == "IMG" else a for a in args]
    result = run(*args, "--out", str(tmp_path / "o"), "--quiet")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
