"""Tests of explain.images: finding image files and loading awkward ones safely."""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from explain.errors import InputError, UsageError
from explain.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    MIN_SIDE,
    find_images,
    file_sha256,
    load_image,
    to_rgb,
)

try:
    from tests import imagefactory as factory
except ImportError:  # tests/ is on sys.path itself (no package __init__)
    import imagefactory as factory  # type: ignore[no-redef]


@pytest.fixture(scope="module", params=["default-source", "synthetic"])
def bad_folder(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, str | None], Path | None]:
    """The factory's folder (read-only for tests), from the repository photo if present and from synthetic content."""
    source = factory.DEFAULT_SOURCE if request.param == "default-source" else None
    root = tmp_path_factory.mktemp(f"bad-{request.param}")
    return root, factory.make_bad_folder(root, source), source


def _pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(np.int32)


def _box_mean(image: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return _pixels(image)[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)


# ----------------------------------------------------------------------------------------------------------------
# The factory folder


def test_factory_folder_lists_every_file_it_wrote(bad_folder: tuple[Path, dict[str, str | None], Path | None]) -> None:
    root, expected, _ = bad_folder
    assert sorted(p.name for p in root.iterdir()) == sorted(expected)
    assert {"normal.jpg", "empty.jpg", "truncated.jpg", "text.jpg", "tiny_1x1.png", "bomb.png", "cmyk.jpg",
            "gray16.png", "rgba.png", "anim.gif", "exif_rotated.jpg", "palette.png"} <= set(expected)
    assert (root / "bomb.png").stat().st_size < 1000


def test_every_bad_file_fails_with_its_reason_and_every_good_one_loads(
    bad_folder: tuple[Path, dict[str, str | None], Path | None],
) -> None:
    root, expected, _ = bad_folder
    for name, reason in expected.items():
        path = root / name
        if reason is None:
            loaded = load_image(path)
            assert loaded.image.mode == "RGB", name
            assert min(loaded.image.size) >= MIN_SIDE, name
            assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest(), name
            assert loaded.display == path.as_posix()
            assert loaded.path == path
            loaded.image.load()  # fully decoded, independent of the file
        else:
            with pytest.raises(InputError) as info:
                load_image(path, display=f"shown/{name}")
            assert reason in info.value.reason, (name, info.value.reason)
            assert info.value.path == f"shown/{name}"
            assert "\n" not in str(info.value)


def test_exact_reasons(bad_folder: tuple[Path, dict[str, str | None], Path | None]) -> None:
    root, _, _ = bad_folder

    def reason(name: str) -> str:
        with pytest.raises(InputError) as info:
            load_image(root / name)
        return info.value.reason

    assert reason("empty.jpg") == "empty file (0 bytes)"
    assert reason("text.jpg").startswith("not an image: ")
    assert reason("truncated.jpg").startswith("truncated or corrupt image data: ")
    assert reason("bomb.png") == (
        "image too large: 40000x40000 = 1600.0 MP exceeds the 100 MP limit (decompression-bomb guard)"
    )
    assert reason("tiny_1x1.png").startswith("image too small: 1x1")


def test_no_warnings_leak(
    bad_folder: tuple[Path, dict[str, str | None], Path | None], recwarn: pytest.WarningsRecorder
) -> None:
    root, expected, _ = bad_folder
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in expected:
            try:
                load_image(root / name)
            except InputError:
                pass
    assert len(recwarn) == 0, [str(w.message) for w in recwarn]


def test_normal_jpeg_matches_its_source(bad_folder: tuple[Path, dict[str, str | None], Path | None]) -> None:
    root, _, source = bad_folder
    loaded = load_image(root / "normal.jpg")
    reference = factory.source_image(source)
    assert loaded.image.size == reference.size
    assert np.abs(_pixels(loaded.image) - _pixels(reference)).mean() < 4
    assert loaded.original_mode == "RGB"
    assert loaded.notes == []
    assert loaded.sha256 == file_sha256(root / "normal.jpg")


def test_gray16_is_scaled_by_its_full_range_not_clipped(
    bad_folder: tuple[Path, dict[str, str | None], Path | None],
) -> None:
    root, _, _ = bad_folder
    loaded = load_image(root / "gray16.png")
    assert loaded.original_mode.startswith("I")
    assert "16-bit scaled to 8-bit" in loaded.notes
    pixels = _pixels(loaded.image)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    row = pixels[0, :, 0]
    assert row.max() == 255 and row.min() == 0
    assert (np.diff(row) >= 0).all()
    width = factory.GRAY16_SIZE[0]
    expected = np.rint(np.rint(np.linspace(0, 65535, width)) * 255 / 65535)
    assert np.abs(row - expected).max() <= 1
    assert abs(int(row[width // 2]) - 128) <= 2  # PIL's clipping convert would give 255 here


def test_rgba_transparency_becomes_white(bad_folder: tuple[Path, dict[str, str | None], Path | None]) -> None:
    root, _, source = bad_folder
    loaded = load_image(root / "rgba.png")
    assert loaded.original_mode == "RGBA"
    assert "alpha composited on white" in loaded.notes
    x0, y0, x1, y1 = factory.RGBA_TRANSPARENT
    assert (_pixels(loaded.image)[y0:y1, x0:x1] == 255).all()
    half = _box_mean(loaded.image, factory.RGBA_HALF)
    assert np.abs(half - 127.5).max() <= 2
    reference = _pixels(factory.source_image(source))
    assert (_pixels(loaded.image)[40:, 40:] == reference[40:, 40:]).all()  # opaque pixels untouched


def test_cmyk_colours_close_to_rgb(bad_folder: tuple[Path, dict[str, str | None], Path | None]) -> None:
    root, _, source = bad_folder
    loaded = load_image(root / "cmyk.jpg")
    assert loaded.original_mode == "CMYK"
    assert "CMYK converted to RGB" in loaded.notes
    inner = (4, 4, factory.MARKER - 4, factory.MARKER - 4)
    assert np.abs(_box_mean(loaded.image, inner) - np.array(factory.RED)).max() < 25
    reference = _pixels(factory.source_image(source))
    assert np.abs(_pixels(loaded.image)[40:, 40:] - reference[40:, 40:]).mean() < 8


def test_gif_gives_first_frame(bad_folder: tuple[Path, dict[str, str | None], Path | None]) -> None:
    root, _, _ = bad_folder
    loaded = load_image(root / "anim.gif")
    assert loaded.image.size == (64, 48)
    assert (_pixels(loaded.image) == np.array(factory.GIF_COLOURS[0])).all()
    assert f"animated GIF: first of {len(factory.GIF_COLOURS)} frames used" in loaded.notes


def test_exif_rotated_has_swapped_size_and_marker_top_right(
    bad_folder: tuple[Path, dict[str, str | None], Path | None],
) -> None:
    root, _, _ = bad_folder
    loaded = load_image(root / "exif_rotated.jpg")
    stored_w, stored_h = factory.EXIF_SIZE
    assert loaded.image.size == (stored_h, stored_w)
    assert "EXIF orientation 6 applied" in loaded.notes
    width, _ = loaded.image.size
    m = factory.MARKER
    top_right = _box_mean(loaded.image, (width - m + 4, 4, width - 4, m - 4))
    top_left = _box_mean(loaded.image, (4, 4, m - 4, m - 4))
    assert np.abs(top_right - np.array(factory.RED)).max() < 30
    assert np.abs(top_left - np.array(factory.RED)).max() > 60


def test_palette_png_loads_exactly(bad_folder: tuple[Path, dict[str, str | None], Path | None]) -> None:
    root, _, _ = bad_folder
    loaded = load_image(root / "palette.png")
    assert loaded.original_mode == "P"
    with Image.open(root / "palette.png") as reference:
        assert (_pixels(loaded.image) == _pixels(reference.convert("RGB"))).all()


# ----------------------------------------------------------------------------------------------------------------
# Decompression-bomb guard


def test_bomb_is_refused_quickly_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder
) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(factory.bomb_png())
    limit_before = Image.MAX_IMAGE_PIXELS

    def no_decoding(self: object, *args: object, **kwargs: object) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    start = time.perf_counter()
    with pytest.raises(InputError) as info:
        load_image(path)
    assert time.perf_counter() - start < 1.0
    assert "40000x40000 = 1600.0 MP" in info.value.reason
    assert "decompression-bomb guard" in info.value.reason
    assert Image.MAX_IMAGE_PIXELS == limit_before
    assert len(recwarn) == 0


def test_bomb_refused_even_with_a_higher_limit_than_pil(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(factory.bomb_png(30000, 30000))  # 900 MP: above PIL's error threshold, below ours
    with pytest.raises(InputError, match="30000x30000 = 900.0 MP exceeds the 500 MP limit"):
        load_image(path, max_pixels=500_000_000)


def test_own_limit_applies_and_pil_limit_is_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "photo.png"
    factory.source_image(None).save(path)  # 320x240 = 76800 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL alone would refuse this image
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_image(path)
    assert loaded.image.size == (320, 240)
    assert Image.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(InputError, match=r"320x240 = 0\.1 MP exceeds the 0\.05 MP limit"):
        load_image(path, max_pixels=50_000)
    assert Image.MAX_IMAGE_PIXELS == 1000
    assert load_image(path, max_pixels=320 * 240).image.size == (320, 240)


def test_max_pixels_must_be_positive(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    factory.source_image(None).save(path)
    for bad in (0, -5, 1.5, True):
        with pytest.raises(UsageError):
            load_image(path, max_pixels=bad)  # type: ignore[arg-type]
    assert DEFAULT_MAX_PIXELS == 100_000_000


def test_truncated_images_setting_is_left_alone(tmp_path: Path) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    root = tmp_path / "bad"
    factory.make_bad_folder(root, None)
    with pytest.raises(InputError):
        load_image(root / "truncated.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# ----------------------------------------------------------------------------------------------------------------
# More modes and broken files


def _save(image: Image.Image, path: Path, **options: object) -> Path:
    image.save(path, **options)
    return path


def test_grayscale_and_bilevel_become_rgb(tmp_path: Path) -> None:
    gray = Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1)), mode="L")
    loaded = load_image(_save(gray, tmp_path / "gray.png"))
    assert loaded.original_mode == "L" and loaded.notes == []
    assert (_pixels(loaded.image)[..., 1] == np.asarray(gray)).all()
    bilevel = Image.new("1", (20, 20), 0)
    bilevel.paste(1, (0, 0, 10, 20))
    loaded = load_image(_save(bilevel, tmp_path / "bw.png"))
    assert loaded.original_mode == "1"
    assert (_pixels(loaded.image)[:, :10] == 255).all() and (_pixels(loaded.image)[:, 10:] == 0).all()


def test_palette_with_transparency_and_la_composite_on_white(tmp_path: Path) -> None:
    palette = Image.new("P", (20, 20), 0)
    palette.putpalette([0, 0, 255, 255, 0, 0] + [0] * (256 * 3 - 6))
    palette.paste(1, (0, 0, 10, 20))  # left half: index 1 (red), right half: index 0 (blue)
    loaded = load_image(_save(palette, tmp_path / "trns.png", transparency=1))
    assert loaded.original_mode == "P"
    assert "alpha composited on white" in loaded.notes
    assert (_pixels(loaded.image)[:, :10] == 255).all()
    assert (_pixels(loaded.image)[:, 10:] == np.array([0, 0, 255])).all()

    la = Image.merge("LA", (Image.new("L", (20, 20), 0), Image.new("L", (20, 20), 0)))
    loaded = load_image(_save(la, tmp_path / "la.png"))
    assert loaded.original_mode == "LA"
    assert (_pixels(loaded.image) == 255).all()

    opaque = Image.new("RGBA", (20, 20), (1, 2, 3, 255))
    loaded = load_image(_save(opaque, tmp_path / "opaque.png"))
    assert loaded.notes == [] and (_pixels(loaded.image) == np.array([1, 2, 3])).all()


def test_sixteen_bit_variants_in_memory() -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    for mode, raw in (("I;16", values.astype("<u2")), ("I;16B", values.astype(">u2"))):
        image = Image.frombytes(mode, (4, 1), raw.tobytes())
        rgb, notes = to_rgb(image)
        assert rgb.mode == "RGB"
        assert list(np.asarray(rgb)[0, :, 0]) == [0, 1, 128, 255], mode
        assert notes == ["16-bit scaled to 8-bit"]


def test_int32_and_float_images(tmp_path: Path) -> None:
    sixteen = Image.fromarray(np.tile(np.array([0, 65535], dtype=np.int32), (20, 10)))
    loaded = load_image(_save(sixteen, tmp_path / "i16.tif"))
    assert loaded.original_mode == "I" and "16-bit scaled to 8-bit" in loaded.notes
    assert set(np.unique(_pixels(loaded.image))) == {0, 255}

    wide = Image.fromarray(np.tile(np.array([-1000, 99000], dtype=np.int32), (20, 10)))
    loaded = load_image(_save(wide, tmp_path / "i32.tif"))
    assert set(np.unique(_pixels(loaded.image))) == {0, 255}
    assert any("stretched" in note for note in loaded.notes)

    unit = Image.fromarray(np.tile(np.array([0.0, 0.5, 1.0], dtype=np.float32), (20, 7)))
    loaded = load_image(_save(unit, tmp_path / "unit.tif"))
    assert loaded.original_mode == "F"
    assert sorted(np.unique(_pixels(loaded.image))) == [0, 128, 255]

    ranged = np.tile(np.array([-5.0, 0.0, 5.0], dtype=np.float32), (20, 7))
    ranged[0, 0] = np.nan
    loaded = load_image(_save(Image.fromarray(ranged), tmp_path / "ranged.tif"))
    values = _pixels(loaded.image)[..., 0]
    assert values[1, 0] == 0 and values[1, 1] == 128 and values[1, 2] == 255
    assert any("NaN" in note for note in loaded.notes)


@pytest.mark.parametrize(
    ("orientation", "swapped", "corner"),
    [(1, False, "top-left"), (3, False, "bottom-right"), (6, True, "top-right"), (8, True, "bottom-left")],
)
def test_exif_orientations(tmp_path: Path, orientation: int, swapped: bool, corner: str) -> None:
    stored = Image.new("RGB", (60, 40), (0, 0, 255))
    stored.paste(factory.RED, (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = orientation
    loaded = load_image(_save(stored, tmp_path / "o.jpg", quality=95, exif=exif.tobytes()))
    width, height = loaded.image.size
    assert (width, height) == ((40, 60) if swapped else (60, 40))
    boxes = {
        "top-left": (3, 3, 13, 13),
        "top-right": (width - 13, 3, width - 3, 13),
        "bottom-left": (3, height - 13, 13, height - 3),
        "bottom-right": (width - 13, height - 13, width - 3, height - 3),
    }
    for name, box in boxes.items():
        is_red = np.abs(_box_mean(loaded.image, box) - np.array(factory.RED)).max() < 30
        assert is_red == (name == corner), (orientation, name)
    assert (f"EXIF orientation {orientation} applied" in loaded.notes) == (orientation != 1)


def test_animated_webp_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in factory.GIF_COLOURS]
    path = tmp_path / "anim.webp"
    try:
        frames[0].save(path, save_all=True, append_images=frames[1:], lossless=True, duration=50)
    except (OSError, KeyError, ValueError):  # pragma: no cover - Pillow without WebP support
        pytest.skip("Pillow cannot write animated WebP here")
    loaded = load_image(path)
    assert (_pixels(loaded.image) == np.array(factory.GIF_COLOURS[0])).all()
    assert any("first of 4 frames" in note for note in loaded.notes)


def test_minimum_side(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="image too small: 15x100"):
        load_image(_save(Image.new("RGB", (15, 100)), tmp_path / "narrow.png"))
    assert load_image(_save(Image.new("RGB", (MIN_SIDE, MIN_SIDE)), tmp_path / "ok.png")).image.size == (16, 16)


def test_corrupt_files(tmp_path: Path) -> None:
    buffer_path = _save(factory.source_image(None), tmp_path / "good.png")
    png = bytearray(buffer_path.read_bytes())
    middle = len(png) // 2
    png[middle : middle + 64] = bytes(64)  # zero out part of the compressed pixel data
    (tmp_path / "corrupt.png").write_bytes(bytes(png))
    with pytest.raises(InputError, match="truncated or corrupt image data"):
        load_image(tmp_path / "corrupt.png")

    (tmp_path / "header.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x01" * 20)
    with pytest.raises(InputError, match="starts like a PNG file"):
        load_image(tmp_path / "header.png")

    (tmp_path / "random.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="not an image"):
        load_image(tmp_path / "random.jpg")


def test_eps_is_never_opened(tmp_path: Path) -> None:
    path = tmp_path / "figure.eps"
    path.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n", encoding="ascii")
    with pytest.raises(InputError, match="not an image"):
        load_image(path)


def test_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file or folder"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(InputError, match="is a folder"):
        load_image(tmp_path)
    with pytest.raises(InputError, match="no such file or folder"):
        file_sha256(tmp_path / "missing.jpg")


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(payload)
    assert file_sha256(path) == hashlib.sha256(payload).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# find_images


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "photos"
    for name in ("b.jpg", "A.PNG", "a.jpg", "c.TIFF", "notes.txt", "a/x.webp", "a/.hidden.jpg", "sub/deep/z.gif",
                 "sub/y.bmp", ".cache/h.jpg", "noext", "img.jpeg.bak"):
        _touch(root / name)
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    return root


def test_find_images_walks_sorted_recursively_and_skips_hidden(tree: Path) -> None:
    found, errors = find_images(["photos"])
    assert errors == []
    assert [item.display for item in found] == [
        "photos/A.PNG",
        "photos/a/x.webp",
        "photos/a.jpg",
        "photos/b.jpg",
        "photos/c.TIFF",
        "photos/sub/deep/z.gif",
        "photos/sub/y.bmp",
    ]
    assert all(item.path == Path(item.display) for item in found)


def test_find_images_explicit_files_missing_paths_and_duplicates(tree: Path) -> None:
    found, errors = find_images(["photos/notes.txt", "nope.jpg", "photos/b.jpg", "photos", "./photos/b.jpg", "empty",
                                 Path("photos/sub")])
    displays = [item.display for item in found]
    assert displays[0] == "photos/notes.txt"  # an explicitly named file is kept whatever its extension
    assert displays[1] == "photos/b.jpg"  # first occurrence wins
    assert displays.count("photos/b.jpg") == 1 and len(displays) == len(set(displays))
    assert "photos/sub/y.bmp" in displays and "sub/y.bmp" not in displays
    assert len(found) == 8
    assert [(e.path, e.reason) for e in errors] == [("nope.jpg", "no such file or folder")]


def test_find_images_empty_inputs_and_folders(tree: Path) -> None:
    assert find_images([]) == ([], [])
    assert find_images(["empty"]) == ([], [])


def test_find_images_hidden_folder_given_explicitly_is_walked(tree: Path) -> None:
    found, _ = find_images(["photos/.cache"])
    assert [item.display for item in found] == ["photos/.cache/h.jpg"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
def test_find_images_symlinks(tree: Path) -> None:
    try:
        os.symlink(tree / "b.jpg", tree / "link.jpg")
        os.symlink(tree / "sub", tree / "loop")
    except OSError:  # pragma: no cover - e.g. Windows without the privilege
        pytest.skip("cannot create symbolic links")
    found, errors = find_images(["photos"])
    displays = [item.display for item in found]
    assert "photos/link.jpg" not in displays  # same file as photos/b.jpg, which comes first
    assert not any(d.startswith("photos/loop/") for d in displays)  # folder links are not followed
    assert errors == []


def test_find_images_leaves_out_excluded_folders_met_in_a_walk(tree: Path) -> None:
    _touch(tree / "out" / "cat" / "overlay.png")
    _touch(tree / "sub" / "out2" / "map.png")
    everything = [item.display for item in find_images(["photos"])[0]]
    assert "photos/out/cat/overlay.png" in everything and "photos/sub/out2/map.png" in everything
    # any spelling of the folder matches (relative, absolute, through a link); missing folders are ignored
    os.symlink(tree / "sub" / "out2", "link-to-out2")
    found, errors = find_images(["photos"], exclude=["photos/out", "link-to-out2", "missing", tree / "c.TIFF"])
    displays = [item.display for item in found]
    assert errors == [] and displays == [d for d in everything if "/out" not in d]
    # named explicitly, an excluded folder (or a folder inside it) is walked: the user asked for it
    assert [i.display for i in find_images(["photos/out"], exclude=["photos/out"])[0]] == ["photos/out/cat/overlay.png"]
    assert [i.display for i in find_images(["photos/out/cat"], exclude=["photos/out"])[0]] == [
        "photos/out/cat/overlay.png"]
    assert find_images(["photos/out/cat/overlay.png"], exclude=["photos/out"])[0][0].display == (
        "photos/out/cat/overlay.png")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs symbolic links and named pipes")
def test_find_images_reports_image_named_entries_that_are_not_files(tree: Path) -> None:
    """Broken links, link loops and pipes named like images are errors, with the reason the explicit case gives;
    hidden entries, other extensions and links to folders stay silently skipped, and nothing hangs or loops."""
    odd = tree / "odd"
    odd.mkdir()
    os.symlink("nowhere.png", odd / "dangling.png")
    os.symlink("loop2.png", odd / "loop1.png")
    os.symlink("loop1.png", odd / "loop2.png")
    os.mkfifo(odd / "x.png")  # opening it would block: it must never reach load_image
    os.symlink(tree / "b.jpg", odd / "good-link.jpg")
    os.symlink(odd, odd / "folder-link.png")  # a folder link named like an image: not followed, no error
    os.symlink(tree, odd / "up")  # a folder link loop
    os.symlink("nowhere.png", odd / ".hidden.png")
    os.symlink("nowhere.txt", odd / "notes.txt")
    found, errors = find_images(["photos/odd"])
    assert [item.display for item in found] == ["photos/odd/good-link.jpg"]
    reasons = {e.path: e.reason for e in errors}
    assert reasons == {
        "photos/odd/dangling.png": "broken symbolic link: no such file or folder at its target",
        "photos/odd/loop1.png": "symbolic link loop (too many levels of symbolic links)",
        "photos/odd/loop2.png": "symbolic link loop (too many levels of symbolic links)",
        "photos/odd/x.png": "not a regular file or folder (a named pipe)",
    }
    explicit_found, explicit = find_images(list(reasons))
    assert explicit_found == [] and {e.path: e.reason for e in explicit} == reasons


def test_image_extensions() -> None:
    assert IMAGE_EXTENSIONS == frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)
