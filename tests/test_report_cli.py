"""`cnn-explain report` on real photos: pages, index, PDF, bad inputs, hostile names, neighbours, and a real browser."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.browser import load_page, parse_html

runner = CliRunner()
HOSTILE = "<img src=x onerror=alert(1)>.jpg"
SCREENS = Path("/tmp/report_screens")


pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def load(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def image_sources(path: Path) -> list[str]:
    return [str(attrs.get("src")) for tag, attrs in parse_html(path).tags if tag == "img"]


@pytest.fixture(scope="module")
def html_run(tmp_path_factory: pytest.TempPathFactory, samples: Path) -> tuple[dict, Path, Path]:
    """chelsea.png, a copy of china.jpg named like an HTML tag, a text file named .jpg and an empty .png."""
    photos = tmp_path_factory.mktemp("photos")
    shutil.copy(samples / "chelsea.png", photos / "chelsea.png")
    shutil.copy(samples / "china.jpg", photos / HOSTILE)
    (photos / "broken.jpg").write_text("this is not a picture")
    (photos / "empty.png").write_bytes(b"")
    out = tmp_path_factory.mktemp("report")
    result = run("report", photos, photos / "missing.jpg", "--samples", "2", "--out", out, "--quiet")
    assert result.exit_code == 1, result.output  # some inputs failed, the others were reported
    return load(out), out, photos


def test_pages_index_and_manifest(html_run) -> None:
    manifest, out, photos = html_run
    assert manifest["command"] == "report" and manifest["format"] == "html" and manifest["samples"] == 2
    assert manifest["outputs"] == {"index": "index.html"} and (out / "index.html").is_file()
    assert [Path(i["input"]).name for i in manifest["items"]] == [HOSTILE, "chelsea.png"]
    failed = {Path(e["input"]).name: e["error"] for e in manifest["errors"]}
    assert set(failed) == {"broken.jpg", "empty.png", "missing.jpg"}
    assert "not an image" in failed["broken.jpg"] and "empty" in failed["empty.png"]
    chelsea = manifest["items"][1]
    assert chelsea["prediction"][0]["name"] == "tiger cat" and len(chelsea["prediction"]) == 5
    assert [c["index"] for c in chelsea["explained"]] == [p["index"] for p in chelsea["prediction"][:3]]
    assert chelsea["smoothgrad"]["samples"] == 2 and chelsea["layer"] == "_head_act"
    assert chelsea["channel"]["layer"] == "_blocks.5"  # the unit view's mid layer: units see 83 of 224 px
    page = out / chelsea["outputs"]["page"]
    parsed = parse_html(page)
    text = " ".join(parsed.text)
    assert "tiger cat" in text and "Egyptian cat" in text and "tabby" in text
    assert len(image_sources(page)) == 4  # photo, Grad-CAM++ row, gradients row, channel view
    assert page.stat().st_size < 3_000_000
    # the index page links every page and lists every failed input
    index = parse_html(out / "index.html")
    links = {a["href"] for tag, a in index.tags if tag == "a"}
    assert links == {i["outputs"]["page"] for i in manifest["items"]}
    index_text = " ".join(index.text)
    for name in ("broken.jpg", "empty.png", "missing.jpg", failed["broken.jpg"]):
        assert name in index_text


def test_the_caption_names_a_seed_that_seed_accepts(html_run) -> None:
    """The SmoothGrad caption gives the run's --seed (each image's 64-bit noise seed follows from it and the image),
    not a per-image seed that --seed would refuse."""
    from cli.common import SEED_MAX

    manifest, out, _ = html_run
    for item in manifest["items"]:
        text = " ".join(parse_html(out / item["outputs"]["page"]).text)
        seeds = [int(s) for s in re.findall(r"seed (\d+)", text)]
        assert seeds == [manifest["seed"]] and 0 <= seeds[0] <= SEED_MAX, seeds
        assert "--seed 0" in text


def test_every_image_of_every_page_is_embedded_or_next_to_it(html_run) -> None:
    manifest, out, _ = html_run
    pages = [out / "index.html"] + [out / i["outputs"]["page"] for i in manifest["items"]]
    assert all(p.is_file() for p in pages)
    for page in pages:
        sources = image_sources(page)
        assert sources
        for src in sources:
            assert src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) or (out / src).is_file(), src
        assert "<script" not in page.read_text(encoding="utf-8").lower()


def test_a_hostile_file_name_is_text(html_run) -> None:
    manifest, out, _ = html_run
    item = manifest["items"][0]
    page = out / item["outputs"]["page"]
    assert re.fullmatch(r"[A-Za-z0-9._-]+\.html", item["outputs"]["page"])
    for path in (page, out / "index.html"):
        parsed = parse_html(path)
        assert HOSTILE in " ".join(parsed.text)
        assert all("onerror" not in attrs for _, attrs in parsed.tags)
        assert all(str(attrs.get("src", "")).startswith("data:") for tag, attrs in parsed.tags if tag == "img")


def test_in_a_browser_pages_load_clean_and_the_hostile_name_shows_as_text(html_run, tmp_path: Path) -> None:
    manifest, out, _ = html_run
    hostile_page = out / manifest["items"][0]["outputs"]["page"]
    pages = {"index": out / "index.html", "hostile": hostile_page,
             "chelsea": out / manifest["items"][1]["outputs"]["page"]}
    SCREENS.mkdir(parents=True, exist_ok=True)
    for name, page in pages.items():
        shot = tmp_path / f"report_{name}.png"
        loaded = load_page(page, screenshot=shot)
        assert loaded.broken_images == [], (name, loaded.broken_images)
        assert loaded.console_errors == [], (name, loaded.console_errors)
        assert loaded.dialogs == [], (name, loaded.dialogs)
        assert loaded.images >= 1
        if name in ("index", "hostile"):
            assert HOSTILE in loaded.text, name
        assert shot.stat().st_size > 10_000
        shutil.copy(shot, SCREENS / shot.name)


def _pdf_pages(data: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))


def test_pdf_has_one_page_per_good_image(tmp_path: Path, samples: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    out = tmp_path / "out"
    result = run("report", samples / "chelsea.png", broken, samples / "coffee.png", "--format", "pdf",
                 "--samples", "1", "--out", out, "--quiet")
    assert result.exit_code == 1, result.output
    manifest = load(out)
    assert manifest["outputs"] == {"pdf": "report.pdf"} and len(manifest["items"]) == 2
    assert [e["input"] for e in manifest["errors"]] == [str(broken.as_posix())]
    assert [i["outputs"] for i in manifest["items"]] == [{"pdf": "report.pdf", "pdf_page": 1},
                                                         {"pdf": "report.pdf", "pdf_page": 2}]
    data = (out / "report.pdf").read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert _pdf_pages(data) == 2
    fonts = set(re.findall(rb"/Subtype\s*/(Type3|TrueType|CIDFontType2|Type1)\b", data))
    assert fonts and b"Type3" not in fonts  # TrueType fonts, as publishers' checkers want
    assert not list(out.glob("*.html")) and not list(out.glob(".*.tmp"))


def test_hostile_class_names_of_a_custom_model(tmp_path: Path, samples: Path) -> None:
    names = ["<b>bold</b>", "<script>alert(1)</script>", "a$b$c & d"]
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(names) + "\n")
    out = tmp_path / "out"
    result = run("report", samples / "coffee.png", "--model", "squeezenet1_1", "--weights", "none",
                 "--num-classes", "3", "--classes", classes, "--samples", "1", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    item = load(out)["items"][0]
    assert sorted(c["name"] for c in item["explained"]) == sorted(names)
    page = out / item["outputs"]["page"]
    parsed = parse_html(page)
    assert not any(tag == "script" for tag, _ in parsed.tags)
    text = " ".join(parsed.text)
    assert all(name in text for name in names)
    raw = page.read_text(encoding="utf-8")
    assert "<b>bold</b>" not in raw and "&lt;b&gt;bold&lt;/b&gt;" in raw


@pytest.fixture(scope="module")
def small_index(tmp_path_factory: pytest.TempPathFactory, samples: Path) -> Path:
    """An index of 3 pandas and 3 pizzas (labels from the folders)."""
    gallery = tmp_path_factory.mktemp("gallery")
    for label in ("panda", "pizza"):
        (gallery / label).mkdir()
        for path in sorted((samples / "gallery" / label).glob("*.jpg"))[:3]:
            shutil.copy(path, gallery / label / path.name)
    out = gallery.parent / (gallery.name + "_index")
    result = run("index", gallery, "--out", out, "--labels", "folders", "--quiet", "--workers", "0")
    assert result.exit_code == 0, result.output
    return out


def test_missing_gallery_neighbours_are_a_warning(small_index: Path, samples: Path, tmp_path: Path) -> None:
    """QA: neighbours whose gallery file is gone were drawn as placeholders without a word."""
    from explain.gallery import load_index

    index = load_index(small_index)
    copy = tmp_path / "index"
    shutil.copytree(small_index, copy)
    meta = json.loads((copy / "index.json").read_text())
    meta["gallery"] = str(tmp_path / "moved-away")  # the gallery as if it had been moved
    (copy / "index.json").write_text(json.dumps(meta))
    if load_index(copy).root == index.root:
        pytest.skip("the index does not store its gallery root in index.json")
    out = tmp_path / "out"
    result = run("report", samples / "coffee.png", "--index", copy, "-k", "2", "--samples", "1", "--out", out,
                 "--quiet")
    assert result.exit_code == 0, result.output
    (warning,) = [w for w in load(out)["warnings"] if "gallery image(s) shown as neighbours" in w]
    assert warning.startswith("2 gallery image(s)") and "no longer exists" in warning
    assert "2 gallery image(s) shown as neighbours" in result.stderr


def test_index_adds_the_nearest_gallery_images(small_index: Path, tmp_path: Path) -> None:
    from explain import load_backbone
    from explain.gallery import embed_files, load_index, search
    from explain.images import find_images

    index = load_index(small_index)
    query = index.file(0)  # a gallery image: it is left out of its own neighbours
    out = tmp_path / "out"
    result = run("report", query, "--index", small_index, "-k", "2", "--samples", "1", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    manifest = load(out)
    item = manifest["items"][0]
    nearest = item["neighbours"]
    assert [n["rank"] for n in nearest] == [1, 2]
    assert index.entries[0].path not in [n["path"] for n in nearest] and nearest[0]["distance"] > 1e-3
    assert all(n["label"] == "panda" for n in nearest)  # the two other pandas
    # the same neighbours as the gallery engine finds for the file, less the file itself
    files, _ = find_images([query])
    embedded = embed_files(load_backbone("efficientnet_lite0"), files, index.layer, workers=0)
    found = search(embedded.features, index.features, 2, exclude=np.array([0]))
    assert [n["row"] for n in nearest] == found.ids[0].tolist()
    np.testing.assert_allclose([n["distance"] for n in nearest], found.distances[0], atol=1e-3)
    page = out / item["outputs"]["page"]
    assert len(image_sources(page)) == 4 + 2
    text = " ".join(parse_html(page).text)
    assert all(n["path"] in text for n in nearest) and "nearest gallery images" in text


def test_an_index_of_another_model_is_refused(small_index: Path, tmp_path: Path, samples: Path) -> None:
    result = run("report", samples / "coffee.png", "--index", small_index, "--model", "efficientnet_lite1",
                 "--out", tmp_path, "--quiet")
    assert result.exit_code == 2
    assert "features of different models" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "manifest.json").exists()


def test_bad_options_fail_before_any_work(tmp_path: Path, samples: Path) -> None:
    result = run("report", samples / "coffee.png", "--format", "docx", "--out", tmp_path)
    assert result.exit_code == 2 and "unknown report format 'docx'" in result.stderr
    result = run("report", samples / "coffee.png", "--metric", "hamming", "--out", tmp_path)
    assert result.exit_code == 2 and "unknown metric" in result.stderr
    assert not (tmp_path / "manifest.json").exists()
