"""``cnn-explain cam``: Grad-CAM and Grad-CAM++ maps, overlays and panels."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.common import (
    BatchOpt, ClassesOpt, DeviceOpt, ImagesArg, JsonOpt, ModelOpt, ModelOptions, NumClassesOpt, QuietOpt,
    SeedOpt, TrustOpt, WeightsOpt, WorkersOpt, collect_images, console, finish, handle_errors, progress_bar,
)

TargetOpt = Annotated[list[str] | None, typer.Option(
    "--target", "-t", help="Class index, class name (exact or unique prefix) or topK; repeatable. Default: top1.",
    show_default=False)]
NeuronOpt = Annotated[list[str] | None, typer.Option(
    "--neuron", help="LAYER:CHANNEL (channel mean) or LAYER:CHANNEL:Y:X (one unit); repeatable.", show_default=False)]
LayerOpt = Annotated[list[str] | None, typer.Option(
    "--layer", "-l", help="Dotted layer name ('cnn-explain layers'); repeatable: maps fused by their mean. "
                          "Default: the model's last convolutional block.", show_default=False)]
OutOpt = Annotated[Path, typer.Option(help="Output folder (manifest.json lists every file).")]
FormatOpt = Annotated[str, typer.Option("--format", help="Panel figure format: png, svg or pdf.")]


@handle_errors
def cam(
    images: ImagesArg,
    method: Annotated[str, typer.Option(help="gradcam or gradcam++.")] = "gradcam++",
    target: TargetOpt = None,
    neuron: NeuronOpt = None,
    layer: LayerOpt = None,
    fmt: FormatOpt = "png",
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Heat opacity in the overlay.")] = 0.5,
    colormap: Annotated[str, typer.Option(help="Matplotlib colour map.")] = "jet",
    model: ModelOpt = "efficientnet_lite0",
    weights: WeightsOpt = None,
    classes: ClassesOpt = None,
    num_classes: NumClassesOpt = None,
    trust_checkpoint: TrustOpt = False,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 8,
    workers: WorkersOpt = 0,
    out: OutOpt = Path("cnn-explain-out"),
    seed: SeedOpt = 0,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Class activation maps (Grad-CAM, Grad-CAM++) laid over the full photo, with panels and raw maps."""
    from explain.cam_run import CamOptions, resolve_cam_options, run_cam

    files, find_errors = collect_images(images)
    backbone, dev = ModelOptions(model, weights, classes, num_classes, trust_checkpoint, device, seed).load()
    opts = CamOptions(method=method, layers=list(layer or []), targets=list(target or []),
                      neurons=list(neuron or []), fmt=fmt.lower(), colormap=colormap, alpha=alpha)
    resolve_cam_options(backbone, opts)  # every option checked before any work
    with progress_bar(len(files), opts.method, quiet) as advance:
        manifest = run_cam(backbone, files, opts, out, batch_size=batch_size, device=dev, workers=workers,
                           argv=["cnn-explain", *sys.argv[1:]], on_batch=advance)
    for err in reversed(find_errors):
        manifest.errors.insert(0, {"input": err.path, "error": err.reason})
    if not json_ and not quiet:
        _summary(manifest, out)
    n_ok = len({item["input"] for item in manifest.items})
    finish(manifest, out, json_, n_ok)


def _summary(manifest: object, out: Path) -> None:
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for col in ("input", "target", "score", "overlay"):
        table.add_column(col)
    for item in manifest.items:  # type: ignore[attr-defined]
        t = item["target"]
        label = f"{t['index']} {t['name']}" if "index" in t else t["neuron"]
        table.add_row(item["input"], label, f"{t['score']:.2f}", str(out / item["outputs"]["overlay"]))
    console().print(table)
