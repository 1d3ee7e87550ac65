"""What one step of gradient ascent costs compared with the network's own forward + input-only backward pass.

A batch of 8 objectives (8 ImageNet classes) at 224 x 224 on the embedded EfficientNet-Lite0, timed two ways:

* ``baseline``: ``out = model(normalize(x))`` on a leaf ``x`` that requires grad, then
  ``torch.autograd.grad(out[range(8), classes].sum(), x)``: the forward pass plus a backward pass to the input only
  (no parameter gradients). This is the least any gradient-ascent step can cost.
* ``ascent``: one step of :func:`explain.ascent.ascend` with its defaults (Fourier parameterisation with decorrelated
  colour, random jitter/zoom/rotation, Adam): render the images, transform them, forward, objectives, backward to the
  spectrum, Adam update. Steps are timed by the ``on_step`` callback (the gap between consecutive steps), so the
  one-off probe and the evaluations before and after the loop are excluded.

Both are interleaved within every repeat (drifts in machine load hit both alike), after a warm-up, and the medians
are reported with their ratio; the design target is a ratio of at most 1.2. With ``--channels`` the same is also
done for 8 channel objectives at a mid layer, whose forward pass stops after that layer (its ratio is below 1).

Run: ``python bench/ascent_speed.py [--repeats N] [--steps K] [--batch N] [--size PX] [--channels]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explain import load_backbone  # noqa: E402
from explain.ascent import AscentConfig, ChannelMean, ClassLogit, ascend  # noqa: E402

CLASSES = [1, 130, 281, 985, 967, 309, 96, 417]  # goldfish flamingo tabby daisy espresso bee toucan balloon


def baseline_times(model: torch.nn.Module, normalize, batch: int, size: int, k: int) -> list[float]:
    x = torch.rand(batch, 3, size, size)
    index = torch.tensor([CLASSES[i % len(CLASSES)] for i in range(batch)])
    times = []
    for _ in range(k):
        start = time.perf_counter()
        leaf = x.detach().requires_grad_(True)
        out = model(normalize(leaf))
        torch.autograd.grad(out[torch.arange(batch), index].sum(), leaf)
        times.append(time.perf_counter() - start)
    return times


def ascent_times(model: torch.nn.Module, normalize, objectives, size: int, k: int) -> list[float]:
    stamps: list[float] = []
    cfg = AscentConfig(steps=k + 1, size=size, early_stop=False)
    ascend(model, objectives, cfg, normalize=normalize, on_step=lambda info: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:])]


def compare(label: str, model, normalize, objectives, args: argparse.Namespace) -> float:
    baseline_times(model, normalize, len(objectives), args.size, 1)  # warm-up
    ascent_times(model, normalize, objectives, args.size, 1)
    base: list[float] = []
    steps: list[float] = []
    for _ in range(args.repeats):
        base += baseline_times(model, normalize, len(objectives), args.size, args.steps)
        steps += ascent_times(model, normalize, objectives, args.size, args.steps)
    b, s = statistics.median(base), statistics.median(steps)
    print(f"{label}: batch {len(objectives)} at {args.size} px, {len(base)} + {len(steps)} timings "
          f"(threads: {torch.get_num_threads()})")
    print(f"  forward + input-only backward  median {b * 1000:8.1f} ms   min {min(base) * 1000:8.1f} ms")
    print(f"  ascent step                    median {s * 1000:8.1f} ms   min {min(steps) * 1000:8.1f} ms")
    print(f"  ratio (medians) {s / b:.3f}   ratio (minima) {min(steps) / min(base):.3f}")
    return s / b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--channels", action="store_true", help="also time 8 channel objectives at _blocks.10")
    args = parser.parse_args()
    bb = load_backbone("efficientnet_lite0")
    model, normalize = bb.model.eval(), bb.preprocess.normalize
    objectives = [ClassLogit(CLASSES[i % len(CLASSES)]) for i in range(args.batch)]
    ratio = compare("classes", model, normalize, objectives, args)
    if args.channels:
        compare("channels at _blocks.10", model, normalize,
                [ChannelMean("_blocks.10", c) for c in range(args.batch)], args)
    print(f"per-step time / (forward + input-only backward) = {ratio:.3f}  (target <= 1.2)")


if __name__ == "__main__":
    main()
