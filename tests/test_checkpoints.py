"""Checkpoint and class-file error messages: every kind of bad file gets one clear, truthful error.

Files are made in tmp_path: tiny state_dicts saved with torch.save (zip and legacy formats), truncated copies,
a text file, a PNG, a folder, pickles that would run code, and a zip whose data.pkl is damaged.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from explain.backbones import read_class_names
from explain.backbones.checkpoint import fit_state_dict, read_checkpoint, sniff_checkpoint
from explain.errors import ModelError, UnsafeCheckpointError

STATE = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([0.5, -1.0])}


class _Evil:
    def __reduce__(self):  # unpickling this calls print("pwned")
        return (print, ("pwned",))


def _save(obj: object, path: Path, **kwargs: object) -> Path:
    torch.save(obj, path, **kwargs)
    return path


def _cut(source: Path, path: Path, keep: int) -> Path:
    path.write_bytes(source.read_bytes()[:keep])
    return path


def _with_data_pkl(source: Path, path: Path, data: bytes) -> Path:
    """A copy of zip checkpoint ``source`` whose ``data.pkl`` member is replaced by ``data``."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as new:
        for info in old.infolist():
            new.writestr(info.filename, data if info.filename.endswith("data.pkl") else old.read(info))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    made = {
        "zip": _save(STATE, root / "zip.pt"),
        "legacy": _save(STATE, root / "legacy.pt", _use_new_zipfile_serialization=False),
        "evil_zip": _save({"x": _Evil()}, root / "evil_zip.pt"),
        "evil_zip4": _save({"x": _Evil()}, root / "evil_zip4.pt", pickle_protocol=4),
        "evil_legacy": _save({"x": _Evil()}, root / "evil_legacy.pt", _use_new_zipfile_serialization=False),
        "text": root / "garbage.pt",
        "png": root / "image.png",
        "folder": root / "folder",
        "pickle_dump": root / "plain.pkl",
    }
    made["text"].write_text("garbage\n")
    Image.new("RGB", (4, 4), (255, 0, 0)).save(made["png"])
    made["folder"].mkdir()
    made["pickle_dump"].write_bytes(pickle.dumps({"x": _Evil()}, protocol=4))
    size = made["zip"].stat().st_size
    made["zip_cut"] = _cut(made["zip"], root / "zip_cut.pt", size // 2)
    made["zip_cut_end"] = _cut(made["zip"], root / "zip_cut_end.pt", size - 10)
    made["legacy_cut"] = _cut(made["legacy"], root / "legacy_cut.pt", made["legacy"].stat().st_size // 2)
    made["legacy_cut_head"] = _cut(made["legacy"], root / "legacy_cut_head.pt", 30)
    # A well-formed zip whose pickle has an invalid opcode (0xff) where the safe loader stops: damage, not code.
    made["bad_opcode"] = _with_data_pkl(made["zip"], root / "bad_opcode.pt", b"\x80\x02}q\x00\xff.")
    return made


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"PK\x03\x04rest", "zip"),
        (b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.", "pickle"),  # protocol 2 + torch's magic number
        (b"\x80\x05\x95", "pickle"),
        (b"L119547037146038801333356L\n.", "pickle"),  # the magic number pickled with protocol 0
        (b"\x00" * 257 + b"ustar\x0000", "tar"),
        (b"\x80\x09garbage", None),  # no such pickle protocol
        (b"\x80", None),
        (b"garbage\n", None),
        (b"\x89PNG\r\n\x1a\n", None),
        (b"PK\x05\x06" + b"\x00" * 18, None),  # an empty zip
    ],
)
def test_sniff_checkpoint(head: bytes, kind: str | None) -> None:
    assert sniff_checkpoint(head) == kind


@pytest.mark.parametrize("name", ["zip", "legacy"])
def test_valid_checkpoints_load_safely(files: dict[str, Path], name: str) -> None:
    loaded = read_checkpoint(files[name])
    assert loaded.keys() == STATE.keys() and all(torch.equal(loaded[k], STATE[k]) for k in STATE)


@pytest.mark.parametrize("trust", [False, True])
@pytest.mark.parametrize(("name", "like"), [("text", "it contains text"), ("png", "it looks like a PNG image")])
def test_non_checkpoints_are_named_so_without_trust_hint(files: dict[str, Path], name: str, like: str,
                                                         trust: bool) -> None:
    with pytest.raises(ModelError) as info:
        read_checkpoint(files[name], trust=trust)
    message = str(info.value)
    assert f"{str(files[name])!r} is not a PyTorch checkpoint (not a zip or pickle file; {like})" == message
    assert not isinstance(info.value, UnsafeCheckpointError) and "trust" not in message


@pytest.mark.parametrize("trust", [False, True])
def test_plain_pickle_is_refused_before_any_code_runs(files: dict[str, Path], trust: bool, capsys) -> None:
    with pytest.raises(ModelError, match="is a pickle file but not a PyTorch checkpoint") as info:
        read_checkpoint(files["pickle_dump"], trust=trust)
    assert "trust" not in str(info.value)
    assert "pwned" not in capsys.readouterr().out


def test_folder_is_not_a_file(files: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match="is a folder, not a file"):
        read_checkpoint(files["folder"])
    with pytest.raises(ModelError, match="does not exist"):
        read_checkpoint(files["folder"] / "missing.pt")


@pytest.mark.parametrize("trust", [False, True])
@pytest.mark.parametrize("name", ["zip_cut", "zip_cut_end", "legacy_cut", "legacy_cut_head", "bad_opcode"])
def test_truncated_or_corrupt_checkpoints(files: dict[str, Path], name: str, trust: bool, capsys) -> None:
    with pytest.raises(ModelError) as info:
        read_checkpoint(files[name], trust=trust)
    message = str(info.value)
    assert message.startswith(f"truncated or corrupt checkpoint {str(files[name])!r} (")
    assert not isinstance(info.value, UnsafeCheckpointError) and "trust" not in message
    assert "pwned" not in capsys.readouterr().out


@pytest.mark.parametrize("name", ["evil_zip", "evil_zip4", "evil_legacy"])
def test_code_running_checkpoints_name_the_code_and_need_trust(files: dict[str, Path], name: str, capsys) -> None:
    with pytest.raises(UnsafeCheckpointError) as info:
        read_checkpoint(files[name])
    message = str(info.value)
    assert "would run code when loaded (needs builtins.print)" in message and "--trust-checkpoint" in message
    assert "pwned" not in capsys.readouterr().out
    assert read_checkpoint(files[name], trust=True) == {"x": None}  # print() returned None: it did run
    assert "pwned" in capsys.readouterr().out


@pytest.mark.parametrize("zip_format", [True, False])
def test_protocol_4_checkpoint_leaks_no_torch_warning_and_says_why(tmp_path: Path, zip_format: bool) -> None:
    """Issue 15: torch's 'Detected pickle protocol 4' UserWarning reached the terminal, and the refusal only named
    an opcode ('Unsupported operand 149'). It is kept off the terminal and the refusal names the protocol."""
    import warnings

    path = _save(STATE, tmp_path / "p4.pt", pickle_protocol=4, _use_new_zipfile_serialization=zip_format)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UnsafeCheckpointError) as info:
            read_checkpoint(path)
        loaded = read_checkpoint(path, trust=True)
    assert [str(w.message) for w in caught] == []
    assert "saved with pickle protocol 4, which PyTorch's safe loader cannot read" in str(info.value)
    assert "Re-save it with torch.save's default protocol, or pass --trust-checkpoint" in str(info.value)
    assert "Unsupported operand" not in str(info.value)
    assert torch.equal(loaded["w"], STATE["w"])


def test_other_warnings_of_torch_load_still_reach_the_caller(tmp_path: Path, monkeypatch) -> None:
    import warnings

    def load(*args: object, **kwargs: object) -> dict:
        warnings.warn("something else", UserWarning, stacklevel=1)
        return dict(STATE)

    monkeypatch.setattr(torch, "load", load)
    with pytest.warns(UserWarning, match="something else"):
        read_checkpoint(_save(STATE, tmp_path / "z.pt"))


# --- class counts (QA: StopIteration when a 1000-class checkpoint met --num-classes 10) ------------------

def _tiny_classifier(num_classes: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, num_classes))


def test_1000_class_checkpoint_with_other_num_classes_is_one_clear_error(tmp_path: Path) -> None:
    state = _tiny_classifier(1000).state_dict()
    with pytest.raises(ModelError) as info:
        fit_state_dict(_tiny_classifier, state, 10, "tiny", tmp_path / "tiny.pt")
    assert str(info.value) == (
        f"{str(tmp_path / 'tiny.pt')!r} has 1000 classes (1.weight is [1000, 3]) but 10 were asked for "
        "(--num-classes/--classes); use --num-classes 1000 or a class file with 1000 names"
    )


def test_other_class_count_names_the_changed_head(tmp_path: Path) -> None:
    state = _tiny_classifier(7).state_dict()
    with pytest.raises(ModelError, match=r"has 7 classes \(1.weight is \[7, 3\]\) but 5 were asked for"):
        fit_state_dict(_tiny_classifier, state, 5, "tiny", tmp_path / "tiny.pt")
    model = fit_state_dict(_tiny_classifier, state, None, "tiny", tmp_path / "tiny.pt")
    assert torch.equal(model[1].weight, state["1.weight"])


# --- class-name files ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x89PNG\r\n\x1a\n", "not UTF-8 text (byte 0x89 at position 0)"),
        (b"cat\ncaf\xe9\n", "not UTF-8 text (byte 0xe9 at position 7)"),
    ],
)
def test_class_file_that_is_not_utf8(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "classes.txt"
    path.write_bytes(content)
    with pytest.raises(ModelError) as info:
        read_class_names(path)
    assert str(info.value) == f"cannot read class names from {str(path)!r}: {reason}"


def test_class_file_folder_missing_and_bom(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="it is a folder, not a file"):
        read_class_names(tmp_path)
    with pytest.raises(ModelError, match="no such file"):
        read_class_names(tmp_path / "missing.txt")
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeff# header\ncat\n\n  dog \n".encode())
    assert read_class_names(path) == ["cat", "dog"]


# --- the same through the CLI: one line on stderr, exit code 2 ------------------------------------------

def _cli(*args: str):
    from cli.main import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        ("png", ["--classes"], "not UTF-8 text (byte 0x89 at position 0)"),
        ("text", ["--model", "resnet18", "--weights"], "is not a PyTorch checkpoint (not a zip or pickle file"),
        ("png", ["--model", "resnet18", "--trust-checkpoint", "--weights"], "is not a PyTorch checkpoint"),
        ("folder", ["--model", "resnet18", "--weights"], "is a folder, not a file"),
        ("zip_cut", ["--model", "resnet18", "--weights"], "truncated or corrupt checkpoint"),
        ("evil_zip", ["--model", "resnet18", "--weights"], "pass --trust-checkpoint"),
    ],
)
def test_cli_checkpoint_and_class_file_errors(files: dict[str, Path], name: str, extra: list[str],
                                               message: str) -> None:
    result = _cli("predict", str(files["png"]), "--quiet", *extra, str(files[name]))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr and result.stderr.count("\n") == 1
    assert "unexpected" not in result.stderr


def test_cli_1000_class_checkpoint_with_num_classes_10(files: dict[str, Path], tmp_path: Path) -> None:
    from explain import load_backbone

    weights = _save(load_backbone("squeezenet1_1", "none").model.state_dict(), tmp_path / "sq.pt")
    result = _cli("predict", str(files["png"]), "--quiet", "--model", "squeezenet1_1", "--weights", str(weights),
                  "--num-classes", "10")
    assert result.exit_code == 2, result.output
    assert "has 1000 classes (classifier.1.weight is [1000, 512, 1, 1]) but 10 were asked for" in result.stderr


# --- the same checks for torchvision weights in the hub cache ------------------------------------------

@pytest.mark.parametrize(("content", "message"), [(b"PK\x03\x04" + bytes(1000), "truncated or corrupt checkpoint"),
                                                  (b"<html>not found</html>", "is not a PyTorch checkpoint")])
def test_damaged_cached_torchvision_weights(content: bytes, message: str) -> None:
    from explain import load_backbone
    from explain.backbones.torchvision_models import cached_weights_path, weights_enum

    entry = weights_enum("squeezenet1_1", "IMAGENET1K_V1")
    path = cached_weights_path(entry)
    assert not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    try:
        with pytest.raises(ModelError) as info:
            load_backbone("squeezenet1_1", "IMAGENET1K_V1")
    finally:
        path.unlink()
    assert message in str(info.value) and f"replace the file with {entry.url}" in str(info.value)
    assert "trust" not in str(info.value)


def test_trusted_googlenet_checkpoint_is_unpickled_once(tmp_path: Path, capsys) -> None:
    """googlenet/inception peek at the checkpoint for aux heads; the peeked object is reused, not re-read."""
    from explain import load_backbone

    state = load_backbone("googlenet", "none", num_classes=3).model.state_dict()
    path = _save({"state_dict": state, "side_effect": _Evil()}, tmp_path / "g.pt")
    capsys.readouterr()
    backbone = load_backbone("googlenet", str(path), trust_checkpoint=True)
    assert backbone.num_classes == 3 and capsys.readouterr().out.count("pwned") == 1


def test_tar_archive_that_is_not_a_legacy_checkpoint(tmp_path: Path) -> None:
    import tarfile

    note = tmp_path / "note.txt"
    note.write_text("hello")
    path = tmp_path / "weights.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        archive.add(note, arcname="note.txt")
    with pytest.raises(ModelError) as info:
        read_checkpoint(path, trust=True)
    assert "is not a PyTorch checkpoint (a tar archive without torch's pickle/storages/tensors members)" in str(
        info.value) and "trust" not in str(info.value)


def test_shape_mismatches_are_one_line_not_torchs_dump(tmp_path: Path) -> None:
    """QA: a resnet18 state_dict given to resnet50 printed torch's 24-line size-mismatch report."""
    from explain.backbones.checkpoint import load_exactly

    small = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 1))
    big = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 2, 1), torch.nn.Linear(2, 2))
    with pytest.raises(ModelError) as caught:
        load_exactly(big, small.state_dict(), "big", tmp_path / "small.pt")
    message = str(caught.value)
    assert "\n" not in message and "2 missing keys (e.g. 2.weight, 2.bias)" in message
    assert "1 shape mismatches (e.g. 0.weight: (4, 3, 3, 3) in the file, (4, 3, 1, 1) in big)" in message
    before = [p.clone() for p in big.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, big.parameters()))  # nothing half-loaded
