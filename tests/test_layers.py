"""Layer table and receptive fields (explain.layers).

Expected values are computed by hand with the recurrence ``r' = r + (m-1)*j``, ``j' = j*S``,
``start' = start + ((m-1)/2 - P)*j`` (``m = d*(k-1)+1``), and cross-checked against a brute-force empirical method:
the input-gradient support of one output unit in a copy of the network whose weights are all positive and whose
inputs are positive, so no ReLU zeroes a path and every connected input pixel gets a non-zero gradient.
Big torchvision models are built on the meta device: shapes and geometry are the same, and no compute is spent.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from explain.errors import LayerError, TargetError, UsageError
from explain.layers import LayerInfo, layer_table, receptive_field


def table(model: nn.Module, size: tuple[int, int] = (224, 224), **kwargs) -> dict[str, LayerInfo]:
    return {row.name: row for row in layer_table(model, size, **kwargs)}


def positive_(model: nn.Module) -> nn.Module:
    """Make every path carry signal: conv/linear weights 1/fan_in, biases 0, BatchNorm the identity-ish default."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def empirical_box(model: nn.Module, layer: nn.Module, y: int, x: int, size: tuple[int, int]) -> tuple[int, ...]:
    """(x0, y0, x1, y1) bounding box (pixel edges) of the input pixels with a non-zero gradient for unit (y, x)."""
    captured: list[torch.Tensor] = []

    class Stop(Exception):
        pass

    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        captured.append(output)
        raise Stop  # nothing after the layer is needed

    handle = layer.register_forward_hook(hook)
    torch.manual_seed(0)
    image = (torch.rand(1, 3, *size) + 0.5).requires_grad_(True)
    try:
        model(image)
    except Stop:
        pass
    finally:
        handle.remove()
    captured[0][0, 0, y, x].backward()
    support = image.grad[0].abs().sum(0) > 0
    ys, xs = torch.nonzero(support, as_tuple=True)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def contains(outer: tuple[float, ...], inner: tuple[float, ...]) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


# ---------------------------------------------------------------------------------------------------------------
# VGG16
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg16_rows() -> dict[str, LayerInfo]:
    with torch.device("meta"):
        model = torchvision.models.vgg16(weights=None)
    return table(model, device="meta")


def test_vgg16_pool_shapes(vgg16_rows: dict[str, LayerInfo]) -> None:
    pools = [row for row in vgg16_rows.values() if row.type == "MaxPool2d"]
    assert [row.output_shape for row in pools] == [
        (64, 112, 112),
        (128, 56, 56),
        (256, 28, 28),
        (512, 14, 14),
        (512, 7, 7),
    ]
    assert [row.jump for row in pools] == [(2.0, 2.0), (4.0, 4.0), (8.0, 8.0), (16.0, 16.0), (32.0, 32.0)]
    assert all(row.kernel == (2, 2) and row.stride == (2, 2) and row.executions == 1 for row in pools)


@pytest.mark.parametrize(
    ("name", "rf", "jump", "start"),
    [
        ("features.0", 3, 1, 0.0),  # conv1_1
        ("features.2", 5, 1, 0.0),  # conv1_2
        ("features.4", 6, 2, 0.5),  # pool1
        ("features.5", 10, 2, 0.5),  # conv2_1
        ("features.9", 16, 4, 1.5),  # pool2
        ("features.16", 44, 8, 3.5),  # pool3
        ("features.23", 100, 16, 7.5),  # pool4
        ("features.28", 196, 16, 7.5),  # conv5_3
        ("features.30", 212, 32, 15.5),  # pool5
        ("avgpool", 212, 32, 15.5),  # adaptive 7x7 on a 7x7 map: the identity
    ],
)
def test_vgg16_receptive_fields(vgg16_rows: dict[str, LayerInfo], name: str, rf: int, jump: int, start: float) -> None:
    row = vgg16_rows[name]
    assert row.receptive_field == (rf, rf)
    assert row.jump == (jump, jump)
    assert row.start == (start, start)
    assert row.context is None


def test_vgg16_geometry_and_head(vgg16_rows: dict[str, LayerInfo]) -> None:
    conv = vgg16_rows["features.28"]
    geometry = (conv.type, conv.kernel, conv.stride, conv.padding, conv.dilation)
    assert geometry == ("Conv2d", (3, 3), (1, 1), (1, 1), (1, 1))
    assert conv.params == 512 * 512 * 9 + 512
    assert conv.grid == (14, 14)
    head = vgg16_rows["classifier.6"]
    assert head.output_shape == (1000,)
    assert head.receptive_field is None and head.jump is None and head.start is None
    json.dumps([row.as_dict() for row in vgg16_rows.values()])  # JSON-ready


# ---------------------------------------------------------------------------------------------------------------
# Tiny models with known answers
# ---------------------------------------------------------------------------------------------------------------


class Chain(nn.Module):
    """Stride, padding, dilation, pooling, global pooling, a head; functional ReLUs in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(4, 4, 5)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x), inplace=True)
        x = self.conv3(self.pool(x))
        return self.fc(torch.flatten(self.gap(x), 1))


def test_chain_stride_padding_dilation() -> None:
    rows = table(Chain(), (32, 32))
    expect = {
        "conv1": ((4, 16, 16), 3, 2, 0.0),
        "conv2": ((4, 16, 16), 11, 2, 0.0),  # dilated 3x3 = 5x5 footprint: 3 + 4*2
        "pool": ((4, 8, 8), 13, 4, 1.0),
        "conv3": ((4, 4, 4), 29, 4, 9.0),
        "gap": ((4, 1, 1), 41, 16, 15.0),  # the whole 4x4 map: 29 + 3*4
    }
    for name, (shape, rf, jump, start) in expect.items():
        row = rows[name]
        got = (row.output_shape, row.receptive_field, row.jump, row.start)
        assert got == (shape, (rf, rf), (jump, jump), (start, start)), name
    assert rows["conv2"].dilation == (2, 2) and rows["conv2"].padding == (2, 2)
    assert rows["fc"].receptive_field is None and rows["fc"].output_shape == (2,)
    assert rows["conv3"].unit_box(0, 0) == (-5.0, -5.0, 24.0, 24.0)
    assert rows["conv3"].unit_box(3, 1, clip_to=(32, 32)) == (0.0, 7.0, 28.0, 32.0)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_string_padding_and_transposed_conv() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 3, 4, padding="same"),  # PyTorch pads 1 before, 2 after: unit 0 is centred on pixel 0.5
        nn.Conv2d(3, 3, 3, padding="valid"),
        nn.ConvTranspose2d(3, 3, 4, stride=2, padding=1),  # conservative: half-pixel jump, 7.5 rounded up
    )
    rows = table(model, (12, 12))
    assert (rows["0"].padding, rows["0"].receptive_field, rows["0"].start) == ("same", (4, 4), (0.5, 0.5))
    assert (rows["1"].padding, rows["1"].receptive_field, rows["1"].start) == ("valid", (6, 6), (1.5, 1.5))
    up = rows["2"]
    assert (up.output_shape, up.receptive_field, up.jump, up.start) == ((3, 20, 20), (8, 8), (0.5, 0.5), (1.25, 1.25))
    positive_(model)
    for y, x in ((0, 0), (11, 11), (5, 0)):
        assert rows["0"].unit_box(y, x, clip_to=(12, 12)) == empirical_box(model, model[0], y, x, (12, 12))
    for y, x in ((0, 0), (7, 12), (19, 19)):
        assert contains(up.unit_box(y, x, clip_to=(12, 12)), empirical_box(model, model[2], y, x, (12, 12)))


class Block(nn.Module):
    """Residual block whose shortcut is a 1x1 stride-2 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)
        self.short = nn.Conv2d(8, 8, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv_b(F.relu(self.conv_a(x))) + self.short(x))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = Block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x))


def test_residual_union_is_the_main_branch() -> None:
    rows = table(Residual(), (32, 32))
    assert rows["block.short"].receptive_field == (3, 3)
    assert rows["block.conv_b"].receptive_field == (9, 9)
    block = rows["block"]
    assert (block.receptive_field, block.jump, block.start, block.grid) == ((9, 9), (2.0, 2.0), (0.0, 0.0), (16, 16))
    model = positive_(Residual())
    for y, x in ((8, 8), (0, 0), (15, 3)):
        assert block.unit_box(y, x, clip_to=(32, 32)) == empirical_box(model, model.block, y, x, (32, 32))


class Branches(nn.Module):
    """Inception-style concatenation of branches with different kernels, then a strided conv."""

    def __init__(self) -> None:
        super().__init__()
        self.b1 = nn.Conv2d(3, 2, 1)
        self.b3 = nn.Conv2d(3, 2, 3, padding=1)
        self.b5 = nn.Conv2d(3, 2, 5, padding=2)
        self.bp = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), nn.Conv2d(3, 2, 1))
        self.head = nn.Conv2d(8, 4, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)
        return self.head(merged.relu_())


def test_concatenation_takes_the_widest_branch() -> None:
    rows = table(Branches(), (17, 17))
    assert [rows[n].receptive_field for n in ("b1", "b3", "b5", "bp")] == [(1, 1), (3, 3), (5, 5), (3, 3)]
    head = rows["head"]
    # the concatenation sees 5 pixels (widest branch); a 3x3/2 conv without padding adds 2 and moves unit 0 by 1
    assert (head.receptive_field, head.jump, head.start) == ((7, 7), (2.0, 2.0), (1.0, 1.0))
    assert head.output_shape == (4, 8, 8)
    model = positive_(Branches())
    for y, x in ((4, 4), (0, 7)):
        assert head.unit_box(y, x, clip_to=(17, 17)) == empirical_box(model, model.head, y, x, (17, 17))


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow "SAME" padding: output ceil(n / stride), the odd pixel of padding goes after."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class SamePad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 5, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(tf_same_pad(x, 5, 2))


def test_asymmetric_same_padding_moves_start() -> None:
    # H = 8: total padding 3 -> (1 before, 2 after); W = 9: total 4 -> (2, 2)
    row = table(SamePad(), (8, 9))["conv"]
    assert row.output_shape == (4, 4, 5)
    assert (row.receptive_field, row.jump, row.start) == ((5, 5), (2.0, 2.0), (1.0, 0.0))
    assert row.padding == (0, 0)
    model = positive_(SamePad())
    for y, x in ((0, 0), (3, 4), (1, 2)):
        assert row.unit_box(y, x, clip_to=(8, 9)) == empirical_box(model, model.conv, y, x, (8, 9))


class Reuse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(x))


def test_reused_module_reports_its_last_execution() -> None:
    row = table(Reuse(), (8, 8))["conv"]
    assert row.executions == 2
    assert row.receptive_field == (5, 5)


class ChannelsLast(nn.Module):
    """ConvNeXt-style: permute to NHWC, LayerNorm and Linear over channels, permute back; then a crop."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(4, 4, 7, padding=3, groups=4)
        self.norm = nn.LayerNorm(4)
        self.pw = nn.Linear(4, 8)
        self.out = nn.Conv2d(8, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(x).permute(0, 2, 3, 1)
        x = self.pw(self.norm(x)).permute(0, 3, 1, 2)
        return self.out(x[:, :, 1:, 2:])


def test_permute_linear_and_crop_keep_geometry() -> None:
    rows = table(ChannelsLast(), (16, 16), in_channels=4)
    pw = rows["pw"]
    assert pw.output_shape == (16, 16, 8)
    assert (pw.receptive_field, pw.jump, pw.start, pw.grid) == ((7, 7), (1.0, 1.0), (0.0, 0.0), (16, 16))
    out = rows["out"]  # the crop moves unit 0 to pixel (1, 2); then a 3x3/2 conv with padding 1
    assert (out.receptive_field, out.jump, out.start, out.output_shape) == ((9, 9), (2.0, 2.0), (1.0, 2.0), (4, 8, 7))


class Gated(nn.Module):
    """Squeeze-excitation-like gate: every unit also depends on the global mean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.scale = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.scale(x * torch.sigmoid(x.mean((2, 3), keepdim=True)))


class PooledBranch(nn.Module):
    """DeepLab ASPP-style image pooling: a 1x1 global mean, upsampled and concatenated to a local branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.merge = nn.Conv2d(7, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(F.adaptive_avg_pool2d(x, 1), size=x.shape[-2:], mode="bilinear")
        return self.merge(torch.cat([self.conv(x), pooled], 1))


def test_global_context_is_reported() -> None:
    rows = table(Gated(), (12, 10))
    assert rows["conv"].context is None
    gated = rows["scale"]
    assert gated.receptive_field == (3, 3)
    assert gated.context == (-1.0, -1.0, 11.0, 13.0)  # every 3x3 box of the 12x10 map
    merged = table(PooledBranch(), (12, 10))["merge"]
    assert (merged.receptive_field, merged.jump, merged.start) == ((3, 3), (1.0, 1.0), (0.0, 0.0))
    assert merged.context == (0.0, 0.0, 10.0, 12.0)  # the whole input, through the pooled branch


class Upsampled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 3, 3, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def test_interpolation_is_conservative() -> None:
    row = table(Upsampled(), (16, 16))["up"]
    assert row.grid == (16, 16) and row.jump == (1.0, 1.0)
    model = positive_(Upsampled())
    for y, x in ((0, 0), (5, 8), (15, 10)):
        assert contains(row.unit_box(y, x, clip_to=(16, 16)), empirical_box(model, model.up, y, x, (16, 16)))


# ---------------------------------------------------------------------------------------------------------------
# ResNet-18
# ---------------------------------------------------------------------------------------------------------------


def test_resnet18_hand_computed() -> None:
    with torch.device("meta"):
        model = torchvision.models.resnet18(weights=None)
    rows = table(model, device="meta")
    # conv1 7x7/2: 7, j2; maxpool 3x3/2: 11, j4; each 3x3 conv adds 2*j; the 1x1/2 shortcuts add nothing
    expect = {
        "conv1": (7, 2),
        "maxpool": (11, 4),
        "layer1": (43, 4),  # 11 + 4 convs * 2 * 4
        "layer2": (99, 8),  # 43 + 2*4 (stride-2 conv) + 3 convs * 2 * 8
        "layer3": (211, 16),
        "layer4": (435, 32),
    }
    for name, (rf, jump) in expect.items():
        row = rows[name]
        assert (row.receptive_field, row.jump, row.start) == ((rf, rf), (jump, jump), (0.0, 0.0)), name
    assert rows["layer4"].output_shape == (512, 7, 7)
    assert rows["layer2.0.conv1"].receptive_field == (51, 51)
    assert (rows["layer2.0.downsample.0"].receptive_field, rows["layer2.0.downsample.0"].jump) == ((43, 43), (8.0, 8.0))
    assert rows["layer4.1.relu"].executions == 2  # BasicBlock reuses its ReLU
    assert rows["fc"].receptive_field is None


def slim_(model: nn.Module) -> nn.Module:
    """One channel per convolution, same kernels, strides, paddings and forward code: the same geometry, cheaply."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Conv2d):
                conv = nn.Conv2d(child.in_channels if child.in_channels == 3 else 1, 1, child.kernel_size,
                                 child.stride, child.padding, child.dilation, bias=False)
                setattr(module, name, conv)
            elif isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.BatchNorm2d(1))
            elif isinstance(child, nn.Linear):
                setattr(module, name, nn.Linear(1, 1))
    return model


def test_resnet18_matches_empirical_support() -> None:
    with torch.device("meta"):
        rows = table(torchvision.models.resnet18(weights=None), (160, 160), device="meta")
    assert (rows["layer2"].grid, rows["layer3"].grid) == ((20, 20), (10, 10))
    with torch.device("meta"):
        model = torchvision.models.resnet18(weights=None)
    model = positive_(slim_(model))  # every module with parameters is rebuilt, on the CPU
    model.maxpool = nn.AvgPool2d(3, stride=2, padding=1)  # same geometry, gradient to every pixel in the window
    for layer, y, x in (("layer2", 10, 10), ("layer2", 0, 0), ("layer2", 19, 4), ("layer3", 5, 5), ("layer3", 0, 9)):
        box = rows[layer].unit_box(y, x, clip_to=(160, 160))
        assert box == empirical_box(model, getattr(model, layer), y, x, (160, 160)), (layer, y, x)
    # with the real max-pool, gradients reach a subset of the pixels: still inside the theoretical box
    model.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    assert contains(rows["layer3"].unit_box(5, 5), empirical_box(model, model.layer3, 5, 5, (160, 160)))


# ---------------------------------------------------------------------------------------------------------------
# Inception-style torchvision models, on the meta device
# ---------------------------------------------------------------------------------------------------------------


def test_googlenet_and_inception_branches() -> None:
    with torch.device("meta"):
        googlenet = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
        inception = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    rows = table(googlenet, device="meta")
    for block in ("inception3a", "inception4e", "inception5b"):
        branches = [rows[f"{block}.branch{k}"] for k in (1, 2, 3, 4)]
        assert rows[block].receptive_field == max(b.receptive_field for b in branches)
        assert all(b.jump == rows[block].jump and b.start == rows[block].start for b in branches)
    assert all(row.receptive_field is not None for row in rows.values() if row.type == "Conv2d")
    rows = table(inception, (299, 299), device="meta")
    assert rows["Mixed_6b.branch7x7_1"].receptive_field == (159, 159)
    assert rows["Mixed_6b.branch7x7_2"].receptive_field == (159, 255)  # a 1x7 conv at jump 16
    assert rows["Mixed_6b.branch7x7_3"].receptive_field == (255, 255)  # then a 7x1
    assert rows["Mixed_7c"].output_shape == (2048, 8, 8)


# ---------------------------------------------------------------------------------------------------------------
# Contract: the model is left as found, and errors are raised, not printed
# ---------------------------------------------------------------------------------------------------------------


def test_model_is_left_unchanged() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    model.train()
    model.layer1.eval()
    model.fc.weight.requires_grad_(False)
    flags = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layer_table(model, (32, 32))
    assert {name: m.training for name, m in model.named_modules()} == flags
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # BatchNorm running stats included
    assert all(p.grad is None for p in model.parameters())
    assert not model.fc.weight.requires_grad and model.fc.bias.requires_grad


def test_errors() -> None:
    model = Chain()
    with pytest.raises(LayerError, match="did you mean: .*conv"):
        receptive_field(model, "conv9", (32, 32))
    assert receptive_field(model, "conv3", (32, 32)).receptive_field == (29, 29)
    with pytest.raises(UsageError, match="could not run the model"):
        layer_table(model, (4, 4))
    with pytest.raises(UsageError, match="input size"):
        layer_table(model, (0, 32))
    with pytest.raises(UsageError, match="100000x100000 is too large"):
        layer_table(model, (100000, 100000))  # refused before a 120 GB activation is allocated
    with pytest.raises(UsageError, match="model is on"):
        layer_table(model, (32, 32), device="meta")
    rows = table(model, (32, 32))
    with pytest.raises(LayerError, match="no spatial receptive field"):
        rows["fc"].unit_box(0, 0)
    with pytest.raises(TargetError, match="outside"):
        rows["conv3"].unit_box(4, 0)


def test_layers_on_a_detector_says_why_the_receptive_field_columns_are_empty() -> None:
    """Issue 15: ``layers`` on a detector showed empty RF and jump columns without a word."""
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["layers", "--model", "fasterrcnn_mobilenet_v3_large_320_fpn", "--weights", "none",
                                 "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert all(item["receptive_field"] is None for item in manifest["items"])
    note = ("no layer has a receptive field, so the RF and jump columns are empty: the detector's transform resizes "
            "the photo and copies it into a padded batch, and receptive fields are not followed through that copy")
    assert manifest["warnings"] == [note] and result.stderr == f"warning: {note}\n"
    result = runner.invoke(app, ["layers", "--model", "lraspp_mobilenet_v3_large", "--weights", "none", "--json"])
    assert result.exit_code == 0 and "warnings" not in json.loads(result.stdout) and result.stderr == ""


def test_the_note_needs_spatial_layers_without_any_receptive_field() -> None:
    from explain.layers import missing_receptive_fields_note

    rows = layer_table(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), (8, 8))
    assert missing_receptive_fields_note(rows) is None
    copied = [r.__class__(**{**r.__dict__, "receptive_field": None}) for r in rows]
    assert missing_receptive_fields_note(copied).startswith("no layer has a receptive field")
    assert missing_receptive_fields_note([r for r in copied if r.name == "1"]) is None  # nothing spatial
