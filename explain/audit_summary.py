"""Dataset-level numbers from an audit's per-image records: means, shares, group gaps and worst examples.

Everything here is plain arithmetic on the records (dicts as :mod:`explain.audit_task` writes them), so it is
cheap, deterministic and testable without a model. Undefined values (an image without a box, an image outside the
sanity sample) are ``None`` in records and are left out of means; a mean over nothing is ``None`` in the summary.

Definitions (stated once, used by the dashboard too):

* **accuracy**: share of images whose top-1 class is one of their accepted classes.
* **right for the wrong reason**: a correct prediction whose true-class Grad-CAM++ map puts *less* energy inside the
  object's boxes than a uniform map would (``energy_in_box < box_area``), ranked by ``energy_in_box / box_area``.
* **deletion below random**: share of images whose CAM deletion AUC is lower (better) than that of their random
  baseline map; **insertion above random** likewise for insertion (higher is better).
* **sanity cascade**: per step of the cascading randomisation (top layer first; the last step randomises
  everything), the median and quartiles of the rank correlation between trained and randomised maps.
* **group gap** of a metric: its largest minus its smallest per-group value, over the groups where it is defined
  (groups where it is undefined, e.g. without objects, are named apart); the highest and the lowest are always two
  different groups, and a gap of 0 is reported as a tie. Each group's size travels with the gap, and groups with
  fewer than :data:`MIN_GROUP_SIZE` members get a warning (:func:`small_group_warnings`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["CONFIDENT_PROB", "GROUP_METRICS", "MIN_GROUP_SIZE", "PER_IMAGE_METRICS", "describe_gap", "group_count", "group_gaps",
           "group_summary", "right_for_wrong_reason", "small_group_warnings", "summarize", "worst_examples"]

GROUP_METRICS: tuple[str, ...] = ("accuracy", "mean_prob", "mean_true_prob", "mean_energy_in_box",
                                  "pointing_accuracy")
#: Detection group metrics that are rates over a group's images rather than its objects.
PER_IMAGE_METRICS: frozenset[str] = frozenset({"false_positives_per_image"})
#: Groups smaller than this get a warning: a rate over a handful of images says little.
MIN_GROUP_SIZE = 10
#: A "confident mistake" gave the wrong class at least this probability.
CONFIDENT_PROB = 0.5


def _values(records: Iterable[dict[str, Any]], key: str) -> list[float]:
    out = []
    for r in records:
        v = r.get(key)
        if v is None or isinstance(v, str):
            continue
        v = float(v)
        if not math.isnan(v):
            out.append(v)
    return out


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 6) if values else None


def _share(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 6) if flags else None


def _pairs(records: Sequence[dict[str, Any]], a: str, b: str) -> list[tuple[float, float]]:
    return [(float(r[a]), float(r[b])) for r in records if r.get(a) is not None and r.get(b) is not None]


def _basic(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "n": len(records),
        "accuracy": _share([bool(r["correct"]) for r in records]),
        "mean_prob": _mean(_values(records, "prob")),
        "mean_true_prob": _mean(_values(records, "true_prob")),
        "mean_energy_in_box": _mean(_values(records, "energy_in_box")),
        "pointing_accuracy": _share([bool(r["pointing_hit"]) for r in records if r.get("pointing_hit") is not None]),
    }


def _localisation(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    boxed = [r for r in records if r.get("energy_in_box") is not None]
    return {
        "images_with_box": len(boxed),
        "images_box_outside_crop": sum(1 for r in records if r.get("box_status") == "outside"),
        "mean_energy_in_box": _mean(_values(boxed, "energy_in_box")),
        "mean_box_area": _mean(_values(boxed, "box_area")),
        "pointing_accuracy": _share([bool(r["pointing_hit"]) for r in boxed if r.get("pointing_hit") is not None]),
        "right_for_wrong_reason": len(right_for_wrong_reason(records)),
    }


def _faithfulness(records: Sequence[dict[str, Any]], steps: int) -> dict[str, Any]:
    deletion = _pairs(records, "deletion_auc", "deletion_auc_random")
    insertion = _pairs(records, "insertion_auc", "insertion_auc_random")
    return {
        "steps": steps,
        "images": len(deletion),
        "mean_deletion_auc": _mean([c for c, _ in deletion]),
        "mean_deletion_auc_random": _mean([r for _, r in deletion]),
        "share_deletion_below_random": _share([c < r for c, r in deletion]),
        "mean_insertion_auc": _mean([c for c, _ in insertion]),
        "mean_insertion_auc_random": _mean([r for _, r in insertion]),
        "share_insertion_above_random": _share([c > r for c, r in insertion]),
    }


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 6) if values else None


def _quartiles(values: Sequence[float]) -> tuple[float | None, float | None]:
    if len(values) < 2:
        return (_median(values), _median(values))
    q = statistics.quantiles(values, n=4, method="inclusive")
    return round(q[0], 6), round(q[2], 6)


def _cascade(final: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per cascade step and method: median and quartiles of rho over the images where it is defined."""
    if not final:
        return []
    rows = []
    for k, step in enumerate(final["steps"]):
        row: dict[str, Any] = {"randomised_from": step}
        for method in final["methods"]:
            values = [float(v) for v in final["rho"][method][k] if v is not None]
            q1, q3 = _quartiles(values)
            row[method] = {"median": _median(values), "q1": q1, "q3": q3, "images": len(values)}
        rows.append(row)
    return rows


def _sanity(records: Sequence[dict[str, Any]], final: dict[str, Any] | None = None) -> dict[str, Any]:
    rows = [r for r in records if r.get("sanity_rho") is not None]
    values = [float(r["sanity_rho"]) for r in rows]
    reference = _values(rows, "sanity_rho_gradcam")
    return {
        "images": len(rows),
        "randomisation": final["randomisation"] if final else None,
        "mean_rank_correlation": _mean(values),
        "median_rank_correlation": _median(values),
        "mean_abs_rank_correlation": _mean([abs(v) for v in values]),
        "gradcam_mean_rank_correlation": _mean(reference),
        "gradcam_median_rank_correlation": _median(reference),
        "values": [{"path": r["path"], "rho": r["sanity_rho"], "rho_gradcam": r.get("sanity_rho_gradcam")}
                   for r in rows],
        "cascade": _cascade(final),
    }


def _translation(records: Sequence[dict[str, Any]], shift: int) -> dict[str, Any]:
    return {
        "shift": shift,
        "images": len(_values(records, "shift_top1_kept")),
        "mean_abs_prob_change": _mean(_values(records, "shift_prob_change")),
        "top1_kept": _mean(_values(records, "shift_top1_kept")),
        "mean_peak_move": _mean(_values(records, "shift_peak_move")),
    }


def group_summary(records: Sequence[dict[str, Any]], column: str) -> dict[str, Any]:
    """Per-group :data:`GROUP_METRICS` of one group column, and each metric's gap between groups."""
    names = sorted({str(r[column]) for r in records if r.get(column) is not None})
    groups = {name: _basic([r for r in records if str(r.get(column)) == name]) for name in names}
    return {"groups": groups, "gap": group_gaps(groups, GROUP_METRICS)}


def group_count(group: dict[str, Any], metric: str | None = None) -> tuple[int, str]:
    """How many members a group's ``metric`` is a rate over, and their unit: ``(n, "images")`` or ``(n, "objects")``.

    A classifier group counts images (``n``); a detection group counts objects, except for the per-image metrics of
    :data:`PER_IMAGE_METRICS`, which count its images. Without ``metric``: the group's main count.
    """
    if "n" in group:
        return int(group["n"]), "images"
    if metric in PER_IMAGE_METRICS or "objects" not in group:
        return int(group.get("images") or 0), "images"
    return int(group["objects"]), "objects"


def _defined(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def group_gaps(groups: dict[str, dict[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """Per metric defined in at least two groups: the highest minus the lowest group value, and which groups.

    Each record is ``{"gap", "highest", "lowest", "tie", "n", "undefined"}``: ``highest`` and ``lowest`` are always
    two *different* groups (ties are broken by the groups' order, ``lowest`` is the smallest of the others), ``tie``
    is true when the gap is 0 (every compared group has the same value), ``n`` gives every group's count (see
    :func:`group_count`) and ``undefined`` names the groups left out because the metric is ``None`` or NaN there
    (e.g. no objects). A metric defined in fewer than two groups has no record.
    """
    gaps: dict[str, Any] = {}
    for metric in metrics:
        defined = {name: float(g[metric]) for name, g in groups.items() if _defined(g.get(metric))}
        if len(defined) < 2:
            continue
        high = max(defined, key=lambda n: defined[n])
        low = min((n for n in defined if n != high), key=lambda n: defined[n])
        gap = round(defined[high] - defined[low], 6)
        gaps[metric] = {"gap": gap, "highest": high, "lowest": low, "tie": gap == 0,
                        "n": {name: group_count(g, metric)[0] for name, g in groups.items()},
                        "undefined": [name for name in groups if name not in defined]}
    return gaps


def _listed(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


def describe_gap(metric: str, gap: dict[str, Any]) -> str:
    """One line of text for a :func:`group_gaps` record, every named group with its size.

    E.g. ``accuracy gap 0.211 (grayscale n=2 over colour n=40)``, ``no recall gap between indoor n=5 and outdoor
    n=7`` or, with groups left out, ``...; undefined for dusk n=0``.
    """
    label = metric.replace("_", " ")
    named = [f"{name} n={count}" for name, count in gap["n"].items()]
    by_name = dict(zip(gap["n"], named))
    if gap["tie"]:
        text = f"no {label} gap between {_listed([by_name[k] for k in gap['n'] if k not in gap['undefined']])}"
    else:
        text = f"{label} gap {gap['gap']:.3f} ({by_name[gap['highest']]} over {by_name[gap['lowest']]})"
    if gap["undefined"]:
        text += f"; undefined for {_listed([by_name[k] for k in gap['undefined']])}"
    return text


def small_group_warnings(grouped: dict[str, dict[str, Any]], minimum: int = MIN_GROUP_SIZE) -> list[str]:
    """One warning per group (of every grouping in a summary's ``groups``) with fewer than ``minimum`` members.

    Args:
        grouped: ``summary["groups"]``: per group column, a block with per-group statistics under ``"groups"``.
        minimum: the smallest group whose rates are worth comparing (default :data:`MIN_GROUP_SIZE`).
    """
    warnings = []
    for column, block in grouped.items():
        for name, group in block["groups"].items():
            n, unit = group_count(group)
            if n < minimum:
                size = f"no {unit}" if n == 0 else f"only {n} {unit[:-1] if n == 1 else unit}"
                warnings.append(f"group {name!r} (by {column}) has {size}: its rates are unreliable")
    return warnings


def right_for_wrong_reason(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Correct predictions whose true-class map has less energy in the box than a uniform map, worst first."""
    rows = [r for r in records if r.get("correct") and r.get("energy_in_box") is not None
            and r.get("box_area") and float(r["energy_in_box"]) < float(r["box_area"])]
    return sorted(rows, key=lambda r: (float(r["energy_in_box"]) / float(r["box_area"]), r["path"]))


def _ranked(records: Sequence[dict[str, Any]], keep: Callable[[dict[str, Any]], bool],
            score: Callable[[dict[str, Any]], float], n: int) -> list[str]:
    rows = sorted((r for r in records if keep(r)), key=lambda r: (-score(r), r["path"]))
    return [r["path"] for r in rows[:n]]


def worst_examples(records: Sequence[dict[str, Any]], n: int) -> dict[str, list[str]]:
    """Paths of the worst examples: confident mistakes (a wrong class with probability >= :data:`CONFIDENT_PROB`,
    most confident first), right for the wrong reason, least faithful maps."""
    return {
        "confident_mistakes": _ranked(
            records, lambda r: not r["correct"] and float(r["prob"] or 0.0) >= CONFIDENT_PROB,
            lambda r: float(r["prob"] or 0.0), n),
        "right_for_wrong_reason": [r["path"] for r in right_for_wrong_reason(records)[:n]],
        "least_faithful": _ranked(
            records,
            lambda r: r.get("deletion_auc") is not None and r.get("deletion_auc_random") is not None
            and float(r["deletion_auc"]) > float(r["deletion_auc_random"]),
            lambda r: float(r["deletion_auc"]) - float(r["deletion_auc_random"]), n),
    }


def summarize(records: Sequence[dict[str, Any]], group_columns: Sequence[str], *, steps: int, shift: int,
              worst: int, sanity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole ``summary.json`` body (without run metadata) from the sorted records (and the sanity cascade,
    ``final["sanity"]`` of :meth:`explain.audit_task.ClassificationTask.final`, when there is one)."""
    rwr = right_for_wrong_reason(records)
    return {
        "overall": _basic(records),
        "localisation": _localisation(records),
        "faithfulness": _faithfulness(records, steps),
        "translation": _translation(records, shift),
        "sanity": _sanity(records, sanity),
        "groups": {column: group_summary(records, column) for column in group_columns},
        "right_for_wrong_reason": [
            {k: r.get(k) for k in ("path", "true_name", "pred_name", "prob", "energy_in_box", "box_area")}
            for r in rwr],
        "worst": worst_examples(records, worst),
    }
