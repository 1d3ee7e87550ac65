"""2-D maps: PCA, t-SNE, trustworthiness, grid snapping, and thumbnails drawn exactly where the coordinates say."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from explain.embedding import embed_2d, grid_assign, grid_shape, map_positions, pca, trustworthiness
from explain.errors import UsageError
from explain.gallery_run import render_grid_map, render_thumbnail_map


def clusters(n_per: int = 30, k: int = 4, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, size=(k, dim))
    if dim == 2:  # well apart: the corners of a square
        centres = 20.0 * np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=float)[:k]
    x = np.concatenate([c + rng.normal(0, 1, size=(n_per, dim)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


# --------------------------------------------------------------------------------------------------------------
# trustworthiness


def test_trustworthiness_matches_scikit_learn() -> None:
    sklearn_manifold = pytest.importorskip("sklearn.manifold")
    rng = np.random.default_rng(0)
    high = rng.normal(size=(230, 12)).astype(np.float32)
    low = high[:, :2] + rng.normal(0, 0.5, size=(230, 2))
    for k in (1, 5, 12):
        expected = sklearn_manifold.trustworthiness(high, low, n_neighbors=k)
        assert trustworthiness(high, low, k, chunk=37) == pytest.approx(expected, abs=1e-9)


def test_trustworthiness_bounds_and_subsampling() -> None:
    rng = np.random.default_rng(1)
    plane = rng.normal(size=(200, 2))
    assert trustworthiness(plane, plane, 5) == pytest.approx(1.0)
    noise = rng.normal(size=(200, 2))
    assert trustworthiness(plane, noise, 5) < 0.7
    big = rng.normal(size=(600, 2))
    sub = trustworthiness(big, big + rng.normal(0, 0.05, size=big.shape), 5, max_points=150, seed=3)
    assert 0.9 < sub <= 1.0
    with pytest.raises(UsageError):
        trustworthiness(plane[:8], plane[:8], 5)


# --------------------------------------------------------------------------------------------------------------
# maps


def test_pca_matches_scikit_learn_up_to_sign() -> None:
    decomposition = pytest.importorskip("sklearn.decomposition")
    x, _ = clusters(n_per=40, dim=30)  # more images than dimensions: covariance route
    for data in (x, x[:20]):  # and fewer: SVD route
        scores, ratio = pca(data, 3)
        ref = decomposition.PCA(3).fit(data.astype(np.float64))
        np.testing.assert_allclose(np.abs(scores), np.abs(ref.transform(data.astype(np.float64))), atol=1e-3)
        np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, atol=1e-6)
    a, _ = pca(x, 3)
    b, _ = pca(x, 3)
    np.testing.assert_array_equal(a, b)


def test_tsne_separates_clusters_reproducibly() -> None:
    x, y = clusters()
    first = embed_2d(x, "tsne", perplexity=20, seed=7, pca_dims=10)
    assert first.coords.shape == (120, 2) and first.coords.dtype == np.float32
    assert first.params["pca_dims"] == 10 and first.params["perplexity"] == 20
    assert trustworthiness(x, first.coords, 5) > 0.9
    # neighbours in the map share the cluster
    d = ((first.coords[:, None] - first.coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (y[d.argmin(1)] == y).mean() > 0.95
    again = embed_2d(x, "tsne", perplexity=20, seed=7, pca_dims=10, progress=lambda *a: None)
    np.testing.assert_allclose(again.coords, first.coords, atol=1e-4)  # progress reporting changes nothing
    if first.params["backend"] == "opentsne":  # run in steps for progress, yet exactly openTSNE's TSNE.fit
        from openTSNE import TSNE

        reference = np.asarray(TSNE(perplexity=20, random_state=7).fit(pca(x, 10)[0]))
        np.testing.assert_allclose(first.coords, reference, atol=1e-4)


def test_small_galleries_and_bad_options() -> None:
    x, _ = clusters(n_per=3, k=3, dim=8)
    result = embed_2d(x, "tsne", perplexity=30, seed=0)
    assert result.params["perplexity"] < 9 / 3 and "lowered" in result.warnings[0]
    flat = embed_2d(x, "pca")
    assert flat.coords.shape == (9, 2) and len(flat.params["explained_variance"]) == 2
    with pytest.raises(UsageError, match="tsne, pca or umap"):
        embed_2d(x, "mds")
    with pytest.raises(UsageError, match="at least 3"):
        embed_2d(x[:2], "pca")
    with pytest.raises(UsageError, match="perplexity"):
        embed_2d(x, "tsne", perplexity=0)


def test_umap_needs_its_extra_or_works() -> None:
    x, _ = clusters(n_per=10, k=2, dim=8)
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="umap"):
            embed_2d(x, "umap")
    else:  # pragma: no cover - only with the extra installed
        assert embed_2d(x, "umap", seed=0).coords.shape == (20, 2)


# --------------------------------------------------------------------------------------------------------------
# grids


def test_grid_shape() -> None:
    assert grid_shape(36) == (6, 6)
    assert grid_shape(37) == (6, 7)
    assert grid_shape(1) == (1, 1)
    rows, cols = grid_shape(750)
    assert rows * cols >= 750 and abs(rows - cols) <= 1


@pytest.mark.parametrize("exact_limit", [10_000, 7])
def test_points_on_a_grid_keep_their_cells(exact_limit: int) -> None:
    # A jittered 9 x 12 lattice (y up): each point must land in its own lattice cell, exactly or block-wise.
    rng = np.random.default_rng(0)
    rows, cols = 9, 12
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    jitter = rng.uniform(-0.2, 0.2, size=(r.size, 2))
    pts = np.stack([c.ravel(), rows - 1 - r.ravel()], axis=1) + jitter
    order = rng.permutation(len(pts))
    cells = grid_assign(pts[order], rows, cols, exact_limit=exact_limit)
    np.testing.assert_array_equal(cells, np.stack([r.ravel(), c.ravel()], axis=1)[order])


@pytest.mark.parametrize("exact_limit", [10_000, 40])
def test_grid_cells_are_distinct_and_keep_neighbourhoods(exact_limit: int) -> None:
    x, y = clusters(n_per=50, k=4, dim=2, seed=5)
    cells = grid_assign(x, exact_limit=exact_limit)
    rows, cols = grid_shape(len(x))
    assert len({tuple(cell) for cell in cells}) == len(x)
    assert cells[:, 0].min() >= 0 and cells[:, 0].max() < rows and cells[:, 1].min() >= 0 and cells[:, 1].max() < cols
    # side-by-side cells almost always hold images of the same cluster (a random layout: about 1 in 4)
    owner = np.full((rows, cols), -1)
    owner[cells[:, 0], cells[:, 1]] = y
    pairs = np.concatenate([np.stack([owner[:, :-1].ravel(), owner[:, 1:].ravel()], 1),
                            np.stack([owner[:-1, :].ravel(), owner[1:, :].ravel()], 1)])
    pairs = pairs[(pairs >= 0).all(1)]
    assert (pairs[:, 0] == pairs[:, 1]).mean() > 0.85
    with pytest.raises(UsageError):
        grid_assign(x, 2, 2)


# --------------------------------------------------------------------------------------------------------------
# thumbnails land where the coordinates say

COLOURS = [(255, 0, 0), (0, 160, 0), (0, 0, 255), (250, 200, 0), (128, 0, 128)]


def solid(colour: tuple[int, int, int], size: int) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def test_thumbnail_map_positions() -> None:
    # x spans 0..10, y spans 0..5: x sets the scale; y is centred; y points up.
    coords = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0], [10.0, 5.0], [5.0, 2.5]])
    canvas, thumb, margin = 400, 40, 10
    pos = map_positions(coords, canvas, thumb, margin)
    scale = (canvas - 2 * margin - thumb) / 10.0
    left, right = margin + thumb / 2, canvas - margin - thumb / 2
    np.testing.assert_allclose(pos[:, 0], [left, right, left, right, canvas / 2])
    np.testing.assert_allclose(pos[:, 1], [canvas / 2 + 2.5 * scale, canvas / 2 + 2.5 * scale,
                                           canvas / 2 - 2.5 * scale, canvas / 2 - 2.5 * scale, canvas / 2])
    image = render_thumbnail_map([solid(c, thumb) for c in COLOURS], pos, canvas, thumb)
    assert image.size == (canvas, canvas)
    px = np.asarray(image)
    for (x, y), colour in zip(pos, COLOURS):
        x0, y0 = int(round(x - thumb / 2)), int(round(y - thumb / 2))
        block = px[y0:y0 + thumb, x0:x0 + thumb]
        assert (block == colour).all(), colour  # the whole thumbnail, not just its centre
        assert tuple(px[y0 - 1, x0 + thumb // 2]) == (255, 255, 255)  # and nothing above it
    # the bottom-left point (x min, y min) is drawn at the lower left of the canvas
    assert tuple(px[int(pos[0, 1]), int(pos[0, 0])]) == COLOURS[0] and pos[0, 1] > canvas / 2 > pos[0, 0]


def test_grid_map_cells() -> None:
    cells = np.array([[0, 0], [0, 2], [1, 1], [1, 0], [0, 1]])
    cell = 16
    image = render_grid_map([solid(c, cell) for c in COLOURS], cells, 2, 3, cell)
    assert image.size == (3 * cell, 2 * cell)
    px = np.asarray(image)
    for (r, c), colour in zip(cells, COLOURS):
        assert (px[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] == colour).all()
    assert (px[cell:, 2 * cell:] == 255).all()  # the unused cell stays white
    framed = np.asarray(render_grid_map([solid(COLOURS[0], cell)], cells[:1], 1, 1, cell, [(0, 0, 0)], border=2))
    assert (framed[0, :] == 0).all() and (framed[cell // 2, cell // 2] == COLOURS[0]).all()


# --------------------------------------------------------------------------------------------------------------
# option bounds (QA: --threads 0 crashed in t-SNE; --thumb-size 5000 was killed for lack of memory, 0 was accepted)


def test_thread_counts_other_than_positive_or_minus_one_are_refused() -> None:
    from explain.embedding import check_threads, tsne_threads

    for ok in (None, -1, 1, 3):
        check_threads(ok)
    assert tsne_threads(10, 3) == 3 and tsne_threads(10, -1) == -1 and tsne_threads(10, None) == 1
    for bad in (0, -2, -8):
        with pytest.raises(UsageError, match="--threads must be at least 1, or -1"):
            tsne_threads(10, bad)
    check_threads(256)
    for bad in (257, 5000, 100000):  # QA: 100000 threads segfaulted, 5000 stalled for minutes on 12 images
        with pytest.raises(UsageError, match="too many: at most 256"):
            tsne_threads(10, bad)
    x, _ = clusters(n_per=4, k=2, dim=8)
    with pytest.raises(UsageError, match="--threads"):  # not sklearn's bare "n_jobs == 0" ValueError
        embed_2d(x, "tsne", n_jobs=0)


def test_map_options_are_checked_before_any_work() -> None:
    from explain.gallery_run import MAX_BORDER, MAX_THUMB, MIN_THUMB, MapOptions

    assert MapOptions(thumb=MIN_THUMB, border=MAX_BORDER, threads=-1).check().thumb == MIN_THUMB
    for bad, match in ((dict(thumb=0), "--thumb-size"), (dict(thumb=MIN_THUMB - 1), "--thumb-size"),
                       (dict(thumb=MAX_THUMB + 1), "--thumb-size"), (dict(thumb=5000), "between 8 and 512"),
                       (dict(border=-1), "--border"), (dict(border=MAX_BORDER + 1), "--border"),
                       (dict(threads=0), "--threads"), (dict(trust_k=0), "--trust-k"),
                       (dict(perplexity=0.0), "--perplexity")):
        with pytest.raises(UsageError, match=match):
            MapOptions(**bad).check()
    MapOptions(method="pca", perplexity=0.0).check()  # perplexity only matters to t-SNE


def test_map_thumbnails_keep_the_canvas_bounded() -> None:
    from explain.gallery_run import MAX_CANVAS, MIN_THUMB, auto_thumb, canvas_side, map_thumb

    assert map_thumb(36, None) == auto_thumb(36) == 96 and map_thumb(36, 512) == 512
    assert canvas_side(6, 6, 512) == round(6 * 512 * 1.2) <= MAX_CANVAS
    for n in (2_500, 100_000, 1_000_000):  # the default shrinks (never below MIN_THUMB) to fit the limit
        rows, cols = grid_shape(n)
        thumb = map_thumb(n, None)
        assert MIN_THUMB <= thumb <= auto_thumb(n) and canvas_side(rows, cols, thumb) <= MAX_CANVAS
    assert map_thumb(1_000_000, None) < auto_thumb(1_000_000)
    with pytest.raises(UsageError, match=r"30720 pixels wide .*use --thumb-size 273 or less"):
        map_thumb(2_500, 512)  # a 50 x 50 grid of 512-px cells: 30720-px map
    assert map_thumb(2_500, 273) == 273
    with pytest.raises(UsageError, match="between 8 and 512"):
        map_thumb(36, 0)
