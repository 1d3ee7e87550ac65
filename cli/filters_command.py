"""``cnn-explain filters`` (filter grids, kernel rows, weight and kernel-norm matrices) and ``cnn-explain activations``
(feature maps of a layer, theoretical vs effective receptive fields of units)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.common import (
    ANY_TASK, OMIT, ImagesArg, ModelOptions, RunArgs, claim_output, finish, handle_errors, model_command, print_table,
    run_image_command,
)

FormatOpt = Annotated[str, typer.Option("--format", help="Figure format: png, svg or pdf.")]
ChannelsOpt = Annotated[str | None, typer.Option(
    help="Output channels to show: indices and ranges, e.g. 0-15,32.", show_default=False)]
AllOpt = Annotated[bool, typer.Option("--all", help="Show every channel (large layers make large figures).")]


@handle_errors
@model_command(tasks=ANY_TASK, batch_size=OMIT, workers=OMIT, figures=True)
def filters(
    layer: Annotated[list[str] | None, typer.Option(
        "--layer", "-l", help="Convolution(s) to draw ('cnn-explain layers'); repeatable. Default: the first "
                              "convolution.", show_default=False)] = None,
    view: Annotated[str, typer.Option(
        help="kernels: colour images (3-channel layers), kernel grids (depthwise), rows of input-channel kernels, "
             "or the weight matrix (1x1); norms: the kernel-norm matrix ||W(o, i)||_2 as a heat map.")] = "kernels",
    norm: Annotated[str, typer.Option(
        help="symmetric: w/max|W| of the layer, 0 = grey; symmetric-filter: w/max|w| per filter, 0 = grey; "
             "minmax: per filter, its min -> 0 (dark), its max -> 1 (bright).")] = "symmetric",
    sort: Annotated[str, typer.Option(help="index, or norm (L2 norm of each filter, largest first).")] = "index",
    channels: ChannelsOpt = None,
    in_channels: Annotated[str | None, typer.Option(
        help="Input channels (columns) of the kernel rows and weight matrices, e.g. 0-31; positions inside the "
             "group for grouped convolutions. Default: the first 16 (kernel rows), all (matrices).",
        show_default=False)] = None,
    limit: Annotated[int | None, typer.Option(
        min=1, help="Filters drawn by default: 64 for colour/depthwise grids, 16 rows of kernels.",
        show_default=False)] = None,
    all_: AllOpt = False,
    fmt: FormatOpt = "png",
    *,
    model_options: ModelOptions,
    run: RunArgs,
) -> None:
    """Filter grids of a convolution (the first one by default): first-layer filters as colour images, deeper ones as
    kernels, weight matrices or kernel-norm matrices. Weights, drawn values and figures are written to --out."""
    from explain.filters_run import FilterOptions, build_filter_grids, run_filters
    from explain.manifest import begin_output

    opts = FilterOptions(layers=list(layer or []), view=view.lower(), norm=norm.lower(), sort=sort.lower(),
                         channels=channels, in_channels=in_channels, limit=limit, show_all=all_, fmt=fmt.lower(),
                         style=run.style)
    out = claim_output(run.out)  # before the model load
    backbone, _ = model_options.load()
    build_filter_grids(backbone, opts)  # every option checked before anything is written
    begin_output(out)
    manifest = run_filters(backbone, opts, out, argv=["cnn-explain", *sys.argv[1:]])
    if not run.as_json and not run.quiet:
        from rich.table import Table

        table = Table(show_edge=False, pad_edge=False)
        for col in ("layer", "view", "shown", "figure"):
            table.add_column(col)
        for item in manifest.items:
            table.add_row(item["layer"], item["view"], f"{len(item['channels'])} of {item['out_channels']}",
                          str(out / item["outputs"]["figure"]))
        print_table(table)
    finish(manifest, out, run.as_json, len(manifest.items), run.quiet)


@handle_errors
@model_command(figures=True)
def activations(
    images: ImagesArg,
    layer: Annotated[str | None, typer.Option(
        "--layer", "-l", help="Layer with a spatial output, e.g. _blocks.5 ('cnn-explain layers').",
        show_default=False)] = None,
    top: Annotated[int | None, typer.Option(
        min=1, help="Show the K channels with the largest mean activation in each image. Default: 16.",
        show_default=False)] = None,
    channels: ChannelsOpt = None,
    all_: AllOpt = False,
    scale: Annotated[str, typer.Option(
        help="shared: one colour scale (min..max over the shown maps) so tiles compare; tile: each tile from "
             "its own min to max.")] = "shared",
    unit: Annotated[list[str] | None, typer.Option(
        "--unit", help="LAYER:CHANNEL:Y:X (one unit): draws its theoretical receptive field and its effective one "
                       "(|d unit / d input|); repeatable.", show_default=False)] = None,
    colormap: Annotated[str, typer.Option(
        help="Matplotlib colour map of the feature maps; auto: viridis, or the diverging RdBu_r centred on 0 when "
             "the maps have negative values.")] = "auto",
    fmt: FormatOpt = "png",
    *,
    model_options: ModelOptions,
    run: RunArgs,
) -> None:
    """Feature maps of a layer for each image (top-K channels by mean activation, or chosen ones) beside the image;
    with --unit, a unit's theoretical vs effective receptive field."""
    from explain.filters_run import ActivationOptions, resolve_activation_options, run_activations

    opts = ActivationOptions(layer=layer, top=top, channels=channels, show_all=all_, scale=scale.lower(),
                             units=list(unit or []), colormap=colormap, fmt=fmt.lower(), style=run.style)
    plans: list[object] = []

    def prepare(backbone: object) -> None:  # every option checked before any work
        plans.append(resolve_activation_options(backbone, opts))  # type: ignore[arg-type]

    run_image_command(
        images, model_options, run, "activations",
        execute=lambda backbone, files, settings: run_activations(backbone, files, opts, run.out, settings,
                                                                  plan=plans[-1]),  # type: ignore[arg-type]
        prepare=prepare, summarize=lambda manifest: _activation_summary(manifest, run.out),
    )


def _activation_summary(manifest: object, out: Path) -> None:
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for col in ("input", "what", "figure"):
        table.add_column(col)
    for item in manifest.items:  # type: ignore[attr-defined]
        if item["method"] == "activations":
            shown = item["channels"]
            what = f"{item['layer']}: channels {', '.join(map(str, shown[:8]))}" + (" ..." if len(shown) > 8 else "")
        else:
            rf = item["effective_rf"]
            share = "gradient all zero" if rf["all_zero"] else f"90% of |grad| in {rf['area_90']:.0%} of the box"
            what = f"unit {item['unit']}: {share}"
        table.add_row(item["input"], what, str(out / item["outputs"]["figure"]))
    print_table(table)
