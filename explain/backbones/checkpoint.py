"""Loading user checkpoints safely: state_dicts, TorchScript archives, and (only when trusted) pickled models.

Everything is read with ``torch.load(..., weights_only=True)``, which refuses pickles that would run code.
A whole pickled ``nn.Module`` needs code execution by nature; it is loaded only when the caller passes
``trust=True`` (the CLI's ``--trust-checkpoint``).
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from explain.errors import ModelError, UnsafeCheckpointError

#: Keys under which training scripts commonly nest the state_dict.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "ema", "model_ema")
_PREFIXES = ("module.", "_orig_mod.", "model.")


def is_torchscript(path: Path) -> bool:
    """True if ``path`` is a TorchScript archive (a zip with a ``code/`` folder or ``constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in n or n.endswith("constants.pkl") for n in archive.namelist())


def read_checkpoint(path: Path, trust: bool = False) -> Any:
    """Read a checkpoint file: a TorchScript module, a state_dict-like mapping, or (trusted) a pickled object.

    Raises:
        ModelError: missing, empty or unreadable file.
        UnsafeCheckpointError: the file needs code execution and ``trust`` is False.
    """
    import torch

    if not path.is_file():
        raise ModelError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise ModelError(f"checkpoint {str(path)!r} is empty")
    if is_torchscript(path):
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - any failure of the TorchScript loader is a bad file
            raise ModelError(f"cannot load TorchScript archive {str(path)!r}: {_first_line(exc)}") from exc
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust:
            raise UnsafeCheckpointError(
                f"refusing to load {str(path)!r}: it contains Python objects that would run code when loaded "
                f"({_first_line(exc, 'Unsupported global')}). Save a state_dict instead, or pass "
                "--trust-checkpoint if you trust whoever made the file"
            ) from exc
    except Exception as exc:  # noqa: BLE001 - zip/pickle/format errors all mean "not a checkpoint"
        raise ModelError(f"cannot read checkpoint {str(path)!r}: {_first_line(exc)}") from exc
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot read trusted checkpoint {str(path)!r}: {_first_line(exc)}") from exc


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
        key = next(k for k in head if state[k].ndim >= 1)
        raise ModelError(
            f"{str(path)!r} has {found} classes ({key} is {list(state[key].shape)}) but {num_classes} were asked "
            f"for (--num-classes/--classes); use --num-classes {found}"
        )
    count = num_classes or found or 1000
    return load_exactly(reference_model if count == 1000 else build(count), state, arch, path)


def load_exactly(model: Any, state: dict[str, Any], arch: str, path: Path) -> Any:
    """Load ``state`` into ``model``; any missing or unexpected key or shape mismatch is one clear error.

    Raises:
        ModelError: naming how many keys are missing, unexpected or mismatched, with examples.
    """
    result = model.load_state_dict(state, strict=False)
    mismatched = [k for k, v in state.items() if k in model.state_dict() and v.shape != model.state_dict()[k].shape]
    if result.missing_keys or result.unexpected_keys or mismatched:
        parts = []
        if result.missing_keys:
            parts.append(f"{len(result.missing_keys)} missing keys (e.g. {', '.join(result.missing_keys[:3])})")
        if result.unexpected_keys:
            parts.append(f"{len(result.unexpected_keys)} unexpected keys "
                         f"(e.g. {', '.join(result.unexpected_keys[:3])})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[0]})")
        raise ModelError(f"{str(path)!r} does not fit architecture {arch!r}: {'; '.join(parts)}; is --model right?")
    return model


def _class_count(state: Mapping[str, Any], reference: Mapping[str, Any], head: list[str]) -> int | None:
    """The class count implied by the keys whose shapes differ from a 1000-class model (``None`` if all fit)."""
    if not head:
        return 1000 if any(v.ndim >= 1 and v.shape[0] == 1000 for k, v in state.items() if k in reference) else None
    counts = {state[k].shape[0] for k in head if reference[k].shape[0] == 1000}
    return counts.pop() if len(counts) == 1 else None


def _first_line(exc: BaseException, contains: str | None = None) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if contains:
        hit = next((line for line in lines if contains in line), None)
        if hit:
            return hit[:200]
    return (lines[0] if lines else type(exc).__name__)[:200]
