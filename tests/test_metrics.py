"""Audit metrics (explain/metrics.py) on constructed cases with known answers, plus one check on the embedded model.

Localisation: box masks, energy in the box, pointing game (against a brute-force distance transform).
Faithfulness: deletion/insertion on hand-built models whose class probability is a known function of the pixels
(hand-computed trapezoids, a perfect map against its reverse), chunking and batching invariance.
Sanity: Spearman against scipy (with ties), model randomisation (original untouched, every parameter changed,
cascade, BatchNorm recalibration), the correlation of trained vs randomised CAMs.
Stability: translation on an exactly translation-equivariant model gives peak_shift 0 and the same prediction.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch
from torch import nn

from explain.cam import compute_cams
from explain.errors import LayerError, UsageError
from explain.metrics import (
    boxes_to_mask,
    cams_for_classes,
    deletion_curves,
    energy_in_mask,
    gaussian_blur,
    insertion_curves,
    peak_locations,
    pointing_hits,
    random_maps,
    cascade_blocks,
    cascade_length,
    randomized_model,
    sanity_cascade,
    sanity_correlations,
    shift_images,
    spearman,
    translation_test,
)
from explain.targets import ClassTarget


pytestmark = pytest.mark.usefixtures("one_thread")


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


# --------------------------------------------------------------------------------------------------------------------
# Boxes and localisation
# --------------------------------------------------------------------------------------------------------------------


def test_boxes_cover_pixels_whose_centres_are_inside() -> None:
    mask = boxes_to_mask([(1, 0, 3, 2)], (4, 5))
    expected = np.zeros((4, 5), bool)
    expected[0:2, 1:3] = True
    assert mask.dtype == torch.bool and np.array_equal(mask.numpy(), expected)
    # Fractional corners: centres 0.5, 1.5, 2.5 -> x in [0.4, 2.5) keeps columns 0, 1 (2.5 is excluded, half-open).
    mask = boxes_to_mask([(0.4, 0.6, 2.5, 1.6)], (3, 4))
    expected = np.zeros((3, 4), bool)
    expected[1, 0:2] = True
    assert np.array_equal(mask.numpy(), expected)


def test_boxes_are_clipped_united_and_empty() -> None:
    mask = boxes_to_mask([(-10, -10, 1, 1), (3, 2, 99, 99)], (4, 5))
    expected = np.zeros((4, 5), bool)
    expected[0, 0] = True
    expected[2:, 3:] = True
    assert np.array_equal(mask.numpy(), expected)
    assert not boxes_to_mask([], (3, 3)).any()
    assert not boxes_to_mask([(2, 2, 2, 3)], (4, 4)).any()  # zero width
    assert not boxes_to_mask([(10, 10, 20, 20)], (4, 4)).any()  # entirely outside
    with pytest.raises(UsageError, match="x0 <= x1"):
        boxes_to_mask([(3, 0, 1, 2)], (4, 4))
    with pytest.raises(UsageError):
        boxes_to_mask([(0, 0, float("nan"), 2)], (4, 4))


def test_energy_in_mask_known_values() -> None:
    mask = boxes_to_mask([(0, 0, 2, 4)], (4, 4))  # left half
    inside = torch.zeros(4, 4)
    inside[1:3, 0:2] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    half = torch.ones(4, 4)
    hand = torch.tensor([[1.0, 0, 0, 3], [0, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 4]])  # inside 1 + 2, total 10
    zero = torch.zeros(4, 4)
    maps = torch.stack([inside, half, hand, zero, half])
    masks = torch.stack([mask, mask, mask, mask, torch.zeros(4, 4, dtype=torch.bool)])
    energy = energy_in_mask(maps, masks)
    assert energy[:3].tolist() == pytest.approx([1.0, 0.5, 0.3])
    assert torch.isnan(energy[3:]).all()  # a map summing to 0; an empty mask
    # Batched = one by one.
    for i in range(3):
        assert energy_in_mask(maps[i : i + 1], masks[i : i + 1])[0] == energy[i]
    with pytest.raises(UsageError, match="non-negative"):
        energy_in_mask(-maps, masks)
    with pytest.raises(UsageError, match="same shape"):
        energy_in_mask(maps, masks[:, :2])


def point_map(size: int, y: int, x: int) -> torch.Tensor:
    m = torch.zeros(size, size)
    m[y, x] = 1.0
    return m


def test_pointing_hit_just_inside_and_just_outside_the_tolerance() -> None:
    mask = boxes_to_mask([(30, 30, 31, 31)], (64, 64))  # one pixel, (30, 30)
    maps = torch.stack(
        [
            point_map(64, 30, 30),  # on it
            point_map(64, 45, 30),  # distance 15: hit (<=)
            point_map(64, 30 + 12, 30 + 9),  # distance 15 exactly (9-12-15): hit
            point_map(64, 45, 31),  # sqrt(226) = 15.03: miss
            point_map(64, 30 + 11, 30 + 11),  # 15.56: miss
        ]
    )
    hits = pointing_hits(maps, mask.expand(5, 64, 64))
    assert hits.tolist() == [True, True, True, False, False]
    assert pointing_hits(maps[3:4], mask[None], tolerance=15.1).tolist() == [True]
    assert pointing_hits(maps[1:2], mask[None], tolerance=0).tolist() == [False]
    assert pointing_hits(maps[:1], torch.zeros(1, 64, 64, dtype=torch.bool)).tolist() == [False]


def test_pointing_ties_any_maximum_counts() -> None:
    mask = boxes_to_mask([(0, 0, 4, 4)], (40, 40))
    far_then_near = torch.zeros(40, 40)
    far_then_near[0, 39] = 1.0  # first in row-major order, far from the box
    far_then_near[35, 2] = 1.0  # also maximal; 32 px below the box: still a miss
    assert pointing_hits(far_then_near[None], mask[None]).tolist() == [False]
    far_then_near[10, 2] = 1.0  # a third maximum 7 px below the box: a hit
    assert pointing_hits(far_then_near[None], mask[None]).tolist() == [True]
    assert peak_locations(far_then_near[None]).tolist() == [[0.0, 39.0]]


def test_pointing_matches_a_brute_force_distance_transform() -> None:
    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.random((24, 48, 40)).astype(np.float32))
    masks = torch.zeros(24, 48, 40, dtype=torch.bool)
    for i in range(24):
        x0, y0 = rng.integers(0, 40), rng.integers(0, 48)
        masks[i, y0 : y0 + rng.integers(1, 8), x0 : x0 + rng.integers(1, 8)] = True
    for tol in (0.0, 3.0, 7.5, 15.0):
        got = pointing_hits(maps, masks, tolerance=tol)
        expected = []
        for m, k in zip(maps.numpy(), masks.numpy(), strict=True):
            dist = scipy.ndimage.distance_transform_edt(~k)  # distance of each pixel to the nearest mask pixel
            expected.append(bool(dist.flat[m.argmax()] <= tol))
        assert got.tolist() == expected
    assert 0 < sum(expected) < 24  # both outcomes occur


def test_peak_locations_first_in_row_major_order() -> None:
    maps = torch.zeros(3, 5, 6)
    maps[0, 2, 4] = 3.0
    maps[1, 3, 1] = maps[1, 1, 5] = 2.0  # tie: (1, 5) comes first
    peaks = peak_locations(maps)
    assert peaks.dtype == torch.float32
    assert peaks.tolist() == [[2.0, 4.0], [1.0, 5.0], [0.0, 0.0]]


# --------------------------------------------------------------------------------------------------------------------
# Deletion and insertion
# --------------------------------------------------------------------------------------------------------------------


class SumModel(nn.Module):
    """Two logits: ``(sum of the weighted pixels of channel 0, 0)``, so ``p_0 = sigmoid(sum_p w_p x_p)``."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x[:, 0] * self.w).flatten(1).sum(1)
        return torch.stack([s, torch.zeros_like(s)], 1)


X4 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None]


def test_deletion_and_insertion_equal_hand_computed_trapezoids() -> None:
    model = SumModel(torch.ones(2, 2))
    # The map is the input itself: order (1,1)=4, (1,0)=3, (0,1)=2, (0,0)=1; 2 steps change 0, 2, 4 pixels.
    d = deletion_curves(model, X4, X4[:, 0], torch.tensor([0]), steps=2)
    p = [sigmoid(10.0), sigmoid(1.0 + 2.0), 0.5]  # all; 4 and 3 deleted (to 0); nothing left
    assert d.fractions.tolist() == [0.0, 0.5, 1.0]
    assert d.scores[0].tolist() == pytest.approx(p, rel=1e-6)
    assert d.auc.item() == pytest.approx(0.5 * (p[0] + p[1]) / 2 + 0.5 * (p[1] + p[2]) / 2, rel=1e-6)
    i = insertion_curves(model, X4, X4[:, 0], torch.tensor([0]), steps=2, substrate=torch.zeros(()))
    q = [0.5, sigmoid(7.0), sigmoid(10.0)]
    assert i.scores[0].tolist() == pytest.approx(q, rel=1e-6)
    assert i.auc.item() == pytest.approx(0.5 * (q[0] + q[1]) / 2 + 0.5 * (q[1] + q[2]) / 2, rel=1e-6)
    # Class 1 has logit 0: its probability is 1 - p.
    d1 = deletion_curves(model, X4, X4[:, 0], torch.tensor([1]), steps=2)
    assert d1.scores[0].tolist() == pytest.approx([1 - v for v in p], rel=1e-5)


def test_ties_are_deleted_in_row_major_order() -> None:
    model = SumModel(torch.ones(2, 2))
    d = deletion_curves(model, X4, torch.zeros(1, 2, 2), torch.tensor([0]), steps=2)
    # (0,0)=1 and (0,1)=2 go first: 3 + 4 remain.
    assert d.scores[0, 1].item() == pytest.approx(sigmoid(7.0), rel=1e-6)
    # An odd split: 3 steps of 4 pixels change round(4/3) = 1, round(8/3) = 3 pixels.
    d3 = deletion_curves(model, X4, X4[:, 0], torch.tensor([0]), steps=3)
    assert d3.fractions.tolist() == [0.0, 0.25, 0.75, 1.0]
    assert d3.scores[0, 1:3].tolist() == pytest.approx([sigmoid(6.0), sigmoid(1.0)], rel=1e-6)


def numpy_deletion(w: np.ndarray, x: np.ndarray, m: np.ndarray, steps: int, substrate: np.ndarray) -> np.ndarray:
    """Independent reference for SumModel: the RISE loop written out, one step at a time, in NumPy."""
    order = np.argsort(-m.ravel(), kind="stable")  # decreasing, ties in row-major order
    scores = []
    for s in range(steps + 1):
        k = int(np.floor(s * m.size / steps + 0.5))
        img = x.ravel().copy()
        img[order[:k]] = substrate.ravel()[order[:k]]
        scores.append(1.0 / (1.0 + np.exp(-(w.ravel() * img).sum())))
    return np.array(scores)


def test_deletion_and_insertion_match_a_numpy_reference_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 11)).astype(np.float32) * 0.3
    x = rng.normal(size=(3, 1, 12, 11)).astype(np.float32)
    maps = np.floor(rng.random((3, 12, 11)) * 3).astype(np.float32)  # three levels: ties everywhere
    blur = gaussian_blur(torch.from_numpy(x)).numpy()
    model = SumModel(torch.from_numpy(w))
    classes = torch.zeros(3, dtype=torch.long)
    d = deletion_curves(model, torch.from_numpy(x), torch.from_numpy(maps), classes, steps=7, batch_size=5)
    i = insertion_curves(model, torch.from_numpy(x), torch.from_numpy(maps), classes, steps=7, batch_size=5)
    for n in range(3):
        ref_d = numpy_deletion(w, x[n, 0], maps[n], 7, np.zeros_like(x[n, 0]))
        ref_i = numpy_deletion(w, blur[n, 0], maps[n], 7, x[n, 0])  # insertion = deleting the blur towards the input
        np.testing.assert_allclose(d.scores[n].numpy(), ref_d, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(i.scores[n].numpy(), ref_i, rtol=1e-5, atol=1e-6)
        fractions = np.floor(np.arange(8) * 132 / 7 + 0.5) / 132
        np.testing.assert_allclose(d.auc[n].item(), np.trapezoid(ref_d, fractions), rtol=1e-5)


def region_model() -> nn.Module:
    """p_0 = sigmoid(8 * (mean of the top-left 4x4 region of channel 0 - 0.5)); the rest of the image is ignored."""
    w = torch.zeros(8, 8)
    w[:4, :4] = 8.0 / 16
    model = SumModel(w)

    class Shifted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) - torch.tensor([4.0, 0.0])

    return Shifted()


def test_a_perfect_map_beats_its_reverse() -> None:
    model = region_model()
    x = 0.5 + torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # all pixels in [0.5, 1.5)
    perfect = torch.zeros(3, 8, 8)
    perfect[:, :4, :4] = 1.0 + torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1))
    reverse = -perfect
    classes = torch.zeros(3, dtype=torch.long)
    zero = torch.zeros(())
    d_perfect = deletion_curves(model, x, perfect, classes, steps=8)
    d_reverse = deletion_curves(model, x, reverse, classes, steps=8)
    i_perfect = insertion_curves(model, x, perfect, classes, steps=8, substrate=zero)
    i_reverse = insertion_curves(model, x, reverse, classes, steps=8, substrate=zero)
    assert (d_perfect.auc < d_reverse.auc - 0.2).all()
    assert (i_perfect.auc > i_reverse.auc + 0.2).all()
    # The reverse map deletes the region during the last quarter only: the probability is untouched until 3/4.
    assert torch.allclose(d_reverse.scores[:, :7], d_reverse.scores[:, :1].expand(3, 7))
    # Deletion ends at the substrate: sigmoid(-4); insertion at the input.
    assert torch.allclose(d_perfect.scores[:, -1], torch.full((3,), sigmoid(-4.0)))
    assert torch.allclose(i_perfect.scores[:, -1], d_perfect.scores[:, 0])


def test_curves_batch_and_chunking_do_not_matter() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    )
    x = torch.randn(4, 3, 10, 12)
    maps = torch.rand(4, 10, 12)
    classes = torch.tensor([0, 3, 1, 4])
    for fn in (deletion_curves, insertion_curves):
        whole = fn(model, x, maps, classes, steps=6, batch_size=5)
        big = fn(model, x, maps, classes, steps=6, batch_size=1000)
        torch.testing.assert_close(whole.scores, big.scores)
        for i in range(4):
            one = fn(model, x[i : i + 1], maps[i : i + 1], classes[i : i + 1], steps=6, batch_size=3)
            torch.testing.assert_close(one.scores[0], whole.scores[i], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(one.auc[0], whole.auc[i], rtol=1e-5, atol=1e-6)


def test_substrates_and_model_left_as_found() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Dropout(0.5), nn.LazyLinear(3))
    x = torch.randn(2, 3, 6, 6)
    model(x)  # materialise the lazy layer (and update the BatchNorm statistics once)
    model.train()
    model[1].eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    maps, classes = torch.rand(2, 6, 6), torch.tensor([0, 2])
    d = deletion_curves(model, x, maps, classes, steps=4)
    assert [m.training for m in model.modules()] == [True, True, False, True, True, True]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    # Deterministic (dropout off), and the default deletion substrate is zero.
    zero = deletion_curves(model, x, maps, classes, steps=4, substrate=torch.zeros(3, 1, 1))
    torch.testing.assert_close(d.scores, zero.scores)
    # A callable substrate; the default insertion substrate is RISE's blur.
    blur = insertion_curves(model, x, maps, classes, steps=4, substrate=lambda t: gaussian_blur(t, 11, 5.0))
    torch.testing.assert_close(blur.scores, insertion_curves(model, x, maps, classes, steps=4).scores)
    with pytest.raises(UsageError, match="broadcast"):
        deletion_curves(model, x, maps, classes, substrate=torch.zeros(2, 2))
    with pytest.raises(UsageError, match="maps"):
        deletion_curves(model, x, maps[:, :3], classes)


def test_gaussian_blur_equals_scipy() -> None:
    x = torch.rand(2, 3, 17, 13, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = gaussian_blur(x, 11, 5.0)
    # scipy's "mirror" is torch's "reflect" (the edge pixel is not repeated); truncate=1 gives radius 5 for sigma 5.
    expected = scipy.ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 5.0, 5.0), mode="mirror", truncate=1.0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_random_maps_are_seeded_and_coarse_when_asked() -> None:
    state = torch.get_rng_state()
    a = random_maps((3, 16, 16), seed=4)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched
    assert torch.equal(a, random_maps((3, 16, 16), seed=4)) and not torch.equal(a, random_maps((3, 16, 16), seed=5))
    assert a.shape == (3, 16, 16) and a.min() >= 0 and a.max() <= 1
    coarse = random_maps((3, 16, 16), like=(2, 2), seed=4)
    cells = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(4))[:, 0]
    # Bilinear (align_corners=False) from 2x2 to 16x16: each 4x4 corner block lies beyond the cell centres and
    # repeats its cell's value; the map varies only in between.
    assert torch.allclose(coarse[:, :4, :4], cells[:, :1, :1].expand(3, 4, 4))
    assert torch.allclose(coarse[:, 12:, 12:], cells[:, 1:, 1:].expand(3, 4, 4))
    constant = torch.rand(2, generator=torch.Generator().manual_seed(0))[:, None, None].expand(2, 5, 7)
    assert torch.allclose(random_maps((2, 5, 7), like=(1, 1)), constant)


# --------------------------------------------------------------------------------------------------------------------
# Spearman and model randomisation
# --------------------------------------------------------------------------------------------------------------------


def test_spearman_equals_scipy_with_ties() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(6, 40)).astype(np.float32)  # many ties
    b = (a + rng.integers(0, 3, size=(6, 40))).astype(np.float32)
    b[0] = rng.random(40)
    b[1] = -a[1]
    got = spearman(torch.from_numpy(a), torch.from_numpy(b))
    expected = [scipy.stats.spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-7)
    assert got[1].item() == pytest.approx(-1.0)
    # (N, h, w) maps are flattened per row; a constant row has no ranking.
    maps = torch.from_numpy(a.reshape(6, 5, 8))
    maps[2] = 0
    rho = spearman(maps, torch.from_numpy(b.reshape(6, 5, 8)))
    assert torch.isnan(rho[2]) and torch.isfinite(rho[[0, 1, 3, 4, 5]]).all()


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)  # 6x6 -> 3x3: layer maps coarser than the input
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, 5)
        self.scale = nn.Parameter(torch.tensor(1.5))  # a parameter of a module without reset_parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(self.flatten(self.pool(x))) * self.scale


def trained_tiny() -> TinyNet:
    """A TinyNet with 'trained-looking' values everywhere (no parameter at its initial value)."""
    torch.manual_seed(3)
    net = TinyNet()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name != "scale":
                p.add_(torch.randn_like(p) * 0.3)
        for bn in (net.bn1, net.bn2):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_randomized_model_leaves_the_original_and_changes_every_parameter() -> None:
    net = trained_tiny()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng_state = torch.get_rng_state()
    rand = randomized_model(net, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # bit-identical
    original = dict(net.named_parameters())
    for name, p in rand.named_parameters():
        assert not torch.equal(p, original[name]), name
        assert p.requires_grad
    assert not rand.training
    # BatchNorm: affine reset (1, 0) and statistics reset (no calibration data).
    assert torch.equal(rand.bn1.weight, torch.ones(6)) and torch.equal(rand.bn1.bias, torch.zeros(6))
    assert torch.equal(rand.bn2.running_var, torch.ones(8)) and torch.equal(rand.bn2.running_mean, torch.zeros(8))
    # Seeded.
    again = randomized_model(net, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(rand.state_dict().values(), again.state_dict().values(), strict=True))
    other = randomized_model(net, seed=1)
    assert not torch.equal(other.conv1.weight, rand.conv1.weight)


def test_cascade_from_randomises_that_layer_and_everything_after() -> None:
    net = trained_tiny()
    rand = randomized_model(net, seed=0, cascade_from="conv2")
    # The root owns "scale" and comes before conv2 in registration order: kept too.
    kept = {"conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "scale"}
    original = dict(net.named_parameters())
    for name, p in rand.named_parameters():
        assert torch.equal(p, original[name]) == (name in kept), name
    assert torch.equal(rand.bn1.running_mean, net.bn1.running_mean)
    with pytest.raises(LayerError, match="conv2"):
        randomized_model(net, cascade_from="conv3")


def test_calibration_sets_batchnorm_statistics_to_those_of_the_data() -> None:
    net = trained_tiny()
    net.train()  # the copy must come back in eval mode; the original keeps its flag
    x = torch.randn(5, 3, 6, 7, generator=torch.Generator().manual_seed(0))
    rand = randomized_model(net, seed=2, calibration=x)
    assert net.training and not rand.training
    assert rand.bn1.momentum == net.bn1.momentum
    with torch.no_grad():
        h = rand.conv1(x)
        torch.testing.assert_close(rand.bn1.running_mean, h.mean((0, 2, 3)))
        torch.testing.assert_close(rand.bn1.running_var, h.var((0, 2, 3), unbiased=True))
        # One calibration pass, as in training mode: bn2 saw bn1's output normalised with the batch statistics.
        normed = torch.nn.functional.batch_norm(h, None, None, rand.bn1.weight, rand.bn1.bias, True, 0.0, rand.bn1.eps)
        h2 = rand.conv2(rand.relu1(normed))
        torch.testing.assert_close(rand.bn2.running_mean, h2.mean((0, 2, 3)))
        torch.testing.assert_close(rand.bn2.running_var, h2.var((0, 2, 3), unbiased=True))
        # Normalised activations: eval-mode bn2 (affine 1, 0) output has mean 0 and variance ~1 on the data.
        out = rand.bn2(h2)
        assert out.mean().abs() < 1e-4 and abs(out.var().item() - 1) < 0.05


def test_cams_for_classes_equals_one_call_per_image() -> None:
    net = trained_tiny()
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    classes = torch.tensor([2, 0, 2, 4])
    layer_maps, maps, logits = cams_for_classes(net, x, "relu2", classes)
    for i, c in enumerate(classes.tolist()):
        one = compute_cams(net, x[i : i + 1], "relu2", [ClassTarget(c)], "gradcam++")
        np.testing.assert_allclose(layer_maps[i].numpy(), one.maps[0].maps_layer["relu2"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(maps[i].numpy(), one.maps[0].map, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits[i], one.logits[0])


def test_sanity_correlations_compare_the_layer_maps_of_both_models() -> None:
    net = trained_tiny()
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    classes = torch.tensor([1, 3, 1, 0])
    got = sanity_correlations(net, x, "relu2", classes, method="gradcam", seed=5)
    rand = randomized_model(net, seed=5, calibration=x)
    trained_maps, trained_up, _ = cams_for_classes(net, x, "relu2", classes, "gradcam")
    rand_maps, rand_up, _ = cams_for_classes(rand, x, "relu2", classes, "gradcam")
    torch.testing.assert_close(got, spearman(trained_maps, rand_maps), equal_nan=True)
    up = sanity_correlations(net, x, "relu2", classes, method="gradcam", seed=5, resolution="input")
    torch.testing.assert_close(up, spearman(trained_up, rand_up), equal_nan=True)
    with pytest.raises(UsageError):
        sanity_correlations(net, x, "relu2", classes, resolution="pixels")


def test_he_identity_scheme_draws_he_normal_weights_and_makes_batchnorm_the_identity() -> None:
    net = nn.Sequential(nn.Conv2d(64, 64, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        net[1].running_mean.fill_(3.0)
        net[1].weight.fill_(2.0)
    x = torch.randn(2, 64, 3, 3)
    rand = randomized_model(net.eval(), seed=0, scheme="he-identity", calibration=x)  # calibration not used
    conv, bn, fc = rand[0], rand[1], rand[4]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    assert conv.weight.mean().abs().item() < 0.003
    assert fc.weight.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.1)
    assert torch.equal(conv.bias, torch.zeros(64)) and torch.equal(fc.bias, torch.zeros(10))
    assert torch.equal(bn.running_mean, torch.zeros(64)) and torch.equal(bn.running_var, torch.ones(64))
    assert torch.equal(bn.weight, torch.ones(64)) and torch.equal(bn.bias, torch.zeros(64))
    with pytest.raises(UsageError, match="he-identity"):
        randomized_model(net, scheme="xavier")


def test_cascade_blocks_open_containers_and_keep_norms_with_their_layer(lite0) -> None:
    assert cascade_blocks(trained_tiny()) == ["conv1", "conv2", "fc"]
    seq = nn.Sequential(OrderedDict(features=nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                                           nn.Conv2d(4, 4, 3)),
                                    pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), head=nn.Linear(4, 2)))
    assert cascade_blocks(seq) == ["features.0", "features.3", "head"]
    blocks = cascade_blocks(lite0.model)
    assert blocks == ["_conv_stem", *(f"_blocks.{i}" for i in range(16)), "_conv_head", "_fc"]
    assert cascade_length(lite0.model) == 19 and cascade_length(lite0.model, cascade=False) == 1


def test_sanity_cascade_steps_are_single_randomisations_from_the_top() -> None:
    net = trained_tiny()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(5, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    classes = torch.tensor([1, 3, 1, 0, 4])
    calls = []
    result = sanity_cascade(net, x, "relu2", classes, methods=("gradcam", "gradcam++"), seed=4, chunk=2,
                            on_step=lambda: calls.append(1))
    assert result.steps == ["fc", "conv2", "(all)"] and len(calls) == 3
    for method in ("gradcam", "gradcam++"):
        assert result.rho[method].shape == (3, 5)
        for k, start in enumerate(["fc", "conv2", None]):
            expected = sanity_correlations(net, x, "relu2", classes, method=method, seed=4, cascade_from=start)
            torch.testing.assert_close(result.rho[method][k], expected, equal_nan=True)
    whole = sanity_cascade(net, x, "relu2", classes, methods=("gradcam",), seed=4, cascade=False)
    assert whole.steps == ["(all)"]
    torch.testing.assert_close(whole.rho["gradcam"][0], result.rho["gradcam"][-1], equal_nan=True)  # chunk-free
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# --------------------------------------------------------------------------------------------------------------------
# Translation
# --------------------------------------------------------------------------------------------------------------------


def test_shift_images_moves_content_and_fills_with_zero() -> None:
    x = torch.arange(1, 13, dtype=torch.float32).view(1, 1, 3, 4)
    right = shift_images(x, 0, 1)
    assert right[0, 0].tolist() == [[0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11]]
    up = shift_images(x, -2, 0)
    assert up[0, 0].tolist() == [[9, 10, 11, 12], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert not shift_images(x, 0, 9).any()


def equivariant_model() -> nn.Sequential:
    """conv 3x3 (zero padding, stride 1) -> ReLU -> global average pool -> linear.

    On an image that is zero within ``m`` px of every border, shifting by ``k < m - 1`` px with zero fill is an exact
    translation of its content, the convolution (whose zero padding then only ever meets zeros) commutes with it,
    and the global pool is invariant: logits identical, Grad-CAM++ channel weights identical (they depend on the
    pooled gradient and the activation sums only), so the map is the original map translated by exactly ``k``.
    """
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(2, 6, 3, padding=1),
            relu=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(6, 4),
        )
    )


def test_translation_of_an_equivariant_model_moves_the_map_with_the_image() -> None:
    model = equivariant_model()
    with torch.no_grad():
        model.conv.bias.zero_()  # zero input -> zero activation, so the zero border stays zero after the conv
    x = torch.zeros(3, 2, 32, 32)
    x[:, :, 10:22, 9:23] = torch.rand(3, 2, 12, 14, generator=torch.Generator().manual_seed(0))
    result = translation_test(model, x, "relu", shift=4)
    assert result.shifts == [(0, 4), (0, -4), (4, 0), (-4, 0)]
    assert result.top1_kept.all() and result.top1_kept.shape == (3, 4)
    assert result.prob_change.abs().max() < 1e-5
    assert result.peak_shift.shape == (3, 4) and torch.equal(result.peak_shift, torch.zeros(3, 4))
    # Per image = batch.
    one = translation_test(model, x[1:2], "relu", shift=4)
    assert torch.equal(one.peak_shift[0], result.peak_shift[1])


def test_translation_detects_a_map_that_does_not_move() -> None:
    """A layer whose output ignores the image's content position: its peak stays put, so peak_shift = k."""
    model = equivariant_model()
    x = torch.zeros(1, 2, 32, 32)
    x[:, :, 10:22, 9:23] = torch.rand(1, 2, 12, 14, generator=torch.Generator().manual_seed(0))

    class Pinned(nn.Module):
        """Adds a fixed bump at (5, 5) to the conv output, large enough to be the peak of every map."""

        def forward(self, a: torch.Tensor) -> torch.Tensor:
            bump = torch.zeros_like(a)
            bump[..., 5, 5] = 100.0
            return a + bump

    pinned = nn.Sequential(OrderedDict(conv=model.conv, pin=Pinned(), relu=model.relu, pool=model.pool,
                                       flatten=model.flatten, fc=model.fc))
    with torch.no_grad():
        pinned.fc.weight.abs_()  # positive weights: every channel counts, the bump is the peak
    result = translation_test(pinned, x, "relu", shift=3)
    assert torch.allclose(result.peak_shift, torch.full((1, 4), 3.0))


def test_translation_probabilities_of_a_position_dependent_model() -> None:
    """A model that is not translation-invariant (a linear layer on the flattened feature map): the reported
    probability changes and top-1 flags equal those computed directly on the shifted images."""
    torch.manual_seed(1)
    model = nn.Sequential(
        OrderedDict(conv=nn.Conv2d(2, 3, 1), relu=nn.ReLU(), flatten=nn.Flatten(), fc=nn.Linear(3 * 64, 4))
    )
    x = torch.randn(5, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    result = translation_test(model, x, "relu", shift=2)
    with torch.no_grad():
        p0 = torch.softmax(model(x), 1)
        top = p0.argmax(1)
        for j, (dy, dx) in enumerate(result.shifts):
            p = torch.softmax(model(shift_images(x, dy, dx)), 1)
            expected = p.gather(1, top[:, None])[:, 0] - p0.gather(1, top[:, None])[:, 0]
            torch.testing.assert_close(result.prob_change[:, j], expected, rtol=1e-4, atol=1e-6)
            assert torch.equal(result.top1_kept[:, j], p.argmax(1) == top)
    assert result.prob_change.abs().max() > 0.01 and not result.top1_kept.all()


# --------------------------------------------------------------------------------------------------------------------
# The embedded model on real photos
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite_batch(lite0, samples):
    from PIL import Image

    names = ["camera.png", "grace_hopper.jpg", "rocket.jpg"]
    x = torch.stack([lite0.preprocess(Image.open(samples / n).convert("RGB")) for n in names])
    with torch.no_grad():
        top = lite0.model(x).argmax(1)
    return x, top


def test_gradcampp_deletes_faster_than_random_on_photos(lite0, lite_batch) -> None:
    x, top = lite_batch
    _, maps, _ = cams_for_classes(lite0.model, x, lite0.default_layer, top)
    cam = deletion_curves(lite0.model, x, maps, top, steps=6)
    rand = deletion_curves(lite0.model, x, random_maps(maps.shape, like=(7, 7), seed=0), top, steps=6)
    assert (cam.auc < rand.auc).sum() >= 2 and cam.auc.mean() < rand.auc.mean() - 0.05
    assert cam.scores[:, 0].tolist() == pytest.approx(torch.softmax(lite0.model(x), 1).max(1).values.tolist(), rel=1e-4)


def test_sanity_check_on_photos(lite0, lite_batch) -> None:
    x, top = lite_batch
    model, layer = lite0.model, lite0.default_layer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rand = randomized_model(model, seed=0, calibration=x)
    rand_maps, _, _ = cams_for_classes(rand, x, layer, top)
    assert torch.isfinite(rand_maps).all() and (rand_maps.flatten(1).std(1) > 0.05 * rand_maps.flatten(1).amax(1)).all()
    full = sanity_correlations(model, x, layer, top)
    head = sanity_correlations(model, x, layer, top, cascade_from="_fc")
    plain = sanity_correlations(model, x, layer, top, method="gradcam")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # Head-only randomisation keeps Grad-CAM++ maps (a known property); the full cascade decorrelates them.
    assert (head > 0.9).all() and (full < head).all() and full.mean() < 0.8
    assert plain.abs().mean() < 0.4
