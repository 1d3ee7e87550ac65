"""Metrics that audit saliency maps: localisation, faithfulness, sanity and stability.

Every function is batched over images (a leading ``N``) and vectorised: no Python loop runs per pixel; the only
loops run over chunks of a batch, over the distinct classes of a batch, or over the rows of the pointing game's
tolerance disc.

Localisation (does the map look at the object?):

* :func:`energy_in_mask`: the "energy-based pointing game" of Score-CAM (Wang et al., CVPRW 2020,
  https://arxiv.org/abs/1910.01279, Sec. 4.2): ``E = sum_{p in box} M_p / sum_p M_p``.
* :func:`pointing_hits`: the pointing game (Zhang et al., ECCV 2016, https://arxiv.org/abs/1608.00507) with
  TorchRay's tolerance convention (Fong et al., https://github.com/facebookresearch/TorchRay): a hit when the map's
  maximum lies within 15 px of the object's mask.

Faithfulness (does removing what the map points at change the decision?):

* :func:`deletion_curves` and :func:`insertion_curves`: the causal metrics of RISE (Petsiuk et al., BMVC 2018,
  https://arxiv.org/abs/1806.07421, Sec. 4.1), with :func:`random_maps` as the baseline.

Sanity (Adebayo et al., NeurIPS 2018, https://arxiv.org/abs/1810.03292):

* :func:`randomized_model` (model-parameter randomisation) and :func:`sanity_correlations` (Spearman rank
  correlation, :func:`spearman`, between the maps of the trained and the randomised network);
  :func:`sanity_cascade` runs the paper's cascade, top layer first, for several methods at once.

Stability:

* :func:`translation_test`: shift each image by a few pixels; how much do the prediction and the CAM's peak move?

Conventions shared by all functions: a map ``(N, H, W)`` is indexed ``[n, y, x]``; pixel ``(y, x)`` has its centre at
``(x + 0.5, y + 0.5)`` in the pixel coordinates of boxes; models run in eval mode and are left exactly as found.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from explain.cam import compute_cams
from explain.device import model_device
from explain.errors import UsageError
from explain.hooks import eval_mode
from explain.modules import resolve_layer
from explain.targets import ClassTarget

__all__ = [
    "RANDOMISATIONS",
    "CascadeResult",
    "Curves",
    "TranslationResult",
    "boxes_to_mask",
    "cams_for_classes",
    "cascade_blocks",
    "cascade_length",
    "deletion_curves",
    "energy_in_mask",
    "gaussian_blur",
    "insertion_curves",
    "peak_locations",
    "pointing_hits",
    "random_maps",
    "randomized_model",
    "sanity_cascade",
    "sanity_correlations",
    "shift_images",
    "spearman",
    "translation_test",
]

Substrate = torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None

# ----------------------------------------------------------------------------------------------------------------
# Localisation


def boxes_to_mask(boxes: Sequence[tuple[float, float, float, float]], size: tuple[int, int]) -> torch.Tensor:
    """The union of boxes as a boolean mask of an ``(H, W)`` pixel grid.

    Pixel ``(i, j)`` (row ``i``, column ``j``) is inside a box ``(x0, y0, x1, y1)`` when its centre
    ``(j + 0.5, i + 0.5)`` satisfies ``x0 <= j + 0.5 < x1`` and ``y0 <= i + 0.5 < y1`` (half-open, so boxes with
    integer corners cover exactly ``x1 - x0`` by ``y1 - y0`` pixels). Boxes reaching beyond the grid are clipped to
    it by this very test; a box of zero width or height covers nothing.

    Args:
        boxes: ``(x0, y0, x1, y1)`` in pixel coordinates of the grid (x to the right, y down).
        size: ``(H, W)`` of the grid.

    Returns:
        Bool ``(H, W)`` on the CPU; all ``False`` for an empty list.

    Raises:
        UsageError: a box that is not 4 finite numbers with ``x0 <= x1`` and ``y0 <= y1``.
    """
    height, width = int(size[0]), int(size[1])
    if not len(boxes):
        return torch.zeros(height, width, dtype=torch.bool)
    try:
        b = torch.as_tensor([list(map(float, box)) for box in boxes], dtype=torch.float64)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"boxes must be (x0, y0, x1, y1) numbers: {exc}") from None
    if b.dim() != 2 or b.shape[1] != 4:
        raise UsageError(f"boxes must be (x0, y0, x1, y1), got {len(boxes[0])} values")
    bad = ~torch.isfinite(b).all(1) | (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if bool(bad.any()):
        raise UsageError(f"bad box {tuple(b[int(bad.nonzero()[0])].tolist())}: need finite x0 <= x1 and y0 <= y1")
    cx = torch.arange(width, dtype=torch.float64) + 0.5
    cy = torch.arange(height, dtype=torch.float64) + 0.5
    in_x = (b[:, 0, None] <= cx) & (cx < b[:, 2, None])  # (B, W)
    in_y = (b[:, 1, None] <= cy) & (cy < b[:, 3, None])  # (B, H)
    return (in_y[:, :, None] & in_x[:, None, :]).any(0)


def _check_maps(maps: torch.Tensor, masks: torch.Tensor | None = None) -> None:
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise UsageError(f"maps must be a (N, H, W) tensor, got {shape}")
    if masks is not None and tuple(masks.shape) != tuple(maps.shape):
        raise UsageError(f"masks {tuple(masks.shape)} and maps {tuple(maps.shape)} must have the same shape")


def energy_in_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The share of each map's energy inside its mask (Score-CAM's energy-based pointing game).

    ``E_n = sum_p M_np [p in mask_n] / sum_p M_np`` (Wang et al. 2020, https://arxiv.org/abs/1910.01279, Sec. 4.2).
    1 means all the saliency lies on the object; a uniform map scores the mask's area share.

    Args:
        maps: ``(N, H, W)`` non-negative saliency (e.g. the normalised CAM ``map``).
        masks: bool ``(N, H, W)`` object masks (:func:`boxes_to_mask`).

    Returns:
        ``(N,)`` float (the maps' dtype, at least float32): NaN where a map sums to 0 or a mask is empty.

    Raises:
        UsageError: shapes differ, or a map has negative values (the share of a signed map is meaningless).
    """
    _check_maps(maps, masks)
    if bool((maps < 0).any()):
        raise UsageError("energy_in_mask needs non-negative maps (rectify or normalise them first)")
    values = maps if maps.is_floating_point() else maps.float()
    masks = masks.to(device=values.device, dtype=torch.bool)
    total = values.sum(dim=(1, 2))
    inside = torch.where(masks, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum(dim=(1, 2))
    undefined = (total == 0) | ~masks.flatten(1).any(1)
    return torch.where(undefined, torch.full_like(total, float("nan")), inside / total)


def _half_widths(radius: float) -> list[tuple[int, int]]:
    """``(dy, w)`` per row of a disc of ``radius``: ``w`` is the largest integer with ``w^2 + dy^2 <= radius^2``."""
    r = int(math.floor(radius))
    rows = []
    for dy in range(-r, r + 1):
        w = int(math.floor(math.sqrt(max(radius * radius - dy * dy, 0.0))))
        while (w + 1) ** 2 + dy * dy <= radius * radius:  # guard against rounding of the square root
            w += 1
        while w > 0 and w * w + dy * dy > radius * radius:
            w -= 1
        rows.append((dy, w))
    return rows


def _near_mask(masks: torch.Tensor, radius: float) -> torch.Tensor:
    """Bool ``(N, H, W)``: pixels within Euclidean distance ``radius`` of a ``True`` pixel of ``masks``.

    The dilation by a disc, as a union over the disc's rows: for row offset ``dy`` (half-width ``w``) a pixel is
    near when row ``y + dy`` of the mask has a pixel in columns ``[x - w, x + w]``, a window sum read off
    row-wise cumulative sums. Cost: ``2 r + 1`` passes over the maps (a loop over the disc's rows, not pixels),
    against ``(2 r + 1)^2`` multiply-adds per pixel for a convolution with the disc.
    """
    n, height, width = masks.shape
    r = int(math.floor(radius))
    # One zero column in front of the left padding, so that a window sum is a difference of two cumulative sums.
    padded = F.pad(masks.to(torch.int32), (r + 1, r, r, r))
    cumulative = padded.cumsum(-1)  # (N, H + 2r, W + 2r + 1); column c sums original columns <= c - r - 1
    near = torch.zeros(n, height, width, dtype=torch.bool, device=masks.device)
    for dy, w in _half_widths(radius):
        rows = cumulative[:, dy + r : dy + r + height]
        count = rows[..., r + 1 + w : r + 1 + w + width] - rows[..., r - w : r - w + width]
        near |= count > 0
    return near


def pointing_hits(maps: torch.Tensor, masks: torch.Tensor, tolerance: float = 15.0) -> torch.Tensor:
    """The pointing game: is each map's maximum on the object, give or take ``tolerance`` pixels?

    A hit when some pixel holding the map's maximum lies within Euclidean distance ``tolerance`` (pixel centre to
    pixel centre, in the maps' grid, ``<=``) of a mask pixel. This is TorchRay's convention (the mask dilated by a
    disc of radius 15 px, https://github.com/facebookresearch/TorchRay, ``benchmark/pointing_game.py``), after
    Zhang et al. 2016 (https://arxiv.org/abs/1608.00507).

    Deviation, stated: when several pixels share the maximum, *any* of them counts (TorchRay takes one argmax, whose
    position then depends on the scan order). A map that is constant (all pixels maximal) therefore hits whenever
    the mask is non-empty; upsampled CAMs have a unique maximum in practice.

    Args:
        maps: ``(N, H, W)`` saliency.
        masks: bool ``(N, H, W)`` object masks.
        tolerance: radius in pixels, ``>= 0``.

    Returns:
        Bool ``(N,)``; ``False`` where the mask is empty.

    Raises:
        UsageError: shapes differ or a negative tolerance.
    """
    _check_maps(maps, masks)
    if not tolerance >= 0:
        raise UsageError(f"tolerance must be >= 0 pixels, got {tolerance}")
    masks = masks.to(device=maps.device, dtype=torch.bool)
    near = _near_mask(masks, float(tolerance))
    peak = maps.flatten(1).amax(1)[:, None, None]
    return ((maps == peak) & near).flatten(1).any(1)


def peak_locations(maps: torch.Tensor) -> torch.Tensor:
    """``(N, 2)`` float ``(y, x)`` of each map's maximum: the first maximal pixel in row-major order on ties."""
    _check_maps(maps)
    flat = maps.flatten(1)
    # argmax returns the first maximal index; NaN counts as maximal (torch convention), which cannot arise from CAMs.
    index = flat.argmax(1)
    width = maps.shape[-1]
    return torch.stack([index // width, index % width], 1).to(torch.float32)


# ----------------------------------------------------------------------------------------------------------------
# Faithfulness: deletion and insertion (RISE)


@dataclass
class Curves:
    """Deletion or insertion curves of a batch.

    Attributes:
        fractions: ``(S+1,)`` from 0 to 1: the share of pixels deleted (or inserted) at each step. Exactly
            ``k_s / (H W)`` with ``k_s = round(s H W / S)`` pixels changed at step ``s``.
        scores: ``(N, S+1)`` softmax probability of each image's class at each step.
        auc: ``(N,)`` trapezoidal area under ``scores`` over ``fractions``.
    """

    fractions: torch.Tensor
    scores: torch.Tensor
    auc: torch.Tensor


def gaussian_blur(inputs: torch.Tensor, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` images, each channel on its own, reflect-padded.

    RISE's insertion substrate (kernel 11, sigma 5). Deviation: RISE pads with zeros, which darkens the borders of
    the blurred image; reflection keeps the blurred image an honest low-pass version of the input everywhere.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise UsageError(f"kernel_size must be odd and positive, got {kernel_size}")
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = (g / g.sum()).to(dtype=inputs.dtype, device=inputs.device)
    c = inputs.shape[1]
    mode = "reflect" if min(inputs.shape[-2:]) > half else "replicate"
    x = F.pad(inputs, (half, half, half, half), mode=mode)
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, kernel_size), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, kernel_size, 1), groups=c)


def _resolve_substrate(
    substrate: Substrate, inputs: torch.Tensor, default: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """The substrate as a tensor of the inputs' shape (a broadcast view where possible)."""
    if substrate is None:
        substrate = default
    value = substrate(inputs) if callable(substrate) else substrate
    value = torch.as_tensor(value, dtype=inputs.dtype, device=inputs.device)
    try:
        return torch.broadcast_to(value, inputs.shape)
    except RuntimeError:
        raise UsageError(
            f"substrate of shape {tuple(value.shape)} does not broadcast to the inputs {tuple(inputs.shape)}"
        ) from None


def _pixel_ranks(maps: torch.Tensor) -> torch.Tensor:
    """``(N, H*W)`` long: each pixel's position when pixels are sorted by decreasing map value.

    The sort is stable, so equal values keep row-major order (the top-left one of a tie goes first).
    """
    order = torch.sort(maps.flatten(1), dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


def _causal_curves(
    model: nn.Module,
    start: torch.Tensor,
    finish: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    steps: int,
    batch_size: int,
) -> Curves:
    """Move from ``start`` to ``finish`` (both ``(N, C, H, W)``) pixel by pixel in decreasing map order.

    At step ``s`` the ``k_s`` top pixels show ``finish`` and the rest ``start``; all ``N (S+1)`` images are scored
    in chunks of ``batch_size`` (one Python loop over chunks).
    """
    n, _, height, width = start.shape
    pixels = height * width
    ranks = _pixel_ranks(maps).to(start.device).view(n, height, width)
    # k_s = round(s HW / S), half up, in integers.
    numerators = 2 * torch.arange(steps + 1, device=start.device) * pixels + steps
    counts = torch.div(numerators, 2 * steps, rounding_mode="floor")
    classes = classes.to(start.device)
    device = model_device(model, start.device)
    scores = torch.empty(n * (steps + 1), dtype=torch.float32, device=start.device)
    with eval_mode(model), torch.no_grad():
        for begin in range(0, n * (steps + 1), batch_size):
            flat = torch.arange(begin, min(begin + batch_size, n * (steps + 1)), device=start.device)
            image, step = flat // (steps + 1), flat % (steps + 1)
            changed = (ranks[image] < counts[step][:, None, None])[:, None]  # (B, 1, H, W)
            x = torch.where(changed, finish[image], start[image])
            probs = torch.softmax(model(x.to(device)).float(), dim=1)
            scores[begin : begin + len(flat)] = probs.gather(1, classes[image].to(device)[:, None])[:, 0].to(scores)
    scores = scores.view(n, steps + 1).to(maps.device)
    fractions = (counts.double() / pixels).to(device=maps.device, dtype=torch.float32)
    return Curves(fractions=fractions, scores=scores, auc=torch.trapezoid(scores, fractions, dim=1))


def _check_curve_args(
    inputs: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor, steps: int, batch_size: int
) -> torch.Tensor:
    """Validate the arguments of the curve functions; return ``classes`` as a long tensor."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        raise UsageError("inputs must be a (N, C, H, W) tensor")
    _check_maps(maps)
    if tuple(maps.shape) != (inputs.shape[0], *inputs.shape[2:]):
        raise UsageError(f"maps {tuple(maps.shape)} must be (N, H, W) of the inputs {tuple(inputs.shape)}")
    classes = torch.as_tensor(classes, dtype=torch.long)
    if tuple(classes.shape) != (inputs.shape[0],):
        raise UsageError(f"classes must be (N,) = ({inputs.shape[0]},), got {tuple(classes.shape)}")
    if steps < 1 or batch_size < 1:
        raise UsageError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    return classes


def deletion_curves(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    *,
    steps: int = 32,
    batch_size: int = 64,
    substrate: Substrate = None,
) -> Curves:
    """RISE's deletion metric (Petsiuk et al. 2018, https://arxiv.org/abs/1806.07421, Sec. 4.1).

    Pixels are ordered by decreasing map value (a stable sort: ties go in row-major order). Starting from the
    input, step ``s = 0..S`` replaces the top ``k_s = round(s H W / S)`` pixels (all channels) by the substrate and
    records the softmax probability ``p_s`` of the image's class. ``AUC = trapz(p, k / HW)``; a faithful map makes
    the probability fall fast, so **lower is better**.

    Deviation, stated: the default substrate is zero *in model-input space*. RISE deletes to black; for a model
    normalised with a mean and std, zero is the normalisation mean colour (grey for EfficientNet-Lite's 0.5/0.5,
    the ImageNet mean colour for torchvision models), which carries less spurious evidence than black.

    Args:
        model: the classifier, returning ``(N, num_classes)`` logits; run in eval mode under ``no_grad`` in chunks
            of ``batch_size`` masked images, left as found.
        inputs: ``(N, C, H, W)`` preprocessed model inputs.
        maps: ``(N, H, W)`` saliency at the inputs' resolution.
        classes: ``(N,)`` long: the class to score per image.
        steps: ``S``, the number of deletion steps (``S + 1`` model evaluations per image).
        batch_size: masked images per forward pass.
        substrate: what deleted pixels become: a tensor broadcastable to ``inputs`` or a function of ``inputs``.

    Returns:
        :class:`Curves` on the maps' device.

    Raises:
        UsageError: mismatched shapes, ``steps < 1``, a substrate that does not broadcast.
    """
    classes = _check_curve_args(inputs, maps, classes, steps, batch_size)
    base = _resolve_substrate(substrate, inputs, torch.zeros_like)
    return _causal_curves(model, inputs, base, maps, classes, steps, batch_size)


def insertion_curves(
    model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    *,
    steps: int = 32,
    batch_size: int = 64,
    substrate: Substrate = None,
) -> Curves:
    """RISE's insertion metric (Petsiuk et al. 2018, https://arxiv.org/abs/1806.07421, Sec. 4.1).

    Starts from the substrate (by default the input blurred with RISE's Gaussian, kernel 11, sigma 5, see
    :func:`gaussian_blur`) and puts the top ``k_s`` pixels of the input back, in decreasing map order (stable: ties
    in row-major order). A faithful map makes the probability rise fast, so **higher is better**. Arguments,
    return value and errors as :func:`deletion_curves`.
    """
    classes = _check_curve_args(inputs, maps, classes, steps, batch_size)
    base = _resolve_substrate(substrate, inputs, gaussian_blur)
    return _causal_curves(model, base, inputs, maps, classes, steps, batch_size)


def random_maps(
    shape: tuple[int, int, int],
    like: tuple[int, int] | None = None,
    seed: int = 0,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The random-map baseline for deletion and insertion: ``(N, H, W)`` float32 in [0, 1], seeded.

    With ``like=(h, w)`` (the explained layer's resolution, e.g. 7 x 7) the values are drawn uniformly on the
    coarse ``h x w`` grid and upsampled bilinearly (``align_corners=False``) to ``(H, W)``, exactly as a CAM is.
    This is the baseline the audit uses: the deletion curve depends strongly on the *granularity* of the deleted
    regions (scattered single pixels hardly disturb a CNN, whole blobs do), so a fair baseline for a CAM deletes
    blobs of the CAM's size in random order, and any advantage of the CAM comes from *where* it points.
    Without ``like`` every pixel is drawn independently (RISE's plain random ordering).

    The draw uses its own generator: the global random state is untouched, and the same seed gives the same maps.
    """
    n, height, width = (int(v) for v in shape)
    generator = torch.Generator().manual_seed(int(seed))
    if like is None:
        maps = torch.rand(n, height, width, generator=generator)
    else:
        coarse = torch.rand(n, 1, int(like[0]), int(like[1]), generator=generator)
        maps = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    return maps.to(device) if device is not None else maps


# ----------------------------------------------------------------------------------------------------------------
# Sanity: rank correlation and model randomisation


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last dimension; ties get the average of the ranks they span.

    For value ``x`` with ``a`` elements below it and ``b`` elements ``<=`` it, the tied block occupies ranks
    ``a+1 .. b``, whose mean is ``(a + b + 1) / 2`` (no ties: ``b = a + 1``, rank ``a + 1``).
    """
    ordered = values.sort(dim=-1).values
    below = torch.searchsorted(ordered, values, right=False)
    upto = torch.searchsorted(ordered, values, right=True)
    return (below + upto + 1).to(torch.float64) / 2


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per row: ``(N, ...) x (N, ...) -> (N,)`` float32.

    The Pearson correlation of the average ranks (ties share the mean of their ranks), computed in float64, as
    ``scipy.stats.spearmanr``. A row that is constant in ``a`` or ``b`` has no ranking: NaN.
    """
    if a.shape != b.shape or a.dim() < 1:
        shapes = f"{tuple(a.shape)} and {tuple(b.shape)}"
        raise UsageError(f"spearman needs two tensors of the same (N, ...) shape, got {shapes}")
    ra = _average_ranks(a.flatten(1).contiguous())
    rb = _average_ranks(b.flatten(1).to(a.device).contiguous())
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    denom = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    rho = (ra * rb).sum(1) / denom
    return torch.where(denom > 0, rho, torch.full_like(rho, float("nan"))).float()


RANDOMISATIONS: tuple[str, ...] = ("recalibrated", "he-identity")
CALIBRATION_CHUNK = 32  # images per BatchNorm calibration pass (training-mode batch statistics depend on it)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _randomized_modules(model: nn.Module, cascade_from: str | None) -> list[nn.Module]:
    """The modules to re-initialise: all, or ``cascade_from`` and everything after it in registration order."""
    named = list(model.named_modules())
    if cascade_from is None:
        return [m for _, m in named]
    resolve_layer(model, cascade_from)  # raises LayerError with suggestions
    start = next(i for i, (name, _) in enumerate(named) if name == cascade_from)
    return [m for _, m in named[start:]]


def _reinitialise(module: nn.Module, scheme: str) -> None:
    """Re-draw the parameters that ``module`` owns directly (see :func:`randomized_model` for the schemes)."""
    own = list(module.parameters(recurse=False))
    if not own:
        return
    with torch.no_grad():
        if scheme == "he-identity" and isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                module.bias.zero_()
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:  # no initialiser known: a Gaussian with the trained tensor's mean and std (scale kept, structure gone)
            for p in own:
                std = float(p.std()) if p.numel() > 1 else 1.0
                p.normal_(float(p.mean()), std if std > 0 else 1.0)


def _recalibrate_norms(model: nn.Module, norms: list[nn.modules.batchnorm._BatchNorm], data: torch.Tensor,
                       chunk: int) -> None:
    """Re-estimate the running statistics of ``norms`` from passes over ``data`` (others stay in eval mode)."""
    saved = [(m, m.momentum) for m in norms]
    device = model_device(model, data.device)
    with eval_mode(model), torch.no_grad():
        try:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative average: the mean of the passes' batch statistics
                m.train()
            for start in range(0, len(data), chunk):
                model(data[start : start + chunk].to(device, copy=True))  # a copy: a model may modify its input
        finally:
            for m, momentum in saved:
                m.momentum = momentum


def randomized_model(
    model: nn.Module,
    seed: int = 0,
    cascade_from: str | None = None,
    *,
    calibration: torch.Tensor | None = None,
    scheme: str = "recalibrated",
) -> nn.Module:
    """Adebayo et al.'s model-parameter randomisation (https://arxiv.org/abs/1810.03292, Sec. 3.1).

    Returns a deep copy of ``model`` (the original is untouched) in which every module that owns learnable
    parameters is re-initialised: all of them (the full cascade, from the output down to the input), or with
    ``cascade_from`` only that module and every module after it in registration order (a step of the cascade).
    The draw runs under ``torch.manual_seed(seed)`` inside a forked random state, so it is reproducible and the
    caller's random state is untouched.

    Schemes (``scheme``), both deviations from the paper's code, which re-runs TensorFlow's initialisers on the
    *trainable* variables only and so keeps the trained BatchNorm moving statistics:

    * ``"recalibrated"`` (default): each module's own ``reset_parameters()``, i.e. PyTorch's default initial
      distribution (Kaiming-uniform convolutions and linear layers; norm affine 1 and 0); a module without one has
      each parameter redrawn from a Gaussian with that tensor's mean and std. BatchNorm statistics are reset and,
      when ``calibration`` images are given (strongly recommended), re-estimated over them in training mode with
      a cumulative average, :data:`CALIBRATION_CHUNK` images per pass in the given order (only the randomised
      BatchNorms switch to training mode; dropout stays off). Why: trained statistics describe the trained
      network's activations (measured on EfficientNet-Lite0: the randomised network then gives the same logits for
      every image), and reset statistics
      make eval-mode BatchNorm the identity, under which Kaiming-uniform weights shrink the signal layer after
      layer until the maps are ~1e-8. Recalibrated, activations stay normalised as at the start of training; the
      randomised network then depends (slightly) on which images calibrated it.
    * ``"he-identity"``: He-normal convolution and linear weights (``std = sqrt(2 / fan_in)``, zero bias), which
      keep the signal's scale through ReLU networks without any data; other modules as above; BatchNorm affine
      1 and 0 with statistics 0 and 1 (the identity in eval mode). ``calibration`` is not used.

    Registration order: ``cascade_from`` selects that module, its sub-modules and all later modules of
    ``model.named_modules()``; parameters owned directly by a container that comes earlier (e.g. a parameter of the
    root module itself) are randomised only by the full cascade (``cascade_from=None``).

    The copy is in eval mode with ``requires_grad`` flags as in the original.

    Args:
        model: the trained network.
        seed: seed of the new weights.
        cascade_from: dotted layer name where the cascade starts, or ``None`` for every layer.
        calibration: ``(N, C, H, W)`` preprocessed images to re-estimate BatchNorm statistics, or ``None``.
        scheme: ``"recalibrated"`` or ``"he-identity"``.

    Raises:
        LayerError: unknown ``cascade_from`` (with suggestions).
        UsageError: unknown ``scheme``.
    """
    if scheme not in RANDOMISATIONS:
        raise UsageError(f"unknown randomisation {scheme!r}; choose one of {', '.join(RANDOMISATIONS)}")
    chosen = _randomized_modules(model, cascade_from)  # validate before copying
    positions = {id(m): i for i, m in enumerate(model.modules())}
    # inference_mode(False): under a caller's inference mode the copy's parameters would be inference tensors,
    # which no gradient-based explanation of the copy could use.
    with torch.inference_mode(False):
        clone = copy.deepcopy(model)
        clone_modules = list(clone.modules())
        targets = [clone_modules[positions[id(m)]] for m in chosen]
        device = model_device(clone, torch.device("cpu"))
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            for module in targets:
                _reinitialise(module, scheme)
        norms = [m for m in targets if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        for m in norms:
            m.reset_running_stats()
        if scheme == "recalibrated" and calibration is not None and norms:
            _recalibrate_norms(clone, norms, calibration, CALIBRATION_CHUNK)
    return clone.eval()


def cascade_blocks(model: nn.Module) -> list[str]:
    """The steps of a cascading randomisation, in registration order (the cascade runs them backwards).

    One step per top-level child that owns parameters, with ``Sequential``/``ModuleList``/``ModuleDict`` children
    opened one level (a ResNet's ``layer4.2``, an EfficientNet's ``_blocks.15``); a normalisation layer joins the
    step before it (``conv1`` + ``bn1``), as the paper's Inception blocks hold their BatchNorms.
    """
    candidates: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, _CONTAINERS):
            candidates.extend((f"{name}.{sub}", module) for sub, module in child.named_children())
        else:
            candidates.append((name, child))
    steps: list[str] = []
    for name, module in candidates:
        if not any(True for _ in module.parameters()):
            continue
        if steps and isinstance(module, _NORMS):
            continue
        steps.append(name)
    return steps


def cams_for_classes(
    model: nn.Module,
    inputs: torch.Tensor,
    layer: str,
    classes: torch.Tensor,
    method: str = "gradcam++",
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CAMs of one class per image: one batched :func:`explain.cam.compute_cams` call per distinct class (and per
    ``chunk`` images of it, when given, to bound memory).

    Returns:
        ``(maps_layer (N, h, w), maps (N, H, W), logits (N, num_classes))`` float32 CPU tensors, in input order.
    """
    classes = torch.as_tensor(classes, dtype=torch.long).cpu()
    layer_maps: list[torch.Tensor | None] = [None] * len(classes)
    maps: list[torch.Tensor | None] = [None] * len(classes)
    logits: list[torch.Tensor | None] = [None] * len(classes)
    for cls in classes.unique().tolist():
        rows = (classes == cls).nonzero()[:, 0]
        for part in rows.split(chunk or len(rows)):
            result = compute_cams(model, inputs[part.to(inputs.device)], layer, [ClassTarget(int(cls))], method)
            for k, row in enumerate(part.tolist()):
                item = result.maps[k]
                layer_maps[row] = torch.from_numpy(item.maps_layer[layer])
                maps[row] = torch.from_numpy(item.map)
                logits[row] = result.logits[k]
    return torch.stack(layer_maps), torch.stack(maps), torch.stack(logits)


def _compared_maps(model: nn.Module, inputs: torch.Tensor, layer: str, classes: torch.Tensor, method: str,
                   resolution: str, chunk: int | None = None) -> torch.Tensor:
    layer_maps, maps, _ = cams_for_classes(model, inputs, layer, classes, method, chunk)
    return layer_maps if resolution == "layer" else maps


def _check_resolution(resolution: str) -> None:
    if resolution not in ("layer", "input"):
        raise UsageError(f"resolution must be 'layer' or 'input', got {resolution!r}")


def sanity_correlations(
    model: nn.Module,
    inputs: torch.Tensor,
    layer: str,
    classes: torch.Tensor,
    *,
    method: str = "gradcam++",
    seed: int = 0,
    cascade_from: str | None = None,
    resolution: str = "layer",
    scheme: str = "recalibrated",
) -> torch.Tensor:
    """Spearman correlation between the CAMs of the trained and of the randomised model (Adebayo et al. 2018).

    Each image is explained for the same class (``classes``) by ``model`` and by
    ``randomized_model(model, seed, cascade_from, calibration=inputs, scheme=scheme)`` (with the default scheme,
    BatchNorm statistics re-estimated on these very images). A method that passes the sanity check gives *low*
    correlation: its maps depend on what the network learnt.

    Which maps are compared (decision): by default the unnormalised ``map_layer`` at the layer's own resolution
    (``resolution="layer"``). Adebayo et al. compare normalised maps; Spearman's rank correlation is invariant to
    the per-map min-max normalisation, so this is the same up to the resolution. The upsampled ``map`` holds no more
    information than ``map_layer`` (it is a fixed bilinear interpolation of its ``h w`` values), but it counts each
    value hundreds of times with smooth ramps in between, so the statistic then depends on the input size and on
    the interpolation footprint of each cell rather than on the ``h w`` independent values (on the 8 sample photos
    the two differ by up to 0.06, in either direction). ``resolution="input"`` compares the upsampled maps instead.

    Which class (decision): the class given, normally the trained model's prediction, for both networks. The
    paper's code explains each network's own top class; on a random network that is the class whose random weights
    happen to align best with the image's activation energy, which pulls even Grad-CAM's map towards that energy
    (measured: Grad-CAM's median rho 0.34 with the random network's own class vs -0.03 with the trained class, 24
    Caltech photos), so it measures the class choice rather than the explanation's dependence on the weights.

    Measured on the embedded EfficientNet-Lite0 (layer ``_head_act``, 8 sample photos, top-1 class, seeds 0/1/2):
    Grad-CAM++ mean rho 0.52/0.52/0.55 (per image -0.12 to 0.87), Grad-CAM 0.00/0.09/0.03; randomising only the
    classifier (``cascade_from="_fc"``) leaves Grad-CAM++ at 0.93-0.99. Grad-CAM++'s channel weights are never
    negative, so on a random network its map is a positive mix of activation maps, which still follow the image's
    structure: a known weakness of the method (see :mod:`explain.cam`), which this check is meant to expose. Binder
    et al. (2022, https://arxiv.org/abs/2211.12486) show the general mechanism: top-down randomisation keeps the
    scale of forward activations, so strongly activated channels keep contributing to a randomised network's maps.

    Returns:
        ``(N,)`` float32; NaN where either map is constant (e.g. all zero: no channel had a positive weighted sum).
    """
    _check_resolution(resolution)
    trained = _compared_maps(model, inputs, layer, classes, method, resolution)
    random_net = randomized_model(model, seed, cascade_from, calibration=inputs, scheme=scheme)
    return spearman(trained, _compared_maps(random_net, inputs, layer, classes, method, resolution))


@dataclass
class CascadeResult:
    """Rank correlations of a cascading randomisation (:func:`sanity_cascade`).

    Attributes:
        steps: the cascade's steps in the order they ran: ``steps[k]`` is the module from which everything was
            randomised at step ``k`` (the first step randomises only the top; the last, ``"(all)"``, everything).
        rho: method -> ``(len(steps), N)`` float32 Spearman correlations with the trained network's maps (NaN
            where a map is constant). ``rho[m][-1]`` is the full randomisation, as :func:`sanity_correlations`.
    """

    steps: list[str]
    rho: dict[str, torch.Tensor]


def sanity_cascade(
    model: nn.Module,
    inputs: torch.Tensor,
    layer: str,
    classes: torch.Tensor,
    *,
    methods: Sequence[str] = ("gradcam++", "gradcam"),
    seed: int = 0,
    scheme: str = "recalibrated",
    cascade: bool = True,
    chunk: int = 16,
    on_step: Callable[[], None] | None = None,
) -> CascadeResult:
    """Adebayo et al.'s cascading randomisation (Sec. 3.1, Fig. 2): randomise the network from the top down, one
    :func:`cascade_blocks` step more each time, and compare every method's maps with the trained network's.

    Each step builds one randomised copy (:func:`randomized_model` with ``cascade_from`` = that step's module,
    calibrated on ``inputs`` under the default scheme) that every method shares; the last step randomises
    everything (``cascade_from=None``). ``cascade=False`` runs only that last step. Maps are compared at the
    layer's resolution (see :func:`sanity_correlations` for that choice and for the class explained). Maps are
    computed ``chunk`` images at a time, so memory does not grow with ``N``; the results do not depend on ``chunk``.

    Args:
        model: the trained network (left as found).
        inputs: ``(N, C, H, W)`` preprocessed images; also the calibration data.
        layer: dotted name of the explained layer.
        classes: ``(N,)`` class explained in each image (on both networks).
        methods: CAM methods compared.
        seed: seed of the random weights (each step draws afresh under it).
        scheme: see :func:`randomized_model`.
        cascade: run every step (``True``) or only the full randomisation.
        chunk: images per forward/backward pass.
        on_step: called after each step (progress).

    Returns:
        The :class:`CascadeResult`.
    """
    blocks = cascade_blocks(model)
    starts: list[str | None] = [*reversed(blocks[1:]), None] if cascade else [None]
    names = [*reversed(blocks[1:]), "(all)"] if cascade else ["(all)"]
    trained = {m: _compared_maps(model, inputs, layer, classes, m, "layer", chunk) for m in methods}
    rho: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    for start in starts:
        net = randomized_model(model, seed, start, calibration=inputs, scheme=scheme)
        for m in methods:
            rho[m].append(spearman(trained[m], _compared_maps(net, inputs, layer, classes, m, "layer", chunk)))
        del net
        if on_step is not None:
            on_step()
    return CascadeResult(steps=names, rho={m: torch.stack(v) for m, v in rho.items()})


def cascade_length(model: nn.Module, cascade: bool = True) -> int:
    """How many steps :func:`sanity_cascade` runs on ``model`` (for progress bars)."""
    return max(1, len(cascade_blocks(model))) if cascade else 1


# ----------------------------------------------------------------------------------------------------------------
# Stability: translation


@dataclass
class TranslationResult:
    """What shifting the images did.

    Attributes:
        shifts: the ``(dy, dx)`` applied, in pixels (positive = content moves down / right).
        prob_change: ``(N, len(shifts))``: probability of the original top-1 class on the shifted image minus on the
            original.
        top1_kept: ``(N, len(shifts))`` bool: the shifted image has the same top-1 class.
        peak_shift: ``(N, len(shifts))`` Euclidean distance in pixels between the CAM peak of the shifted image and
            the original peak moved by the shift (0 = the map moved with the image).
    """

    shifts: list[tuple[int, int]]
    prob_change: torch.Tensor
    top1_kept: torch.Tensor
    peak_shift: torch.Tensor


def shift_images(inputs: torch.Tensor, dy: int, dx: int, fill: float = 0.0) -> torch.Tensor:
    """Translate ``(N, C, H, W)`` images by ``(dy, dx)`` pixels; uncovered pixels get ``fill``.

    ``out[..., y, x] = in[..., y - dy, x - dx]`` where that exists.
    """
    height, width = inputs.shape[-2:]
    out = torch.full_like(inputs, fill)
    if abs(dy) >= height or abs(dx) >= width:
        return out
    ys, yd = slice(max(0, -dy), height - max(0, dy)), slice(max(0, dy), height - max(0, -dy))
    xs, xd = slice(max(0, -dx), width - max(0, dx)), slice(max(0, dx), width - max(0, -dx))
    out[..., yd, xd] = inputs[..., ys, xs]
    return out


def translation_test(
    model: nn.Module,
    inputs: torch.Tensor,
    layer: str,
    *,
    shift: int = 8,
    method: str = "gradcam++",
) -> TranslationResult:
    """Shift each image by ``+-shift`` pixels horizontally and vertically; compare prediction and CAM peak.

    The shifts are ``(0, +k), (0, -k), (+k, 0), (-k, 0)`` as ``(dy, dx)``. The shifted preprocessed input is filled
    with 0 where the image moved away (the same zero substrate as :func:`deletion_curves`: the normalisation mean
    colour). The original top-1 class is explained on the original and on every shifted copy with one batched
    CAM call per distinct class (:func:`cams_for_classes`); peaks are those of the upsampled ``map`` at input
    resolution (:func:`peak_locations`). With a coarse layer (7 x 7 for a 224 input: cells of 32 px) the peak of an
    upsampled CAM sits near a cell centre and moves in jumps of whole cells, so ``peak_shift`` is quantised: a peak
    that stayed in its cell reads ``shift`` (8 px by default), one that followed the image into the next cell reads
    about ``32 - shift``; larger values mean the peak jumped to another part of the object or image.

    Returns:
        A :class:`TranslationResult` (CPU tensors).
    """
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        raise UsageError("inputs must be a (N, C, H, W) tensor")
    if shift < 0:
        raise UsageError(f"shift must be >= 0 pixels, got {shift}")
    if shift >= min(inputs.shape[-2:]):
        raise UsageError(f"shift must be smaller than the input ({inputs.shape[-1]}x{inputs.shape[-2]} pixels), "
                         f"got {shift}")
    shifts = [(0, shift), (0, -shift), (shift, 0), (-shift, 0)]
    n = inputs.shape[0]
    with eval_mode(model), torch.no_grad():
        # a copy: a model may modify its input in place, and the shifted copies below are made from ``inputs``
        top1 = model(inputs.to(model_device(model, inputs.device), copy=True)).argmax(1).cpu()
    batch = torch.cat([inputs, *(shift_images(inputs, dy, dx) for dy, dx in shifts)])  # original first, then shifts
    _, maps, logits = cams_for_classes(model, batch, layer, top1.repeat(len(shifts) + 1), method)
    probs = torch.softmax(logits, dim=1).view(len(shifts) + 1, n, -1)
    p_class = probs.gather(2, top1.view(1, n, 1).expand(len(shifts) + 1, n, 1))[..., 0]  # (1+S, N)
    peaks = peak_locations(maps).view(len(shifts) + 1, n, 2)
    moved = peaks[:1] + torch.tensor(shifts, dtype=peaks.dtype)[:, None, :]  # (S, N, 2)
    return TranslationResult(
        shifts=shifts,
        prob_change=(p_class[1:] - p_class[:1]).T.contiguous(),
        top1_kept=(probs[1:].argmax(2) == top1[None]).T.contiguous(),
        peak_shift=(peaks[1:] - moved).norm(dim=2).T.contiguous(),
    )
