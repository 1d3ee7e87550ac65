"""``cnn-explain cam``: Grad-CAM and Grad-CAM++ maps, overlays and panels."""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer

from cli.common import (
    ImagesArg, ModelOptions, RunArgs, handle_errors, model_command, run_image_command, target_summary,
)

TargetOpt = Annotated[list[str] | None, typer.Option(
    "--target", "-t",
    help="Class index, class name (exact, a word of one class name or a unique prefix) or topK; repeatable. "
         "Default: top1.",
    show_default=False)]
NeuronOpt = Annotated[list[str] | None, typer.Option(
    "--neuron", help="LAYER:CHANNEL (channel mean) or LAYER:CHANNEL:Y:X (one unit); repeatable.", show_default=False)]
LayerOpt = Annotated[list[str] | None, typer.Option(
    "--layer", "-l", help="Dotted layer name ('cnn-explain layers'); repeatable: maps fused by their mean. "
                          "Default: the model's last convolutional block.", show_default=False)]
FormatOpt = Annotated[str, typer.Option("--format", help="Panel figure format: png, svg or pdf.")]


@handle_errors
@model_command(figures=True)
def cam(
    images: ImagesArg,
    method: Annotated[str, typer.Option(help="gradcam or gradcam++.")] = "gradcam++",
    target: TargetOpt = None,
    neuron: NeuronOpt = None,
    layer: LayerOpt = None,
    fmt: FormatOpt = "png",
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Heat opacity in the overlay.")] = 0.5,
    colormap: Annotated[str, typer.Option(help="Matplotlib colour map.")] = "inferno",
    *,
    model_options: ModelOptions,
    run: RunArgs,
) -> None:
    """Class activation maps (Grad-CAM, Grad-CAM++) laid over the full photo, with panels and raw maps."""
    from explain.cam_run import CamOptions, resolve_cam_options, run_cam

    opts = CamOptions(method=method, layers=list(layer or []), targets=list(target or []),
                      neurons=list(neuron or []), fmt=fmt.lower(), colormap=colormap, alpha=alpha, style=run.style)
    run_image_command(
        images, model_options, run, opts.method,
        execute=lambda backbone, files, settings: run_cam(backbone, files, opts, run.out, settings),
        prepare=lambda backbone: resolve_cam_options(backbone, opts),
        summarize=partial(target_summary, out=run.out, output_key="overlay"), targets=opts.targets,
    )
