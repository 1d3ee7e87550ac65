"""2-D maps of a feature space: PCA, t-SNE and UMAP; how trustworthy a map is; snapping a map to a grid.

* :func:`embed_2d` reduces the features to ``pca_dims`` (50) dimensions with an exact PCA first, then runs the
  2-D method. t-SNE is openTSNE's (Barnes-Hut below 10,000 points, FFT-accelerated interpolation from there, as
  openTSNE chooses), falling back to scikit-learn's when openTSNE is not installed; UMAP needs ``umap-learn``.
* :func:`trustworthiness` measures how many of each point's map neighbours are true neighbours in the original
  feature space (Venna & Kaski; 1.0 = every map neighbourhood is genuine). Computed in chunks (memory O(chunk x N)).
* :func:`grid_assign` gives every point its own cell of a ``rows x cols`` grid while keeping neighbours together:
  an optimal linear assignment (scipy's ``linear_sum_assignment``) of points to cells by squared distance, applied
  to the whole map up to ``exact_limit`` cells and otherwise to the blocks of a balanced recursive bisection.
* :func:`map_positions` says where on a square canvas each point's thumbnail goes (used to draw the maps).

Nothing here prints; long steps report through ``progress(stage, advance, total)`` callbacks.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from explain.errors import UsageError

__all__ = [
    "METHODS", "Map2D", "embed_2d", "grid_assign", "grid_shape", "map_positions", "pca", "trustworthiness",
    "check_threads", "tsne_backend",
]

METHODS = ("tsne", "pca", "umap")
TSNE_BACKENDS = ("auto", "opentsne", "sklearn")
ProgressFn = Callable[[str, int, int], None]


@dataclass
class Map2D:
    """A 2-D map of ``N`` feature vectors.

    Attributes:
        coords: ``(N, 2)`` float32.
        method: ``tsne``, ``pca`` or ``umap``.
        params: what was used (effective perplexity, seed, backend, PCA dimensions and explained variance...).
        warnings: e.g. a perplexity lowered to fit a small gallery.
    """

    coords: np.ndarray
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _one_blas_thread() -> Any:
    """Limit BLAS/LAPACK to one thread inside the block (when threadpoolctl is installed).

    Multi-threaded OpenBLAS eigen-solvers synchronise threads at every step of the tridiagonal reduction; on a
    busy two-core machine that made a 1280 x 1280 ``eigh`` take 11 s instead of 0.2 s with one thread.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1)


def pca(features: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact PCA by eigen-decomposition of the (float64) covariance: ``(scores (N, c) float32, explained ratio)``.

    Components are sign-fixed (largest-magnitude loading positive), so results are deterministic.
    """
    x = np.asarray(features, dtype=np.float64)
    n, d = x.shape
    c = max(1, min(n_components, d, n))
    mean = x.mean(axis=0)
    if n <= d:  # fewer images than dimensions: a thin SVD of the centred data is cheaper
        centred = x - mean
        with _one_blas_thread():
            _, s, vt = np.linalg.svd(centred, full_matrices=False)
        vectors = vt[:c].T.copy()
        signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(c)])
        vectors *= np.where(signs == 0, 1.0, signs)
        var = s ** 2
        ratio = var[:c] / var.sum() if var.sum() > 0 else np.zeros(c)
        return (centred @ vectors).astype(np.float32), ratio
    cov = np.zeros((d, d))
    for start in range(0, n, 8192):  # bounded scratch memory for large galleries; float32 products, float64 sums
        block = (x[start:start + 8192] - mean).astype(np.float32)
        cov += block.T @ block
    cov /= max(1, n - 1)
    with _one_blas_thread():
        try:  # only the leading eigenvectors: several times faster than the full decomposition
            from scipy.linalg import eigh

            values, vectors = eigh(cov, subset_by_index=[d - c, d - 1], driver="evx")
        except ImportError:  # pragma: no cover - scipy comes with the gallery dependencies
            values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:c]
    values, vectors = values[order], vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(c)])
    vectors *= np.where(signs == 0, 1.0, signs)
    total = float(np.trace(cov))
    ratio = np.clip(values, 0, None) / total if total > 0 else np.zeros(c)
    return ((x - mean) @ vectors).astype(np.float32), ratio


def tsne_threads(n: int, n_jobs: int | None) -> int:
    """Threads for t-SNE: ``n_jobs`` when given; by default all cores for maps of 5,000 points or more on machines
    with more than two cores, else one. Below a few thousand points threads cost more than they save, and on a
    two-core machine (which is also decoding, searching, drawing) they are as likely to slow t-SNE down."""
    check_threads(n_jobs)
    if n_jobs is not None:
        return n_jobs
    cores = os.cpu_count() or 1
    return -1 if n >= 5_000 and cores > 2 else 1


MAX_THREADS = 256


def check_threads(n_jobs: int | None) -> None:
    """Refuse a thread count other than ``None`` (automatic), ``-1`` (all cores) or a positive number.

    Both t-SNE implementations would take other negative numbers as "all cores but some" and fail on 0 with a
    bare ``ValueError``; only ``-1`` is offered here.

    Raises:
        UsageError: ``n_jobs`` is 0, below -1 or above :data:`MAX_THREADS` (thousands of threads crash or stall
            the t-SNE libraries).
    """
    if n_jobs is not None and (n_jobs == 0 or n_jobs < -1):
        raise UsageError(f"--threads must be at least 1, or -1 for all cores (got {n_jobs})")
    if n_jobs is not None and n_jobs > MAX_THREADS:
        raise UsageError(f"--threads {n_jobs} is too many: at most {MAX_THREADS} (-1 uses every core)")


def tsne_backend(preferred: str = "auto") -> str:
    """The t-SNE implementation to use: ``opentsne`` when installed (``auto``), else ``sklearn``."""
    if preferred not in TSNE_BACKENDS:
        raise UsageError(f"unknown t-SNE backend {preferred!r}: choose auto, opentsne or sklearn")
    have_open = importlib.util.find_spec("openTSNE") is not None
    have_sk = importlib.util.find_spec("sklearn") is not None
    if preferred == "opentsne" or (preferred == "auto" and have_open):
        if not have_open:
            raise UsageError("t-SNE backend opentsne is not installed: pip install openTSNE")
        return "opentsne"
    if not have_sk:
        raise UsageError("t-SNE needs openTSNE (pip install openTSNE) or scikit-learn (pip install scikit-learn)")
    return "sklearn"


def embed_2d(
    features: np.ndarray,
    method: str = "tsne",
    *,
    perplexity: float = 30.0,
    seed: int = 0,
    pca_dims: int = 50,
    n_neighbors: int = 15,
    backend: str = "auto",
    n_jobs: int | None = None,
    progress: ProgressFn | None = None,
) -> Map2D:
    """Map ``features`` (``(N, D)``) to 2-D.

    Args:
        features: one row per image.
        method: ``tsne`` (default), ``pca`` (the first two principal components) or ``umap``.
        perplexity: t-SNE perplexity; lowered to ``(N - 1) / 3`` for small galleries (with a warning).
        seed: random seed (t-SNE initialisation and neighbour search, UMAP).
        pca_dims: dimensions kept by the PCA that precedes t-SNE and UMAP (0: no PCA).
        n_neighbors: UMAP's neighbourhood size (lowered for small galleries).
        backend: t-SNE implementation: ``auto``, ``opentsne`` or ``sklearn``.
        n_jobs: t-SNE threads (-1: all cores; ``None``: see :func:`tsne_threads`).
        progress: ``progress("t-SNE", iterations, total)`` while t-SNE runs.

    Raises:
        UsageError: unknown method, too few points, missing optional package.
    """
    if method not in METHODS:
        raise UsageError(f"unknown map method {method!r}: choose tsne, pca or umap")
    x = np.asarray(features, dtype=np.float32)
    n = x.shape[0] if x.ndim == 2 else 0
    if n < 3:
        raise UsageError(f"a map needs at least 3 images (got {n})")
    if method == "pca":
        coords, ratio = pca(x, 2)
        return Map2D(coords, "pca", {"explained_variance": [round(float(r), 4) for r in ratio]})
    params: dict[str, Any] = {"seed": seed}
    warnings: list[str] = []
    if pca_dims and x.shape[1] > pca_dims:
        reduced, ratio = pca(x, pca_dims)
        params["pca_dims"] = int(reduced.shape[1])
        params["pca_explained_variance"] = round(float(ratio.sum()), 4)
    else:
        reduced = x
        params["pca_dims"] = None
    if method == "umap":
        coords = _umap(reduced, n_neighbors, seed, n_jobs, params, warnings)
    else:
        coords = _tsne(reduced, perplexity, seed, backend, n_jobs, params, warnings, progress)
    return Map2D(np.ascontiguousarray(coords, dtype=np.float32), method, params, warnings)


def _tsne(x: np.ndarray, perplexity: float, seed: int, backend: str, n_jobs: int | None, params: dict[str, Any],
          warnings: list[str], progress: ProgressFn | None) -> np.ndarray:
    n = x.shape[0]
    if perplexity <= 0:
        raise UsageError(f"--perplexity must be positive (got {perplexity})")
    limit = (n - 1) / 3.0
    effective = float(perplexity)
    if effective > limit:
        effective = max(1.0, math.floor(limit * 100) / 100)
        warnings.append(f"perplexity lowered from {perplexity:g} to {effective:g} for {n} images "
                        "(it must stay below a third of the number of images)")
    chosen = tsne_backend(backend)
    params.update({"perplexity": effective, "backend": chosen})
    if chosen == "opentsne":
        from openTSNE import TSNE

        early, main = 250, 500
        total = early + main
        threads = tsne_threads(n, n_jobs)
        model = TSNE(perplexity=effective, random_state=seed, n_jobs=threads, n_iter=main,
                     early_exaggeration_iter=early, verbose=False)
        # TSNE.fit's two phases, run 125 iterations at a time so that progress can be reported. (openTSNE's own
        # callbacks make it evaluate the KL divergence at every call: 10-20% slower at 10,000 points.) The optimiser
        # keeps its state (gains, momentum) between calls; the exaggeration is applied to P once per phase, as
        # TSNE.fit does (openTSNE would multiply and divide P at every call, and t-SNE amplifies that rounding),
        # with TSNE.fit's learning rate (N / exaggeration), so the result is TSNE.fit's, bit for bit.
        embedding = model.prepare_initial(x)
        affinities = embedding.affinities
        for n_iter, exaggeration, momentum in ((early, model.early_exaggeration, model.initial_momentum),
                                               (main, model.exaggeration, model.final_momentum)):
            factor = exaggeration if exaggeration is not None else 1
            if factor != 1:
                affinities.P *= factor
            try:
                for start in range(0, n_iter, 125):  # 6 steps: each ends with one extra gradient evaluation
                    step = min(125, n_iter - start)
                    embedding.optimize(n_iter=step, exaggeration=None, learning_rate=n / factor, momentum=momentum,
                                       inplace=True, propagate_exception=True)
                    if progress is not None:
                        progress("t-SNE", step, total)
            finally:
                if factor != 1:
                    affinities.P /= factor
        coords = np.asarray(embedding)
        params.update({"iterations": total, "negative_gradient_method": "bh" if n < 10_000 else "fft",
                       "threads": threads})
        return coords
    from sklearn.manifold import TSNE as SkTSNE

    model = SkTSNE(n_components=2, perplexity=effective, random_state=seed, init="pca", learning_rate="auto",
                   n_jobs=tsne_threads(n, n_jobs))
    coords = model.fit_transform(x)
    if progress is not None:
        progress("t-SNE", 1, 1)
    return coords


def _umap(x: np.ndarray, n_neighbors: int, seed: int, n_jobs: int | None, params: dict[str, Any],
          warnings: list[str]) -> np.ndarray:
    try:
        from umap import UMAP
    except ImportError:
        raise UsageError("--method umap needs umap-learn: pip install 'cnn-explain[umap]' (or umap-learn)") from None

    n = x.shape[0]
    effective = max(2, min(n_neighbors, n - 1))
    if effective != n_neighbors:
        warnings.append(f"UMAP n_neighbors lowered from {n_neighbors} to {effective} for {n} images")
    params.update({"n_neighbors": effective, "min_dist": 0.1})
    reducer = UMAP(n_neighbors=effective, min_dist=0.1, random_state=seed, n_jobs=1)  # seeded: one thread
    return reducer.fit_transform(x)


# --------------------------------------------------------------------------------------------------------------
# Trustworthiness


def trustworthiness(high: np.ndarray, low: np.ndarray, k: int = 5, *, max_points: int | None = 10_000,
                    seed: int = 0, chunk: int = 256) -> float:
    """Trustworthiness of a low-dimensional map (Venna & Kaski 2001), as in scikit-learn.

    ``T(k) = 1 - 2 / (n k (2n - 3k - 1)) * sum_i sum_{j in U_i} (r(i, j) - k)`` where ``U_i`` are the map's ``k``
    nearest neighbours of ``i`` that are not among its ``k`` nearest in the original space and ``r(i, j)`` is the
    rank of ``j`` among ``i``'s neighbours in the original space. Euclidean distances in both spaces.

    Args:
        high: ``(N, D)`` original features.
        low: ``(N, d)`` map coordinates.
        k: neighbourhood size (must be below ``N / 2``).
        max_points: above this many points, a random subset of this size (seeded) is measured.
        seed: seed of that subset.
        chunk: rows per block (memory ``chunk x N``).
    """
    import torch

    high = np.asarray(high, dtype=np.float32)
    low = np.asarray(low, dtype=np.float64)
    n = high.shape[0]
    if low.shape[0] != n:
        raise UsageError("trustworthiness: the map and the features have different numbers of points")
    if max_points is not None and n > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
        high, low, n = high[pick], low[pick], max_points
    if not 1 <= k < n / 2:
        raise UsageError(f"trustworthiness needs 1 <= k < n/2 (k={k}, n={n})")
    h = torch.from_numpy(high)
    l = torch.from_numpy(low)
    h_sq = (h * h).sum(1)
    penalty = 0
    with torch.inference_mode():
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            rows = torch.arange(a, b)
            dh = h_sq[a:b, None] + h_sq[None, :] - 2.0 * (h[a:b] @ h.T)
            dh[torch.arange(b - a), rows] = float("inf")  # self: never a neighbour, never counted as closer
            dl = torch.cdist(l[a:b], l)
            dl[torch.arange(b - a), rows] = float("inf")
            nn_low = torch.topk(dl, k, dim=1, largest=False).indices  # (c, k)
            d_at = torch.gather(dh, 1, nn_low)  # high-dim distance to each map neighbour
            ranks = (dh[:, None, :] < d_at[:, :, None]).sum(dim=2) + 1  # 1 = nearest
            penalty += int(torch.clamp(ranks - k, min=0).sum())
    return float(1.0 - penalty * (2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0))))


# --------------------------------------------------------------------------------------------------------------
# Grids and canvases


def grid_shape(n: int, aspect: float = 1.0) -> tuple[int, int]:
    """``(rows, cols)`` of the smallest near-square grid (``cols / rows ~ aspect``) with at least ``n`` cells."""
    if n < 1:
        raise UsageError("a grid needs at least one image")
    cols = max(1, math.ceil(math.sqrt(n * aspect)))
    rows = max(1, math.ceil(n / cols))
    return rows, cols


def _unit(coords: np.ndarray) -> np.ndarray:
    """Each axis scaled to [0, 1] (a constant axis becomes 0.5)."""
    c = np.asarray(coords, dtype=np.float64)
    lo, hi = c.min(axis=0), c.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.where(hi > lo, (c - lo) / span, 0.5)


def grid_assign(coords: np.ndarray, rows: int | None = None, cols: int | None = None, *,
                exact_limit: int = 1600) -> np.ndarray:
    """Give each point its own grid cell, keeping neighbours together.

    The map is stretched over the grid (x to columns left to right, y to rows *bottom to top*, so that the grid
    looks like the scatter plot) and points are assigned to cells minimising the total squared distance between
    each point and its cell's centre: exactly (``scipy.optimize.linear_sum_assignment``) when the grid has at most
    ``exact_limit`` cells, otherwise within the blocks of a balanced recursive bisection of the grid (each split
    sends the points with the smaller coordinates to the block on that side, in proportion to the cells).

    Returns:
        ``(N, 2)`` int64 ``(row, col)``; all distinct.
    """
    from scipy.optimize import linear_sum_assignment

    pts = np.asarray(coords, dtype=np.float64)
    n = len(pts)
    if rows is None or cols is None:
        rows, cols = grid_shape(n)
    if rows * cols < n:
        raise UsageError(f"a {rows} x {cols} grid has fewer cells than the {n} images")
    u = _unit(pts)
    # Continuous grid coordinates: column centre c + 0.5 spans [0.5, cols - 0.5]; y up -> row 0 at the top.
    gx = 0.5 + u[:, 0] * (cols - 1)
    gy = 0.5 + (1.0 - u[:, 1]) * (rows - 1)
    cells = np.empty((n, 2), dtype=np.int64)

    def solve(idx: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> None:
        if len(idx) == 0:
            return
        n_cells = (r1 - r0) * (c1 - c0)
        if n_cells <= exact_limit:
            rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
            rr, cc = rr.ravel(), cc.ravel()
            cost = (gx[idx, None] - (cc[None, :] + 0.5)) ** 2 + (gy[idx, None] - (rr[None, :] + 0.5)) ** 2
            point, cell = linear_sum_assignment(cost)
            cells[idx[point], 0] = rr[cell]
            cells[idx[point], 1] = cc[cell]
            return
        if (c1 - c0) >= (r1 - r0):
            mid = c0 + (c1 - c0) // 2
            first = (r1 - r0) * (mid - c0)
            key = gx[idx]
            halves = ((r0, r1, c0, mid), (r0, r1, mid, c1))
        else:
            mid = r0 + (r1 - r0) // 2
            first = (mid - r0) * (c1 - c0)
            key = gy[idx]
            halves = ((r0, mid, c0, c1), (mid, r1, c0, c1))
        second = n_cells - first
        take = int(round(len(idx) * first / n_cells))
        take = min(first, max(len(idx) - second, take))
        order = idx[np.argsort(key, kind="stable")]
        solve(order[:take], *halves[0])
        solve(order[take:], *halves[1])

    solve(np.arange(n), 0, rows, 0, cols)
    return cells


def map_positions(coords: np.ndarray, canvas: int, thumb: int, margin: int = 0) -> np.ndarray:
    """Pixel centres of thumbnails on a ``canvas x canvas`` image for map ``coords``.

    One scale for both axes (the map's shape is kept), the map centred, x to the right and y *up* (as in the
    scatter plot); a thumbnail of side ``thumb`` centred at any returned position lies fully inside the canvas
    (and ``margin`` pixels from its edges).

    Returns:
        ``(N, 2)`` float64 ``(x, y)`` pixel coordinates.
    """
    c = np.asarray(coords, dtype=np.float64)
    lo, hi = c.min(axis=0), c.max(axis=0)
    span = float((hi - lo).max())
    usable = canvas - 2 * margin - thumb
    if usable <= 0:
        raise UsageError(f"canvas of {canvas} px too small for {thumb} px thumbnails")
    scale = usable / span if span > 0 else 0.0
    mid = (lo + hi) / 2.0
    x = canvas / 2.0 + (c[:, 0] - mid[0]) * scale
    y = canvas / 2.0 - (c[:, 1] - mid[1]) * scale
    return np.stack([x, y], axis=1)
