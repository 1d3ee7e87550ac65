"""`cnn-explain audit` from the command line: bad input reported and survived, exit codes, and kill-then-resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["audit", *args], catch_exceptions=False)


def gallery_dataset(tmp: Path, samples: Path, per_class: int) -> tuple[Path, Path]:
    """``per_class`` photos of each gallery class, with the gallery's own imagenet_ids labels."""
    root = tmp / "ds"
    rows = list(csv.DictReader((samples / "gallery" / "labels.csv").open()))
    kept = []
    for row in rows:
        if int(row["path"].split("_")[-1].split(".")[0]) <= per_class:
            target = root / row["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((samples / "gallery" / row["path"]).read_bytes())
            kept.append(row)
    labels = tmp / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "class_name", "imagenet_ids"], extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
    return root, labels


def test_bad_inputs_are_reported_and_the_rest_of_the_audit_goes_on(tmp_path: Path, samples: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        (root / name).write_bytes((samples / name).read_bytes())
    (root / "empty.jpg").write_bytes(b"")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,class_name\nchelsea.png,tabby\ncoffee.png,espresso\nempty.jpg,tabby\n"
                      "ghost.png,tabby\nchelsea2.png,no such class\n")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("path,x0,y0,x1,y1\nchelsea.png,100,20,300,280\ncoffee.png,900,900,950,950\n"
                     "coffee.png,10,10,5,5\n")
    groups = tmp_path / "groups.csv"
    groups.write_text("path,colour\nchelsea.png,colour\nunrelated.png,gray\n")
    out = tmp_path / "out"
    result = run(str(root), "--labels", str(labels), "--boxes", str(boxes), "--groups", str(groups),
                 "--out", str(out), "--steps", "2", "--shift", "0", "--sanity", "1", "--worst", "1", "--json")
    assert result.exit_code == 1, result.output
    text = result.output
    assert "skipped " + (root / "ghost.png").as_posix() + ": listed in labels.csv but no such image file" in text
    assert "unknown class name 'no such class'" in text
    assert "empty file" in text
    assert "warning: 1 group row(s) of groups.csv name no audited image (unrelated.png)" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(Path(i["input"]).name for i in manifest["items"]) == ["chelsea.png", "coffee.png"]
    assert len(manifest["errors"]) == 3
    records = {r["path"]: r for r in map(json.loads, (out / "images.jsonl").read_text().splitlines())}
    coffee = records["coffee.png"]
    assert coffee["box_status"] == "outside" and coffee["energy_in_box"] is None
    assert any("empty box" in n for n in coffee["notes"])
    assert any("outside the 600x400 image" in n for n in coffee["notes"])
    assert records["chelsea.png"]["colour"] == "colour" and coffee["colour"] == "(no group)"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["n"] == 2 and summary["counts"]["errors"] == 3


def test_usage_errors_exit_2_with_one_line(tmp_path: Path, samples: Path) -> None:
    root, labels = gallery_dataset(tmp_path, samples, 1)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nx,1\n")
    result = run(str(root), "--labels", str(bad), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "needs a header with the columns path" in result.output and "Traceback" not in result.output
    result = run(str(root), "--labels", str(labels), "--layer", "_blocks.99", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "_blocks.99" in result.output
    result = run(str(tmp_path / "nowhere"), "--labels", str(labels))
    assert result.exit_code == 2 and "is not a folder" in result.output
    result = run(str(root), "--labels", str(labels), "--steps", "1", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "--steps 1 only compares" in result.output


def test_shift_at_or_above_the_input_size_is_refused_before_any_work(tmp_path: Path, samples: Path) -> None:
    """Issue 15: --shift 100000 was accepted and filled every row's peak move with 100000."""
    root, labels = gallery_dataset(tmp_path, samples, 1)
    for shift in ("100000", "224"):
        result = run(str(root), "--labels", str(labels), "--shift", shift, "--out", str(tmp_path / "o"))
        assert result.exit_code == 2, result.output
        assert result.stderr == (f"error: --shift {shift} is not smaller than the model input (224x224 pixels): "
                                 "every shifted copy would be blank; use a few pixels (default 8), or 0 to skip the "
                                 "translation test\n")
        assert not (tmp_path / "o" / "manifest.json").exists()


def test_translation_test_refuses_a_shift_as_large_as_the_input() -> None:
    import pytest
    import torch

    from explain.errors import UsageError
    from explain.metrics import translation_test

    with pytest.raises(UsageError, match=r"smaller than the input \(32x24 pixels\), got 24"):
        translation_test(torch.nn.Conv2d(3, 2, 3), torch.zeros(1, 3, 24, 32), "", shift=24)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", "audit", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_killed_audit_resumes_to_the_same_csv(tmp_path: Path, samples: Path) -> None:
    root, labels = gallery_dataset(tmp_path, samples, 1)  # 6 photos, batches of 1
    common = ["--labels", str(labels), "--batch-size", "1", "--steps", "2", "--shift", "4", "--sanity", "2",
              "--worst", "0", "--quiet"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    journal = killed / "audit-journal.jsonl"
    process = subprocess.Popen(_cli(str(root), "--out", str(killed), *common), cwd=ROOT, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            if journal.exists() and journal.read_bytes().count(b"\n") >= 3:  # header + 2 batches
                break
            time.sleep(0.02)
        assert process.poll() is None, "the audit finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    lines_at_kill = journal.read_bytes().count(b"\n")
    assert 3 <= lines_at_kill < 7 and not (killed / "manifest.json").exists()
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the killed process, so float rounding cannot differ
    try:
        for out in (killed, clean):  # resume in this process (saves a start-up), then a clean run
            done = run(str(root), "--out", str(out), *common)
            assert done.exit_code == 0, done.output
    finally:
        torch.set_num_threads(threads)
    assert (killed / "images.csv").read_bytes() == (clean / "images.csv").read_bytes()
    assert (killed / "images.jsonl").read_bytes() == (clean / "images.jsonl").read_bytes()
    assert (killed / "summary.json").read_bytes() == (clean / "summary.json").read_bytes()
    entries = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
    assert sorted(e["batch"] for e in entries[:-1]) == list(range(6))  # every batch once: nothing redone or doubled
    assert set(entries[-1]) == {"final"} and entries[-1]["final"]["sanity"]["keys"]  # the sanity step, last, once
    rows = list(csv.DictReader((killed / "images.csv").open()))
    assert len(rows) == 6 and sum(bool(r["sanity_rho"]) for r in rows) == 2


def test_resume_with_other_options_needs_restart(tmp_path: Path, samples: Path) -> None:
    root, labels = gallery_dataset(tmp_path, samples, 1)
    out = tmp_path / "out"
    base = [str(root), "--labels", str(labels), "--out", str(out), "--steps", "0", "--shift", "0", "--sanity", "0",
            "--worst", "0", "--quiet"]
    assert run(*base).exit_code == 0
    result = run(*base, "--batch-size", "3")
    assert result.exit_code == 2 and "different batch_size" in result.output and "--restart" in result.output
    assert run(*base, "--batch-size", "3", "--restart").exit_code == 0


def test_an_interrupted_audit_says_how_to_resume(tmp_path: Path, samples: Path, monkeypatch) -> None:
    """Ctrl-C (or SIGTERM) mid-run: exit 130 and one line saying that the same command resumes."""
    import explain.audit

    root, labels = gallery_dataset(tmp_path, samples, 1)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(explain.audit, "run_audit", interrupted)
    out = tmp_path / "out"
    result = run(str(root), "--labels", str(labels), "--out", str(out), "--quiet")
    assert result.exit_code == 130
    assert result.stderr.strip() == f"error: interrupted: run the same command again to resume (finished images are " \
                                    f"kept in {out})"
