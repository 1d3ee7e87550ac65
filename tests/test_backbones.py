"""Registry, torchvision loading offline, user checkpoints, preprocessing geometry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from explain import list_backbones, load_backbone
from explain.backbones import get_spec
from explain.backbones.base import Preprocess
from explain.backbones.torchvision_models import TORCHVISION_CLASSIFIERS, cached_weights_path, weights_enum
from explain.errors import ModelError, UnsafeCheckpointError, WeightsUnavailableError


def test_registry_lists_every_torchvision_classifier() -> None:
    import torchvision

    assert set(TORCHVISION_CLASSIFIERS) == set(torchvision.models.list_models(module=torchvision.models))
    names = [s.name for s in list_backbones()]
    assert names[0] == "efficientnet_lite0"
    assert set(TORCHVISION_CLASSIFIERS) <= set(names)


def test_unknown_model_suggests() -> None:
    with pytest.raises(ModelError, match="did you mean: resnet50"):
        get_spec("resnet5O")


def test_embedded_backbone_record(lite0) -> None:
    assert lite0.class_names[282] == "tiger cat" and lite0.num_classes == 1000
    assert lite0.preprocess == Preprocess(256, (224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic")
    assert not lite0.model.training
    assert lite0.model.get_submodule(lite0.default_layer) is not None
    assert lite0.weights_sha256 and len(lite0.weights_sha256) == 64


def test_missing_torchvision_weights_fail_fast_with_file_and_folder() -> None:
    entry = weights_enum("resnet18", "DEFAULT")
    path = cached_weights_path(entry)
    assert not path.exists()
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone("resnet18")
    assert path.name in str(info.value) and str(path.parent) in str(info.value)


def test_unknown_weights_name() -> None:
    with pytest.raises(ModelError, match="IMAGENET1K_V1"):
        load_backbone("resnet18", "IMAGENET1K_V7")


def test_torchvision_weights_from_cache_use_their_transforms(tmp_path: Path) -> None:
    """A weights file in the hub cache loads (weights_only) with the weights' own preprocessing and classes."""
    entry = weights_enum("squeezenet1_1", "IMAGENET1K_V1")
    torch.manual_seed(0)
    model = load_backbone("squeezenet1_1", "none").model
    path = cached_weights_path(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    try:
        bb = load_backbone("squeezenet1_1", "IMAGENET1K_V1")
        t = entry.transforms()
        assert bb.preprocess.resize == t.resize_size[0] and bb.preprocess.crop == (t.crop_size[0],) * 2
        assert bb.preprocess.mean == tuple(t.mean)
        assert bb.class_names == entry.meta["categories"]
        for a, b in zip(bb.model.state_dict().values(), model.state_dict().values()):
            assert torch.equal(a, b)
    finally:
        path.unlink()


def test_random_weights_and_layers_for_many_architectures() -> None:
    for arch in ("resnet18", "densenet121", "mobilenet_v3_small", "googlenet", "shufflenet_v2_x0_5",
                 "mnasnet0_5", "regnet_x_400mf", "squeezenet1_1", "efficientnet_b0"):
        bb = load_backbone(arch, "none")
        modules = dict(bb.model.named_modules())
        assert bb.default_layer in modules and bb.feature_layer in modules, arch
        assert bb.num_classes == 1000 and bb.weights == "none"


@pytest.fixture(scope="module")
def small_state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ckpt")
    model = load_backbone("resnet18", "none", num_classes=7).model
    files = {"plain": root / "plain.pt", "nested": root / "nested.pth", "script": root / "script.pt",
             "pickled": root / "pickled.pt", "module": root / "module.pt", "junk": root / "junk.pt"}
    torch.save(model.state_dict(), files["plain"])
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, files["nested"])
    torch.jit.save(torch.jit.trace(model.eval(), torch.zeros(1, 3, 64, 64)), str(files["script"]))
    torch.save({"payload": _Evil()}, files["pickled"], _use_new_zipfile_serialization=False)
    torch.save(model, files["module"])
    files["junk"].write_bytes(b"this is not a checkpoint")
    files["model"] = model  # type: ignore[assignment]
    return files


class _Evil:
    def __reduce__(self):  # a pickle that would run code when loaded
        return (print, ("pwned",))


def test_state_dict_checkpoint_infers_classes(small_state) -> None:
    bb = load_backbone("resnet18", str(small_state["plain"]))
    assert bb.num_classes == 7 and bb.class_names[0] == "class_0"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(bb.model(x), small_state["model"].eval()(x), atol=1e-5)


def test_nested_and_prefixed_state_dict(small_state) -> None:
    bb = load_backbone("resnet18", str(small_state["nested"]), classes=[f"c{i}" for i in range(7)])
    assert bb.class_names[6] == "c6"


def test_wrong_num_classes_is_one_clear_error(small_state) -> None:
    with pytest.raises(ModelError, match="has 7 classes .*--num-classes 7"):
        load_backbone("resnet18", str(small_state["plain"]), num_classes=5)


def test_checkpoint_for_other_architecture(small_state) -> None:
    with pytest.raises(ModelError, match="does not fit architecture 'mobilenet_v3_small'"):
        load_backbone("mobilenet_v3_small", str(small_state["plain"]))


def test_torchscript_archive(small_state) -> None:
    bb = load_backbone("resnet18", str(small_state["script"]))
    assert bb.num_classes == 7


def test_code_running_pickle_refused(small_state, capsys) -> None:
    with pytest.raises(UnsafeCheckpointError, match="--trust-checkpoint"):
        load_backbone("resnet18", str(small_state["pickled"]))
    with pytest.raises(UnsafeCheckpointError):
        load_backbone("resnet18", str(small_state["module"]))
    assert "pwned" not in capsys.readouterr().out


def test_trusted_pickled_module_loads(small_state) -> None:
    bb = load_backbone("resnet18", str(small_state["module"]), trust_checkpoint=True)
    assert bb.num_classes == 7


def test_junk_and_missing_checkpoints(small_state, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is not a PyTorch checkpoint") as info:
        load_backbone("resnet18", str(small_state["junk"]))
    assert not isinstance(info.value, UnsafeCheckpointError)
    with pytest.raises(ModelError, match="does not exist"):
        load_backbone("resnet18", str(tmp_path / "nope.pt"))


def test_classes_file_must_match(tmp_path: Path, small_state) -> None:
    names = tmp_path / "classes.txt"
    names.write_text("# my classes\ncat\ndog\n\n")
    with pytest.raises(ModelError, match="has 7 classes .*but 2 were asked for"):
        load_backbone("resnet18", str(small_state["plain"]), classes=names)


@pytest.mark.parametrize("size", [(451, 300), (300, 451), (512, 512), (200, 100)])
def test_preprocess_geometry_maps_crop_back(size: tuple[int, int]) -> None:
    """A marker at the centre of the crop box in the original lands at the centre of the model input."""
    pre = Preprocess(256, (224, 224), (0.0,) * 3, (1.0,) * 3, "bilinear")
    w, h = size
    geo = pre.geometry(w, h)
    x0, y0, x1, y1 = geo.crop_box
    assert x1 - x0 == pytest.approx((y1 - y0) * 1.0, rel=0.02)  # square crop in a scaled image
    img = Image.new("RGB", (w, h))
    # paint the crop box's left edge region white: column x0..x0+2% must appear at the model input's left edge
    band = max(2, int(0.05 * (x1 - x0)))
    img.paste((255, 255, 255), (int(round(x0)), 0, int(round(x0)) + band, h))
    t = pre(img)
    assert t.shape == (3, 224, 224)
    col_mean = t[0].mean(0)
    assert col_mean[1:5].mean() > 0.5 and col_mean[-20:].mean() < 0.05
    if x0 > 2:
        assert col_mean[0] > 0.3


@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(451, 300), (300, 451), (97, 200), (640, 427)])
def test_preprocess_equals_torchvision_transform(size: tuple[int, int], interp: str) -> None:
    """Our PIL/NumPy preprocessing is torchvision's ImageClassification, value for value."""
    import numpy as np
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ours = Preprocess(256, (224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), interp)
    theirs = ImageClassification(crop_size=224, resize_size=256, interpolation=InterpolationMode(interp))
    assert torch.allclose(ours(img), theirs(img), atol=1e-6)


def test_imagenet_names_without_importing_torchvision() -> None:
    from torchvision.models import ResNet50_Weights

    from explain.backbones.torchvision_models import imagenet_categories

    assert imagenet_categories() == ResNet50_Weights.IMAGENET1K_V2.meta["categories"]


def test_channels_last_transformer_default_layer_is_channels_first() -> None:
    """Swin's stages are (N, H, W, C): the CAM layer must be the permuted (N, C, H, W) one, not silently wrong."""
    bb = load_backbone("swin_t", "none")
    seen = {}
    handle = bb.model.get_submodule(bb.default_layer).register_forward_hook(lambda m, i, o: seen.update(o=o))
    try:
        with torch.no_grad():
            bb.model(torch.randn(1, 3, 224, 224))
    finally:
        handle.remove()
    assert tuple(seen["o"].shape) == (1, 768, 7, 7)
