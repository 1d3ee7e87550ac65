"""Choosing the compute device honestly: an unavailable device is an error, never a silent fallback."""

from __future__ import annotations

from typing import Any

from explain.errors import DeviceError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> Any:
    """Return the ``torch.device`` for ``name``.

    ``auto`` picks CUDA, then Apple MPS, then the CPU. ``cuda`` or ``mps`` on a machine without them raises.

    Raises:
        DeviceError: unknown or unavailable device.
    """
    import torch

    key = name.lower().strip()
    base = key.split(":")[0]
    if base not in DEVICES:
        raise DeviceError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but no CUDA GPU is available here; use --device cpu or auto")
    if base == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("--device mps was asked for but Apple MPS is not available here; use --device cpu or auto")
    return torch.device(key)
