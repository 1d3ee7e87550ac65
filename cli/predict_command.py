"""``cnn-explain predict``: top-k classes with names and probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import (
    ImagesArg, ModelOptions, RunArgs, console, handle_errors, model_command, print_table, run_image_command,
)

OptionalOutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Folder for manifest.json (optional).",
                                                     show_default=False)]


@handle_errors
@model_command(out=None, out_option=OptionalOutOpt)
def predict(
    images: ImagesArg,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes to show per image.")] = 5,
    *,
    model_options: ModelOptions,
    run: RunArgs,
) -> None:
    """Top-k classes with names and probabilities for each image."""
    from explain.predict import predict as run_predict

    def execute(backbone: Any, files: list[Any], settings: Any) -> Any:
        return run_predict(backbone, files, top_k, settings).to_manifest(backbone, settings.argv, top_k)

    run_image_command(
        images, model_options, run, "predict", execute=execute, summarize=_print_tables, summary_is_result=True,
    )


_EIGHTHS = " ▏▎▍▌▋▊▉"


def prob_bar(prob: float, width: int = 20) -> str:
    """A bar ``width`` characters long at probability 1, in eighths of a character: 0.015 is one quarter of a
    character and 0.001 is nothing (every bar used to be at least one whole block, so 0.000 looked like 0.05)."""
    eighths = round(max(0.0, min(1.0, prob)) * width * 8)
    whole, part = divmod(eighths, 8)
    return ("█" * whole + _EIGHTHS[part]).rstrip()


def _print_tables(manifest: Any) -> None:
    from rich.table import Table

    out = console()
    for item in manifest.items:
        table = Table(title=item["input"], title_justify="left", show_edge=False, pad_edge=False)
        for col, justify in (("#", "right"), ("class", "right"), ("name", "left"), ("prob", "right"), ("", "left")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for rank, c in enumerate(item["prediction"], 1):
            table.add_row(str(rank), str(c["index"]), c["name"], f"{c['prob']:.3f}", prob_bar(c["prob"]))
        print_table(table, out)
        out.print()
