"""Feature maps are the layer's true output (a Laplacian layer against loops written here), top-K channels are the
K largest means, and the effective receptive field is zero outside the theoretical one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from explain.activations import (
    activation_figure, check_unit, effective_receptive_field, erf_stats, feature_maps, layer_output_shapes,
    parse_unit, receptive_field_figure, scale_maps, select_channels, shapes_from_table, top_channels,
)
from explain.errors import LayerError, TargetError
from explain.layers import layer_table, receptive_field
from explain.targets import NeuronTarget

LAPLACIAN = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def cross_correlate(image: np.ndarray, kernel: np.ndarray, pad: int) -> np.ndarray:
    """Direct 2-D cross-correlation with zero padding: out[i, j] = sum_uv image[i + u - pad, j + v - pad] k[u, v]."""
    h, w = image.shape
    kh, kw = kernel.shape
    out = np.zeros((h + 2 * pad - kh + 1, w + 2 * pad - kw + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            total = 0.0
            for u in range(kh):
                for v in range(kw):
                    y, x = i + u - pad, j + v - pad
                    if 0 <= y < h and 0 <= x < w:
                        total += image[y, x] * kernel[u, v]
            out[i, j] = total
    return out


def laplacian_model(pad: int) -> nn.Module:
    conv = nn.Conv2d(1, 1, 3, padding=pad, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(LAPLACIAN, dtype=torch.float32).view(1, 1, 3, 3))
    return nn.Sequential(conv)


@pytest.mark.parametrize("pad", [0, 1])
def test_laplacian_feature_map_is_the_cross_correlation(pad: int) -> None:
    model = laplacian_model(pad)
    x = torch.randn(3, 1, 9, 11, generator=torch.Generator().manual_seed(pad))
    maps = feature_maps(model, x, "0").maps
    assert maps.dtype == np.float32 and maps.shape == (3, 1, 9 + 2 * pad - 2, 11 + 2 * pad - 2)
    for n in range(3):
        expected = cross_correlate(x[n, 0].numpy().astype(np.float64), LAPLACIAN, pad)
        np.testing.assert_allclose(maps[n, 0], expected, atol=1e-5)
    # a linear ramp has zero Laplacian away from the border
    ramp = torch.arange(11.0).repeat(9, 1)[None, None]
    out = feature_maps(model, ramp, "0").maps[0, 0]
    interior = out[pad:out.shape[0] - pad, pad:out.shape[1] - pad]
    assert interior.size > 0 and np.abs(interior).max() < 1e-5


def test_top_k_channels_are_the_k_largest_means() -> None:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(40, 6, 5)).astype(np.float32)
    means = maps.reshape(40, -1).mean(1)
    for k in (1, 5, 40):
        top = top_channels(maps, k)
        assert len(top) == k and len(set(top)) == k
        assert sorted(means[top], reverse=True) == list(means[top])  # largest first
        assert min(means[top]) >= max(np.delete(means, top), default=-np.inf)
    ties = np.zeros((4, 2, 2), dtype=np.float32)
    ties[3] += 1.0
    assert top_channels(ties, 3) == [3, 0, 1]  # ties go to the lower index
    assert select_channels(maps, top=3) == top_channels(maps, 3)
    assert select_channels(maps, channels=[7, 2]) == [7, 2]
    assert select_channels(maps, show_all=True) == list(range(40))
    assert len(select_channels(maps)) == 16


def test_colour_scales() -> None:
    maps = np.stack([np.full((2, 2), 1.0), np.array([[0.0, 2.0], [4.0, 4.0]])]).astype(np.float32)
    shared, limits = scale_maps(maps, "shared")
    assert limits == (0.0, 4.0)
    np.testing.assert_allclose(shared[1], maps[1] / 4.0)
    np.testing.assert_allclose(shared[0], 0.25)
    tile, limits = scale_maps(maps, "tile")
    assert limits is None
    np.testing.assert_allclose(tile[0], 0.0)  # a constant tile
    np.testing.assert_allclose(tile[1], maps[1] / 4.0)
    activation_figure(np.zeros((8, 8, 3)), maps, [3, 9], "title", scale="tile")


def _outside(erf: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    mask = np.ones(erf.shape, dtype=bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    mask[y0:y1, x0:x1] = False
    return erf[mask]


def test_erf_is_zero_outside_the_theoretical_field_embedded(lite0, samples) -> None:
    from PIL import Image

    x = lite0.preprocess(Image.open(samples / "chelsea.png").convert("RGB"))[None]
    row = receptive_field(lite0.model, "_blocks.3", lite0.input_size)
    assert row.receptive_field == (35, 35) and row.grid == (28, 28)
    for y, xx in ((10, 10), (0, 27)):  # the second unit's field runs past the border (TF "SAME" padding)
        erf = effective_receptive_field(lite0.model, x, NeuronTarget("_blocks.3", 5, y, xx))
        box = row.unit_box(y, xx, clip_to=(224, 224))
        assert erf.maps.shape == (1, 224, 224)
        assert np.all(_outside(erf.maps[0], box) == 0.0)
        assert erf.maps[0].sum() > 0
        stats = erf_stats(erf.maps[0], box)
        assert stats["mass_in_box"] == pytest.approx(1.0) and 0 < stats["area_90"] < 1
        sx0, sy0, sx1, sy1 = stats["support"]
        assert box[0] <= sx0 and box[1] <= sy0 and sx1 <= box[2] and sy1 <= box[3]
    receptive_field_figure(x[0].permute(1, 2, 0).numpy() * 0.5 + 0.5, erf.maps[0], box, (4.0, 220.0), "t", stats)


def test_erf_is_zero_outside_the_theoretical_field_resnet18_random() -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    model.train()  # handed over in training mode: must come back so
    x = torch.randn(2, 3, 80, 80, generator=torch.Generator().manual_seed(0))
    table = layer_table(model, (80, 80))
    row = next(r for r in table if r.name == "layer1")
    assert shapes_from_table(table, ["layer1", "layer2"]) == {"layer1": (64, 20, 20), "layer2": (128, 10, 10)}
    with pytest.raises(LayerError, match="runs more than once"):
        shapes_from_table(table, ["layer1.0.relu"])  # torchvision reuses one ReLU module inside a block
    with pytest.raises(LayerError, match="1x1 map"):
        shapes_from_table(table, ["avgpool"])
    assert row.receptive_field == (43, 43) and row.jump == (4.0, 4.0)
    maps = feature_maps(model, x, "layer1").maps
    channel = int(np.argmax(maps[:, :, 12, 2].min(axis=0)))  # a unit that fires (ReLU output > 0) in both images
    assert maps[:, channel, 12, 2].min() > 0
    erf = effective_receptive_field(model, x, NeuronTarget("layer1", channel, 12, 2))
    np.testing.assert_allclose(erf.values, maps[:, channel, 12, 2], rtol=1e-5)
    box = row.unit_box(12, 2, clip_to=(80, 80))
    for n in range(2):
        assert np.all(_outside(erf.maps[n], box) == 0.0)
        assert (erf.maps[n] > 0).sum() > 100
    # batched gradients equal one image at a time, and sum |g| over the colour channels
    single = x[1:].clone().requires_grad_(True)
    model.eval()
    out = {}
    handle = model.layer1.register_forward_hook(lambda m, a, o: out.__setitem__("a", o))
    model(single)
    handle.remove()
    (grad,) = torch.autograd.grad(out["a"][0, channel, 12, 2], single)
    model.train()
    np.testing.assert_allclose(erf.maps[1], grad[0].abs().sum(0).numpy(), rtol=1e-4, atol=1e-8)
    # the model is left as found
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())


def test_layers_and_units_are_checked(lite0) -> None:
    size = lite0.input_size
    shapes = layer_output_shapes(lite0.model, ["_blocks.5", "_stem_act"], size)
    assert shapes == {"_blocks.5": (80, 14, 14), "_stem_act": (32, 112, 112)}
    with pytest.raises(LayerError, match="spatial"):
        layer_output_shapes(lite0.model, ["_fc"], size)
    with pytest.raises(LayerError, match="1x1 map"):
        layer_output_shapes(lite0.model, ["_avg_pooling"], size)
    with pytest.raises(LayerError, match="unknown layer"):
        layer_output_shapes(lite0.model, ["_blocks.55"], size)
    assert parse_unit("_blocks.5:3:4:7") == NeuronTarget("_blocks.5", 3, 4, 7)
    for bad in ("_blocks.5:3", "_blocks.5", "_blocks.5:a:1:1"):
        with pytest.raises(TargetError, match="--unit"):
            parse_unit(bad)
    with pytest.raises(TargetError, match="channel 80 is out of range"):
        check_unit(parse_unit("_blocks.5:80:0:0"), shapes["_blocks.5"])
    with pytest.raises(TargetError, match="outside the 14x14"):
        check_unit(parse_unit("_blocks.5:0:14:0"), shapes["_blocks.5"])
    assert all(not m._forward_hooks for m in lite0.model.modules())


def test_receptive_field_figure_draws_the_theoretical_box_alike_in_both_panels() -> None:
    """The theoretical box is solid in both panels; dashed is kept for the effective RF's ±2 std ellipse."""
    from matplotlib.patches import Ellipse, Rectangle

    from explain.activations import erf_stats, receptive_field_figure

    erf = np.zeros((40, 40), dtype=np.float32)
    erf[18:22, 18:22] = 1.0
    box = (10.0, 10.0, 30.0, 30.0)
    fig = receptive_field_figure(np.full((40, 40, 3), 0.5, np.float32), erf, box, (20.0, 20.0), "t",
                                 erf_stats(erf, box))
    boxes = [p for ax in fig.axes[:2] for p in ax.patches if isinstance(p, Rectangle)]
    assert len(boxes) == 2 and {p.get_linestyle() for p in boxes} == {"-"}
    assert all((p.get_width(), p.get_height()) == (20.0, 20.0) for p in boxes)
    ellipses = [p for p in fig.axes[0].patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 1 and ellipses[0].get_linestyle() == "--"
    assert "box: theoretical RF" in fig.axes[1].get_title()


def test_receptive_field_figure_says_when_the_box_extends_beyond_the_image() -> None:
    from matplotlib.patches import Rectangle

    from explain.activations import erf_stats, receptive_field_figure

    erf = np.zeros((40, 40), dtype=np.float32)
    erf[0:5, 0:5] = 1.0
    box = (0.0, 0.0, 12.0, 40.0)
    fig = receptive_field_figure(np.full((40, 40, 3), 0.5, np.float32), erf, box, (2.0, 2.0), "t",
                                 erf_stats(erf, box), rf_size=(51, 51))
    assert "(extends beyond the image, 12x40 inside)" in fig.axes[0].get_title()
    (patch,) = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    assert not patch.get_clip_on() and (patch.get_x(), patch.get_width(), patch.get_height()) == (-0.5, 12.0, 40.0)


def test_signed_activations_get_a_diverging_scale_centred_on_zero() -> None:
    """Maps with negative values (a block output with its residual sum) are drawn with a diverging colour map whose
    scale is symmetric, so 0 is the neutral middle colour; non-negative maps keep the sequential map."""
    from explain.activations import DIVERGING_CMAP, SEQUENTIAL_CMAP, activation_colormap, activation_figure

    signed = np.zeros((2, 4, 4), dtype=np.float32)
    signed[0, 0, 0], signed[1, 3, 3] = -3.0, 1.5
    assert activation_colormap(signed) == (DIVERGING_CMAP, True)
    assert activation_colormap(np.abs(signed)) == (SEQUENTIAL_CMAP, False)
    assert activation_colormap(signed, "magma") == ("magma", True)
    scaled, limits = scale_maps(signed, "shared", centred=True)
    assert limits == (-3.0, 3.0) and scaled[0, 0, 0] == 0.0 and scaled[1, 0, 0] == 0.5 and scaled[1, 3, 3] == 0.75
    tiles, _ = scale_maps(signed, "tile", centred=True)
    assert tiles[1, 3, 3] == 1.0 and tiles[1, 0, 0] == 0.5
    fig = activation_figure(np.zeros((8, 8, 3), np.float32), signed, [0, 1], "t")
    (bar,) = [ax for ax in fig.axes if ax.get_ylabel().startswith("activation")]
    assert bar.get_ylim() == pytest.approx((-3.0, 3.0))
    mosaic = fig.axes[1].get_images()[0].get_array()
    colours = {tuple(np.round(np.asarray(c, dtype=float)[:3], 3)) for c in mosaic.reshape(-1, mosaic.shape[-1])}
    import matplotlib

    middle = tuple(np.round(matplotlib.colormaps[DIVERGING_CMAP](0.5)[:3], 3))
    assert middle in colours  # zero is drawn in the diverging map's neutral middle
    fig = activation_figure(np.zeros((8, 8, 3), np.float32), np.abs(signed), [0, 1], "t")
    (bar,) = [ax for ax in fig.axes if ax.get_ylabel().startswith("activation")]
    assert bar.get_ylim() == pytest.approx((0.0, 3.0))
