"""``cnn-explain predict``: top-k classes with names and probabilities."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.common import (
    BatchOpt, ClassesOpt, DeviceOpt, ImagesArg, JsonOpt, ModelOpt, ModelOptions, NumClassesOpt, QuietOpt,
    SeedOpt, TrustOpt, WeightsOpt, WorkersOpt, collect_images, console, finish, handle_errors, progress_bar,
)


@handle_errors
def predict(
    images: ImagesArg,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes to show per image.")] = 5,
    model: ModelOpt = "efficientnet_lite0",
    weights: WeightsOpt = None,
    classes: ClassesOpt = None,
    num_classes: NumClassesOpt = None,
    trust_checkpoint: TrustOpt = False,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 8,
    workers: WorkersOpt = 0,
    out: Annotated[Path | None, typer.Option(help="Folder for manifest.json (optional).", show_default=False)] = None,
    seed: SeedOpt = 0,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Top-k classes with names and probabilities for each image."""
    from explain.predict import predict as run_predict

    files, find_errors = collect_images(images)
    backbone, dev = ModelOptions(model, weights, classes, num_classes, trust_checkpoint, device, seed).load()
    with progress_bar(len(files), "predict", quiet) as advance:
        result = run_predict(backbone, files, top_k=top_k, batch_size=batch_size, device=dev, workers=workers,
                             on_batch=advance)
    result.errors[:0] = find_errors
    manifest = result.to_manifest(backbone, argv=["cnn-explain", *sys.argv[1:]], top_k=top_k)
    if not json_:
        _print_tables(result)
    finish(manifest, out, json_, len(result.predictions))


def _print_tables(result: object) -> None:
    from rich.table import Table

    out = console()
    for pred in result.predictions:  # type: ignore[attr-defined]
        table = Table(title=pred.input, title_justify="left", show_edge=False, pad_edge=False)
        table.add_column("#", justify="right")
        table.add_column("class", justify="right")
        table.add_column("name")
        table.add_column("prob", justify="right")
        table.add_column("", no_wrap=True)
        for rank, c in enumerate(pred.top, 1):
            table.add_row(str(rank), str(c.index), c.name, f"{c.prob:.3f}", "█" * max(1, round(c.prob * 20)))
        out.print(table)
        out.print()
