"""Parsing what to explain: classes (index, name, ``topK``) and neurons (``LAYER:C`` or ``LAYER:C:Y:X``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from explain.errors import TargetError, shortlist, suggest


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


def _listed(indices: Sequence[int], class_names: Sequence[str], most: int = 8) -> str:
    """``282 (tiger cat), 283 (Persian cat) and 3 more``."""
    return shortlist((f"{i} ({class_names[i]})" for i in indices), most)


def _matches(text: str, class_names: Sequence[str]) -> tuple[str, list[int]]:
    """The classes a name matches and how: ``"exact"``, else ``"word"`` (a whole word of the class name), else
    ``"prefix"`` (the start of the class name), all case-insensitive."""
    lowered = text.lower()
    exact = [i for i, name in enumerate(class_names) if name.lower() == lowered]
    if len(exact) > 1:  # ImageNet has "cardigan" (474) and "Cardigan" (264, the corgi): the exact spelling decides
        exact = [i for i in exact if class_names[i] == text] or exact
    if exact:
        return "exact", exact
    word = re.compile(rf"(?<!\w){re.escape(lowered)}(?!\w)")
    words = [i for i, name in enumerate(class_names) if word.search(name.lower())]
    if words:
        return "word", words
    return "prefix", [i for i, name in enumerate(class_names) if name.lower().startswith(lowered)]


def resolve_class(spec: str | int, class_names: Sequence[str]) -> int:
    """Turn a class index or name into an index.

    Names match case-insensitively: an exact name first; else a whole word of exactly one class name
    (``"persian"`` -> "Persian cat"); else a unique prefix (``"catam"`` -> "catamaran"), which is then no whole word of
    any class. A word of several class names is ambiguous, even when it also starts another name: ``"cat"`` is a word of
    "tiger cat", "Persian cat" ... and must not silently mean "catamaran". When two names differ only in case
    (ImageNet's "cardigan" and "Cardigan"), the one spelled exactly as given wins; other spellings are ambiguous.

    Raises:
        TargetError: index out of range, unknown name, or a name/word/prefix that matches several classes (the
            error lists them).
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
    kind, matches = _matches(text, class_names)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise TargetError(f"unknown class name {text!r}{suggest(text, class_names)}")
    if kind != "word":
        raise TargetError(f"class name {text!r} is ambiguous: it matches {_listed(matches, class_names)}; "
                          "use an index")
    lowered = text.lower()
    starts = [i for i, name in enumerate(class_names) if name.lower().startswith(lowered) and i not in matches]
    also = f"; {_listed(starts, class_names, 4)} only start{'s' if len(starts) == 1 else ''} with it" if starts else ""
    raise TargetError(f"class name {text!r} is ambiguous: it is a word of {_listed(matches, class_names)}{also}; "
                      "use an index or a full name")


def match_notes(specs: Sequence[str], class_names: Sequence[str]) -> list[str]:
    """What each class *name* in ``specs`` that is not an exact name was taken as (the only class holding it as a
    word, or the only class starting with it): a note for the user, since a partial name can surprise. Indices,
    ``topK``, exact names and specs that do not resolve (their error comes later) give no note.
    """
    notes = []
    for spec in dict.fromkeys(str(s).strip() for s in specs):
        if not spec or re.fullmatch(r"-?\d+", spec) or _TOPK.match(spec):
            continue
        kind, matches = _matches(spec, class_names)
        if kind == "exact" or len(matches) != 1:
            continue
        how = "with that word" if kind == "word" else "starting with it"
        notes.append(f"--target {spec!r} is taken as {matches[0]} ({class_names[matches[0]]}), the only class name "
                     f"{how}")
    return notes


def parse_target(spec: str | int, class_names: Sequence[str]) -> ClassTarget | TopK:
    """Parse a ``--target`` value: a class index, a class name (see :func:`resolve_class`), or ``topK``."""
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
