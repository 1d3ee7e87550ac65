"""`cnn-explain index`, `neighbours` and `tsne` on the shipped gallery: outputs, reuse, and clear refusals."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
GALLERY = Path(__file__).resolve().parents[1] / "sample_images" / "gallery"


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gallery") / "idx"
    result = run("index", GALLERY, "--out", out, "--labels", GALLERY / "labels.csv", "--quiet", "--workers", "0")
    assert result.exit_code == 0, result.output
    return out


def test_index_outputs_and_incremental_rerun(built: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["command"] == "index" and manifest["model"]["name"] == "efficientnet_lite0"
    assert manifest["index"]["count"] == 36 and manifest["index"]["added"] == 36 and manifest["index"]["labelled"] == 36
    assert len(manifest["items"]) == 36 and manifest["errors"] == []
    features = np.load(built / manifest["outputs"]["features"])
    assert features.shape == (36, 1280) and features.dtype == np.float32
    rows = list(csv.DictReader((built / manifest["outputs"]["files"]).open()))
    assert rows[0]["path"] == "dalmatian/image_0001.jpg" and rows[0]["class_name"] == "dalmatian"
    assert {"size", "mtime_ns", "sha256"} <= set(rows[0])
    again = run("index", GALLERY, "--out", built, "--workers", "0")
    assert again.exit_code == 0, again.output
    assert "added 0" in again.output and "unchanged 36" in again.output and "36 labelled" in again.output


def test_neighbours_of_a_gallery_image_and_evaluation(built: Path, tmp_path: Path) -> None:
    query = GALLERY / "panda" / "image_0002.jpg"
    result = run("neighbours", query, "--index", built, "-k", "5", "--out", tmp_path, "--evaluate", "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout[result.stdout.index("{"):])
    item = manifest["items"][0]
    nearest = item["neighbours"]
    assert len(nearest) == 5 and nearest[0]["path"] == "panda/image_0002.jpg" and nearest[0]["distance"] < 1e-4
    assert [n["rank"] for n in nearest] == [1, 2, 3, 4, 5]
    assert all(a["distance"] <= b["distance"] for a, b in zip(nearest, nearest[1:]))
    assert sum(n["class_name"] == "panda" for n in nearest) >= 4
    assert (tmp_path / item["outputs"]["figure"]).is_file()
    purity = manifest["evaluation"]["purity"]
    assert purity["1"] >= 0.9 and purity["5"] >= 0.7 and manifest["evaluation"]["evaluated"] == 36


def test_tsne_from_the_index(built: Path, tmp_path: Path) -> None:
    result = run("tsne", "--index", built, "--out", tmp_path, "--thumb-size", "32")
    assert result.exit_code == 0, result.output
    assert "trustworthiness@5" in result.output and "perplexity lowered" in result.output
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    trust = manifest["trustworthiness"]
    assert trust["k"] == 5 and 0.8 < trust["value"] <= 1.0
    for name in manifest["outputs"].values():
        assert (tmp_path / name).is_file(), name
    rows = list(csv.DictReader((tmp_path / manifest["outputs"]["coords_csv"]).open()))
    assert len(rows) == 36 and {"x", "y", "grid_row", "grid_col", "class_name"} <= set(rows[0])
    coords = np.load(tmp_path / manifest["outputs"]["coords"])
    assert coords.shape == (36, 2)
    np.testing.assert_allclose(coords[:, 0], [float(r["x"]) for r in rows], rtol=1e-5)
    cells = {(int(r["grid_row"]), int(r["grid_col"])) for r in rows}
    assert len(cells) == 36 and manifest["grid"] == {"rows": 6, "cols": 6, "cell_px": 32}
    assert len(manifest["items"]) == 36 and manifest["method"] == "tsne"


def test_pca_map_of_a_gallery_folder_builds_a_reusable_index(tmp_path: Path) -> None:
    gallery = tmp_path / "g"
    for cls in ("llama", "pizza"):
        shutil.copytree(GALLERY / cls, gallery / cls)
    result = run("tsne", gallery, "--method", "pca", "--labels", "folders", "--out", tmp_path / "o", "--quiet",
                 "--workers", "0")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["method"] == "pca" and manifest["index"].endswith("index")
    assert json.loads((tmp_path / "o" / "index" / "index.json").read_text())["count"] == 12


# --- bad input ------------------------------------------------------------------------------------------------


def test_index_of_another_model_is_refused(built: Path) -> None:
    before = (built / "index.json").read_text()
    result = run("index", GALLERY, "--out", built, "--weights", "none", "--quiet")
    assert result.exit_code == 2
    assert "cannot be mixed" in result.output and "--rebuild" in result.output and "Traceback" not in result.output
    result = run("index", GALLERY, "--out", built, "--layer", "_head_act", "--quiet")
    assert result.exit_code == 2 and "layer" in result.output
    result = run("neighbours", GALLERY / "llama" / "image_0001.jpg", "--index", built, "--weights", "none",
                 "--quiet", "--out", built.parent / "nb")
    assert result.exit_code == 2 and "cannot be mixed" in result.output
    assert (built / "index.json").read_text() == before


def test_corrupt_or_missing_index(built: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(built, broken)
    feat = next(broken.glob("features-*.npy"))
    feat.write_bytes(feat.read_bytes()[:1000])
    result = run("neighbours", "--index", broken, "--evaluate", "--quiet")
    assert result.exit_code == 2 and "corrupt" in result.output and "--rebuild" in result.output
    result = run("tsne", "--index", tmp_path / "nothing", "--out", tmp_path / "o", "--quiet")
    assert result.exit_code == 2 and "no such index folder" in result.output
    (broken / "index.json").write_text("[]")
    result = run("tsne", "--index", broken, "--out", tmp_path / "o", "--quiet")
    assert result.exit_code == 2 and "not a cnn-explain feature index" in result.output


def test_empty_gallery_and_bad_usage(tmp_path: Path, built: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run("index", tmp_path / "empty", "--out", tmp_path / "idx", "--quiet")
    assert result.exit_code == 2 and "no images found" in result.output
    assert not (tmp_path / "idx" / "index.json").exists()
    result = run("tsne", GALLERY, "--index", built, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "either" in result.output
    result = run("neighbours", "--index", built)
    assert result.exit_code == 2 and "--evaluate" in result.output
    result = run("neighbours", "--index", built, "--evaluate", "--metric", "manhattan")
    assert result.exit_code == 2 and "l2 or cosine" in result.output
    result = run("tsne", "--index", built, "--method", "mds", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "tsne, pca or umap" in result.output


def test_unreadable_images_are_listed_not_lost(tmp_path: Path) -> None:
    gallery = tmp_path / "g"
    shutil.copytree(GALLERY / "pizza", gallery / "pizza")
    (gallery / "pizza" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (gallery / "notes.png").write_bytes(b"")
    out = tmp_path / "idx"
    result = run("index", gallery, "--out", out, "--quiet", "--workers", "0")
    assert result.exit_code == 1, result.output  # some inputs failed, others worked
    assert "pizza/broken.jpg" in result.output and "notes.png" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["index"]["count"] == 6 and manifest["index"]["failed"] == 2
    assert sorted(e["input"].rsplit("/", 2)[-1] for e in manifest["errors"]) == ["broken.jpg", "notes.png"]
    assert len(json.loads((out / "index.json").read_text())["skipped"]) == 2
    again = run("index", gallery, "--out", out, "--quiet", "--workers", "0")
    assert again.exit_code == 1 and "broken.jpg" in again.output  # still reported on the next update
