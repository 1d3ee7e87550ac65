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
    # the query is itself in the gallery: left out of its own neighbours, and the manifest says so
    assert len(nearest) == 5 and "panda/image_0002.jpg" not in [n["path"] for n in nearest]
    assert item["left_out"]["path"] == "panda/image_0002.jpg" and nearest[0]["distance"] > 1e-3
    assert [n["rank"] for n in nearest] == [1, 2, 3, 4, 5]
    assert all(a["distance"] <= b["distance"] for a, b in zip(nearest, nearest[1:]))
    assert sum(n["class_name"] == "panda" for n in nearest) >= 3  # of the 5 other pandas
    assert (tmp_path / item["outputs"]["figure"]).is_file()
    purity = manifest["evaluation"]["purity"]
    assert purity["1"] >= 0.9 and purity["5"] >= 0.7 and manifest["evaluation"]["evaluated"] == 36
    assert sorted(purity, key=int) == ["1", "5", "10"]  # -k 5 is one of the standard ks
    again = run("neighbours", "--index", built, "-k", "3", "--out", tmp_path / "k3", "--evaluate", "--json")
    assert sorted(json.loads(again.stdout)["evaluation"]["purity"], key=int) == ["1", "3", "5", "10"]


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
    # A map of another folder into the same --out: OUT/index belongs to the map, so it is replaced (with a warning)
    # rather than refused with a --rebuild hint that tsne has no option for.
    other = tmp_path / "g2"
    shutil.copytree(GALLERY / "panda", other / "panda")
    result = run("tsne", other, "--method", "pca", "--out", tmp_path / "o", "--workers", "0")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["warnings"][0].startswith(f"replaced the index in {tmp_path / 'o' / 'index'}: ")
    assert "warning: replaced the index" in result.output and len(manifest["items"]) == 6
    assert json.loads((tmp_path / "o" / "index" / "index.json").read_text())["gallery"] == str(other.resolve())


def test_a_map_written_inside_its_gallery_is_not_read_back(tmp_path: Path) -> None:
    """QA: ``tsne G --out G/maps`` run twice used to index its own figures (map.png, grid.png...) as images."""
    gallery = tmp_path / "g"
    shutil.copytree(GALLERY / "llama", gallery / "llama")
    for _ in range(2):
        result = run("tsne", gallery, "--method", "pca", "--out", gallery / "maps", "--quiet", "--workers", "0")
        assert result.exit_code == 0, result.output
        assert json.loads((gallery / "maps" / "index" / "index.json").read_text())["count"] == 6


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
    assert result.exit_code == 2 and "either a GALLERY folder or --index DIR, not both" in result.output
    result = run("tsne", "--out", tmp_path / "o")  # QA: neither was answered with "... (not both)"
    assert result.exit_code == 2 and "give a GALLERY folder or --index DIR" in result.output
    assert "both" not in result.output
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


def test_index_of_another_gallery_folder_is_refused(built: Path, tmp_path: Path) -> None:
    """QA: indexing another folder into an index silently removed the first folder's 36 entries."""
    other = tmp_path / "other"
    shutil.copytree(GALLERY / "pizza", other / "pizza")
    before = (built / "index.json").read_text()
    result = run("index", other, "--out", built, "--quiet", "--workers", "0")
    assert result.exit_code == 2, result.output
    assert f"was built from the gallery {GALLERY}" in result.output
    assert "--rebuild" in result.output and "another --out" in result.output and "Traceback" not in result.output
    assert (built / "index.json").read_text() == before


def test_model_mismatch_hints_fit_the_command(built: Path, tmp_path: Path) -> None:
    """QA: neighbours suggested --rebuild/--out (it has neither) and gave resnet18 the index's layer name."""
    query = GALLERY / "llama" / "image_0001.jpg"
    result = run("neighbours", query, "--index", built, "--model", "resnet18", "--weights", "none", "--quiet",
                 "--out", tmp_path / "nb")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())  # undo line wrapping
    assert "this run uses resnet18 (weights none, layer avgpool)" in text
    assert "pass the index's model (--model efficientnet_lite0, with its default weights)" in text
    assert f"cnn-explain index {GALLERY} --out {built} --model resnet18 --weights none --rebuild" in text
    assert "another --out" not in text and "_avg_pooling) (different" not in text
    result = run("index", GALLERY, "--out", built, "--model", "resnet18", "--weights", "none", "--quiet")
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "use another --out folder" in text and "pass --rebuild" in text


def _small_index(tmp_path: Path) -> tuple[Path, Path]:
    gallery = tmp_path / "g"
    shutil.copytree(GALLERY / "panda", gallery / "panda")
    index = tmp_path / "idx"
    result = run("index", gallery, "--out", index, "--quiet", "--workers", "0", "--labels", "folders")
    assert result.exit_code == 0, result.output
    return gallery, index


def test_neighbours_warn_when_gallery_images_are_gone(tmp_path: Path) -> None:
    """QA: after the gallery was deleted, neighbours drew grey tiles without a word."""
    gallery, index = _small_index(tmp_path)
    query = GALLERY / "panda" / "image_0002.jpg"
    (gallery / "panda" / "image_0001.jpg").unlink()  # the query's nearest neighbour (itself is left out)
    result = run("neighbours", query, "--index", index, "-k", "3", "--out", tmp_path / "nb1")
    assert result.exit_code == 0, result.output  # the features are still valid
    manifest = json.loads((tmp_path / "nb1" / "manifest.json").read_text())
    assert manifest["items"][0]["neighbours"][0]["path"] == "panda/image_0001.jpg"
    [warning] = manifest["warnings"]
    assert warning.startswith("1 gallery image(s) shown as neighbours could not be read") and \
        "(panda/image_0001.jpg)" in warning and f"cnn-explain index {gallery.resolve()} --out {index}" in warning
    assert "warning: 1 gallery image(s)" in result.output  # on stderr too
    shutil.rmtree(gallery)
    result = run("neighbours", query, "--index", index, "-k", "3", "--out", tmp_path / "nb2", "--quiet")
    assert result.exit_code == 0, result.output
    [warning] = json.loads((tmp_path / "nb2" / "manifest.json").read_text())["warnings"]
    assert warning.startswith("3 gallery image(s)") and "no longer exists" in warning and "--rebuild" in warning
    assert "warning: 3 gallery image(s)" in result.stderr  # --quiet keeps warnings, as in every command


def test_neighbour_figures_are_capped_but_the_manifest_is_not(built: Path, tmp_path: Path) -> None:
    result = run("neighbours", GALLERY.parent / "coffee.png", "--index", built, "-k", "100", "--quiet",
                 "--out", tmp_path)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(manifest["items"][0]["neighbours"]) == 36
    assert manifest["warnings"] == ["the figures show the 35 nearest of the 36 neighbours (the manifest lists all "
                                    "of them)"]


def test_tsne_size_and_thread_options_are_bounded(built: Path, tmp_path: Path) -> None:
    """QA: --thumb-size 5000 was killed for lack of memory, 0 was accepted, --threads 0 crashed in sklearn."""
    from cli import gallery_command
    from explain import gallery_run

    assert (gallery_command.MIN_THUMB, gallery_command.MAX_THUMB, gallery_command.MAX_BORDER) == \
        (gallery_run.MIN_THUMB, gallery_run.MAX_THUMB, gallery_run.MAX_BORDER)
    base = ("tsne", "--index", built, "--out", tmp_path / "o", "--method", "pca", "--quiet")
    for bad in (("--thumb-size", "5000"), ("--thumb-size", "0"), ("--thumb-size", "7"), ("--border", "33"),
                ("--threads", "-2"), ("--batch-size", "100000")):
        result = run(*base, *bad)
        assert result.exit_code == 2 and bad[0] in result.output, (bad, result.output)
    result = run(*base, "--threads", "0")
    assert result.exit_code == 2 and "--threads must be at least 1, or -1 for all cores" in result.output
    assert not (tmp_path / "o" / "manifest.json").exists()
    result = run(*base, "--thumb-size", "8", "--threads", "-1")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["grid"]["cell_px"] == 8


def test_evaluate_notes_classes_with_fewer_than_k_other_members(built: Path, tmp_path: Path) -> None:
    """Issue 15: the gallery's classes have 6 images each, so at k=10 no query can have 10 neighbours of its class:
    purity there cannot reach 1, and the evaluation says so."""
    result = run("neighbours", "--index", built, "--out", tmp_path / "a", "--evaluate")
    assert result.exit_code == 0, result.output
    note = ("note: purity at k=8, 10 cannot reach 1: 6 classes have fewer than k other members: dalmatian (5), "
            "llama (5), panda (5), pizza (5), schooner (5), soccer_ball (5)")  # -k 8 (the default), and 1, 5, 10
    assert note in result.stderr.splitlines()
    data = json.loads(run("neighbours", "--index", built, "--out", tmp_path / "b", "--evaluate", "--json").stdout)
    assert data["evaluation"]["notes"] == [note.removeprefix("note: ")]
