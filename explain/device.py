"""Choosing the compute device honestly: an unavailable device is an error, never a silent fallback."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from explain.errors import DeviceError

if TYPE_CHECKING:
    import torch
    from torch import nn

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


def model_device(model: nn.Module, default: Any = None) -> torch.device | Any:
    """The device of the model's first parameter (or buffer); ``default`` for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return default
