"""Loading user checkpoints safely: state_dicts, TorchScript archives, and (only when trusted) pickled models.

Everything is read with ``torch.load(..., weights_only=True)``, which refuses pickles that would run code.
A whole pickled ``nn.Module`` needs code execution by nature; it is loaded only when the caller passes
``trust=True`` (the CLI's ``--trust-checkpoint``). Files are told apart by their first bytes before any
unpickling: what is not a zip or pickle is "not a checkpoint", what is cut short or damaged is "truncated or
corrupt", and only a well-formed pickle that needs code execution is "unsafe" (the only case that mentions
``--trust-checkpoint``).
"""

from __future__ import annotations

import contextlib
import io
import pickle
import pickletools
import re
import tarfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explain.errors import ModelError, UnsafeCheckpointError, os_reason

#: Keys under which training scripts commonly nest the state_dict.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "ema", "model_ema")
_PREFIXES = ("module.", "_orig_mod.", "model.")

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
#: torch's legacy magic number 0x1950a86a20f9469cfc6c as pickled with protocol 0 or 1.
_LEGACY_TEXT_MAGIC = b"L119547037146038801333356L"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_TAR_MEMBERS = frozenset({"storages", "tensors", "pickle"})
_OTHER_FORMATS = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"), (b"\x1f\x8b", "gzip-compressed data"), (b"PK\x05\x06", "an empty zip archive"),
)


def is_torchscript(path: Path) -> bool:
    """True if ``path`` is a TorchScript archive (a zip with a ``code/`` folder or ``constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in n or n.endswith("constants.pkl") for n in archive.namelist())


def sniff_checkpoint(head: bytes) -> str | None:
    """Name the container format a file starting with ``head`` (its first 512 bytes) claims to be.

    ``torch.save`` writes a zip archive (the default since PyTorch 1.6), a sequence of pickles starting with
    torch's magic number (``_use_new_zipfile_serialization=False``; protocol 2+ pickles start with the PROTO
    opcode ``0x80``, protocol 0/1 ones with the magic number as text), or, before PyTorch 0.4, a tar archive.

    Returns:
        ``"zip"``, ``"pickle"``, ``"tar"``, or ``None`` when the file is none of them.
    """
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if (len(head) >= 2 and head[0] == _PICKLE_PROTO and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL) \
            or head.startswith(_LEGACY_TEXT_MAGIC):
        return "pickle"
    if head[257:262] == b"ustar":
        return "tar"
    return None


def read_checkpoint(path: Path, trust: bool = False) -> Any:
    """Read a checkpoint file: a TorchScript module, a state_dict-like mapping, or (trusted) a pickled object.

    The file's first bytes are checked first (:func:`sniff_checkpoint`), so a file that is no checkpoint at all
    is reported as such and is never handed to an unpickler, trusted or not. A checkpoint that the safe
    (``weights_only=True``) loader refuses is scanned opcode by opcode (``pickletools``, which runs nothing) to
    tell a damaged file from a well-formed pickle that needs code execution; only the latter may be loaded
    with ``trust=True`` and is the only case whose message mentions ``--trust-checkpoint``.

    Raises:
        ModelError: missing file, a folder, an empty file, not a checkpoint, or a truncated/corrupt one.
        UnsafeCheckpointError: the file needs code execution and ``trust`` is False.
    """
    import torch

    kind = _check_container(path)
    if kind == "zip" and is_torchscript(path):
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - any failure of the TorchScript loader is a bad file
            raise ModelError(f"cannot load TorchScript archive {str(path)!r}: {_first_line(exc)}") from exc
    try:
        with _quiet_protocol_warning():
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refusal: pickle.UnpicklingError = exc
    except Exception as exc:  # noqa: BLE001 - zip/pickle/struct/EOF errors of a sniffed checkpoint: damage
        raise _corrupt(path, exc) from exc
    scan = _check_pickle_well_formed(path, kind)
    if not trust:
        reason = _refusal_reason(refusal, scan.imports, scan.protocol)
        advice = "Re-save it with torch.save's default protocol" if "pickle protocol" in reason else \
            "Save a state_dict instead"
        raise UnsafeCheckpointError(
            f"refusing to load {str(path)!r}: {reason}. {advice}, or pass --trust-checkpoint if you trust whoever "
            "made the file"
        ) from refusal
    try:
        with _quiet_protocol_warning():
            return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot read trusted checkpoint {str(path)!r}: {_first_line(exc)}") from exc


@contextlib.contextmanager
def _quiet_protocol_warning() -> Iterator[None]:
    """Keep torch's "Detected pickle protocol N in the checkpoint" UserWarning off the terminal; a refusal names the
    protocol itself, read from the pickle's ``PROTO`` opcode (:func:`_scan_pickles`). Other warnings pass through."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        yield


def _check_container(path: Path) -> str:
    """The sniffed format of ``path`` (see :func:`sniff_checkpoint`), or a clear error for anything else.

    A legacy (pickle) checkpoint must start with torch's magic number; its first pickle is parsed (not run)
    to check, so a plain ``pickle.dump`` file is refused before anything could unpickle it.

    Raises:
        ModelError: missing, a folder, unreadable, empty, not a checkpoint, or a zip/pickle cut short.
    """
    if path.is_dir():
        raise ModelError(f"checkpoint {str(path)!r} is a folder, not a file; pass the checkpoint file itself")
    if not path.exists():
        raise ModelError(f"checkpoint {str(path)!r} does not exist")
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as exc:
        raise ModelError(f"cannot read checkpoint {str(path)!r}: {os_reason(exc)}") from exc
    if not head:
        raise ModelError(f"checkpoint {str(path)!r} is empty")
    kind = sniff_checkpoint(head)
    if kind is None:
        raise ModelError(f"{str(path)!r} is not a PyTorch checkpoint (not a zip or pickle file{_looks_like(head)})")
    if kind == "pickle":
        _check_legacy_magic(path)
    if kind == "tar":
        _check_legacy_tar(path)
    if kind == "zip" and not zipfile.is_zipfile(path):
        raise _corrupt(path, "its zip directory is missing: the file was probably cut short")
    return kind


def _check_legacy_magic(path: Path) -> None:
    """Parse (never run) the first pickle of a legacy checkpoint: it must hold torch's magic number.

    Raises:
        ModelError: the pickle is malformed, or it is some other pickle (e.g. written by ``pickle.dump``).
    """
    try:
        with open(path, "rb") as stream:
            numbers = _scan_pickles(stream, limit=1).numbers
    except (ValueError, OSError) as exc:
        raise _corrupt(path, f"pickle data cut short or malformed: {_first_line(exc)}") from exc
    if _LEGACY_MAGIC not in numbers:
        raise ModelError(f"{str(path)!r} is a pickle file but not a PyTorch checkpoint (it does not start with "
                         "torch's magic number); save the model's state_dict with torch.save")


def _check_legacy_tar(path: Path) -> None:
    """A pre-0.4 torch tar checkpoint holds ``storages``, ``tensors`` and ``pickle`` members; other tars are not.

    Raises:
        ModelError: a damaged tar archive, or a tar archive that is not a torch checkpoint.
    """
    try:
        with tarfile.open(path, "r:") as archive:
            members = set(archive.getnames())
    except (tarfile.TarError, OSError) as exc:
        raise _corrupt(path, f"damaged tar archive: {_first_line(exc)}") from exc
    if not _LEGACY_TAR_MEMBERS <= members:
        raise ModelError(f"{str(path)!r} is not a PyTorch checkpoint (a tar archive without torch's "
                         f"{'/'.join(sorted(_LEGACY_TAR_MEMBERS))} members)")


def _check_pickle_well_formed(path: Path, kind: str) -> _PickleScan:
    """Walk the pickle opcodes the safe loader refused, without running them; a malformed stream is damage.

    For a zip checkpoint that is its ``data.pkl``; for a legacy one, the consecutive pickles at the start of
    the file (magic number, protocol, system info, the object), stopping cleanly at the end of the file.
    Legacy tar archives are not scanned.

    Returns:
        What the scan saw: the ``module.name`` globals the pickles import and their protocol (nothing for a tar
        archive).

    Raises:
        ModelError: the pickle is cut short or has invalid opcodes.
    """
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                names = sorted((n for n in archive.namelist() if n.endswith("data.pkl")), key=len)
                if not names:
                    raise _corrupt(path, "the zip archive holds no data.pkl")
                with archive.open(names[0]) as stream:
                    return _scan_pickles(stream, limit=1)
        if kind == "pickle":
            with open(path, "rb") as stream:
                return _scan_pickles(stream, limit=4)
    except (ValueError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise _corrupt(path, f"pickle data cut short or malformed: {_first_line(exc)}") from exc
    return _PickleScan()


@dataclass
class _PickleScan:
    """What :func:`_scan_pickles` saw: integer constants, imported globals (``module.name``) and the highest pickle
    protocol (its ``PROTO`` opcode; 0 for protocols 0 and 1, which have none)."""

    numbers: set[int] = field(default_factory=set)
    imports: list[str] = field(default_factory=list)
    protocol: int = 0


def _scan_pickles(stream: io.BufferedIOBase, limit: int) -> _PickleScan:
    """Parse up to ``limit`` consecutive pickles from ``stream`` with :func:`pickletools.genops` (runs nothing).

    ``STACK_GLOBAL`` (protocol 4+) takes its module and name from the two strings pushed before it; strings
    fetched back from the memo are not tracked, so such an import may be missed (it only words a message).

    Raises:
        ValueError: a pickle is cut short or holds an unknown opcode (also when the stream holds no pickle).
    """
    scan, strings = _PickleScan(), ["", ""]
    for index in range(limit):
        if index and not stream.peek(1):
            break
        for opcode, arg, _ in pickletools.genops(stream):
            if opcode.name == "PROTO":
                scan.protocol = max(scan.protocol, arg)
            if isinstance(arg, int) and not isinstance(arg, bool):
                scan.numbers.add(arg)
            elif isinstance(arg, str) and opcode.name == "GLOBAL":
                scan.imports.append(arg.replace(" ", ".").replace("__builtin__.", "builtins."))
            elif isinstance(arg, str):
                strings = [strings[1], arg]
            elif opcode.name == "STACK_GLOBAL":
                scan.imports.append(".".join(strings))
    return scan


def _corrupt(path: Path, reason: BaseException | str) -> ModelError:
    """The one error for a file that claims to be a checkpoint but cannot be read to the end."""
    detail = reason if isinstance(reason, str) else _first_line(reason)
    return ModelError(f"truncated or corrupt checkpoint {str(path)!r} ({detail}); save or copy it again")


def _refusal_reason(exc: BaseException, imports: list[str], protocol: int = 0) -> str:
    """Word why the safe loader refused a well-formed pickle, naming the code it would run when known.

    Torch's own message names the offending global for a ``GLOBAL`` opcode; for ``STACK_GLOBAL`` (which it
    does not support at all) the globals seen by the scan stand in, minus torch's and ``collections``' own.
    A pickle that runs no code but was saved with a protocol the safe loader cannot parse (``protocol``, from the
    pickle's ``PROTO`` opcode) says so, and how to re-save it.
    """
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:  # torch names the refused global, sometimes without its module ("print"): prefer the full name
        named = found.group(1).rstrip(".")
        suspects = [next((i for i in imports if i == named or i.endswith(f".{named}")), named)]
    else:
        suspects = [name for name in dict.fromkeys(imports) if not name.startswith(("torch.", "collections."))]
    if suspects:
        return f"it contains Python objects that would run code when loaded (needs {', '.join(suspects[:3])})"
    if protocol > 2:
        return f"it was saved with pickle protocol {protocol}, which PyTorch's safe loader cannot read"
    for marker in ("Unsupported", "unsupported", "Cannot use weights_only"):
        line = next((ln.strip() for ln in text.splitlines() if marker in ln), None)
        if line:
            return f"the safe loader cannot read it ({line[:200]})"
    return f"the safe loader cannot read it ({_first_line(exc)})"


def _looks_like(head: bytes) -> str:
    """``"; it looks like <kind>"`` for a few common non-checkpoint files, else ``""``."""
    for signature, kind in _OTHER_FORMATS:
        if head.startswith(signature):
            return f"; it looks like {kind}"
    if len(head) >= 10 and head[8:10] == b'{"':
        return "; it looks like a safetensors file, which is not supported: save a state_dict with torch.save"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            return ""
        return "; it contains text"
    return ""


def extract_state_dict(obj: Any, path: Path) -> dict[str, Any]:
    """Find the tensor mapping in a checkpoint object and strip wrapper prefixes (DataParallel, compile)."""
    import torch

    def is_tensor_map(value: Any) -> bool:
        return isinstance(value, Mapping) and bool(value) and all(
            isinstance(v, torch.Tensor) for v in value.values()
        )

    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    candidate = obj if is_tensor_map(obj) else None
    if candidate is None and isinstance(obj, Mapping):
        candidate = next((obj[k] for k in _NESTED_KEYS if k in obj and is_tensor_map(obj[k])), None)
    if candidate is None:
        raise ModelError(f"{str(path)!r} holds no state_dict (expected a mapping of parameter names to tensors)")
    state = dict(candidate)
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def fit_state_dict(
    build: Callable[[int], Any], state: dict[str, Any], num_classes: int | None, arch: str, path: Path
) -> Any:
    """Build the architecture for the checkpoint's class count and load ``state`` strictly.

    Args:
        build: ``num_classes -> nn.Module`` for the named architecture.
        state: the checkpoint's state_dict.
        num_classes: the class count the user asked for, or ``None`` to take it from the checkpoint.
        arch: architecture name, for messages.
        path: checkpoint path, for messages.

    Raises:
        ModelError: the checkpoint does not fit the architecture, or its class count differs from ``num_classes``.
    """
    reference_model = build(1000)
    reference = reference_model.state_dict()
    head = [k for k, v in state.items() if k in reference and v.shape != reference[k].shape]
    found = _class_count(state, reference, head)
    if num_classes is not None and found is not None and found != num_classes:
        key = _head_key(state, reference, head, found)
        raise ModelError(
            f"{str(path)!r} has {found} classes ({key} is {list(state[key].shape)}) but {num_classes} were asked "
            f"for (--num-classes/--classes); use --num-classes {found} or a class file with {found} names"
        )
    count = num_classes or found or 1000
    return load_exactly(reference_model if count == 1000 else build(count), state, arch, path)


def load_exactly(model: Any, state: dict[str, Any], arch: str, path: Path) -> Any:
    """Load ``state`` into ``model``; any missing or unexpected key or shape mismatch is one clear error.

    Raises:
        ModelError: naming how many keys are missing, unexpected or mismatched, with examples.
    """
    reference = model.state_dict()  # compared before loading: torch raises a many-line error on shape mismatches
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference]
    mismatched = [k for k, v in state.items()
                  if k in reference and getattr(v, "shape", None) != reference[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} in the file, "
                         f"{tuple(reference[k].shape)} in {arch})")
        raise ModelError(f"{str(path)!r} does not fit architecture {arch!r}: {'; '.join(parts)}; is --model right?")
    model.load_state_dict(state)
    return model


def _class_count(state: Mapping[str, Any], reference: Mapping[str, Any], head: list[str]) -> int | None:
    """The class count implied by the keys whose shapes differ from a 1000-class model (``None`` if all fit)."""
    if not head:
        return 1000 if any(v.ndim >= 1 and v.shape[0] == 1000 for k, v in state.items() if k in reference) else None
    counts = {state[k].shape[0] for k in head if reference[k].shape[0] == 1000}
    return counts.pop() if len(counts) == 1 else None


def _head_key(state: Mapping[str, Any], reference: Mapping[str, Any], head: list[str], found: int) -> str:
    """The parameter that shows the class count ``found``: a head key, else the last key of that many rows.

    ``head`` (the keys whose shapes differ from a 1000-class model) is empty when the checkpoint has 1000
    classes itself; the classifier is then the last parameter with 1000 rows.
    """
    changed = [k for k in head if state[k].ndim >= 1]
    if changed:
        return changed[0]
    rows = [k for k, v in state.items() if k in reference and v.ndim >= 1 and v.shape[0] == found]
    matrices = [k for k in rows if state[k].ndim >= 2]
    return (matrices or rows or list(state))[-1]


def _first_line(exc: BaseException, contains: str | None = None) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if contains:
        hit = next((line for line in lines if contains in line), None)
        if hit:
            return hit[:200]
    return (lines[0] if lines else type(exc).__name__)[:200]
