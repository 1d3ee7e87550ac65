"""Guided backpropagation: hand-derived values, every kind of rectifier, real torchvision models, model state."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from explain.errors import LayerError, TargetError, UsageError
from explain.guided import GuidedRectifiers, guided_backprop
from explain.hooks import prefers_channels_last
from explain.saliency import saliency
from explain.targets import ClassTarget, NeuronTarget, TopK


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------------------------
# Hand-derived values
# --------------------------------------------------------------------------------------------------------------------

W1 = [[1.0, -1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, -2.0]]


def mlp(act: nn.Module, w2: list[list[float]]) -> nn.Module:
    """x (3 inputs, as a 3x1x1 image) -> W1 -> act -> W2 (no biases)."""
    first, second = nn.Linear(3, 3, bias=False), nn.Linear(3, len(w2), bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor(W1))
        second.weight.copy_(torch.tensor(w2))
    return nn.Sequential(nn.Flatten(), first, act, second).eval()


def image(values: list[float]) -> torch.Tensor:
    return torch.tensor(values).view(1, -1, 1, 1)


def grad_of(result) -> list[float]:
    return result.maps[0].gradient.ravel().tolist()


def test_linear_relu_linear_by_hand() -> None:
    # x = (1, 2, -1): pre-activations W1 x = (-1, 1, 5), so the ReLU passes units 1 and 2.
    # Class 0 has output weights (1, -2, 3):
    #   plain      dY/dh = (0, -2, 3)               dY/dx = W1^T (0, -2, 3) = (3, 1, -8)
    #   guided     dY/dh = (0, 0, 3)  (-2 blocked)  dY/dx = (3, 3, -6)
    #   deconvnet  dY/dh = (1, 0, 3)  (sign only)   dY/dx = (4, 2, -6)
    model = mlp(nn.ReLU(), [[1.0, -2.0, 3.0], [0.0, 1.0, -1.0]])
    x = image([1.0, 2.0, -1.0])
    assert grad_of(saliency(model, x, [ClassTarget(0)])) == [3.0, 1.0, -8.0]
    assert grad_of(guided_backprop(model, x, [ClassTarget(0)])) == [3.0, 3.0, -6.0]
    assert grad_of(guided_backprop(model, x, [ClassTarget(0)], rule="deconvnet")) == [4.0, 2.0, -6.0]


def test_relu6_blocks_values_above_six_by_hand() -> None:
    # x = (2, 4, -2): pre-activations (-2, 2, 10). Class 0 weights (1, 2, 3), all positive.
    #   ReLU:  passes units 1, 2   dY/dx = 2 (0, 1, 1) + 3 (1, 1, -2) = (3, 5, -4)
    #   ReLU6: 10 > 6 is blocked   dY/dx = 2 (0, 1, 1)                = (0, 2, 2)
    x = image([2.0, 4.0, -2.0])
    w2 = [[1.0, 2.0, 3.0]]
    assert grad_of(guided_backprop(mlp(nn.ReLU(), w2), x, [ClassTarget(0)])) == [3.0, 5.0, -4.0]
    result = guided_backprop(mlp(nn.ReLU6(), w2), x, [ClassTarget(0)])
    assert grad_of(result) == [0.0, 2.0, 2.0]
    assert result.rectifiers == {"nn.ReLU": 0, "nn.ReLU6": 1, "functional relu": 0, "functional relu6": 0}


class Conv1x2(nn.Module):
    """A 1x4 image, a 1x2 convolution with kernel (1, -1), ReLU, and a linear score (-1, 2, 1) over 3 positions."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, (1, 2), bias=False)
        self.head = nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[[1.0, -1.0]]]]))
            self.head.weight.copy_(torch.tensor([[-1.0, 2.0, 1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


def test_conv_net_by_hand() -> None:
    # x = (3, 1, 2, 5): conv gives (2, -1, -3), ReLU passes position 0 only; dY/dh = (-1, 2, 1).
    #   plain      (-1, 0, 0) -> dY/dx = (-1, 1, 0, 0)
    #   guided     (0, 0, 0)  -> all zero: the only open unit has a negative gradient
    #   deconvnet  (0, 2, 1)  -> dY/dx = (0, 2, -1, -1)
    model = Conv1x2().eval()
    x = torch.tensor([3.0, 1.0, 2.0, 5.0]).view(1, 1, 1, 4)
    assert grad_of(saliency(model, x, [ClassTarget(0)])) == [-1.0, 1.0, 0.0, 0.0]
    guided = guided_backprop(model, x, [ClassTarget(0)])
    assert grad_of(guided) == [0.0, 0.0, 0.0, 0.0]
    assert guided.rectifiers["functional relu"] == 1
    assert grad_of(guided_backprop(model, x, [ClassTarget(0)], rule="deconvnet")) == [0.0, 2.0, -1.0, -1.0]


# --------------------------------------------------------------------------------------------------------------------
# Every kind of rectifier, against an independent reference
# --------------------------------------------------------------------------------------------------------------------


def reference_relu(x: torch.Tensor, upper: float | None = None) -> torch.Tensor:
    """Independent guided rectifier: the ordinary op (its backward applies the forward mask) with a hook on its
    output that keeps only positive incoming gradients. Out of place on purpose."""
    y = torch.clamp(x, min=0.0) if upper is None else torch.clamp(x, 0.0, upper)
    if y.requires_grad:
        y.register_hook(lambda g: g.clamp(min=0))
    return y


KINDS = {
    # name: (how the net calls its rectifier, upper bound, expected count key)
    "nn.ReLU": ("module", nn.ReLU, None, "nn.ReLU"),
    "nn.ReLU(inplace)": ("module", lambda: nn.ReLU(inplace=True), None, "nn.ReLU"),
    "nn.ReLU6": ("module", nn.ReLU6, 6.0, "nn.ReLU6"),
    "nn.ReLU6(inplace)": ("module", lambda: nn.ReLU6(inplace=True), 6.0, "nn.ReLU6"),
    "F.relu": ("func", F.relu, None, "functional relu"),
    "F.relu(inplace)": ("func", lambda t: F.relu(t, inplace=True), None, "functional relu"),
    "torch.relu": ("func", torch.relu, None, "functional relu"),
    "torch.relu_": ("func", torch.relu_, None, "functional relu"),
    "F.relu_": ("func", F.relu_, None, "functional relu"),
    "Tensor.relu": ("func", lambda t: t.relu(), None, "functional relu"),
    "Tensor.relu_": ("func", lambda t: t.relu_(), None, "functional relu"),
    "F.relu6": ("func", F.relu6, 6.0, "functional relu6"),
    "F.relu6(inplace)": ("func", lambda t: F.relu6(t, inplace=True), 6.0, "functional relu6"),
    "F.hardtanh(0, 6)": ("func", lambda t: F.hardtanh(t, 0.0, 6.0), 6.0, "functional relu6"),
    "F.hardtanh_(0, 6)": ("func", lambda t: F.hardtanh_(t, 0.0, 6.0), 6.0, "functional relu6"),
}


class SmallNet(nn.Module):
    """conv -> act -> conv -> act (the same module object reused for module kinds) -> act on a slice -> pool -> fc.

    The last rectifier is applied to a channel slice (a view) so that in-place variants write through a view.
    """

    def __init__(self, kind: str, reference: bool = False) -> None:
        super().__init__()
        how, make, self.upper, _ = KINDS[kind]
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)
        self.reference = reference
        self.how = how
        if how == "module":
            self.act = make()  # one module, used three times
        else:
            self.func = make

    def rectify(self, x: torch.Tensor) -> torch.Tensor:
        if self.reference:
            return reference_relu(x, self.upper)
        return self.act(x) if self.how == "module" else self.func(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.rectify(self.conv1(x) * 4.0)  # x4: plenty of values above 6 for the ReLU6 kinds
        h = self.rectify(self.conv2(h)) - 0.1
        head = self.rectify(h[:, :3])  # a view: in-place kinds write through it into h
        h = torch.cat([head, h[:, 3:]], 1)
        return self.fc(h.mean((2, 3)))


def reference_gradient(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xr)[:, target].sum(), xr)
    return g


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_rectifier_kind_matches_the_reference(kind: str) -> None:
    torch.manual_seed(0)
    net = SmallNet(kind).eval()
    ref = SmallNet(kind, reference=True).eval()
    ref.load_state_dict(net.state_dict(), strict=False)
    x = torch.randn(2, 3, 8, 8)
    result = guided_backprop(net, x, [ClassTarget(1)])
    got = np.stack([m.gradient for m in result.maps])
    expected = reference_gradient(ref, x, 1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    plain = np.stack([m.gradient for m in saliency(net, x, [ClassTarget(1)]).maps])
    assert not np.allclose(got, plain), "the guided rule changed nothing: the test would not catch a missed rectifier"
    key = KINDS[kind][3]
    assert result.rectifiers[key] == 3 and sum(result.rectifiers.values()) == 3, result.rectifiers
    assert not result.warnings
    if KINDS[kind][2] == 6.0:  # values above 6 were present, and blocked
        with torch.no_grad():
            assert (net.conv1(x) * 4.0).max() > 6.0


def test_other_hardtanh_is_not_a_rectifier() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Hardtanh(-1.0, 1.0), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 6, 6))
    model.eval()
    x = torch.randn(1, 3, 6, 6)
    result = guided_backprop(model, x, [ClassTarget(0)])
    assert sum(result.rectifiers.values()) == 0
    assert result.warnings and "no rectifier" in result.warnings[0]
    np.testing.assert_array_equal(result.maps[0].gradient, saliency(model, x, [ClassTarget(0)]).maps[0].gradient)


def test_other_activations_are_reported_as_unguided() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Hardswish(),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).eval()
    result = guided_backprop(model, torch.randn(1, 3, 8, 8), [ClassTarget(0)])
    assert result.rectifiers["nn.ReLU"] == 1
    assert result.unguided == {"hardswish": 1, "silu": 1}
    assert len(result.warnings) == 1 and "hardswish 1, silu 1" in result.warnings[0]


def test_clipped_rectifier_module_is_guided() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Hardtanh(0.0, 0.5), nn.Flatten(), nn.Linear(4 * 16, 2)).eval()
    result = guided_backprop(model, torch.randn(1, 3, 6, 6), [ClassTarget(0)])
    assert result.rectifiers["nn.Hardtanh(0, 0.5)"] == 1


# --------------------------------------------------------------------------------------------------------------------
# Real models: functional ReLU (DenseNet, GoogLeNet), reused in-place ReLU (ResNet), ReLU6 (embedded)
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def reference_rectifiers(monkeypatch: pytest.MonkeyPatch):
    """Swap F.relu / F.relu6 / F.hardtanh(0, M) for the hook-based reference (modules call these too)."""
    original_hardtanh = F.hardtanh

    def relu(x, inplace=False):
        return reference_relu(x)

    def relu6(x, inplace=False):
        return reference_relu(x, 6.0)

    def hardtanh(x, min_val=-1.0, max_val=1.0, inplace=False):
        if min_val == 0.0:
            return reference_relu(x, max_val)
        return original_hardtanh(x, min_val, max_val, inplace)

    monkeypatch.setattr(F, "relu", relu)
    monkeypatch.setattr(F, "relu6", relu6)
    monkeypatch.setattr(F, "hardtanh", hardtanh)


def torchvision_model(name: str) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    extra = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return getattr(torchvision.models, name)(weights=None, **extra).eval()


CASES = {
    # name: (input size, expected counts of the main kinds)
    "densenet121": (32, {"nn.ReLU": 120, "functional relu": 1}),
    "googlenet": (64, {"nn.ReLU": 0, "functional relu": 57}),
    "resnet18": (64, {"nn.ReLU": 17, "functional relu": 0}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_torchvision_models_match_the_reference(name: str, request: pytest.FixtureRequest) -> None:
    size, counts = CASES[name]
    model = torchvision_model(name)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    result = guided_backprop(model, x, [TopK(1)])
    for key, value in counts.items():
        assert result.rectifiers[key] == value, result.rectifiers
    got = np.stack([m.gradient for m in result.maps])
    plain = np.stack([m.gradient for m in saliency(model, x, [TopK(1)]).maps])
    classes = [m.target.index for m in result.maps]
    captum = None
    if name == "densenet121":  # captum guides nn.ReLU modules only and misses DenseNet's final F.relu
        from captum.attr import GuidedBackprop

        captum = GuidedBackprop(model).attribute(x[:1].clone(), target=classes[0]).detach().numpy()[0]
    request.getfixturevalue("reference_rectifiers")
    expected = np.stack([reference_gradient(model, x[i:i + 1], c).numpy()[0] for i, c in enumerate(classes)])
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)
    assert np.abs(got - plain).max() > 0.1 * scale  # guided differs from the plain gradient
    if captum is not None:
        assert np.abs(captum - got[0]).max() > 1e-2 * scale


def test_embedded_model_relu6_matches_the_reference(lite0) -> None:
    model = lite0.model
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    result = guided_backprop(model, x, [ClassTarget(282)])
    assert result.rectifiers == {"nn.ReLU": 0, "nn.ReLU6": 33, "functional relu": 0, "functional relu6": 0}
    plain = saliency(model, x, [ClassTarget(282)]).maps[0].gradient
    got = result.maps[0].gradient
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "hardtanh", lambda t, min_val=-1.0, max_val=1.0, inplace=False: reference_relu(t, max_val))
        expected = reference_gradient(model, x, 282).numpy()[0]
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)
    assert np.abs(got - plain).max() > 0.1 * scale


def test_unit_gradient_lives_exactly_in_its_receptive_field(lite0) -> None:
    from explain.layers import receptive_field

    model = lite0.model
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    info = receptive_field(model, "_blocks.3", (224, 224))
    y, x_ = 10, 12
    x0, y0, x1, y1 = (int(v) for v in info.unit_box(y, x_, clip_to=(224, 224)))
    g = np.abs(guided_backprop(model, x, [NeuronTarget("_blocks.3", 5, y, x_)]).maps[0].gradient).max(0)
    inside = np.zeros_like(g, dtype=bool)
    inside[y0:y1, x0:x1] = True
    assert (y1 - y0, x1 - x0) == info.receptive_field
    assert np.all(g[~inside] == 0.0)
    assert np.count_nonzero(g[inside]) > 0.9 * inside.sum()
    rows, cols = np.nonzero(g)
    assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (x0, y0, x1, y1)  # the box is tight


# --------------------------------------------------------------------------------------------------------------------
# Targets and batches
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return SmallNet("nn.ReLU(inplace)").eval()


def test_batch_equals_per_image(net: nn.Module) -> None:
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    targets = [TopK(2), NeuronTarget("conv2", 1), NeuronTarget("conv2", 2, 3, 4)]
    batch = guided_backprop(net, x, targets)
    for i in range(3):
        alone = guided_backprop(net, x[i:i + 1], targets)
        for a, b in zip(batch.for_image(i), alone.maps, strict=True):
            assert a.target == b.target and a.rank == b.rank
            np.testing.assert_allclose(a.gradient, b.gradient, rtol=1e-5, atol=1e-7)
            assert a.score == pytest.approx(b.score, rel=1e-5)


def test_several_targets_equal_one_per_target(net: nn.Module) -> None:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    targets = [ClassTarget(3), TopK(1), NeuronTarget("conv1", 0), NeuronTarget("conv2", 4, 2, 2)]
    together = guided_backprop(net, x, targets)
    for t, target in enumerate(targets):
        single = guided_backprop(net, x, [target])
        for i in range(2):
            np.testing.assert_array_equal(together.for_image(i)[t].gradient, single.for_image(i)[0].gradient)


def test_unit_max_picks_the_highest_unit(net: nn.Module) -> None:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    result = guided_backprop(net, x, [NeuronTarget("conv2", 4)], unit="max")
    with torch.no_grad():
        acts = net.conv2(net.act(net.conv1(x) * 4.0))[:, 4]
    for i, m in enumerate(result.maps):
        flat = int(acts[i].flatten().argmax())
        assert (m.target.y, m.target.x) == divmod(flat, 8) and m.unit_choice == "max"
        assert m.score == pytest.approx(float(acts[i].max()))
        explicit = guided_backprop(net, x[i:i + 1], [m.target]).maps[0]
        np.testing.assert_allclose(m.gradient, explicit.gradient, rtol=1e-6, atol=1e-8)
    mean = guided_backprop(net, x, [NeuronTarget("conv2", 4)]).maps[0]
    assert mean.unit_choice == "mean" and mean.target.y is None
    assert mean.score == pytest.approx(float(acts[0].mean()), rel=1e-5)


def test_guided_gradcam_is_guided_times_cam(net: nn.Module) -> None:
    from explain.cam import compute_cams

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    for method in ("gradcam", "gradcam++"):
        result = guided_backprop(net, x, [TopK(2)], with_cam=method, cam_layers="conv2")
        assert result.method == f"guided-{method}" and result.cam_layers == ("conv2",)
        plain = guided_backprop(net, x, [TopK(2)])
        cams = compute_cams(net, x, "conv2", [TopK(2)], method)
        for m, p, c in zip(result.maps, plain.maps, cams.maps, strict=True):
            assert m.target == p.target == c.target
            np.testing.assert_array_equal(m.guided, p.gradient)
            np.testing.assert_allclose(m.cam, c.map, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(m.gradient, p.gradient * c.map[None], rtol=1e-6, atol=1e-9)


def test_bad_requests(net: nn.Module) -> None:
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(LayerError, match="unknown layer 'conv3'"):
        guided_backprop(net, x, [NeuronTarget("conv3", 0)])
    with pytest.raises(TargetError, match="channel 9 is out of range"):
        guided_backprop(net, x, [NeuronTarget("conv2", 9)])
    with pytest.raises(TargetError, match="outside layer"):
        guided_backprop(net, x, [NeuronTarget("conv2", 1, 8, 0)])
    with pytest.raises(TargetError, match="out of range"):
        guided_backprop(net, x, [ClassTarget(4)])
    with pytest.raises(UsageError, match="unknown rule"):
        guided_backprop(net, x, [ClassTarget(0)], rule="backprop")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="unit mode"):
        guided_backprop(net, x, [ClassTarget(0)], unit="median")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="CAM layer"):
        guided_backprop(net, x, [ClassTarget(0)], with_cam="gradcam")
    with pytest.raises(UsageError, match="no target"):
        guided_backprop(net, x, [])
    with pytest.raises(UsageError, match=r"\(N, C, H, W\)"):
        guided_backprop(net, x[0], [ClassTarget(0)])
    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 2)))
    with pytest.raises(UsageError, match="TorchScript"):
        guided_backprop(scripted, x, [ClassTarget(0)])


# --------------------------------------------------------------------------------------------------------------------
# The model is left exactly as found
# --------------------------------------------------------------------------------------------------------------------


def snapshot(model: nn.Module) -> dict:
    hooks = {}
    for name, module in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_state_dict_hooks",
                     "_load_state_dict_pre_hooks"):
            hooks[(name, attr)] = len(getattr(module, attr, {}))
    return {
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": hooks,
        "state": {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "modules": [(n, type(m)) for n, m in model.named_modules()],
        "inplace": {n: getattr(m, "inplace", None) for n, m in model.named_modules()},
        "tensors": {k: (id(v), v.is_contiguous()) for k, v in model.state_dict(keep_vars=True).items()},
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["training"] == after["training"]
    assert before["hooks"] == after["hooks"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["modules"] == after["modules"] and before["inplace"] == after["inplace"]
    assert before["tensors"] == after["tensors"]  # same parameter objects, back in their own memory layout
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    for key, value in before["grad"].items():
        other = after["grad"][key]
        assert (value is None and other is None) or torch.equal(value, other), key


@pytest.mark.parametrize("training", [False, True])
def test_model_left_exactly_as_found(training: bool) -> None:
    torch.manual_seed(0)
    # the depthwise convolution makes the engines run channels-last (faster on CPU); the layout must come back
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Dropout(0.5),
                          nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Flatten(), nn.Linear(4 * 36, 3))
    assert prefers_channels_last(model)
    model.train(training)
    model[1].eval()  # a mixed state must survive too
    model[0].weight.requires_grad_(False)
    model[4].weight.grad = torch.ones_like(model[4].weight)
    model[6].weight.grad = torch.ones_like(model[6].weight)
    x = torch.randn(2, 3, 8, 8)
    probe = x.clone().requires_grad_(True)
    with torch.no_grad():
        model.eval()
        out_before = model(x)
        model.train(training)
        model[1].eval()
    (grad_before,) = torch.autograd.grad(model.eval()(probe)[:, 1].sum(), probe)
    model.train(training)
    model[1].eval()
    before = snapshot(model)
    assert torch._C._len_torch_function_stack() == 0

    guided_backprop(model, x, [TopK(2), NeuronTarget("0", 1, 2, 2)], unit="max")
    guided_backprop(model, x, [TopK(1)], with_cam="gradcam++", cam_layers="0")
    saliency(model, x, [TopK(1)], samples=2)

    assert_same(before, snapshot(model))
    assert torch._C._len_torch_function_stack() == 0
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), out_before)
    (grad_after,) = torch.autograd.grad(model(probe)[:, 1].sum(), probe)
    assert torch.equal(grad_before, grad_after)  # ordinary gradients are not guided any more
    assert x.grad is None and not x.requires_grad


def test_state_restored_when_the_forward_raises() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.relu(self.conv(x))
            raise RuntimeError("boom")

    model = Broken().train()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        guided_backprop(model, torch.randn(1, 3, 5, 5), [ClassTarget(0)])
    assert_same(before, snapshot(model))
    assert torch._C._len_torch_function_stack() == 0


def test_guided_rectifiers_context_manager() -> None:
    model = copy.deepcopy(mlp(nn.ReLU(), [[1.0, -2.0, 3.0]]))
    x = image([1.0, 2.0, -1.0]).requires_grad_(True)
    with GuidedRectifiers(model) as guided:
        y = model(x)
        with torch.no_grad():
            model(x)  # not in the graph: not counted
    (g,) = torch.autograd.grad(y.sum(), x)  # the rule lives in the graph, after the block too
    assert g.ravel().tolist() == [3.0, 3.0, -6.0]
    assert guided.counts["nn.ReLU"] == 1
    (plain,) = torch.autograd.grad(model(x).sum(), x)
    assert plain.ravel().tolist() == [3.0, 1.0, -8.0]


def test_a_receptive_field_beyond_the_image_is_drawn_as_its_visible_box() -> None:
    """A unit's 339 px field clipped to x 0..201 of a 224 px input (``--neuron _blocks.10:5 --unit max`` on
    chelsea) is drawn as the whole visible box, above the axes frame (its left, top and bottom sides lie on the
    image border, where the frame hid them and left a lone vertical line), and the title says it is cut."""
    from matplotlib.patches import Rectangle

    from explain.guided_run import gradient_panel

    box = (0.0, 0.0, 201.0, 224.0)
    fig = gradient_panel(np.full((224, 224, 3), 0.5, np.float32), np.ones((3, 224, 224), np.float32), "t", "m",
                         box=box, rf_size=(339, 339))
    for ax in fig.axes[:2]:  # the input, then the gradient (dashed)
        (patch,) = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert (patch.get_x(), patch.get_y(), patch.get_width(), patch.get_height()) == (-0.5, -0.5, 201.0, 224.0)
        assert not patch.get_clip_on()
        assert patch.get_zorder() > max(spine.get_zorder() for spine in ax.spines.values())
    title = fig.axes[0].get_title()
    assert "339x339" in title and "extends beyond the image, 201x224 inside" in title
    inside = gradient_panel(np.zeros((224, 224, 3), np.float32), np.ones((3, 224, 224), np.float32), "t", "m",
                            box=(10.0, 20.0, 30.0, 40.0), rf_size=(20, 20))
    assert "beyond" not in inside.axes[0].get_title()
