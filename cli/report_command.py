"""``cnn-explain report``: one self-contained HTML page per image (and an index page), or a multi-page PDF."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.common import (
    ImagesArg, ModelOptions, RunArgs, handle_errors, model_command, print_table, run_image_command, say,
)

if TYPE_CHECKING:
    from explain.backbones.base import Backbone
    from explain.manifest import Manifest
    from explain.report import Reporter


@handle_errors
@model_command(figures=True)
def report(
    images: ImagesArg,
    index_dir: Annotated[Path | None, typer.Option(
        "--index", "-i", help="A gallery index folder ('cnn-explain index'): adds the nearest gallery images.",
        show_default=False)] = None,
    fmt: Annotated[str, typer.Option("--format", help="html (a page per image + index.html) or pdf (report.pdf, "
                                                      "one page per image).")] = "html",
    top: Annotated[int, typer.Option(min=1, help="Predictions listed per image.")] = 5,
    samples: Annotated[int, typer.Option(
        min=0, help="SmoothGrad noisy copies per image (0: the plain input gradient; the paper uses 50).")] = 16,
    noise: Annotated[float, typer.Option(
        min=0.0, help="SmoothGrad noise: standard deviation as a fraction of each image's input range.")] = 0.15,
    k: Annotated[int, typer.Option("--neighbours", "-k", min=1, help="Nearest gallery images shown with --index.")] = 6,
    metric: Annotated[str, typer.Option(help="Neighbour distance: l2 or cosine.")] = "l2",
    layer: Annotated[str | None, typer.Option(
        "--layer", "-l", help="Layer of the CAMs and of the most-active-channel view ('cnn-explain layers'). "
                              "Default: the model's last convolutional block.", show_default=False)] = None,
    *,
    model_options: ModelOptions,
    run: RunArgs,
) -> None:
    """Per-image reports: top predictions, Grad-CAM++ of the top 3 classes, guided backprop, guided Grad-CAM++,
    SmoothGrad, the most active channel and its receptive field, and nearest gallery images (--index)."""
    from explain.report import ReportOptions, run_report

    opts = ReportOptions(top=top, samples=samples, noise=noise, seed=model_options.seed, neighbours=k, metric=metric,
                         fmt=fmt, layer=layer, style=run.style).check()
    index = None
    if index_dir is not None:
        from explain.gallery import load_index

        index = load_index(index_dir)
    prepared: dict[str, Reporter] = {}

    def prepare(backbone: Backbone) -> None:
        from explain.report import Reporter

        prepared["reporter"] = Reporter(backbone, opts, index)

    run_image_command(
        images, model_options, run, "report",
        execute=lambda backbone, files, settings: run_report(prepared["reporter"], files, run.out, settings),
        prepare=prepare, summarize=lambda manifest: _summary(manifest, run.out),
    )


def _summary(manifest: Manifest, out: Path) -> None:
    """A table of the reports: input, top class, page; then where the index page or PDF is."""
    from rich.table import Table

    if not manifest.items:
        return
    table = Table(show_edge=False, pad_edge=False)
    for col in ("input", "top class", "p", "report"):
        table.add_column(col)
    for item in manifest.items:
        top: dict[str, Any] = item["explained"][0]
        where = item["outputs"].get("page") or f"{item['outputs']['pdf']} p. {item['outputs']['pdf_page']}"
        table.add_row(item["input"], f"{top['index']} {top['name']}", f"{top['prob']:.3f}", str(out / where))
    print_table(table)
    outputs = manifest.extra.get("outputs") or {}
    if "index" in outputs:
        say(f"open {out / outputs['index']}")
