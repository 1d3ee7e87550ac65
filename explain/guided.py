"""Guided backpropagation (and its deconvnet sibling), guided Grad-CAM, and the shared input-gradient engine.

Guided backpropagation (Springenberg, Dosovitskiy, Brox & Riedmiller, "Striving for Simplicity: The All
Convolutional Net", ICLR workshop 2015, https://arxiv.org/abs/1412.6806, Sec. 3.4 and Fig. 1) explains a scalar
``Y`` (a class score or the value of an intermediate unit) by its gradient with respect to the input image,
computed with one change: at every rectifier ``f = relu(x)`` the backward pass lets the gradient through only
where the forward input is positive **and** the incoming gradient is positive::

    plain gradient     R_in = (x > 0) * R_out
    deconvnet          R_in = (R_out > 0) * R_out        (Zeiler & Fergus 2014, https://arxiv.org/abs/1311.2901)
    guided backprop    R_in = (x > 0) * (R_out > 0) * R_out

For ``ReLU6(x) = min(max(x, 0), 6)`` (and any ``hardtanh(x, 0, M)``, a rectifier clipped at ``M``) the forward
mask is ``0 < x < M``: the guided rule is ``R_in = (0 < x < M) * (R_out > 0) * R_out``; the deconvnet rule ignores
the forward pass and stays ``relu(R_out)``.

Which rectifiers are guided (all of them, however the model calls them):

* ``nn.ReLU`` modules, in-place or not, including one module reused several times in a forward pass
  (torchvision's ResNet);
* ``nn.ReLU6`` modules (and ``nn.Hardtanh`` with ``min_val == 0``);
* functional calls inside ``forward`` methods: ``F.relu``, ``F.relu_``, ``torch.relu``, ``torch.relu_``,
  ``Tensor.relu``, ``Tensor.relu_``, ``F.relu6``, ``F.hardtanh(x, 0, M)`` and ``F.hardtanh_`` (torchvision's
  DenseNet, GoogLeNet and Inception use ``F.relu``, which module-hook implementations such as captum's miss).

How: during the explained forward pass only, a :class:`torch.overrides.TorchFunctionMode` intercepts those calls
and runs them through a custom :class:`torch.autograd.Function` whose forward is the original rectifier (same
kernel, same in-place semantics: an in-place call modifies its input and returns it) and whose backward applies the
rule. ``nn.ReLU.forward`` calls ``F.relu`` and ``nn.ReLU6.forward`` calls ``F.hardtanh``, so modules and functional
calls go through the same path; temporary forward pre-hooks and hooks on rectifier modules only tell the two apart
for the counts. Nothing in the model is swapped; the mode and the hooks live in a context manager and are removed in
``finally``. Rectifiers hidden inside TorchScript code cannot be intercepted, so a model containing a
``ScriptModule`` is refused rather than silently explained with the plain gradient.

Every result records how many rectifier calls of each kind were guided, e.g.
``{"nn.ReLU": 49, "nn.ReLU6": 0, "functional relu": 1, "functional relu6": 0}``; a model without any gets a
warning in :attr:`GradientResult.warnings` (its guided backprop equals the plain gradient). Calls of activations
the guided rule is not defined for (SiLU, GELU, Hardswish, LeakyReLU, ELU, Mish, Softplus, PReLU...) are counted in
:attr:`GradientResult.unguided` and warned about: their ordinary gradient passes (this is a deviation only in the
sense that the paper does not say what to do there).

Guided Grad-CAM (Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391, Sec. 3.1): the guided
backpropagation map multiplied element-wise by the class activation map upsampled to the input
(:func:`explain.cam.compute_cams`; bilinear, min-max normalised to [0, 1], broadcast over the colour channels).
With Grad-CAM++ (https://arxiv.org/abs/1710.11063) as the CAM this is guided Grad-CAM++.

Conventions and deviations:

* Explanations run in eval mode; gradients are taken with :func:`torch.autograd.grad` with respect to the input
  only, so parameter ``.grad`` fields are never touched and the autograd engine skips weight gradients. The model is
  left exactly as found (training flags, hooks, parameters, buffers, ``requires_grad``).
* Several images are explained in one pass by differentiating the *sum* of their scores, which assumes images do
  not interact inside the model (true in eval mode for ordinary CNNs). Several targets share the forward pass: one
  backward pass per target rank.
* The gradient is taken with respect to the *model input* (the normalised tensor), at model-input resolution.
* At ``x == 0`` exactly the rectifier's gradient is taken as 0 (as PyTorch's), so ties never pass.
* Only the calls listed above count as rectifiers. A rectifier written by hand (``x.clamp(min=0)``,
  ``torch.maximum(x, 0)``, ``F.threshold(x, 0, 0)``, ``x * (x > 0)``) is ordinary arithmetic to PyTorch and its
  gradient passes unguided; so do rectifiers that run inside TorchScript (refused, see above) or custom C++ ops.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from explain.device import model_device
from explain.errors import UsageError
from explain.hooks import LayerTap, channels_last_layout, eval_mode, prefers_channels_last
from explain.modules import resolve_layer
from explain.scores import Rank, Target, check_targets, expand_targets, first_per_target, rank_scores
from explain.targets import ClassTarget, NeuronTarget

__all__ = [
    "GUIDED_RULES",
    "RECTIFIER_KINDS",
    "UNIT_MODES",
    "check_not_scripted",
    "GradientMap",
    "GradientResult",
    "GuidedRectifiers",
    "guided_backprop",
]


#: Backward rules at rectifiers: Springenberg's guided rule, and Zeiler & Fergus' deconvnet rule.
GUIDED_RULES = ("guided", "deconvnet")
#: How a ``LAYER:C`` neuron (no position) is explained: the channel's spatial mean, or its highest unit per image.
UNIT_MODES = ("mean", "max")
#: The kinds of rectifier calls that are always reported (others appear when they occur).
RECTIFIER_KINDS = ("nn.ReLU", "nn.ReLU6", "functional relu", "functional relu6")

_NO_RECTIFIER_WARNING = (
    "no rectifier (ReLU or ReLU6, module or functional) ran in the model's forward pass, so {method} equals the "
    "plain input gradient"
)


# ---------------------------------------------------------------------------------------------------------------
# The guided rectifier
# ---------------------------------------------------------------------------------------------------------------


class _GuidedRectifier(torch.autograd.Function):
    """``relu(x)`` or ``hardtanh(x, 0, upper)`` forward; guided (or deconvnet) backward.

    The forward calls the original kernel, so values are bit-identical to the unguided model. In-place calls modify
    ``x`` and return it (``mark_dirty``). The backward needs only the output: ``out > 0`` iff ``x > 0`` and
    ``0 < out < upper`` iff ``0 < x < upper``, which is also what PyTorch saves for its own in-place rectifiers.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, upper: float | None, inplace: bool, rule: str) -> torch.Tensor:  # noqa: D102
        if upper is None:
            out = torch.relu_(x) if inplace else torch.relu(x)
        else:
            out = torch._C._nn.hardtanh_(x, 0.0, upper) if inplace else torch._C._nn.hardtanh(x, 0.0, upper)
        if inplace:
            ctx.mark_dirty(x)
        ctx.upper = upper
        ctx.rule = rule
        if rule == "guided":
            ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:  # noqa: D102
        if ctx.rule == "deconvnet":
            return grad.clamp(min=0), None, None, None  # (R_out > 0) * R_out
        (out,) = ctx.saved_tensors
        if ctx.upper is None:  # pass where x > 0
            masked = torch.ops.aten.threshold_backward(grad, out, 0)
        else:  # pass where 0 < x < upper (hardtanh_backward is exactly that mask, strict at both ends)
            masked = torch.ops.aten.hardtanh_backward(grad, out, 0.0, ctx.upper)
        # mask * max(R_out, 0): the mask is 0/1, so clamping after masking is the same; in place, one buffer less
        return masked.clamp_(min=0), None, None, None


def _relu_call(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[torch.Tensor, float | None, bool] | None:
    """``(input, upper, inplace)`` if ``func(*args, **kwargs)`` is a rectifier call, else ``None``."""
    if func in _RELU:
        inplace = _RELU[func] or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
        return args[0], None, inplace
    if func in _RELU6:
        inplace = _RELU6[func] or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
        return args[0], 6.0, inplace
    if func in _HARDTANH:
        lo = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
        hi = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
        inplace = _HARDTANH[func] or bool(kwargs.get("inplace", args[3] if len(args) > 3 else False))
        if float(lo) == 0.0 and float(hi) > 0.0:  # a clipped rectifier; other hardtanh calls are not rectifiers
            return args[0], float(hi), inplace
    return None


# func -> always in place?
_RELU = {F.relu: False, torch.relu: False, torch.Tensor.relu: False, torch.relu_: True, torch.Tensor.relu_: True}
_RELU6 = {F.relu6: False, torch._C._nn.relu6: False, torch._C._nn.relu6_: True}
_HARDTANH = {F.hardtanh: False, torch._C._nn.hardtanh: False, torch._C._nn.hardtanh_: True}
#: Activations the guided rule is not defined for: counted (and reported), their gradients pass unchanged.
_OTHER_ACTIVATIONS = {
    F.silu: "silu", F.gelu: "gelu", F.hardswish: "hardswish", F.leaky_relu: "leaky_relu", F.elu: "elu",
    F.selu: "selu", F.celu: "celu", F.mish: "mish", F.softplus: "softplus", F.prelu: "prelu", F.rrelu: "rrelu",
}
_INTERCEPTED = {**_RELU, **_RELU6, **_HARDTANH, **_OTHER_ACTIVATIONS}


class _RectifierMode(TorchFunctionMode):
    """Routes rectifier calls through :class:`_GuidedRectifier` and counts them by kind."""

    def __init__(self, rule: str, counts: Counter[str], unguided: Counter[str], module_stack: list[nn.Module]) -> None:
        super().__init__()
        self.rule = rule
        self.counts = counts
        self.unguided = unguided
        self.module_stack = module_stack

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        try:
            known = func in _INTERCEPTED
        except TypeError:  # an unhashable callable: certainly not a rectifier
            known = False
        if not known:
            return func(*args, **kwargs)
        if func in _OTHER_ACTIVATIONS:
            if torch.is_grad_enabled():
                self.unguided[_OTHER_ACTIVATIONS[func]] += 1
            return func(*args, **kwargs)
        call = _relu_call(func, args, kwargs)
        if call is None or not torch.is_grad_enabled() or not isinstance(call[0], torch.Tensor):
            return func(*args, **kwargs)
        x, upper, inplace = call
        self.counts[self._kind(upper)] += 1
        return _GuidedRectifier.apply(x, upper, inplace, self.rule)

    def _kind(self, upper: float | None) -> str:
        module = self.module_stack[-1] if self.module_stack else None
        if upper is None:
            return "nn.ReLU" if isinstance(module, nn.ReLU) else "functional relu"
        if isinstance(module, nn.ReLU6):
            return "nn.ReLU6"
        if isinstance(module, nn.Hardtanh):
            return f"nn.Hardtanh(0, {upper:g})"
        return "functional relu6" if upper == 6.0 else f"functional hardtanh(0, {upper:g})"


def check_not_scripted(model: nn.Module, method: str) -> None:
    """Refuse a model that contains TorchScript modules: their rectifiers run compiled and cannot be guided.

    Raises:
        UsageError: naming the first scripted sub-module.
    """
    for name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            where = f"sub-module {name!r}" if name else "the model"
            raise UsageError(
                f"{method} needs an eager PyTorch model, but {where} is TorchScript, whose compiled rectifiers cannot "
                "be guided; load a state_dict or a pickled model instead (the 'saliency' command works on TorchScript)"
            )


class GuidedRectifiers(contextlib.AbstractContextManager["GuidedRectifiers"]):
    """Apply the guided (or deconvnet) backward rule at every rectifier of forward passes run inside the block.

    ::

        with GuidedRectifiers(model) as guided:
            y = model(x)                          # grad mode on; x.requires_grad_()
        (g,) = torch.autograd.grad(y[:, c].sum(), x)
        guided.counts                             # {"nn.ReLU": 17, "nn.ReLU6": 0, "functional relu": 0, ...}

    The rule lives in the autograd graph built inside the block, so the backward pass may run after the block.
    Calls made while grad mode is off are left alone (and not counted).

    Args:
        model: the network; temporary forward (pre-)hooks on its rectifier modules tell module calls from
            functional ones and are removed on exit, even if the forward pass raises.
        rule: ``"guided"`` (Springenberg et al. 2015) or ``"deconvnet"`` (Zeiler & Fergus 2014).

    Attributes:
        counts: rectifier kind -> number of calls guided (:data:`RECTIFIER_KINDS` always present).
        unguided: other activation functions (SiLU, GELU, Hardswish, LeakyReLU, ...) -> number of calls; the guided
            rule is not defined for them, so their ordinary gradient passes.

    Raises:
        UsageError: unknown rule; a model containing TorchScript modules.
    """

    def __init__(self, model: nn.Module, rule: str = "guided") -> None:
        if rule not in GUIDED_RULES:
            raise UsageError(f"unknown rule {rule!r}: choose one of {', '.join(GUIDED_RULES)}")
        check_not_scripted(model, "guided backpropagation" if rule == "guided" else "deconvnet")
        self.model = model
        self.rule = rule
        self._counts: Counter[str] = Counter()
        self._unguided: Counter[str] = Counter()
        self._stack: list[nn.Module] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._mode: _RectifierMode | None = None

    @property
    def unguided(self) -> dict[str, int]:
        return dict(sorted(self._unguided.items()))

    @property
    def counts(self) -> dict[str, int]:
        out = {kind: self._counts.get(kind, 0) for kind in RECTIFIER_KINDS}
        out.update({k: v for k, v in sorted(self._counts.items()) if k not in out})
        return out

    def __enter__(self) -> GuidedRectifiers:
        self._counts.clear()
        self._unguided.clear()
        self._stack.clear()
        try:
            for module in self.model.modules():
                if isinstance(module, nn.ReLU | nn.Hardtanh):
                    self._handles.append(module.register_forward_pre_hook(self._push))
                    self._handles.append(module.register_forward_hook(self._pop, always_call=True))
            self._mode = _RectifierMode(self.rule, self._counts, self._unguided, self._stack)
            self._mode.__enter__()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._mode is not None:
                self._mode.__exit__(None, None, None)
        finally:
            self._mode = None
            self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._stack.clear()

    def _push(self, module: nn.Module, args: Any) -> None:
        self._stack.append(module)

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack and self._stack[-1] is module:
            self._stack.pop()


# ---------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class GradientMap:
    """The explanation of one target for one image.

    Attributes:
        image_index: position of the image in the batch.
        target: what was explained: a class (``TopK`` is expanded to its classes) or a neuron. For a ``LAYER:C``
            neuron explained with ``unit="max"``, the chosen unit (``y``, ``x`` filled in).
        rank: for a class that came from ``TopK``, its rank (0 = most likely); ``None`` otherwise.
        score: the explained scalar ``Y`` on the clean input: the pre-softmax class score or the neuron's value.
        gradient: float32 ``(C, H, W)`` at model-input resolution: the explanation (guided backprop, guided
            Grad-CAM product, input gradient, SmoothGrad mean, times the input when asked).
        unit_choice: for neurons: ``"given"`` (``LAYER:C:Y:X``), ``"max"`` (highest unit chosen per image) or
            ``"mean"`` (channel mean); ``None`` for classes.
        guided: with a CAM, the guided backpropagation before the multiplication, ``(C, H, W)``; else ``None``.
        cam: with a CAM, the normalised CAM at input resolution ``(H, W)`` in [0, 1]; else ``None``.
    """

    image_index: int
    target: ClassTarget | NeuronTarget
    rank: int | None
    score: float
    gradient: np.ndarray = field(repr=False)
    unit_choice: str | None = None
    guided: np.ndarray | None = field(default=None, repr=False)
    cam: np.ndarray | None = field(default=None, repr=False)


@dataclass
class GradientResult:
    """Everything one call produced.

    Attributes:
        method: ``"guided-backprop"``, ``"deconvnet"``, ``"guided-gradcam"``, ``"guided-gradcam++"``,
            ``"gradient"`` or ``"smoothgrad"`` (see :mod:`explain.saliency`).
        input_size: ``(H, W)`` of the model input.
        logits: ``(N, num_classes)`` float32 CPU tensor from the clean forward pass, or ``None`` when the model's
            output is not 2-D.
        maps: one :class:`GradientMap` per image and target, image-major, targets in the order requested.
        rectifiers: for guided methods, rectifier kind -> number of calls guided in the forward pass.
        unguided: for guided methods, other activations (SiLU, GELU, ...) -> calls, whose gradient passed unguided.
        warnings: things the caller should tell the user (e.g. no rectifier found).
        cam_layers: the CAM layers of guided Grad-CAM; empty otherwise.
        times_input: whether the gradients were multiplied by the input.
        samples: SmoothGrad samples per image (0 for a plain gradient).
        noise: SmoothGrad noise level as a fraction of each image's value range.
        sigmas: SmoothGrad noise standard deviation per image (model-input units); empty otherwise.
        seeds: the noise seed of each image; empty otherwise.
    """

    method: str
    input_size: tuple[int, int]
    logits: torch.Tensor | None
    maps: list[GradientMap]
    rectifiers: dict[str, int] | None = None
    unguided: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    cam_layers: tuple[str, ...] = ()
    times_input: bool = False
    samples: int = 0
    noise: float = 0.0
    sigmas: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    @property
    def probabilities(self) -> torch.Tensor | None:
        """Softmax of :attr:`logits` over classes, or ``None``."""
        return None if self.logits is None else torch.softmax(self.logits, dim=1)

    def for_image(self, index: int) -> list[GradientMap]:
        """The maps of one image, in target order; a target that several requests resolve to (class 282 and
        ``top1`` when 282 is the top class) is listed once, where it was first requested."""
        return first_per_target(self.maps, index)


# ---------------------------------------------------------------------------------------------------------------
# Targets: from requests to one differentiable score per image
# ---------------------------------------------------------------------------------------------------------------


def check_request(targets: Sequence[Target], unit: str) -> list[Target]:
    """Validate a target list and a unit mode (shared by the guided and saliency engines)."""
    targets = check_targets(targets)
    if unit not in UNIT_MODES:
        raise UsageError(f"unknown unit mode {unit!r}: choose mean (channel mean) or max (highest unit per image)")
    return targets


def check_inputs(inputs: object) -> torch.Tensor:
    """The ``(N, C, H, W)`` input tensor, or :class:`UsageError`."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise UsageError(f"inputs must be a floating-point (N, C, H, W) tensor, got {shape}")
    if inputs.shape[0] == 0:
        raise UsageError("inputs hold no images")
    return inputs


def neuron_layers(model: nn.Module, targets: Sequence[Target]) -> list[str]:
    """The layers that neuron targets need tapped (each checked to exist)."""
    layers = [t.layer for t in targets if isinstance(t, NeuronTarget)]
    for layer in layers:
        resolve_layer(model, layer)
    return list(dict.fromkeys(layers))


def prepare_input(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """A detached copy of ``inputs`` on the model's device (never an inference tensor, never the caller's storage)."""
    device = model_device(model)
    x = inputs.detach().to(device) if device is not None else inputs.detach()
    return x.clone()


def input_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: Sequence[Target],
    *,
    unit: str = "mean",
    rule: str | None = None,
) -> tuple[list[Rank], list[torch.Tensor], torch.Tensor | None, list[torch.Tensor], GuidedRectifiers | None]:
    """One forward pass (guided or plain), one backward pass per target rank, gradients w.r.t. the input only.

    Returns:
        ``(ranks, grads, logits, scores, guided)``: ``grads[r]`` is ``(N, C, H, W)`` for rank ``r``,
        ``scores[r]`` is ``(N,)``; ``guided`` holds the rectifier counts, ``None`` when ``rule`` is ``None``.
    """
    targets = check_request(targets, unit)
    inputs = check_inputs(inputs)
    layers = neuron_layers(model, targets)
    guided = GuidedRectifiers(model, rule) if rule is not None else None
    with torch.inference_mode(False), eval_mode(model), \
            channels_last_layout(model, prefers_channels_last(model)) as fast:
        leaf = prepare_input(model, inputs)
        if fast:
            leaf = leaf.contiguous(memory_format=torch.channels_last)
        leaf.requires_grad_(True)
        tap = LayerTap(model, layers)
        with torch.enable_grad(), tap, (guided if guided is not None else contextlib.nullcontext()):
            output = model(leaf.clone())
        tap.require_all()
        n = leaf.shape[0]
        ranks = expand_targets(targets, output, tap.outputs, n, unit)
        logits = output.detach().float().cpu() if isinstance(output, torch.Tensor) and output.dim() == 2 else None
        rows = list(range(n))
        grads: list[torch.Tensor] = []
        scores: list[torch.Tensor] = []
        for r, rank in enumerate(ranks):
            score = rank_scores(rank, output, tap.outputs, rows)
            scores.append(score.detach())
            grad = None
            if score.requires_grad:
                (grad,) = torch.autograd.grad(score.sum(), leaf, retain_graph=r < len(ranks) - 1, allow_unused=True)
            grads.append(grad.detach().contiguous() if grad is not None else torch.zeros_like(leaf).contiguous())
        del tap, output
    return ranks, grads, logits, scores, guided


def no_rectifier_warning(method: str) -> str:
    """The warning for a guided method on a model without rectifiers."""
    return _NO_RECTIFIER_WARNING.format(method=method)


# ---------------------------------------------------------------------------------------------------------------
# Guided backpropagation and guided Grad-CAM
# ---------------------------------------------------------------------------------------------------------------


def guided_backprop(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: Sequence[Target],
    *,
    unit: Literal["mean", "max"] = "mean",
    rule: Literal["guided", "deconvnet"] = "guided",
    with_cam: str | None = None,
    cam_layers: str | Sequence[str] | None = None,
) -> GradientResult:
    """Guided backpropagation (or deconvnet) maps for a batch of images, optionally times a CAM.

    ``gradient = dY/dx`` with the guided rule at every rectifier (see the module docstring), where ``Y`` is a class
    score or a neuron and ``x`` the model input. With ``with_cam`` the map is multiplied by the normalised CAM
    upsampled to the input (guided Grad-CAM / guided Grad-CAM++, Selvaraju et al. 2017, Sec. 3.1).

    Args:
        model: the network (left exactly as found; it runs in eval mode).
        inputs: ``(N, C, H, W)`` preprocessed images.
        targets: applied to every image: ``ClassTarget``, ``TopK``, ``NeuronTarget`` (``LAYER:C`` channel or
            ``LAYER:C:Y:X`` unit). All targets share one forward pass.
        unit: how a ``LAYER:C`` neuron is explained: ``"mean"`` (the channel's spatial mean) or ``"max"`` (the
            single unit with the highest activation in each image; :attr:`GradientMap.target` says which).
        rule: ``"guided"`` (Springenberg et al. 2015) or ``"deconvnet"`` (Zeiler & Fergus 2014).
        with_cam: ``None``, ``"gradcam"`` or ``"gradcam++"``.
        cam_layers: the CAM layer(s) (required with ``with_cam``; several are fused by their mean).

    Returns:
        A :class:`GradientResult`; :attr:`GradientResult.rectifiers` counts the guided rectifier calls and
        :attr:`GradientResult.warnings` says when there were none.

    Raises:
        UsageError: bad inputs, targets, rule or unit mode; a TorchScript model; ``with_cam`` without layers.
        LayerError: an unknown layer (with suggestions); a CAM layer unusable for the CAM (see
            :func:`explain.cam.compute_cams`).
        TargetError: a class or neuron out of range.
    """
    if with_cam is not None:
        from explain.cam import get_method

        cam_method = get_method(with_cam)
        layers = [cam_layers] if isinstance(cam_layers, str) else list(cam_layers or [])
        if not layers:
            raise UsageError("guided Grad-CAM needs a CAM layer: pass cam_layers (the CLI uses the model's default)")
        for layer in layers:
            resolve_layer(model, layer)
    ranks, grads, logits, scores, guided = input_gradients(model, inputs, targets, unit=unit, rule=rule)
    assert guided is not None
    counts, unguided = guided.counts, guided.unguided
    base = "guided-backprop" if rule == "guided" else "deconvnet"
    method = base if with_cam is None else f"guided-{cam_method.name}"
    n, size = inputs.shape[0], (int(inputs.shape[-2]), int(inputs.shape[-1]))
    cams = _cams(model, inputs, layers, cam_method.name, ranks) if with_cam is not None else None
    np_grads = [g.float().cpu().numpy() for g in grads]
    np_scores = [s.float().cpu().tolist() for s in scores]
    maps: list[GradientMap] = []
    for i in range(n):
        for r, rank in enumerate(ranks):
            g = np_grads[r][i]
            cam = None if cams is None else cams[i][r]
            maps.append(GradientMap(
                image_index=i, target=rank.targets[i], rank=rank.rank, score=np_scores[r][i],
                gradient=g if cam is None else (g * cam[None]).astype(np.float32),
                unit_choice=rank.unit_choice, guided=None if cam is None else g, cam=cam,
            ))
    warnings = [] if sum(counts.values()) else [no_rectifier_warning(base.replace("-", " "))]
    if unguided:
        listed = ", ".join(f"{name} {count}" for name, count in unguided.items())
        warnings.append(f"the model also uses activations the guided rule is not defined for ({listed}); their "
                        "ordinary gradient passes through them")
    return GradientResult(method=method, input_size=size, logits=logits, maps=maps, rectifiers=counts,
                          unguided=unguided, warnings=warnings,
                          cam_layers=tuple(layers) if with_cam is not None else ())


def _cams(model: nn.Module, inputs: torch.Tensor, layers: list[str], method: str,
          ranks: list[Rank]) -> list[list[np.ndarray]]:
    """The normalised CAM ``(H, W)`` for every image and rank, for exactly the targets guided backprop explained.

    Images that share the same explicit targets (e.g. the same class) are explained in one batched call.
    """
    from explain.cam import compute_cams

    n = inputs.shape[0]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i in range(n):
        groups.setdefault(tuple(rank.targets[i] for rank in ranks), []).append(i)
    out: list[list[np.ndarray]] = [[] for _ in range(n)]
    for explicit, images in groups.items():
        result = compute_cams(model, inputs[images], layers, list(explicit), method)
        for j, i in enumerate(images):
            out[i] = [m.map for m in result.for_image(j)]
    return out
