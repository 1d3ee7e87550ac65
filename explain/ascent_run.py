"""Activation maximisation as a run: objectives from command-line specs, images, figures, raw arrays and a manifest.

Output folder (every path is listed in ``manifest.json``, written last)::

    images/00_flamingo_130.png        one image per objective, at the optimised size
    images/00_flamingo_130.npy        the same pixels, float32 (H, W, 3) in [0, 1]
    images/00_..._snapshots.npy       with --snapshots N: float32 (N, H, W, 3), the evolution
    grid.png                          every image, labelled with its objective and final value (and p for classes)
    snapshots.png                     with --snapshots N: one row per objective, one column per snapshot
    history.npy                       float32 (steps, objectives): the objective at every step (NaN once stopped)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from explain.errors import TargetError, UsageError
from explain.figures import FigureStyle, format_prob
from explain.manifest import Manifest, write_bytes, write_npy

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from explain.ascent import AscentConfig, AscentResult, Objective, StepInfo
    from explain.backbones.base import Backbone

SNAPSHOT_DPI_SCALE = 2 / 3
"""The snapshot strip's resolution relative to ``--dpi`` (100 dpi by default): many noisy cells, a smaller file."""


@dataclass
class AscentOptions:
    """What to optimise (command-line specs) and how.

    Attributes:
        targets: ``--target`` values: class index or name; one image each.
        logprob: class targets maximise the log-probability instead of the pre-softmax logit.
        channels: ``--channel`` values ``LAYER:C`` or ``LAYER:A-B``; one image per channel.
        neurons: ``--neuron`` values ``LAYER:C`` (the centre unit) or ``LAYER:C:Y:X``; one image each.
        objectives: ``--objective`` expressions (see :func:`explain.ascent.parse_objective`); one image each.
        config: the optimisation settings; ``config.size`` ``None`` means the model's input size.
        fmt: figure format (png, svg, pdf).
        top_k: how many predicted classes each manifest item lists.
        style: resolution and titles of the figures (:class:`explain.figures.FigureStyle`); the grid and the strip
            label each image with its objective, and have no title of their own.
    """

    targets: list[str] = field(default_factory=list)
    logprob: bool = False
    channels: list[str] = field(default_factory=list)
    neurons: list[str] = field(default_factory=list)
    objectives: list[str] = field(default_factory=list)
    config: Any = None
    fmt: str = "png"
    top_k: int = 5
    style: FigureStyle = FigureStyle()


def build_objectives(backbone: Backbone, opts: AscentOptions) -> list[Objective]:
    """One objective per image, in the order: targets, channels, neurons, expressions.

    Raises:
        UsageError, TargetError, LayerError: a bad spec, an unknown layer (with suggestions), nothing to optimise.
    """
    from explain.ascent import OUTPUT, ClassLogit, ClassLogProb, parse_channels, parse_neuron_spec, parse_objective
    from explain.modules import resolve_layer
    from explain.targets import ClassTarget, parse_target

    names = backbone.class_names
    objectives: list[Objective] = []
    for spec in opts.targets:
        target = parse_target(spec, names)
        if not isinstance(target, ClassTarget):
            raise TargetError(f"--target {spec!r}: ascent needs a class (index or name), not {spec!r}")
        cls = ClassLogProb if opts.logprob else ClassLogit
        objectives.append(cls(target.index, names[target.index]))
    for spec in opts.channels:
        objectives.extend(parse_channels(spec))
    for spec in opts.neurons:
        objectives.append(parse_neuron_spec(spec))
    for spec in opts.objectives:
        objectives.append(parse_objective(spec, names))
    if not objectives:
        raise UsageError("nothing to optimise: give --target CLASS, --channel LAYER:C (or LAYER:A-B), "
                         "--neuron LAYER:C[:Y:X] or --objective EXPR")
    for objective in objectives:
        for layer in sorted(objective.layers - {OUTPUT}):
            resolve_layer(backbone.model, layer)
    return objectives


def resolve_ascent_options(backbone: Backbone, opts: AscentOptions) -> tuple[list[Objective], AscentConfig]:
    """Check every option that can be checked without running the model: ``(objectives, resolved config)``."""
    from explain.ascent import AscentConfig
    from explain.figures import check_format

    config = opts.config or AscentConfig()
    if config.size is None:
        h, w = backbone.input_size
        config = replace(config, size=max(h, w))
    config = config.resolved()
    check_format(opts.fmt)
    return build_objectives(backbone, opts), config


def run_ascent(
    backbone: Backbone,
    opts: AscentOptions,
    out_dir: str | Path,
    seed: int = 0,
    argv: Sequence[str] = (),
    on_step: Callable[[StepInfo], None] | None = None,
) -> tuple[Manifest, AscentResult]:
    """Optimise one image per objective and write images, figures, arrays into ``out_dir``.

    Returns:
        The run's :class:`Manifest` (not yet saved: the caller saves it last) and the raw result.
    """
    from explain.ascent import ascend

    objectives, config = resolve_ascent_options(backbone, opts)
    fmt = opts.fmt.lower()
    result = ascend(backbone.model, objectives, config, normalize=backbone.preprocess.normalize, seed=seed,
                    on_step=on_step)
    out = Path(out_dir)
    labels = [caption(backbone, result, i) for i in range(len(objectives))]
    manifest = Manifest(command="ascent", argv=argv, model=backbone.manifest_record(),
                        extra={"seed": seed, "config": config.as_dict(), "outputs": {}})
    probs = result.probabilities
    for i, objective in enumerate(result.objectives):
        stem = f"images/{i:02d}_{_file_safe(_slug(objective))}"
        outputs: dict[str, str] = {"image": f"{stem}.png", "array": f"{stem}.npy"}
        write_bytes(out / outputs["image"], png_bytes(result.images[i]))
        write_npy(out / outputs["array"], result.images[i])
        if result.snapshots is not None:
            outputs["snapshots"] = f"{stem}_snapshots.npy"
            write_npy(out / outputs["snapshots"], result.snapshots[i])
        item: dict[str, Any] = {
            "index": i,
            "objective": objective.as_dict(),
            "seed": result.seeds[i],
            "value": round(float(result.values[i]), 6),
            "initial_value": round(float(result.initial_values[i]), 6),
            "steps": int(result.steps_run[i]),
            "stopped_early": bool(result.stopped_early[i]),
            "label": labels[i].replace("\n", " · "),
        }
        index = getattr(objective, "index", None)
        if index is not None and result.logits is not None:
            item["target"] = {"index": index, "name": backbone.class_names[index],
                              "score": round(float(result.logits[i, index]), 4),
                              "prob": round(float(probs[i, index]), 6)}  # type: ignore[index]
        if result.logits is not None:
            item["prediction"] = _top(probs[i], backbone.class_names, opts.top_k)  # type: ignore[index]
        item["outputs"] = outputs
        manifest.items.append(item)
    run_outputs: dict[str, str] = {"grid": f"grid.{fmt}", "history": "history.npy"}
    write_npy(out / run_outputs["history"], result.history)
    opts.style.save(out / run_outputs["grid"], grid_figure(result.images, labels))
    if result.snapshots is not None:
        run_outputs["snapshots"] = f"snapshots.{fmt}"
        strip = snapshot_figure(result.snapshots, result.snapshot_steps, [lab.split("\n")[0] for lab in labels])
        opts.style.save(out / run_outputs["snapshots"], strip, scale=SNAPSHOT_DPI_SCALE)
    manifest.extra["outputs"] = run_outputs
    return manifest, result


def _file_safe(text: str) -> str:
    """Letters, digits, ``_`` and ``-`` only (``_blocks.8_c3`` -> ``_blocks-8_c3``); never empty."""
    import re

    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:100] or "objective"


def _slug(objective: Objective) -> str:
    data = objective.as_dict()
    kind = data["kind"]
    if kind in ("class_logit", "class_logprob"):
        prefix = "logp_" if kind == "class_logprob" else ""
        return f"{prefix}{data['name'] or 'class'}_{data['index']}"
    if kind == "channel":
        return f"{data['layer']}_c{data['channel']}"
    if kind == "neuron":
        return f"{data['layer']}_c{data['channel']}_y{data['y']}_x{data['x']}"
    return "sum_" + "_".join(_slug(t) for _, t in objective.terms())[:80]


def _top(probs: np.ndarray, names: Sequence[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probs)[:k]
    return [{"index": int(j), "name": names[j], "prob": round(float(probs[j]), 6)} for j in order]


def caption(backbone: Backbone, result: AscentResult, i: int) -> str:
    """Two lines: what was maximised, and the final value (with the probability for a class objective)."""
    objective = result.objectives[i]
    kind = objective.as_dict()["kind"]
    value = float(result.values[i])
    probs = result.probabilities
    if kind in ("class_logit", "class_logprob"):
        index = objective.index  # type: ignore[attr-defined]
        name = backbone.class_names[index]
        what = "log p" if kind == "class_logprob" else "logit"
        p = f" · p {format_prob(float(probs[i, index]))}" if probs is not None else ""
        return f"{name} ({index})\n{what} {value:.2f}{p}"
    if kind == "channel":
        return f"{objective.layer} ch {objective.channel}\nmean {value:.3g}"  # type: ignore[attr-defined]
    if kind == "neuron":
        o = objective
        return f"{o.layer} ch {o.channel} @ {o.y},{o.x}\nvalue {value:.3g}"  # type: ignore[attr-defined]
    return f"{objective.describe()}\nvalue {value:.3g}"


def png_bytes(image: np.ndarray) -> bytes:
    """An ``(H, W, 3)`` float image in [0, 1] as PNG bytes."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def grid_figure(images: np.ndarray, labels: Sequence[str], cols: int | None = None, cell: float = 2.2) -> Figure:
    """The images in a grid (at most 8 per row), each titled with its two-line label."""
    from matplotlib.figure import Figure

    n = len(images)
    cols = cols or min(n, 8 if n > 8 else n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(cols * cell, rows * (cell + 0.45)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for i, (image, label) in enumerate(zip(images, labels)):
        axes[i].imshow(to_uint8(image), interpolation="lanczos")
        axes[i].set_title(label, fontsize=8)
    return fig


def snapshot_figure(snapshots: np.ndarray, steps: Sequence[int], labels: Sequence[str], cell: float = 1.6) -> Figure:
    """One row per objective, one column per snapshot (titled with its step)."""
    from matplotlib.figure import Figure

    n, s = snapshots.shape[:2]
    fig = Figure(figsize=(s * cell + 1.6, n * cell + 0.3), layout="constrained")
    axes = fig.subplots(n, s, squeeze=False)
    for r in range(n):
        for c in range(s):
            ax = axes[r, c]
            ax.imshow(to_uint8(snapshots[r, c]), interpolation="lanczos")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r == 0:
                ax.set_title(f"step {steps[c]}", fontsize=8)
            if c == 0:
                ax.set_ylabel(labels[r], fontsize=7)
    return fig
