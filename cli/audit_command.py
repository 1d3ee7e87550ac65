"""``cnn-explain audit``: accuracy, attention in boxes, faithfulness, sanity, translation and bias by group."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import (
    BatchOpt, ClassesOpt, DeviceOpt, JsonOpt, ModelOpt, ModelOptions, NumClassesOpt, QuietOpt, SeedOpt, TrustOpt,
    WeightsOpt, WorkersOpt, console, finish, handle_errors, progress_bar, stderr_line,
)

if TYPE_CHECKING:
    from explain.audit import AuditResult

DatasetArg = Annotated[Path, typer.Argument(help="Folder of images (walked recursively); label paths are relative "
                                                 "to it.", show_default=False)]
LabelsOpt = Annotated[Path, typer.Option(
    help="CSV: path plus imagenet_ids (';'-separated, any counts), class_index or class_name.", show_default=False)]
BoxesOpt = Annotated[Path | None, typer.Option(
    help="Object boxes: CSV path,x0,y0,x1,y1 (original pixels; several rows = union) or COCO JSON.",
    show_default=False)]
GroupsOpt = Annotated[Path | None, typer.Option(
    help="CSV path,group (or several attribute columns): per-group summaries and gaps.", show_default=False)]
LayerOpt = Annotated[str | None, typer.Option(
    "--layer", "-l", help="Layer Grad-CAM++ explains at. Default: the model's last convolutional block.",
    show_default=False)]


@handle_errors
def audit(
    dataset: DatasetArg,
    labels: LabelsOpt,
    boxes: BoxesOpt = None,
    groups: GroupsOpt = None,
    layer: LayerOpt = None,
    sanity: Annotated[int, typer.Option(min=0, help="Images (seeded sample) for the model-randomisation sanity "
                                                    "check; 0 disables it.")] = 16,
    shift: Annotated[int, typer.Option(min=0, help="Translation test shift in model-input pixels; 0 disables "
                                                   "it.")] = 8,
    steps: Annotated[int, typer.Option(min=0, help="Deletion/insertion steps (each costs 4 forward passes per "
                                                   "image); 0 disables faithfulness, else at least 2.")] = 8,
    worst: Annotated[int, typer.Option(min=0, help="Worst examples per list shown with overlays.")] = 8,
    restart: Annotated[bool, typer.Option("--restart", help="Discard the journal in --out instead of resuming "
                                                            "it.")] = False,
    model: ModelOpt = "efficientnet_lite0",
    weights: WeightsOpt = None,
    classes: ClassesOpt = None,
    num_classes: NumClassesOpt = None,
    trust_checkpoint: TrustOpt = False,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 16,
    workers: WorkersOpt = 0,
    out: Annotated[Path, typer.Option(help="Output folder; re-running with the same folder resumes.")] = Path(
        "cnn-explain-audit"),
    seed: SeedOpt = 0,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Audit a classifier over a labelled dataset: per-image CSV/JSON, summary and an HTML dashboard. Resumable."""
    from explain.audit import AuditOptions, run_audit
    from explain.audit_inputs import load_audit_inputs
    from explain.run import RunSettings

    opts = AuditOptions(labels=labels, boxes=boxes, groups=groups, layer=layer, sanity=sanity, shift=shift,
                        steps=steps, seed=seed, worst=worst, restart=restart)
    opts.check()
    backbone, torch_device = ModelOptions(model, weights, classes, num_classes, trust_checkpoint, device, seed).load()
    total = len(load_audit_inputs(dataset, labels, backbone.class_names, boxes, groups).files)
    with progress_bar(total, "audit", quiet) as advance:
        settings = RunSettings(batch_size=batch_size, device=torch_device, workers=workers,
                               argv=["cnn-explain", *sys.argv[1:]], on_batch=advance)
        result = run_audit(backbone, dataset, opts, out, settings)
    for warning in result.manifest.warnings:
        stderr_line(f"warning: {warning}")
    if not quiet and not json_:
        _print_summary(result)
    finish(result.manifest, None, json_, len(result.records))


def _print_summary(result: AuditResult) -> None:
    s = result.summary

    def fmt(value: object, percent: bool = False) -> str:
        if value is None:
            return "n/a"
        return f"{100 * float(value):.1f}%" if percent else f"{float(value):.3f}"

    out = console()
    o, loc, f, t, san = (s[k] for k in ("overall", "localisation", "faithfulness", "translation", "sanity"))
    out.print(f"audited {o['n']} images: accuracy {fmt(o['accuracy'], True)}, mean true-class prob "
              f"{fmt(o['mean_true_prob'])}")
    if loc["images_with_box"]:
        out.print(f"boxes: energy in box {fmt(loc['mean_energy_in_box'])} (area {fmt(loc['mean_box_area'])}), "
                  f"pointing {fmt(loc['pointing_accuracy'], True)}, right for the wrong reason "
                  f"{loc['right_for_wrong_reason']}")
    if f["images"]:
        out.print(f"deletion AUC {fmt(f['mean_deletion_auc'])} vs random {fmt(f['mean_deletion_auc_random'])} "
                  f"(below random on {fmt(f['share_deletion_below_random'], True)}); insertion "
                  f"{fmt(f['mean_insertion_auc'])} vs {fmt(f['mean_insertion_auc_random'])}")
    if san["images"]:
        out.print(f"sanity: median rank correlation {fmt(san['median_rank_correlation'])} over {san['images']} images "
                  f"(Grad-CAM reference {fmt(san['gradcam_median_rank_correlation'])})")
    if t["images"]:
        out.print(f"translation ±{t['shift']} px: top-1 kept {fmt(t['top1_kept'], True)}, peak moves "
                  f"{fmt(t['mean_peak_move'])} px")
    for column, block in s["groups"].items():
        gap = block["gap"].get("accuracy")
        if gap:
            out.print(f"groups by {column}: accuracy gap {fmt(gap['gap'])} ({gap['highest']} over {gap['lowest']})")
    out.print(f"dashboard: {result.out / 'dashboard.html'}")
