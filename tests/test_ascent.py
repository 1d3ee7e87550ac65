"""Activation maximisation: objectives rise, runs are reproducible, batches equal single runs, the model is untouched,
the regularisers do what they say, and on the embedded model the class images are recognised (and survive shifts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from explain.ascent import (
    COLOUR_MATRIX, OUTPUT, AscentConfig, ChannelMean, ClassLogit, ClassLogProb, FourierParam, Neuron, PixelParam,
    WeightedSum, ascend, colour_matrix, objective_seed, parse_channels, parse_objective,
)
from explain.errors import LayerError, TargetError, UsageError

CLASSES = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen", "ibis", "jay"]


class Tiny(nn.Module):
    """conv/relu x3 (strides 2, 2, 2) -> global mean -> linear: 32 px in, 4 x 4 maps at the last conv."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def tiny() -> Tiny:
    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()  # grey maps to 0 (see NORM): every objective starts near zero
        model.head.weight.mul_(10.0)  # class scores that depend on the image noticeably
    return model


def NORM(x: torch.Tensor) -> torch.Tensor:  # noqa: N802 - a constant-like helper
    return (x - 0.5) / 0.25


def fast(**kw) -> AscentConfig:
    base = dict(size=32, steps=8, early_stop=False)
    base.update(kw)
    return AscentConfig(**base)


# --- objectives rise -----------------------------------------------------------------------------------------
OBJECTIVES = {
    "logit": ClassLogit(3),
    "channel": ChannelMean("features.3", 5),
    "neuron": Neuron("features.5", 2),
    "sum": 2 * ClassLogit(3) - ClassLogit(4),
}


@pytest.mark.parametrize("param", ["fft", "pixel"])
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_objective_rises_by_a_large_factor(tiny: Tiny, name: str, param: str) -> None:
    objective = OBJECTIVES[name]
    result = ascend(tiny, [objective], fast(param=param, steps=6), normalize=NORM)
    start, end = float(result.initial_values[0]), float(result.values[0])
    # From a nearly grey image (model input ~0, no biases) the objective starts near zero; six steps multiply it.
    assert abs(start) < 0.05
    assert end > 20 * abs(start), (name, param, start, end)
    assert result.history[-1, 0] > 10 * abs(result.history[0, 0]), result.history[:, 0]


def test_logprob_objective_makes_the_class_likely(tiny: Tiny) -> None:
    result = ascend(tiny, [ClassLogProb(7)], fast(param="pixel", lr=0.05, steps=20), normalize=NORM)
    p0 = np.exp(result.initial_values[0])
    assert p0 < 0.15
    assert result.probabilities[0, 7] > 3 * p0  # this small random network cannot make any class certain
    assert np.isclose(np.exp(result.values[0]), result.probabilities[0, 7])


# --- reproducibility and batching ----------------------------------------------------------------------------
def test_same_seed_same_images_other_seed_other_images(tiny: Tiny) -> None:
    objectives = [ClassLogit(1), ChannelMean("features.3", 0)]
    a = ascend(tiny, objectives, fast(), seed=3)
    b = ascend(tiny, objectives, fast(), seed=3)
    c = ascend(tiny, objectives, fast(), seed=4)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.history, b.history)
    assert not np.allclose(a.images, c.images)


@pytest.mark.parametrize("param", ["fft", "pixel"])
def test_batch_equals_one_by_one(tiny: Tiny, param: str) -> None:
    objectives = [ClassLogit(1), ChannelMean("features.3", 4), Neuron("features.5", 9, 1, 3), ClassLogProb(8)]
    cfg = fast(param=param, transforms=True, steps=12)
    batch = ascend(tiny, objectives, cfg, seed=11)
    other = ascend(tiny, objectives[:1], cfg, seed=12)
    assert np.abs(other.images[0] - batch.images[0]).mean() > 0.01  # what a different seed changes
    for i, objective in enumerate(objectives):
        alone = ascend(tiny, [objective], cfg, seed=[objective_seed(11, i)])
        diff = np.abs(alone.images[0] - batch.images[i])
        # Equal up to rounding: convolutions of different batch sizes may sum in a different order, and Adam turns a
        # gradient component that is zero up to rounding into a full step of either sign, so a few pixels may
        # differ by a few thousandths; the rest agree to float precision.
        assert diff.mean() < 5e-4 and diff.max() < 1e-2, (i, diff.mean(), diff.max())
        np.testing.assert_allclose(alone.values[0], batch.values[i], rtol=1e-3, atol=1e-4)
    assert len(set(batch.seeds)) == len(objectives)


def test_early_stop_per_image(tiny: Tiny) -> None:
    # Pixels are bounded, so the objectives of this small network saturate (at a corner of the box) and plateau.
    cfg = AscentConfig(param="pixel", size=32, lr=0.05, steps=300, patience=10)
    objectives = [ChannelMean("features.1", 3), ClassLogit(2)]
    result = ascend(tiny, objectives, cfg, seed=0, normalize=NORM)
    assert result.stopped_early.all() and (result.steps_run < 300).all()
    assert result.steps_run[0] < result.steps_run[1]  # the channel left the batch, the class went on
    assert len(result.history) == result.steps_run.max()
    assert np.isnan(result.history[result.steps_run[0]:, 0]).all()
    assert not np.isnan(result.history[:result.steps_run[0], 0]).any()
    # Alone, each image stops at (nearly) the same step with (nearly) the same result. The plateau test compares
    # nearly equal numbers, so rounding differences between batch sizes can move a stop by a step or two.
    for i, objective in enumerate(objectives):
        alone = ascend(tiny, [objective], cfg, seed=[objective_seed(0, i)], normalize=NORM)
        assert abs(int(alone.steps_run[0]) - int(result.steps_run[i])) <= 5
        np.testing.assert_allclose(alone.values[0], result.values[i], rtol=1e-2)


# --- the model is left as found; the forward pass stops early ------------------------------------------------
def test_model_left_exactly_as_found(tiny: Tiny) -> None:
    tiny.train()
    tiny.features[0].eval()  # a mixed state must come back as it was
    tiny.head.weight.requires_grad_(False)
    flags = {name: m.training for name, m in tiny.named_modules()}
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    seen_training = []
    tiny.features.register_forward_hook(lambda m, a, o: seen_training.append(m.training))
    ascend(tiny, [ClassLogit(1), ChannelMean("features.1", 3)], fast(clip_contrib=10, blur_every=2, decay=0.01))
    assert seen_training and not any(seen_training)  # eval mode during the run
    assert {name: m.training for name, m in tiny.named_modules()} == flags
    assert all(p.grad is None for p in tiny.parameters())
    assert not tiny.head.weight.requires_grad and tiny.head.bias.requires_grad
    for key, value in tiny.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(len(m._forward_hooks) == 0 for m in tiny.modules() if m is not tiny.features)


def test_forward_stops_after_the_last_layer_needed(tiny: Tiny) -> None:
    calls = {"head": 0, "conv": 0}
    tiny.head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    tiny.features[4].register_forward_hook(lambda *a: calls.__setitem__("conv", calls["conv"] + 1))
    ascend(tiny, [ChannelMean("features.1", 0), Neuron("features.3", 1)], fast(steps=6))
    # probe + initial and final evaluation run the whole network; the 6 steps stop after features.3.
    assert calls == {"head": 3, "conv": 3}
    calls.update(head=0, conv=0)
    ascend(tiny, [ChannelMean("features.1", 0), ClassLogit(0)], fast(steps=6))
    assert calls == {"head": 9, "conv": 9}


# --- composition and parsing --------------------------------------------------------------------------------
def test_composition_is_a_weighted_sum() -> None:
    a, b, c = ClassLogit(1), ChannelMean("l", 0), Neuron("l", 1, 0, 0)
    combined = 2 * a - b + (-c) * 0.5
    assert isinstance(combined, WeightedSum)
    assert [(w, o) for w, o in combined.terms()] == [(2.0, a), (-1.0, b), (-0.5, c)]
    acts = {OUTPUT: torch.tensor([[0.0, 3.0], [0.0, -1.0]]), "l": torch.arange(16.0).view(2, 2, 2, 2)}
    expected = 2 * a.evaluate(acts) - b.evaluate(acts) - 0.5 * c.evaluate(acts)
    assert torch.allclose(combined.evaluate(acts), expected)
    assert combined.layers == {OUTPUT, "l"}
    assert combined.describe() == "2*class 1 - l ch 0 - 0.5*l ch 1 @ (0,0)"


def test_parse_objective_and_channel_ranges() -> None:
    parsed = parse_objective("class:cat - 0.5*logprob:3 + channel:features.3:7 + neuron:features.5:1:2:3", CLASSES)
    assert parsed.terms() == [(1.0, ClassLogit(2, "cat")), (-0.5, ClassLogProb(3, "dog")),
                              (1.0, ChannelMean("features.3", 7)), (1.0, Neuron("features.5", 1, 2, 3))]
    assert parse_objective("class:fox", CLASSES) == ClassLogit(5, "fox")
    assert parse_objective("-class:fox", CLASSES).terms() == [(-1.0, ClassLogit(5, "fox"))]
    assert parse_channels("features.3:2-5") == [ChannelMean("features.3", c) for c in range(2, 6)]
    for bad in ("features.3", "features.3:5-2", "features.3:a"):
        with pytest.raises(TargetError):
            parse_channels(bad)
    for bad in ("kind:1", "class:zebra", "class:1 + 2**channel:x:1"):
        with pytest.raises(TargetError):
            parse_objective(bad, CLASSES)


# --- errors -------------------------------------------------------------------------------------------------
def test_errors_are_clear(tiny: Tiny) -> None:
    with pytest.raises(LayerError, match="did you mean: features.3"):
        ascend(tiny, [ChannelMean("features.33", 0)], fast())
    with pytest.raises(TargetError, match="channel 16 is out of range .* 16 channels"):
        ascend(tiny, [ChannelMean("features.3", 16)], fast())
    with pytest.raises(TargetError, match="outside layer 'features.5'.* 4 x 4"):
        ascend(tiny, [Neuron("features.5", 0, 4, 0)], fast())
    with pytest.raises(TargetError, match="class index 10 is out of range"):
        ascend(tiny, [ClassLogit(10)], fast())
    with pytest.raises(UsageError, match="--steps must be at least 1"):
        ascend(tiny, [ClassLogit(1)], fast(steps=0))
    with pytest.raises(UsageError, match="--size 6 is too small"):
        ascend(tiny, [ClassLogit(1)], fast(size=6))
    with pytest.raises(UsageError, match=r"--snapshots must lie in \[0, 32\]"):
        ascend(tiny, [ClassLogit(1)], fast(snapshots=500))
    with pytest.raises(UsageError, match="--size 20000 is too large: at most 1024"):
        ascend(tiny, [ClassLogit(1)], fast(size=20000))  # refused before any memory is allocated
    with pytest.raises(UsageError, match="--size 8 is too small for this model.*'features.4'.* 1 x 1"):
        ascend(tiny, [ClassLogit(1)], fast(size=8))  # the last conv (total stride 8) would give a 1 x 1 map
    ascend(tiny, [ChannelMean("features.1", 0)], fast(size=8, steps=1))  # an early layer is fine at that size
    with pytest.raises(UsageError, match="nothing to optimise"):
        ascend(tiny, [], fast())


def test_a_model_that_fails_at_every_size_is_not_called_too_small() -> None:
    """A model made for one-channel images fails whatever the size: the error says so, and the search for a size
    that works stops at the --size limit (no 4096 px probe)."""
    sizes: list[int] = []
    gray = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    gray[0].register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[-1]))
    with pytest.raises(UsageError, match=r"cannot run on a 1x3x64x64 image .* up to 1024: it fails with: .*channels"):
        ascend(gray, [ClassLogit(1)], fast(size=64))
    assert sizes == [64, 128, 256, 512, 1024]


# --- regularisers and parameterisations ---------------------------------------------------------------------
def test_regularisers_do_what_they_say(tiny: Tiny) -> None:
    objective = [ClassLogit(3)]
    base = ascend(tiny, objective, fast(param="pixel", lr=0.05, steps=10))
    centred = lambda r: np.abs(r.images[0] - 0.5)  # noqa: E731

    clipped = ascend(tiny, objective, fast(param="pixel", lr=0.05, steps=10, clip_norm=60))
    grey = (np.abs(clipped.images[0] - 0.5).max(axis=2) == 0).mean()
    assert grey >= 0.59
    contrib = ascend(tiny, objective, fast(param="pixel", lr=0.05, steps=10, clip_contrib=40))
    assert (np.abs(contrib.images[0] - 0.5).max(axis=2) == 0).mean() >= 0.39

    decayed = ascend(tiny, objective, fast(param="pixel", lr=0.05, steps=10, decay=0.2))
    penalised = ascend(tiny, objective, fast(param="pixel", lr=0.05, steps=10, l2=500.0))
    assert centred(decayed).mean() < 0.7 * centred(base).mean()
    assert centred(penalised).mean() < 0.7 * centred(base).mean()

    def roughness(r):
        img = r.images[0]
        return np.abs(np.diff(img, axis=0)).mean() + np.abs(np.diff(img, axis=1)).mean()

    blurred = ascend(tiny, objective, fast(param="pixel", lr=0.05, steps=10, blur_every=1, blur_sigma=1.0))
    smooth = ascend(tiny, objective, fast(param="pixel", lr=0.05, steps=10, tv=50.0))
    assert roughness(blurred) < 0.7 * roughness(base)
    assert roughness(smooth) < 0.7 * roughness(base)


def test_fourier_parameterisation_round_trips_and_starts_grey() -> None:
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    white = FourierParam(gens, (24, 30), init_std=0.3, decorrelate=False).render()[1].detach()
    assert 0.27 < float(white.std()) < 0.33  # the gain keeps the pixel spread at the spectrum's
    param = FourierParam(gens, (24, 30), init_std=0.3)
    images, linear = param.render()
    assert images.shape == (2, 3, 24, 30) and 0 < images.min() and images.max() < 1
    rows = torch.tensor([1])
    param.set_linear(rows, linear[1:].detach() * 0.5)
    again, linear2 = param.render()
    assert torch.allclose(linear2[1], linear[1].detach() * 0.5, atol=1e-5)
    assert torch.equal(again[0], images[0].detach())
    pixels = PixelParam(gens, (5, 5), init_std=0.0)
    assert torch.equal(pixels.render()[0], torch.full((2, 3, 5, 5), 0.5))


def test_colour_matrix_is_a_root_of_the_photo_covariance(samples) -> None:
    m = np.array(COLOUR_MATRIX)
    assert np.allclose(m, m.T) and np.isclose(np.linalg.norm(m, 2), 1.0, atol=1e-6)
    assert (np.linalg.eigvalsh(m) > 0).all()
    rng = np.random.default_rng(0)
    mix = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.5, 0.3, 0.8]])
    pixels = rng.normal(size=(20000, 3)) @ mix.T
    cov = mix @ mix.T
    root = colour_matrix(pixels, power=0.5)
    assert np.allclose(root @ root, cov / np.linalg.norm(cov, 2), atol=0.03)
    fourth = colour_matrix(pixels)
    assert np.allclose(np.linalg.matrix_power(fourth, 4), cov / np.linalg.norm(cov, 2), atol=0.03)
    # The constant is what the photos give (they may change a little, so loosely).
    from PIL import Image

    photos = sorted(p for p in samples.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    pixels = np.concatenate([np.asarray(Image.open(p).convert("RGB").resize((32, 32)), dtype=np.float64)
                             .reshape(-1, 3) / 255 for p in photos])
    assert np.abs(colour_matrix(pixels) - m).max() < 0.05


def test_snapshots_and_progress_callback(tiny: Tiny) -> None:
    seen = []
    result = ascend(tiny, [ClassLogit(0), ClassLogit(1)], fast(steps=9, snapshots=3), on_step=seen.append)
    assert result.snapshot_steps == [3, 6, 9]
    assert result.snapshots.shape == (2, 3, 32, 32, 3)
    assert np.allclose(result.snapshots[:, -1], result.images, atol=1e-6)
    assert [s.step for s in seen] == list(range(1, 10)) and seen[-1].total == 9
    np.testing.assert_allclose(np.stack([s.values for s in seen]), result.history)


# --- the embedded model -------------------------------------------------------------------------------------
FIVE = {1: "goldfish", 130: "flamingo", 281: "tabby", 985: "daisy", 967: "espresso"}


@pytest.fixture(scope="module")
def five_classes(request: pytest.FixtureRequest):
    lite0 = request.getfixturevalue("lite0")
    objectives = [ClassLogit(i, lite0.class_names[i]) for i in FIVE]
    # The defaults (224 px, Fourier, decorrelated colour, transformations), with 48 steps instead of 256 to keep the
    # test short (about 20 s on one core); with 48 steps the least sure class (tabby) reaches p ~0.95.
    cfg = AscentConfig(steps=48)
    return lite0, ascend(lite0.model, objectives, cfg, normalize=lite0.preprocess.normalize, seed=0)


def test_class_images_are_recognised_and_survive_shifts(five_classes) -> None:
    lite0, result = five_classes
    assert [lite0.class_names[i] for i in FIVE] == ["goldfish", "flamingo", "tabby", "daisy", "espresso"]
    probs = result.probabilities
    for row, index in enumerate(FIVE):
        assert probs[row].argmax() == index and probs[row, index] >= 0.9, (FIVE[index], probs[row, index])
    x = torch.from_numpy(result.images).permute(0, 3, 1, 2)
    rng = np.random.default_rng(0)
    shifts = [tuple(int(v) for v in rng.integers(-8, 9, size=2)) for _ in FIVE]
    shifted = torch.stack([torch.roll(img, s, dims=(1, 2)) for img, s in zip(x, shifts)])
    with torch.no_grad():
        predicted = lite0.model(lite0.preprocess.normalize(shifted)).argmax(1).tolist()
    assert predicted == list(FIVE), shifts


def test_mid_layer_channel_beats_the_photos(lite0, samples) -> None:
    from PIL import Image

    from explain.hooks import LayerTap

    layer, channels = "_blocks.9", [2, 3]  # photo means 1.3 and 2.2
    photos = sorted(p for p in samples.iterdir() if p.suffix.lower() in (".png", ".jpg"))
    batch = torch.stack([lite0.preprocess(Image.open(p).convert("RGB")) for p in photos])
    with LayerTap(lite0.model, [layer]) as tap, torch.no_grad():
        lite0.model(batch)
    photo_means = tap.outputs[layer][:, channels].mean(dim=(0, 2, 3))
    assert (photo_means > 0).all(), photo_means
    result = ascend(lite0.model, [ChannelMean(layer, c) for c in channels], AscentConfig(steps=24, size=128),
                    normalize=lite0.preprocess.normalize, seed=0)
    ratios = result.values / photo_means.numpy()
    assert (ratios >= 5).all(), ratios
