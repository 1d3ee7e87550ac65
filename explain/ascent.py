"""Activation maximisation: images that drive a class score, a channel or a single neuron as high as possible.

Start from a nearly grey image ``x`` and climb the gradient of an objective ``S(x)`` (a class score, the mean of a
channel, one unit), with regularisers that keep the picture readable. The three ingredients:

**Objectives** (:class:`Objective`), composable with ``+``, ``-``, unary ``-`` and multiplication by a number:

* :class:`ClassLogit` ``S_c(x)``, the pre-softmax score (Simonyan, Vedaldi & Zisserman 2014,
  https://arxiv.org/abs/1312.6034, Sec. 2: "the score ... rather than the class posterior", because the posterior
  can also be raised by pushing the *other* scores down); :class:`ClassLogProb` ``log softmax(x)_c`` when that is
  exactly what is wanted.
* :class:`ChannelMean` ``mean_{y,x} A_c(x)`` of any layer (Olah et al. 2017, "Feature Visualization", Distill,
  https://distill.pub/2017/feature-visualization/, the "channel" objective); :class:`Neuron` ``A_c(x)[y, x]``, one
  unit (Yosinski et al. 2015, https://arxiv.org/abs/1506.06579), by default at the centre of the layer's map.
* :class:`WeightedSum` ``sum_k w_k S_k``, which the operators build (``2 * a - b``).

Several objectives are optimised together as one batch, image ``i`` for objective ``i``; images never interact
(eval mode), so a batch gives what the objectives give one by one (up to floating-point rounding: convolutions of
different batch sizes may sum in a different order, and Adam turns a gradient component that is zero up to rounding
into a full step of either sign, so a few pixels can differ by a few thousandths).

**Parameterisations** (:class:`ImageParam`): what the optimiser actually changes.

* :class:`PixelParam`: the pixels themselves, ``x = 0.5 + p``, projected back into ``[0, 1]`` after every step
  (Simonyan et al.'s plain ascent, Yosinski et al.'s regularised ascent).
* :class:`FourierParam` (the default; Olah et al. 2017, "Preconditioning and Parameterization"; Mordvintsev et al.
  2018, "Differentiable Image Parameterizations", https://distill.pub/2018/differentiable-parameterizations/):
  ``x = sigmoid(M z)``, ``z = g * irfft2(s * X)``, where ``X`` is the optimised complex spectrum (per colour
  channel), ``s(f) = 1 / max(f, 1)`` scales each frequency ``f`` (in cycles per image side) so that all frequencies
  start with a 1/f spectrum like natural images and move at comparable speeds, ``g`` makes the pixel standard deviation
  equal to the spectrum's, and ``M`` mixes decorrelated colour components (the principal axes of the colour
  covariance of photos) into RGB (:data:`COLOUR_MATRIX`).

**Regularisers and transformation robustness** (:class:`AscentConfig`):

* L2 penalty ``- l2 * mean((x - 0.5)^2)`` in the objective (Simonyan et al. Eq. 1) and L2 decay
  ``z <- (1 - decay) z`` after every step (Yosinski et al. Sec. 3, ``r_theta(x) = (1 - theta) x``; 0.002 by default
  with the Fourier parameterisation, where it keeps colours from saturating);
* Gaussian blur of ``z`` every ``blur_every`` steps (Yosinski et al.);
* clipping of pixels with a small norm ``||z_ij||`` or a small contribution ``|sum_c z_cij dS/dz_cij|`` (the
  first-order change of ``S`` if the pixel were grey) below a percentile (Yosinski et al.);
* total variation ``- tv * mean_ij sqrt(dx^2 + dy^2)`` (Mahendran & Vedaldi 2015, https://arxiv.org/abs/1412.0035);
* transformation robustness: every step each image is seen through a fresh random jitter, zoom and rotation
  (one bilinear affine resampling, reflecting at the borders), so the optimum must survive small shifts instead of
  being a pixel-exact adversarial pattern (Olah et al. 2017, "Transformation robustness"). On by default with the
  Fourier parameterisation: shifts up to 6% of the size, zoom within +-30%, rotation within +-20 degrees (chosen by
  looking at the pictures: weaker transformations give textures rather than objects).

Here ``z`` is the parameterisation's *linear image*: ``p`` for pixels, ``M z`` (the value before the sigmoid) for
the Fourier parameterisation; zero means grey in both. Decay, blur and clipping act on it; with the Fourier
parameterisation the result is written back exactly through the inverse transforms.

Conventions and deviations (deliberate, tested):

* The image is optimised in [0, 1] pixel space and passed through ``normalize`` (the backbone's
  ``preprocess.normalize``) before the model, so the model sees inputs exactly as it was trained on.
* Colour: Olah et al. map decorrelated components to RGB with the square root of the colour covariance, so
  independent unit-variance components have exactly the colour statistics of photos. With Adam, which moves every
  coordinate at about the same speed, that makes the weakest colour axis (green-magenta) 11x slower than
  brightness, and saturated colours such as a flamingo's pink barely appear within a few hundred steps. We use the
  fourth root instead (the same axes, gains 1 : 0.51 : 0.30 instead of 1 : 0.26 : 0.09): still a prior towards
  photo-like colour, and pictures whose colours a person recognises. ``colour_matrix(pixels, 0.5)`` gives the paper's.
* The optimiser is Adam (maximising), written here so that it can update only the images that are still running:
  with early stopping an image whose objective has plateaued keeps its result and leaves the batch.
* Randomness is per objective: objective ``i`` has its own CPU generator seeded from ``(seed, i)``
  (:func:`objective_seed`), which draws its initial image and every transformation, so the random numbers do not
  depend on which other objectives share the batch, nor on the device. The same seed gives identical images on the
  same machine with the same number of threads (other hardware rounds differently, and rounding differences grow
  over hundreds of steps).
* Early stop (per image): once the least-squares trend of the objective over the last ``2 * patience`` steps
  rises by at most ``plateau_tol`` times its magnitude per ``patience`` steps, on ``patience // 4`` consecutive
  steps (the objective is noisy under random transformations, so one flat-looking window is not enough).
* Reported values (:attr:`AscentResult.values`) are the objectives of the final images seen *without*
  transformations; the history holds the values seen during optimisation (with them).
* The model is left as found: it runs in eval mode (flags restored one by one), hooks are removed, and gradients are
  taken with :func:`torch.autograd.grad` with respect to the image parameters only, so parameter ``.grad`` fields
  stay untouched and the autograd engine skips weight gradients.
* Speed: layers are read with forward hooks; when every objective lives at intermediate layers, the forward pass
  is cut short by an exception raised from the hook of the last layer needed, so the head never runs. Rendering,
  transformations and Adam add about 10% to the network's forward + input-only backward pass (8 images at 224 px on
  EfficientNet-Lite0, ``bench/ascent_speed.py``).
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from explain.errors import LayerError, TargetError, UsageError
from explain.hooks import LayerTap, eval_mode
from explain.modules import resolve_layer

__all__ = [
    "COLOUR_MATRIX",
    "OUTPUT",
    "AscentConfig",
    "AscentResult",
    "ChannelMean",
    "ClassLogProb",
    "ClassLogit",
    "FourierParam",
    "ImageParam",
    "Neuron",
    "Objective",
    "PixelParam",
    "StepInfo",
    "WeightedSum",
    "ascend",
    "colour_matrix",
    "objective_seed",
    "parse_channels",
    "parse_neuron_spec",
    "parse_objective",
]

#: Key under which the model's output appears in the activations handed to objectives.
OUTPUT = "<output>"
MAX_SNAPSHOTS = 32
MAX_SIZE = 1024  # --size limit: memory grows with its square (Lite0 at 1024 px: ~2 GB for the gradient pass)

#: The colour mixing matrix ``M`` of the Fourier parameterisation: ``C^(1/4)`` for the RGB covariance ``C`` of photos
#: (symmetric, ``U L^(1/4) U^T``), scaled to spectral norm 1. Derived with ``colour_matrix(pixels, power=0.25)`` from
#: the 44 photos in ``sample_images/`` (top level and gallery, each resized to 128 x 128). Its eigenvectors are the
#: decorrelated colour axes of photos (brightness, blue-orange, green-magenta), with gains 1, 0.51 and 0.30.
COLOUR_MATRIX = (
    (0.65562669, 0.20971692, 0.12801802),
    (0.20971692, 0.54457075, 0.25626529),
    (0.12801802, 0.25626529, 0.61154480),
)


def colour_matrix(pixels: np.ndarray, power: float = 0.25) -> np.ndarray:
    """``C^power`` (symmetric) for the colour covariance ``C`` of ``pixels`` (``(n, 3)``), scaled to spectral norm 1.

    ``power=0.5`` is the square root of the covariance: unit-variance decorrelated components then get exactly the
    colour statistics of photos.
    """
    cov = np.cov(np.asarray(pixels, dtype=np.float64).reshape(-1, 3).T)
    values, vectors = np.linalg.eigh(cov)
    root = vectors @ np.diag(np.clip(values, 0.0, None) ** power) @ vectors.T
    return root / np.linalg.norm(root, 2)


def objective_seed(seed: int, index: int) -> int:
    """The seed of objective ``index``'s own generator in a run with ``seed`` (a 63-bit integer)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, index]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


# --- objectives -------------------------------------------------------------------------------------------
class Objective(abc.ABC):
    """A scalar to maximise per image, computed from the activations of some layers (and/or the model output).

    Subclasses implement :attr:`layers`, :meth:`evaluate` and :meth:`describe`; :meth:`check` validates against
    the shapes a probe forward pass found. ``a + b``, ``a - b``, ``-a``, ``2 * a`` build a :class:`WeightedSum`.
    """

    @property
    @abc.abstractmethod
    def layers(self) -> frozenset[str]:
        """Dotted layer names read by the objective; :data:`OUTPUT` stands for the model's output."""

    @abc.abstractmethod
    def evaluate(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The objective of every image: ``(B,)`` from activations ``acts[layer]`` of shape ``(B, ...)``."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short human-readable label (used in figures)."""

    def check(self, shapes: Mapping[str, tuple[int, ...]]) -> Objective:
        """Validate against per-image output shapes (``(C, H, W)`` or ``(C,)``); return a resolved objective.

        Raises:
            TargetError, LayerError: a channel, position or class out of range, or a layer of the wrong kind.
        """
        return self

    def terms(self) -> list[tuple[float, Objective]]:
        """``(weight, objective)`` pairs of a flat weighted sum."""
        return [(1.0, self)]

    def __add__(self, other: Objective) -> WeightedSum:
        if not isinstance(other, Objective):
            return NotImplemented
        return WeightedSum(tuple(self.terms() + other.terms()))

    def __sub__(self, other: Objective) -> WeightedSum:
        if not isinstance(other, Objective):
            return NotImplemented
        return self + (-1.0) * other

    def __neg__(self) -> WeightedSum:
        return (-1.0) * self

    def __mul__(self, weight: float) -> WeightedSum:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            return NotImplemented
        return WeightedSum(tuple((float(weight) * w, o) for w, o in self.terms()))

    __rmul__ = __mul__

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready description (the manifest's ``objective``)."""
        return {"kind": type(self).__name__, "label": self.describe()}


def _output_shape(shapes: Mapping[str, tuple[int, ...]], what: str) -> tuple[int, ...]:
    shape = shapes.get(OUTPUT)
    if shape is None or len(shape) != 1:
        got = "no tensor" if shape is None else f"shape {shape} per image"
        raise TargetError(f"{what} needs a model whose output is a vector of class scores per image (got {got})")
    return shape


@dataclass(frozen=True)
class ClassLogit(Objective):
    """The pre-softmax score of class ``index`` (``name`` is only for labels)."""

    index: int
    name: str | None = None

    @property
    def layers(self) -> frozenset[str]:
        return frozenset({OUTPUT})

    def evaluate(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return acts[OUTPUT][:, self.index]

    def check(self, shapes: Mapping[str, tuple[int, ...]]) -> Objective:
        (n,) = _output_shape(shapes, "a class objective")
        if not 0 <= self.index < n:
            raise TargetError(f"class index {self.index} is out of range: the model has {n} classes (0..{n - 1})")
        return self

    def describe(self) -> str:
        return f"{self.name} ({self.index})" if self.name else f"class {self.index}"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "class_logit", "label": self.describe(), "index": self.index, "name": self.name}


@dataclass(frozen=True)
class ClassLogProb(ClassLogit):
    """The log-probability ``log softmax(logits)_index`` of class ``index``."""

    def evaluate(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.log_softmax(acts[OUTPUT], dim=1)[:, self.index]

    def describe(self) -> str:
        return f"log p {super().describe()}"

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "kind": "class_logprob"}


def _check_channel(layer: str, channel: int, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    shape = shapes[layer]
    if not shape:
        raise LayerError(f"layer {layer!r} gives a scalar per image; choose a layer with channels")
    if not 0 <= channel < shape[0]:
        raise TargetError(f"channel {channel} is out of range for layer {layer!r}: it has {shape[0]} channels "
                          f"(0..{shape[0] - 1})")
    return shape


@dataclass(frozen=True)
class ChannelMean(Objective):
    """The spatial mean of channel ``channel`` of ``layer`` (for a ``(B, C)`` output, the value itself)."""

    layer: str
    channel: int

    @property
    def layers(self) -> frozenset[str]:
        return frozenset({self.layer})

    def evaluate(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        a = acts[self.layer][:, self.channel]
        return a.flatten(1).mean(1) if a.dim() > 1 else a

    def check(self, shapes: Mapping[str, tuple[int, ...]]) -> Objective:
        _check_channel(self.layer, self.channel, shapes)
        return self

    def describe(self) -> str:
        return f"{self.layer} ch {self.channel}"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "channel", "label": self.describe(), "layer": self.layer, "channel": self.channel}


@dataclass(frozen=True)
class Neuron(Objective):
    """One unit ``A_channel[y, x]`` of ``layer``; ``y``/``x`` of ``None`` mean the centre (``H // 2``, ``W // 2``)."""

    layer: str
    channel: int
    y: int | None = None
    x: int | None = None

    @property
    def layers(self) -> frozenset[str]:
        return frozenset({self.layer})

    def evaluate(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.y is None or self.x is None:
            raise UsageError("a Neuron objective must be checked (which fills in the centre) before evaluation")
        return acts[self.layer][:, self.channel, self.y, self.x]

    def check(self, shapes: Mapping[str, tuple[int, ...]]) -> Objective:
        shape = _check_channel(self.layer, self.channel, shapes)
        if len(shape) != 3:
            raise LayerError(f"layer {self.layer!r} gives shape {shape} per image; a neuron LAYER:C:Y:X needs a "
                             "spatial (C, H, W) layer (use a channel objective instead)")
        _, h, w = shape
        y = h // 2 if self.y is None else self.y
        x = w // 2 if self.x is None else self.x
        if not (0 <= y < h and 0 <= x < w):
            raise TargetError(f"position ({y}, {x}) is outside layer {self.layer!r}, whose map is {h} x {w} "
                              f"at this image size (y in 0..{h - 1}, x in 0..{w - 1})")
        return replace(self, y=y, x=x)

    def describe(self) -> str:
        where = "centre" if self.y is None else f"({self.y},{self.x})"
        return f"{self.layer} ch {self.channel} @ {where}"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "neuron", "label": self.describe(), "layer": self.layer, "channel": self.channel,
                "y": self.y, "x": self.x}


@dataclass(frozen=True)
class WeightedSum(Objective):
    """``sum_k weight_k * objective_k``."""

    parts: tuple[tuple[float, Objective], ...]

    def __post_init__(self) -> None:
        if not self.parts:
            raise UsageError("an empty sum of objectives")

    @property
    def layers(self) -> frozenset[str]:
        return frozenset().union(*(o.layers for _, o in self.parts))

    def evaluate(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for weight, objective in self.parts:
            value = objective.evaluate(acts) * weight
            total = value if total is None else total + value
        return total

    def check(self, shapes: Mapping[str, tuple[int, ...]]) -> Objective:
        return WeightedSum(tuple((w, o.check(shapes)) for w, o in self.parts))

    def terms(self) -> list[tuple[float, Objective]]:
        return list(self.parts)

    def describe(self) -> str:
        text = ""
        for weight, objective in self.parts:
            sign = "-" if weight < 0 else "+"
            magnitude = abs(weight)
            term = objective.describe() if magnitude == 1 else f"{magnitude:g}*{objective.describe()}"
            text = (f"-{term}" if sign == "-" else term) if not text else f"{text} {sign} {term}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "sum", "label": self.describe(),
                "terms": [{"weight": w, **o.as_dict()} for w, o in self.parts]}


# --- parsing objectives -------------------------------------------------------------------------------------
_CHANNELS = re.compile(r"^(?P<layer>[^:]+):(?P<a>\d+)(?:-(?P<b>\d+))?$")


def parse_channels(spec: str) -> list[ChannelMean]:
    """``LAYER:C`` or ``LAYER:A-B`` (inclusive range) -> one :class:`ChannelMean` per channel."""
    match = _CHANNELS.match(spec.strip())
    if not match:
        raise TargetError(f"bad channel {spec!r}: expected LAYER:C or LAYER:A-B, e.g. _blocks.4:0-15")
    a = int(match["a"])
    b = int(match["b"]) if match["b"] is not None else a
    if b < a:
        raise TargetError(f"bad channel range {spec!r}: the end {b} is before the start {a}")
    if b - a >= 1024:
        raise TargetError(f"channel range {spec!r} asks for {b - a + 1} images; at most 1024 per run")
    return [ChannelMean(match["layer"], c) for c in range(a, b + 1)]


def parse_neuron_spec(spec: str) -> Neuron:
    """``LAYER:C`` (centre unit) or ``LAYER:C:Y:X``."""
    from explain.targets import parse_neuron

    target = parse_neuron(spec)
    return Neuron(target.layer, target.channel, target.y, target.x)


_TERM_SPLIT = re.compile(r"\s+([+-])\s+")
_TERM = re.compile(r"^(?:(?P<w>\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?(?P<kind>[a-z]+):(?P<spec>.+)$", re.IGNORECASE)


def parse_objective(spec: str, class_names: Sequence[str]) -> Objective:
    """Parse a composed objective: ``[-][W*]KIND:SPEC`` terms joined by `` + `` or `` - `` (spaces around the sign).

    KIND is ``class`` (logit), ``logprob``, ``channel`` (``LAYER:C``) or ``neuron`` (``LAYER:C`` or ``LAYER:C:Y:X``).
    Example: ``"class:flamingo - 0.5*class:goose + channel:_blocks.10:7"``.
    """
    from explain.targets import resolve_class

    text = spec.strip()
    negate_first = text.startswith("-")
    if negate_first:
        text = text[1:].lstrip()
    pieces = _TERM_SPLIT.split(text)
    terms: list[tuple[float, str]] = [(-1.0 if negate_first else 1.0, pieces[0])]
    for sign, term in zip(pieces[1::2], pieces[2::2]):
        terms.append((-1.0 if sign == "-" else 1.0, term))
    total: Objective | None = None
    for sign, term in terms:
        match = _TERM.match(term.strip())
        if not match:
            raise TargetError(f"bad objective term {term!r} in {spec!r}: expected [W*]KIND:SPEC with KIND one of "
                              "class, logprob, channel, neuron (e.g. 'class:flamingo - 0.5*channel:_blocks.8:3')")
        weight = sign * float(match["w"] or 1.0)
        kind, body = match["kind"].lower(), match["spec"].strip()
        part: Objective
        if kind in ("class", "logit", "logprob"):
            index = resolve_class(body, class_names)
            cls = ClassLogProb if kind == "logprob" else ClassLogit
            part = cls(index, class_names[index])
        elif kind == "channel":
            channels = parse_channels(body)
            if len(channels) != 1:
                raise TargetError(f"a channel range ({body!r}) gives several images; inside --objective name one "
                                  "channel (use --channel LAYER:A-B for a grid)")
            part = channels[0]
        elif kind == "neuron":
            part = parse_neuron_spec(body)
        else:
            raise TargetError(f"unknown objective kind {kind!r} in {spec!r}: use class, logprob, channel or neuron")
        scaled = weight * part
        total = scaled if total is None else total + scaled
    assert total is not None
    if len(total.terms()) == 1 and total.terms()[0][0] == 1.0:
        return total.terms()[0][1]
    return total


# --- image parameterisations --------------------------------------------------------------------------------
class ImageParam(abc.ABC):
    """A batch of ``n`` images of ``size`` pixels as a function of optimised tensors.

    Attributes:
        tensor: the optimised leaf tensor (one row per image), requiring grad.
    """

    tensor: torch.Tensor

    @abc.abstractmethod
    def render(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, linear)`` of the given rows (all when ``None``), differentiable w.r.t. :attr:`tensor`.

        ``images`` are ``(b, 3, H, W)`` in [0, 1]; ``linear`` is the linear image ``z`` (zero = grey) they are a
        pixel-wise function of.
        """

    @abc.abstractmethod
    def set_linear(self, rows: torch.Tensor, linear: torch.Tensor) -> None:
        """Replace the linear image of ``rows`` by ``linear`` (no gradient)."""

    def project(self) -> None:
        """Called after every optimiser step (e.g. to keep pixels in range)."""


class PixelParam(ImageParam):
    """Plain pixels: ``x = 0.5 + p``, with ``p`` projected into ``[-0.5, 0.5]`` after every step.

    Args:
        generators: one generator per image (the initial noise).
        size: ``(H, W)``.
        init_std: standard deviation of the initial Gaussian noise around grey.
        device: where the tensor lives.
    """

    def __init__(self, generators: Sequence[torch.Generator], size: tuple[int, int], init_std: float = 0.01,
                 device: Any = "cpu") -> None:
        rows = [torch.randn((3, *size), generator=g) * init_std for g in generators]
        self.tensor = torch.stack(rows).clamp_(-0.5, 0.5).to(device).requires_grad_(True)

    def render(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        linear = self.tensor if rows is None else self.tensor[rows]
        return linear + 0.5, linear

    def set_linear(self, rows: torch.Tensor, linear: torch.Tensor) -> None:
        with torch.no_grad():
            self.tensor[rows] = linear.clamp(-0.5, 0.5)

    def project(self) -> None:
        with torch.no_grad():
            self.tensor.clamp_(-0.5, 0.5)


class FourierParam(ImageParam):
    """``x = sigmoid(M z)``, ``z = gain * irfft2(scale * X)``: a 1/f-scaled spectrum ``X`` with decorrelated colour.

    Args:
        generators: one generator per image (the initial spectrum).
        size: ``(H, W)``.
        init_std: standard deviation of the initial spectrum (and so of ``z``'s pixels).
        decay_power: exponent of the spectrum scaling ``1 / max(f, 1) ** decay_power``.
        decorrelate: use :data:`COLOUR_MATRIX` as ``M`` (otherwise the identity).
        device: where the tensor lives.
    """

    def __init__(self, generators: Sequence[torch.Generator], size: tuple[int, int], init_std: float = 0.01,
                 decay_power: float = 1.0, decorrelate: bool = True, device: Any = "cpu") -> None:
        h, w = size
        self.size = (h, w)
        side = max(h, w)
        fy = torch.fft.fftfreq(h)[:, None] * side
        fx = torch.fft.rfftfreq(w)[None, :] * side
        freq = torch.sqrt(fy * fy + fx * fx)
        scale = 1.0 / freq.clamp(min=1.0) ** decay_power
        # Parseval with norm="ortho": for i.i.d. complex entries with real and imaginary variance sigma^2,
        # mean z^2 = 2 sigma^2 sum_k m_k scale_k^2 / (H W), where m_k = 2 for the columns irfft2 mirrors and 1 for
        # the first (and, for even W, the last) column. The gain makes the pixel variance of z equal sigma^2.
        mult = torch.full_like(scale, 2.0)
        mult[:, 0] = 1.0
        if w % 2 == 0:
            mult[:, -1] = 1.0
        self.gain = float(1.0 / torch.sqrt(2.0 * (mult * scale * scale).sum() / (h * w)))
        self.scale = (scale * self.gain).to(device)
        colour = torch.tensor(COLOUR_MATRIX, dtype=torch.float32) if decorrelate else torch.eye(3)
        self.colour = colour.to(device)
        self.colour_inv = torch.linalg.inv(colour).to(device)
        shape = (3, h, w // 2 + 1, 2)
        rows = [torch.randn(shape, generator=g) * init_std for g in generators]
        self.tensor = torch.stack(rows).to(device).requires_grad_(True)

    def render(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        spectrum = torch.view_as_complex(self.tensor if rows is None else self.tensor[rows])
        z = torch.fft.irfft2(spectrum * self.scale, s=self.size, norm="ortho")
        linear = torch.matmul(self.colour, z.flatten(2)).view(z.shape)  # contiguous (an einsum is not)
        return torch.sigmoid(linear), linear

    def set_linear(self, rows: torch.Tensor, linear: torch.Tensor) -> None:
        with torch.no_grad():
            z = torch.matmul(self.colour_inv, linear.flatten(2)).view(linear.shape)
            spectrum = torch.fft.rfft2(z, norm="ortho") / self.scale
            self.tensor[rows] = torch.view_as_real(spectrum).to(self.tensor.dtype)


# --- configuration and results ------------------------------------------------------------------------------
PARAMS = ("fft", "pixel")


@dataclass
class AscentConfig:
    """How to optimise. Defaults are tuned for ImageNet classifiers at 224 px.

    Attributes:
        param: ``"fft"`` (Fourier, decorrelated colour) or ``"pixel"``.
        decorrelate: decorrelated colour in the Fourier parameterisation.
        spectrum_power: the Fourier parameterisation scales frequency ``f`` by ``1 / max(f, 1) ** spectrum_power``
            (1: the 1/f spectrum of photos; larger: smoother images).
        steps: optimiser steps (the most; early stop may end an image sooner).
        lr: Adam learning rate; ``None``: 0.05 for ``fft``, 0.01 for ``pixel``.
        size: image side in pixels (square); ``None``: 224.
        init_std: standard deviation of the initial noise around grey.
        transforms: random jitter/zoom/rotation every step; ``None``: on for ``fft``, off for ``pixel``.
        jitter: largest shift in pixels (each axis, uniform); ``None``: 6% of ``size``.
        scale: largest relative zoom (uniform in ``[1 - scale, 1 + scale]``).
        rotate: largest rotation in degrees (uniform in ``[-rotate, rotate]``).
        l2: weight of the L2 penalty ``mean((x - 0.5)^2)`` subtracted from the objective.
        decay: L2 decay: the linear image is multiplied by ``1 - decay`` after every step; ``None``: 0.002 for
            ``fft`` (it keeps colours from saturating and pictures cleaner), 0 for ``pixel``.
        tv: weight of the total-variation penalty.
        blur_every: blur the linear image every this many steps (0: never), with standard deviation ``blur_sigma``.
        blur_sigma: in pixels.
        clip_norm: percentile (0-100) of pixel norms below which pixels are set to grey after each step (0: off).
        clip_contrib: the same for pixel contributions ``|sum_c z dS/dz|`` (0: off).
        early_stop: stop an image whose objective has plateaued (see the module docstring).
        patience: the plateau window in steps; ``None``: ``max(10, steps // 8)``.
        plateau_tol: relative improvement over one window below which the objective has plateaued.
        snapshots: keep this many snapshots per image, evenly spaced over the steps (the last is the result).
    """

    param: str = "fft"
    decorrelate: bool = True
    spectrum_power: float = 1.0
    steps: int = 256
    lr: float | None = None
    size: int | None = None
    init_std: float = 0.01
    transforms: bool | None = None
    jitter: float | None = None
    scale: float = 0.3
    rotate: float = 20.0
    l2: float = 0.0
    decay: float | None = None
    tv: float = 0.0
    blur_every: int = 0
    blur_sigma: float = 0.5
    clip_norm: float = 0.0
    clip_contrib: float = 0.0
    early_stop: bool = True
    patience: int | None = None
    plateau_tol: float = 0.002
    snapshots: int = 0

    def resolved(self) -> AscentConfig:
        """A copy with every ``None`` default filled in, after checking the values.

        Raises:
            UsageError: a value out of range, with what to do.
        """
        if self.param not in PARAMS:
            raise UsageError(f"unknown parameterisation {self.param!r}: choose fft or pixel")
        if self.steps <= 0:
            raise UsageError(f"--steps must be at least 1 (got {self.steps})")
        lr = self.lr if self.lr is not None else (0.05 if self.param == "fft" else 0.01)
        if not lr > 0 or not math.isfinite(lr):
            raise UsageError(f"--lr must be a positive number (got {lr})")
        size = 224 if self.size is None else self.size
        if size < 8:
            raise UsageError(f"--size {size} is too small: images must be at least 8 pixels wide")
        if size > MAX_SIZE:
            raise UsageError(f"--size {size} is too large: at most {MAX_SIZE} pixels (memory grows with the square of "
                             "the size; a larger picture of the same optimum: optimise at the model's size and "
                             "upsample)")
        jitter = round(0.06 * size) if self.jitter is None else self.jitter
        decay = (0.002 if self.param == "fft" else 0.0) if self.decay is None else self.decay
        checks = [
            (self.init_std >= 0, "--init-std must not be negative"),
            (0 <= self.spectrum_power <= 4, f"--spectrum-power must lie in [0, 4] (got {self.spectrum_power})"),
            (0 <= jitter < size / 2, f"--jitter must lie in [0, size/2) (got {jitter})"),
            (0 <= self.scale < 1, f"--scale must lie in [0, 1) (got {self.scale})"),
            (0 <= self.rotate <= 180, f"--rotate must lie in [0, 180] degrees (got {self.rotate})"),
            (self.l2 >= 0 and self.tv >= 0, "--l2 and --tv must not be negative"),
            (0 <= decay < 1, f"--decay must lie in [0, 1) (got {decay})"),
            (self.blur_every >= 0 and self.blur_sigma > 0, "--blur-every must be >= 0 and --blur-sigma > 0"),
            (0 <= self.clip_norm < 100 and 0 <= self.clip_contrib < 100,
             "--clip-norm and --clip-contrib are percentiles in [0, 100)"),
            (self.patience is None or self.patience >= 1, "--patience must be at least 1"),
            (self.plateau_tol >= 0, "the plateau tolerance must not be negative"),
            (0 <= self.snapshots <= MAX_SNAPSHOTS,
             f"--snapshots must lie in [0, {MAX_SNAPSHOTS}] (got {self.snapshots}): the strip draws one column each"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        transforms = (self.param == "fft") if self.transforms is None else self.transforms
        patience = max(10, self.steps // 8) if self.patience is None else self.patience
        return replace(self, lr=lr, size=size, jitter=float(jitter), decay=decay, transforms=transforms,
                       patience=patience)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


@dataclass
class StepInfo:
    """What the ``on_step`` callback receives after every step."""

    step: int  # 1-based
    total: int
    values: np.ndarray  # (N,) objective values of this step (NaN for images that have stopped)
    active: int  # images still optimised


@dataclass
class AscentResult:
    """The images and how they got there.

    Attributes:
        objectives: the objectives as checked (neurons with their positions filled in), one per image.
        images: ``(N, H, W, 3)`` float32 in [0, 1].
        values: ``(N,)`` objective of each final image (no transformation).
        initial_values: ``(N,)`` objective of each initial image.
        history: ``(steps_run, N)`` objective at every step (as optimised, with transformations; NaN once stopped).
        steps_run: ``(N,)`` steps each image received.
        stopped_early: ``(N,)`` whether the image stopped on a plateau.
        seeds: the per-image generator seeds.
        logits: ``(N, K)`` float32 model output for the final images when it is a vector per image, else ``None``.
        snapshots: ``(N, S, H, W, 3)`` float32 or ``None``; ``snapshot_steps`` says after which step each was taken.
        config: the resolved configuration.
    """

    objectives: list[Objective]
    images: np.ndarray
    values: np.ndarray
    initial_values: np.ndarray
    history: np.ndarray
    steps_run: np.ndarray
    stopped_early: np.ndarray
    seeds: list[int]
    logits: np.ndarray | None
    snapshots: np.ndarray | None
    snapshot_steps: list[int]
    config: AscentConfig

    @property
    def probabilities(self) -> np.ndarray | None:
        if self.logits is None:
            return None
        z = self.logits - self.logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


# --- the engine ---------------------------------------------------------------------------------------------
class _StopForward(Exception):
    """Raised from the hook of the last layer needed, to skip the rest of the network."""


@dataclass
class _Probe:
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)


class _TooSmall(Exception):
    """The probe image is too small for the network (message: why).

    Attributes:
        failed: the model raised (rather than a convolution shrinking a map below 2 x 2), which may have another
            cause than the size.
    """

    def __init__(self, message: str, failed: bool = False) -> None:
        super().__init__(message)
        self.failed = failed


def _probe(model: nn.Module, layers: Sequence[str], size: int, normalize: Callable[[torch.Tensor], torch.Tensor],
           device: Any) -> _Probe:
    """One forward pass of a grey image: output shapes of ``layers`` and the model, and their order.

    Raises:
        UsageError: the model cannot run at ``size``, or a convolution before the last needed layer would shrink a
            map of at least 2 x 2 to one smaller than that (the image is too small for the network's downsampling;
            convolutions that get a 1 x 1 map anyway, as in squeeze-excite blocks, do not count). Larger sizes up
            to :data:`MAX_SIZE` are probed: the message suggests one that works, or, when the model fails at every
            size, says it fails on such an input at all (e.g. a model made for one-channel images).
        LayerError: a layer that does not run, or does not output a tensor.
    """
    try:
        return _probe_once(model, layers, size, normalize, device)
    except _TooSmall as exc:
        reason, failed = str(exc), exc.failed
    bigger = size * 2
    while bigger <= MAX_SIZE:
        try:
            _probe_once(model, layers, bigger, normalize, device)
        except _TooSmall:
            bigger *= 2
            continue
        raise UsageError(f"--size {size} is too small for this model: {reason}; use --size {bigger} or more")
    if failed:
        raise UsageError(f"the model cannot run on a 1x3x{size}x{size} image at this or any larger --size up to "
                         f"{MAX_SIZE}: {reason}")
    raise UsageError(f"--size {size} is too small for this model: {reason}; use a larger --size")


def _probe_once(model: nn.Module, layers: Sequence[str], size: int,
                normalize: Callable[[torch.Tensor], torch.Tensor], device: Any) -> _Probe:
    probe = _Probe()
    tapped = [name for name in layers if name != OUTPUT]
    # Spatial sizes of convolution outputs, and markers for the tapped layers, in the order they ran.
    events: list[tuple[str, tuple[int, ...]]] = []
    seen: list[str] = []

    def conv_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            # A convolution that gets a map already smaller than 2 x 2 (a squeeze-excite block's 1 x 1 pooled
            # input) did not shrink it: only one that downsamples a larger map to below 2 x 2 says "too small".
            given = args[0] if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4 else None
            if isinstance(output, torch.Tensor) and output.dim() == 4 and (given is None or min(given.shape[-2:]) >= 2):
                events.append((name, tuple(output.shape[-2:])))

        return hook

    def layer_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if name not in seen:
                probe.order.append(name)
                seen.append(name)
                if isinstance(output, torch.Tensor):
                    probe.shapes[name] = tuple(output.shape[1:])
                events.append(("\0" + name, ()))

        return hook

    handles = []
    try:
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d):
                handles.append(module.register_forward_hook(conv_hook(name)))
        for name in tapped:
            handles.append(resolve_layer(model, name).register_forward_hook(layer_hook(name)))
        x = normalize(torch.full((1, 3, size, size), 0.5, device=device))
        try:
            with torch.no_grad():
                out = model(x)
        except (RuntimeError, ValueError, IndexError) as exc:
            text = str(exc).strip()
            raise _TooSmall(f"it fails with: {text.splitlines()[0] if text else type(exc).__name__}",
                            failed=True) from None
    finally:
        for handle in handles:
            handle.remove()
    for name in tapped:
        if name not in probe.shapes:
            if name in seen:
                raise LayerError(f"layer {name!r} does not output a tensor; choose a layer that does "
                                 "(run 'cnn-explain layers')")
            raise LayerError(f"layer {name!r} did not run during the forward pass; choose a layer on the path from "
                             "the input to the output")
    if isinstance(out, torch.Tensor):
        probe.shapes[OUTPUT] = tuple(out.shape[1:])
    probe.order.append(OUTPUT)
    # Only the convolutions that run before the last layer needed matter.
    last = OUTPUT if OUTPUT in layers or not tapped else max(tapped, key=probe.order.index)
    for name, hw in events:
        if name == "\0" + last:
            break
        if not name.startswith("\0") and min(hw) < 2:
            raise _TooSmall(f"layer {name!r} would give a {hw[0]} x {hw[1]} map")
    return probe


def _plateau(values: np.ndarray, window: int, tol: float) -> bool:
    """Whether the least-squares trend of ``values`` rises by at most ``tol * |mean|`` over ``window`` steps."""
    t = np.arange(len(values), dtype=np.float64)
    t -= t.mean()
    slope = float((t * (values - values.mean())).sum() / (t * t).sum())
    return slope * window <= tol * max(abs(float(values.mean())), 1e-6)


def _gaussian_blur(z: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=z.dtype, device=z.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = z.shape[1]
    pad_mode = "reflect" if min(z.shape[-2:]) > radius else "replicate"
    out = F.pad(z, (radius, radius, 0, 0), mode=pad_mode)
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode=pad_mode)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _clip_below_percentile(z: torch.Tensor, score: torch.Tensor, percentile: float) -> torch.Tensor:
    """Set the pixels of each image whose ``score`` (``(b, H, W)``) is below its ``percentile`` to zero."""
    flat = score.flatten(1)
    threshold = torch.quantile(flat, percentile / 100.0, dim=1)
    keep = (score >= threshold[:, None, None]).to(z.dtype)
    return z * keep[:, None]


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    dx = x[..., :, 1:] - x[..., :, :-1]
    dy = x[..., 1:, :] - x[..., :-1, :]
    return torch.sqrt(dx[..., :-1, :] ** 2 + dy[..., :, :-1] ** 2 + 1e-8).flatten(1).mean(1)


class _Transforms:
    """Random jitter, zoom and rotation, one affine resampling per image per step, drawn from the image's generator."""

    def __init__(self, config: AscentConfig) -> None:
        self.jitter = float(config.jitter or 0.0)
        self.scale = config.scale
        self.rotate = math.radians(config.rotate)

    def __call__(self, images: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        b, _, h, w = images.shape
        thetas = []
        for g in generators:
            u = torch.rand(4, generator=g, dtype=torch.float64).tolist()
            zoom = 1.0 + self.scale * (2 * u[0] - 1)
            angle = self.rotate * (2 * u[1] - 1)
            tx, ty = self.jitter * (2 * u[2] - 1), self.jitter * (2 * u[3] - 1)
            cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
            # Output -> input coordinates in [-1, 1] units (align_corners=False); shifts in pixels.
            thetas.append([[cos, -sin * h / w, 2 * tx / w], [sin * w / h, cos, 2 * ty / h]])
        theta = torch.tensor(thetas, dtype=images.dtype, device=images.device)
        grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
        # Outside the image: reflection, so edges get no special (grey or black) content to exploit.
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class _Adam:
    """Adam for maximisation, updating only the rows (images) that are still active."""

    def __init__(self, tensor: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = torch.zeros_like(tensor)
        self.v = torch.zeros_like(tensor)
        self.t = torch.zeros(tensor.shape[0], dtype=torch.long)

    @torch.no_grad()
    def step(self, tensor: torch.Tensor, grad: torch.Tensor, rows: torch.Tensor) -> None:
        b1, b2 = self.betas
        if len(rows) == len(tensor):  # every image still runs: in place, no gathers and scatters
            self.t += 1
            step = int(self.t[0])
            self.m.mul_(b1).add_(grad, alpha=1 - b1)
            self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            denom = (self.v / (1 - b2 ** step)).sqrt_().add_(self.eps)
            tensor.addcdiv_(self.m, denom, value=self.lr / (1 - b1 ** step))
            return
        self.t[rows.cpu()] += 1
        t = self.t[rows.cpu()].to(torch.float64)
        m = self.m[rows].mul_(b1).add_(grad, alpha=1 - b1)
        v = self.v[rows].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        self.m[rows], self.v[rows] = m, v
        shape = (-1,) + (1,) * (tensor.dim() - 1)
        c1 = (1 - b1 ** t).to(tensor.dtype).to(tensor.device).view(shape)
        c2 = (1 - b2 ** t).to(tensor.dtype).to(tensor.device).view(shape)
        update = (m / c1) / ((v / c2).sqrt_() + self.eps)
        tensor[rows] = tensor[rows] + self.lr * update


def ascend(
    model: nn.Module,
    objectives: Sequence[Objective],
    config: AscentConfig | None = None,
    *,
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed: int | Sequence[int] = 0,
    on_step: Callable[[StepInfo], None] | None = None,
) -> AscentResult:
    """Optimise one image per objective, all in one batch.

    Args:
        model: the network (any device); left exactly as found.
        objectives: one per image.
        config: optimisation settings (defaults: :class:`AscentConfig`).
        normalize: maps ``(B, 3, H, W)`` pixels in [0, 1] to the model's input space (the backbone's
            ``preprocess.normalize``); ``None``: identity.
        seed: the run's seed (objective ``i`` uses ``objective_seed(seed, i)``), or one generator seed per objective.
        on_step: called after every step with a :class:`StepInfo` (e.g. to drive a progress bar).

    Raises:
        UsageError: no objectives, bad settings, an image size too small for the model.
        LayerError, TargetError: unknown layers (with suggestions), channels or positions out of range.
    """
    cfg = (config or AscentConfig()).resolved()
    if not objectives:
        raise UsageError("nothing to optimise: give at least one objective (a class, a channel or a neuron)")
    n = len(objectives)
    if isinstance(seed, int):
        seeds = [objective_seed(seed, i) for i in range(n)]
    else:
        seeds = [int(s) for s in seed]
        if len(seeds) != n:
            raise UsageError(f"{len(seeds)} seeds for {n} objectives")
    normalize = normalize or (lambda x: x)
    layers = sorted(set().union(*(o.layers for o in objectives)))
    for name in layers:
        if name != OUTPUT:
            resolve_layer(model, name)  # LayerError with suggestions
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    size = int(cfg.size)  # type: ignore[arg-type]

    # inference_mode(False): a caller inside torch.inference_mode() would otherwise get inference tensors, which
    # autograd refuses; the caller's modes come back on exit.
    with torch.inference_mode(False), eval_mode(model):
        probe = _probe(model, layers, size, normalize, device)
        checked = [o.check(probe.shapes) for o in objectives]
        engine = _Engine(model, checked, cfg, normalize, seeds, probe, device)
        return engine.run(on_step)


class _Engine:
    def __init__(self, model: nn.Module, objectives: list[Objective], cfg: AscentConfig,
                 normalize: Callable[[torch.Tensor], torch.Tensor], seeds: list[int], probe: _Probe,
                 device: Any) -> None:
        self.model, self.objectives, self.cfg, self.normalize, self.seeds = model, objectives, cfg, normalize, seeds
        self.device = device
        self.layers = sorted(set().union(*(o.layers for o in objectives)))
        tapped = [name for name in self.layers if name != OUTPUT]
        self.needs_output = OUTPUT in self.layers
        self.tap = LayerTap(model, tapped) if tapped else None
        self.last_layer = None
        if tapped and not self.needs_output:
            self.last_layer = max(tapped, key=probe.order.index)
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        size = (int(cfg.size), int(cfg.size))  # type: ignore[arg-type]
        if cfg.param == "fft":
            self.param: ImageParam = FourierParam(self.generators, size, cfg.init_std, cfg.spectrum_power,
                                                  decorrelate=cfg.decorrelate, device=device)
        else:
            self.param = PixelParam(self.generators, size, cfg.init_std, device=device)
        self.transforms = _Transforms(cfg) if cfg.transforms else None

    def forward(self, images: torch.Tensor, full: bool = False) -> dict[str, torch.Tensor]:
        """Activations needed by the objectives (plus the output when ``full``), possibly stopping early."""
        acts: dict[str, torch.Tensor] = {}
        x = self.normalize(images)
        stop = None if full else self.last_layer
        output = None
        if self.tap is None:
            output = self.model(x)
        else:
            with self.tap:
                handle = None
                if stop is not None:
                    def raise_stop(module: nn.Module, args: Any, out: Any) -> None:
                        raise _StopForward

                    handle = self.tap.modules[stop].register_forward_hook(raise_stop)
                try:
                    output = self.model(x)
                except _StopForward:
                    output = None
                finally:
                    if handle is not None:
                        handle.remove()
                acts.update(self.tap.outputs)
        if output is not None:
            acts[OUTPUT] = output
        return acts

    def values(self, acts: Mapping[str, torch.Tensor], rows: Sequence[int]) -> torch.Tensor:
        """Objective of each active image: ``(b,)``."""
        out = []
        for j, i in enumerate(rows):
            view = {k: v[j:j + 1] for k, v in acts.items() if isinstance(v, torch.Tensor)}
            out.append(self.objectives[i].evaluate(view).reshape(()))
        return torch.stack(out)

    @torch.no_grad()
    def evaluate_all(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Objectives, model outputs and pixels of the current images, without transformations."""
        images, _ = self.param.render()
        acts = self.forward(images, full=True)
        values = self.values(acts, list(range(len(self.objectives)))).float().cpu().numpy()
        out = acts.get(OUTPUT)
        logits = out.float().cpu().numpy() if isinstance(out, torch.Tensor) and out.dim() == 2 else None
        pixels = images.float().permute(0, 2, 3, 1).cpu().numpy()
        return values, logits, pixels

    def run(self, on_step: Callable[[StepInfo], None] | None) -> AscentResult:
        cfg = self.cfg
        n, steps = len(self.objectives), cfg.steps
        initial_values, _, _ = self.evaluate_all()
        adam = _Adam(self.param.tensor, float(cfg.lr))  # type: ignore[arg-type]
        active = list(range(n))
        history = np.full((steps, n), np.nan, dtype=np.float64)
        steps_run = np.zeros(n, dtype=np.int64)
        stopped = np.zeros(n, dtype=bool)
        snap_steps = sorted({max(1, round(steps * (k + 1) / cfg.snapshots)) for k in range(cfg.snapshots)})
        snapshots: dict[int, list[np.ndarray]] = {i: [] for i in range(n)}
        patience = int(cfg.patience)  # type: ignore[arg-type]
        confirm = max(1, patience // 4)
        calm = [0] * n  # consecutive steps on which each image looked flat
        step = 0
        for step in range(1, steps + 1):
            rows = torch.tensor(active, dtype=torch.long, device=self.device)
            every = None if len(active) == n else rows
            want_contrib = cfg.clip_contrib > 0
            with torch.enable_grad():
                images, linear = self.param.render(every)
                seen = images
                if self.transforms is not None:
                    seen = self.transforms(images, [self.generators[i] for i in active])
                acts = self.forward(seen)
                values = self.values(acts, active)
                total = values
                if cfg.l2 > 0:
                    total = total - cfg.l2 * (images - 0.5).pow(2).flatten(1).mean(1)
                if cfg.tv > 0:
                    total = total - cfg.tv * _total_variation(images)
                inputs = [self.param.tensor, linear] if want_contrib else [self.param.tensor]
                grads = torch.autograd.grad(total.sum(), inputs)
            grad = grads[0] if every is None else grads[0][rows]
            adam.step(self.param.tensor, grad, rows)
            self.param.project()
            self._regularise(step, rows, grads[1].detach() if want_contrib else None)
            vals = values.detach().double().cpu().numpy()
            history[step - 1, active] = vals
            steps_run[active] += 1
            if step in snap_steps:
                with torch.no_grad():
                    pics = self.param.render(rows)[0].float().permute(0, 2, 3, 1).cpu().numpy()
                for j, i in enumerate(active):
                    snapshots[i].append(pics[j])
            if cfg.early_stop and step >= 2 * patience and step < steps:
                done = []
                for i in active:
                    flat = _plateau(history[step - 2 * patience:step, i], patience, cfg.plateau_tol)
                    calm[i] = calm[i] + 1 if flat else 0
                    if calm[i] >= confirm:
                        done.append(i)
                if done:
                    with torch.no_grad():
                        finals = self.param.render(torch.tensor(done, device=self.device))[0]
                    finals_np = finals.float().permute(0, 2, 3, 1).cpu().numpy()
                    for j, i in enumerate(done):
                        stopped[i] = True
                        while len(snapshots[i]) < len(snap_steps):
                            snapshots[i].append(finals_np[j])
                    active = [i for i in active if i not in done]
            if on_step is not None:
                row = np.full(n, np.nan)
                row[rows.cpu().numpy()] = vals
                on_step(StepInfo(step=step, total=steps, values=row, active=len(active)))
            if not active:
                break
        values, logits, pixels = self.evaluate_all()
        snaps = None
        if cfg.snapshots:
            snaps = np.stack([np.stack(snapshots[i]) for i in range(n)]).astype(np.float32)
        return AscentResult(
            objectives=self.objectives, images=pixels.astype(np.float32), values=values,
            initial_values=initial_values, history=history[:step], steps_run=steps_run, stopped_early=stopped,
            seeds=self.seeds, logits=logits, snapshots=snaps, snapshot_steps=snap_steps, config=cfg,
        )

    @torch.no_grad()
    def _regularise(self, step: int, rows: torch.Tensor, contrib_grad: torch.Tensor | None) -> None:
        """Decay, blur and clipping of the linear image (Yosinski et al.), written back into the parameters."""
        cfg = self.cfg
        if cfg.decay:
            # Both linear images are linear in the parameter tensor, so decaying the tensor decays the image.
            if len(rows) == len(self.objectives):
                self.param.tensor.mul_(1.0 - float(cfg.decay))
            else:
                self.param.tensor[rows] *= 1.0 - float(cfg.decay)
        blur = cfg.blur_every > 0 and step % cfg.blur_every == 0
        if not (blur or cfg.clip_norm > 0 or contrib_grad is not None):
            return
        _, z = self.param.render(rows)
        z = z.detach()
        if blur:
            z = _gaussian_blur(z, cfg.blur_sigma)
        if cfg.clip_norm > 0:
            z = _clip_below_percentile(z, z.norm(dim=1), cfg.clip_norm)
        if contrib_grad is not None:
            z = _clip_below_percentile(z, (z * contrib_grad).sum(1).abs(), cfg.clip_contrib)
        self.param.set_linear(rows, z)
