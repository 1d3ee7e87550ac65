"""Gallery runs: indexing, neighbour figures, leave-one-out evaluation and 2-D maps, with their manifests.

The engines live in :mod:`explain.gallery` (index, search) and :mod:`explain.embedding` (maps); this module turns
their results into files: neighbour strips, a scatter plot, a thumbnail map, a grid-snapped thumbnail map, an
overview panel, coordinates as CSV and ``.npy``, and the run's :class:`~explain.manifest.Manifest` (saved last by
the caller). Nothing here prints.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from explain.errors import UsageError
from explain.figures import FigureStyle
from explain.gallery import FeatureIndex, IndexUpdate, ProgressFn, build_index, embed_files, search
from explain.manifest import Manifest, write_bytes, write_npy, write_text

if TYPE_CHECKING:
    from explain.backbones.base import Backbone
    from explain.images import ImageFile

PLACEHOLDER = (200, 200, 200)
BACKGROUND = (255, 255, 255)
UNLABELLED = (150, 150, 150)
MIN_THUMB, MAX_THUMB = 8, 512
"""Bounds of a map's thumbnail side (pixels)."""
MAX_BORDER = 32
"""Widest label frame (pixels) around a map thumbnail."""
MAX_CANVAS = 16384
"""Widest thumbnail map (pixels a side): about 800 MB of RGB, drawn twice (map and grid)."""
MAX_FIGURE_NEIGHBOURS = 35
"""Neighbours drawn in a neighbours figure (4 rows of 9 with the query); the manifest lists all ``k``."""
OVERVIEW_DPI_SCALE = 110 / 150
"""The overview panel's resolution relative to ``--dpi`` (110 dpi by default): it is 16.5 inches wide."""


# --------------------------------------------------------------------------------------------------------------
# Thumbnails and colours


def load_thumbnail(path: str | Path, size: int) -> Image.Image | None:
    """A ``size x size`` RGB thumbnail (centre crop of the upright image), or ``None`` if the file is unusable.

    JPEGs are decoded at a reduced scale (PIL's draft mode), which makes maps of thousands of photos quick.
    """
    from explain.images import DEFAULT_MAX_PIXELS, to_rgb

    try:
        with Image.open(path) as im:
            if im.width * im.height > DEFAULT_MAX_PIXELS:
                return None
            im.draft("RGB", (size * 2, size * 2))
            im.load()
            upright = ImageOps.exif_transpose(im)
            rgb, _ = to_rgb(upright)
            return ImageOps.fit(rgb, (size, size), Image.Resampling.BICUBIC)
    except Exception:  # noqa: BLE001 - a missing or broken file becomes a grey placeholder
        return None


def load_thumbnails(paths: Sequence[str | Path], size: int, *, threads: int = 4,
                    progress: ProgressFn | None = None) -> list[Image.Image | None]:
    """Thumbnails of many files, decoded in threads (PIL releases the GIL while decoding)."""
    out: list[Image.Image | None] = [None] * len(paths)
    step = 64
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for start in range(0, len(paths), step):
            block = list(paths[start:start + step])
            for i, thumb in enumerate(pool.map(lambda p: load_thumbnail(p, size), block)):
                out[start + i] = thumb
            if progress is not None:
                progress("thumbnails", len(block), len(paths))
    return out


def unreadable_gallery_warning(index: FeatureIndex, rows: Sequence[int], context: str,
                               examples: int = 3) -> str | None:
    """The warning for gallery images that could not be read and were drawn as grey tiles (``None``: none).

    It says how many there are, names the first ``examples``, tells whether the whole gallery folder is gone
    (moved or deleted since indexing) and how to fix it; features and distances come from the index and stay valid.

    Args:
        index: the index whose gallery images were drawn.
        rows: rows of ``index`` whose thumbnail could not be loaded (repeats are counted once).
        context: what the images were drawn for, e.g. ``"shown as neighbours"``.
        examples: how many paths to name.
    """
    paths = [index.entries[r].path for r in sorted(set(int(r) for r in rows))]
    if not paths:
        return None
    named = ", ".join(paths[:examples]) + (", ..." if len(paths) > examples else "")
    where = index.directory or "DIR"
    if Path(index.root).is_dir():
        cause = f"they are missing, unreadable or changed in {index.root} since indexing"
        fix = f"update the index with 'cnn-explain index {index.root} --out {where}'"
    else:
        cause = f"the gallery folder {index.root} no longer exists, moved or deleted since indexing"
        labels = index.labels
        again = "" if labels is None else (" --labels folders" if labels.kind == "folders"
                                           else f" --labels {labels.path} (adjusted to the new folder)")
        fix = f"if it moved, rebuild the index with 'cnn-explain index NEW_FOLDER --out {where}{again} --rebuild'"
    return (f"{len(paths)} gallery image(s) {context} could not be read and are drawn as grey tiles: {cause} "
            f"({named}); the features come from the index and are unaffected; {fix}")


def label_colours(names: Sequence[str | None]) -> dict[str, tuple[int, int, int]]:
    """A distinct colour per label name (first-seen order; matplotlib's qualitative palettes)."""
    import matplotlib

    unique = [n for n in dict.fromkeys(names) if n is not None]
    if len(unique) <= 10:
        palette = list(matplotlib.colormaps["tab10"].colors)
    elif len(unique) <= 20:
        palette = list(matplotlib.colormaps["tab20"].colors)
    elif len(unique) <= 60:
        palette = [c for m in ("tab20", "tab20b", "tab20c") for c in matplotlib.colormaps[m].colors]
    else:
        cmap = matplotlib.colormaps["hsv"]
        palette = [cmap(i / len(unique))[:3] for i in range(len(unique))]
    rgb = [tuple(int(round(v * 255)) for v in colour[:3]) for colour in palette]
    return {name: rgb[i] for i, name in enumerate(unique)}  # type: ignore[misc]


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _framed(thumb: Image.Image | None, size: int, colour: tuple[int, int, int] | None, border: int) -> Image.Image:
    tile = thumb.copy() if thumb is not None else Image.new("RGB", (size, size), PLACEHOLDER)
    if colour is not None and border > 0:
        ImageDraw.Draw(tile).rectangle((0, 0, size - 1, size - 1), outline=colour, width=border)
    return tile


def _legend_strip(colours: dict[str, tuple[int, int, int]], width: int, font_size: int) -> Image.Image | None:
    if not colours:
        return None
    font = _font(font_size)
    swatch = font_size
    pad = font_size // 2
    entries = []
    for name, colour in colours.items():
        text_w = int(font.getlength(name)) if hasattr(font, "getlength") else 6 * len(name)
        entries.append((name, colour, swatch + pad + text_w + 2 * pad))
    lines: list[list[tuple[str, tuple[int, int, int], int]]] = [[]]
    used = pad
    for entry in entries:
        if used + entry[2] > width and lines[-1]:
            lines.append([])
            used = pad
        lines[-1].append(entry)
        used += entry[2]
    line_h = swatch + pad
    strip = Image.new("RGB", (width, pad + line_h * len(lines)), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for li, line in enumerate(lines):
        x, y = pad, pad + li * line_h
        for name, colour, w in line:
            draw.rectangle((x, y, x + swatch - 1, y + swatch - 1), fill=colour)
            draw.text((x + swatch + pad, y + swatch // 2), name, fill=(0, 0, 0), font=font, anchor="lm")
            x += w
    return strip


def _with_legend(canvas: Image.Image, colours: dict[str, tuple[int, int, int]]) -> Image.Image:
    strip = _legend_strip(colours, canvas.width, max(12, canvas.width // 70))
    if strip is None:
        return canvas
    out = Image.new("RGB", (canvas.width, canvas.height + strip.height), BACKGROUND)
    out.paste(canvas, (0, 0))
    out.paste(strip, (0, canvas.height))
    return out


# --------------------------------------------------------------------------------------------------------------
# Maps


def render_thumbnail_map(thumbs: Sequence[Image.Image | None], positions: np.ndarray, canvas: int, thumb: int,
                         colours: Sequence[tuple[int, int, int] | None] | None = None,
                         border: int = 0) -> Image.Image:
    """Thumbnails drawn centred at ``positions`` (pixel ``(x, y)``, from :func:`explain.embedding.map_positions`).

    Thumbnail ``i`` covers ``[round(x - thumb/2), +thumb) x [round(y - thumb/2), +thumb)``; later ones are drawn
    over earlier ones.
    """
    image = Image.new("RGB", (canvas, canvas), BACKGROUND)
    for i, (x, y) in enumerate(np.asarray(positions, dtype=np.float64)):
        tile = _framed(thumbs[i], thumb, colours[i] if colours is not None else None, border)
        image.paste(tile, (int(round(x - thumb / 2.0)), int(round(y - thumb / 2.0))))
    return image


def render_grid_map(thumbs: Sequence[Image.Image | None], cells: np.ndarray, rows: int, cols: int, cell: int,
                    colours: Sequence[tuple[int, int, int] | None] | None = None, border: int = 0) -> Image.Image:
    """Thumbnail ``i`` fills cell ``cells[i] = (row, col)``: pixels ``[col*cell, +cell) x [row*cell, +cell)``."""
    image = Image.new("RGB", (cols * cell, rows * cell), BACKGROUND)
    for i, (r, c) in enumerate(np.asarray(cells, dtype=np.int64)):
        tile = _framed(thumbs[i], cell, colours[i] if colours is not None else None, border)
        image.paste(tile, (int(c) * cell, int(r) * cell))
    return image


def scatter_figure(coords: np.ndarray, names: Sequence[str | None], title: str) -> Any:
    """Scatter plot of a 2-D map, one colour per label, legend at the right; titled with ``title`` unless empty."""
    from matplotlib.figure import Figure

    colours = label_colours(names)
    legend = bool(colours)
    ncol = 1 if len(colours) <= 18 else 2
    fig = Figure(figsize=(7.5 + (2.2 * ncol if legend else 0), 7.0), layout="constrained")
    ax = fig.subplots()
    arr = np.asarray(coords)
    size = float(np.clip(3000.0 / max(1, len(arr)), 4.0, 60.0))
    missing = [i for i, n in enumerate(names) if n is None]
    if missing:
        ax.scatter(arr[missing, 0], arr[missing, 1], s=size, c=[np.array(UNLABELLED) / 255], label="(no label)",
                   alpha=0.6, linewidths=0)
    for name, colour in colours.items():
        sel = [i for i, n in enumerate(names) if n == name]
        ax.scatter(arr[sel, 0], arr[sel, 1], s=size, c=[np.array(colour) / 255], label=name, alpha=0.85,
                   linewidths=0)
    if title:
        ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    if legend or missing:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, ncol=ncol, frameon=False,
                  markerscale=max(1.0, 30.0 / size))
    return fig


def overview_figure(scatter_coords: np.ndarray, names: Sequence[str | None], map_image: Image.Image,
                    grid_image: Image.Image, title: str) -> Any:
    """Scatter | thumbnail map | grid map, side by side, for reports."""
    from matplotlib.figure import Figure

    colours = label_colours(names)
    fig = Figure(figsize=(16.5, 5.9), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=[1.0, 1.0, 1.0])
    arr = np.asarray(scatter_coords)
    size = float(np.clip(3000.0 / max(1, len(arr)), 4.0, 60.0))
    for name, colour in colours.items():
        sel = [i for i, n in enumerate(names) if n == name]
        axes[0].scatter(arr[sel, 0], arr[sel, 1], s=size, c=[np.array(colour) / 255], label=name, linewidths=0)
    missing = [i for i, n in enumerate(names) if n is None]
    if missing:
        axes[0].scatter(arr[missing, 0], arr[missing, 1], s=size, c=[np.array(UNLABELLED) / 255], linewidths=0)
    axes[0].set_aspect("equal", adjustable="datalim")
    if colours:
        axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=8, frameon=False,
                       ncol=min(len(colours), 3 if len(colours) <= 9 else 5), markerscale=max(1.0, 30.0 / size))
    axes[0].set_title("feature map, coloured by label", fontsize=10)
    axes[1].imshow(np.asarray(map_image))
    axes[1].set_title("thumbnails at their map positions", fontsize=10)
    axes[2].imshow(np.asarray(grid_image))
    axes[2].set_title("snapped to a grid (one cell per image)", fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[1:]:
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.suptitle(title, fontsize=11)
    return fig


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------------
# index


def run_index(backbone: Backbone, gallery: str | Path, out: str | Path, *, layer: str | None = None,
              labels: str | Path | None = None, rebuild: bool = False, weights_arg: str | None = None,
              batch_size: int = 32, workers: int | None = None, device: Any = "cpu", argv: Sequence[str] = (),
              progress: ProgressFn | None = None, exclude: Sequence[str | Path] = ()) -> tuple[IndexUpdate, Manifest]:
    """Build or update the index of ``gallery`` in ``out``; the manifest lists what was embedded and what failed
    (``exclude``: more folders the gallery walk leaves out, see :func:`explain.gallery.build_index`)."""
    update = build_index(backbone, gallery, out, layer=layer, labels=labels, rebuild=rebuild,
                         weights_arg=weights_arg, batch_size=batch_size, workers=workers, device=device,
                         progress=progress, exclude=exclude)
    return update, index_manifest(update, gallery, argv)


def index_manifest(update: IndexUpdate, gallery: str | Path, argv: Sequence[str] = ()) -> Manifest:
    """The manifest of an index run (``outputs`` at run level: index file, features, file list)."""
    index = update.index
    import json

    meta = json.loads((index.directory / "index.json").read_text()) if index.directory else {}
    shown = Path(gallery).as_posix().rstrip("/")
    rows = {e.path: i for i, e in enumerate(index.entries)}
    status = {**{p: "added" for p in update.added}, **{p: "changed" for p in update.changed}}
    manifest = Manifest(command="index", argv=argv, model=index.model, extra={
        "layer": index.layer,
        "pooling": index.pooling,
        "gallery": str(index.root),
        "index": {
            "count": len(index), "dim": index.dim, "labelled": sum(e.label is not None for e in index.entries),
            "added": len(update.added), "changed": len(update.changed), "removed": len(update.removed),
            "unchanged": update.unchanged, "failed": len(update.errors), "rebuilt": update.rebuilt,
        },
        "removed": update.removed,
        "outputs": {"index": "index.json", "features": meta.get("features", {}).get("file"),
                    "files": meta.get("files", {}).get("file")},
    })
    for path, state in status.items():
        entry = index.entries[rows[path]]
        manifest.items.append({"input": f"{shown}/{path}", "input_sha256": entry.sha256, "row": rows[path],
                               "status": state, "label": entry.label_name})
    for err in update.errors:
        manifest.add_error(f"{shown}/{err.path}", err.reason)
    manifest.warnings.extend(update.warnings)
    return manifest


# --------------------------------------------------------------------------------------------------------------
# neighbours


@dataclass
class NeighbourOptions:
    """``k``, the metric, the search backend and the figure format/thumbnail size of a neighbours run, and the
    figures' resolution and titles (:class:`explain.figures.FigureStyle`; ``title_path=False``: a neighbour without
    a label is named by its file name, not its path in the gallery)."""

    k: int = 8
    metric: str = "l2"
    backend: str = "torch"
    fmt: str = "png"
    thumb: int = 160
    style: FigureStyle = FigureStyle()


def neighbours_figure(query: Image.Image | None, query_title: str, thumbs: Sequence[Image.Image | None],
                      captions: Sequence[str], thumb: int = 160) -> Any:
    """Query, then its neighbours in order, each captioned (distance, label)."""
    from matplotlib.figure import Figure

    n = len(thumbs) + 1
    cols = min(n, 9)
    rows = -(-n // cols)
    fig = Figure(figsize=(1.75 * cols, 1.95 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    tiles = [query, *thumbs]
    titles = [query_title, *captions]
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.set_axis_off()
            continue
        tile = tiles[i] if tiles[i] is not None else Image.new("RGB", (thumb, thumb), PLACEHOLDER)
        ax.imshow(np.asarray(tile))
        ax.set_title(titles[i], fontsize=7.5, fontweight="bold" if i == 0 else "normal")
        for spine in ax.spines.values():
            spine.set_edgecolor("#d62728" if i == 0 else "#999999")
            spine.set_linewidth(2.5 if i == 0 else 0.8)
    return fig


def _short(text: str, width: int = 22) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def run_neighbours(index: FeatureIndex, backbone: Backbone, files: Sequence[ImageFile], out: str | Path,
                   opts: NeighbourOptions, *, batch_size: int = 32, workers: int = 0, device: Any = "cpu",
                   argv: Sequence[str] = (), progress: ProgressFn | None = None) -> Manifest:
    """Embed the query images with the index's model and layer, find their neighbours, draw one figure per query."""
    from explain.run import output_stems
    from explain.figures import check_format

    fmt = check_format(opts.fmt)
    out = Path(out)
    manifest = Manifest(command="neighbours", argv=argv, model=index.model, extra={
        "index": str(index.directory) if index.directory else None, "layer": index.layer, "metric": opts.metric,
        "k": opts.k, "backend": opts.backend,
    })
    if not files:
        return manifest
    result = embed_files(backbone, files, index.layer, batch_size=batch_size, workers=workers, device=device,
                         progress=progress)
    for err in result.errors:
        manifest.add_error(err.path, err.reason)
    if not result.rows:
        return manifest
    itself = index.rows_of(result.sha256)  # a query that is in the gallery is not its own nearest neighbour
    found = search(result.features, index.features, opts.k, opts.metric, exclude=itself, backend=opts.backend,
                   progress=progress)
    manifest.extra["backend"] = found.backend
    stems = output_stems([files[r].display for r in result.rows])
    drawn = min(found.ids.shape[1], MAX_FIGURE_NEIGHBOURS)
    if drawn < found.ids.shape[1]:
        manifest.warnings.append(f"the figures show the {drawn} nearest of the {found.ids.shape[1]} neighbours "
                                 "(the manifest lists all of them)")
    unreadable: set[int] = set()
    for q, row in enumerate(result.rows):
        file = files[row]
        neighbours = []
        for rank, (gid, dist) in enumerate(zip(found.ids[q], found.distances[q]), start=1):
            entry = index.entries[int(gid)]
            neighbours.append({"rank": rank, "path": entry.path, "row": int(gid), "distance": round(float(dist), 6),
                               "label": entry.label, "class_name": entry.class_name, "sha256": entry.sha256})
        thumbs = [load_thumbnail(index.file(int(g)), opts.thumb) for g in found.ids[q, :drawn]]
        unreadable.update(int(g) for g, t in zip(found.ids[q], thumbs) if t is None)
        unit = "d" if opts.metric == "l2" else "1-cos"
        captions = [f"#{n['rank']} {unit}={n['distance']:.4g}\n"
                    f"{_short(index.entries[n['row']].label_name or opts.style.name(n['path']))}"
                    for n in neighbours[:drawn]]
        fig = neighbours_figure(load_thumbnail(file.path, opts.thumb), f"query\n{_short(Path(file.display).name)}",
                                thumbs, captions, opts.thumb)
        rel = f"{stems[q]}/neighbours.{fmt}"
        opts.style.save(out / rel, fig)
        item = {"input": file.display, "input_sha256": result.sha256[q], "neighbours": neighbours,
                "outputs": {"figure": rel}}
        if itself[q] >= 0:
            item["left_out"] = {"row": int(itself[q]), "path": index.entries[int(itself[q])].path,
                                "reason": "the query itself (same file contents) is in the gallery"}
        manifest.items.append(item)
        if progress is not None:
            progress("figures", 1, len(result.rows))
    warning = unreadable_gallery_warning(index, sorted(unreadable), "shown as neighbours")
    if warning:
        manifest.warnings.append(warning)
    return manifest


# --------------------------------------------------------------------------------------------------------------
# tsne


@dataclass
class MapOptions:
    """What map to make and how to draw it.

    Attributes:
        method: ``tsne``, ``pca`` or ``umap``.
        perplexity: t-SNE perplexity.
        seed: random seed.
        pca_dims: PCA dimensions before t-SNE/UMAP.
        trust_k: neighbourhood size of the trustworthiness score.
        thumb: thumbnail side in pixels (``None``: 96 up to 100 images, 64 up to 2,500, else 32).
        fmt: scatter/overview figure format (maps are always PNG).
        backend: t-SNE implementation (``auto``, ``opentsne``, ``sklearn``).
        border: width of the label-coloured frame around thumbnails (0: none).
        threads: t-SNE threads (``None``: :func:`explain.embedding.tsne_threads` decides).
        style: resolution and titles of the scatter and overview figures (:class:`explain.figures.FigureStyle`).
    """

    method: str = "tsne"
    perplexity: float = 30.0
    seed: int = 0
    pca_dims: int = 50
    trust_k: int = 5
    thumb: int | None = None
    fmt: str = "png"
    backend: str = "auto"
    border: int = 3
    threads: int | None = None
    style: FigureStyle = FigureStyle()

    def check(self) -> MapOptions:
        """Refuse options that cannot work, before any embedding is done; returns ``self``.

        Raises:
            UsageError: ``trust_k < 1``; ``border`` outside 0..:data:`MAX_BORDER`; ``thumb`` outside
                :data:`MIN_THUMB`..:data:`MAX_THUMB`; ``threads`` 0 or below -1; a non-positive t-SNE perplexity.
        """
        from explain.embedding import check_threads

        if self.trust_k < 1:
            raise UsageError(f"--trust-k must be at least 1 (got {self.trust_k})")
        if not 0 <= self.border <= MAX_BORDER:
            raise UsageError(f"--border must be between 0 and {MAX_BORDER} pixels (got {self.border})")
        if self.thumb is not None:
            _check_thumb(self.thumb)
        if self.method == "tsne" and self.perplexity <= 0:
            raise UsageError(f"--perplexity must be positive (got {self.perplexity:g})")
        check_threads(self.threads)
        return self


def auto_thumb(n: int) -> int:
    """The default thumbnail side: 96 px up to 100 images, 64 up to 2,500, else 32."""
    return 96 if n <= 100 else 64 if n <= 2500 else 32


def canvas_side(rows: int, cols: int, thumb: int) -> int:
    """Side of the square thumbnail map: about 1.2x the grid's side (t-SNE packs each class tightly, so a larger
    canvas is mostly white space), at least 800 px."""
    return max(800, int(round(max(rows, cols) * thumb * 1.2)))


def _check_thumb(thumb: int) -> None:
    if not MIN_THUMB <= thumb <= MAX_THUMB:
        raise UsageError(f"--thumb-size must be between {MIN_THUMB} and {MAX_THUMB} pixels (got {thumb})")


def map_thumb(n: int, requested: int | None) -> int:
    """The thumbnail side of a map of ``n`` images: ``requested``, or :func:`auto_thumb` shrunk (not below
    :data:`MIN_THUMB`) until the map fits in :data:`MAX_CANVAS` pixels a side.

    Raises:
        UsageError: ``requested`` is out of bounds or makes the map wider than :data:`MAX_CANVAS`.
    """
    from explain.embedding import grid_shape

    rows, cols = grid_shape(n)
    fit = int(MAX_CANVAS / (max(rows, cols) * 1.2))
    if requested is None:
        return max(MIN_THUMB, min(auto_thumb(n), fit))
    _check_thumb(requested)
    if canvas_side(rows, cols, requested) > MAX_CANVAS:
        raise UsageError(f"--thumb-size {requested} would make a map of {n} images "
                         f"{canvas_side(rows, cols, requested)} pixels wide (at most {MAX_CANVAS}): use "
                         f"--thumb-size {max(MIN_THUMB, fit)} or less")
    return requested


def run_tsne(index: FeatureIndex, out: str | Path, opts: MapOptions, *, argv: Sequence[str] = (),
             progress: ProgressFn | None = None) -> Manifest:
    """Map the index to 2-D and write coordinates, scatter, thumbnail map, grid map and overview."""
    from explain.embedding import embed_2d, grid_assign, grid_shape, map_positions, trustworthiness
    from explain.figures import check_format

    fmt = check_format(opts.fmt)
    opts.check()
    out = Path(out)
    n = len(index)
    thumb = map_thumb(n, opts.thumb)
    result = embed_2d(index.features, opts.method, perplexity=opts.perplexity, seed=opts.seed, pca_dims=opts.pca_dims,
                      backend=opts.backend, n_jobs=opts.threads, progress=progress)
    coords = result.coords
    warnings = list(result.warnings)
    trust: float | None = None
    if opts.trust_k < n / 2:
        trust = trustworthiness(index.features, coords, opts.trust_k, seed=opts.seed)
    else:
        warnings.append(f"trustworthiness not computed: k={opts.trust_k} needs more than {2 * opts.trust_k} images")

    names = index.label_names()
    palette = label_colours(names)
    colours = [palette.get(name) if name is not None else None for name in names] if palette else None
    rows, cols = grid_shape(n)
    cells = grid_assign(coords, rows, cols)
    canvas = canvas_side(rows, cols, thumb)
    positions = map_positions(coords, canvas, thumb, margin=thumb // 4)
    thumbs = load_thumbnails([index.file(i) for i in range(n)], thumb, progress=progress)
    warning = unreadable_gallery_warning(index, [i for i, t in enumerate(thumbs) if t is None], "of the map")
    if warning:
        warnings.append(warning)
    border = opts.border if colours else 0
    map_image = render_thumbnail_map(thumbs, positions, canvas, thumb, colours, border)
    grid_image = render_grid_map(thumbs, cells, rows, cols, thumb, colours, border)

    method_title = {"tsne": "t-SNE", "pca": "PCA", "umap": "UMAP"}[opts.method]
    title = (f"{method_title} of {n} images · {index.model.get('name')} {index.layer}"
             + (f" · trustworthiness@{opts.trust_k} {trust:.3f}" if trust is not None else ""))
    outputs = {"coords_csv": "coords.csv", "coords": "coords.npy", "cells": "cells.npy",
               "scatter": f"scatter.{fmt}", "map": "map.png", "grid": "grid.png", "overview": f"overview.{fmt}"}
    write_npy(out / outputs["coords"], coords)
    write_npy(out / outputs["cells"], cells.astype(np.int64))
    write_text(out / outputs["coords_csv"], _coords_csv(index, coords, cells))
    opts.style.save(out / outputs["scatter"], scatter_figure(coords, names, opts.style.title_of(title)))
    write_bytes(out / outputs["map"], _png(_with_legend(map_image, palette)))
    write_bytes(out / outputs["grid"], _png(_with_legend(grid_image, palette)))
    opts.style.save(out / outputs["overview"], overview_figure(coords, names, map_image, grid_image, title),
                    scale=OVERVIEW_DPI_SCALE)

    manifest = Manifest(command="tsne", argv=argv, model=index.model, extra={
        "index": str(index.directory) if index.directory else None,
        "layer": index.layer,
        "method": opts.method,
        "params": result.params,
        "trustworthiness": {"k": opts.trust_k, "value": None if trust is None else round(trust, 6)},
        "grid": {"rows": rows, "cols": cols, "cell_px": thumb},
        "map": {"canvas_px": canvas, "thumb_px": thumb, "y_axis": "up (pixel y = canvas/2 - (y - y_mid) * scale)"},
        "outputs": outputs,
    })
    for i, entry in enumerate(index.entries):
        manifest.items.append({"input": entry.path, "input_sha256": entry.sha256, "label": entry.label,
                               "class_name": entry.class_name, "xy": [round(float(v), 5) for v in coords[i]],
                               "cell": [int(cells[i, 0]), int(cells[i, 1])],
                               "map_px": [round(float(v), 2) for v in positions[i]]})
    manifest.warnings.extend(warnings)
    return manifest


def _coords_csv(index: FeatureIndex, coords: np.ndarray, cells: np.ndarray) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "class_name", "x", "y", "grid_row", "grid_col"])
    for i, entry in enumerate(index.entries):
        writer.writerow([entry.path, entry.label or "", entry.class_name or "", f"{coords[i, 0]:.6g}",
                         f"{coords[i, 1]:.6g}", int(cells[i, 0]), int(cells[i, 1])])
    return buffer.getvalue()
