"""Gradient saliency: the vanilla input gradient, SmoothGrad, and gradient x input.

* Vanilla gradient (Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks", ICLR workshop 2014,
  https://arxiv.org/abs/1312.6034, Sec. 3.1): ``M(x) = dY/dx`` for a class score (or neuron) ``Y`` at the image
  ``x``: a first-order Taylor view of which pixels change ``Y`` most.
* SmoothGrad (Smilkov, Thorat, Kim, Viegas & Wattenberg 2017, https://arxiv.org/abs/1706.03825, Eq. 3)::

      M_hat(x) = 1/n sum_{s=1..n} M(x + eps_s),   eps_s ~ N(0, sigma^2),   sigma = noise * (max(x) - min(x))

  ``noise`` is the paper's noise level ``sigma / (x_max - x_min)`` (it recommends 10-20 %; default 0.15 here),
  with ``max``/``min`` taken over each image's whole input tensor (all channels, in model-input units).
* Gradient x input (Shrikumar et al. 2016, https://arxiv.org/abs/1605.01713): ``M(x) = x * dY/dx``. Combined
  with SmoothGrad it is applied per noisy sample, ``1/n sum_s (x + eps_s) * dY/dx(x + eps_s)``, following the
  paper's definition of smoothing *any* sensitivity map ``M``.

Conventions and deviations:

* What is explained is fixed on the clean image: ``topK`` classes and ``--unit max`` units are chosen from one clean
  forward pass, and every noisy copy explains that same class or unit (the paper smooths the map of the image's
  class). :attr:`GradientMap.score` is the clean score.
* Noise is reproducible and independent of batching: image ``i`` draws its samples one after another, each of
  shape ``(C, H, W)``, from its own CPU ``torch.Generator`` seeded with ``seeds[i]`` (``seed + i`` when one integer
  is given), then moved to the model's device.
* Noisy copies go through the model in batches of ``batch_size`` rows (copies of several images and samples
  mixed), one forward pass per batch and one backward pass per target rank. The copies are drawn batch by batch
  and only the running sum of their gradients is kept, so memory does not grow with ``samples``; ``samples`` is
  at most :data:`MAX_SAMPLES`.
* Explanations run in eval mode; gradients are taken with :func:`torch.autograd.grad` with respect to the input
  only; the model is left exactly as found. Images are assumed not to interact inside the model (eval mode).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from explain.errors import UsageError
from explain.guided import (
    GradientMap,
    GradientResult,
    Target,
    check_inputs,
    check_request,
    input_gradients,
    neuron_layers,
    prepare_input,
)
from explain.hooks import LayerTap, eval_mode
from explain.scores import expand_targets, rank_scores

__all__ = ["MAX_NOISE", "MAX_SAMPLES", "check_noise", "check_samples", "noise_sigmas", "saliency", "sample_batches",
           "smoothgrad_noise"]

MAX_NOISE = 1.0  # SmoothGrad noise as a fraction of the input range (the paper recommends 0.1-0.2)
MAX_SAMPLES = 10_000
"""Most SmoothGrad samples per image: the paper uses 50 and sees no change past a few hundred; 10,000 copies of a
224 px image already take minutes on a CPU."""


def check_samples(samples: object, name: str = "samples") -> int:
    """The SmoothGrad sample count, or a :class:`UsageError` naming ``name`` unless it is a whole number in
    ``[0, MAX_SAMPLES]`` (0: the plain gradient)."""
    if isinstance(samples, bool) or not isinstance(samples, int) or not 0 <= samples <= MAX_SAMPLES:
        raise UsageError(f"{name} must be a whole number from 0 (plain gradient) to {MAX_SAMPLES:,} (SmoothGrad's "
                         f"paper uses 50), got {samples!r}")
    return samples


def sample_batches(images: int, samples: int, batch_size: int) -> Iterator[list[int]]:
    """The image index of each noisy copy, ``batch_size`` copies at a time, in image-major order.

    A generator: nothing is built for copies that are not reached yet, whatever ``images * samples`` is.
    """
    total = images * samples
    for start in range(0, total, batch_size):
        yield [row // samples for row in range(start, min(start + batch_size, total))]


def check_noise(noise: object, name: str = "noise") -> float:
    """The SmoothGrad noise level as a float, or a :class:`UsageError` naming ``name`` unless it lies in
    ``[0, MAX_NOISE]`` (NaN and infinities included: an infinite sigma would reach manifests as ``inf``)."""
    if isinstance(noise, bool) or not (isinstance(noise, int | float) and 0 <= noise <= MAX_NOISE):
        raise UsageError(f"{name} must be a fraction of the input range in [0, {MAX_NOISE:g}], got {noise!r}")
    return float(noise)


def noise_sigmas(inputs: torch.Tensor, noise: float) -> torch.Tensor:
    """SmoothGrad's per-image standard deviation ``noise * (max(x) - min(x))``, shape ``(N,)``."""
    flat = inputs.detach().flatten(1)
    return noise * (flat.amax(1) - flat.amin(1))


def smoothgrad_noise(seed: int, samples: int, shape: Sequence[int]) -> torch.Tensor:
    """The ``(samples, *shape)`` standard-normal draws image noise is made of (before scaling by sigma).

    Sample ``s`` is the ``s``-th draw of shape ``shape`` from a CPU generator seeded with ``seed``: this is the exact
    recipe :func:`saliency` uses, so tests and users can reproduce every noisy copy.
    """
    generator = torch.Generator().manual_seed(int(seed))
    return torch.stack([torch.randn(tuple(shape), generator=generator) for _ in range(samples)])


def saliency(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: Sequence[Target],
    *,
    samples: int = 0,
    noise: float = 0.15,
    seed: int | Sequence[int] = 0,
    times_input: bool = False,
    unit: Literal["mean", "max"] = "mean",
    batch_size: int = 32,
) -> GradientResult:
    """Input-gradient saliency maps for a batch of images: vanilla (``samples=0``) or SmoothGrad (``samples >= 1``).

    Args:
        model: the network (left exactly as found; it runs in eval mode).
        inputs: ``(N, C, H, W)`` preprocessed images.
        targets: applied to every image: ``ClassTarget``, ``TopK`` or ``NeuronTarget``.
        samples: 0 for the plain gradient; ``n >= 1`` for SmoothGrad with ``n`` noisy copies per image
            (the paper uses 50).
        noise: SmoothGrad noise level, a fraction of each image's value range ``max(x) - min(x)``; ``>= 0``.
        seed: noise seed: one integer (image ``i`` uses ``seed + i``) or one seed per image.
        times_input: multiply each gradient by its (noisy) input: gradient x input.
        unit: how a ``LAYER:C`` neuron is explained: ``"mean"`` or ``"max"`` (see
            :func:`explain.guided.guided_backprop`).
        batch_size: noisy copies per forward pass (SmoothGrad only).

    Returns:
        A :class:`~explain.guided.GradientResult` with method ``"gradient"`` or ``"smoothgrad"``.

    Raises:
        UsageError: bad inputs, targets, samples (more than :data:`MAX_SAMPLES` too), noise, seeds or batch size.
        LayerError, TargetError: unknown layer, class or neuron out of range.
    """
    inputs = check_inputs(inputs)
    targets = check_request(targets, unit)
    n = inputs.shape[0]
    check_samples(samples)
    check_noise(noise)
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    seeds = [int(seed) + i for i in range(n)] if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != n:
        raise UsageError(f"got {len(seeds)} seeds for {n} images")
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))

    if samples == 0:
        ranks, grads, logits, scores, _ = input_gradients(model, inputs, targets, unit=unit, rule=None)
        if times_input:
            x = prepare_input(model, inputs)
            grads = [g * x for g in grads]
        return _result("gradient", size, logits, ranks, grads, scores, times_input)

    layers = neuron_layers(model, targets)
    with torch.inference_mode(False), eval_mode(model):
        x = prepare_input(model, inputs)
        # 1. the clean pass fixes what is explained (and gives the logits and clean scores)
        tap = LayerTap(model, layers)
        with tap, torch.no_grad():
            output = model(x)
        tap.require_all()
        ranks = expand_targets(targets, output, tap.outputs, n, unit)
        logits = output.detach().float().cpu() if isinstance(output, torch.Tensor) and output.dim() == 2 else None
        scores = [rank_scores(rank, output, tap.outputs, list(range(n))).detach() for rank in ranks]
        del tap, output
        sigmas = noise_sigmas(x, float(noise))

        # 2. noisy copies, batch_size rows at a time, in image-major order
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        sums = [torch.zeros_like(x) for _ in ranks]
        for images in sample_batches(n, samples, batch_size):
            eps = torch.stack([torch.randn(tuple(x.shape[1:]), generator=generators[i]) for i in images])
            index = torch.tensor(images, device=x.device)
            noisy = (x[index] + eps.to(device=x.device, dtype=x.dtype) * sigmas[index].view(-1, 1, 1, 1))
            noisy.requires_grad_(True)
            tap = LayerTap(model, layers)
            with torch.enable_grad(), tap:
                output = model(noisy.clone())
            for r, rank in enumerate(ranks):
                score = rank_scores(rank, output, tap.outputs, images)
                if not score.requires_grad:
                    continue
                (grad,) = torch.autograd.grad(score.sum(), noisy, retain_graph=r < len(ranks) - 1, allow_unused=True)
                if grad is None:
                    continue
                contribution = grad * noisy.detach() if times_input else grad
                sums[r].index_add_(0, index, contribution)
            del tap, output
        grads = [s / samples for s in sums]

    result = _result("smoothgrad", size, logits, ranks, grads, scores, times_input)
    result.samples = samples
    result.noise = float(noise)
    result.sigmas = [float(v) for v in sigmas.cpu().tolist()]
    result.seeds = seeds
    return result


def _result(method: str, size: tuple[int, int], logits: torch.Tensor | None, ranks: list, grads: list[torch.Tensor],
            scores: list[torch.Tensor], times_input: bool) -> GradientResult:
    np_grads = [g.float().cpu().numpy() for g in grads]
    np_scores = [s.float().cpu().tolist() for s in scores]
    n = np_grads[0].shape[0] if np_grads else 0
    maps = [
        GradientMap(image_index=i, target=rank.targets[i], rank=rank.rank, score=np_scores[r][i],
                    gradient=np_grads[r][i], unit_choice=rank.unit_choice)
        for i in range(n)
        for r, rank in enumerate(ranks)
    ]
    return GradientResult(method=method, input_size=size, logits=logits, maps=maps, times_input=times_input)
