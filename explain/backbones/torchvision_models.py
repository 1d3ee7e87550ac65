"""Every torchvision classification architecture, with torchvision weights read offline from the hub cache.

Weights are never downloaded: a torchvision weights name is looked up in torch's hub cache
(``$TORCH_HOME/hub/checkpoints``); when the file is absent, loading fails at once with the file name and the
folder to put it in. The file is read with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from explain.backbones.base import Preprocess
from explain.errors import ModelError, UnsafeCheckpointError, WeightsUnavailableError, suggest

#: torchvision's classification builders (``torchvision.models.list_models(module=torchvision.models)``),
#: kept literal so that listing them needs no torch import; a test checks it against torchvision.
TORCHVISION_CLASSIFIERS: tuple[str, ...] = (
    "alexnet", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny", "densenet121",
    "densenet161", "densenet169", "densenet201", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2",
    "efficientnet_b3", "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
    "efficientnet_v2_l", "efficientnet_v2_m", "efficientnet_v2_s", "googlenet", "inception_v3", "maxvit_t",
    "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3", "mobilenet_v2", "mobilenet_v3_large",
    "mobilenet_v3_small", "regnet_x_16gf", "regnet_x_1_6gf", "regnet_x_32gf", "regnet_x_3_2gf",
    "regnet_x_400mf", "regnet_x_800mf", "regnet_x_8gf", "regnet_y_128gf", "regnet_y_16gf", "regnet_y_1_6gf",
    "regnet_y_32gf", "regnet_y_3_2gf", "regnet_y_400mf", "regnet_y_800mf", "regnet_y_8gf", "resnet101",
    "resnet152", "resnet18", "resnet34", "resnet50", "resnext101_32x8d", "resnext101_64x4d", "resnext50_32x4d",
    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "squeezenet1_0",
    "squeezenet1_1", "swin_b", "swin_s", "swin_t", "swin_v2_b", "swin_v2_s", "swin_v2_t", "vgg11", "vgg11_bn",
    "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "vit_b_16", "vit_b_32", "vit_h_14",
    "vit_l_16", "vit_l_32", "wide_resnet101_2", "wide_resnet50_2",
)

_PATCH_LOCK = threading.Lock()


def hub_checkpoint_dir() -> Path:
    """The folder torchvision weights are cached in (``torch.hub.get_dir()/checkpoints``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_enum(arch: str, name: str) -> Any:
    """The torchvision weights entry ``name`` (e.g. ``IMAGENET1K_V2``, ``DEFAULT``) of ``arch``.

    Raises:
        ModelError: unknown weights name; the message lists the valid ones.
    """
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    key = name.split(".")[-1]
    valid = list(enum.__members__)
    for member in valid:
        if member.lower() == key.lower():
            return enum[member]
    raise ModelError(
        f"unknown weights {name!r} for {arch}{suggest(key, valid)}; valid: {', '.join(valid)}, none, or a file")


def cached_weights_path(weights: Any) -> Path:
    """Where torch's hub cache keeps the file of a torchvision weights entry."""
    return hub_checkpoint_dir() / Path(weights.url).name


def weights_offline(arch: str, name: str = "DEFAULT") -> bool:
    """True if the weights file of ``arch``/``name`` is in the hub cache."""
    try:
        return cached_weights_path(weights_enum(arch, name)).is_file()
    except Exception:  # noqa: BLE001 - availability is a yes/no question
        return False


@contextlib.contextmanager
def _offline_state_dict_loader(path: Path, state: dict[str, Any]) -> Iterator[None]:
    """Make torchvision's builders take ``state`` (already read safely) instead of calling the network.

    The builders call ``load_state_dict_from_url`` from ``torchvision.models._api``; it is swapped for the
    duration of the build only and restored in ``finally``.
    """
    from torchvision.models import _api

    def load(url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if Path(url).name != path.name:
            raise WeightsUnavailableError(f"unexpected weights request {url!r} while building from {path}")
        return state

    with _PATCH_LOCK:
        original = _api.load_state_dict_from_url
        _api.load_state_dict_from_url = load
        try:
            yield
        finally:
            _api.load_state_dict_from_url = original


def build_pretrained(arch: str, weights: Any) -> tuple[Any, Path]:
    """Build ``arch`` with torchvision weights from the local cache (no download ever).

    Raises:
        WeightsUnavailableError: the file is not in the cache.
        ModelError: the cached file is truncated, corrupt, not a checkpoint or would run code.
    """
    from torchvision.models import get_model

    from explain.backbones.checkpoint import read_checkpoint

    path = cached_weights_path(weights)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"weights {arch} {weights.name} are not on this machine and cnn-explain never downloads: put "
            f"{path.name} into {path.parent} (download it from {weights.url}), or use --weights none"
        )
    try:
        state = read_checkpoint(path)
    except UnsafeCheckpointError as exc:
        raise ModelError(f"cached weights file {path} holds Python objects that would run code, so it is not "
                         f"torchvision's download: replace it with {weights.url}") from exc
    except ModelError as exc:
        raise ModelError(f"{exc} (the cached {arch} weights: replace the file with {weights.url})") from exc
    with _offline_state_dict_loader(path, state):
        model = get_model(arch, weights=weights)
    return model, path


def build_untrained(arch: str, num_classes: int, aux: bool = False) -> Any:
    """Build ``arch`` with random initial weights and ``num_classes`` outputs."""
    import warnings

    from torchvision.models import get_model

    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if arch in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=aux, init_weights=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_model(arch, weights=None, **kwargs)


def preprocess_of(weights: Any) -> Preprocess:
    """Our :class:`Preprocess` equal to a torchvision weights entry's own ``transforms()``."""
    t = weights.transforms()
    crop = int(t.crop_size[0])
    resize = int(t.resize_size[0])
    return Preprocess(
        resize=resize,
        crop=(crop, crop),
        mean=tuple(float(v) for v in t.mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in t.std),  # type: ignore[arg-type]
        interpolation=t.interpolation.value,
    )


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names from torchvision's weights metadata (no download).

    They are read from the source of ``torchvision.models._meta`` without importing torchvision (importing it
    costs seconds); if that file is not where expected, torchvision is imported after all.
    """
    import ast
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        meta = Path(folder) / "models" / "_meta.py"
        if meta.is_file():
            for node in ast.parse(meta.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "_IMAGENET_CATEGORIES" for t in node.targets
                ):
                    names = ast.literal_eval(node.value)
                    if len(names) == 1000:
                        return list(names)
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def _last_child(model: Any, path: str) -> str:
    module = model.get_submodule(path)
    names = [n for n, _ in module.named_children()]
    return f"{path}.{names[-1]}" if names else path


def layer_defaults(arch: str, model: Any) -> tuple[str, str]:
    """``(default_layer, feature_layer)`` for a torchvision architecture.

    ``default_layer`` is the output of the last convolutional block (Grad-CAM's usual choice);
    ``feature_layer`` is a module whose output, globally average-pooled when spatial, is the penultimate feature
    vector. DenseNet, MobileNetV2, ShuffleNetV2, MNASNet and SqueezeNet pool functionally, so their feature layer
    is the last convolutional block (for DenseNet that is before its functional ReLU).
    """
    names = {n for n, _ in model.named_modules()}
    if arch.startswith(("resnet", "resnext", "wide_resnet")):
        return "layer4", "avgpool"
    if arch.startswith("vgg"):
        relus = [n for n, m in model.features.named_children() if type(m).__name__ == "ReLU"]
        return f"features.{relus[-1]}", "classifier.4"
    if arch == "alexnet":
        return "features.11", "classifier.5"
    if arch.startswith("densenet"):
        return "features", "features"
    if arch == "googlenet":
        return "inception5b", "avgpool"
    if arch == "inception_v3":
        return "Mixed_7c", "avgpool"
    if arch.startswith("shufflenet"):
        return "conv5", "conv5"
    if arch.startswith("mnasnet"):
        return _last_child(model, "layers"), _last_child(model, "layers")
    if arch.startswith("squeezenet"):
        return "features", "features"
    if arch.startswith("regnet"):
        return "trunk_output", "avgpool"
    if arch.startswith("swin"):
        return "permute", "avgpool"  # `features` is channels-last (N, H, W, C); `permute` makes it (N, C, H, W)
    if arch == "maxvit_t":
        return _last_child(model, "blocks"), "classifier.2"
    if arch.startswith("vit"):
        return "encoder", "encoder"
    # mobilenet, efficientnet, convnext: a `features` sequence then pooling.
    feature = "avgpool" if "avgpool" in names else "features"
    return _last_child(model, "features"), feature
