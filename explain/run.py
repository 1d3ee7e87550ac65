"""The loop every image command shares: batches of decoded images in, manifest items and per-file errors out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from explain.manifest import safe_stem

if TYPE_CHECKING:
    from explain.backbones.base import Backbone
    from explain.data import Batch
    from explain.images import ImageFile
    from explain.manifest import Manifest


@dataclass
class RunSettings:
    """How a run is executed (not what it computes).

    Attributes:
        batch_size: images per forward pass.
        device: ``torch.device`` (or its name) the model runs on.
        workers: DataLoader worker processes decoding images in parallel with the model.
        argv: the command line, recorded in the manifest.
        on_batch: called with the number of inputs each finished batch accounted for (progress bars).
        input_errors: inputs that failed before any decoding (e.g. missing paths), for engines that show them in
            their own outputs (the report's index page); the CLI adds them to every manifest.
    """

    batch_size: int = 8
    device: Any = "cpu"
    workers: int = 0
    argv: Sequence[str] = ()
    on_batch: Callable[[int], None] | None = None
    input_errors: Sequence[Any] = ()


def output_stems(displays: Sequence[str]) -> list[str]:
    """Unique, readable output folder names: the inputs' paths without their common folder, made file-safe.

    Inputs whose names would be the same keep their extension (``cat.gif`` -> ``cat_gif`` beside ``cat_png``).
    Names are compared ignoring case (``Cat`` and ``cat`` are one folder on macOS and Windows); a name that is still
    taken, by an earlier input or by the planned name of any other input (``a.jpg``, ``a.png`` and ``a_2.jpg``),
    gets the first free ``_2``, ``_3`` ... so no two inputs ever share an output folder.
    """
    parts = [PurePosixPath(d).parts for d in displays]
    common = 0
    if parts:
        shortest = min(len(p) for p in parts)
        while common < shortest - 1 and len({p[common] for p in parts}) == 1:
            common += 1
    relative = ["/".join(p[common:]) for p in parts]
    plain = [safe_stem(r) for r in relative]
    counts = Counter(stem.casefold() for stem in plain)
    wanted = [safe_stem(r, keep_extension=True) if counts[stem.casefold()] > 1 else stem
              for r, stem in zip(relative, plain)]
    planned = {stem.casefold() for stem in wanted}
    taken: set[str] = set()
    stems = []
    for stem in wanted:
        name, n = stem, 1
        while name.casefold() in taken or (name != stem and name.casefold() in planned):
            n += 1
            name = f"{stem}_{n}"
        taken.add(name.casefold())
        stems.append(name)
    return stems


def stem_map(files: Sequence[ImageFile]) -> dict[str, str]:
    """``display -> output folder name`` for every input of a run."""
    displays = [f.display for f in files]
    return dict(zip(displays, output_stems(displays)))


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a run; ``manifest`` holds the items of the inputs finished until then (their files
    are written), so that the caller can keep them."""

    def __init__(self, manifest: Manifest) -> None:
        super().__init__()
        self.manifest = manifest


@contextmanager
def keep_finished_on_interrupt(manifest: Manifest) -> Iterator[Manifest]:
    """Turn an interrupt of the block into :class:`RunInterrupted` carrying ``manifest`` (the finished items)."""
    try:
        yield manifest
    except RunInterrupted:
        raise
    except KeyboardInterrupt as exc:
        raise RunInterrupted(manifest) from exc


def keep_finished(manifest: Manifest, out: str | Path | None, total: int) -> int:
    """Make an interrupted run's ``manifest`` say what it is: only items whose output files all exist are kept (an
    image that was being written, a PDF that was never closed), and ``incomplete`` records how many of the
    ``total`` inputs were finished, with a warning. Returns that number (inputs with at least one item)."""
    if out is not None:
        root = Path(out)
        manifest.items[:] = [item for item in manifest.items
                             if all((root / path).is_file() for path in item.get("outputs", {}).values()
                                    if isinstance(path, str))]
    finished = len({item["input"] for item in manifest.items})
    manifest.extra["incomplete"] = {"reason": "interrupted", "finished_inputs": finished, "inputs": total}
    manifest.warnings.append(f"interrupted: {finished} of {total} inputs were finished; this manifest lists only "
                             "those")
    return finished


def for_each_batch(
    backbone: Backbone,
    files: Sequence[ImageFile],
    manifest: Manifest,
    settings: RunSettings,
    handle: Callable[[Batch], Iterable[dict[str, Any]]],
) -> Manifest:
    """Decode ``files`` in batches, record bad files as errors, and add what ``handle`` returns as items.

    Args:
        backbone: supplies the preprocessing (its model is moved to ``settings.device``).
        files: the inputs, in order.
        manifest: receives items and errors.
        settings: batch size, device, workers, progress callback.
        handle: computes and writes the outputs of one batch of good images, returning their manifest items.

    Returns:
        ``manifest``, filled.

    Raises:
        RunInterrupted: Ctrl-C; its manifest holds the items of the batches that were finished.
    """
    from explain.data import iter_batches

    backbone.model.to(settings.device)
    batches = iter_batches(files, backbone.preprocess, batch_size=settings.batch_size, workers=settings.workers)
    with keep_finished_on_interrupt(manifest):
        for batch in batches:
            for err in batch.errors:
                manifest.add_error(err.path, err.reason)
            if batch.tensor is not None:
                manifest.items.extend(handle(batch))
            if settings.on_batch is not None:
                settings.on_batch(batch.size)
    return manifest


def layer_slug(layer: str) -> str:
    """``_blocks.5`` -> ``_blocks-5``: a file-name-safe layer name (dots are not file extensions here)."""
    import re

    return re.sub(r"[^A-Za-z0-9_-]+", "-", layer).strip("-")[:80] or "layer"


def target_slug(target: Any) -> str:
    """A file-name part for a class target (``282``) or a neuron (``_blocks-5_c3_y4_x7``)."""
    from explain.targets import ClassTarget

    if isinstance(target, ClassTarget):
        return str(target.index)
    slug = f"{layer_slug(target.layer)}_c{target.channel}"
    return slug if target.y is None else f"{slug}_y{target.y}_x{target.x}"


def predictions_of(logits: Any, class_names: Sequence[str], k: int) -> list[list[dict[str, Any]]] | None:
    """The top-``k`` classes of each row of ``logits`` as manifest records (``None`` without logits)."""
    from explain.scores import top_classes  # imports torch

    if logits is None:
        return None
    return [[c.as_dict() for c in row] for row in top_classes(logits, class_names, k)]


def class_target_record(
    index: int, score: float, rank: int | None, class_names: Sequence[str], probs: Any, image_index: int
) -> tuple[dict[str, Any], str]:
    """The manifest ``target`` of an explained class and the matching figure-title text.

    Args:
        index: the class index.
        score: the explained pre-softmax score.
        rank: its 0-based rank when it came from ``topK``, else ``None``.
        class_names: the backbone's class names.
        probs: ``(N, C)`` softmax probabilities of the batch, or ``None``.
        image_index: the image's row in ``probs``.
    """
    from explain.figures import format_prob

    name = class_names[index]
    prob = float(probs[image_index, index]) if probs is not None else None
    record: dict[str, Any] = {"index": index, "name": name, "score": round(score, 4)}
    text = f"{name} ({index}) · score {score:.2f}"
    if prob is not None:
        record["prob"] = round(prob, 6)
        text += f" · p {format_prob(prob)}"
    if rank is not None:
        record["rank"] = rank + 1
    return record, text


def image_record(sample: Any, prediction: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The per-input part of a manifest item: input, its hash, crop geometry and the model's prediction."""
    return {
        "input": sample.loaded.display,
        "input_sha256": sample.loaded.sha256,
        "geometry": sample.geometry.as_dict(),
        "prediction": prediction,
    }
