"""Class activation maps weighted by gradients: Grad-CAM and Grad-CAM++.

Both methods explain a scalar ``Y`` (a pre-softmax class score, or the value of a neuron) at a layer with
activations ``A`` of shape ``(K, h, w)``: each channel ``A_k`` gets a weight ``w_k`` computed from the gradient
``g = dY/dA``, and the map is the rectified weighted sum of the channels,

    L = ReLU( sum_k w_k A_k )                                   (h x w, the layer's own resolution)

The methods differ only in ``w_k``:

* Grad-CAM (Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391, Eq. 1-2):
  ``w_k = 1/(h w) sum_ij g_kij`` (global-average-pooled gradients).
* Grad-CAM++ (Chattopadhyay et al., WACV 2018, https://arxiv.org/abs/1710.11063, Eq. 19 with the
  closed form for ``Y' = exp(Y)``, whose higher derivatives are powers of the first):
  ``alpha_kij = g_kij^2 / (2 g_kij^2 + sum_ab A_kab g_kij^3)`` and ``w_k = sum_ij alpha_kij ReLU(g_kij)``.

What this module returns per explained target and layer (the manifest's contract):

* ``map_layer``: ``L`` exactly as above: unnormalised, at the layer's resolution, after the ReLU.
* ``map``: ``L`` upsampled bilinearly (``align_corners=False``) to the model input size, then min-max normalised
  to [0, 1] per map. With several layers the fused ``map`` is the mean of the layers' normalised maps.

Deviations and conventions (all deliberate, all tested):

* Explanations run in eval mode (BatchNorm uses running statistics, dropout is off), as in both papers; the
  model's own ``training`` flags are restored afterwards.
* Grad-CAM++ uses ``g = dY/dA`` of the pre-softmax score, not of ``exp(Y)``: ``d exp(Y)/dA = exp(Y) g``, so the
  paper's weights are ours times the positive constant ``exp(Y)``, which the normalisation of ``map`` removes; we
  leave it out of ``map_layer`` too, because ``exp(Y)`` overflows float32 for scores above ~88.
* Where the Grad-CAM++ denominator is exactly zero we define ``alpha = 0``. Where ``g = 0`` the numerator is 0
  anyway; the denominator can also vanish with ``g != 0`` when ``sum_ab A_kab = -2 / g``, a point where the
  closed form has a pole and no meaningful value.
* The formula assumes non-negative activations (the paper explains post-ReLU layers); on a layer with negative
  activations ``sum_ab A_kab`` can be negative and alphas can change sign. We apply it as written.
* A map with no variation (in particular all zeros, e.g. when no channel has a positive weighted sum) cannot be
  min-max normalised; its ``map`` is all zeros.
* Scores of several images are summed before the backward pass, which assumes images do not interact inside
  the model (true in eval mode for ordinary CNNs: BatchNorm uses running statistics).
* An explained layer must run exactly once per forward pass: a module that is called several times (e.g. the one
  ``relu`` that torchvision's ResNet blocks reuse) has no single output and is rejected with its parent suggested.

A property of Grad-CAM++ worth knowing (tests/test_cam.py shows it): with a linear head after the layer,
``g = W_ck / (h w)`` is small, so ``alpha ~ 1/2`` and ``w_k ~ ReLU(W_ck) / 2``: only positive weights survive, and on
a network with random weights the map is close to the layer's overall activation energy, which barely changes when
the head is randomised (Adebayo et al., https://arxiv.org/abs/1810.03292). Grad-CAM's signed weights do not have
this problem; the channel weights of both methods do change completely.

Speed: the forward pass runs under ``torch.no_grad()`` up to the first explained layer, whose hook starts the
autograd graph there (:class:`explain.hooks.LayerTap`), so the cost over plain inference is the (small) head of
the network after that layer, one backward pass through that head per target rank, and some elementwise work.
Gradients are taken with ``torch.autograd.grad`` with respect to the recorded activations only, so parameter
``.grad`` fields are never touched and frozen parameters do not matter.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from explain.device import model_device
from explain.errors import LayerError, UsageError, suggest
from explain.hooks import LayerTap, eval_mode
from explain.modules import resolve_layer
from explain.scores import Target, check_targets, expand_targets, first_per_target, rank_scores
from explain.targets import ClassTarget, NeuronTarget

__all__ = [
    "CAM_METHODS",
    "BaseCAM",
    "CamMap",
    "CamResult",
    "GradCAM",
    "GradCAMPlusPlus",
    "compute_cams",
    "get_method",
    "normalize_maps",
]



@dataclass
class CamMap:
    """The explanation of one target for one image.

    Attributes:
        image_index: position of the image in the batch.
        target: what is explained: a class (``TopK`` requests are expanded to their classes) or a neuron.
        rank: for a class that came from ``TopK``, its rank among that image's scores (0 = most likely);
            ``None`` otherwise.
        score: the explained scalar ``Y``: the pre-softmax class score, or the neuron's value (channel mean or unit).
        maps_layer: layer name -> ``map_layer``, float32 ``(h, w)``: ``ReLU(sum_k w_k A_k)``, unnormalised.
        maps: layer name -> that layer's map upsampled to the input size and min-max normalised, float32 ``(H, W)``.
        map: float32 ``(H, W)`` in [0, 1]: the mean of ``maps`` over the layers (with one layer, the very array
            ``maps[layer]``, not a copy).
        weights: layer name -> the channel weights ``w_k``, float32 ``(K,)``.
    """

    image_index: int
    target: ClassTarget | NeuronTarget
    rank: int | None
    score: float
    maps_layer: dict[str, np.ndarray]
    maps: dict[str, np.ndarray]
    map: np.ndarray
    weights: dict[str, np.ndarray] = field(repr=False)


@dataclass
class CamResult:
    """Everything one call produced: the model's outputs and the maps.

    Attributes:
        method: the method's name (``"gradcam"`` or ``"gradcam++"``).
        layers: the explained layers, in the order given.
        input_size: ``(H, W)`` of the model input, the size of every ``map``.
        logits: ``(N, num_classes)`` float32 CPU tensor of pre-softmax scores from the same forward pass, or
            ``None`` when the model's output is not a 2-D tensor (possible with neuron targets only).
        maps: one :class:`CamMap` per image and target, image-major, targets in the order requested
            (a ``TopK(k)`` contributes its k classes, best first).
    """

    method: str
    layers: tuple[str, ...]
    input_size: tuple[int, int]
    logits: torch.Tensor | None
    maps: list[CamMap]

    @property
    def probabilities(self) -> torch.Tensor | None:
        """Softmax of :attr:`logits` over classes, or ``None``."""
        return None if self.logits is None else torch.softmax(self.logits, dim=1)

    def for_image(self, index: int) -> list[CamMap]:
        """The maps of one image, in target order; a target that several requests resolve to (class 282 and
        ``top1`` when 282 is the top class) is listed once, where it was first requested."""
        return first_per_target(self.maps, index)


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of a ``(..., H, W)`` tensor to [0, 1], in place (and return it).

    A map whose range is zero, or within float32 rounding of its magnitude (which is what bilinear upsampling
    leaves of a constant map), has nothing to show and becomes all zeros.
    """
    low, high = torch.aminmax(maps.flatten(-2), dim=-1)
    low, high = low[..., None, None], high[..., None, None]
    span = high - low
    constant = span <= 16 * torch.finfo(maps.dtype).eps * torch.maximum(high.abs(), low.abs())
    # Dividing (not multiplying by 1/span) maps the maximum to exactly 1; an infinite span maps everything to 0.
    return maps.sub_(low).div_(torch.where(constant, torch.full_like(span, float("inf")), span))


class BaseCAM(abc.ABC):
    """A gradient-weighted class activation map method.

    The base class does everything except the channel weights: hooks, the forward pass, target scores, the
    backward passes, the weighted combination, upsampling and normalisation. Subclasses implement
    :meth:`channel_weights` only.

    Args:
        model: the network; left exactly as found (training flags, hooks, parameters, ``.grad``, ``requires_grad``).
        layers: dotted names of the layers to explain at (each must give an ``(N, C, H, W)`` output and run once
            per forward pass). Several layers give one map each and a fused mean map.

    Raises:
        LayerError: an unknown layer name (with suggestions).
        UsageError: no layers.
    """

    #: The name used on the command line and in the manifest.
    name: str = ""

    def __init__(self, model: nn.Module, layers: str | Sequence[str]) -> None:
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names:
            raise UsageError("no layer given: name at least one layer to explain at")
        self.model = model
        self.layers: tuple[str, ...] = tuple(dict.fromkeys(names))
        for layer in self.layers:
            resolve_layer(model, layer)  # raises LayerError with suggestions

    @abc.abstractmethod
    def channel_weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """The channel weights ``w`` ``(N, K)`` from activations ``A`` and gradients ``g = dY/dA`` ``(N, K, h, w)``.

        Implementations must not modify either tensor in place (gradients can be expanded views).
        """

    def __call__(self, inputs: torch.Tensor, targets: Sequence[Target]) -> CamResult:
        """Explain ``targets`` for every image of ``inputs``.

        Args:
            inputs: ``(N, C, H, W)`` model inputs (already preprocessed); moved to the model's device.
            targets: what to explain, applied to every image: ``ClassTarget(i)``, ``TopK(k)`` (each image's k
                most likely classes) and ``NeuronTarget`` (a channel mean or one unit of a layer that runs after
                every explained layer). All targets share one forward pass.

        Returns:
            The maps, plus the logits of the forward pass.

        Raises:
            UsageError: ``inputs`` is not a 4-D tensor, or no targets.
            LayerError: an explained layer does not give an ``(N, C, H, W)`` output, runs more than once or not at
                all; a neuron target that does not depend on an explained layer (its layer runs before it or on
                another branch); an output that does not depend on an explained layer.
            TargetError: a class index out of range, ``k`` larger than the number of classes, a neuron channel or
                position out of range, class targets for a model whose output is not ``(N, num_classes)``.
        """
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
            shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise UsageError(f"inputs must be a (N, C, H, W) tensor, got {shape}")
        targets = check_targets(targets)
        neuron_layers = [t.layer for t in targets if isinstance(t, NeuronTarget)]
        device = model_device(self.model)

        with torch.inference_mode(False), eval_mode(self.model):
            # A copy, never the caller's storage: a model may modify its input in place (x.sub_(mean)), and an
            # inference tensor could not be used for autograd.
            x = inputs.detach().to(device if device is not None else inputs.device, copy=True)
            tap = LayerTap(
                self.model,
                [*self.layers, *neuron_layers],
                gradient_sources=self.layers,
                spatial=self.layers,
            )
            with tap, torch.no_grad():
                output = self.model(x)
            tap.require_all()
            logits = output.detach() if isinstance(output, torch.Tensor) and output.dim() == 2 else None
            ranks = expand_targets(targets, output, tap.outputs, x.shape[0], unit="mean")
            rows = range(x.shape[0])
            scores_of = [rank_scores(rank, output, tap.outputs, rows) for rank in ranks]
            acts = [tap.outputs[layer] for layer in self.layers]
            cams: dict[str, list[torch.Tensor]] = {layer: [] for layer in self.layers}
            weights: dict[str, list[torch.Tensor]] = {layer: [] for layer in self.layers}
            for r, rank in enumerate(ranks):
                neuron = rank.targets[0] if isinstance(rank.targets[0], NeuronTarget) else None
                if not scores_of[r].requires_grad:
                    raise self._not_upstream(neuron, self.layers[0])
                grads = torch.autograd.grad(
                    scores_of[r].sum(), acts, retain_graph=r < len(ranks) - 1, allow_unused=True
                )
                for layer, a, g in zip(self.layers, acts, grads, strict=True):
                    if g is None:
                        raise self._not_upstream(neuron, layer)
                    a = a.detach()
                    w = self.channel_weights(a, g)
                    weights[layer].append(w)
                    cams[layer].append(torch.relu(torch.einsum("nk,nkhw->nhw", w, a)))
            del tap, acts, output

            size = tuple(x.shape[-2:])
            n, n_ranks = x.shape[0], len(ranks)
            layer_maps = {layer: torch.stack(cams[layer], 1) for layer in self.layers}  # (N, R, h, w)
            up = {
                layer: normalize_maps(
                    F.interpolate(m.flatten(0, 1).unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False)
                    .squeeze(1)
                    .reshape(n, n_ranks, *size)
                )
                for layer, m in layer_maps.items()
            }
            # One layer: the fused map is that layer's map (the same array, no copy).
            fused = next(iter(up.values())) if len(up) == 1 else torch.stack(list(up.values()), 0).mean(0)
            scores = torch.stack([sc.detach() for sc in scores_of], 1)  # (N, R)

        # To NumPy once, at the end.
        np_layer = {k: v.detach().float().cpu().numpy() for k, v in layer_maps.items()}
        np_up = {k: v.cpu().numpy() for k, v in up.items()}
        np_w = {k: torch.stack(v, 1).detach().float().cpu().numpy() for k, v in weights.items()}
        np_fused = fused.cpu().numpy()
        score_list = scores.float().cpu().tolist()
        maps = [
            CamMap(
                image_index=i,
                target=rank.targets[i],
                rank=rank.rank,
                score=score_list[i][r],
                maps_layer={k: v[i, r] for k, v in np_layer.items()},
                maps={k: v[i, r] for k, v in np_up.items()},
                map=np_fused[i, r],
                weights={k: v[i, r] for k, v in np_w.items()},
            )
            for i in range(n)
            for r, rank in enumerate(ranks)
        ]
        return CamResult(
            method=self.name,
            layers=self.layers,
            input_size=(int(size[0]), int(size[1])),
            logits=None if logits is None else logits.float().cpu(),
            maps=maps,
        )

    @staticmethod
    def _not_upstream(neuron: NeuronTarget | None, layer: str) -> LayerError:
        if neuron is not None:
            return LayerError(
                f"neuron {neuron} does not depend on layer {layer!r} (its layer runs before {layer!r} or on another "
                f"branch); pass --layer with a layer that runs before {neuron.layer!r} ('cnn-explain layers' lists "
                "them in order)"
            )
        return LayerError(f"the model's output does not depend on layer {layer!r}; choose a layer on the path to it")


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391).

    ``w_k = 1/(h w) sum_ij dY/dA_kij`` (Eq. 1), map ``ReLU(sum_k w_k A_k)`` (Eq. 2). See the module docstring for
    the conventions shared by both methods.
    """

    name = "gradcam"

    def channel_weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled gradients: ``(N, K, h, w) -> (N, K)``."""
        return grads.mean(dim=(2, 3))


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhyay et al., WACV 2018, https://arxiv.org/abs/1710.11063).

    With ``g = dY/dA`` for the pre-softmax score ``Y`` (Eq. 19, the closed form obtained for ``exp(Y)``)::

        alpha_kij = g_kij^2 / (2 g_kij^2 + sum_ab A_kab g_kij^3)
        w_k       = sum_ij alpha_kij ReLU(g_kij)

    ``alpha = 0`` where the denominator is exactly zero. The factor ``exp(Y)`` of the paper's weights is left out
    (it is one positive constant per map). See the module docstring for these deviations.
    """

    name = "gradcam++"

    def channel_weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Gradient-weighted positive gradients: ``(N, K, h, w) -> (N, K)``.

        Computed in the algebraically equal form ``alpha_kij ReLU(g_kij) = ReLU(g_kij) / (2 + S_k ReLU(g_kij))``
        with ``S_k = sum_ab A_kab``: where ``g > 0`` the factor ``g^2`` cancels, and where ``g <= 0`` both sides are
        0. This takes four passes over the gradients instead of about ten and cannot underflow (``g^3`` of a small
        gradient is 0 in float32). Terms whose denominator is exactly zero are 0, as in :class:`GradCAMPlusPlus`.
        """
        sums = activations.sum(dim=(2, 3), keepdim=True)  # S_k, (N, K, 1, 1)
        positive = grads.clamp(min=0)  # ReLU(g); not in place: autograd may hand out expanded (stride-0) gradients
        denom = torch.addcmul(torch.full((), 2.0, dtype=grads.dtype, device=grads.device), sums, positive)
        weights = positive.div_(denom).sum(dim=(2, 3))
        if not bool(torch.isfinite(weights).all()):
            # Rare: 2 + S_k g_kij == 0 exactly for some g > 0 (only possible when S_k < 0). Redo with alpha = 0 there.
            zero = torch.zeros((), dtype=grads.dtype, device=grads.device)
            weights = torch.where(denom != 0, positive, zero).sum(dim=(2, 3))
        return weights


#: Method name (as on the command line) -> class.
CAM_METHODS: dict[str, type[BaseCAM]] = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}


def get_method(name: str) -> type[BaseCAM]:
    """The CAM class called ``name`` (case-insensitive).

    Raises:
        UsageError: unknown method, with the valid names.
    """
    key = name.strip().lower()
    if key in CAM_METHODS:
        return CAM_METHODS[key]
    raise UsageError(f"unknown CAM method {name!r}{suggest(key, CAM_METHODS)}; choose one of: {', '.join(CAM_METHODS)}")


def compute_cams(
    model: nn.Module,
    inputs: torch.Tensor,
    layers: str | Sequence[str],
    targets: Sequence[Target],
    method: str | type[BaseCAM] = "gradcam++",
) -> CamResult:
    """Explain ``targets`` for a batch of images with Grad-CAM or Grad-CAM++ in one forward pass.

    Args:
        model: the network (left exactly as found; it runs in eval mode for the pass).
        inputs: ``(N, C, H, W)`` preprocessed images.
        layers: one dotted layer name or several (one map each, plus their fused mean ``map``).
        targets: applied to every image: ``ClassTarget``, ``TopK`` or ``NeuronTarget``.
        method: ``"gradcam"``, ``"gradcam++"`` (default) or a :class:`BaseCAM` subclass.

    Returns:
        A :class:`CamResult` with the logits and one :class:`CamMap` per image and target.

    Raises:
        UsageError, LayerError, TargetError: see :meth:`BaseCAM.__call__`.
    """
    cls = get_method(method) if isinstance(method, str) else method
    return cls(model, layers)(inputs, targets)
