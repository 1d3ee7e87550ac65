"""Issue 15, inputs and outputs: a run's outputs are never read back as photos, an --out never holds an input, and
every input of a run gets output names of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.common import ModelOptions
from cli.main import app
from explain.images import find_images
from explain.manifest import MANIFEST_NAME, PARTIAL_MANIFEST_NAME, Manifest, holds_run_manifest, safe_stem
from explain.run import output_stems

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def small_photo(path: Path, samples: Path, name: str = "chelsea.png") -> Path:
    """A 64 x 48 copy of a sample photo (fast everywhere, above the 16 px minimum)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(samples / name) as image:
        image.convert("RGB").resize((64, 48)).save(path)
    return path


# --- 1. a walk skips the output folders of earlier runs ---------------------------------------------------------
def test_a_walk_skips_folders_holding_a_cnn_explain_manifest_but_not_other_manifests(
    tmp_path: Path, samples: Path
) -> None:
    photos = tmp_path / "photos"
    small_photo(photos / "cat.png", samples)
    small_photo(photos / "explain" / "cat" / "overlay.png", samples)  # an earlier run's figure ...
    Manifest(command="cam").save(photos / "explain")  # ... under its manifest
    small_photo(photos / "webapp" / "icon.png", samples)  # a web app's manifest.json is not ours
    (photos / "webapp" / MANIFEST_NAME).write_text('{"name": "my app", "tool": {"name": "cnn-explain"}}')
    (photos / "fifo").mkdir()
    (photos / "fifo" / "a.png").write_bytes((photos / "cat.png").read_bytes())
    import os

    os.mkfifo(photos / "fifo" / MANIFEST_NAME)  # must not block the walk
    assert holds_run_manifest(photos / "explain") and not holds_run_manifest(photos / "webapp")
    files, errors = find_images([photos])
    assert [f.display for f in files] == [f"{photos.as_posix()}/{p}" for p in ("cat.png", "fifo/a.png",
                                                                               "webapp/icon.png")]
    assert errors == []
    files, _ = find_images([photos / "explain"])  # named explicitly, an output folder is an input like any other
    assert [Path(f.display).name for f in files] == ["overlay.png"]


def test_a_second_run_and_predict_do_not_read_the_first_runs_outputs(tmp_path: Path, samples: Path) -> None:
    """The issue's repro: ``cam photos/ --out photos/explain``, then ``predict photos/`` and a second ``cam``."""
    photos = tmp_path / "photos"
    small_photo(photos / "chelsea.png", samples)
    assert run("cam", str(photos), "--out", str(photos / "explain"), "--quiet").exit_code == 0
    assert any(p.suffix == ".png" for p in (photos / "explain").rglob("*"))
    for command in ("predict", "cam"):
        result = run(command, str(photos), "--out", str(tmp_path / command), "--quiet", "--json")
        assert result.exit_code == 0, result.output
        assert [i["input"] for i in json.loads(result.stdout)["items"]] == [f"{photos.as_posix()}/chelsea.png"]
    assert not any(p.name.startswith("explain") for p in (tmp_path / "cam").iterdir())


# --- 1. an --out that holds an input is refused ---------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ["cam", "FILE"], ["predict", "FILE"], ["saliency", "NESTED"], ["segment", "FILE"],
    ["index", "NESTED"], ["audit", "NESTED", "--labels", "LABELS"],
])
def test_an_out_that_holds_an_input_is_refused_in_one_line(
    command: list[str], tmp_path: Path, samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cam sample_images/coffee.png --out sample_images`` wrote into the input folder: only an --out equal to an
    input *folder* was refused, not one holding an input file or folder at any depth."""
    loads: list[str] = []
    monkeypatch.setattr(ModelOptions, "load", lambda self, meta=False: loads.append(self.model))
    photos = tmp_path / "photos"
    photo = small_photo(photos / "sub" / "cat.png", samples)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,class_index\ncat.png,282\n")
    given = {"FILE": str(photo), "NESTED": str(photos / "sub"), "LABELS": str(labels)}
    before = sorted(photos.rglob("*"))
    for out in (photos, photos / "sub") if command[1] == "FILE" else (photos,):
        result = run(*[given.get(a, a) for a in command], "--out", str(out), "--quiet")
        assert result.exit_code == 2, result.output
        item = given[command[1]]
        assert result.stderr == (f"error: --out {out} holds the input {item}: outputs and inputs would mix; write "
                                 "to another folder (a new sub-folder is fine: walks skip it)\n")
    assert loads == [] and sorted(photos.rglob("*")) == before


def test_an_out_inside_the_input_folder_is_still_fine(tmp_path: Path, samples: Path) -> None:
    photo = small_photo(tmp_path / "photos" / "cat.png", samples)
    result = run("predict", str(photo), "--out", str(tmp_path / "photos" / "explain"), "--quiet")
    assert result.exit_code == 0, result.output


# --- 2. output names ----------------------------------------------------------------------------------------------
def test_same_stems_keep_their_extension_and_every_name_is_unique() -> None:
    assert output_stems(["p/cat.gif", "p/cat.png", "p/dog.jpg"]) == ["cat_gif", "cat_png", "dog"]
    # the case: a.png became a_2, the name of a_2.jpg
    assert output_stems(["a.jpg", "a.png", "a_2.jpg"]) == ["a_jpg", "a_png", "a_2"]
    # a name still taken (by an earlier input or any other input's planned name) gets the first free _N
    assert output_stems(["a.jpg", "a.png", "a_jpg.png"]) == ["a_jpg", "a_png", "a_jpg_2"]
    assert output_stems(["x/cat 1.jpg", "x/cat_1.jpg", "x/cat_1_jpg_2.png"]) == ["cat_1_jpg", "cat_1_jpg_3",
                                                                               "cat_1_jpg_2"]
    # one folder on macOS and Windows: told apart ignoring case
    stems = output_stems(["Cat.jpg", "cat.jpg", "cat.JPG"])
    assert len({s.casefold() for s in stems}) == 3 and stems[0] == "Cat_jpg"
    assert safe_stem("x" * 200 + ".jpeg", keep_extension=True).endswith("_jpeg")  # the extension survives the cut
    assert len(safe_stem("x" * 200 + ".jpeg", keep_extension=True).encode()) <= 120


def test_a_run_over_a_jpg_a_png_and_a_2_jpg_writes_three_folders(tmp_path: Path, samples: Path) -> None:
    photos = tmp_path / "photos"
    for name, sample in (("a.jpg", "chelsea.png"), ("a.png", "coffee.png"), ("a_2.jpg", "camera.png")):
        small_photo(photos / name, samples, sample)
    out = tmp_path / "out"
    result = run("cam", str(photos), "--out", str(out), "--quiet", "--json")
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)["items"]
    assert len(items) == 3
    folders = {Path(item["outputs"]["overlay"]).parts[0] for item in items}
    assert folders == {"a_jpg", "a_png", "a_2"}
    files = [set(item["outputs"].values()) for item in items]
    assert not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])  # no two inputs share a file
    assert {p.name for p in out.iterdir() if p.is_dir()} == folders


# --- 5. one run per output folder ---------------------------------------------------------------------------------
def test_output_lock_holds_the_pid_and_leaves_no_trace(tmp_path: Path) -> None:
    import os

    from explain.manifest import LOCK_NAME, OutputInUseError, output_lock

    out = tmp_path / "new" / "out"
    with output_lock(out):
        assert (out / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(OutputInUseError) as caught, output_lock(out):
            pass  # pragma: no cover - never entered
        assert str(caught.value) == f"{out} is in use by another cnn-explain run (pid {os.getpid()})"
    assert not (tmp_path / "new").exists()  # the folders made for the lock went with it
    (tmp_path / "kept").mkdir()
    with output_lock(tmp_path / "kept"):
        (tmp_path / "kept" / "result.txt").write_text("x")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["result.txt"]
    with output_lock(tmp_path / "kept"):  # released: the next run takes it
        pass


@pytest.mark.parametrize("command", [
    ["cam", "IMG"], ["predict", "IMG"], ["layers"], ["filters"], ["ascent", "-t", "1"], ["index", "DIR"],
    ["neighbours", "IMG", "--index", "INDEX"], ["tsne", "DIR"], ["audit", "DIR", "--labels", "LABELS"],
])
def test_a_second_run_into_a_held_out_folder_stops_in_one_line(
    command: list[str], tmp_path: Path, samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two concurrent ``index`` runs into one --out both exited 0 and one index was lost; now the second stops
    before the model loads, naming the holder's pid, and leaves the first run's files alone."""
    import os
    import subprocess
    import sys

    loads: list[str] = []
    monkeypatch.setattr(ModelOptions, "load", lambda self, meta=False: loads.append(self.model))
    photo = small_photo(tmp_path / "photos" / "cat.png", samples)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,class_index\ncat.png,282\n")
    index = tmp_path / "index"
    index.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "first-run.npy").write_bytes(b"first")
    holder = subprocess.Popen(  # another cnn-explain run, in another process, holding the folder
        [sys.executable, "-c", "import sys; from explain.manifest import output_lock\n"
         f"with output_lock({str(out)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline() == "held\n"
        given = {"IMG": str(photo), "DIR": str(photo.parent), "LABELS": str(labels), "INDEX": str(index)}
        result = run(*[given.get(a, a) for a in command], "--out", str(out), "--quiet")
    finally:
        holder.communicate("")
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {out} is in use by another cnn-explain run (pid {holder.pid})\n"
    assert loads == [] and sorted(p.name for p in out.iterdir()) == ["first-run.npy"]
    assert os.getpid() != holder.pid


# --- 4. an interrupted run keeps what it finished -----------------------------------------------------------------
@pytest.mark.parametrize("finished", [2, 0])
def test_ctrl_c_in_saliency_lists_the_finished_images_in_a_partial_manifest_and_says_so(
    finished: int, tmp_path: Path, samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in ``saliency`` left result folders, no manifest and only "error: interrupted". ``manifest.json`` still
    means a complete run (DESIGN.md); the finished inputs are listed in ``manifest.partial.json``."""
    import explain.saliency

    photos = tmp_path / "photos"
    for i, name in enumerate(("chelsea.png", "coffee.png", "camera.png", "astronaut.png")):
        small_photo(photos / f"p{i}.png", samples, name)
    real, calls = explain.saliency.saliency, []

    def interrupted_after(*args, **kwargs):
        calls.append(1)
        if len(calls) > finished:
            raise KeyboardInterrupt  # Ctrl-C while the next image is computed
        return real(*args, **kwargs)

    monkeypatch.setattr(explain.saliency, "saliency", interrupted_after)
    out = tmp_path / "out"
    result = run("saliency", str(photos), str(tmp_path / "missing.png"), "--out", str(out), "--batch-size", "1",
                 "--quiet")
    assert result.exit_code == 130
    if not finished:
        assert result.stderr == (f"error: interrupted: no input was finished, so {out} has no manifest (the "
                                 "files written so far are not listed)\n")
        assert not (out / MANIFEST_NAME).exists() and not (out / PARTIAL_MANIFEST_NAME).exists()
        return
    assert result.stderr == (f"error: interrupted: 2 of 5 inputs finished: {out / PARTIAL_MANIFEST_NAME} lists them; "
                             "there is no manifest.json, as the run is incomplete (the other 3 are not listed); run "
                             "the command again to finish it\n")
    assert not (out / MANIFEST_NAME).exists()
    manifest = json.loads((out / PARTIAL_MANIFEST_NAME).read_text())
    assert sorted({item["input"] for item in manifest["items"]}) == [f"{photos.as_posix()}/p{i}.png" for i in (0, 1)]
    assert manifest["incomplete"] == {"reason": "interrupted", "finished_inputs": 2, "inputs": 5}
    assert manifest["warnings"] == ["interrupted: 2 of 5 inputs were finished; this manifest lists only those"]
    assert manifest["errors"] == [{"input": (tmp_path / "missing.png").as_posix(), "error": "no such file or folder"}]
    assert all((out / path).is_file() for item in manifest["items"] for path in item["outputs"].values())
    assert holds_run_manifest(out)  # a later walk of a folder holding it skips it
    monkeypatch.setattr(explain.saliency, "saliency", real)
    again = run("saliency", str(photos), "--out", str(out), "--batch-size", "4", "--quiet")
    assert again.exit_code == 0, again.stderr
    assert (out / MANIFEST_NAME).is_file() and not (out / PARTIAL_MANIFEST_NAME).exists()


def test_an_item_whose_files_were_not_all_written_is_left_out(tmp_path: Path) -> None:
    from explain.run import keep_finished

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "map.npy").write_bytes(b"x")
    manifest = Manifest(command="cam", items=[
        {"input": "a.png", "outputs": {"map": "a/map.npy"}},
        {"input": "b.png", "outputs": {"map": "b/map.npy"}},  # interrupted while its file was written
        {"input": "c.png", "outputs": {"pdf": "report.pdf", "pdf_page": 1}},  # a PDF that was never closed
    ])
    assert keep_finished(manifest, tmp_path, 4) == 1
    assert [item["input"] for item in manifest.items] == ["a.png"]
