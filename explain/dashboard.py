"""The audit's HTML dashboard: one self-contained page of numbers, plots and the worst examples.

Built with :mod:`explain.html` (everything user-supplied escaped, images embedded as data URIs, no scripts); plots
are matplotlib figures (``matplotlib.figure.Figure``, never a window) rendered to PNG data URIs at ``--dpi``
times :data:`~explain.html.SCREEN_DPI_SCALE`; under ``--no-title`` the plots have no titles, and under
``--no-title-path`` the page names the dataset folder without its parents (:class:`explain.figures.FigureStyle`). The page reads only the summary and the
records, so it can be rebuilt from ``summary.json`` and ``images.jsonl`` at any time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from explain.audit_summary import CONFIDENT_PROB, describe_gap, group_count
from explain.figures import FigureStyle, format_prob
from explain.html import SCREEN_DPI_SCALE, Markup, esc, figure_data_uri, img, join, page, table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["render_dashboard", "render_detection_dashboard"]

_CSS = """
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 10px; margin: 10px 0; }
.cards .card b { display: block; font-size: 1.5em; font-variant-numeric: tabular-nums; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 14px; }
.plots img { width: 100%; height: auto; }
.plots img.span { grid-column: 1 / -1; max-width: 1000px; }
.grid figure img { width: auto; max-width: 100%; max-height: 320px; margin: 0 auto; }
"""


_COLOURS = {"good": "#1f77b4", "bad": "#d62728", "random": "#7f7f7f", "cam": "#ff7f0e"}

_DEFINITIONS = Markup("""
<ul>
<li><b>energy in box</b>: share of the true class's Grad-CAM++ energy inside the object's boxes (energy-based
pointing game, Wang et al. 2020); <b>box area</b> is what a uniform map scores.</li>
<li><b>pointing game</b>: the map's maximum lies within 15 px (model-input pixels) of a box (TorchRay's convention,
Zhang et al. 2016).</li>
<li><b>deletion / insertion AUC</b> (RISE, Petsiuk et al. 2018): probability of the predicted class while the
pixels the map ranks highest are deleted (to the normalisation mean) or inserted (into a blurred copy); deletion:
lower is better, insertion: higher is better. The baseline is a random map at the layer's resolution.</li>
<li><b>sanity</b> (Adebayo et al. 2018): Spearman correlation between the maps of the trained and of a fully
randomised network, on a sample; a map that depends on what the network learnt correlates little. Grad-CAM is
shown as a reference: Grad-CAM++ keeps only positive gradients, so on a random network its map drifts towards the
layer's activation energy, which still follows the image. The cascade plot repeats the comparison as the network
is randomised from the output down, one block more at each step (the paper's Fig. 2).</li>
<li><b>translation</b>: the input shifted by &plusmn;k px horizontally and vertically: mean absolute change of the
predicted class's probability, share of shifts keeping the top-1 class, mean distance between the CAM peak and where
it should have moved.</li>
<li><b>right for the wrong reason</b>: correct predictions whose map puts less energy on the object than a uniform
map would.</li>
</ul>
""")


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{100 * value:.1f}%" if percent else f"{value:.3f}"
    return str(value)


def _card(label: str, value: Any, note: str = "", percent: bool = False) -> Markup:
    note_html = f'<span class="muted">{esc(note)}</span>' if note else ""
    return Markup(f'<div class="card"><b>{esc(_fmt(value, percent))}</b>{esc(label)} {note_html}</div>')


def _figure(width: float = 5.6, height: float = 3.2) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _plot(fig: Figure, alt: str, style: FigureStyle = FigureStyle(), cls: str | None = None) -> Markup:
    """A plot as an ``<img>``: at :data:`~explain.html.SCREEN_DPI_SCALE` of ``--dpi``; under ``--no-title`` without its
    title (a one-axes plot's title is the axes title)."""
    if not style.title:
        for ax in fig.axes:
            ax.set_title("")
    return img(figure_data_uri(fig, dpi=style.scaled_dpi(SCREEN_DPI_SCALE)), alt, cls=cls)


def _column(records: Sequence[dict[str, Any]], key: str,
            keep: Callable[[dict[str, Any]], bool] = lambda r: True) -> list[float]:
    return [float(r[key]) for r in records if r.get(key) is not None and keep(r)]


# --------------------------------------------------------------------------------------------------------------
# Plots


def _probability_plot(records: Sequence[dict[str, Any]], style: FigureStyle = FigureStyle()) -> Markup:
    fig = _figure()
    ax = fig.subplots()
    right = _column(records, "true_prob", lambda r: r["correct"])
    wrong = _column(records, "true_prob", lambda r: not r["correct"])
    ax.hist([right, wrong], bins=20, range=(0, 1), stacked=True, color=[_COLOURS["good"], _COLOURS["bad"]],
            label=[f"correct ({len(right)})", f"wrong ({len(wrong)})"])
    ax.set_xlabel("probability of the true class")
    ax.set_ylabel("images")
    ax.legend(frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2)  # above the bars, never on one
    return _plot(fig, "histogram of true-class probabilities", style)


def _energy_plot(records: Sequence[dict[str, Any]], style: FigureStyle = FigureStyle()) -> Markup | None:
    energy = _column(records, "energy_in_box")
    if not energy:
        return None
    fig = _figure()
    ax = fig.subplots()
    ax.hist(energy, bins=20, range=(0, 1), color=_COLOURS["cam"], label="Grad-CAM++ energy in box")
    area = _column(records, "box_area")
    if area:
        ax.axvline(sum(area) / len(area), color="k", linestyle="--", label="mean box area (uniform map)")
    ax.set_xlabel("share of map energy inside the boxes")
    ax.set_ylabel("images")
    ax.legend(frameon=False, fontsize=8, loc="best")
    return _plot(fig, "histogram of the energy inside the boxes", style)


def _faithfulness_plots(records: Sequence[dict[str, Any]], style: FigureStyle = FigureStyle()) -> list[Markup]:
    plots = []
    for name, better in (("deletion", "below"), ("insertion", "above")):
        pairs = [(float(r[f"{name}_auc_random"]), float(r[f"{name}_auc"])) for r in records
                 if r.get(f"{name}_auc") is not None and r.get(f"{name}_auc_random") is not None]
        if not pairs:
            continue
        fig = _figure()
        ax = fig.subplots()
        ax.scatter([p[0] for p in pairs], [p[1] for p in pairs], s=10, alpha=0.6, color=_COLOURS["cam"])
        top = max([1e-3, *(max(p) for p in pairs)]) * 1.05
        ax.plot([0, top], [0, top], color=_COLOURS["random"], linewidth=1)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel(f"{name} AUC, random map")
        ax.set_ylabel(f"{name} AUC, Grad-CAM++")
        ax.set_title(f"{name}: Grad-CAM++ is better {better} the diagonal", fontsize=10)
        plots.append(_plot(fig, f"{name} AUC of Grad-CAM++ against random maps", style))
    return plots


def _sanity_plot(records: Sequence[dict[str, Any]], style: FigureStyle = FigureStyle()) -> Markup | None:
    rho = _column(records, "sanity_rho")
    if not rho:
        return None
    fig = _figure()
    ax = fig.subplots()
    reference = _column(records, "sanity_rho_gradcam")
    ax.hist([rho, reference] if reference else [rho], bins=20, range=(-1, 1),
            color=[_COLOURS["cam"], _COLOURS["good"]][: 2 if reference else 1],
            label=["Grad-CAM++", "Grad-CAM (reference)"][: 2 if reference else 1])
    ax.axvline(0, color="k", linewidth=1)
    ax.set_xlabel("Spearman rho: trained vs randomised network")
    ax.set_ylabel("images")
    ax.set_title("sanity check: low is good", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    return _plot(fig, "histogram of sanity-check rank correlations", style)


def _cascade_plot(sanity: dict[str, Any], style: FigureStyle = FigureStyle()) -> Markup | None:
    """Adebayo et al.'s cascade figure: median rank correlation (quartile band) as randomisation goes deeper."""
    steps = sanity.get("cascade") or []
    if len(steps) < 2:
        return None
    names = [row["randomised_from"] for row in steps]
    fig = _figure(width=10, height=3.6)
    ax = fig.subplots()
    x = list(range(len(names)))
    for method, label, colour in (("gradcam++", "Grad-CAM++", _COLOURS["cam"]),
                                  ("gradcam", "Grad-CAM (reference)", _COLOURS["good"])):
        cells = [row.get(method) or {} for row in steps]
        if not any(c.get("median") is not None for c in cells):
            continue
        nan = float("nan")
        median = [nan if c.get("median") is None else c["median"] for c in cells]
        ax.fill_between(x, [nan if c.get("q1") is None else c["q1"] for c in cells],
                        [nan if c.get("q3") is None else c["q3"] for c in cells], color=colour, alpha=0.2, linewidth=0)
        ax.plot(x, median, marker="o", markersize=3, color=colour, label=label)
    ax.axhline(0, color="k", linewidth=1)
    ax.set_ylim(-1, 1)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("randomised from this module to the output (cascade, top first)")
    ax.set_ylabel("Spearman rho with trained map")
    ax.set_title(f"sanity cascade ({sanity.get('randomisation')}): median and quartiles; low is good", fontsize=10)
    ax.legend(frameon=False, fontsize=8, loc="lower left")
    return _plot(fig, "sanity check: rank correlation at each step of the cascading randomisation", style, cls="span")


def _translation_plots(records: Sequence[dict[str, Any]], style: FigureStyle = FigureStyle()) -> list[Markup]:
    moved = _column(records, "shift_peak_move")
    if not moved:
        return []
    plots = []
    for values, label, colour in ((_column(records, "shift_prob_change"),
                                   "mean |change| of the predicted class's probability", _COLOURS["good"]),
                                  (moved, "mean CAM peak displacement (model-input px)", _COLOURS["cam"])):
        fig = _figure()
        ax = fig.subplots()
        ax.hist(values, bins=20, color=colour)
        ax.set_xlabel(label)
        ax.set_ylabel("images")
        ax.set_title("translation test", fontsize=10)
        plots.append(_plot(fig, f"translation test: {label}", style))
    return plots


def _tick(name: str, group: dict[str, Any]) -> str:
    """A group's tick label: its (shortened) name and size, e.g. ``grayscale (n=2)``."""
    return f"{name if len(name) <= 18 else name[:17] + '…'} (n={group_count(group)[0]})"


def _mark_empty_bars(ax: Any, where: Sequence[float], values: Sequence[float | None], colour: Any) -> bool:
    """Tell apart the bars a reader cannot see: a zero gets a "0" in its bar's colour, a missing value a grey
    "n/a" (both draw nothing otherwise). Returns whether any value was missing."""
    for x, value in zip(where, values):
        if value is None or value == 0:
            ax.text(x, 0.01, "n/a" if value is None else "0", ha="center", va="bottom", fontsize=7,
                    rotation=90 if value is None else 0, color="0.45" if value is None else colour)
    return any(value is None for value in values)


def _group_plot(column: str, groups: dict[str, dict[str, Any]],
                metrics: Sequence[str] = ("accuracy", "mean_true_prob", "mean_energy_in_box"),
                style: FigureStyle = FigureStyle()) -> Markup:
    import numpy as np

    metrics = [m for m in metrics if any(g[m] is not None for g in groups.values())]
    names = list(groups)
    fig = _figure(max(5.0, 1.1 * len(names) + 2.5), 3.2)
    ax = fig.subplots()
    width = 0.8 / max(1, len(metrics))
    x = np.arange(len(names))
    missing = False
    for j, metric in enumerate(metrics):
        values = [groups[n][metric] for n in names]
        where = x + (j - (len(metrics) - 1) / 2) * width
        bars = ax.bar(where, [float("nan") if v is None else v for v in values], width,
                      label=metric.replace("_", " "))
        missing |= _mark_empty_bars(ax, where, values, bars.patches[0].get_facecolor())
    ax.set_xticks(x, [_tick(n, groups[n]) for n in names], rotation=20 if len(names) > 4 else 0)
    ax.set_ylim(0, 1.2)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_title(f"by {column}" + (" (n/a: no data)" if missing else ""), fontsize=10)
    ax.legend(frameon=False, fontsize=8, ncols=len(metrics), loc="upper center")
    return _plot(fig, f"per-group metrics by {column}", style)


# --------------------------------------------------------------------------------------------------------------
# Sections


def _header(summary: dict[str, Any], style: FigureStyle = FigureStyle()) -> Markup:
    counts = summary["counts"]
    meta = (f"model {summary['model']} · {summary['method']} at {summary['layer']} · {counts['images']} images "
            f"audited · {counts['errors']} inputs failed")
    return join([Markup(f"<h1>Audit of {esc(style.name(summary['dataset']))}</h1>"),
                 Markup(f'<p class="meta">{esc(meta)}</p>')])


def _cards(summary: dict[str, Any]) -> Markup:
    o, loc, f, t, s = (summary[k] for k in ("overall", "localisation", "faithfulness", "translation", "sanity"))
    cards = [_card("accuracy", o["accuracy"], f"{o['n']} images", True),
             _card("mean true-class probability", o["mean_true_prob"])]
    if loc["images_with_box"]:
        cards += [_card("mean energy in box", loc["mean_energy_in_box"], f"box area {_fmt(loc['mean_box_area'])}"),
                  _card("pointing game", loc["pointing_accuracy"], "hits", True),
                  _card("right for the wrong reason", loc["right_for_wrong_reason"], "correct, off the object")]
    if f["images"]:
        cards += [_card("deletion AUC below random", f["share_deletion_below_random"],
                        f"{_fmt(f['mean_deletion_auc'])} vs {_fmt(f['mean_deletion_auc_random'])}", True),
                  _card("insertion AUC above random", f["share_insertion_above_random"],
                        f"{_fmt(f['mean_insertion_auc'])} vs {_fmt(f['mean_insertion_auc_random'])}", True)]
    if s["images"]:
        cards.append(_card("sanity: Grad-CAM++ median rank correlation", s["median_rank_correlation"],
                           f"{s['images']} images; Grad-CAM {_fmt(s['gradcam_median_rank_correlation'])}"))
    if t["images"]:
        cards.append(_card(f"top-1 kept under ±{t['shift']} px shifts", t["top1_kept"],
                           f"peak moves {_fmt(t['mean_peak_move'])} px", True))
    return Markup(f'<div class="cards">{join(cards)}</div>')


def _plots(summary: dict[str, Any], records: Sequence[dict[str, Any]], style: FigureStyle = FigureStyle()) -> Markup:
    plots = [p for p in (_probability_plot(records, style), _energy_plot(records, style),
                         *_faithfulness_plots(records, style), _sanity_plot(records, style),
                         _cascade_plot(summary["sanity"], style), *_translation_plots(records, style))
             if p is not None]
    return Markup(f'<h2>Distributions</h2><div class="plots">{join(plots)}</div>')


def _groups(summary: dict[str, Any], style: FigureStyle = FigureStyle()) -> Markup:
    parts: list[Markup] = []
    columns = [("images", "n"), ("accuracy", "accuracy"), ("mean prob", "mean_prob"),
               ("mean true prob", "mean_true_prob")]
    if summary["localisation"]["images_with_box"]:  # without --boxes these two would be empty
        columns += [("energy in box", "mean_energy_in_box"), ("pointing", "pointing_accuracy")]
    for column, block in summary["groups"].items():
        groups = block["groups"]
        rows = [[name, *(g[key] for _, key in columns)] for name, g in groups.items()]
        headers = [column, *(header for header, _ in columns)]
        gaps = [describe_gap(metric, gap) for metric, gap in block["gap"].items()]
        parts += [Markup(f"<h3>By {esc(column)}</h3>"), table(headers, rows),
                  Markup(f'<p class="muted">Gaps: {esc("; ".join(gaps) or "fewer than two groups")}</p>'),
                  _group_plot(column, groups, style=style)]
    return Markup(f"<h2>Groups</h2>{join(parts)}") if parts else Markup("")


def _prob(value: float | None) -> str:
    return "n/a" if value is None else format_prob(value)


def _caption(record: dict[str, Any]) -> str:
    verdict = "correct" if record["correct"] else f"predicted {record['pred_name']}"
    text = f"{record['path']} · true {record['true_name']} · {verdict} (p {_prob(record['prob'])})"
    if record.get("energy_in_box") is not None:
        text += f" · energy in box {_fmt(record['energy_in_box'])} (area {_fmt(record['box_area'])})"
    if record.get("deletion_auc") is not None:
        text += f" · deletion {_fmt(record['deletion_auc'])} vs random {_fmt(record['deletion_auc_random'])}"
    return text


_WORST_TITLES = {
    "confident_mistakes": f"Confident mistakes (wrong class at p >= {CONFIDENT_PROB:g})",
    "right_for_wrong_reason": "Right for the wrong reason",
    "least_faithful": "Least faithful maps (deletion worse than random)",
}


def _worst(summary: dict[str, Any], records: Sequence[dict[str, Any]], overlays: dict[str, str]) -> Markup:
    by_path = {r["path"]: r for r in records}
    parts: list[Markup] = []
    for kind, paths in summary["worst"].items():
        if not paths:
            continue
        figures = []
        for path in paths:
            record = by_path[path]
            picture = img(overlays[path], f"overlay of {path}") if path in overlays else Markup("")
            figures.append(Markup(f"<figure>{picture}<figcaption>{esc(_caption(record))}</figcaption></figure>"))
        parts += [Markup(f"<h3>{esc(_WORST_TITLES.get(kind, kind))}</h3>"),
                  Markup(f'<div class="grid">{join(figures)}</div>')]
    if not parts:
        return Markup("")
    boxes = "; boxes in green" if summary["localisation"]["images_with_box"] else ""
    note = Markup(f'<p class="muted">Grad-CAM++ of the predicted class{boxes}.</p>')
    return Markup(f"<h2>Worst examples</h2>{note}{join(parts)}")


def _rwr_table(summary: dict[str, Any]) -> Markup:
    rows = summary["right_for_wrong_reason"]
    if not rows:
        return Markup("")
    body = table(["image", "class", "prob", "energy in box", "box area"],
                 [[r["path"], r["true_name"], r["prob"], r["energy_in_box"], r["box_area"]] for r in rows])
    return Markup(f"<h2>Right for the wrong reason ({len(rows)})</h2><details><summary>all {len(rows)} images"
                  f"</summary>{body}</details>")


def _problems(summary: dict[str, Any]) -> Markup:
    parts: list[Markup] = []
    if summary["warnings"]:
        items = join(Markup(f"<li>{esc(w)}</li>") for w in summary["warnings"])
        parts.append(Markup(f"<h3>Warnings</h3><ul>{items}</ul>"))
    if summary["errors"]:
        body = table(["input", "error"], [[e["input"], e["error"]] for e in summary["errors"]])
        parts.append(Markup(f"<h3>Inputs that failed ({len(summary['errors'])})</h3><details><summary>show"
                            f"</summary>{body}</details>"))
    return Markup(f'<h2 class="error">Problems</h2>{join(parts)}') if parts else Markup("")


def render_dashboard(summary: dict[str, Any], records: Sequence[dict[str, Any]], overlays: dict[str, str],
                     style: FigureStyle = FigureStyle()) -> str:
    """The whole dashboard page.

    Args:
        summary: the ``summary.json`` content (see :func:`explain.audit_outputs.write_outputs`).
        records: the per-image records, sorted by path.
        overlays: path -> data URI of the worst examples' overlays.
        style: the plots' resolution and titles, and how the page names the dataset.

    Returns:
        A self-contained HTML document.
    """
    body = join([
        _header(summary, style), _cards(summary), _plots(summary, records, style), _groups(summary, style),
        _worst(summary, records, overlays), _rwr_table(summary), _problems(summary),
        Markup(f"<h2>Definitions</h2><details><summary>what the numbers mean</summary>{_DEFINITIONS}</details>"),
    ])
    return page(f"Audit of {style.name(summary['dataset'])}", body, css=_CSS)


# --------------------------------------------------------------------------------------------------------------
# The detection audit's page (:mod:`explain.audit_detection`)

_DETECTION_DEFINITIONS = Markup("""
<ul>
<li><b>detected</b>: a detection with confidence at or above the score threshold overlaps the object with IoU at
or above the IoU threshold, of the same class when the ground truth gives classes. Detections are matched greedily
in order of confidence, each to the best-overlapping object still free (COCO's rule); the rest are <b>false
positives</b> (duplicates included; detections on COCO crowd regions are ignored).</li>
<li><b>recall</b>: share of the objects detected; <b>precision</b>: share of the counted detections that matched an
object.</li>
<li><b>energy on object</b>: share of the matched detection's map energy inside the object's box (energy-based
pointing game, Wang et al. 2020); <b>box area</b> is what a uniform map scores. <b>Surroundings</b>: the share in
the ring between the box and the box enlarged twice about its centre.</li>
<li><b>pointing game</b>: the map's maximum lies within 15 photo pixels of the box.</li>
<li><b>size</b>: COCO's object sizes by box area in photo pixels: small &lt; 32&sup2;, medium &lt; 96&sup2;,
large.</li>
</ul>
""")

_DETECTION_GROUP_COLUMNS = ("recall", "mean_score", "mean_iou", "mean_energy_in_box")


def _detection_cards(summary: dict[str, Any]) -> Markup:
    o = summary["overall"]
    cards = [_card("recall", o["recall"], f"{o['detected']} of {o['objects']} objects", True),
             _card("precision", o["precision"], f"{o['detections']} detections", True),
             _card("false positives per image", o["false_positives_per_image"],
                   f"{o['false_positives']} in {o['images_with_false_positives']} images"),
             _card("mean IoU of detected objects", o["mean_iou"]),
             _card("mean confidence of detected objects", o["mean_score"])]
    if o["mean_energy_in_box"] is not None:
        cards += [_card("energy on object", o["mean_energy_in_box"], f"box area {_fmt(o['mean_area_share'])}"),
                  _card("energy in surroundings", o["mean_energy_around_box"], "ring out to 2x the box"),
                  _card("pointing game", o["pointing_accuracy"], "hits", True)]
    return Markup(f'<div class="cards">{join(cards)}</div>')


def _histogram(values: Sequence[float], xlabel: str, ylabel: str, alt: str,
               line: tuple[float, str] | None = None, colour: str = _COLOURS["cam"],
               style: FigureStyle = FigureStyle()) -> Markup | None:
    if not values:
        return None
    fig = _figure()
    ax = fig.subplots()
    ax.hist(values, bins=20, range=(0, 1), color=colour)
    if line is not None:
        ax.axvline(line[0], color="k", linestyle="--", label=line[1])
        ax.legend(frameon=False, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _plot(fig, alt, style)


def _detection_plots(objects: Sequence[dict[str, Any]], style: FigureStyle = FigureStyle()) -> Markup:
    found = [r for r in objects if r.get("matched")]
    area = _column(found, "area_share")
    plots = [
        _histogram(_column(found, "score"), "confidence of the matching detection", "objects",
                   "histogram of the matched detections' confidence", colour=_COLOURS["good"], style=style),
        _histogram(_column(found, "iou"), "IoU with the matching detection", "objects",
                   "histogram of the matched detections' IoU", colour=_COLOURS["good"], style=style),
        _histogram(_column(found, "energy_in_box"), "share of the map's energy on the object", "objects",
                   "histogram of the energy on the object",
                   (sum(area) / len(area), "mean box area (uniform map)") if area else None, style=style),
        _histogram(_column(objects, "best_iou", lambda r: r.get("matched") is False),
                   "best IoU of any detection with a missed object", "objects",
                   "histogram of the best IoU of missed objects", colour=_COLOURS["bad"], style=style),
    ]
    return Markup(f'<h2>Distributions</h2><div class="plots">{join(p for p in plots if p is not None)}</div>')


def _detection_groups(summary: dict[str, Any], style: FigureStyle = FigureStyle()) -> Markup:
    parts: list[Markup] = []
    for column, block in summary["groups"].items():
        groups = block["groups"]
        rows = [[name, g["objects"], g["detected"], g["recall"], g["mean_score"], g["mean_iou"],
                 g["mean_energy_in_box"], g["false_positives_per_image"]] for name, g in groups.items()]
        headers = [column, "objects", "detected", "recall", "mean confidence", "mean IoU", "energy on object",
                   "false positives / image"]
        gaps = [describe_gap(metric, gap) for metric, gap in block["gap"].items()]
        parts += [Markup(f"<h3>By {esc(column)}</h3>"), table(headers, rows),
                  Markup(f'<p class="muted">Gaps: {esc("; ".join(gaps) or "fewer than two groups")}</p>'),
                  _group_plot(column, groups, _DETECTION_GROUP_COLUMNS, style=style)]
    return Markup(f"<h2>Groups</h2>{join(parts)}") if parts else Markup("")


def _object_caption(record: dict[str, Any]) -> str:
    name = record["class_name"] or "object"
    text = f"{record['path']} · object {record['object_id']} · {name} ({record['size']})"
    if record.get("matched"):
        text += (f" · detected as #{record['det_rank']} {record['det_name']} (confidence {_fmt(record['score'])}, "
                 f"IoU {_fmt(record['iou'])}) · energy on object {_fmt(record['energy_in_box'])} "
                 f"(box area {_fmt(record['area_share'])})")
    else:
        text += f" · missed (best IoU {_fmt(record['best_iou'])})"
    return text


_DETECTION_WORST = {
    "missed": ("Missed objects (largest first)",
               "the photo with the counted detections (solid, class colours); the object's box dashed white"),
    "off_object": ("Detected, but most of the map's energy lies off the object",
                   "the detection's map; the detection framed in white and tagged; the object's box dashed white"),
}


def _detection_worst(summary: dict[str, Any], objects: Sequence[dict[str, Any]], pictures: dict[str, str]) -> Markup:
    by_key = {f"{r['path']}#{r['object_id']}": r for r in objects}
    parts: list[Markup] = []
    for kind, chosen in summary["worst"].items():
        if not chosen:
            continue
        title, note = _DETECTION_WORST.get(kind, (kind, ""))
        figures = []
        for entry in chosen:
            key = f"{entry['path']}#{entry['object_id']}"
            picture = img(pictures[key], f"{kind}: {key}") if key in pictures else Markup("")
            figures.append(Markup(f"<figure>{picture}<figcaption>{esc(_object_caption(by_key[key]))}</figcaption>"
                                  "</figure>"))
        parts += [Markup(f"<h3>{esc(title)}</h3><p class=\"muted\">{esc(note)}</p>"),
                  Markup(f'<div class="grid">{join(figures)}</div>')]
    rows = summary.get("false_positives") or []
    if rows:
        body = table(["image", "rank", "class", "confidence", "box"],
                     [[r["path"], r["rank"], r["name"], r["score"], ", ".join(f"{v:.0f}" for v in r["box"])]
                      for r in rows])
        parts.append(Markup(f"<h3>Most confident false positives</h3>{body}"))
    return Markup(f"<h2>Worst examples</h2>{join(parts)}") if parts else Markup("")


def render_detection_dashboard(summary: dict[str, Any], objects: Sequence[dict[str, Any]],
                               pictures: dict[str, str], style: FigureStyle = FigureStyle()) -> str:
    """The detection audit's page: cards, distributions, groups with their gaps, worst examples, problems.

    Args:
        summary: the ``summary.json`` content (see :func:`explain.audit_detection_outputs.write_detection_outputs`).
        objects: the object records, sorted by path.
        pictures: ``"path#object_id"`` -> data URI of the worst examples' pictures.
        style: the plots' resolution and titles, and how the page names the dataset.

    Returns:
        A self-contained HTML document.
    """
    counts = summary["counts"]
    where = f"{summary['method']} at {summary['layer']}" if summary.get("layer") else summary["method"]
    options = summary["options"]
    meta = (f"model {summary['model']} · {where} · {counts['images']} photos, {counts['objects']} objects audited · "
            f"IoU >= {options['iou']:g}, confidence >= {options['score_threshold']:g} · {counts['errors']} "
            "inputs failed")
    body = join([
        Markup(f"<h1>Detection audit of {esc(style.name(summary['dataset']))}</h1>"),
        Markup(f'<p class="meta">{esc(meta)}</p>'),
        _detection_cards(summary), _detection_plots(objects, style), _detection_groups(summary, style),
        _detection_worst(summary, objects, pictures), _problems(summary),
        Markup(f"<h2>Definitions</h2><details><summary>what the numbers mean</summary>{_DETECTION_DEFINITIONS}"
               "</details>"),
    ])
    return page(f"Detection audit of {style.name(summary['dataset'])}", body, css=_CSS)
