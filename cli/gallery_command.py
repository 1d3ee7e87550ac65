"""``cnn-explain index``, ``neighbours`` and ``tsne``: a feature index of a gallery, nearest neighbours, 2-D maps."""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.common import (
    OMIT, ModelOptions, RunArgs, WorkersOpt, advance_with_eta, check_out_is_not_an_input, claim_output, collect_images,
    finish, handle_errors, model_command, print_table, progress_columns, say, stderr_line,
)
from explain.errors import UsageError

if TYPE_CHECKING:
    from explain.gallery import FeatureIndex

DEFAULT_MODEL = "efficientnet_lite0"
MIN_THUMB, MAX_THUMB, MAX_BORDER = 8, 512, 32
"""``explain.gallery_run``'s bounds, repeated here so that ``--help`` needs no NumPy (a test keeps them equal)."""

GalleryArg = Annotated[Path, typer.Argument(help="Folder of images (walked recursively, sorted).", show_default=False)]
IndexModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="Backbone name ('cnn-explain models'). Default: the index's model, else "
                          f"{DEFAULT_MODEL}.", show_default=False)]
LayerOpt = Annotated[str | None, typer.Option(
    "--layer", "-l", help="Layer whose output (globally average-pooled) is the feature vector. Default: the index's "
                          "layer, else the model's penultimate features.", show_default=False)]
LabelsOpt = Annotated[str | None, typer.Option(
    help="Labels: a CSV with columns path,label[,class_name] (paths relative to the gallery), or 'folders' to use "
         "each image's sub-folder name. Default: what the index used before.", show_default=False)]
FormatOpt = Annotated[str, typer.Option("--format", help="Figure format: png, svg or pdf.")]
MetricOpt = Annotated[str, typer.Option(help="Distance: l2 (Euclidean) or cosine (1 - cosine similarity).")]
IndexBatchOpt = Annotated[int, typer.Option(min=1, max=512, help="Images per forward pass.")]
IndexWorkersOpt = Annotated[int | None, typer.Option(
    min=0, help="Processes decoding images in parallel with the model. Default: 2 on a multi-core machine.",
    show_default=False)]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder (manifest.json lists every file).")]
gallery_command = functools.partial(model_command, model=None, model_option=IndexModelOpt, batch_size=32,
                                    batch_option=IndexBatchOpt, workers=None, workers_option=IndexWorkersOpt,
                                    out_option=OutOpt)
"""The shared options of the gallery commands: the model defaults to the index's own."""


# --- progress -------------------------------------------------------------------------------------------------
@contextmanager
def stage_progress(quiet: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich progress display with one bar per stage (embedding, t-SNE, thumbnails...); ``None`` when silent."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    tasks: dict[str, Any] = {}
    columns = progress_columns("{task.description:<11}")
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        def advance(stage: str, n: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            advance_with_eta(progress, tasks[stage], n)

        yield advance


def _argv() -> list[str]:
    return ["cnn-explain", *sys.argv[1:]]


def _index_exists(folder: Path) -> bool:
    from explain.gallery import INDEX_FILE

    return (folder / INDEX_FILE).is_file()


def _stored_model(folder: Path) -> tuple[str | None, str | None, str | None]:
    """``(model name, weights argument, layer)`` recorded in an index folder, without loading the features."""
    import json

    from explain.gallery import INDEX_FILE

    try:
        meta = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
        return meta["model"]["name"], meta["model"].get("weights_arg"), meta["layer"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, None, None


def _with_stored(options: ModelOptions, layer: str | None, stored: tuple[str | None, str | None, str | None]
                 ) -> tuple[ModelOptions, str | None]:
    """The model, weights and layer to use: those asked for, else an index's own ``stored = (model, weights, layer)``
    (its weights and layer only when the model is the index's)."""
    stored_name, stored_weights, stored_layer = stored
    name = options.model or stored_name or DEFAULT_MODEL
    same = stored_name is not None and name == stored_name
    weights = stored_weights if options.weights is None and same else options.weights
    return dataclasses.replace(options, model=name, weights=weights), stored_layer if layer is None and same else layer


def _load_model_for(index: FeatureIndex, options: ModelOptions) -> tuple[Any, Any]:
    """The index's model (or the one asked for), refused unless its features match the index."""
    from explain.gallery import backbone_record, check_compatible

    options, _ = _with_stored(options, None, (index.model.get("name"), index.model.get("weights_arg"), index.layer))
    backbone, dev = options.load()
    check_compatible(index, backbone_record(backbone, options.weights), index.layer, purpose="query")
    return backbone, dev


# --- index ----------------------------------------------------------------------------------------------------
@handle_errors
@gallery_command(out=OMIT)
def index(
    gallery: GalleryArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Index folder (created, or updated incrementally).",
                                      show_default=False)],
    labels: LabelsOpt = None,
    layer: LayerOpt = None,
    rebuild: Annotated[bool, typer.Option(
        help="Replace an existing index (another model's, or a corrupt one).")] = False,
    *,
    model_options: ModelOptions,
    run: RunArgs,
) -> None:
    """Embed a folder of images into a reusable feature index; re-running embeds only new or changed files."""
    from explain.gallery_run import run_index

    claim_output(out)  # before the model loads; the library starts the output once its checks pass
    check_out_is_not_an_input(out, [gallery])
    options, layer = _with_stored(model_options, layer, (None, None, None) if rebuild else _stored_model(out))
    backbone, dev = options.load()
    with stage_progress(run.quiet) as progress:
        update, manifest = run_index(backbone, gallery, out, layer=layer, labels=labels, rebuild=rebuild,
                                     weights_arg=options.weights, batch_size=run.batch_size, workers=run.workers,
                                     device=dev, argv=_argv(), progress=progress)
    if not run.as_json and not run.quiet:
        idx = update.index
        labelled = sum(e.label is not None for e in idx.entries)
        classes_n = len({e.label for e in idx.entries if e.label is not None})
        say(
            f"index {out}: {len(idx)} images, {idx.dim}-d features of {idx.model['name']} at {idx.layer} · "
            f"added {len(update.added)}, changed {len(update.changed)}, removed {len(update.removed)}, "
            f"unchanged {update.unchanged}, failed {len(update.errors)}"
            + (f" · {labelled} labelled, {classes_n} classes" if labelled else " · no labels"))
    finish(manifest, out, run.as_json, len(update.index), run.quiet)


# --- neighbours -----------------------------------------------------------------------------------------------
@handle_errors
@gallery_command(workers=0, workers_option=WorkersOpt, figures=True)
def neighbours(
    index_dir: Annotated[Path, typer.Option("--index", "-i", help="Index folder ('cnn-explain index').",
                                            show_default=False)],
    images: Annotated[list[str] | None, typer.Argument(
        help="Query image files and/or folders.", show_default=False)] = None,
    k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Neighbours per query.")] = 8,
    metric: MetricOpt = "l2",
    backend: Annotated[str, typer.Option(help="Search backend: torch, faiss (if installed) or auto.")] = "torch",
    evaluate: Annotated[bool, typer.Option(
        "--evaluate",
        help="Leave-one-out over the labelled gallery: class purity of the k nearest, for k = 1, 5, 10 and -k.",
    )] = False,
    fmt: FormatOpt = "png",
    *,
    model_options: ModelOptions,
    run: RunArgs,
) -> None:
    """Nearest gallery images of each query in feature space (exact search), with a figure per query."""
    from explain.gallery import METRICS, evaluate_purity, load_index
    from explain.gallery_run import NeighbourOptions, run_neighbours
    from explain.manifest import Manifest, begin_output

    if metric not in METRICS:
        raise UsageError(f"unknown --metric {metric!r}: choose l2 or cosine")
    if not images and not evaluate:
        raise UsageError("give query IMAGES, or --evaluate to measure the labelled gallery (see --help)")
    from explain.figures import check_format
    from explain.gallery import check_search_args

    opts = NeighbourOptions(k=k, metric=metric, backend=backend, fmt=fmt.lower(), style=run.style)
    check_search_args(k, metric, backend)
    check_format(opts.fmt)
    out = claim_output(run.out)
    idx = load_index(index_dir)
    files, find_errors = collect_images(images, out) if images else ([], [])
    with stage_progress(run.quiet) as progress:
        if files:
            backbone, dev = _load_model_for(idx, model_options)
            begin_output(out)
            manifest = run_neighbours(idx, backbone, files, out, opts, batch_size=run.batch_size,
                                      workers=run.workers, device=dev, argv=_argv(), progress=progress)
        else:
            begin_output(out)
            manifest = Manifest(command="neighbours", argv=_argv(), model=idx.model, extra={
                "index": str(idx.directory), "layer": idx.layer, "metric": metric, "k": k, "backend": backend})
        report = None
        if evaluate:
            report = evaluate_purity(idx, sorted({1, 5, 10, k}), metric, backend=backend, progress=progress)
            manifest.extra["evaluation"] = {
                "method": "leave-one-out", "metric": metric, "evaluated": report.evaluated,
                "unlabelled": report.unlabelled, "purity": {str(k_): round(v, 6) for k_, v in report.purity.items()},
                "per_class": {name: {str(k_): round(v, 6) for k_, v in row.items()}
                              for name, row in report.per_class.items()},
                "notes": report.notes,
            }
    for err in reversed(find_errors):
        manifest.errors.insert(0, {"input": err.path, "error": err.reason})
    if not run.as_json and not run.quiet:
        _print_neighbours(manifest, out)
        if report is not None:
            _print_purity(report)
    n_ok = len(manifest.items) if files or find_errors else 1
    finish(manifest, out, run.as_json, n_ok, run.quiet)


def _print_neighbours(manifest: Any, out: Path) -> None:
    from rich.table import Table

    if not manifest.items:
        return
    table = Table(show_edge=False, pad_edge=False)
    for col in ("query", "nearest", "distance", "label", "figure"):
        table.add_column(col)
    for item in manifest.items:
        first = item["neighbours"][0]
        table.add_row(item["input"], first["path"], f"{first['distance']:.4g}",
                      str(first["class_name"] or first["label"] or ""), str(out / item["outputs"]["figure"]))
    print_table(table)


def _print_purity(report: Any) -> None:
    from rich.table import Table

    say(f"leave-one-out class purity ({report.metric}, {report.evaluated} labelled images"
        + (f", {report.unlabelled} unlabelled left out" if report.unlabelled else "") + "):")
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("k", justify="right")
    table.add_column("purity", justify="right")
    for k_, value in report.purity.items():
        table.add_row(str(k_), f"{value:.4f}")
    print_table(table)
    for note in report.notes:
        stderr_line(f"note: {note}")


# --- tsne -----------------------------------------------------------------------------------------------------
@handle_errors
@gallery_command(figures=True)
def tsne(
    gallery: Annotated[Path | None, typer.Argument(
        help="Folder of images (indexed into OUT/index first, incrementally); or use --index.",
        show_default=False)] = None,
    index_dir: Annotated[Path | None, typer.Option("--index", "-i", help="An existing index folder (no re-embedding).",
                                                   show_default=False)] = None,
    method: Annotated[str, typer.Option(help="tsne, pca or umap (umap needs the 'umap' extra).")] = "tsne",
    perplexity: Annotated[float, typer.Option(min=0.0, help="t-SNE perplexity (lowered for small galleries).")] = 30.0,
    pca_dims: Annotated[int, typer.Option(min=0, help="PCA dimensions before t-SNE/UMAP (0: none).")] = 50,
    trust_k: Annotated[int, typer.Option(min=1, help="Neighbourhood size of the trustworthiness score.")] = 5,
    thumb_size: Annotated[int | None, typer.Option(
        min=MIN_THUMB, max=MAX_THUMB,
        help="Thumbnail side in pixels. Default: 96 up to 100 images, 64 up to 2,500, else 32.",
        show_default=False)] = None,
    border: Annotated[int, typer.Option(
        min=0, max=MAX_BORDER, help="Width of the label-coloured frame around thumbnails.")] = 3,
    tsne_backend: Annotated[str, typer.Option(help="t-SNE implementation: auto (openTSNE if installed), opentsne, "
                                                   "sklearn.")] = "auto",
    threads: Annotated[int | None, typer.Option(
        min=-1, max=256, help="t-SNE threads: 1 to 256, or -1 for all cores. Default: all cores for 5,000+ images on "
                     "machines with more than two cores, else one.", show_default=False)] = None,
    labels: LabelsOpt = None,
    layer: LayerOpt = None,
    fmt: FormatOpt = "png",
    *,
    model_options: ModelOptions,
    run: RunArgs,
) -> None:
    """2-D map of a gallery (t-SNE, PCA or UMAP): scatter by label, thumbnail map, grid-snapped map, coordinates."""
    from explain.embedding import METHODS, tsne_backend as pick_backend
    from explain.figures import check_format
    from explain.gallery import load_index
    from explain.gallery_run import MapOptions, run_tsne
    from explain.manifest import begin_output

    if gallery is None and index_dir is None:
        raise UsageError("give a GALLERY folder or --index DIR (see --help)")
    if gallery is not None and index_dir is not None:
        raise UsageError("give either a GALLERY folder or --index DIR, not both")
    if method not in METHODS:
        raise UsageError(f"unknown --method {method!r}: choose tsne, pca or umap")
    if method == "tsne":
        pick_backend(tsne_backend)
    check_format(fmt)
    out = claim_output(run.out)
    check_out_is_not_an_input(out, [gallery] if gallery is not None else [])
    opts = MapOptions(method=method, perplexity=perplexity, seed=model_options.seed, pca_dims=pca_dims, trust_k=trust_k,
                      thumb=thumb_size, fmt=fmt.lower(), backend=tsne_backend, border=border,
                      threads=threads, style=run.style).check()
    failed: list[dict[str, str]] = []
    index_warnings: list[str] = []
    with stage_progress(run.quiet) as progress:
        if gallery is not None:
            idx, index_manifest = _map_index(gallery, out / "index", model_options, layer, labels, run, progress)
            failed, index_warnings = index_manifest.errors, index_manifest.warnings
        else:
            if labels is not None or layer is not None or model_options.model is not None \
                    or model_options.weights is not None:
                raise UsageError("--labels, --layer, --model and --weights apply when indexing a GALLERY; with --index "
                                 "the index's own are used (re-index with 'cnn-explain index' to change them)")
            idx = load_index(index_dir)  # type: ignore[arg-type]
        begin_output(out)
        manifest = run_tsne(idx, out, opts, argv=_argv(), progress=progress)
    manifest.errors.extend(failed)
    manifest.warnings[:0] = index_warnings
    if gallery is not None:
        manifest.extra["index"] = str(out / "index")
    trust = manifest.extra["trustworthiness"]
    if not run.as_json and not run.quiet:
        value = trust["value"]
        say(
            f"{method} map of {len(idx)} images → {out}: trustworthiness@{trust['k']} = "
            + (f"{value:.4f}" if value is not None else "n/a")
            + f" · map {out / manifest.extra['outputs']['map']} · grid {out / manifest.extra['outputs']['grid']}")
    finish(manifest, out, run.as_json, len(idx), run.quiet)


def _map_index(gallery: Path, folder: Path, model_options: ModelOptions, layer: str | None, labels: str | None,
               run: RunArgs, progress: Callable[[str, int, int], None] | None) -> tuple[FeatureIndex, Any]:
    """Index ``gallery`` into ``folder`` (``tsne OUT/index``); returns the index and its run's manifest (saved).

    The index there belongs to this output folder: when it holds another gallery or model (an earlier map into the
    same ``--out``), it is replaced, with a warning, rather than refused; ``tsne`` has no ``--rebuild``.
    """
    from explain.gallery import IndexMismatchError
    from explain.gallery_run import run_index

    options, layer = _with_stored(model_options, layer, _stored_model(folder))
    backbone, dev = options.load()
    settings = dict(layer=layer, labels=labels, weights_arg=options.weights, batch_size=run.batch_size,
                    workers=run.workers, device=dev, argv=_argv(), progress=progress, exclude=(folder.parent,))
    try:
        update, manifest = run_index(backbone, gallery, folder, **settings)
    except IndexMismatchError as exc:
        update, manifest = run_index(backbone, gallery, folder, rebuild=True, **settings)
        reason = str(exc).split(";", 1)[0]
        manifest.warnings.insert(0, f"replaced the index in {folder}: {reason}")
    manifest.save(folder)
    return update.index, manifest
