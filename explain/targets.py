"""Parsing what to explain: classes (index, name, ``topK``) and neurons (``LAYER:C`` or ``LAYER:C:Y:X``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from explain.errors import TargetError, suggest


@dataclass(frozen=True)
class ClassTarget:
    """One output class, by index."""

    index: int


@dataclass(frozen=True)
class TopK:
    """The ``k`` most probable classes of each image."""

    k: int


@dataclass(frozen=True)
class NeuronTarget:
    """A channel of an intermediate layer: its spatial mean, or one unit when ``y`` and ``x`` are given."""

    layer: str
    channel: int
    y: int | None = None
    x: int | None = None

    @property
    def is_unit(self) -> bool:
        return self.y is not None

    def __str__(self) -> str:
        base = f"{self.layer}:{self.channel}"
        return base if self.y is None else f"{base}:{self.y}:{self.x}"


_TOPK = re.compile(r"^top(\d+)$", re.IGNORECASE)


def resolve_class(spec: str | int, class_names: Sequence[str]) -> int:
    """Turn a class index or name into an index.

    Names match case-insensitively: an exact name first, otherwise a unique prefix. When two names differ only in
    case (ImageNet's "cardigan" and "Cardigan"), the one spelled exactly as given wins; other spellings are ambiguous.

    Raises:
        TargetError: index out of range, unknown name, or a name/prefix that matches several classes.
    """
    n = len(class_names)
    text = str(spec).strip()
    if re.fullmatch(r"-?\d+", text):
        index = int(text)
        if not 0 <= index < n:
            raise TargetError(f"class index {index} is out of range: the model has {n} classes (0..{n - 1})")
        return index
    if not text:
        raise TargetError("empty class name")
    lowered = text.lower()
    exact = [i for i, name in enumerate(class_names) if name.lower() == lowered]
    if len(exact) > 1:  # ImageNet has "cardigan" (474) and "Cardigan" (264, the corgi): the exact spelling decides
        exact = [i for i in exact if class_names[i] == text] or exact
    matches = exact or [i for i, name in enumerate(class_names) if name.lower().startswith(lowered)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise TargetError(f"unknown class name {text!r}{suggest(text, class_names)}")
    listed = ", ".join(f"{i} ({class_names[i]})" for i in matches[:8])
    more = f" and {len(matches) - 8} more" if len(matches) > 8 else ""
    raise TargetError(f"class name {text!r} is ambiguous: it matches {listed}{more}; use an index")


def prefix_notes(specs: Sequence[str], class_names: Sequence[str]) -> list[str]:
    """What each class *name* in ``specs`` that is not an exact name matched by its unique prefix, and which other
    classes hold it as a whole word (``"cat"`` is the prefix of "catamaran"; "tiger cat" and "Persian cat" contain
    the word): a note for the user, since a prefix match can surprise. Indices, ``topK``, exact names and specs that
    do not resolve (their error comes later) give no note.
    """
    notes = []
    for spec in dict.fromkeys(str(s).strip() for s in specs):
        lowered = spec.lower()
        if not spec or re.fullmatch(r"-?\d+", spec) or _TOPK.match(spec):
            continue
        if any(name.lower() == lowered for name in class_names):
            continue
        try:
            index = resolve_class(spec, class_names)
        except TargetError:
            continue
        note = f"--target {spec!r} is the unique prefix of {index} ({class_names[index]})"
        word = re.compile(rf"\b{re.escape(lowered)}\b")
        others = [f"{i} ({name})" for i, name in enumerate(class_names) if i != index and word.search(name.lower())]
        if others:
            more = f" and {len(others) - 4} more" if len(others) > 4 else ""
            note += f"; classes with the word {spec!r}: {', '.join(others[:4])}{more}"
        notes.append(note)
    return notes


def parse_target(spec: str | int, class_names: Sequence[str]) -> ClassTarget | TopK:
    """Parse a ``--target`` value: a class index, a class name (exact or unique prefix), or ``topK``."""
    text = str(spec).strip()
    match = _TOPK.match(text)
    if match:
        k = int(match.group(1))
        if not 1 <= k <= len(class_names):
            raise TargetError(f"{text!r}: k must be between 1 and the number of classes ({len(class_names)})")
        return TopK(k)
    return ClassTarget(resolve_class(text, class_names))


def parse_neuron(spec: str) -> NeuronTarget:
    """Parse ``LAYER:CHANNEL`` or ``LAYER:CHANNEL:Y:X`` (layer names are dotted and contain no colon)."""
    parts = spec.strip().split(":")
    if len(parts) not in (2, 4) or not parts[0] or not all(re.fullmatch(r"\d+", p) for p in parts[1:]):
        raise TargetError(f"bad neuron {spec!r}: expected LAYER:CHANNEL or LAYER:CHANNEL:Y:X, e.g. features.4:12:3:5")
    numbers = [int(p) for p in parts[1:]]
    if len(numbers) == 1:
        return NeuronTarget(parts[0], numbers[0])
    return NeuronTarget(parts[0], numbers[0], numbers[1], numbers[2])
