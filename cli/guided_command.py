"""``cnn-explain guided-backprop`` and ``cnn-explain saliency``: input-gradient explanations, images and panels."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from explain.guided_run import GradientOptions

from cli.cam_command import FormatOpt, NeuronOpt, TargetOpt
from cli.common import (
    ImagesArg, ModelOptions, RunArgs, handle_errors, model_command, run_image_command, target_summary,
)

UnitOpt = Annotated[str, typer.Option(
    "--unit", help="How a LAYER:C neuron is explained: mean (the channel's spatial mean) or max (the single unit "
                   "with the highest activation in each image; the manifest says which).")]
SignedOpt = Annotated[bool, typer.Option(
    "--signed", help="Also draw the signed gradient (sum over colour channels) in a diverging colour map.")]
ColormapOpt = Annotated[str, typer.Option(help="Diverging matplotlib colour map of the --signed map.")]
CamLayerOpt = Annotated[list[str] | None, typer.Option(
    "--layer", "-l", help="CAM layer for --with-cam ('cnn-explain layers'); repeatable: CAMs fused by their mean. "
                          "Default: the model's last convolutional block.", show_default=False)]


@handle_errors
@model_command(figures=True)
def guided_backprop(
    images: ImagesArg,
    target: TargetOpt = None,
    neuron: NeuronOpt = None,
    unit: UnitOpt = "mean",
    with_cam: Annotated[str | None, typer.Option(
        "--with-cam", help="Multiply by a class activation map: gradcam or gradcam++ (guided Grad-CAM).",
        show_default=False)] = None,
    layer: CamLayerOpt = None,
    rule: Annotated[str, typer.Option(
        help="Backward rule at rectifiers: guided (Springenberg et al. 2015) or deconvnet (Zeiler & Fergus 2014).")
    ] = "guided",
    signed: SignedOpt = False,
    fmt: FormatOpt = "png",
    colormap: ColormapOpt = "RdBu_r",
    *,
    model_options: ModelOptions,
    run: RunArgs,
) -> None:
    """Guided backpropagation for classes or neurons (every ReLU/ReLU6, functional ones too); guided Grad-CAM."""
    from explain.guided_run import GradientOptions

    opts = GradientOptions(command="guided-backprop", targets=list(target or []), neurons=list(neuron or []),
                           unit=unit.lower(), rule=rule.lower(), with_cam=with_cam, layers=list(layer or []),
                           signed=signed, fmt=fmt, colormap=colormap, seed=model_options.seed,
                           style=run.style)
    _run(images, opts, model_options, run)


@handle_errors
@model_command(figures=True)
def saliency(
    images: ImagesArg,
    target: TargetOpt = None,
    neuron: NeuronOpt = None,
    unit: UnitOpt = "mean",
    samples: Annotated[int, typer.Option(
        min=0, help="0: the plain input gradient (Simonyan et al. 2014); N >= 1: SmoothGrad averaging N noisy "
                    "copies (Smilkov et al. 2017 use 50).")] = 0,
    noise: Annotated[float, typer.Option(
        min=0.0, help="SmoothGrad noise: standard deviation as a fraction of each image's input range (max - min).")
    ] = 0.15,
    times_input: Annotated[bool, typer.Option("--times-input", help="Gradient x input.")] = False,
    signed: SignedOpt = False,
    fmt: FormatOpt = "png",
    colormap: ColormapOpt = "RdBu_r",
    *,
    model_options: ModelOptions,
    run: RunArgs,
) -> None:
    """Input-gradient saliency: the vanilla gradient, SmoothGrad (--samples), gradient x input (--times-input)."""
    from explain.guided_run import GradientOptions

    opts = GradientOptions(command="saliency", targets=list(target or []), neurons=list(neuron or []),
                           unit=unit.lower(), samples=samples, noise=noise, times_input=times_input,
                           seed=model_options.seed,
                           signed=signed, fmt=fmt, colormap=colormap, style=run.style)
    _run(images, opts, model_options, run)


def _run(images: list[str], opts: GradientOptions, model_options: ModelOptions, run: RunArgs) -> None:
    from explain.guided_run import resolve_gradient_options, run_gradients

    run_image_command(
        images, model_options, run, opts.command,
        execute=lambda backbone, files, settings: run_gradients(backbone, files, opts, run.out, settings),
        prepare=lambda backbone: resolve_gradient_options(backbone, opts),
        summarize=partial(target_summary, out=run.out, output_key="figure"), targets=opts.targets,
    )
