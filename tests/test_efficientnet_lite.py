"""Our EfficientNet-Lite is the real one: same logits as an independent implementation, TF-SAME padding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from explain.backbones.efficientnet_lite import VARIANTS, Conv2dSame, EfficientNetLite, same_padding, weights_file


def _reference(name: str, image_size: int | None):
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name(name.replace("_", "-"), image_size=image_size) if image_size else \
        EfficientNet.from_name(name.replace("_", "-"))
    ref.load_state_dict(torch.load(weights_file(name), map_location="cpu", weights_only=True))
    return ref.eval()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_independent_implementation(name: str) -> None:
    torch.manual_seed(0)
    ours = EfficientNetLite(VARIANTS[name]).eval()
    ours.load_state_dict(torch.load(weights_file(name), map_location="cpu", weights_only=True), strict=True)
    size = VARIANTS[name].resolution
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        diff = (ours(x) - _reference(name, None)(x)).abs().max().item()
    assert diff < 1e-4


def test_parameter_count_and_state_dict_keys(lite0) -> None:
    state = torch.load(weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    assert len(state) == 296
    assert sum(p.numel() for p in lite0.model.parameters()) == 4_652_008
    # every activation is its own module: no module object appears twice in the tree
    modules = [m for _, m in lite0.model.named_modules(remove_duplicate=False)]
    assert len(modules) == len({id(m) for m in modules})


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        # out = ceil(size/stride); total = (out-1)*stride + kernel - size; before = total//2
        (224, 3, 2, (0, 1)),  # out 112: 111*2+3-224 = 1
        (225, 3, 2, (1, 1)),  # out 113: 112*2+3-225 = 2
        (300, 3, 2, (0, 1)),  # out 150: 149*2+3-300 = 1
        (112, 5, 2, (1, 2)),  # out 56: 55*2+5-112 = 3
        (113, 5, 2, (2, 2)),  # out 57: 56*2+5-113 = 4
        (150, 5, 1, (2, 2)),  # stride 1: total = kernel-1 = 4
        (7, 1, 1, (0, 0)),
    ],
)
def test_same_padding_by_hand(size: int, kernel: int, stride: int, expected: tuple[int, int]) -> None:
    assert same_padding(size, kernel, stride) == expected


@pytest.mark.parametrize("size", [225, 300])
def test_same_padding_at_other_sizes(size: int) -> None:
    """At sizes other than 224 the padding changes; ours must still equal TF-SAME (reference, dynamic mode)."""
    torch.manual_seed(1)
    conv = Conv2dSame(3, 4, 3, stride=2)
    x = torch.randn(1, 3, size, size)
    before, after = same_padding(size, 3, 2)
    manual = F.conv2d(F.pad(x, (before, after, before, after)), conv.weight, None, 2)
    assert torch.allclose(conv(x), manual)
    assert conv(x).shape[-1] == -(-size // 2)

    ours = EfficientNetLite(VARIANTS["efficientnet_lite0"]).eval()
    ours.load_state_dict(torch.load(weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True))
    ref = _reference("efficientnet_lite0", size)  # static padding computed for this size
    xi = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert (ours(xi) - ref(xi)).abs().max().item() < 1e-4
        # symmetric padding would change the logits: check the test can tell
        sym = EfficientNetLite(VARIANTS["efficientnet_lite0"]).eval()
        sym.load_state_dict(ours.state_dict())
        sym._conv_stem.same_pad = lambda h, w: (1, 1, 1, 1)  # type: ignore[method-assign]
        if size % 2 == 0:
            assert (sym(xi) - ours(xi)).abs().max().item() > 1e-3
