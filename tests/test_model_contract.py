"""The library's contract with a user's model: every engine leaves it exactly as it found it, even when it fails.

One helper, :func:`snapshot` / :func:`assert_same`, records everything a user could notice about a model and the
process-wide torch state (module tree, hooks of every kind, ``forward`` attributes, ``inplace`` flags, training flags,
parameters bit for bit with their layout, ``requires_grad`` and ``.grad``, buffers including BatchNorm statistics,
grad mode, inference mode, deterministic algorithms, default dtype, the global RNG, the torch-function-mode stack)
and the input tensor (values and version counter, so an in-place write that leaves the same values is caught too).

Every engine of ``explain/`` runs on small torchvision architectures (random weights, 64 px inputs) and the embedded
EfficientNet-Lite0, in an adversarial state: training mode with some sub-modules in eval, a frozen backbone,
``.grad`` tensors present on some parameters and ``None`` on others, and the user's own forward hook, forward
pre-hook and full backward hook registered; the user's hook must still fire exactly once per forward afterwards.
Then the same engines are made to fail part-way: a class out of range, an unknown layer, a model whose forward raises
on its 2nd call, NaN outputs, and ``KeyboardInterrupt`` raised from inside a hook or a progress callback.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64
SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"

# --------------------------------------------------------------------------------------------------------------------
# snapshot / assert_same
# --------------------------------------------------------------------------------------------------------------------

#: Per-module hook dictionaries (forward, pre-forward, backward, state-dict hooks...), whichever this torch has.
_MODULE_HOOK_DICTS = tuple(
    name for name in (
        "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
        "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
        "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
    ) if hasattr(nn.Module(), name)
)
#: Process-wide module hooks.
_GLOBAL_HOOK_DICTS = tuple(
    name for name in (
        "_global_forward_hooks", "_global_forward_hooks_always_called", "_global_forward_pre_hooks",
        "_global_backward_hooks", "_global_backward_pre_hooks", "_global_module_registration_hooks",
        "_global_parameter_registration_hooks", "_global_buffer_registration_hooks",
    ) if hasattr(nn.modules.module, name)
)


def _tensor_state(t: torch.Tensor) -> tuple[Any, ...]:
    hooks = (dict(t._backward_hooks or {}), dict(getattr(t, "_post_accumulate_grad_hooks", None) or {}))
    return (id(t), t.detach().clone(), t.dtype, t.device, tuple(t.stride()), t.requires_grad, hooks)


def _module_state(module: nn.Module) -> dict[str, Any]:
    hooks = {name: dict(getattr(module, name)) for name in _MODULE_HOOK_DICTS}
    return {
        "id": id(module),
        "type": type(module),
        "attributes": {k: (id(v), v if isinstance(v, bool | int | float | str | None) else None)
                       for k, v in vars(module).items()
                       if not k.startswith("_") or k == "_is_full_backward_hook"},
        "forward": module.__dict__.get("forward"),
        "training": module.training,
        "inplace": getattr(module, "inplace", None),
        "hooks": hooks,
        "children": {k: id(v) for k, v in module._modules.items()},
        "parameters": {k: None if v is None else id(v) for k, v in module._parameters.items()},
        "buffers": {k: None if v is None else id(v) for k, v in module._buffers.items()},
        "non_persistent": set(module._non_persistent_buffers_set),
    }


@dataclasses.dataclass
class Snapshot:
    """What :func:`snapshot` records (compared by :func:`assert_same`)."""

    modules: dict[str, dict[str, Any]]
    parameters: dict[str, tuple[Any, ...]]
    grads: dict[str, tuple[Any, ...] | None]
    buffers: dict[str, tuple[Any, ...] | None]
    globals: dict[str, Any]
    inputs: list[tuple[torch.Tensor, int, torch.Tensor]]


def _globals() -> dict[str, Any]:
    return {
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "default_dtype": torch.get_default_dtype(),
        "anomaly": torch.is_anomaly_enabled(),
        "rng": torch.get_rng_state(),
        "function_modes": torch._C._len_torch_function_stack(),
        "threads": torch.get_num_threads(),
        "global_hooks": {name: dict(getattr(nn.modules.module, name)) for name in _GLOBAL_HOOK_DICTS},
    }


def snapshot(model: nn.Module, *inputs: torch.Tensor) -> Snapshot:
    """Everything about ``model``, the process-wide torch state and ``inputs`` that an engine must not change."""
    return Snapshot(
        modules={name: _module_state(m) for name, m in model.named_modules(remove_duplicate=False)},
        parameters={name: _tensor_state(p) for name, p in model.named_parameters(remove_duplicate=False)},
        grads={name: None if p.grad is None else _tensor_state(p.grad)
               for name, p in model.named_parameters(remove_duplicate=False)},
        buffers={name: None if b is None else _tensor_state(b)
                 for name, b in model.named_buffers(remove_duplicate=False)},
        globals=_globals(),
        inputs=[(x, x._version, x.detach().clone()) for x in inputs],
    )


def _same_tensor(what: str, before: tuple[Any, ...], now: tuple[Any, ...]) -> list[str]:
    fields = ("object", "values", "dtype", "device", "stride", "requires_grad", "tensor hooks")
    problems = []
    for field, a, b in zip(fields, before, now, strict=True):
        same = torch.equal(a, b) if field == "values" else a == b
        if field == "values" and same and a.is_floating_point():  # NaN == NaN here: bit-identical means bit-identical
            same = bool(torch.equal(a.isnan(), b.isnan()))
        if not same:
            problems.append(f"{what}: {field} changed")
    return problems


def _compare(before: Snapshot, after: Snapshot) -> list[str]:
    problems: list[str] = []
    if before.modules.keys() != after.modules.keys():
        problems.append(f"module tree changed: {sorted(before.modules.keys() ^ after.modules.keys())[:5]}")
    for name in before.modules.keys() & after.modules.keys():
        a, b = before.modules[name], after.modules[name]
        for key in a:
            if key == "hooks":
                for kind in a[key]:
                    if a[key][kind] != b[key][kind]:
                        problems.append(f"module {name!r}: {kind} {a[key][kind]} -> {b[key][kind]}")
            elif a[key] != b[key]:
                problems.append(f"module {name!r}: {key} {a[key]!r} -> {b[key]!r}")
    for label, old, new in (("parameter", before.parameters, after.parameters), (".grad", before.grads, after.grads),
                            ("buffer", before.buffers, after.buffers)):
        if old.keys() != new.keys():
            problems.append(f"{label} names changed")
            continue
        for name, state in old.items():
            if (state is None) != (new[name] is None):
                problems.append(f"{label} {name!r}: {'None' if state is None else 'a tensor'} -> "
                                f"{'None' if new[name] is None else 'a tensor'}")
            elif state is not None:
                problems += _same_tensor(f"{label} {name!r}", state, new[name])
    for key, value in before.globals.items():
        now = after.globals[key]
        same = torch.equal(value, now) if isinstance(value, torch.Tensor) else value == now
        if not same:
            problems.append(f"global {key}: {value if key != 'rng' else '...'} -> {now if key != 'rng' else '...'}")
    for i, (x, version, values) in enumerate(before.inputs):
        if x._version != version or not torch.equal(x.detach(), values):
            problems.append(f"input {i} modified in place")
    return problems


def assert_same(model: nn.Module, snap: Snapshot) -> None:
    """Fail, listing every difference, unless ``model`` and the torch state are exactly as :func:`snapshot` saw."""
    problems = _compare(snap, snapshot(model, *(x for x, _, _ in snap.inputs)))
    assert not problems, "the model or torch state was changed:\n  " + "\n  ".join(sorted(problems)[:40])


# --------------------------------------------------------------------------------------------------------------------
# Models and the adversarial state
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Spec:
    """A test model: two layers to explain (each runs once, spatial output; the user's hooks go on the first, the
    saboteur on the second) and a head whose output is not modified in place (the user's full backward hook)."""

    name: str
    build: Callable[[], nn.Module]
    layers: tuple[str, str]
    head: str  # a module whose output is not modified in place (a full backward hook goes there)
    classes: int = 10


def _vgg_small() -> nn.Module:
    from torchvision.models.vgg import VGG, make_layers

    model = VGG(make_layers([8, "M", 16, "M"], batch_norm=True), num_classes=10)
    model.avgpool = nn.AdaptiveAvgPool2d(2)
    model.classifier = nn.Sequential(nn.Linear(64, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 10))
    return model


def _densenet_small() -> nn.Module:
    from torchvision.models import DenseNet

    return DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=8, num_classes=10)


class InplaceScale(nn.Module):
    """Normalises its input in place (``x.mul_(2).sub_(1)``), as some hand-written models do: an engine that hands
    the caller's tensor straight to the model lets the model overwrite it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(2.0).sub_(1.0)


def _inplace_input() -> nn.Module:
    return nn.Sequential(InplaceScale(), nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))


def _tv(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=10)

    return build


SPECS = {
    "resnet18": Spec("resnet18", _tv("resnet18"), ("layer3", "layer4"), "fc"),
    "mobilenet_v3_small": Spec("mobilenet_v3_small", _tv("mobilenet_v3_small"), ("features.8", "features.12"),
                               "classifier.3"),
    "densenet": Spec("densenet", _densenet_small, ("features.transition1", "features.denseblock2"), "classifier"),
    "vgg_bn": Spec("vgg_bn", _vgg_small, ("features.4", "features.5"), "classifier.3"),
    "inplace_input": Spec("inplace_input", _inplace_input, ("1", "4"), "8"),
    "squeezenet1_1": Spec("squeezenet1_1", _tv("squeezenet1_1"), ("features.9", "features.12"), "classifier"),
}
#: The embedded EfficientNet-Lite0 (filled in from the session fixture ``lite0``; a deep copy is used per test).
LITE0 = Spec("efficientnet_lite0", lambda: _LITE0_MODEL[0], ("_blocks.10", "_head_act"), "_fc", classes=1000)
_LITE0_MODEL: list[nn.Module] = []


@pytest.fixture(autouse=True)
def _embedded(lite0) -> None:
    if not _LITE0_MODEL:
        _LITE0_MODEL.append(lite0.model)


class UserHooks:
    """The user's own hooks: a counting forward hook and pre-hook on a layer, a full backward hook on the head."""

    def __init__(self, model: nn.Module, layer: str, head: str) -> None:
        self.layer = model.get_submodule(layer)
        self.forward_calls = 0
        self.pre_calls = 0
        self.layer.register_forward_hook(self._forward)
        self.layer.register_forward_pre_hook(self._pre)
        model.get_submodule(head).register_full_backward_hook(lambda *_: None)

    def _forward(self, module: nn.Module, args: Any, output: Any) -> None:
        self.forward_calls += 1

    def _pre(self, module: nn.Module, args: Any) -> None:
        self.pre_calls += 1

    def check_fire_once(self, model: nn.Module) -> None:
        """One forward of the user's model runs each of the user's hooks exactly once."""
        self.forward_calls = self.pre_calls = 0
        flags = [(m, m.training) for m in model.modules()]
        model.eval()  # a forward in train mode would move BatchNorm statistics of the user's model
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, SIZE, SIZE))
        finally:
            for m, flag in flags:
                m.training = flag
        assert (self.forward_calls, self.pre_calls) == (1, 1)


def adversarial_state(model: nn.Module) -> None:
    """Training mode with every other sub-module in eval, the first half of the parameters frozen, ``.grad`` set on
    every third trainable parameter (``None`` elsewhere)."""
    model.train()
    for i, module in enumerate(model.modules()):
        if i % 2:
            module.eval()
    params = list(model.parameters())
    for p in params[: len(params) // 2]:
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    for i, p in enumerate(params[len(params) // 2:]):
        if i % 3 == 0:
            p.grad = torch.randn(p.shape, generator=generator)


@dataclasses.dataclass
class Case:
    spec: Spec
    model: nn.Module
    x: torch.Tensor
    hooks: UserHooks
    backbone: Any = None  # for gallery engines


@functools.cache
def _built(name: str) -> nn.Module:
    torch.manual_seed(0)
    return ALL_SPECS[name].build()


def make_case(name: str, state: Callable[[nn.Module], None] | None = None) -> Case:
    """A fresh copy of model ``name`` in the adversarial state (or ``state``), with the user's hooks and 2 inputs."""
    import copy

    from explain.backbones.base import Backbone, Preprocess

    spec = ALL_SPECS[name]
    model = copy.deepcopy(_built(name))
    (state or adversarial_state)(model)
    hooks = UserHooks(model, spec.layers[0], spec.head)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    backbone = Backbone(name=name, model=model, preprocess=Preprocess(None, (SIZE, SIZE), (0.5,) * 3, (0.5,) * 3),
                        class_names=[f"class {i}" for i in range(spec.classes)], default_layer=spec.layers[1],
                        feature_layer=spec.layers[1], weights="none")
    return Case(spec, model, x, hooks, backbone)


# --------------------------------------------------------------------------------------------------------------------
# The engines, each called in a way that exercises its hooks and passes
# --------------------------------------------------------------------------------------------------------------------


def _cam(method: str) -> Callable[[Case], Any]:
    def run(case: Case) -> Any:
        from explain.cam import compute_cams
        from explain.targets import ClassTarget, TopK

        return compute_cams(case.model, case.x, list(case.spec.layers), [TopK(2), ClassTarget(3)], method)

    return run


def _guided(case: Case) -> Any:
    from explain.guided import guided_backprop
    from explain.targets import ClassTarget, NeuronTarget, TopK

    return guided_backprop(case.model, case.x, [TopK(1), ClassTarget(1), NeuronTarget(case.spec.layers[0], 2)],
                           unit="max")


def _guided_cam(case: Case) -> Any:
    from explain.guided import guided_backprop
    from explain.targets import ClassTarget

    return guided_backprop(case.model, case.x, [ClassTarget(4)], with_cam="gradcam", cam_layers=case.spec.layers[1])


def _deconvnet_unit(case: Case) -> Any:
    from explain.guided import guided_backprop
    from explain.targets import NeuronTarget

    return guided_backprop(case.model, case.x, [NeuronTarget(case.spec.layers[1], 1, 0, 0)], rule="deconvnet")


def _gradient(case: Case) -> Any:
    from explain.saliency import saliency
    from explain.targets import NeuronTarget, TopK

    return saliency(case.model, case.x, [TopK(1), NeuronTarget(case.spec.layers[0], 0)], times_input=True)


def _smoothgrad(case: Case) -> Any:
    from explain.saliency import saliency
    from explain.targets import ClassTarget

    return saliency(case.model, case.x, [ClassTarget(2)], samples=3, batch_size=2)


def _ascent(case: Case, on_step: Callable[..., None] | None = None) -> Any:
    from explain.ascent import AscentConfig, ChannelMean, ClassLogit, Neuron, ascend

    objectives = [ClassLogit(1), ChannelMean(case.spec.layers[0], 0), Neuron(case.spec.layers[1], 1)]
    config = AscentConfig(steps=3, size=SIZE, early_stop=False, snapshots=1)
    return ascend(case.model, objectives, config, on_step=on_step)


def _ascent_pixel(case: Case) -> Any:
    from explain.ascent import AscentConfig, ChannelMean, ascend

    config = AscentConfig(param="pixel", steps=2, size=SIZE, clip_contrib=50, blur_every=1, tv=0.1, l2=0.1)
    return ascend(case.model, [ChannelMean(case.spec.layers[1], 0)], config)


def _feature_maps(case: Case) -> Any:
    from explain.activations import feature_maps, layer_output_shapes

    layer_output_shapes(case.model, list(case.spec.layers), (SIZE, SIZE))
    return feature_maps(case.model, case.x, case.spec.layers[1])


def _erf(case: Case) -> Any:
    from explain.activations import effective_receptive_field
    from explain.targets import NeuronTarget

    return effective_receptive_field(case.model, case.x, NeuronTarget(case.spec.layers[0], 0, 1, 1))


def _layer_table(case: Case) -> Any:
    from explain.layers import layer_table

    return layer_table(case.model, (SIZE, SIZE))


def _filters(case: Case) -> Any:
    from explain.filters import conv_layers, filter_grid

    return [filter_grid(case.model, layer, view=view) for layer in conv_layers(case.model)[:2]
            for view in ("kernels", "norms")]


def _curves(case: Case) -> Any:
    from explain.metrics import deletion_curves, insertion_curves, random_maps

    maps = random_maps((2, SIZE, SIZE), like=(4, 4))
    classes = torch.tensor([0, 7])
    return (deletion_curves(case.model, case.x, maps, classes, steps=4, batch_size=3),
            insertion_curves(case.model, case.x, maps, classes, steps=4, batch_size=3))


def _randomized(case: Case) -> Any:
    from explain.metrics import randomized_model

    return (randomized_model(case.model, 0, calibration=case.x),
            randomized_model(case.model, 1, case.spec.layers[1], scheme="he-identity"))


def _sanity(case: Case) -> Any:
    from explain.metrics import sanity_correlations

    return sanity_correlations(case.model, case.x, case.spec.layers[1], torch.tensor([1, 2]), method="gradcam")


def _cascade(case: Case, on_step: Callable[[], None] | None = None) -> Any:
    from explain.metrics import sanity_cascade

    return sanity_cascade(case.model, case.x, case.spec.layers[1], torch.tensor([1, 2]), methods=("gradcam",),
                          cascade=on_step is not None, on_step=on_step)


def _translation(case: Case) -> Any:
    from explain.metrics import translation_test

    return translation_test(case.model, case.x, case.spec.layers[1], shift=4, method="gradcam")


def _embed(case: Case, progress: Callable[..., None] | None = None) -> Any:
    from explain.gallery import embed_files

    return embed_files(case.backbone, _three_files(), batch_size=2, progress=progress)


def _three_files() -> list[Any]:
    from explain.images import find_images

    return find_images([SAMPLES / "chelsea.png", SAMPLES / "coffee.png", SAMPLES / "rocket.jpg"])[0]


def _predict(case: Case) -> Any:
    from explain.predict import predict
    from explain.run import RunSettings

    return predict(case.backbone, _three_files(), top_k=2, settings=RunSettings(batch_size=2))


def _audit(case: Case, on_batch: Callable[..., None] | None = None) -> Any:
    import shutil
    import tempfile

    from explain.audit import AuditOptions, run_audit
    from explain.run import RunSettings

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        for file in _three_files():
            shutil.copy(file.path, root / file.path.name)
        labels = Path(tmp) / "labels.csv"
        labels.write_text("path,class_name\nchelsea.png,class 1\ncoffee.png,class 2\nrocket.jpg,class 3\n")
        opts = AuditOptions(labels=labels, sanity=2, shift=4, steps=2, worst=1, cascade=False)
        return run_audit(case.backbone, root, opts, Path(tmp) / "out", RunSettings(batch_size=2, on_batch=on_batch))


ENGINES: dict[str, Callable[[Case], Any]] = {
    "gradcam": _cam("gradcam"), "gradcam++": _cam("gradcam++"), "guided": _guided, "guided-gradcam": _guided_cam,
    "deconvnet-unit": _deconvnet_unit, "gradient": _gradient, "smoothgrad": _smoothgrad, "ascent": _ascent,
    "ascent-pixel": _ascent_pixel, "feature-maps": _feature_maps, "erf": _erf, "layer-table": _layer_table,
    "filters": _filters, "deletion-insertion": _curves, "randomized-model": _randomized, "sanity": _sanity,
    "cascade": _cascade, "translation": _translation, "embed": _embed, "predict": _predict, "audit": _audit,
}
#: Engines that every architecture runs; the rest run on two architectures (they differ little between models).
_EVERY_MODEL = ("gradcam++", "guided", "guided-gradcam", "smoothgrad", "ascent", "erf", "layer-table", "embed")
_TWO_MODELS = ("resnet18", "densenet", "inplace_input")
ALL_SPECS = {**SPECS, LITE0.name: LITE0}

MATRIX = [(m, e) for m in ALL_SPECS for e in ENGINES if e in _EVERY_MODEL or m in _TWO_MODELS]


# --------------------------------------------------------------------------------------------------------------------
# The helper itself can fail (every kind of change is caught)
# --------------------------------------------------------------------------------------------------------------------


def _tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 2))


_CHANGES: dict[str, Callable[[nn.Sequential, torch.Tensor], Any]] = {
    "hook": lambda m, x: m[0].register_forward_hook(lambda *a: None),
    "global hook": lambda m, x: nn.modules.module.register_module_forward_hook(lambda *a: None),
    "pre hook": lambda m, x: m[1].register_forward_pre_hook(lambda *a: None),
    "backward hook": lambda m, x: m[3].register_full_backward_hook(lambda *a: None),
    "swapped module": lambda m, x: m.__setitem__(2, nn.ReLU(inplace=True)),
    "patched forward": lambda m, x: setattr(m[2], "forward", m[2].forward),
    "inplace": lambda m, x: setattr(m[2], "inplace", False),
    "training": lambda m, x: m[1].eval(),
    "parameter": lambda m, x: m[0].weight.data.view(-1)[0].add_(1e-7),
    "parameter object": lambda m, x: setattr(m[0], "weight", nn.Parameter(m[0].weight.detach().clone())),
    "layout": lambda m, x: setattr(m[0].weight, "data", m[0].weight.data.contiguous(memory_format=torch.channels_last)),
    "requires_grad": lambda m, x: m[4].bias.requires_grad_(False),
    "tensor hook": lambda m, x: m[4].weight.register_hook(lambda g: g),
    "grad set": lambda m, x: setattr(m[4].bias, "grad", torch.zeros(2)),
    "grad values": lambda m, x: m[0].weight.grad.add_(1),
    "grad object": lambda m, x: setattr(m[0].weight, "grad", m[0].weight.grad.clone()),
    "running stats": lambda m, x: m[1].num_batches_tracked.add_(1),
    "grad mode": lambda m, x: torch.set_grad_enabled(False),
    "deterministic": lambda m, x: torch.use_deterministic_algorithms(True),
    "default dtype": lambda m, x: torch.set_default_dtype(torch.float64),
    "rng": lambda m, x: torch.rand(1),
    "input values": lambda m, x: x.mul_(2),
    "input version": lambda m, x: x.mul_(1),
}


@pytest.mark.parametrize("change", list(_CHANGES))
def test_snapshot_catches(change: str) -> None:
    model = _tiny()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    x = torch.randn(1, 3, 8, 8)
    snap = snapshot(model, x)
    assert_same(model, snap)  # nothing happened yet
    det, dtype = torch.are_deterministic_algorithms_enabled(), torch.get_default_dtype()
    handle = None
    try:
        handle = _CHANGES[change](model, x)
        with pytest.raises(AssertionError, match="changed"):
            assert_same(model, snap)
    finally:
        torch.set_grad_enabled(True)
        torch.use_deterministic_algorithms(det)
        torch.set_default_dtype(dtype)
        if isinstance(handle, torch.utils.hooks.RemovableHandle):
            handle.remove()


# --------------------------------------------------------------------------------------------------------------------
# Every engine, every architecture: success
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model_name", "engine"), MATRIX, ids=[f"{m}-{e}" for m, e in MATRIX])
def test_engine_leaves_model_as_found(model_name: str, engine: str) -> None:
    case = make_case(model_name)
    snap = snapshot(case.model, case.x)
    ENGINES[engine](case)
    assert_same(case.model, snap)
    case.hooks.check_fire_once(case.model)


def test_loaders_leave_the_global_random_state_alone(samples: Path) -> None:
    """DataLoaders draw a base seed from the global generator unless given their own: the image loader must not."""
    from explain.backbones.base import Preprocess
    from explain.data import iter_batches
    from explain.images import find_images

    files, _ = find_images([samples / "chelsea.png", samples / "coffee.png"])
    before = torch.get_rng_state()
    batches = list(iter_batches(files, Preprocess(None, (SIZE, SIZE), (0.5,) * 3, (0.5,) * 3), batch_size=1))
    assert len(batches) == 2
    assert torch.equal(torch.get_rng_state(), before)


# --------------------------------------------------------------------------------------------------------------------
# Every engine: failure part-way
# --------------------------------------------------------------------------------------------------------------------


class Saboteur:
    """The user's forward hook on ``layer`` that, on its ``call``-th call only, raises ``error`` or returns NaNs."""

    def __init__(self, module: nn.Module, call: int, error: type[BaseException] | None) -> None:
        self.call, self.error, self.calls, self.fired = call, error, 0, False
        module.register_forward_hook(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> Saboteur:
        # randomized_model deep-copies the model with its hooks (rightly: a hook can be part of what the model
        # computes, e.g. spectral_norm's pre-hook); the copy's hook is this very saboteur, counting every call.
        return self

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        self.calls += 1
        if self.calls != self.call:
            return None
        self.fired = True
        if self.error is None:
            return output * float("nan")
        raise self.error("sabotage")


FAULTS = {"raise-1st": (1, RuntimeError), "raise-2nd": (2, RuntimeError), "nan": (1, None),
          "interrupt-1st": (1, KeyboardInterrupt), "interrupt-3rd": (3, KeyboardInterrupt)}
_FAULT_ENGINES = [e for e in ENGINES if e not in ("filters",)]  # filters never runs the model
FAULT_MATRIX = [(e, f) for e in _FAULT_ENGINES for f in FAULTS]


@pytest.mark.parametrize(("engine", "fault"), FAULT_MATRIX, ids=[f"{e}-{f}" for e, f in FAULT_MATRIX])
def test_engine_failing_part_way_leaves_model_as_found(engine: str, fault: str) -> None:
    """Mid-forward (after the first tapped layer ran and grad mode was switched on), on the 1st, 2nd or 3rd pass."""
    case = make_case("resnet18")
    call, error = FAULTS[fault]
    saboteur = Saboteur(case.model.get_submodule(case.spec.layers[1]), call, error)
    snap = snapshot(case.model, case.x)
    try:
        ENGINES[engine](case)
    except KeyboardInterrupt:
        assert saboteur.fired and error is KeyboardInterrupt  # never swallowed, never made up
    except Exception:  # noqa: BLE001 - any error will do; the state is what is tested
        assert saboteur.fired
    assert_same(case.model, snap)
    saboteur.call = 0  # disarmed: only the user's counting hooks matter from here
    case.hooks.check_fire_once(case.model)


def _bad_class(case: Case) -> list[Callable[[], Any]]:
    from explain.ascent import AscentConfig, ClassLogit, ascend
    from explain.cam import compute_cams
    from explain.guided import guided_backprop
    from explain.metrics import deletion_curves, sanity_correlations
    from explain.saliency import saliency
    from explain.targets import ClassTarget

    m, x, bad = case.model, case.x, [ClassTarget(10)]
    return [
        lambda: compute_cams(m, x, case.spec.layers[1], bad),
        lambda: guided_backprop(m, x, bad),
        lambda: guided_backprop(m, x, bad, with_cam="gradcam++", cam_layers=case.spec.layers[1]),
        lambda: saliency(m, x, bad),
        lambda: saliency(m, x, bad, samples=2),
        lambda: ascend(m, [ClassLogit(10)], AscentConfig(steps=2, size=SIZE)),
        lambda: deletion_curves(m, x, torch.ones(2, SIZE, SIZE), torch.tensor([0, 10]), steps=2),
        lambda: sanity_correlations(m, x, case.spec.layers[1], torch.tensor([0, 10])),
    ]


def _bad_layer(case: Case) -> list[Callable[[], Any]]:
    from explain.activations import effective_receptive_field, feature_maps
    from explain.ascent import AscentConfig, ChannelMean, ascend
    from explain.cam import compute_cams
    from explain.filters import filter_grid
    from explain.guided import guided_backprop
    from explain.metrics import randomized_model
    from explain.saliency import saliency
    from explain.targets import ClassTarget, NeuronTarget

    m, x, good = case.model, case.x, case.spec.layers[1]
    return [
        lambda: compute_cams(m, x, [good, "layer9"], [ClassTarget(1)]),
        lambda: compute_cams(m, x, good, [NeuronTarget("layer9", 0)]),
        lambda: compute_cams(m, x, "layer4.0.relu", [ClassTarget(1)]),  # a shared ReLU: runs more than once
        lambda: compute_cams(m, x, "layer4", [NeuronTarget("layer3", 0)]),  # neuron before the layer
        lambda: compute_cams(m, x, "avgpool", [ClassTarget(1)]),  # a 1 x 1 map: explained or refused, either way
        lambda: compute_cams(m, x, "fc", [ClassTarget(1)]),  # not (N, C, H, W)
        lambda: guided_backprop(m, x, [NeuronTarget("layer9", 0)]),
        lambda: guided_backprop(m, x, [NeuronTarget(good, 999)]),
        lambda: guided_backprop(m, x, [ClassTarget(1)], with_cam="gradcam", cam_layers="fc"),
        lambda: saliency(m, x, [NeuronTarget("layer4.0.relu", 0)], samples=2),
        lambda: ascend(m, [ChannelMean("layer9", 0)], AscentConfig(steps=2, size=SIZE)),
        lambda: ascend(m, [ChannelMean(good, 9999)], AscentConfig(steps=2, size=SIZE)),
        lambda: feature_maps(m, x, "fc"),
        lambda: effective_receptive_field(m, x, NeuronTarget(good, 0, 99, 99)),
        lambda: randomized_model(m, cascade_from="layer9"),
        lambda: filter_grid(m, "layer9"),
        lambda: filter_grid(m, "fc"),
    ]


@pytest.mark.parametrize("kind", ["class", "layer"])
def test_bad_requests_leave_model_as_found(kind: str) -> None:
    from explain.errors import LayerError, TargetError, UsageError

    case = make_case("resnet18")
    snap = snapshot(case.model, case.x)
    for i, call in enumerate((_bad_class if kind == "class" else _bad_layer)(case)):
        try:
            call()
        except (LayerError, TargetError, UsageError, RuntimeError, IndexError):
            pass
        problems = _compare(snap, snapshot(case.model, case.x))
        assert not problems, f"request {i}: {problems}"
    case.hooks.check_fire_once(case.model)


@pytest.mark.parametrize("engine", ["ascent", "cascade", "embed", "audit"])
def test_interrupt_from_progress_callback(engine: str) -> None:
    case = make_case("resnet18")
    calls = []

    def interrupt(*_: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    snap = snapshot(case.model, case.x)
    with pytest.raises(KeyboardInterrupt):
        {"ascent": _ascent, "cascade": _cascade, "embed": _embed, "audit": _audit}[engine](case, interrupt)
    assert_same(case.model, snap)
    case.hooks.check_fire_once(case.model)


CALLER_MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
MODE_MATRIX = [(e, m) for e in ENGINES for m in CALLER_MODES]


@pytest.mark.parametrize(("engine", "mode"), MODE_MATRIX, ids=[f"{e}-{m}" for e, m in MODE_MATRIX])
def test_engine_under_callers_grad_mode(engine: str, mode: str) -> None:
    """A caller inside ``torch.no_grad()`` or ``torch.inference_mode()`` gets a result and keeps that mode."""
    case = make_case("inplace_input")
    snap = snapshot(case.model, case.x)
    with CALLER_MODES[mode]():
        inner = _globals()
        ENGINES[engine](case)
        assert _globals()["grad_enabled"] is False
        assert _globals()["inference_mode"] == inner["inference_mode"]
    assert_same(case.model, snap)


GUIDED_FAULTS = [(m, e, f) for m in ("densenet", "mobilenet_v3_small")
                 for e in ("guided", "guided-gradcam", "smoothgrad")
                 for f in ("raise-1st" if e == "guided" else "raise-2nd", "interrupt-1st")]


@pytest.mark.parametrize(("model_name", "engine", "fault"), GUIDED_FAULTS,
                         ids=[f"{m}-{e}-{f}" for m, e, f in GUIDED_FAULTS])
def test_guided_rectifiers_gone_after_failure(model_name: str, engine: str, fault: str) -> None:
    """Functional ``F.relu`` (DenseNet) and Hardswish/squeeze-excite (MobileNetV3) go through the rectifier mode;
    a failure inside it must pop the mode and remove its hooks."""
    case = make_case(model_name)
    call, error = FAULTS[fault]
    saboteur = Saboteur(case.model.get_submodule(case.spec.layers[1]), call, error)
    snap = snapshot(case.model, case.x)
    with pytest.raises(error):
        ENGINES[engine](case)
    assert saboteur.fired
    assert_same(case.model, snap)


def _eval(model: nn.Module) -> None:
    model.eval()


def _train(model: nn.Module) -> None:
    model.train()


def _frozen(model: nn.Module) -> None:
    model.eval().requires_grad_(False)


STATES = {"eval": _eval, "train": _train, "frozen": _frozen}
STATE_MATRIX = [(s, e) for s in STATES for e in ("gradcam++", "guided", "smoothgrad", "ascent", "erf", "sanity")]


@pytest.mark.parametrize(("state", "engine"), STATE_MATRIX, ids=[f"{s}-{e}" for s, e in STATE_MATRIX])
def test_embedded_model_in_every_state(state: str, engine: str) -> None:
    """EfficientNet-Lite0 (ReLU6, TF-same padding) plain in eval, in train mode and frozen, with a user's global
    forward hook registered for the duration."""
    calls = []
    handle = nn.modules.module.register_module_forward_hook(lambda *a: calls.append(1))
    try:
        case = make_case("efficientnet_lite0", STATES[state])
        snap = snapshot(case.model, case.x)
        ENGINES[engine](case)
        assert_same(case.model, snap)
        case.hooks.check_fire_once(case.model)
        assert calls  # the user's global hook saw the engine's passes and is still there
    finally:
        handle.remove()


def test_real_images_on_the_loaded_embedded_model(lite0: Any, samples: Path) -> None:
    """The session's own EfficientNet-Lite0, real photos at 224 px: every gradient engine leaves it as loaded."""
    from explain.cam import compute_cams
    from explain.guided import guided_backprop
    from explain.images import load_image
    from explain.saliency import saliency
    from explain.targets import TopK

    x = torch.stack([lite0.preprocess(load_image(samples / name).image) for name in ("chelsea.png", "coffee.png")])
    model = lite0.model
    snap = snapshot(model, x)
    cams = compute_cams(model, x, lite0.default_layer, [TopK(1)])
    guided = guided_backprop(model, x, [TopK(1)], with_cam="gradcam++", cam_layers=lite0.default_layer)
    smooth = saliency(model, x, [TopK(1)], samples=2)
    assert_same(model, snap)
    # and the results are real: the same top class for every engine, finite non-trivial maps
    top = [m.target.index for m in cams.maps]
    assert [m.target.index for m in guided.maps] == top == [m.target.index for m in smooth.maps]
    assert all(np.isfinite(m.gradient).all() and np.abs(m.gradient).max() > 0 for m in guided.maps)
    assert all(m.map.max() == 1.0 for m in cams.maps)


def _channels_last_grad(model: nn.Module) -> None:
    """Eval mode, contiguous parameters, but one ``.grad`` in the channels-last layout (as a channels-last
    training step can leave it)."""
    model.eval()
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    conv.weight.grad = torch.ones_like(conv.weight).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("engine", ["guided", "gradient", "embed"])
def test_channels_last_round_trip_keeps_gradient_layout(engine: str) -> None:
    """Engines that run the model in channels-last and convert it back must not re-lay-out a ``.grad``."""
    case = make_case("resnet18", _channels_last_grad)
    snap = snapshot(case.model, case.x)
    ENGINES[engine](case)
    assert_same(case.model, snap)
