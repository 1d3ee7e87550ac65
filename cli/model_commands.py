"""``cnn-explain models`` and ``cnn-explain layers``: what models there are and what is inside one."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import (
    ANY_TASK, OMIT, JsonOpt, ModelOptions, RunArgs, claim_output, finish, handle_errors, model_command, print_table,
    say,
)

if TYPE_CHECKING:
    from explain.backbones.base import Backbone
    from explain.layers import LayerInfo


@handle_errors
def models(
    json_: JsonOpt = False,
    family: Annotated[str | None, typer.Option(
        help="Only this family: embedded, torchvision, detection or segmentation.", show_default=False)] = None,
) -> None:
    """List backbones and whether their weights are available offline."""
    from explain.backbones import list_backbones
    from explain.errors import UsageError, suggest

    families = sorted({spec.family for spec in list_backbones()})
    if family is not None and family not in families:
        raise UsageError(f"unknown --family {family!r}{suggest(family, families)}; choose {', '.join(families)}")
    rows = []
    for spec in list_backbones():
        if family and spec.family != family:
            continue
        ok, detail = spec.available()
        rows.append({"name": spec.name, "family": spec.family, "offline": ok, "weights": detail,
                     "description": spec.description})
    if json_:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for col in ("model", "family", "offline", "weights"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["name"], row["family"], "yes" if row["offline"] else "no", row["weights"])
    print_table(table)
    say("Any model also runs with --weights none (random) or --weights FILE (your checkpoint).")


LayersOutOpt = Annotated[Path | None, typer.Option(
    "--out", "-o", help="Also write the table as layers.csv, with manifest.json, into this folder.",
    show_default=False)]


@handle_errors
@model_command(tasks=ANY_TASK, batch_size=OMIT, workers=OMIT, out=None, out_option=LayersOutOpt)
def layers(
    size: Annotated[int | None, typer.Option(min=1, help="Input side in pixels (default: the model's).",
                                             show_default=False)] = None,
    leaves: Annotated[bool, typer.Option("--leaves", help="Only modules without children.")] = False,
    *,
    model_options: ModelOptions,
    run: RunArgs,
) -> None:
    """Layer table: name, type, output shape, kernel/stride/padding, receptive field and jump, parameters."""
    from explain.layers import layer_table, layers_manifest, write_layers
    from explain.manifest import begin_output

    out = claim_output(run.out) if run.out is not None else None  # before the model load
    backbone, device = model_options.load(meta=True)
    hw = (size, size) if size else backbone.input_size
    table_rows = layer_table(backbone.model, hw, device=device)
    if leaves:
        names = {n for n, m in backbone.model.named_modules() if n and not any(True for _ in m.children())}
        table_rows = [r for r in table_rows if r.name in names]
    manifest = layers_manifest(backbone, table_rows, hw, argv=["cnn-explain", *sys.argv[1:]])
    if out is not None:
        begin_output(out)
        write_layers(manifest, out)
    if not run.as_json and not run.quiet:
        _print_layer_table(backbone, hw, table_rows)
    finish(manifest, out, run.as_json, len(table_rows), run.quiet)


def _print_layer_table(backbone: Backbone, hw: tuple[int, int], table_rows: Sequence[LayerInfo]) -> None:
    from rich.table import Table

    def pair(v: object) -> str:
        if v is None:
            return ""
        if isinstance(v, tuple) and len(v) == 2 and v[0] == v[1]:
            v = v[0]
        if isinstance(v, float):
            return f"{v:g}"
        if isinstance(v, tuple):
            return "x".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
        return str(v)

    table = Table(title=f"{backbone.name} at {hw[0]}x{hw[1]}  (default CAM layer: {backbone.default_layer}; "
                        f"features: {backbone.feature_layer})", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("layer", "type", "output (CxHxW)", "kernel", "stride", "padding", "RF", "jump", "params"):
        table.add_column(col, justify="right" if col in ("RF", "jump", "params") else "left")
    for r in table_rows:
        shape = "x".join(str(d) for d in r.output_shape) if r.output_shape else ""
        table.add_row(r.name, r.type, shape, pair(r.kernel), pair(r.stride), pair(r.padding),
                      pair(r.receptive_field), pair(r.jump), f"{r.params:,}")
    print_table(table)
