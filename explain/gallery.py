"""Feature gallery: a reusable, incremental index of image features and exact nearest-neighbour search.

An *index* is a folder holding the features of every image of a gallery folder at one layer of one model:

``index.json``
    what the index is: the model record (name, weights and their SHA-256, preprocessing), the layer, the
    gallery folder, the label source, the files that could not be embedded, and the names and SHA-256 of the two
    data files below. It is written last (atomically), so it always describes a complete pair of data files.
``features-<generation>.npy``
    ``(N, D)`` float32: row ``i`` is the globally average-pooled output of the layer for image ``i``.
``files-<generation>.csv``
    ``path,size,mtime_ns,sha256,label,class_name``: row ``i`` describes image ``i``; ``path`` is relative to the
    gallery folder with ``/`` separators.

Each update writes a new generation of data files, then ``index.json``, then removes the old generation; an
interrupted update therefore leaves the previous index intact.

Updating is incremental: a file whose size and modification time are unchanged is not read again; one whose size
or time changed is hashed, and only re-embedded if its bytes changed; new files are embedded; deleted ones are
dropped. Files that cannot be read are listed (in the result and in ``index.json``) and tried again next time.
Features of a different model, weights, preprocessing or layer are never mixed into an index, and an index holds
one gallery folder: updating it from another model, layer or folder raises :class:`IndexMismatchError` (or its
:class:`GalleryMismatchError`) unless ``rebuild`` replaces it.

Search is exact: candidates come from chunked float32 matrix products (bounded memory, by default 256 MB of
scratch space however large the gallery), and their distances are then recomputed in float64 from the vectors, so
that the order and the distances are those of a brute-force search. The optional faiss backend (``pip install
faiss-cpu``) only replaces the candidate step and gives identical results.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from explain.csvfile import ConflictingRows, csv_rows
from explain.errors import InputError, UsageError, shortlist

if TYPE_CHECKING:
    import torch

    from explain.backbones.base import Backbone, Preprocess
    from explain.images import ImageFile

__all__ = [
    "FORMAT", "FeatureIndex", "GalleryEntry", "GalleryMismatchError", "IndexCorruptError", "IndexMismatchError",
    "IndexUpdate", "LabelSource", "NoIndexError", "ProgressFn", "SearchResult", "build_index", "check_compatible",
    "check_same_gallery", "embed_files", "evaluate_purity", "feature_identity", "load_index", "parse_labels", "search",
]

FORMAT = "cnn-explain-feature-index"
VERSION = 1
INDEX_FILE = "index.json"
METRICS = ("l2", "cosine")
BACKENDS = ("auto", "torch", "faiss")
DEFAULT_MEMORY_MB = 256

ProgressFn = Callable[[str, int, int], None]
"""``progress(stage, advance, total)``: ``advance`` more units of ``total`` are done in ``stage``."""


# --------------------------------------------------------------------------------------------------------------
# Errors


class NoIndexError(UsageError):
    """The folder holds no feature index."""


class IndexCorruptError(UsageError):
    """The index files are unreadable, inconsistent or do not match their recorded checksums."""


class IndexMismatchError(UsageError):
    """An existing index holds features of a different model, weights, preprocessing or layer."""


class GalleryMismatchError(IndexMismatchError):
    """An existing index was built from another gallery folder than the one given to update it."""


# --------------------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class GalleryEntry:
    """One embedded gallery image.

    Attributes:
        path: path relative to the gallery folder, ``/`` separators.
        size: file size in bytes when it was embedded.
        mtime_ns: modification time (ns) when it was embedded.
        sha256: SHA-256 of the bytes that were embedded.
        label: label key (``None``: unlabelled).
        class_name: human-readable name of the label (``None``: use the label).
    """

    path: str
    size: int
    mtime_ns: int
    sha256: str
    label: str | None = None
    class_name: str | None = None

    @property
    def label_name(self) -> str | None:
        """What to show for the label: the class name if there is one, else the label."""
        return self.class_name or self.label


@dataclass(frozen=True)
class LabelSource:
    """Where labels come from: sub-folder names (``folders``) or a CSV file with ``path,label[,class_name]``."""

    kind: str  # "folders" | "csv"
    path: Path | None = None

    @classmethod
    def parse(cls, spec: str | Path | LabelSource | None) -> LabelSource | None:
        """``None``, ``"folders"`` or a CSV path."""
        if spec is None or isinstance(spec, LabelSource):
            return spec
        if str(spec) == "folders":
            return cls("folders")
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"--labels: no such file {str(spec)!r} (give a CSV with columns path,label[,class_name] "
                             "or the word 'folders' to use sub-folder names)")
        return cls("csv", path.resolve())

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.kind} if self.kind == "folders" else {"source": "csv", "path": str(self.path)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> LabelSource | None:
        if not data:
            return None
        if data.get("source") == "folders":
            return cls("folders")
        return cls("csv", Path(data["path"]))


@dataclass
class FeatureIndex:
    """A loaded (or freshly built) feature index.

    Attributes:
        root: the gallery folder (absolute).
        entries: one :class:`GalleryEntry` per row of ``features``.
        features: ``(N, D)`` float32.
        model: the backbone's manifest record, plus ``weights_arg`` (what to pass to ``load_backbone``).
        layer: dotted name of the layer the features come from.
        pooling: how a layer output became a vector (``"global-average"``, ``"none"``, ``"flatten"``).
        labels: where labels came from (``None``: no labels).
        skipped: ``{"path", "error"}`` for every gallery file that could not be embedded.
        directory: the index folder (``None`` until saved).
        created, updated: UTC timestamps.
    """

    root: Path
    entries: list[GalleryEntry]
    features: np.ndarray
    model: dict[str, Any]
    layer: str
    pooling: str = "global-average"
    labels: LabelSource | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    directory: Path | None = None
    created: str = ""
    updated: str = ""

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1]) if self.features.ndim == 2 else 0

    @property
    def paths(self) -> list[str]:
        """Relative paths of the rows."""
        return [e.path for e in self.entries]

    def file(self, row: int) -> Path:
        """Absolute path of the image of ``row``."""
        return self.root / self.entries[row].path

    def label_keys(self) -> list[str | None]:
        return [e.label for e in self.entries]

    def label_names(self) -> list[str | None]:
        return [e.label_name for e in self.entries]

    def describe(self) -> str:
        """``efficientnet_lite0 (weights ..., layer ...)`` for messages."""
        return _describe(self.model, self.layer)

    def rows_of(self, sha256s: Sequence[str]) -> np.ndarray:
        """For each file hash, the first row holding the same bytes, or ``-1``: a query that is itself in the
        gallery, to leave out of its own neighbours (``search(..., exclude=...)``)."""
        first: dict[str, int] = {}
        for row, entry in enumerate(self.entries):
            first.setdefault(entry.sha256, row)
        return np.array([first.get(h, -1) for h in sha256s], dtype=np.int64)


@dataclass
class IndexUpdate:
    """What :func:`build_index` did.

    Attributes:
        index: the index as saved.
        added: relative paths embedded for the first time.
        changed: relative paths re-embedded because their bytes changed.
        removed: relative paths dropped because the file is gone.
        unchanged: how many rows were reused without embedding.
        errors: one :class:`InputError` per gallery file that could not be embedded (``path`` relative).
        warnings: label problems and the like.
        rebuilt: an existing index was replaced (``rebuild=True``).
    """

    index: FeatureIndex
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    errors: list[InputError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rebuilt: bool = False


@dataclass
class SearchResult:
    """Nearest neighbours of a set of queries.

    Attributes:
        ids: ``(Q, k)`` int64 row numbers in the base, nearest first (ties: lower row first).
        distances: ``(Q, k)`` float32; Euclidean distance for ``l2``, ``1 - cosine similarity`` for ``cosine``.
        metric: ``l2`` or ``cosine``.
        backend: ``torch`` or ``faiss`` (the candidate step; distances are always recomputed exactly).
    """

    ids: np.ndarray
    distances: np.ndarray
    metric: str
    backend: str


# --------------------------------------------------------------------------------------------------------------
# Identity of the features


def backbone_record(backbone: Backbone, weights_arg: str | None = None) -> dict[str, Any]:
    """The backbone's manifest record, plus ``weights_arg`` (to reload it) and, when its weights do not come from
    a file with a known SHA-256 (random weights), ``params_sha256``: a hash of the parameters and buffers."""
    record = dict(backbone.manifest_record())
    record["weights_arg"] = weights_arg
    if not record.get("weights_sha256"):
        record["params_sha256"] = parameters_sha256(backbone.model)
    return record


def parameters_sha256(model: Any) -> str:
    """SHA-256 over the names, shapes and values of a model's state (parameters and buffers)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def feature_identity(model: dict[str, Any], layer: str) -> dict[str, Any]:
    """What must agree for two sets of features to be comparable."""
    return {
        "name": model.get("name"),
        "weights": model.get("weights_sha256") or model.get("params_sha256") or model.get("weights"),
        "preprocess": model.get("preprocess"),
        "input_size": list(model.get("input_size") or []),
        "layer": layer,
    }


def _describe(model: dict[str, Any], layer: str) -> str:
    return f"{model.get('name')} (weights {model.get('weights')}, layer {layer})"


def _load_args(model: dict[str, Any]) -> tuple[str, bool]:
    """``--model`` and ``--weights`` that load ``model`` (a :func:`backbone_record`), and whether its weights are
    the default ones (no ``--weights``)."""
    weights = model.get("weights_arg") or ("none" if model.get("weights") == "none" else None)
    return f"--model {model.get('name')}" + (f" --weights {_quote(weights)}" if weights else ""), not weights


def _model_args(model: dict[str, Any], layer: str | None = None) -> str:
    """:func:`_load_args` and ``--layer`` when given, with default weights said in words (for users who passed
    other weights)."""
    args, default = _load_args(model)
    args += f" --layer {layer}" if layer else ""
    return f"{args}, with its default weights" if default else args


def check_compatible(index: FeatureIndex, model: dict[str, Any], layer: str | None = None, *,
                     purpose: str = "query") -> None:
    """Raise :class:`IndexMismatchError` unless ``model`` gives features comparable with ``index``.

    Args:
        index: the existing index.
        model: the run's :func:`backbone_record`.
        layer: the run's feature layer (``None``: the index's). For a ``query`` with a model of another name, the
            index's layer means nothing to that model, so the message names the model's own ``feature_layer``.
        purpose: what the run does with the index, which decides the hint of the error: ``"update"`` (add
            features to it, ``cnn-explain index``: use another ``--out``, the index's model, or ``--rebuild``) or
            ``"query"`` (embed images to search it, ``neighbours`` and ``report``: pass the index's model, or
            rebuild the index for this model with ``cnn-explain index ... --rebuild``).
    """
    if purpose not in ("update", "query"):
        raise ValueError(f"purpose must be 'update' or 'query', not {purpose!r}")
    layer = layer or index.layer
    if purpose == "query" and model.get("name") != index.model.get("name"):
        layer = str(model.get("feature_layer") or layer)
    old, new = feature_identity(index.model, index.layer), feature_identity(model, layer)
    if old == new:
        return
    what = [key for key in old if old[key] != new[key]]
    where = f" in {index.directory}" if index.directory else ""
    if purpose == "update":
        hint = (f"use another --out folder for this model, update this index with its model "
                f"({_model_args(index.model, index.layer)}), or pass --rebuild to replace it")
    else:
        rebuild = (f"cnn-explain index {_quote(index.root)} --out {_quote(index.directory or 'DIR')} "
                   f"{_load_args(model)[0]}" + (f" --layer {layer}" if layer != model.get("feature_layer") else "")
                   + " --rebuild")
        hint = (f"pass the index's model ({_model_args(index.model)}), or rebuild the index for this model "
                f"with '{rebuild}'")
    raise IndexMismatchError(
        f"the index{where} holds features of {index.describe()}, but this run uses {_describe(model, layer)} "
        f"(different {', '.join(what)}); features of different models or layers cannot be mixed: {hint}"
    )


def _quote(path: str | Path) -> str:
    import shlex

    return shlex.quote(str(path))


def check_same_gallery(index: FeatureIndex, gallery: str | Path) -> None:
    """Raise :class:`GalleryMismatchError` unless ``gallery`` is the folder ``index`` was built from.

    An index describes one gallery folder: updating it from another would drop every image that is not in the new
    folder and mix the two folders' labels, so it is refused (``--rebuild`` replaces the index instead).
    """
    given = Path(gallery).resolve()
    if given == Path(index.root).resolve():
        return
    where = f" in {index.directory}" if index.directory else ""
    raise GalleryMismatchError(
        f"the index{where} was built from the gallery {index.root}, not {given}; an index holds one gallery "
        f"folder: pass --rebuild to replace it with an index of {gallery}, use another --out folder, or give "
        f"{index.root} to update it"
    )


# --------------------------------------------------------------------------------------------------------------
# Labels


LabelRows = list[tuple[str, tuple[str, str | None]]]
"""The rows of a labels CSV: ``(path relative to the gallery, (label, class_name))``, in file order."""


def read_label_rows(source: LabelSource, root: Path) -> LabelRows:
    """The rows of a ``csv`` labels source (columns ``path`` and ``label``, header required, optional
    ``class_name``; other columns are ignored). Paths are relative to the gallery folder (absolute paths inside it
    work too). A path listed twice with different labels (or class names) is refused, whether or not it is a gallery
    image: neither row is more likely right.

    Raises:
        UsageError: the CSV cannot be read, lacks the columns, or gives a path different labels (the message
            names the lines, the paths and the labels).
    """
    assert source.kind == "csv" and source.path is not None
    _, rows = csv_rows(source.path, "labels", "path,label[,class_name]", required=("path", "label"))
    root_abs = root.resolve()
    duplicates = ConflictingRows(source.path.name, "labels")
    found: LabelRows = []
    conflicts = []
    for line, row, _ in rows:
        raw, label = row.get("path", ""), row.get("label", "")
        if not raw or not label:
            continue
        rel = _relative_label_path(raw, root_abs)
        value = (label, row.get("class_name") or None)
        shown = repr(label) + (f" (class_name {value[1]!r})" if value[1] else "")
        conflict = duplicates.add(rel, line, value, shown)
        if conflict is not None:
            conflicts.append(f"{rel}: {conflict}")
        found.append((rel, value))
    if conflicts:
        raise UsageError(f"--labels {str(source.path)!r} gives {len(conflicts)} path(s) different labels ("
                         f"{'; '.join(conflicts[:3])}{'; ...' if len(conflicts) > 3 else ''}): keep one row per image")
    return found


def parse_labels(source: LabelSource, root: Path, paths: Sequence[str], rows: LabelRows | None = None
                 ) -> tuple[dict[str, tuple[str, str | None]], list[str]]:
    """Labels of gallery files: ``({relative path: (label, class_name)}, warnings)``.

    ``folders``: the first sub-folder of each path is its label (files directly in the gallery folder have none).
    ``csv``: the rows of :func:`read_label_rows` (``rows`` when they were read already) that name one of ``paths``;
    the others are counted in a warning.

    Raises:
        UsageError: see :func:`read_label_rows`.
    """
    if source.kind == "folders":
        labels = {}
        for p in paths:
            parts = PurePosixPath(p).parts
            if len(parts) > 1:
                labels[p] = (parts[0], parts[0])
        return labels, []
    assert source.path is not None
    rows = read_label_rows(source, root) if rows is None else rows
    wanted = set(paths)
    labels = {rel: value for rel, value in rows if rel in wanted}
    unknown = sum(rel not in wanted for rel, _ in rows)
    warnings = []
    if unknown:
        warnings.append(f"{unknown} row(s) of {source.path.name} name files that are not (readable) gallery images")
    return labels, warnings


def _relative_label_path(raw: str, root_abs: Path) -> str:
    path = Path(raw)
    if path.is_absolute():
        try:
            return path.resolve().relative_to(root_abs).as_posix()
        except ValueError:
            return raw
    return PurePosixPath(raw.replace("\\", "/")).as_posix().removeprefix("./")


# --------------------------------------------------------------------------------------------------------------
# Embedding


class _FeatureDataset:
    """Decode + preprocess in a DataLoader worker; send back only the tensor and the hash (not the photo)."""

    def __init__(self, files: Sequence[ImageFile], preprocess: Preprocess) -> None:
        self.files = list(files)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None]:
        from explain.images import load_image

        file = self.files[i]
        try:
            loaded = load_image(file.path, display=file.display)
            return i, self.preprocess(loaded.image), loaded.sha256
        except InputError as exc:  # travels back from a worker process as is (InputError pickles)
            return i, exc, None
        except Exception as exc:  # noqa: BLE001 - any failure here belongs to this file only
            return i, InputError(file.display, f"cannot preprocess: {exc}"), None


def _collate(items: list[Any]) -> tuple[list[int], Any, list[str], list[tuple[int, InputError]]]:
    import torch

    rows, tensors, hashes, errors = [], [], [], []
    for i, value, digest in items:
        if isinstance(value, InputError):
            errors.append((i, value))
        else:
            rows.append(i)
            tensors.append(value)
            hashes.append(digest)
    return rows, (torch.stack(tensors) if tensors else None), hashes, errors


class _Stop(Exception):
    """Raised by a hook once the feature layer has run: the rest of the network is not needed."""


def pool_features(output: torch.Tensor) -> tuple[torch.Tensor, str]:
    """A layer output as one vector per image: ``(N, C, H, W)`` is averaged over H and W."""
    if output.dim() == 4:
        return output.mean(dim=(2, 3)), "global-average"
    if output.dim() == 2:
        return output, "none"
    return output.flatten(1), "flatten"


@dataclass
class EmbedResult:
    """Features of image files: ``rows`` are positions in the input list of the images that worked."""

    rows: list[int]
    sha256: list[str]
    features: np.ndarray
    errors: list[InputError]
    pooling: str


def embed_files(
    backbone: Backbone,
    files: Sequence[ImageFile],
    layer: str | None = None,
    *,
    batch_size: int = 32,
    workers: int = 0,
    device: Any = "cpu",
    channels_last: bool = True,
    progress: ProgressFn | None = None,
) -> EmbedResult:
    """Embed image files at ``layer`` (default: the backbone's feature layer), globally average-pooled.

    Decoding and preprocessing run in ``workers`` DataLoader processes, in parallel with the model; the forward
    pass runs under ``torch.inference_mode`` and stops right after the layer. With ``channels_last`` the model runs
    in the channels-last memory layout (about 1.4x faster for EfficientNet-Lite0 on a CPU; values agree to float
    rounding) and is put back as it was afterwards. Files that cannot be read become :class:`InputError` entries.
    """
    import torch
    from torch.utils.data import DataLoader

    from explain.hooks import LayerTap, channels_last_layout, eval_mode
    from explain.modules import resolve_layer

    if batch_size < 1:
        raise UsageError("batch size must be at least 1")
    layer = layer or backbone.feature_layer
    model = backbone.model
    module = resolve_layer(model, layer)
    rows: list[int] = []
    hashes: list[str] = []
    chunks: list[np.ndarray] = []
    errors: list[InputError] = []
    pooling = "global-average"
    if not files:
        return EmbedResult([], [], np.zeros((0, 0), np.float32), [], pooling)
    loader = DataLoader(_FeatureDataset(files, backbone.preprocess), batch_size=batch_size,  # type: ignore[arg-type]
                        shuffle=False, num_workers=workers, collate_fn=_collate,
                        persistent_workers=False, prefetch_factor=4 if workers else None,
                        # its own generator: the loader draws a base seed per epoch, which would advance the
                        # caller's global random state (nothing here is random, so any fixed seed will do)
                        generator=torch.Generator().manual_seed(0))

    def stop(*_: Any) -> None:
        raise _Stop

    with eval_mode(model), channels_last_layout(model, channels_last) as fast:
        layout = torch.channels_last if fast else torch.contiguous_format
        for batch_rows, tensor, batch_hashes, batch_errors in loader:
            errors.extend(error for _, error in batch_errors)
            if tensor is not None:
                with LayerTap(model, [layer]) as tap, torch.inference_mode():
                    handle = module.register_forward_hook(stop)
                    try:
                        model(tensor.to(device).contiguous(memory_format=layout))
                    except _Stop:
                        pass
                    finally:
                        handle.remove()
                    tap.require_all()
                    output = tap.outputs[layer]
                    if not isinstance(output, torch.Tensor):
                        raise UsageError(f"layer {layer!r} gives a {type(output).__name__}, not a tensor; choose "
                                         "a layer whose output is a tensor ('cnn-explain layers')")
                    vectors, pooling = pool_features(output)
                    chunks.append(vectors.float().cpu().numpy())
                rows.extend(batch_rows)
                hashes.extend(batch_hashes)
            if progress is not None:
                progress("embedding", len(batch_rows) + len(batch_errors), len(files))
    features = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    return EmbedResult(rows, hashes, np.ascontiguousarray(features, dtype=np.float32), errors, pooling)


def default_workers() -> int:
    """DataLoader workers for embedding: two when the machine has at least two cores."""
    return 2 if (os.cpu_count() or 1) >= 2 else 0


# --------------------------------------------------------------------------------------------------------------
# Building, saving and loading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(f"{path} is not a readable index file ({exc}); rebuild the index with "
                                "'cnn-explain index GALLERY --out DIR --rebuild'") from None
    if not isinstance(data, dict):
        raise IndexCorruptError(f"{path} is not a cnn-explain feature index; rebuild it with --rebuild")
    return data


def _corrupt(directory: Path, what: str) -> IndexCorruptError:
    return IndexCorruptError(f"the feature index in {directory} is corrupt: {what}; rebuild it with "
                             f"'cnn-explain index GALLERY --out {directory} --rebuild'")


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_index(directory: str | Path, *, verify: bool = True) -> FeatureIndex:
    """Load the index in ``directory``.

    Args:
        directory: the index folder (``cnn-explain index --out``).
        verify: check the SHA-256 of the data files against ``index.json``.

    Raises:
        NoIndexError: no ``index.json`` in the folder.
        IndexCorruptError: unreadable, inconsistent or modified files.
    """
    folder = Path(directory)
    meta_path = folder / INDEX_FILE
    if not folder.is_dir():
        raise NoIndexError(f"no such index folder {str(folder)!r}; build one with "
                           f"'cnn-explain index GALLERY --out {folder}'")
    if not meta_path.is_file():
        raise NoIndexError(f"no feature index in {folder} (no {INDEX_FILE}); build one with "
                           f"'cnn-explain index GALLERY --out {folder}'")
    meta = _read_json(meta_path)
    if meta.get("format") != FORMAT:
        raise _corrupt(folder, f"{INDEX_FILE} is not a {FORMAT} file")
    if meta.get("version") != VERSION:
        raise IndexCorruptError(f"the index in {folder} has format version {meta.get('version')}, this cnn-explain "
                                f"reads version {VERSION}; rebuild it with --rebuild")
    try:
        feat_info, files_info = meta["features"], meta["files"]
        count, dim = int(meta["count"]), int(meta["dim"])
        model, layer, root = dict(meta["model"]), str(meta["layer"]), Path(meta["gallery"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _corrupt(folder, f"{INDEX_FILE} lacks {exc}") from None

    def read(name: str, expected: str | None) -> bytes:
        if not name or "/" in name or "\\" in name:
            raise _corrupt(folder, f"bad data file name {name!r}")
        try:
            data = (folder / name).read_bytes()
        except OSError as exc:
            raise _corrupt(folder, f"cannot read {name} ({exc.strerror or exc})") from None
        if verify and expected and _sha256_bytes(data) != expected:
            raise _corrupt(folder, f"{name} does not match its checksum (modified or truncated)")
        return data

    raw_features = read(str(feat_info.get("file", "")), feat_info.get("sha256"))
    try:
        features = np.load(io.BytesIO(raw_features), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _corrupt(folder, f"{feat_info.get('file')} is not a NumPy array ({exc})") from None
    del raw_features
    if features.dtype != np.float32 or features.ndim != 2 or features.shape[0] != count or \
            (count and features.shape[1] != dim):
        raise _corrupt(folder, f"features have shape {features.shape} {features.dtype}, expected ({count}, {dim}) "
                               "float32")
    entries = _parse_files_csv(read(str(files_info.get("file", "")), files_info.get("sha256")), folder)
    if len(entries) != count:
        raise _corrupt(folder, f"the file list has {len(entries)} rows for {count} feature rows")
    return FeatureIndex(
        root=root, entries=entries, features=features, model=model, layer=layer,
        pooling=str(meta.get("pooling", "global-average")), labels=LabelSource.from_dict(meta.get("labels")),
        skipped=list(meta.get("skipped") or []), directory=folder, created=str(meta.get("created", "")),
        updated=str(meta.get("updated", "")),
    )


_FILE_COLUMNS = ("path", "size", "mtime_ns", "sha256", "label", "class_name")


def _parse_files_csv(data: bytes, folder: Path) -> list[GalleryEntry]:
    try:
        reader = csv.reader(io.StringIO(data.decode("utf-8")))
        header = next(reader, None)
        if header is None or tuple(header) != _FILE_COLUMNS:
            raise ValueError(f"header {header}")
        return [GalleryEntry(r[0], int(r[1]), int(r[2]), r[3], r[4] or None, r[5] or None) for r in reader]
    except (ValueError, IndexError, UnicodeDecodeError, csv.Error) as exc:
        raise _corrupt(folder, f"the file list is unreadable ({exc})") from None


def _files_csv(entries: Sequence[GalleryEntry]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_FILE_COLUMNS)
    for e in entries:
        writer.writerow([e.path, e.size, e.mtime_ns, e.sha256, e.label or "", e.class_name or ""])
    return buffer.getvalue().encode("utf-8")


def save_index(index: FeatureIndex, directory: str | Path) -> Path:
    """Write ``index`` into ``directory`` (new data files, then ``index.json``, then old data files removed)."""
    from explain.manifest import utc_now, write_bytes, write_text

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    generation = secrets.token_hex(4)
    features = np.ascontiguousarray(index.features, dtype=np.float32)
    buffer = io.BytesIO()
    np.save(buffer, features, allow_pickle=False)
    feat_bytes = buffer.getvalue()
    files_bytes = _files_csv(index.entries)
    feat_name, files_name = f"features-{generation}.npy", f"files-{generation}.csv"
    written = [write_bytes(folder / feat_name, feat_bytes), write_bytes(folder / files_name, files_bytes)]
    index.updated = utc_now()
    index.created = index.created or index.updated
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "gallery": str(index.root),
        "model": index.model,
        "layer": index.layer,
        "pooling": index.pooling,
        "count": len(index.entries),
        "dim": int(features.shape[1]) if features.ndim == 2 else 0,
        "features": {"file": feat_name, "sha256": _sha256_bytes(feat_bytes), "dtype": "float32",
                     "shape": list(features.shape)},
        "files": {"file": files_name, "sha256": _sha256_bytes(files_bytes), "columns": list(_FILE_COLUMNS)},
        "labels": index.labels.as_dict() if index.labels else None,
        "labelled": sum(e.label is not None for e in index.entries),
        "skipped": index.skipped,
        "created": index.created,
        "updated": index.updated,
    }
    try:
        write_text(folder / INDEX_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    keep = {feat_name, files_name}
    for old in list(folder.glob("features-*.npy")) + list(folder.glob("files-*.csv")):
        if old.name not in keep:
            old.unlink(missing_ok=True)
    index.directory = folder
    return folder / INDEX_FILE


@dataclass
class _Scanned:
    file: ImageFile
    rel: str
    size: int
    mtime_ns: int


def _scan(root: Path, exclude: Sequence[str | Path] = ()) -> tuple[list[_Scanned], list[InputError]]:
    from explain.images import find_images

    if not root.exists():
        raise UsageError(f"gallery folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise UsageError(f"the gallery must be a folder of images, not a file: {str(root)!r}")
    files, errors = find_images([root], exclude=exclude)  # an index folder inside the gallery is not walked
    root_text = root.as_posix().rstrip("/")
    scanned = []
    for f in files:
        rel = f.display[len(root_text) + 1:] if f.display.startswith(root_text + "/") else f.path.name
        try:
            st = f.path.stat()
        except OSError as exc:
            errors.append(InputError(rel, f"cannot access: {exc.strerror or exc}"))
            continue
        scanned.append(_Scanned(f, rel, st.st_size, st.st_mtime_ns))
    return scanned, errors


def build_index(
    backbone: Backbone,
    gallery: str | Path,
    out_dir: str | Path | None,
    *,
    layer: str | None = None,
    labels: str | Path | LabelSource | None = None,
    rebuild: bool = False,
    weights_arg: str | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    device: Any = "cpu",
    progress: ProgressFn | None = None,
    exclude: Sequence[str | Path] = (),
) -> IndexUpdate:
    """Build the index of ``gallery`` in ``out_dir``, or bring the index already there up to date.

    Args:
        backbone: the model.
        gallery: folder of images (walked recursively; hidden files skipped).
        out_dir: the index folder; ``None`` builds the index in memory only.
        layer: feature layer (default: ``backbone.feature_layer``).
        labels: ``"folders"``, a CSV path or a :class:`LabelSource`; ``None`` keeps the index's previous source.
        rebuild: replace an existing index (even one of another model, or a corrupt one) instead of updating it.
        weights_arg: what was passed as ``weights`` to ``load_backbone`` (stored so the model can be reloaded).
        batch_size, workers, device: embedding settings (``workers=None``: :func:`default_workers`).
        progress: ``progress("embedding", n, total)`` callback.
        exclude: more folders not to walk into (besides ``out_dir``), e.g. the output folder of a map whose index
            this is.

    Raises:
        IndexMismatchError: the existing index holds features of another model, weights or layer.
        GalleryMismatchError: the existing index was built from another gallery folder.
        IndexCorruptError: the existing index is unreadable (and ``rebuild`` is false).
        UsageError: no gallery folder, no image in it, no image could be read, bad labels file.
    """
    from explain.modules import resolve_layer

    root = Path(gallery)
    layer = layer or backbone.feature_layer
    resolve_layer(backbone.model, layer)
    model_record = backbone_record(backbone, weights_arg)
    source = LabelSource.parse(labels)
    rows = None  # a bad labels file is refused before anything is embedded
    if labels is not None and source is not None and source.kind == "csv":
        rows = read_label_rows(source, root)

    old: FeatureIndex | None = None
    folder = Path(out_dir) if out_dir is not None else None
    if folder is not None and (folder / INDEX_FILE).exists() and not rebuild:
        old = load_index(folder)
        check_compatible(old, model_record, layer, purpose="update")
        check_same_gallery(old, root)
    if source is None and old is not None:
        source = old.labels

    scanned, scan_errors = _scan(root, exclude=[*exclude, *([folder] if folder is not None else [])])
    if not scanned and not scan_errors:
        raise UsageError(f"no images found in gallery {str(root)!r} (looked for .jpg .jpeg .png .webp .bmp .tif .gif)")
    if folder is not None:
        from explain.manifest import begin_output

        begin_output(folder)  # every check passed: the folder's manifest no longer describes it until rewritten

    previous = {e.path: (row, e) for row, e in enumerate(old.entries)} if old is not None else {}
    replaced = rebuild and folder is not None and (folder / INDEX_FILE).exists()
    update = IndexUpdate(index=None, rebuilt=replaced)  # type: ignore[arg-type]
    reuse: dict[str, tuple[int, GalleryEntry]] = {}
    to_embed: list[_Scanned] = []
    for item in scanned:
        hit = previous.get(item.rel)
        if hit is not None:
            row, entry = hit
            if entry.size == item.size and entry.mtime_ns == item.mtime_ns:
                reuse[item.rel] = (row, entry)
                continue
            try:
                from explain.images import file_sha256

                same = entry.size == item.size and file_sha256(item.file.path) == entry.sha256
            except InputError:
                same = False
            if same:  # touched, not changed
                reuse[item.rel] = (row, GalleryEntry(entry.path, item.size, item.mtime_ns, entry.sha256))
                continue
        to_embed.append(item)

    result = embed_files(backbone, [s.file for s in to_embed], layer, batch_size=batch_size,
                         workers=default_workers() if workers is None else workers, device=device,
                         progress=progress)
    new_rows = {to_embed[pos].rel: (i, digest) for i, (pos, digest) in enumerate(zip(result.rows, result.sha256))}
    rel_of_display = {s.file.display: s.rel for s in to_embed}
    for err in result.errors:
        update.errors.append(InputError(rel_of_display.get(err.path, err.path), err.reason))
    update.errors.extend(scan_errors)

    dim = result.features.shape[1] if len(result.rows) else (old.dim if old is not None else 0)
    if old is not None and len(result.rows) and old.dim and result.features.shape[1] != old.dim:
        raise _corrupt(folder or Path("."), f"stored features have {old.dim} dimensions, the layer gives "
                                           f"{result.features.shape[1]}")
    entries: list[GalleryEntry] = []
    matrix = np.empty((len(reuse) + len(new_rows), dim), dtype=np.float32)
    for item in scanned:
        if item.rel in reuse:
            row, entry = reuse[item.rel]
            matrix[len(entries)] = old.features[row]  # type: ignore[union-attr]
            entries.append(entry)
            update.unchanged += 1
        elif item.rel in new_rows:
            i, digest = new_rows[item.rel]
            matrix[len(entries)] = result.features[i]
            entries.append(GalleryEntry(item.rel, item.size, item.mtime_ns, digest))
            (update.changed if item.rel in previous else update.added).append(item.rel)
    update.removed = [p for p in previous if p not in reuse and p not in new_rows]
    # A changed file that can no longer be read is dropped too (and listed among the errors).
    if not entries:
        reasons = "; ".join(str(e) for e in update.errors[:3])
        raise UsageError(f"no image in gallery {str(root)!r} could be read ({reasons}"
                         f"{'; ...' if len(update.errors) > 3 else ''})")

    if source is not None:
        if labels is None and source.kind == "csv" and source.path is not None and not source.path.is_file():
            # The labels file the index was built with is gone: keep the labels the index already has.
            assert old is not None
            label_map = {e.path: (e.label, e.class_name) for e in old.entries if e.label is not None}
            label_warnings = [f"labels file {source.path} no longer exists: kept the stored labels (new images "
                              "have none; pass --labels to change them)"]
        else:
            label_map, label_warnings = parse_labels(source, root, [e.path for e in entries], rows)
        update.warnings.extend(label_warnings)
        entries = [GalleryEntry(e.path, e.size, e.mtime_ns, e.sha256, *label_map.get(e.path, (None, None)))
                   for e in entries]
        unlabelled = sum(e.label is None for e in entries)
        if unlabelled:
            update.warnings.append(f"{unlabelled} of {len(entries)} gallery images have no label")

    index = FeatureIndex(
        root=root.resolve(), entries=entries, features=matrix, model=model_record, layer=layer,
        pooling=result.pooling if result.rows else (old.pooling if old is not None else "global-average"),
        labels=source, skipped=[{"path": e.path, "error": e.reason} for e in update.errors],
        created=old.created if old is not None else "",
    )
    if folder is not None:
        save_index(index, folder)
    update.index = index
    return update


# --------------------------------------------------------------------------------------------------------------
# Search


def check_search_args(k: int, metric: str, backend: str) -> None:
    if k < 1:
        raise UsageError(f"-k must be at least 1 (got {k})")
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}: choose l2 or cosine")
    if backend not in BACKENDS:
        raise UsageError(f"unknown search backend {backend!r}: choose auto, torch or faiss")
    if backend == "faiss" and not faiss_available():
        raise UsageError("the faiss backend needs faiss: pip install faiss-cpu (or 'cnn-explain[faiss]'), "
                         "or use --backend torch (same results)")


def faiss_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def search(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    metric: str = "l2",
    *,
    exclude: np.ndarray | None = None,
    backend: str = "torch",
    memory_mb: float = DEFAULT_MEMORY_MB,
    progress: ProgressFn | None = None,
) -> SearchResult:
    """Exact k-nearest-neighbour search of ``queries`` in ``base``.

    Candidates (``k`` plus a margin) are found with float32 matrix products over chunks of queries and of the
    base, sized so that the scratch space stays within ``memory_mb`` (the base may be a memory-mapped array);
    their distances are then recomputed in float64 from the vectors, and sorted by (distance, row).

    Args:
        queries: ``(Q, D)``.
        base: ``(N, D)``.
        k: neighbours per query (at most ``N``, less the excluded row).
        metric: ``l2`` (Euclidean distance) or ``cosine`` (``1 - cosine similarity``).
        exclude: ``(Q,)`` base row to leave out for each query (``-1``: none), e.g. the query itself.
        backend: ``torch`` (default), ``faiss`` (needs faiss installed) or ``auto`` (faiss when installed).
        memory_mb: scratch-memory budget of the torch backend.
        progress: ``progress("search", queries_done, Q)``.

    Raises:
        UsageError: bad ``k``/``metric``/``backend``, mismatched dimensions, faiss missing.
    """
    check_search_args(k, metric, backend)
    queries = np.asarray(queries)
    if queries.ndim != 2 or base.ndim != 2 or queries.shape[1] != base.shape[1]:
        raise UsageError(f"query features {queries.shape} and gallery features {base.shape} do not fit")
    n = base.shape[0]
    excl = np.full(len(queries), -1, dtype=np.int64) if exclude is None else np.asarray(exclude, dtype=np.int64)
    k_eff = min(k, n - (1 if (excl >= 0).any() else 0))
    if k_eff < 1:
        raise UsageError("the gallery has too few images for this search")
    if backend == "auto":
        backend = "faiss" if faiss_available() else "torch"
    candidates = min(n, k_eff + max(8, k_eff) + 1)
    if backend == "faiss":
        cand = _faiss_candidates(queries, base, candidates, metric)
    else:
        cand = _torch_candidates(queries, base, candidates, metric, excl, memory_mb, progress)
    ids, dists = _rerank(queries, base, cand, k_eff, metric, excl)
    return SearchResult(ids, dists, metric, backend)


def _torch_candidates(queries: np.ndarray, base: np.ndarray, kk: int, metric: str, excl: np.ndarray,
                      memory_mb: float, progress: ProgressFn | None) -> np.ndarray:
    import torch

    n, d = base.shape
    q_total = len(queries)
    budget = int(max(0.25, memory_mb) * 1024 * 1024)
    # Half the budget for a base chunk (when it must be copied), half for the (queries x base chunk) scores.
    base_rows = int(max(256, min(n, budget // 2 // (4 * d))))
    query_rows = int(max(1, min(q_total, budget // 2 // (4 * base_rows))))
    q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    if metric == "cosine":
        q_all = torch.nn.functional.normalize(q_all, dim=1)
    best_scores = torch.full((q_total, kk), float("inf"))
    best_ids = torch.full((q_total, kk), -1, dtype=torch.int64)
    excl_t = torch.from_numpy(excl)
    scratch = torch.empty(query_rows * base_rows)  # one score buffer, reused: no allocation per chunk
    with torch.inference_mode():
        for b0 in range(0, n, base_rows):
            b1 = min(n, b0 + base_rows)
            chunk = torch.from_numpy(np.ascontiguousarray(base[b0:b1], dtype=np.float32))
            if metric == "cosine":
                chunk = torch.nn.functional.normalize(chunk, dim=1)
            else:
                sq_norms = torch.linalg.vector_norm(chunk, dim=1).square_()  # ||x||^2 (||q||^2: same for a row)
            for q0 in range(0, q_total, query_rows):
                q1 = min(q_total, q0 + query_rows)
                scores = scratch[:(q1 - q0) * (b1 - b0)].view(q1 - q0, b1 - b0)
                if metric == "cosine":
                    torch.matmul(q_all[q0:q1], chunk.T, out=scores).neg_()
                else:  # ||x||^2 - 2 q.x, in one BLAS call
                    torch.addmm(sq_norms, q_all[q0:q1], chunk.T, beta=1.0, alpha=-2.0, out=scores)
                local = excl_t[q0:q1] - b0
                hit = (local >= 0) & (local < b1 - b0)
                if hit.any():
                    rows = torch.nonzero(hit).flatten()
                    scores[rows, local[rows]] = float("inf")
                take = min(kk, b1 - b0)
                top_scores, top_ids = torch.topk(scores, take, dim=1, largest=False, sorted=False)
                merged_scores = torch.cat([best_scores[q0:q1], top_scores], dim=1)
                merged_ids = torch.cat([best_ids[q0:q1], top_ids + b0], dim=1)
                keep_scores, keep = torch.topk(merged_scores, kk, dim=1, largest=False, sorted=False)
                best_scores[q0:q1] = keep_scores
                best_ids[q0:q1] = torch.gather(merged_ids, 1, keep)
            if progress is not None and n > base_rows:
                progress("search", b1 - b0, n)
    return best_ids.numpy()


def _faiss_candidates(queries: np.ndarray, base: np.ndarray, kk: int, metric: str) -> np.ndarray:
    try:
        import faiss
    except ImportError:
        raise UsageError("the faiss backend needs faiss: pip install faiss-cpu (or 'cnn-explain[faiss]')") from None
    q = np.ascontiguousarray(queries, dtype=np.float32)
    b = np.ascontiguousarray(base, dtype=np.float32)
    if metric == "cosine":
        q, b = _normalise(q).astype(np.float32), _normalise(b).astype(np.float32)
        index = faiss.IndexFlatIP(b.shape[1])
    else:
        index = faiss.IndexFlatL2(b.shape[1])
    index.add(b)
    _, ids = index.search(q, kk)  # the excluded row, if found, is dropped when re-ranking
    return ids.astype(np.int64)


def _rerank(queries: np.ndarray, base: np.ndarray, cand: np.ndarray, k: int, metric: str,
            excl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 distances to the candidates, sorted by (distance, row); excluded and padding rows dropped."""
    q_total = len(queries)
    ids_out = np.empty((q_total, k), dtype=np.int64)
    dist_out = np.empty((q_total, k), dtype=np.float32)
    step = max(1, (64 << 20) // max(1, cand.shape[1] * base.shape[1] * 8))
    for q0 in range(0, q_total, step):
        q1 = min(q_total, q0 + step)
        ids = cand[q0:q1]
        valid = (ids >= 0) & (ids != excl[q0:q1, None])
        safe = np.where(valid, ids, 0)
        gathered = np.asarray(base[safe.ravel()], dtype=np.float64).reshape(*safe.shape, base.shape[1])
        q = np.asarray(queries[q0:q1], dtype=np.float64)
        if metric == "cosine":
            qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-300)
            gn = gathered / np.maximum(np.linalg.norm(gathered, axis=2, keepdims=True), 1e-300)
            dist = 1.0 - np.einsum("qd,qcd->qc", qn, gn)
        else:
            diff = gathered - q[:, None, :]
            dist = np.sqrt(np.einsum("qcd,qcd->qc", diff, diff))
        dist = np.where(valid, dist, np.inf)
        order = np.lexsort((safe, dist), axis=1)[:, :k]
        ids_out[q0:q1] = np.take_along_axis(safe, order, axis=1)
        dist_out[q0:q1] = np.take_along_axis(dist, order, axis=1)
    return ids_out, dist_out


# --------------------------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class PurityReport:
    """Leave-one-out class purity of the labelled gallery.

    Attributes:
        purity: ``{k: mean over queries of the share of the k nearest other images with the query's label}``.
        per_class: ``{label name: {k: purity}}``.
        evaluated: how many labelled images served as queries (and as the gallery).
        unlabelled: images left out for having no label.
        metric: the distance used.
        notes: says at which k some class has fewer than k other members, so that its purity (and the mean)
            cannot reach 1 (:func:`small_class_notes`).
    """

    purity: dict[int, float]
    per_class: dict[str, dict[int, float]]
    evaluated: int
    unlabelled: int
    metric: str
    notes: list[str] = field(default_factory=list)


def small_class_notes(sizes: dict[str, int], ks: Sequence[int], most: int = 5) -> list[str]:
    """A note when some class has fewer than ``k`` *other* members for a ``k`` in ``ks`` (``sizes`` counts each
    class's labelled images): among the k nearest other images at most ``size - 1`` share the query's class, so its
    purity (and the mean) cannot reach 1 at that k. Empty when every class is large enough."""
    ks = sorted(set(ks))
    affected = [k for k in ks if any(n - 1 < k for n in sizes.values())]
    if not affected:
        return []
    short = {name: n - 1 for name, n in sizes.items() if n - 1 < affected[-1]}
    listed = shortlist((f"{name} ({n})" for name, n in short.items()), most)
    classes = "1 class has" if len(short) == 1 else f"{len(short)} classes have"
    return [f"purity at k={', '.join(map(str, affected))} cannot reach 1: {classes} fewer than k other members: "
            f"{listed}"]


def evaluate_purity(index: FeatureIndex, ks: Sequence[int] = (1, 5, 10), metric: str = "l2", *,
                    backend: str = "torch", progress: ProgressFn | None = None) -> PurityReport:
    """Leave-one-out purity: each labelled image queries the other labelled images.

    Raises:
        UsageError: fewer than two labelled images.
    """
    keys = index.label_keys()
    rows = np.array([i for i, key in enumerate(keys) if key is not None], dtype=np.int64)
    if len(rows) < 2:
        raise UsageError("--evaluate needs a labelled gallery (at least two labelled images): build the index with "
                         "--labels CSV or --labels folders")
    feats = index.features[rows]
    k_max = min(max(ks), len(rows) - 1)
    result = search(feats, feats, k_max, metric, exclude=np.arange(len(rows)), backend=backend, progress=progress)
    labels = np.array([keys[i] for i in rows], dtype=object)
    same = labels[result.ids] == labels[:, None]  # (Q, k_max)
    names = {keys[i]: index.entries[i].label_name or keys[i] for i in rows}
    purity: dict[int, float] = {}
    per_class: dict[str, dict[int, float]] = {str(names[key]): {} for key in dict.fromkeys(labels)}
    for k in ks:
        kk = min(k, k_max)
        share = same[:, :kk].mean(axis=1)
        purity[int(k)] = float(share.mean())
        for key in dict.fromkeys(labels):
            per_class[str(names[key])][int(k)] = float(share[labels == key].mean())
    sizes = {str(names[key]): int((labels == key).sum()) for key in dict.fromkeys(labels)}
    notes = small_class_notes(sizes, [min(int(k), k_max) for k in ks])
    return PurityReport(purity, per_class, len(rows), len(keys) - len(rows), metric, notes)

