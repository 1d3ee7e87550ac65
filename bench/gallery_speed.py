"""How fast the gallery engines are, against the natural baselines.

Three measurements, printed in one run:

1. **Indexing throughput / forward throughput.** ``build_index`` (decode + preprocess in DataLoader workers, the
   forward pass to the feature layer, hashing, writing the index) on N gallery images, against the model's own
   ``model(x)`` under ``torch.no_grad()`` on the same images already decoded into one tensor (batches of the same
   size). Target: at least 0.9, i.e. decoding hides behind the model.
2. **Exact search vs faiss.** 1,000 queries, k = 8, in 100,000 x 1280 random float32 features: ``search()`` (chunked
   torch matrix products plus the exact float64 re-ranking) against faiss ``IndexFlatL2`` (``add`` + ``search``)
   when faiss is installed. Target: at most 1.5x faiss's time.
3. **t-SNE vs openTSNE.** 10,000 clustered points in 1280 dimensions: ``embed_2d(method="tsne")`` (PCA to 50
   dimensions *included in the time*, then openTSNE) against openTSNE's defaults (``openTSNE.TSNE().fit``) on the
   same 50-dimensional PCA scores. Target: at most 1.1x. ``--sklearn`` also times scikit-learn's TSNE.

Runs are interleaved within every repeat, in alternating order (drifts in machine load hit both sides alike), and
medians reported, with the best-run ratios as a check on noise.

Run: ``python bench/gallery_speed.py [--images N] [--gallery DIR] [--repeats N] [--skip index,search,tsne]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from explain.gallery import build_index, faiss_available, search  # noqa: E402

CALTECH = ROOT.parent / "shared" / "data" / "caltech101-25x30"
SMALL = ROOT / "sample_images" / "gallery"


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of every run of each function, the functions interleaved within every repeat."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:  # ABBA: drifts in load cancel out
            fn = runs[name]
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def med(values: list[float]) -> float:
    return statistics.median(values)


def bench_index(gallery: Path, n_images: int, batch: int, workers: int, repeats: int) -> None:
    from explain import load_backbone
    from explain.images import find_images, load_image

    files, _ = find_images([gallery])
    if not files:
        print(f"[index] no images in {gallery}; skipped")
        return
    step = max(1, len(files) // n_images)
    chosen = files[::step][:n_images]
    with tempfile.TemporaryDirectory() as tmp:
        sub = Path(tmp) / "gallery"
        for f in chosen:  # a gallery folder holding exactly these images (symbolic links: no copying)
            target = sub / f.display.replace("/", "__")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(f.path.resolve())
        bb = load_backbone("efficientnet_lite0")
        model = bb.model.eval()
        x = torch.stack([bb.preprocess(load_image(f.path).image) for f in chosen])

        def forward() -> None:
            with torch.no_grad():
                for i in range(0, len(x), batch):
                    model(x[i:i + batch])

        def forward_cl() -> None:  # the forward pass as indexing runs it: channels-last, inference mode
            model.to(memory_format=torch.channels_last)
            try:
                with torch.inference_mode():
                    for i in range(0, len(x), batch):
                        model(x[i:i + batch].contiguous(memory_format=torch.channels_last))
            finally:
                model.to(memory_format=torch.contiguous_format)

        runs: dict[str, Callable[[], object]] = {"forward": forward, "forward_cl": forward_cl}
        for w in sorted({0, workers}):
            runs[f"index w={w}"] = (lambda w=w: build_index(bb, sub, Path(tmp) / f"idx{w}", rebuild=True,
                                                            batch_size=batch, workers=w))
        times = interleaved(runs, repeats)
    n = len(chosen)
    base = med(times["forward"])
    print(f"[index] {n} images from {gallery}, batch {batch}, torch threads {torch.get_num_threads()}, "
          f"{repeats} interleaved repeats (medians)")
    cl = med(times["forward_cl"])
    print(f"  model(x) under no_grad, decoded tensors:       {n / base:7.1f} images/s")
    print(f"  same, channels-last + inference_mode:          {n / cl:7.1f} images/s")
    for name, values in times.items():
        if name.startswith("forward"):
            continue
        ratio = base / med(values)
        best = min(times["forward"]) / min(values)
        print(f"  {name:<10} (decode+forward+hash+write): {n / med(values):7.1f} images/s   "
              f"ratio to no-grad forward {ratio:.3f} (best runs {best:.3f}, target >= 0.9); "
              f"to the channels-last forward {cl / med(values):.3f}")


def bench_search(n: int, dim: int, n_queries: int, k: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((n, dim), dtype=np.float32)
    queries = rng.standard_normal((n_queries, dim), dtype=np.float32)
    runs: dict[str, Callable[[], object]] = {"torch": lambda: search(queries, base, k, "l2", backend="torch")}
    if faiss_available():
        import faiss

        def flat() -> object:
            index = faiss.IndexFlatL2(dim)
            index.add(base)
            return index.search(queries, k)

        runs["faiss IndexFlatL2"] = flat
        runs["ours, faiss backend"] = lambda: search(queries, base, k, "l2", backend="faiss")
    times = interleaved(runs, repeats)
    print(f"[search] {n_queries} queries, k={k}, in {n:,} x {dim} float32 (random), {repeats} repeats (medians)")
    ref = "faiss IndexFlatL2"
    for name, values in times.items():
        line = f"  {name:<20} {med(values):7.2f}s"
        if ref in times and name != ref:
            line += f"   ratio to faiss {med(values) / med(times[ref]):.2f}  (best runs " \
                    f"{min(values) / min(times[ref]):.2f})" + ("  target <= 1.5" if name == "torch" else "")
        print(line)
    if ref not in times:
        print("  faiss not installed (pip install faiss-cpu): no reference time")
    else:
        a = search(queries[:50], base, k, backend="torch")
        b = search(queries[:50], base, k, backend="faiss")
        same = bool((a.ids == b.ids).all() and (a.distances == b.distances).all())
        print(f"  identical results torch vs faiss backend: {same}")


def clustered(n: int, dim: int, k: int = 25, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, size=(k, dim)).astype(np.float32) * 3
    labels = rng.integers(0, k, size=n)
    return (centres[labels] + rng.standard_normal((n, dim), dtype=np.float32)).astype(np.float32)


def bench_tsne(n: int, dim: int, repeats: int, with_sklearn: bool) -> None:
    from openTSNE import TSNE

    from explain.embedding import embed_2d, pca, trustworthiness

    x = clustered(n, dim)
    x50, _ = pca(x, 50)
    results: dict[str, np.ndarray] = {}

    def ours() -> None:
        # as the CLI runs it: with a progress callback (openTSNE then also evaluates the KL divergence)
        results["ours"] = embed_2d(x, "tsne", seed=0, progress=lambda stage, n, total: None).coords

    def reference() -> None:
        results["openTSNE"] = np.asarray(TSNE(random_state=0).fit(x50))

    runs: dict[str, Callable[[], object]] = {"ours (PCA + openTSNE)": ours, "openTSNE default": reference}
    if with_sklearn:
        from sklearn.manifold import TSNE as SkTSNE

        def sk() -> None:
            results["sklearn"] = SkTSNE(random_state=0, init="pca", learning_rate="auto").fit_transform(x50)

        runs["scikit-learn TSNE"] = sk
    # Warm-up on a small sample: imports, first-call set-up of the FFT and neighbour-search code, PCA's LAPACK.
    embed_2d(x[:2000], "tsne", seed=0, pca_dims=50)
    TSNE(random_state=0, n_iter=25, early_exaggeration_iter=25, negative_gradient_method="fft").fit(x50[:2000])
    times = interleaved(runs, repeats, warmup=0)
    ref = med(times["openTSNE default"])
    print(f"[t-SNE] {n:,} points, {dim}-d clustered, {repeats} repeats (medians; openTSNE given the PCA-50 scores)")
    for name, values in times.items():
        target = "  target <= 1.1" if name.startswith("ours") else ""
        print(f"  {name:<24} {med(values):7.1f}s   ratio to openTSNE default {med(values) / ref:.2f} (best runs "
              f"{min(values) / min(times['openTSNE default']):.2f}){target}")
    print(f"  trustworthiness@5 (2,000-point sample) ours {trustworthiness(x, results['ours'], 5, max_points=2000):.3f}"
          f", openTSNE default {trustworthiness(x, results['openTSNE'], 5, max_points=2000):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery", type=Path, default=CALTECH if CALTECH.is_dir() else SMALL)
    parser.add_argument("--images", type=int, default=256, help="gallery images for the indexing benchmark")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--search-n", type=int, default=100_000)
    parser.add_argument("--tsne-n", type=int, default=10_000)
    parser.add_argument("--tsne-repeats", type=int, default=2)
    parser.add_argument("--sklearn", action="store_true", help="also time scikit-learn's TSNE (slow)")
    parser.add_argument("--skip", default="", help="comma-separated: index, search, tsne")
    args = parser.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if "index" not in skip:
        bench_index(args.gallery, args.images, args.batch, args.workers, args.repeats)
    if "search" not in skip:
        bench_search(args.search_n, 1280, 1000, 8, args.repeats)
    if "tsne" not in skip:
        bench_tsne(args.tsne_n, 1280, args.tsne_repeats, args.sklearn)
    if hasattr(os, "getloadavg"):
        print(f"load average after the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs "
              "(other processes add noise)")


if __name__ == "__main__":
    main()
