"""``cnn-explain audit``: a dataset-level audit of a classifier, resumable, in bounded memory.

(Detectors use the same runner and journal through :func:`run_journaled`; their task, summaries and outputs live
in :mod:`explain.audit_detection` and :mod:`explain.audit_detection_outputs`.)

The runner is independent of the kind of model: it lists the DATASET, reads labels/boxes/groups
(:mod:`explain.audit_inputs`), hands fixed batches to a task (:class:`explain.audit_task.AuditTask`; today
:class:`~explain.audit_task.ClassificationTask`) that turns each batch into flat per-image records, and journals them.
At the end it rebuilds every output from the journal:

* ``images.csv`` and ``images.jsonl``: one record per image, sorted by path (plus the group columns);
* ``summary.json``: accuracy, localisation, faithfulness, sanity, translation, per-group summaries with their gaps,
  the "right for the wrong reason" list and the worst examples (:mod:`explain.audit_summary`);
* ``dashboard.html``: one self-contained page with plots and overlays (:mod:`explain.dashboard`);
* ``overlays/``: JPEG overlays of the worst examples only;
* ``manifest.json``, last.

Resuming: every finished batch is appended to ``audit-journal.jsonl`` as one line (written, flushed and fsynced),
after a header line holding the run's configuration (model and weights hash, layer, options, a hash of the dataset
listing and of the labels/boxes files). Batches are fixed slices of the sorted image list, so a re-run with the same
``--out`` and configuration skips every journaled batch and computes the others exactly as an uninterrupted run would;
a batch cut short by a kill leaves at most a partial last line, which is discarded. After the last batch the task's
dataset-level step (the classifier's sanity check, which randomises the network once for the whole sanity sample)
is journaled as one more line. A different configuration is a
usage error (pick a new ``--out`` or pass ``restart=True``). Groups are joined only when the outputs are written, so
a new groups file never forces a re-run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explain.audit_inputs import AuditInputs, load_audit_inputs
from explain.audit_task import AuditTask, ClassificationSettings, ClassificationTask, sanity_sample
from explain.errors import UsageError
from explain.figures import FigureStyle
from explain.manifest import Manifest, write_text

if TYPE_CHECKING:
    from explain.backbones.base import Backbone
    from explain.run import RunSettings

__all__ = ["JOURNAL", "AuditOptions", "AuditResult", "Journal", "JournalMismatchError", "base_config", "file_sha256",
           "run_audit", "run_journaled", "sanity_sample"]

JOURNAL = "audit-journal.jsonl"
JOURNAL_VERSION = 1


@dataclass
class AuditOptions:
    """What an audit is asked to do.

    Attributes:
        labels: the labels CSV (required).
        boxes: a boxes CSV or COCO JSON, or ``None``.
        groups: a groups CSV, or ``None``.
        layer: the layer Grad-CAM++ explains at (default: the backbone's default layer).
        sanity: how many images (a seeded sample) get the model-randomisation check; 0 disables it.
        shift: translation test shift in model-input pixels; 0 disables it.
        steps: deletion/insertion steps; 0 disables the faithfulness metrics.
        seed: seed of the sanity sample, the random baseline maps and the randomised network.
        randomisation: how the sanity check randomises the network (:data:`explain.metrics.RANDOMISATIONS`).
        cascade: run the sanity check's whole cascade (top layer first) rather than only the full randomisation.
        worst: how many worst examples per list the dashboard shows with overlays.
        restart: discard an existing journal in the output folder instead of resuming it.
        style: the dashboard plots' resolution and titles, and how the page names the dataset.
    """

    labels: Path
    boxes: Path | None = None
    groups: Path | None = None
    layer: str | None = None
    sanity: int = 16
    shift: int = 8
    steps: int = 8
    seed: int = 0
    randomisation: str = "recalibrated"
    cascade: bool = True
    worst: int = 8
    restart: bool = False
    style: FigureStyle = FigureStyle()

    def check(self) -> None:
        """Raise :class:`UsageError` for an option out of range."""
        for name in ("sanity", "shift", "steps", "worst"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name} must be >= 0 (got {getattr(self, name)})")
        from explain.metrics import RANDOMISATIONS

        if self.randomisation not in RANDOMISATIONS:
            raise UsageError(f"unknown --randomisation {self.randomisation!r}: choose {' or '.join(RANDOMISATIONS)}")
        if self.steps == 1:
            raise UsageError("--steps 1 only compares the untouched and the fully deleted image, which is the same for "
                             "every map; use at least 2 steps, or 0 to skip deletion and insertion")

    def check_shift(self, input_size: tuple[int, int]) -> None:
        """Raise :class:`UsageError` for a ``shift`` that moves the whole model input (``(height, width)``) away."""
        if self.shift >= min(input_size):
            raise UsageError(f"--shift {self.shift} is not smaller than the model input ({input_size[1]}x"
                             f"{input_size[0]} pixels): every shifted copy would be blank; use a few pixels "
                             "(default 8), or 0 to skip the translation test")


@dataclass
class AuditResult:
    """A finished audit: the manifest (saved), the summary and where the outputs are."""

    manifest: Manifest
    summary: dict[str, Any]
    out: Path
    records: list[dict[str, Any]] = field(repr=False, default_factory=list)


class JournalMismatchError(UsageError):
    """The output folder holds the journal of an audit with a different configuration."""


# --------------------------------------------------------------------------------------------------------------
# The journal


class Journal:
    """Append-only record of finished batches: a header line with the configuration, then one line per batch and,
    once every batch is done, one line with the task's dataset-level results (``final``).

    Args:
        path: the journal file.
        config: this run's configuration (JSON-ready).
        restart: start afresh even if the file holds another configuration.

    Raises:
        JournalMismatchError: the file belongs to a run with another configuration (and not ``restart``).
        UsageError: the file exists but is not a journal.
    """

    def __init__(self, path: Path, config: dict[str, Any], restart: bool = False) -> None:
        self.path = path
        self.config = config
        self.batches: dict[int, dict[str, Any]] = {}
        self.final: dict[str, Any] | None = None
        if restart or not path.exists():
            self._start()
        else:
            self._load()

    def _start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = {"journal_version": JOURNAL_VERSION, "config": self.config}
        # atomic: a kill never leaves a journal without its header
        write_text(self.path, json.dumps(header, sort_keys=True, allow_nan=False) + "\n")
        self.batches = {}
        self.final = None

    def _load(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        try:
            header = json.loads(complete[0]) if complete else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = None
        if not isinstance(header, dict) or "config" not in header:
            raise UsageError(f"{self.path} is not an audit journal; pick a new --out or pass --restart")
        if header["config"] != self.config:
            raise JournalMismatchError(self._mismatch(header["config"]))
        good = len(complete[0]) + 1
        for line in complete[1:]:
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break  # a torn write: this and anything after it is redone
            if "final" in entry:
                self.final = entry["final"]
            else:
                self.batches[int(entry["batch"])] = entry
            good += len(line) + 1
        if tail or good != len(raw):
            with open(self.path, "r+b") as handle:  # drop the partial line a kill left behind
                handle.truncate(good)
                handle.flush()
                os.fsync(handle.fileno())

    def _mismatch(self, old: dict[str, Any]) -> str:
        keys = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
        return (f"the output folder {self.path.parent} holds an audit with a different configuration (different "
                f"{', '.join(keys)}); pick a new --out, use the same options, or pass --restart to start over")

    def _write(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
        with open(self.path, "ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def append(self, batch: int, records: list[dict[str, Any]], errors: list[dict[str, str]]) -> None:
        """Journal one finished batch durably (one line, flushed and fsynced)."""
        entry = {"batch": batch, "records": records, "errors": errors}
        self._write(entry)
        self.batches[batch] = entry

    def append_final(self, final: dict[str, Any]) -> None:
        """Journal the dataset-level results durably."""
        self._write({"final": final})
        self.final = final

    def records(self) -> list[dict[str, Any]]:
        """Every journaled record, sorted by path."""
        return sorted((r for e in self.batches.values() for r in e["records"]), key=lambda r: r["path"])

    def errors(self) -> list[dict[str, str]]:
        """Every journaled per-image error."""
        return [err for e in self.batches.values() for err in e["errors"]]


# --------------------------------------------------------------------------------------------------------------
# Configuration


def _listing_sha256(inputs: AuditInputs) -> str:
    """A hash of what is audited: every path with its size and accepted classes."""
    digest = hashlib.sha256()
    for file, key in zip(inputs.files, inputs.keys, strict=True):
        size = file.path.stat().st_size if file.path.exists() else -1
        label = inputs.labels.labels.get(key)  # no labels in a detection audit (its boxes file is hashed)
        digest.update(f"{key}\t{size}\t{label.indices if label else ()}\n".encode())
    return digest.hexdigest()


def _model_identity(backbone: Backbone) -> dict[str, Any]:
    from explain.gallery import parameters_sha256

    sha = backbone.weights_sha256 or parameters_sha256(backbone.model)
    return {"name": backbone.name, "weights_sha256": sha, "preprocess": backbone.preprocess.as_dict()}


def base_config(task: AuditTask, backbone: Backbone, inputs: AuditInputs, batch_size: int) -> dict[str, Any]:
    """What every audit's journal must match, whatever the task: the task's own configuration, the model, the
    batch size and the dataset listing (the caller adds the hashes of its ground-truth files)."""
    return {**task.config(), "model": _model_identity(backbone), "batch_size": batch_size,
            "dataset": _listing_sha256(inputs)}


def file_sha256(path: Path | None) -> str | None:
    """SHA-256 of a ground-truth file's bytes (``None`` for no file)."""
    from explain.images import file_sha256 as sha256

    return None if path is None else sha256(path)


def run_config(task: AuditTask, backbone: Backbone, inputs: AuditInputs, opts: AuditOptions,
               batch_size: int) -> dict[str, Any]:
    """The configuration a journal must match to be resumed."""
    return {
        **base_config(task, backbone, inputs, batch_size),
        "labels_sha256": file_sha256(opts.labels),
        "boxes_sha256": file_sha256(opts.boxes),
    }


# --------------------------------------------------------------------------------------------------------------
# Running


def _chunks(n: int, size: int) -> list[range]:
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def _pending_batches(inputs: AuditInputs, journal: Journal, batch_size: int) -> tuple[list[int], list[Any], int]:
    """``(batch ids to do, their files in order, number of images already done)``."""
    todo, files, done = [], [], 0
    for number, chunk in enumerate(_chunks(len(inputs.files), batch_size)):
        if number in journal.batches:
            done += len(chunk)
        else:
            todo.append(number)
            files.extend(inputs.files[i] for i in chunk)
    return todo, files, done


def _run_batches(task: AuditTask, inputs: AuditInputs, journal: Journal, preprocess: Any,
                 settings: RunSettings) -> None:
    from explain.data import iter_batches

    key_of = {f.display: k for f, k in zip(inputs.files, inputs.keys, strict=True)}
    todo, files, done = _pending_batches(inputs, journal, settings.batch_size)
    if settings.on_batch is not None and done:
        settings.on_batch(done)
    batches: Iterator[Any] = iter_batches(files, preprocess, batch_size=settings.batch_size, workers=settings.workers)
    for number, batch in zip(todo, batches, strict=True):
        keys = [key_of[s.loaded.display] for s in batch.samples]
        records = task.records(batch, keys) if batch.tensor is not None else []
        errors = [{"input": key_of.get(e.path, e.path), "error": e.reason} for e in batch.errors]
        journal.append(number, records, errors)
        if settings.on_batch is not None:
            settings.on_batch(batch.size)


def _run_final(task: AuditTask, inputs: AuditInputs, journal: Journal, preprocess: Any,
               settings: RunSettings) -> None:
    """The task's dataset-level step, once, after every batch (skipped when journaled)."""
    import torch

    from explain.data import iter_batches

    if journal.final is not None:
        return
    wanted = set(task.final_keys([r["path"] for r in journal.records()]))  # a sample of the readable images
    if not wanted:
        return
    key_of = {f.display: k for f, k in zip(inputs.files, inputs.keys, strict=True)}
    files = [f for f, k in zip(inputs.files, inputs.keys, strict=True) if k in wanted]
    keys, tensors = [], []
    for batch in iter_batches(files, preprocess, batch_size=settings.batch_size, workers=settings.workers):
        keys += [key_of[s.loaded.display] for s in batch.samples]  # unreadable files: already errors of a batch
        if batch.tensor is not None:
            tensors.append(batch.tensor)
    x = torch.cat(tensors) if tensors else None
    journal.append_final(task.final(x, keys, settings.on_batch))


def run_audit(
    backbone: Backbone,
    dataset: str | Path,
    opts: AuditOptions,
    out: str | Path,
    settings: RunSettings | None = None,
    *,
    task_factory: Callable[[Backbone, AuditInputs, AuditOptions, Any], AuditTask] | None = None,
    inputs: AuditInputs | None = None,
) -> AuditResult:
    """Audit a classifier over a labelled DATASET folder and write every output into ``out``.

    Args:
        backbone: the model (left as found).
        dataset: the folder of images (walked recursively); label paths are relative to it.
        opts: labels, boxes, groups and the metric options.
        out: output folder; also the journal's home (re-running with it resumes).
        settings: batch size, device, workers, progress callback and argv.
        task_factory: builds the per-image task (default: :class:`ClassificationTask`); the seam for other tasks.
        inputs: the dataset already read by :func:`explain.audit_inputs.load_audit_inputs` with these options
            (e.g. to size a progress bar first); default: read here.

    Returns:
        The :class:`AuditResult`; ``manifest.json`` is already written (last).

    Raises:
        UsageError: bad options, unreadable label/box/group files, nothing to audit, or a journal of another
            configuration in ``out``.
        LayerError: unknown layer.
    """
    from explain.audit_outputs import write_outputs
    from explain.modules import resolve_layer

    settings = settings or _default_settings()
    opts.check()
    out = Path(out)
    layer = opts.layer or backbone.default_layer
    resolve_layer(backbone.model, layer)
    if inputs is None:
        inputs = load_audit_inputs(dataset, opts.labels, backbone.class_names, opts.boxes, opts.groups,
                                   exclude=(out,))
    factory = task_factory or classification_task
    task = factory(backbone, inputs, dataclasses.replace(opts, layer=layer), settings.device)
    config = run_config(task, backbone, inputs, opts, settings.batch_size)
    journal = run_journaled(task, backbone, inputs, config, out, settings, restart=opts.restart)
    return write_outputs(backbone, task, inputs, journal, opts, out, settings)


def run_journaled(task: AuditTask, backbone: Backbone, inputs: AuditInputs, config: dict[str, Any], out: Path,
                  settings: RunSettings, restart: bool = False) -> Journal:
    """Open (or resume) the journal in ``out`` and run ``task`` over every batch it does not hold yet, then its
    dataset-level step (when not journaled yet).

    Raises:
        JournalMismatchError: ``out`` holds the journal of another configuration (and not ``restart``).
    """
    from explain.device import model_device
    from explain.manifest import begin_output

    journal = Journal(out / JOURNAL, config, restart)
    begin_output(out)  # a resumed or restarted run is not the previous complete run until its manifest is written
    home = model_device(backbone.model)
    backbone.model.to(settings.device)
    try:
        preprocess = task.input_preprocess(backbone.preprocess)
        _run_batches(task, inputs, journal, preprocess, settings)
        _run_final(task, inputs, journal, preprocess, settings)
    finally:
        if home is not None:
            backbone.model.to(home)  # the caller's model goes back where it was
    return journal


def classification_task(backbone: Backbone, inputs: AuditInputs, opts: AuditOptions, device: Any) -> AuditTask:
    """The default task factory: a :class:`ClassificationTask` configured from ``opts``."""
    opts.check_shift(backbone.input_size)
    settings = ClassificationSettings(layer=opts.layer or backbone.default_layer, steps=opts.steps, shift=opts.shift,
                                      sanity=opts.sanity, seed=opts.seed,
                                      randomisation=opts.randomisation, cascade=opts.cascade)
    return ClassificationTask(backbone, inputs, settings, device)


def _default_settings() -> RunSettings:
    from explain.run import RunSettings

    return RunSettings()
