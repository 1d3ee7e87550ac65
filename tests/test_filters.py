"""Filter grids: the drawn tiles are the layer's weights after the documented normalisation, for every kind of
convolution (colour first layer, depthwise, grouped, 1x1, dense); large layers stay small and fast."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from explain.errors import LayerError, TargetError, UsageError
from explain.filters import (
    DEFAULT_COLUMNS, DEFAULT_FILTERS, DEFAULT_ROWS, build_mosaic, conv_layers, filter_figure, filter_grid,
    first_conv, grid_columns, kernel_norm_matrix, normalise_filters, parse_channels,
)


class Net(nn.Module):
    """Every kind of convolution the filter views handle."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 5, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, groups=8)
        self.grouped = nn.Conv2d(8, 16, 3, groups=2)
        self.pw = nn.Conv2d(16, 12, 1)
        self.dense = nn.Conv2d(12, 20, 3)
        with torch.no_grad():
            self.stem.weight[2, 1, 0, 0] = 0.0  # a zero weight must be drawn mid grey

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.pw(self.grouped(self.dw(self.bn(self.stem(x))))))


def weights(module: nn.Module) -> np.ndarray:
    return module.weight.detach().numpy().astype(np.float64)


def test_first_layer_tiles_are_the_weights_after_symmetric_normalisation() -> None:
    net = Net()
    grid = filter_grid(net)
    assert grid.layer == "stem" and grid.kind == "rgb" and grid.channels == list(range(8))
    w = weights(net.stem)
    expected = (0.5 + 0.5 * w / np.abs(w).max()).transpose(0, 2, 3, 1)
    assert grid.tiles.shape == (8, 5, 5, 3)
    np.testing.assert_allclose(grid.tiles, expected, atol=1e-6)
    assert grid.tiles[2, 0, 0, 1] == pytest.approx(0.5)  # zero weight -> grey
    assert grid.scale == pytest.approx(np.abs(w).max())
    np.testing.assert_array_equal(grid.weight, net.stem.weight.detach().numpy())


def test_per_filter_normalisations() -> None:
    net = Net()
    w = weights(net.stem)
    flat = w.reshape(8, -1)
    grid = filter_grid(net, "stem", norm="minmax")
    lo, hi = flat.min(1)[:, None, None, None], flat.max(1)[:, None, None, None]
    np.testing.assert_allclose(grid.tiles, ((w - lo) / (hi - lo)).transpose(0, 2, 3, 1), atol=1e-6)
    for f in range(8):
        assert grid.tiles[f].min() == pytest.approx(0.0) and grid.tiles[f].max() == pytest.approx(1.0)
    grid = filter_grid(net, "stem", norm="symmetric-filter")
    scale = np.abs(flat).max(1)[:, None, None, None]
    np.testing.assert_allclose(grid.tiles, (0.5 + 0.5 * w / scale).transpose(0, 2, 3, 1), atol=1e-6)
    # a constant filter does not divide by zero
    np.testing.assert_array_equal(normalise_filters(np.zeros((2, 3, 1, 1)), "minmax"), 0.5)
    np.testing.assert_array_equal(normalise_filters(np.zeros((2, 3, 1, 1)), "symmetric"), 0.5)


def test_sort_by_norm_then_limit() -> None:
    net = Net()
    norms = np.sqrt((weights(net.stem).reshape(8, -1) ** 2).sum(1))
    grid = filter_grid(net, "stem", sort="norm", limit=3)
    assert grid.channels == [int(c) for c in np.argsort(-norms)[:3]]
    assert norms[grid.channels[0]] == norms.max()
    full = filter_grid(net, "stem")
    np.testing.assert_array_equal(grid.tiles, full.tiles[grid.channels])
    assert any("3 of 8" in note for note in grid.notes)
    chosen = filter_grid(net, "stem", channels="1,5-6")
    assert chosen.channels == [1, 5, 6]
    np.testing.assert_array_equal(chosen.tiles, full.tiles[[1, 5, 6]])


def test_depthwise_grouped_and_pointwise_convolutions() -> None:
    net = Net()
    dw = filter_grid(net, "dw")
    assert dw.kind == "single" and dw.depthwise and dw.tiles.shape == (8, 3, 3)
    w = weights(net.dw)
    np.testing.assert_allclose(dw.tiles, 0.5 + 0.5 * w[:, 0] / np.abs(w).max(), atol=1e-6)
    dw_norms = filter_grid(net, "dw", view="norms")
    np.testing.assert_allclose(dw_norms.tiles, np.sqrt((w ** 2).sum(axis=(1, 2, 3))), rtol=1e-5)

    grouped = filter_grid(net, "grouped")
    assert grouped.kind == "kernels" and grouped.tiles.shape == (16, 4, 3, 3) and grouped.in_channels == [0, 1, 2, 3]
    g = weights(net.grouped)
    np.testing.assert_allclose(grouped.tiles, 0.5 + 0.5 * g / np.abs(g).max(), atol=1e-6)
    matrix = filter_grid(net, "grouped", view="norms").tiles
    assert matrix.shape == (16, 8)
    assert np.isnan(matrix[:8, 4:]).all() and np.isnan(matrix[8:, :4]).all()  # groups do not connect
    np.testing.assert_allclose(matrix[9, 4:], np.sqrt((g[9] ** 2).sum(axis=(1, 2))), rtol=1e-5)

    pw = filter_grid(net, "pw")
    p = weights(net.pw)[:, :, 0, 0]
    assert pw.kind == "matrix" and pw.tiles.shape == (12, 16)
    np.testing.assert_allclose(pw.tiles, 0.5 + 0.5 * p / np.abs(p).max(), atol=1e-6)
    sub = filter_grid(net, "pw", channels="2-3", in_channels="0,15")
    np.testing.assert_array_equal(sub.tiles, pw.tiles[2:4][:, [0, 15]])

    dense = filter_grid(net, "dense", norm="minmax")
    assert dense.kind == "kernels" and dense.tiles.shape == (DEFAULT_ROWS, 12, 3, 3)
    np.testing.assert_array_equal(kernel_norm_matrix(weights(net.dense)).shape, (20, 12))
    for grid in (dw, dw_norms, grouped, pw, dense, filter_grid(net, "grouped", view="norms")):
        filter_figure(grid)  # every kind draws


def test_layers_and_channel_lists() -> None:
    net = Net()
    assert conv_layers(net) == ["stem", "dw", "grouped", "pw", "dense"] and first_conv(net) == "stem"
    with pytest.raises(LayerError, match="BatchNorm2d, not a 2-D convolution .*before it: stem"):
        filter_grid(net, "bn")
    with pytest.raises(LayerError, match="unknown layer 'stemm'"):
        filter_grid(net, "stemm")
    with pytest.raises(LayerError, match="no 2-D convolution"):
        first_conv(nn.Sequential(nn.Linear(3, 2)))
    assert parse_channels("0-3, 7,2", 8) == [0, 1, 2, 3, 7]
    assert parse_channels([5, 1], 8) == [1, 5]
    assert parse_channels("0-99999999999", None) == []  # syntax only: no huge list
    with pytest.raises(TargetError, match="bad --channels"):
        parse_channels("3-", None)
    for bad, message in [("0-x", "bad --channels"), ("5-2", "backwards"), ("8", "out of range"), ("", "bad")]:
        with pytest.raises(TargetError, match=message):
            parse_channels(bad, 8)
    with pytest.raises(UsageError, match="--in-channels"):
        filter_grid(net, "stem", in_channels="0")
    with pytest.raises(UsageError, match="unknown --norm"):
        filter_grid(net, norm="max")


def test_embedded_model_first_layer(lite0) -> None:
    grid = filter_grid(lite0.model)
    assert grid.layer == "_conv_stem" and grid.kind == "rgb" and grid.tiles.shape == (32, 3, 3, 3)
    w = lite0.model._conv_stem.weight.detach().numpy()
    np.testing.assert_allclose(grid.tiles, (0.5 + 0.5 * w / np.abs(w).max()).transpose(0, 2, 3, 1), atol=1e-6)
    assert filter_grid(lite0.model, "_blocks.3._depthwise_conv").kind == "single"


def test_large_layers_are_capped_and_fast() -> None:
    torch.manual_seed(1)
    big = nn.Sequential(nn.Conv2d(3, 512, 7), nn.Conv2d(512, 512, 3), nn.Conv2d(512, 512, 3, groups=512))
    before = {k: v.clone() for k, v in big.state_dict().items()}
    start = time.perf_counter()
    for name in ("0", "1", "2"):
        grid = filter_grid(big, name)
        filter_figure(grid).savefig(__import__("io").BytesIO(), format="png", dpi=150)
    assert time.perf_counter() - start < 15.0  # a few seconds each on a busy 2-core machine
    assert len(filter_grid(big, "0").channels) == DEFAULT_FILTERS
    dense = filter_grid(big, "1")
    assert dense.tiles.shape == (DEFAULT_ROWS, DEFAULT_COLUMNS, 3, 3)
    assert len(filter_grid(big, "2").channels) == DEFAULT_FILTERS
    assert len(filter_grid(big, "0", show_all=True).channels) == 512
    for key, value in big.state_dict().items():
        assert torch.equal(value, before[key])  # weights only read


def test_mosaic_layout() -> None:
    assert grid_columns(32) == 8 and grid_columns(64) == 8 and grid_columns(16) == 4 and grid_columns(3) == 3
    tiles = np.ones((5, 3, 3, 4), dtype=np.float32)
    mosaic = build_mosaic(tiles, 3, gap=0.1, band=0.0, min_tile_px=12)
    assert mosaic.tile == (12, 12)
    x, y = mosaic.origins[4]
    assert (x, y) == (12 + 1, 12 + 1)
    assert mosaic.image[y:y + 12, x:x + 12].min() == 1.0
    assert mosaic.image[:, 12, 3].max() == 0.0  # the gap is transparent


def test_kernel_rows_have_grey_gaps_so_near_zero_rims_do_not_merge() -> None:
    """0 is white in the signed colour map: the gaps between kernels are grey, not white."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from torch import nn

    from explain.filters import KERNEL_GAP, filter_figure, filter_grid

    conv = nn.Sequential(nn.Conv2d(8, 4, 5))
    with torch.no_grad():
        conv[0].weight.zero_()  # every kernel white: only the gaps can tell them apart
    grid = filter_grid(conv, "0")
    assert grid.kind == "kernels"
    fig = filter_figure(grid)
    ax = next(a for a in fig.axes if a.get_ylabel() == "output channel")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].reshape(-1, 3)
    grey = np.array([int(KERNEL_GAP[i:i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(pixels.astype(int) - grey).max(axis=1) <= 2).sum() > 100  # the gaps are drawn grey
    assert ax.get_facecolor()[:3] == pytest.approx(tuple(grey / 255))
