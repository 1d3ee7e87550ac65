"""Vanilla gradient, SmoothGrad and gradient x input: against gradients computed one by one in the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from explain.errors import UsageError
from explain.saliency import MAX_SAMPLES, noise_sigmas, saliency, sample_batches, smoothgrad_noise
from explain.targets import ClassTarget, NeuronTarget, TopK


pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.nn.functional.relu(self.conv2(h))
        return self.fc(h.mean((2, 3)))


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(3, 3, 10, 10, generator=torch.Generator().manual_seed(1))


def plain_grad(model: nn.Module, inputs: torch.Tensor, score) -> torch.Tensor:
    """Ordinary autograd, one input at a time: the reference."""
    leaf = inputs.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(score(model, leaf).sum(), leaf)
    return g


def class_score(c: int):
    return lambda model, t: model(t)[:, c]


def unit_score(c: int, y: int, x_: int):
    return lambda model, t: model.conv2(torch.relu(model.conv1(t)))[:, c, y, x_]


def stack(result) -> np.ndarray:
    return np.stack([m.gradient for m in result.maps])


def test_vanilla_gradient_is_the_autograd_gradient(net, x) -> None:
    result = saliency(net, x, [ClassTarget(2)])
    assert result.method == "gradient" and result.rectifiers is None and result.samples == 0
    # the engine runs convolutions channels-last on CPU (faster); summation order differs in the last bits only
    expected = plain_grad(net, x, class_score(2))
    np.testing.assert_allclose(stack(result), expected.numpy(), rtol=1e-5, atol=1e-7 * float(expected.abs().max()))
    times = saliency(net, x, [ClassTarget(2)], times_input=True)
    assert times.times_input
    np.testing.assert_allclose(stack(times), (expected * x).numpy(), rtol=1e-5,
                               atol=1e-7 * float((expected * x).abs().max()))


def test_smoothgrad_one_sample_no_noise_is_vanilla(net, x) -> None:
    vanilla = saliency(net, x, [TopK(2), NeuronTarget("conv2", 3, 1, 2)])
    smooth = saliency(net, x, [TopK(2), NeuronTarget("conv2", 3, 1, 2)], samples=1, noise=0.0)
    assert smooth.method == "smoothgrad"
    for a, b in zip(vanilla.maps, smooth.maps, strict=True):
        assert a.target == b.target and a.score == pytest.approx(b.score, rel=1e-6)
        np.testing.assert_allclose(a.gradient, b.gradient, rtol=1e-5, atol=1e-7 * float(np.abs(a.gradient).max()))


@pytest.mark.parametrize("times_input", [False, True])
def test_smoothgrad_is_the_mean_of_per_sample_gradients(net, x, times_input: bool) -> None:
    n, noise, seeds = 5, 0.2, [11, 12, 13]
    result = saliency(net, x, [ClassTarget(1), NeuronTarget("conv2", 3, 1, 2)], samples=n, noise=noise, seed=seeds,
                      times_input=times_input, batch_size=4)
    sigmas = noise * (x.flatten(1).max(1).values - x.flatten(1).min(1).values)
    np.testing.assert_allclose(result.sigmas, sigmas.numpy(), rtol=1e-6)
    assert result.seeds == seeds and result.samples == n
    for i in range(3):
        eps = smoothgrad_noise(seeds[i], n, x.shape[1:])
        for t, score in enumerate((class_score(1), unit_score(3, 1, 2))):
            total = torch.zeros_like(x[0])
            for s in range(n):  # one noisy copy at a time
                noisy = x[i:i + 1] + sigmas[i] * eps[s:s + 1]
                g = plain_grad(net, noisy, score)[0]
                total += g * noisy[0] if times_input else g
            np.testing.assert_allclose(result.for_image(i)[t].gradient, (total / n).numpy(), rtol=1e-5, atol=1e-7)


def test_smoothgrad_noise_is_seeded_and_independent_of_batching(net, x) -> None:
    a = saliency(net, x, [TopK(1)], samples=4, seed=7, batch_size=1)
    b = saliency(net, x, [TopK(1)], samples=4, seed=7, batch_size=5)
    np.testing.assert_allclose(stack(a), stack(b), rtol=1e-5, atol=1e-7)
    c = saliency(net, x, [TopK(1)], samples=4, seed=8)
    assert not np.allclose(stack(a), stack(c))


def test_batch_equals_per_image(net, x) -> None:
    targets = [TopK(2), NeuronTarget("conv2", 1), NeuronTarget("conv2", 5)]
    for kwargs in ({}, {"samples": 3, "noise": 0.1}):
        batch = saliency(net, x, targets, seed=[3, 4, 5], unit="max", **kwargs)
        for i in range(3):
            alone = saliency(net, x[i:i + 1], targets, seed=[3 + i], unit="max", **kwargs)
            for p, q in zip(batch.for_image(i), alone.maps, strict=True):
                assert p.target == q.target and p.rank == q.rank and p.unit_choice == q.unit_choice
                np.testing.assert_allclose(p.gradient, q.gradient, rtol=1e-5, atol=1e-7)


def test_several_targets_equal_one_per_target(net, x) -> None:
    targets = [ClassTarget(0), TopK(1), NeuronTarget("conv1", 2), NeuronTarget("conv2", 4, 0, 3)]
    for kwargs in ({}, {"samples": 3}):
        together = saliency(net, x, targets, **kwargs)
        for t, target in enumerate(targets):
            single = saliency(net, x, [target], **kwargs)
            for i in range(3):
                np.testing.assert_allclose(together.for_image(i)[t].gradient, single.for_image(i)[0].gradient,
                                           rtol=1e-6, atol=1e-8)


def test_class_is_fixed_on_the_clean_image(net, x) -> None:
    result = saliency(net, x, [TopK(1)], samples=3, noise=0.5)
    with torch.no_grad():
        logits = net(x)
    assert [m.target.index for m in result.maps] == logits.argmax(1).tolist()
    assert [m.score for m in result.maps] == pytest.approx(logits.max(1).values.tolist())
    torch.testing.assert_close(result.logits, logits)


def test_noise_sigmas() -> None:
    t = torch.tensor([[[[0.0, 2.0], [-1.0, 1.0]]]])
    assert noise_sigmas(t, 0.1).tolist() == pytest.approx([0.3])


def test_bad_arguments(net, x) -> None:
    with pytest.raises(UsageError, match="samples"):
        saliency(net, x, [TopK(1)], samples=-1)
    with pytest.raises(UsageError, match="noise"):
        saliency(net, x, [TopK(1)], samples=2, noise=-0.1)
    for noise in (1e308, float("inf"), float("nan"), 1.5):  # an infinite sigma would reach the manifest as inf
        with pytest.raises(UsageError, match=r"noise must be a fraction of the input range in \[0, 1\]"):
            saliency(net, x, [TopK(1)], samples=2, noise=noise)
    with pytest.raises(UsageError, match="seeds"):
        saliency(net, x, [TopK(1)], samples=2, seed=[1, 2])
    with pytest.raises(UsageError, match="batch_size"):
        saliency(net, x, [TopK(1)], samples=2, batch_size=0)


def test_samples_are_bounded_and_streamed(net, x) -> None:
    """Issue 15: ``--samples 1000000000`` built every (image, sample) pair up front and was killed at 8.6 GB."""
    import itertools
    import time

    with pytest.raises(UsageError, match=r"samples must be a whole number from 0 \(plain gradient\) to 10,000 "
                                         r"\(SmoothGrad's paper uses 50\), got 1000000000"):
        saliency(net, x, [TopK(1)], samples=10**9)
    started = time.perf_counter()
    batches = sample_batches(3, 10**9, 4)  # a generator: its first batches come at once, whatever the total
    assert list(itertools.islice(batches, 2)) == [[0, 0, 0, 0], [0, 0, 0, 0]]
    assert time.perf_counter() - started < 0.1
    assert list(sample_batches(2, 3, 4)) == [[0, 0, 0, 1], [1, 1]]  # image-major, as the seeded noise is drawn
    assert MAX_SAMPLES == 10_000


def test_model_untouched(net, x) -> None:
    net.train()
    net.conv1.weight.grad = torch.full_like(net.conv1.weight, 3.0)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    try:
        saliency(net, x, [TopK(1)], samples=2)
        assert net.training and all(m.training for m in net.modules())
        assert torch.equal(net.conv1.weight.grad, torch.full_like(net.conv1.weight, 3.0))
        assert net.conv2.weight.grad is None
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    finally:
        net.conv1.weight.grad = None
        net.eval()


@pytest.mark.parametrize(("times_input", "drawn"), [(False, "g"), (True, "g·x")])
def test_panel_titles_say_whether_the_maps_are_of_gradient_x_input(times_input: bool, drawn: str) -> None:
    from explain.guided_run import gradient_panel, map_titles

    assert map_titles(times_input) == (f"magnitude: max_c |{drawn}|", f"signed: sum_c {drawn}")
    rng = np.random.default_rng(0)
    fig = gradient_panel(rng.random((8, 8, 3)), rng.standard_normal((3, 8, 8)), "title", "Gradient", signed=True,
                         times_input=times_input)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[-2:] == list(map_titles(times_input))
    assert ("g·x" in " ".join(titles)) is times_input
