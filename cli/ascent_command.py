"""``cnn-explain ascent``: activation maximisation of classes, channels and neurons (one image per objective)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.common import (
    OMIT, ModelOptions, RunArgs, claim_output, finish, handle_errors, model_command, print_table, progress_bar,
    report_target_notes, say,
)

MAX_SNAPSHOTS = 32
"""``explain.ascent.MAX_SNAPSHOTS``, repeated here so that ``--help`` needs no torch (a test keeps them equal)."""

_OBJ = "Objectives"
_OPT = "Optimisation"
_REG = "Regularisers"

TargetOpt = Annotated[list[str] | None, typer.Option(
    "--target", "-t",
    help="Class index or name (exact, a word of one class name or a unique prefix); repeatable, one image each.",
    show_default=False, rich_help_panel=_OBJ)]
ChannelOpt = Annotated[list[str] | None, typer.Option(
    "--channel", "-c", help="LAYER:C (mean of a channel) or LAYER:A-B (one image per channel); repeatable.",
    show_default=False, rich_help_panel=_OBJ)]
NeuronOpt = Annotated[list[str] | None, typer.Option(
    "--neuron", help="LAYER:C (the unit at the centre of the map) or LAYER:C:Y:X; repeatable.",
    show_default=False, rich_help_panel=_OBJ)]
ObjectiveOpt = Annotated[list[str] | None, typer.Option(
    "--objective", help="A weighted sum, e.g. 'class:flamingo - 0.5*class:goose + channel:_blocks.10:7' "
                        "(kinds: class, logprob, channel, neuron; spaces around + and -); repeatable.",
    show_default=False, rich_help_panel=_OBJ)]


@handle_errors
@model_command(batch_size=OMIT, workers=OMIT, figures=True)
def ascent(
    target: TargetOpt = None,
    channel: ChannelOpt = None,
    neuron: NeuronOpt = None,
    objective: ObjectiveOpt = None,
    logprob: Annotated[bool, typer.Option(
        "--logprob", help="Class targets maximise the log-probability instead of the pre-softmax logit.",
        rich_help_panel=_OBJ)] = False,
    param: Annotated[str, typer.Option(
        help="fft (1/f spectrum, decorrelated colour) or pixel.", rich_help_panel=_OPT)] = "fft",
    decorrelate: Annotated[bool, typer.Option(
        help="Decorrelated colour (fft only).", rich_help_panel=_OPT)] = True,
    spectrum_power: Annotated[float, typer.Option(
        help="fft: frequency f is scaled by 1/f^P (1: like photos; larger: smoother).", rich_help_panel=_OPT)] = 1.0,
    steps: Annotated[int, typer.Option(help="Optimiser (Adam) steps.", rich_help_panel=_OPT)] = 256,
    lr: Annotated[float | None, typer.Option(
        help="Learning rate. Default: 0.05 (fft), 0.01 (pixel).", show_default=False, rich_help_panel=_OPT)] = None,
    size: Annotated[int | None, typer.Option(
        help="Image side in pixels. Default: the model's input size.", show_default=False,
        rich_help_panel=_OPT)] = None,
    transforms: Annotated[bool | None, typer.Option(
        "--transforms/--no-transforms", help="Random jitter, zoom and rotation every step. Default: on with fft.",
        show_default=False, rich_help_panel=_OPT)] = None,
    jitter: Annotated[float | None, typer.Option(
        help="Largest random shift in pixels. Default: 6% of the size.", show_default=False,
        rich_help_panel=_OPT)] = None,
    scale: Annotated[float, typer.Option(help="Largest random zoom (relative).", rich_help_panel=_OPT)] = 0.3,
    rotate: Annotated[float, typer.Option(help="Largest random rotation (degrees).", rich_help_panel=_OPT)] = 20.0,
    early_stop: Annotated[bool, typer.Option(
        help="Stop an image once its objective plateaus.", rich_help_panel=_OPT)] = True,
    patience: Annotated[int | None, typer.Option(
        help="Plateau window in steps. Default: steps/8 (at least 10).", show_default=False,
        rich_help_panel=_OPT)] = None,
    snapshots: Annotated[int, typer.Option(
        min=0, max=MAX_SNAPSHOTS, help="Keep N snapshots per image and draw the evolution strip.", rich_help_panel=_OPT)] = 0,
    l2: Annotated[float, typer.Option(help="L2 penalty weight (Simonyan).", rich_help_panel=_REG)] = 0.0,
    decay: Annotated[float | None, typer.Option(
        help="L2 decay per step (Yosinski). Default: 0.002 (fft), 0 (pixel).", show_default=False,
        rich_help_panel=_REG)] = None,
    tv: Annotated[float, typer.Option(help="Total-variation penalty weight.", rich_help_panel=_REG)] = 0.0,
    blur_every: Annotated[int, typer.Option(help="Gaussian blur every K steps (0: off).", rich_help_panel=_REG)] = 0,
    blur_sigma: Annotated[float, typer.Option(help="Blur standard deviation (px).", rich_help_panel=_REG)] = 0.5,
    clip_norm: Annotated[float, typer.Option(
        help="Set pixels below this percentile of norm to grey each step (0: off).", rich_help_panel=_REG)] = 0.0,
    clip_contrib: Annotated[float, typer.Option(
        help="Set pixels below this percentile of contribution to grey each step (0: off).",
        rich_help_panel=_REG)] = 0.0,
    fmt: Annotated[str, typer.Option("--format", help="Figure format: png, svg or pdf.")] = "png",
    *,
    model_options: ModelOptions,
    run: RunArgs,
) -> None:
    """Gradient ascent: images that maximise classes, channels or neurons (Fourier parameterisation by default)."""
    from explain.ascent import AscentConfig
    from explain.ascent_run import AscentOptions, resolve_ascent_options, run_ascent
    from explain.manifest import begin_output

    config = AscentConfig(
        param=param.lower(), decorrelate=decorrelate, spectrum_power=spectrum_power, steps=steps, lr=lr, size=size,
        transforms=transforms, jitter=jitter, scale=scale, rotate=rotate, l2=l2, decay=decay, tv=tv,
        blur_every=blur_every, blur_sigma=blur_sigma, clip_norm=clip_norm, clip_contrib=clip_contrib,
        early_stop=early_stop, patience=patience, snapshots=snapshots,
    )
    config.resolved()  # bad numbers fail before the model loads
    out = claim_output(run.out)
    backbone, _ = model_options.load()
    opts = AscentOptions(targets=list(target or []), logprob=logprob, channels=list(channel or []),
                         neurons=list(neuron or []), objectives=list(objective or []), config=config,
                         fmt=fmt.lower(), style=run.style)
    resolve_ascent_options(backbone, opts)  # every spec checked before any work
    if not run.quiet:
        report_target_notes(opts.targets, backbone.class_names)
    begin_output(out)
    with progress_bar(steps, "ascent", run.quiet) as advance:
        manifest, _ = run_ascent(backbone, opts, out, seed=model_options.seed, argv=["cnn-explain", *sys.argv[1:]],
                                 on_step=lambda info: advance(1))
    if not run.as_json and not run.quiet:
        _summary(manifest, out)
    finish(manifest, out, run.as_json, len(manifest.items), run.quiet)


def _summary(manifest: object, out: Path) -> None:
    from rich.table import Table

    items = manifest.items  # type: ignore[attr-defined]
    probs = [item.get("target", {}).get("prob") for item in items]
    shown = any(p is not None for p in probs)  # a class probability: only class objectives have one
    table = Table(show_edge=False, pad_edge=False)
    for col in ("objective", "value", *(("p",) if shown else ()), "steps", "image"):
        table.add_column(col)
    for item, prob in zip(items, probs):
        cells = [item["objective"]["label"], f"{item['value']:.3g}"]
        cells += ["" if prob is None else f"{prob:.2f}"] if shown else []
        table.add_row(*cells, str(item["steps"]), str(out / item["outputs"]["image"]))
    print_table(table)
    say(f"grid: {out / manifest.extra['outputs']['grid']}")  # type: ignore[attr-defined]
