"""`cnn-explain ascent`: outputs follow the manifest contract; bad input is one clear line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["ascent", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("ascent")
    result = run("--target", "1", "--target", "flamingo", "--channel", "_blocks.2:0-1", "--neuron", "_blocks.4:3",
                 "--objective", "class:daisy - 0.5*channel:_blocks.4:2", "--steps", "3", "--size", "64",
                 "--snapshots", "3", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    return json.loads((out / "manifest.json").read_text()), out


def test_outputs_follow_the_contract(small_run) -> None:
    manifest, out = small_run
    assert manifest["command"] == "ascent" and manifest["schema_version"] == 1
    assert manifest["model"]["name"] == "efficientnet_lite0"
    assert manifest["config"]["steps"] == 3 and manifest["config"]["size"] == 64
    assert manifest["config"]["param"] == "fft" and manifest["config"]["transforms"] is True
    items = manifest["items"]
    labels = [item["objective"]["label"] for item in items]
    assert labels == ["goldfish (1)", "flamingo (130)", "_blocks.2 ch 0", "_blocks.2 ch 1",
                      "_blocks.4 ch 3 @ (4,4)", "daisy (985) - 0.5*_blocks.4 ch 2"]
    assert [item["target"]["index"] for item in items[:2]] == [1, 130]
    assert len({item["seed"] for item in items}) == len(items)
    for item in items:
        image = np.load(out / item["outputs"]["array"])
        assert image.dtype == np.float32 and image.shape == (64, 64, 3)
        assert 0.0 <= image.min() and image.max() <= 1.0
        snaps = np.load(out / item["outputs"]["snapshots"])
        assert snaps.shape == (3, 64, 64, 3) and np.allclose(snaps[-1], image, atol=1e-6)
        assert (out / item["outputs"]["image"]).is_file()
        assert len(item["prediction"]) == 5 and item["steps"] == 3
    for key in ("grid", "snapshots", "history"):
        assert (out / manifest["outputs"][key]).is_file(), key
    history = np.load(out / manifest["outputs"]["history"])
    assert history.shape == (3, 6) and history.dtype == np.float32
    from PIL import Image

    assert Image.open(out / items[0]["outputs"]["image"]).size == (64, 64)


def test_json_and_same_seed_same_images(tmp_path: Path, small_run) -> None:
    manifest, out = small_run
    again = tmp_path / "again"
    result = run("--target", "1", "--steps", "3", "--size", "64", "--out", str(again), "--json", "--quiet")
    assert result.exit_code == 0
    printed = json.loads(result.stdout)
    assert printed["items"][0]["seed"] == manifest["items"][0]["seed"]
    # Objective 0 has the same seed in both runs, so the same image although the first run had a bigger batch (up to
    # rounding: convolutions of different batch sizes may sum in a different order, and Adam turns gradient components
    # that are zero up to rounding into full steps of either sign).
    a = np.load(out / manifest["items"][0]["outputs"]["array"])
    b = np.load(again / printed["items"][0]["outputs"]["array"])
    # Adam's first step is lr * sign(gradient) for every coefficient, so after 3 steps this is the worst case:
    # mean ~0.001 here, against ~0.02 between different seeds or objectives.
    assert np.abs(a - b).mean() < 5e-3 and np.abs(a - b).max() < 0.05
    other = np.load(out / manifest["items"][1]["outputs"]["array"])
    assert np.abs(a - other).mean() > 0.01


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--channel", "_blocks.40:1"], "unknown layer '_blocks.40' (did you mean: _blocks.4"),
        (["--channel", "_blocks.2:24"], "channel 24 is out of range for layer '_blocks.2': it has 24 channels"),
        (["--channel", "_blocks.2:20-30"], "channel 24 is out of range"),
        (["--neuron", "_blocks.4:1:99:0"], "outside layer '_blocks.4'"),
        (["--target", "1", "--steps", "0"], "--steps must be at least 1"),
        (["--target", "1", "--steps", "-3"], "--steps must be at least 1"),
        (["--target", "1", "--size", "16"], "--size 16 is too small for this model"),
        (["--target", "1", "--size", "4"], "--size 4 is too small"),
        (["--target", "top1"], "ascent needs a class"),
        (["--target", "zebraa"], "unknown class name 'zebraa'"),
        (["--steps", "5"], "nothing to optimise"),
        (["--target", "1", "--param", "wavelet"], "unknown parameterisation 'wavelet'"),
        (["--objective", "3*"], "bad objective term"),
        (["--objective", "frog:3"], "unknown objective kind 'frog'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "o"
    result = run(*args, "--size", "64", "--out", str(out)) if "--size" not in args else run(*args, "--out", str(out))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not (out / "manifest.json").exists()


def test_the_summary_shows_p_only_for_class_objectives(tmp_path: Path) -> None:
    channels = run("--channel", "_blocks.2:0", "--steps", "1", "--size", "64", "--out", str(tmp_path / "c"))
    header = next(line for line in channels.stdout.splitlines() if "objective" in line).replace("┃", " ")
    assert channels.exit_code == 0 and header.split() == ["objective", "value", "steps", "image"]
    classes = run("--target", "1", "--steps", "1", "--size", "64", "--out", str(tmp_path / "t"))
    header = next(line for line in classes.stdout.splitlines() if "objective" in line).replace("┃", " ")
    assert classes.exit_code == 0 and header.split() == ["objective", "value", "p", "steps", "image"]


def test_the_cli_bound_on_snapshots_is_the_library_s() -> None:
    import cli.ascent_command
    import explain.ascent

    assert cli.ascent_command.MAX_SNAPSHOTS == explain.ascent.MAX_SNAPSHOTS
