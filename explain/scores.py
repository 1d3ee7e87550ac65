"""Turning requested targets into per-image targets and differentiable scores (shared by every gradient engine).

A request applies to every image of a batch: ``ClassTarget(i)``, ``TopK(k)`` (each image's ``k`` best classes) or a
``NeuronTarget`` (a channel's spatial mean, one unit, or, with ``unit="max"``, each image's most active unit).
:func:`expand_targets` resolves a request on a forward pass into :class:`Rank` objects, one explicit target per
image, and :func:`rank_scores` gives their scalar scores from that (or a repeated) forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from explain.errors import TargetError, UsageError
from explain.targets import ClassTarget, NeuronTarget, TopK

Target = ClassTarget | TopK | NeuronTarget


@dataclass(frozen=True)
class ClassScore:
    """One class of one image: index, name, softmax probability and pre-softmax logit."""

    index: int
    name: str
    prob: float
    logit: float

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "prob": round(self.prob, 6), "logit": round(self.logit, 4)}


def top_classes(logits: torch.Tensor, class_names: Sequence[str], k: int) -> list[list[ClassScore]]:
    """The ``k`` most probable classes per row of ``logits`` (``(N, C)``), best first."""
    k = min(k, logits.shape[1])
    probs = torch.softmax(logits.float(), dim=1)
    top_p, top_i = probs.topk(k, dim=1)
    top_l = logits.float().gather(1, top_i)
    rows = []
    for p_row, i_row, l_row in zip(top_p.tolist(), top_i.tolist(), top_l.tolist()):
        rows.append([ClassScore(i, class_names[i], p, lg) for p, i, lg in zip(p_row, i_row, l_row)])
    return rows


def check_targets(targets: Sequence[Target]) -> list[Target]:
    """The targets as a list without repeats (first occurrence kept, so ``--target 282 --target 282`` explains
    class 282 once); an empty list or an object that is not a target is a :class:`UsageError`."""
    targets = list(targets)
    if not targets:
        raise UsageError("no target given: name a class, topK or a neuron")
    for target in targets:
        if not isinstance(target, ClassTarget | TopK | NeuronTarget):
            raise UsageError(f"unsupported target {target!r}: use ClassTarget, TopK or NeuronTarget")
    return list(dict.fromkeys(targets))


def first_per_target(maps: Sequence[Any], image_index: int) -> list[Any]:
    """The maps of one image (objects with ``image_index`` and ``target``) in request order, each target once:
    two requests resolving to the same class (``282`` and ``top1`` when 282 is the top class) give one map."""
    seen: set[Any] = set()
    chosen = []
    for m in maps:
        if m.image_index == image_index and m.target not in seen:
            seen.add(m.target)
            chosen.append(m)
    return chosen


@dataclass
class Rank:
    """One requested target resolved per image: ``targets[i]`` is an explicit class or neuron for image ``i``."""

    targets: list[ClassTarget | NeuronTarget]
    rank: int | None
    unit_choice: str | None


def _channel_map(target: NeuronTarget, out: object) -> torch.Tensor:
    """The layer output, checked to have the target's channel (and position, for a unit)."""
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TargetError(f"neuron {target}: layer {target.layer!r} gives {got}, not (N, C, ...) channels")
    channels = out.shape[1]
    if not 0 <= target.channel < channels:
        raise TargetError(
            f"neuron {target}: channel {target.channel} is out of range: layer {target.layer!r} has "
            f"{channels} channels (0..{channels - 1})"
        )
    if target.is_unit:
        if out.dim() != 4:
            raise TargetError(
                f"neuron {target}: a unit (Y, X) needs a layer with a spatial (N, C, H, W) output; "
                f"{target.layer!r} gives {tuple(out.shape)}; use {target.layer}:{target.channel} for the channel"
            )
        height, width = out.shape[2:]
        if not (0 <= int(target.y) < height and 0 <= int(target.x) < width):  # type: ignore[arg-type]
            raise TargetError(
                f"neuron {target}: position (y={target.y}, x={target.x}) is outside layer {target.layer!r}, whose "
                f"maps are {height} x {width} (y 0..{height - 1}, x 0..{width - 1})"
            )
    return out


def expand_targets(
    targets: Sequence[Target], output: object, outputs: dict[str, Any], n: int, unit: str
) -> list[Rank]:
    """Resolve requested targets on a (clean) forward pass into explicit per-image targets.

    ``TopK(k)`` becomes ``k`` ranks of per-image classes; ``LAYER:C`` with ``unit="max"`` becomes the unit with the
    highest activation in each image (the first in row-major order on ties).
    """
    ranks: list[Rank] = []
    for target in targets:
        if isinstance(target, NeuronTarget):
            out = _channel_map(target, outputs[target.layer])
            if target.is_unit:
                ranks.append(Rank([target] * n, None, "given"))
            elif unit == "max" and out.dim() == 4:
                flat = out[:, target.channel].detach().flatten(1).argmax(1).tolist()
                width = out.shape[3]
                ranks.append(Rank([NeuronTarget(target.layer, target.channel, f // width, f % width) for f in flat],
                                   None, "max"))
            elif unit == "max":
                raise TargetError(
                    f"neuron {target}: --unit max needs a layer with a spatial (N, C, H, W) output; "
                    f"{target.layer!r} gives {tuple(out.shape)}"
                )
            else:
                ranks.append(Rank([target] * n, None, "mean"))
            continue
        if not (isinstance(output, torch.Tensor) and output.dim() == 2):
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise TargetError(
                f"class targets need a model whose output is (N, num_classes) scores, got {got}; "
                "explain a neuron instead"
            )
        num_classes = output.shape[1]
        if isinstance(target, TopK):
            if not 1 <= target.k <= num_classes:
                raise TargetError(f"top{target.k}: k must be between 1 and the number of classes ({num_classes})")
            order = torch.topk(output.detach(), target.k, dim=1).indices.tolist()  # (N, k), best first
            for j in range(target.k):
                ranks.append(Rank([ClassTarget(int(row[j])) for row in order], j, None))
        else:
            c = int(target.index)
            if not 0 <= c < num_classes:
                raise TargetError(
                    f"class index {c} is out of range: the model has {num_classes} classes (0..{num_classes - 1})"
                )
            ranks.append(Rank([ClassTarget(c)] * n, None, None))
    return ranks


def rank_scores(rank: Rank, output: object, outputs: dict[str, Any], rows: Sequence[int]) -> torch.Tensor:
    """The ``(len(rows),)`` scores of ``rank`` on a forward pass whose row ``j`` is a copy of image ``rows[j]``."""
    first = rank.targets[rows[0]]
    if isinstance(first, ClassTarget):
        assert isinstance(output, torch.Tensor)
        index = torch.tensor([rank.targets[i].index for i in rows], device=output.device)  # type: ignore[union-attr]
        return output.gather(1, index[:, None]).squeeze(1)
    out = outputs[first.layer]
    if first.is_unit:
        picked = [rank.targets[i] for i in rows]
        ys = torch.tensor([t.y for t in picked], device=out.device)  # type: ignore[union-attr]
        xs = torch.tensor([t.x for t in picked], device=out.device)  # type: ignore[union-attr]
        return out[torch.arange(len(rows), device=out.device), first.channel, ys, xs]
    return out[:, first.channel].flatten(1).mean(1) if out.dim() > 2 else out[:, first.channel]
