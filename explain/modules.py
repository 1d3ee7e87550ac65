"""Finding modules by their dotted names, with suggestions when a name is wrong."""

from __future__ import annotations

from typing import TYPE_CHECKING

from explain.errors import LayerError, suggest

if TYPE_CHECKING:
    from torch import nn


def check_eager(module: nn.Module, where: str = "the model") -> None:
    """Refuse a TorchScript module where layers must be hooked or inspected (its compiled code hides them).

    Raises:
        LayerError: ``module`` is a ``torch.jit.ScriptModule``.
    """
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        raise LayerError(f"{where} is TorchScript: its layers cannot be hooked or inspected; load a state_dict or a "
                         "pickled model instead (predict, saliency and ascent work on TorchScript)")


def layer_names(model: nn.Module) -> list[str]:
    """Every named sub-module's dotted name, in registration order (the root module is left out)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the sub-module called ``name`` (dotted, as ``cnn-explain layers`` prints it).

    Raises:
        LayerError: no such module (the message suggests the closest valid names), or a TorchScript module, whose
            compiled code cannot be hooked (explanations at a layer need an eager model).
    """
    modules = dict(model.named_modules())
    if name and name in modules:
        check_eager(modules[name], f"layer {name!r}")
        return modules[name]
    raise LayerError(
        f"unknown layer {name!r}{suggest(name, [n for n in modules if n])}; "
        "run 'cnn-explain layers' to list the layer names"
    )
