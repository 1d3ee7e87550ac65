"""Output folders: checked before the model loads, started (stale manifest removed) only after every option is
checked, never walked as input; the shared --seed bound."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.common import SEED_MAX, ModelOptions
from cli.main import app
from explain.errors import UsageError
from explain.manifest import MANIFEST_NAME, Manifest, begin_output, check_output_folder

runner = CliRunner()
OLD = '{"command": "previous complete run"}\n'


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def old_run(folder: Path) -> Path:
    """A folder holding a previous run: its manifest and one of its outputs."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kept.npy").write_bytes(b"old output")
    manifest = folder / MANIFEST_NAME
    manifest.write_text(OLD)
    return manifest


@pytest.fixture
def one_photo(tmp_path: Path, samples: Path) -> Path:
    """One small photo (64 px: fast everywhere, above the 16 px minimum) in its own folder."""
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    with Image.open(samples / "chelsea.png") as image:
        image.convert("RGB").resize((64, 48)).save(folder / "cat.png")
    return folder


# --- library: begin_output / check_output_folder ------------------------------------------------------------
def test_begin_output_creates_nested_folder_and_removes_only_the_manifest(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    assert begin_output(out) == out and out.is_dir() and list(out.iterdir()) == []
    manifest = old_run(out)
    begin_output(str(out))
    assert not manifest.exists() and (out / "kept.npy").read_bytes() == b"old output"
    Manifest(command="x").save(out)  # the new run's manifest lands where the old one was
    assert json.loads(manifest.read_text())["command"] == "x"


def test_begin_output_refuses_files_in_the_way(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("user data")
    with pytest.raises(UsageError, match=r"^cannot create output folder .*afile: it is an existing file"):
        begin_output(afile)
    with pytest.raises(UsageError, match=r"cannot create output folder .*afile/sub: a part of the path is a file"):
        begin_output(afile / "sub")
    assert afile.read_text() == "user data"
    (tmp_path / "o" / MANIFEST_NAME).mkdir(parents=True)
    with pytest.raises(UsageError, match="manifest.json is a folder"):
        begin_output(tmp_path / "o")


def test_check_output_folder_probes_without_leaving_a_trace(tmp_path: Path) -> None:
    before = sorted(tmp_path.iterdir())
    out = tmp_path / "x" / "y" / "z"
    assert check_output_folder(out) == out
    assert sorted(tmp_path.iterdir()) == before  # the probe's folders are gone again
    manifest = old_run(tmp_path / "old")
    check_output_folder(tmp_path / "old")
    assert manifest.read_text() == OLD  # checking never removes a manifest
    (tmp_path / "afile").write_text("")
    for bad, reason in ((tmp_path / "afile", "it is an existing file"),
                        (tmp_path / "afile" / "o", "a part of the path is a file, not a folder")):
        with pytest.raises(UsageError) as caught:
            check_output_folder(bad)
        assert str(caught.value) == f"cannot create output folder {bad}: {reason}"
    if hasattr(os, "symlink"):
        (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
        with pytest.raises(UsageError, match="it is a broken symbolic link"):
            check_output_folder(tmp_path / "dangling")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_check_output_folder_reports_mkdir_failures_on_pseudo_file_systems() -> None:
    with pytest.raises(UsageError, match=r"^cannot create output folder /proc/cnn-explain-test/o: "):
        check_output_folder("/proc/cnn-explain-test/o")


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_output_folder(tmp_path: Path) -> None:  # pragma: no cover - CI may run as root
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="cannot write to output folder"):
            check_output_folder(locked)
        with pytest.raises(UsageError, match="permission denied"):
            check_output_folder(locked / "new")
    finally:
        locked.chmod(0o700)


# --- CLI: the output folder is checked before the model loads -----------------------------------------------
@pytest.mark.parametrize("command", [
    ["cam", "IMG"], ["guided-backprop", "IMG"], ["saliency", "IMG"], ["activations", "IMG"], ["report", "IMG"],
    ["predict", "IMG"], ["filters"], ["ascent", "--target", "1"], ["audit", "DIR", "--labels", "LABELS"],
])
def test_output_folder_that_is_a_file_fails_in_one_line_before_the_model_loads(
    command: list[str], one_photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    monkeypatch.setattr(ModelOptions, "load", lambda self, meta=False: loads.append(self.model))
    labels = tmp_path / "labels.csv"
    labels.write_text("path,class_index\ncat.png,282\n")
    afile = tmp_path / "afile"
    afile.write_text("user data")
    args = [{"IMG": str(one_photo / "cat.png"), "DIR": str(one_photo), "LABELS": str(labels)}.get(a, a)
            for a in command]
    result = run(*args, "--out", str(afile), "--quiet")
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: cannot create output folder {afile}: it is an existing file\n"
    assert loads == [] and afile.read_text() == "user data"


# --- CLI: a usage error keeps the previous manifest; a run that starts work removes it ----------------------
def test_usage_error_after_the_model_loads_keeps_the_previous_runs_manifest(one_photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = old_run(out)
    result = run("cam", str(one_photo), "--out", str(out), "--layer", "_blocks.99", "--quiet")
    assert result.exit_code == 2 and "unknown layer '_blocks.99'" in result.stderr
    result = run("filters", "--out", str(out), "--layer", "_blocks.99", "--quiet")
    assert result.exit_code == 2 and "_blocks.99" in result.stderr
    assert manifest.read_text() == OLD


def test_interrupted_rerun_leaves_no_stale_manifest(
    one_photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The QA repro: a re-run into a complete run's folder overwrites files, then is interrupted."""
    import explain.cam_run

    out = tmp_path / "out"
    manifest = old_run(out)
    seen: dict[str, bool] = {}

    def interrupted(backbone, files, opts, out_dir, settings):
        seen["manifest_when_work_starts"] = manifest.exists()
        (Path(out_dir) / "kept.npy").write_bytes(b"overwritten")  # the first outputs of the new run ...
        raise KeyboardInterrupt  # ... then Ctrl-C

    monkeypatch.setattr(explain.cam_run, "run_cam", interrupted)
    result = run("cam", str(one_photo), "--out", str(out), "--layer", "_blocks.15", "--quiet")
    assert result.exit_code == 130 and result.stderr == "error: interrupted\n"
    assert seen == {"manifest_when_work_starts": False}
    assert not manifest.exists() and (out / "kept.npy").read_bytes() == b"overwritten"


def test_audit_restart_removes_the_manifest_when_work_starts_but_not_on_a_usage_error(
    one_photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import explain.audit

    labels = tmp_path / "labels.csv"
    labels.write_text("path,class_index\ncat.png,282\n")
    out = tmp_path / "audit"
    manifest = old_run(out)
    common = [str(one_photo), "--labels", str(labels), "--out", str(out), "--restart", "--quiet"]
    result = run("audit", *common, "--layer", "_blocks.99")
    assert result.exit_code == 2 and "_blocks.99" in result.stderr
    assert manifest.read_text() == OLD

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(explain.audit, "_run_batches", interrupted)  # killed in the first batch
    result = run("audit", *common)
    assert result.exit_code == 130 and not manifest.exists()


# --- CLI: outputs inside an input folder are not read back --------------------------------------------------
def test_outputs_inside_an_input_folder_are_not_inputs_of_the_next_run(one_photo: Path, tmp_path: Path) -> None:
    out = one_photo / "o"
    for _ in range(2):
        result = run("cam", str(one_photo), "--out", str(out), "--quiet", "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert [item["input"] for item in data["items"]] == [(one_photo / "cat.png").as_posix()]
        assert data["errors"] == []
    assert any(p.suffix == ".png" for p in out.rglob("*"))  # there were image outputs to be picked up
    # named explicitly, the output folder is an input like any other (here: the first runs' figures) ...
    figures = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    result = run("predict", str(out), "--out", str(tmp_path / "p"), "--quiet", "--json")
    assert result.exit_code == 0, result.output
    assert {Path(i["input"]).relative_to(out).as_posix() for i in json.loads(result.stdout)["items"]} == figures
    # ... but not as the run's own --out: its outputs would be read back as inputs next time
    result = run("predict", str(out), "--out", str(out), "--quiet")
    assert result.exit_code == 2 and "is also an input folder" in result.stderr


# --- the shared --seed option -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", ["99999999999999999999", str(SEED_MAX + 1), "-1"])
def test_seed_out_of_range_is_a_usage_error(seed: str, one_photo: Path) -> None:
    result = run("cam", str(one_photo), "--seed", seed, "--quiet")
    assert result.exit_code == 2 and "--seed" in result.output and "Traceback" not in result.output


def test_largest_seed_is_accepted_by_every_generator() -> None:
    import numpy as np
    import torch

    assert SEED_MAX == 2**32 - 1
    np.random.default_rng(SEED_MAX)
    np.random.RandomState(SEED_MAX)
    torch.manual_seed(SEED_MAX)
    with pytest.raises(ValueError):
        np.random.RandomState(SEED_MAX + 1)  # why the bound is NumPy's
    result = run("layers", "--model", "resnet18", "--weights", "none", "--seed", str(SEED_MAX), "--json")
    assert result.exit_code == 0, result.output


# --- QA round 2 ---------------------------------------------------------------------------------------------------
def test_output_folder_names_never_take_a_run_files_place() -> None:
    from explain.manifest import safe_stem
    from explain.run import output_stems

    assert safe_stem("mj/manifest.json.png") == "mj__manifest_json"  # the folder can't be named manifest.json
    assert output_stems(["mj/manifest.json.png", "mj/cat.png"]) == ["manifest_json", "cat"]
    assert safe_stem("index.html.jpg") == "index_html"
    assert safe_stem("photos/ünï 日本 ❤.png") == "photos__ünï_日本"  # letters of any script are kept
    long = safe_stem("日本" * 100 + ".png")
    assert len(long.encode("utf-8")) <= 120 and long.startswith("日本")  # bytes, not characters: fits 255-byte limits
    assert safe_stem("...png") == "image"


def test_the_root_and_pseudo_file_systems_are_refused_as_out(one_photo: Path) -> None:
    from explain.manifest import check_output_folder

    with pytest.raises(UsageError, match="refusing to write into /"):
        check_output_folder("/")
    if Path("/proc").is_dir():
        with pytest.raises(UsageError, match="cannot write to output folder /proc"):
            check_output_folder("/proc")  # root may write anywhere by permission bits: the probe file tells
    result = run("cam", str(one_photo), "--out", "/", "--quiet")
    assert result.exit_code == 2 and "refusing to write into /" in result.stderr


def test_pdf_figures_embed_truetype_fonts(tmp_path: Path) -> None:
    """PDF figures for papers: TrueType (Type 42) fonts, never matplotlib's default Type 3; the caller's matplotlib
    settings are left alone."""
    import re

    import matplotlib
    from matplotlib.figure import Figure

    from explain.manifest import write_figure

    fig = Figure(figsize=(2, 1))
    fig.add_subplot().set_title("tiger cat (282) · p 0.39")
    before = matplotlib.rcParams["pdf.fonttype"]
    data = write_figure(tmp_path / "f.pdf", fig).read_bytes()
    fonts = set(re.findall(rb"/Subtype\s*/(Type3|TrueType|CIDFontType2|Type1)\b", data))
    assert fonts and b"Type3" not in fonts
    assert matplotlib.rcParams["pdf.fonttype"] == before


def test_the_seed_range_does_not_widen_the_help_table() -> None:
    """Typer printed --seed's range as '[0<=x<=4294967295]' in the options table, split over two lines at 80 columns
    ('[0<=x<=429496729' / '5]'); the range is in the help text now."""
    import re

    from typer.testing import CliRunner

    from cli.main import app

    for command in ("audit", "index"):
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
        assert result.exit_code == 0
        assert "x<=4294967295" not in result.output and re.search(r"0 to\W+4294967295", result.output), result.output
