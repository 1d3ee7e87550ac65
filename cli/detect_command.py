"""``cnn-explain detect`` and ``cnn-explain segment``: explain detectors one detection at a time, segmenters one
class mask at a time."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import (
    OMIT, ImagesArg, ModelOptions, RunArgs, handle_errors, model_command, print_table, run_image_command,
)

if TYPE_CHECKING:
    from explain.manifest import Manifest

MethodOpt = Annotated[str, typer.Option(help="gradcam, gradcam++ or guided (guided backpropagation).")]
LayerOpt = Annotated[list[str] | None, typer.Option(
    "--layer", "-l", help="Backbone or FPN layer ('cnn-explain layers --model NAME'); repeatable: maps fused by "
                          "their mean. Default: the last backbone stage.", show_default=False)]
FormatOpt = Annotated[str, typer.Option("--format", help="Panel figure format: png, svg or pdf.")]
AlphaOpt = Annotated[float, typer.Option(min=0.0, max=1.0, help="Heat opacity over the photo.")]
ColormapOpt = Annotated[str, typer.Option(help="Matplotlib colour map.")]


@handle_errors
@model_command(model="fasterrcnn_mobilenet_v3_large_fpn", tasks=("detection",), batch_size=2, workers=OMIT,
               figures=True)
def detect(
    images: ImagesArg,
    method: MethodOpt = "gradcam++",
    detection: Annotated[list[int] | None, typer.Option(
        "--detection", "-d", help="Rank of the detection to explain (1 = most confident); repeatable. "
                                  "Default: 1.", show_default=False)] = None,
    box: Annotated[str | None, typer.Option(
        help="x0,y0,x1,y1 in photo pixels: explain the detection overlapping it (IoU >= --min-iou).",
        show_default=False)] = None,
    target: Annotated[str | None, typer.Option(
        "--target", "-t", help="With --box: the class (index or name) the detection must have.",
        show_default=False)] = None,
    min_iou: Annotated[float, typer.Option(min=0.0, max=1.0, help="Overlap --box needs.")] = 0.5,
    score_threshold: Annotated[float | None, typer.Option(
        help="Explain every detection with confidence >= this.", show_default=False)] = None,
    component: Annotated[str, typer.Option(
        help="What to explain: score (the class logit) or a box coordinate x0, y0, x1, y1.")] = "score",
    candidate_threshold: Annotated[float | None, typer.Option(
        help="The detector's own candidate threshold (default: the model's, 0.05 for most).",
        show_default=False)] = None,
    min_size: Annotated[int | None, typer.Option(
        help="The detector's internal resize, shorter side in pixels (default: the model's; smaller is faster).",
        show_default=False)] = None,
    layer: LayerOpt = None,
    fmt: FormatOpt = "png",
    alpha: AlphaOpt = 0.5,
    colormap: ColormapOpt = "inferno",
    *,
    model_options: ModelOptions,
    run: RunArgs,
) -> None:
    """Explain a torchvision detector one detection at a time: boxes drawn, and per detection its Grad-CAM(++) or
    guided backprop map, in context and cropped to its box."""
    from explain.detection.run import DetectOptions, resolve_detect_options, run_detect

    opts = DetectOptions(method=method, layers=list(layer or []), ranks=list(detection or []), box=box,
                         target=target, min_iou=min_iou, score_threshold=score_threshold,
                         component=component.lower(), candidate_threshold=candidate_threshold, min_size=min_size,
                         fmt=fmt.lower(), colormap=colormap, alpha=alpha, style=run.style)
    run_image_command(
        images, model_options, run, "detect",
        execute=lambda backbone, files, settings: run_detect(backbone, files, opts, run.out, settings),
        prepare=lambda backbone: resolve_detect_options(backbone, opts),
        summarize=lambda manifest: _summary(manifest, run.out, "detection"),
        targets=[opts.target] if opts.target is not None else [],
    )


@handle_errors
@model_command(model="lraspp_mobilenet_v3_large", tasks=("segmentation",), batch_size=2, workers=OMIT,
               figures=True)
def segment(
    images: ImagesArg,
    method: MethodOpt = "gradcam++",
    target: Annotated[list[str] | None, typer.Option(
        "--target", "-t", help="Class (index or name); repeatable. Default: every predicted class but the "
                               "background.", show_default=False)] = None,
    mask: Annotated[Path | None, typer.Option(
        help="Image whose non-black pixels are the region to sum the class's logits over (default: the pixels "
             "predicted as the class).", show_default=False)] = None,
    layer: LayerOpt = None,
    fmt: FormatOpt = "png",
    alpha: AlphaOpt = 0.5,
    colormap: ColormapOpt = "inferno",
    *,
    model_options: ModelOptions,
    run: RunArgs,
) -> None:
    """Explain a torchvision segmenter one class mask at a time: the sum of a class's logits over its pixels."""
    from explain.detection.run import SegmentOptions, resolve_segment_options, run_segment

    opts = SegmentOptions(method=method, layers=list(layer or []), targets=list(target or []), mask=mask,
                          fmt=fmt.lower(), colormap=colormap, alpha=alpha, style=run.style)
    run_image_command(
        images, model_options, run, "segment",
        execute=lambda backbone, files, settings: run_segment(backbone, files, opts, run.out, settings),
        prepare=lambda backbone: resolve_segment_options(backbone, opts),
        summarize=lambda manifest: _summary(manifest, run.out, "mask"), targets=opts.targets,
    )


def _summary(manifest: Manifest, out: Path, kind: str) -> None:
    """One row per explained detection or mask: input, what, score, panel file."""
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for col in ("input", kind, "explained", "figure"):
        table.add_column(col)
    for item in manifest.items:
        t = item["target"]
        if "detection" in item:
            d = item["detection"]
            what = f"#{d['rank']} {d['name']} {d['score']:.2f} [{', '.join(f'{v:.0f}' for v in d['box'])}]"
        else:
            what = f"{t['index']} {t['name']} ({t['pixels']} px)"
        table.add_row(item["input"], what, f"{t['score']:.4g}", str(out / item["outputs"]["figure"]))
    print_table(table)
