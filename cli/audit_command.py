"""``cnn-explain audit``: accuracy, attention in boxes, faithfulness, sanity, translation and bias by group for
classifiers; recall, false positives, attention on each object and bias by group for detectors (``--task
detection``)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import (
    ModelOptions, RunArgs, check_out_is_not_an_input, claim_output, finish, handle_errors, interrupt_hint,
    model_command, progress_bar, say,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from explain.audit import AuditResult
    from explain.audit_detection import DetectionAuditOptions
    from explain.backbones.base import Backbone
    from explain.run import RunSettings

DETECTOR_DEFAULT = "fasterrcnn_mobilenet_v3_large_fpn"

DatasetArg = Annotated[Path, typer.Argument(help="Folder of images (walked recursively); label paths are relative "
                                                 "to it.", show_default=False)]
LabelsOpt = Annotated[Path | None, typer.Option(
    help="Classifiers (required): CSV path plus imagenet_ids (';'-separated, any counts), class_index or class_name.",
    show_default=False)]
BoxesOpt = Annotated[Path | None, typer.Option(
    help="Object boxes: CSV path,x0,y0,x1,y1[,class] (original pixels; several rows = several objects) or COCO "
         "JSON. Detectors: the ground truth (required).", show_default=False)]
GroupsOpt = Annotated[Path | None, typer.Option(
    help="CSV path,group (or several attribute columns; detectors: an optional object_id column for per-object "
         "rows): per-group summaries and gaps.", show_default=False)]
TaskOpt = Annotated[str | None, typer.Option(
    help="classification or detection. Default: what the model is.", show_default=False)]
AuditModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help=f"Model name ('cnn-explain models'). Default: efficientnet_lite0, or {DETECTOR_DEFAULT} "
                          "with --task detection.", show_default=False)]
LayerOpt = Annotated[str | None, typer.Option(
    "--layer", "-l", help="Layer Grad-CAM++ explains at. Default: the model's last convolutional block.",
    show_default=False)]
AuditOutOpt = Annotated[Path, typer.Option("--out", "-o",
                                           help="Output folder; re-running with the same folder resumes.")]


def resume_hint(out: Path) -> str:
    """What to do after an interrupted audit."""
    return f"run the same command again to resume (finished images are kept in {out})"


@handle_errors
@model_command(model=None, model_option=AuditModelOpt, tasks=("classification", "detection"), batch_size=16,
               out=Path("cnn-explain-audit"), out_option=AuditOutOpt, figures=True)
def audit(
    dataset: DatasetArg,
    labels: LabelsOpt = None,
    boxes: BoxesOpt = None,
    task: TaskOpt = None,
    groups: GroupsOpt = None,
    layer: LayerOpt = None,
    sanity: Annotated[int, typer.Option(min=0, help="Classifiers: images (seeded sample) for the model-randomisation "
                                                    "sanity check; 0 disables it.")] = 16,
    shift: Annotated[int, typer.Option(min=0, help="Classifiers: translation test shift in model-input pixels; 0 "
                                                   "disables it.")] = 8,
    steps: Annotated[int, typer.Option(min=0, help="Classifiers: deletion/insertion steps (each costs 4 forward "
                                                   "passes per image); 0 disables faithfulness, else at least 2.")] = 8,
    randomisation: Annotated[str, typer.Option(
        help="Classifiers: how the sanity check randomises the network: 'recalibrated' (each layer's default "
             "initialisation, BatchNorm statistics re-estimated on the sample) or 'he-identity' (He-normal weights, "
             "BatchNorm as the identity; no data).")] = "recalibrated",
    cascade: Annotated[bool, typer.Option(
        "--cascade/--no-cascade", help="Classifiers: run the sanity check's whole cascade (top layer first, one "
                                       "randomised network per block) or only the full randomisation.")] = True,
    worst: Annotated[int, typer.Option(min=0, help="Worst examples per list shown with overlays.")] = 8,
    iou: Annotated[float, typer.Option(help="Detectors: the IoU a detection needs to match an object.")] = 0.5,
    score_threshold: Annotated[float, typer.Option(
        help="Detectors: the confidence a detection needs to count (the operating point).")] = 0.5,
    min_size: Annotated[int | None, typer.Option(
        help="Detectors: internal resize, shorter side in pixels (default: the model's; smaller is faster).",
        show_default=False)] = None,
    method: Annotated[str, typer.Option(help="Detectors: gradcam, gradcam++ or guided.")] = "gradcam++",
    restart: Annotated[bool, typer.Option("--restart", help="Discard the journal in --out instead of resuming "
                                                            "it.")] = False,
    *,
    model_options: ModelOptions,
    run: RunArgs,
) -> None:
    """Audit a classifier over a labelled dataset, or a detector against ground-truth boxes (--task detection):
    per-image (per-object) CSV/JSON, summary and an HTML dashboard. Resumable."""
    from explain.audit import AuditOptions, run_audit
    from explain.audit_inputs import load_audit_inputs
    from explain.detection.models import task_of
    from explain.errors import UsageError

    wanted = _check_task(task)
    if wanted is not None:
        _check_ground_truth(wanted, labels, boxes)  # before the (slow) model load
    opts = None
    if labels is not None:
        opts = AuditOptions(labels=labels, boxes=boxes, groups=groups, layer=layer, sanity=sanity, shift=shift,
                            steps=steps, seed=model_options.seed, randomisation=randomisation.strip().lower(),
                            cascade=cascade, worst=worst, restart=restart, style=run.style)
        opts.check()
    claim_output(run.out)  # before the (slow) model load; held until the audit ends (one run per journal)
    check_out_is_not_an_input(run.out, [dataset])
    name = model_options.model or (DETECTOR_DEFAULT if wanted == "detection" else "efficientnet_lite0")
    backbone, torch_device = dataclasses.replace(model_options, model=name).load()
    kind = task_of(backbone)
    if wanted is not None and wanted != kind:
        raise UsageError(f"--task {wanted} but {name} is a {kind} model; pick a {wanted} model with --model")
    make_settings = lambda advance: _settings(run.batch_size, torch_device, run.workers or 0, advance)  # noqa: E731
    out, json_, quiet = run.out, run.as_json, run.quiet
    _check_ground_truth(kind, labels, boxes)
    if kind == "detection":
        from explain.audit_detection import DetectionAuditOptions

        detection = DetectionAuditOptions(boxes=boxes, groups=groups, layer=layer, method=method.strip().lower(),
                                          iou=iou, score_threshold=score_threshold, min_size=min_size, worst=worst,
                                          restart=restart, style=run.style)
        _audit_detection(backbone, dataset, detection, out, make_settings, json_, quiet)
        return
    assert opts is not None and labels is not None  # _check_ground_truth: a classifier audit has labels
    from explain.metrics import cascade_length
    from explain.modules import resolve_layer

    resolve_layer(backbone.model, layer or backbone.default_layer)  # the last usage check before any work
    inputs = load_audit_inputs(dataset, labels, backbone.class_names, boxes, groups, exclude=(out,))
    sanity_steps = cascade_length(backbone.model, cascade) if sanity and inputs.files else 0
    with progress_bar(len(inputs.files) + sanity_steps, "audit", quiet) as advance, interrupt_hint(resume_hint(out)):
        result = run_audit(backbone, dataset, opts, out, make_settings(advance), inputs=inputs)
    if not quiet and not json_:
        _print_summary(result)
    finish(result.manifest, None, json_, len(result.records))


def _check_task(task: str | None) -> str | None:
    """The asked task, or ``None`` (the model's)."""
    from explain.errors import UsageError

    wanted = task.strip().lower() if task else None
    if wanted not in (None, "classification", "detection"):
        raise UsageError(f"unknown --task {task!r}: choose classification or detection")
    return wanted


def _check_ground_truth(kind: str, labels: Path | None, boxes: Path | None) -> None:
    """The ground-truth options a ``kind`` audit needs (usage errors otherwise)."""
    from explain.errors import UsageError

    if kind == "detection":
        if labels is not None:
            raise UsageError("--labels is for classifiers: a detector's ground truth goes in --boxes (CSV "
                             "path,x0,y0,x1,y1,class or COCO JSON)")
        if boxes is None:
            raise UsageError("a detection audit needs --boxes: a CSV path,x0,y0,x1,y1,class or a COCO JSON file")
    elif labels is None:
        raise UsageError("a classifier audit needs --labels (a CSV of path plus imagenet_ids, class_index or "
                         "class_name); for a detector pass --task detection and --boxes")


def _audit_detection(backbone: Backbone, dataset: Path, opts: DetectionAuditOptions, out: Path,
                     make_settings: Callable[[Callable[[int], None]], RunSettings], json_: bool, quiet: bool) -> None:
    """The detection branch: check, run with a progress bar, report, exit with the right code."""
    from explain.audit_detection import check_detector, run_detection_audit
    from explain.audit_inputs import load_audit_inputs

    check_detector(backbone, opts)
    inputs = load_audit_inputs(dataset, None, backbone.class_names, opts.boxes, opts.groups, exclude=(out,))
    with progress_bar(len(inputs.files), "audit", quiet) as advance, interrupt_hint(resume_hint(out)):
        result = run_detection_audit(backbone, dataset, opts, out, make_settings(advance), inputs=inputs)
    if not quiet and not json_:
        _print_detection_summary(result)
    finish(result.manifest, None, json_, result.summary["counts"]["images"])


def _settings(batch_size: int, torch_device: object, workers: int, advance: Callable[[int], None]) -> RunSettings:
    from explain.run import RunSettings

    return RunSettings(batch_size=batch_size, device=torch_device, workers=workers,
                       argv=["cnn-explain", *sys.argv[1:]], on_batch=advance)


def _fmt(value: object, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * float(value):.1f}%" if percent else f"{float(value):.3f}"  # type: ignore[arg-type]


def _print_detection_summary(result: AuditResult) -> None:
    s = result.summary
    o = s["overall"]
    say(f"audited {o['objects']} objects in {o['images']} photos: recall {_fmt(o['recall'], True)}, precision "
        f"{_fmt(o['precision'], True)}, {_fmt(o['false_positives_per_image'])} false positives per photo")
    if o["mean_energy_in_box"] is not None:
        say(f"detected objects: mean IoU {_fmt(o['mean_iou'])}, energy on object {_fmt(o['mean_energy_in_box'])} "
            f"(box area {_fmt(o['mean_area_share'])}), in the surroundings {_fmt(o['mean_energy_around_box'])}")
    _print_gaps(result, "recall")


def _print_summary(result: AuditResult) -> None:
    s = result.summary
    o, loc, f, t, san = (s[k] for k in ("overall", "localisation", "faithfulness", "translation", "sanity"))
    say(f"audited {o['n']} image{'' if o['n'] == 1 else 's'}: accuracy {_fmt(o['accuracy'], True)}, "
        f"mean true-class prob {_fmt(o['mean_true_prob'])}")
    if loc["images_with_box"]:
        say(f"boxes: energy in box {_fmt(loc['mean_energy_in_box'])} (area {_fmt(loc['mean_box_area'])}), "
            f"pointing {_fmt(loc['pointing_accuracy'], True)}, right for the wrong reason "
            f"{loc['right_for_wrong_reason']}")
    if f["images"]:
        say(f"deletion AUC {_fmt(f['mean_deletion_auc'])} vs random {_fmt(f['mean_deletion_auc_random'])} "
            f"(below random on {_fmt(f['share_deletion_below_random'], True)}); insertion "
            f"{_fmt(f['mean_insertion_auc'])} vs {_fmt(f['mean_insertion_auc_random'])}")
    if san["images"]:
        say(f"sanity ({san['randomisation']}): Grad-CAM++ median rank correlation "
            f"{_fmt(san['median_rank_correlation'])} "
            f"over {san['images']} images (Grad-CAM reference {_fmt(san['gradcam_median_rank_correlation'])})")
    if t["images"]:
        say(f"translation ±{t['shift']} px: top-1 kept {_fmt(t['top1_kept'], True)}, peak moves "
            f"{_fmt(t['mean_peak_move'])} px")
    _print_gaps(result, "accuracy")


def _print_gaps(result: AuditResult, metric: str) -> None:
    """The gap in ``metric`` between the best and the worst group of every grouping, then where the dashboard is."""
    from explain.audit_summary import describe_gap

    for column, block in result.summary["groups"].items():
        gap = block["gap"].get(metric)
        if gap:
            say(f"groups by {column}: {describe_gap(metric, gap)}")
    say(f"dashboard: {result.out / 'dashboard.html'}")
