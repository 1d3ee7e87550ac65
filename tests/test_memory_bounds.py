"""Peak memory does not grow with the photo's pixel count (issue 15).

A 99 MP photo (just under the 100 MP decompression-bomb guard) took ``cam`` to 12.8 GB, and a 24 MP one ``segment``
to 5.5 GB and ``detect`` to 4.2 GB: overlays and panels were drawn at full size, and detectors got a float tensor of
the whole photo. Each command runs here in its own process on a flat-colour 99 MP PNG (it encodes to a few hundred
KB) and its peak resident memory, read with ``os.wait4``, must stay under 2 GB. The outputs are bounded too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from explain.display import DISPLAY_MAX_PIXELS, PANEL_MAX_PIXELS, display_copy, display_size, panel_copy

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MB = 2048
SIDE = (9990, 9900)  # 98.9 MP


@pytest.fixture(scope="module")
def big_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("big")
    path = folder / "big.png"
    Image.new("RGB", SIDE, (120, 90, 60)).save(path)
    Image.new("L", (64, 64), 255).save(folder / "mask.png")
    return path


_LAUNCHER = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(process.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss // 1024)
"""
"""Runs the command and prints its exit code and peak RSS. A child's ``ru_maxrss`` starts at its parent's resident
size when it is forked (Linux keeps the high-water mark across ``exec``), so the command is started from this small
process rather than from pytest, which holds gigabytes late in a full test run."""


def _peak_mb(args: list[str], cwd: Path) -> tuple[int, int, str]:
    """Run ``cnn-explain ARGS`` in a grandchild process: ``(exit code, peak RSS in MB, stderr)``."""
    with open(cwd / "stderr.txt", "w+b") as err:
        launched = subprocess.run([sys.executable, "-c", _LAUNCHER, sys.executable, "-m", "cli.main", *args],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=err, check=True, text=True)
        err.seek(0)
        code, peak = (int(v) for v in launched.stdout.split())
        return code, peak, err.read().decode()


def test_the_peak_is_the_commands_own_not_the_test_processs() -> None:
    """The measurement itself: a large test process must not raise the peak read for a small command."""
    import tempfile

    ballast = bytearray(600 * 2**20)  # 600 MB resident in this process
    ballast[::4096] = b"x" * len(ballast[::4096])
    with tempfile.TemporaryDirectory() as folder:
        code, peak, _ = _peak_mb(["--version"], Path(folder))
    assert code == 0 and peak < 300, peak
    del ballast


@pytest.mark.parametrize(("command", "extra"), [
    ("cam", []),
    ("detect", ["--weights", "none", "--candidate-threshold", "0"]),  # random weights find nothing above 0.05
    ("segment", ["--weights", "none", "--target", "person", "--mask", "MASK"]),  # a region whatever is predicted
])
def test_a_99_megapixel_photo_stays_under_2_gb(big_photo: Path, tmp_path: Path, command: str,
                                                extra: list[str]) -> None:
    extra = [str(big_photo.parent / "mask.png") if a == "MASK" else a for a in extra]
    out = tmp_path / "out"
    code, peak, stderr = _peak_mb([command, str(big_photo), *extra, "--out", str(out), "--quiet"], tmp_path)
    assert code == 0, stderr
    assert peak < LIMIT_MB, f"{command} peaked at {peak} MB on a {SIDE[0]}x{SIDE[1]} photo"
    manifest = json.loads((out / "manifest.json").read_text())
    item = manifest["items"][0]
    with Image.open(out / item["outputs"]["overlay"]) as overlay:
        assert overlay.size == display_size(*SIDE) and overlay.width * overlay.height <= DISPLAY_MAX_PIXELS
    if command == "detect":  # boxes stay in photo pixels; the detector's input is the bounded copy
        assert item["geometry"]["model_input"] == list(reversed(display_size(*SIDE)))
        x0, y0, x1, y1 = item["detection"]["box"]
        assert 0 <= x0 < x1 <= SIDE[0] and 0 <= y0 < y1 <= SIDE[1] and x1 > display_size(*SIDE)[0] / 2


def test_display_and_panel_copies_keep_the_aspect_ratio_and_small_photos() -> None:
    import numpy as np

    small = Image.new("RGB", (300, 200))
    assert display_copy(small).image is small and not display_copy(small).scaled
    copy = display_copy(Image.new("RGB", (4000, 2000)), max_pixels=2_000_000)
    assert copy.image.size == (2000, 1000) and copy.scale == (0.5, 0.5) and copy.box((10, 20, 30, 40)) == (5, 10,
                                                                                                           15, 20)
    width, height = display_size(9990, 9900)
    assert width * height <= DISPLAY_MAX_PIXELS < (width + 1) * (height + 1)
    assert abs(width / height - 9990 / 9900) < 1e-3
    classes = np.zeros((2000, 1000), np.int64)
    classes[:, 500:] = 7
    shrunk = panel_copy(classes)
    assert shrunk.shape == (1414, 707) and shrunk.dtype == np.int64 and set(np.unique(shrunk)) == {0, 7}
    heat = panel_copy(np.linspace(0, 1, 2000 * 1000, dtype=np.float32).reshape(2000, 1000))
    assert heat.dtype == np.float32 and heat.size <= PANEL_MAX_PIXELS and 0.0 <= heat.min() < heat.max() <= 1.0
    rgb = panel_copy(np.ones((2000, 1000, 3), np.float32))
    assert rgb.shape == (1414, 707, 3) and np.allclose(rgb, 1.0)
