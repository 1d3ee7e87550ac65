"""``cnn-explain predict``: top-k classes with names and probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import (
    BatchOpt, ClassesOpt, DeviceOpt, ImagesArg, JsonOpt, ModelOpt, ModelOptions, NumClassesOpt, QuietOpt,
    SeedOpt, TrustOpt, WeightsOpt, WorkersOpt, console, handle_errors, run_image_command,
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

    def execute(backbone: Any, files: list[Any], settings: Any) -> Any:
        return run_predict(backbone, files, top_k, settings).to_manifest(backbone, settings.argv, top_k)

    run_image_command(
        images, ModelOptions(model, weights, classes, num_classes, trust_checkpoint, device, seed), "predict",
        execute=execute, out=out, as_json=json_, quiet=quiet, batch_size=batch_size, workers=workers,
        summarize=_print_tables, summary_is_result=True,
    )


def _print_tables(manifest: Any) -> None:
    from rich.table import Table

    out = console()
    for item in manifest.items:
        table = Table(title=item["input"], title_justify="left", show_edge=False, pad_edge=False)
        for col, justify in (("#", "right"), ("class", "right"), ("name", "left"), ("prob", "right"), ("", "left")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for rank, c in enumerate(item["prediction"], 1):
            table.add_row(str(rank), str(c["index"]), c["name"], f"{c['prob']:.3f}", "█" * max(1, round(c["prob"] * 20)))
        out.print(table)
        out.print()
