"""Forward hooks that record layer outputs, and a context manager that runs a model in eval mode.

These are the shared plumbing of every engine that looks inside a network (CAMs, guided backprop, activations).
Everything here leaves the model exactly as it was found: hooks are removed and training flags and the caller's
grad mode are restored on the way out, even when the forward pass raises.

The one trick worth knowing is :class:`LayerTap`'s *gradient sources*. Gradient-weighted CAMs need
``dY/dA`` for the activation ``A`` of a late layer only, so building the autograd graph of the whole network
(and back-propagating through it) is wasted work. Instead the caller runs the forward pass under
``torch.no_grad()``; when the first gradient-source layer has produced its output, its hook swaps that output
for a fresh leaf tensor that requires grad and switches grad mode on, so the graph starts *at that layer*.
The forward pass up to the layer therefore costs exactly what an inference pass costs, and a backward pass only
traverses the head of the network after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn

from explain.device import model_device
from explain.errors import LayerError
from explain.modules import resolve_layer

__all__ = ["LayerTap", "channels_last_layout", "eval_mode", "prefers_channels_last", "spatial_layer_error"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the duration of the block, then restore every module's ``training`` flag.

    The flags are restored one by one (not with ``model.train()``), so a model handed over in a mixed state,
    e.g. training mode with frozen BatchNorm layers, comes back in exactly that state.
    """
    flags = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@contextlib.contextmanager
def channels_last_layout(model: nn.Module, enabled: bool) -> Iterator[bool]:
    """Run ``model`` in the channels-last memory layout inside the block when possible; restore it afterwards.

    Only a model whose 4-D parameters, their ``.grad`` and buffers are all in the default layout is converted (so
    converting back gives exactly what was there: same tensors, same values, same layout). Yields whether it was
    converted.
    """
    import itertools

    grads = (p.grad for p in model.parameters() if p.grad is not None)
    every = itertools.chain(model.parameters(), grads, model.buffers())
    tensors = [t for t in every if t.dim() == 4] if enabled else []
    if not tensors or not all(t.is_contiguous() for t in tensors):
        yield False
        return
    try:
        model.to(memory_format=torch.channels_last)
    except Exception:  # noqa: BLE001 - an exotic module: run it as it is
        model.to(memory_format=torch.contiguous_format)
        yield False
        return
    try:
        yield True
    finally:
        model.to(memory_format=torch.contiguous_format)


def prefers_channels_last(model: nn.Module) -> bool:
    """Whether gradient passes through ``model`` run faster in the channels-last layout on this device.

    Measured on x86 CPUs with oneDNN (``bench/guided_speed.py``, batch 8 at 224 px): forward + input-gradient passes
    in channels-last take 10-25 % less time than in the default layout for ResNet-18/50, VGG-16, DenseNet-121,
    GoogLeNet and EfficientNet-Lite0 (depthwise convolutions gain most). So: CPU models with a 2-D convolution.
    GPUs are left alone (cuDNN picks its own layouts; the gain there depends on the card and the precision).
    """
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    return model_device(model, torch.device("cpu")).type == "cpu"


def spatial_layer_error(name: str, output: Any) -> LayerError:
    """The error for a layer whose output is not a spatial ``(N, C, H, W)`` tensor."""
    if isinstance(output, torch.Tensor):
        got = f"a tensor of shape {tuple(output.shape)}"
    else:
        got = f"a {type(output).__name__}"
    return LayerError(
        f"layer {name!r} gives {got}, but this method needs a layer with a spatial (N, C, H, W) output, "
        "e.g. a convolution, a block or a stage; run 'cnn-explain layers' to see the output shapes"
    )


def _parent_hint(name: str) -> str:
    return f", such as its parent {name.rsplit('.', 1)[0]!r}" if "." in name else ""


class LayerTap(contextlib.AbstractContextManager["LayerTap"]):
    """Record the outputs of named layers during a forward pass.

    Use as a context manager around one forward pass; hooks exist only inside the ``with`` block::

        with LayerTap(model, ["layer3", "layer4"]) as tap, torch.no_grad():
            model(x)
        tap.outputs["layer4"]        # (N, C, H, W), the layer's output as it left the layer

    Each recorded output is the tensor as the layer produced it; the network continues with a *copy*
    (``clone()``), so in-place operations further down (``ReLU(inplace=True)``, ``out += identity``) can
    neither change the recorded values nor break autograd.

    Args:
        model: the network. It is not modified, apart from the hooks that live inside the ``with`` block.
        layers: dotted layer names to record (duplicates are ignored).
        gradient_sources: names among ``layers`` whose outputs gradients will be taken with respect to.
            The forward pass is expected to run under ``torch.no_grad()``; the first of these layers to run
            replaces its output by a fresh leaf ``a = out.detach().requires_grad_()`` and switches grad mode on,
            so the autograd graph starts there (see the module docstring). A later source whose output already
            requires grad is recorded as it is (a node of that graph); one that does not (another branch, or
            frozen parameters in between) becomes a leaf too. The caller's grad mode is restored on exit.
        spatial: names among ``layers`` whose output must be an ``(N, C, H, W)`` tensor; anything else raises
            :class:`LayerError` from inside the forward pass, before the rest of the network runs.

    Attributes:
        outputs: layer name -> recorded output tensor (filled during the forward pass).
        order: layer names in the order in which they ran.

    Raises:
        LayerError: an unknown layer name (with suggestions, on construction); a layer that runs more than once
            per forward pass (a shared module, whose output would be ambiguous); a ``spatial`` layer whose output
            is not ``(N, C, H, W)``. :meth:`require_all` raises for layers that did not run.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        *,
        gradient_sources: Collection[str] = (),
        spatial: Collection[str] = (),
    ) -> None:
        self.model = model
        self.layers: list[str] = list(dict.fromkeys(layers))
        self.modules: dict[str, nn.Module] = {name: resolve_layer(model, name) for name in self.layers}
        unknown = (set(gradient_sources) | set(spatial)) - set(self.layers)
        if unknown:
            raise ValueError(f"gradient_sources/spatial must be among layers; not tapped: {sorted(unknown)}")
        self.gradient_sources = frozenset(gradient_sources)
        self.spatial = frozenset(spatial)
        self.outputs: dict[str, torch.Tensor] = {}
        self.order: list[str] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._grad_mode: bool | None = None

    def __enter__(self) -> LayerTap:
        self.outputs.clear()
        self.order.clear()
        self._grad_mode = torch.is_grad_enabled()
        try:
            for name, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._make_hook(name)))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._grad_mode is not None:
            torch.set_grad_enabled(self._grad_mode)
            self._grad_mode = None

    def _make_hook(self, name: str):  # noqa: ANN202 - a torch forward hook
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if name in self.outputs:
                raise LayerError(
                    f"layer {name!r} runs more than once per forward pass (the module is shared, e.g. one ReLU "
                    f"reused inside a block), so its output is ambiguous; choose a layer that runs once"
                    f"{_parent_hint(name)}"
                )
            if name in self.spatial and not (isinstance(output, torch.Tensor) and output.dim() == 4):
                raise spatial_layer_error(name, output)
            if not isinstance(output, torch.Tensor):
                # Not a tensor (tuple, dict...): record it as it is; only tensors can be protected or differentiated.
                self.outputs[name] = output
                self.order.append(name)
                return None
            if name in self.gradient_sources and not output.requires_grad:
                leaf = output.detach().requires_grad_(True)
                torch.set_grad_enabled(True)  # the graph starts here; __exit__ restores the caller's mode
                recorded = leaf
            else:
                recorded = output
            self.outputs[name] = recorded
            self.order.append(name)
            # The network goes on with a copy: a non-leaf, so in-place ops downstream are legal for autograd and
            # leave the recorded values alone.
            return recorded.clone()

        return hook

    def require_all(self) -> None:
        """Raise :class:`LayerError` for the first tapped layer that did not run during the forward pass."""
        for name in self.layers:
            if name not in self.outputs:
                raise LayerError(
                    f"layer {name!r} did not run during the forward pass (it is not used by the model's forward, "
                    "or only in training mode); choose a layer on the path from the input to the output"
                )
