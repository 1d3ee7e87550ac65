"""How much a Grad-CAM++ explanation costs compared with plain inference.

For each model (the embedded EfficientNet-Lite0 and torchvision's ResNet-50, random weights: the timing does not
depend on the values), a batch of 8 images at 224 x 224 is timed three ways:

* ``forward``: ``model(x)`` under ``torch.no_grad()`` (the baseline);
* ``top1``: ``compute_cams(..., targets=[TopK(1)], method="gradcam++")`` at the model's default layer;
* ``top5``: the same with ``TopK(5)`` (five maps per image).

The three are interleaved within every repeat (so drifts in machine load hit all of them alike), after warm-up
runs, and the medians are reported with their ratios (and, as a check on noise, the ratios of the best runs).
The targets of the design are ratios of at most 1.10 (top1) and 1.30 (top5). Threads: PyTorch's default
(``torch.get_num_threads()``).

Run: ``python bench/cam_speed.py [--repeats N] [--batch N] [--size PX]``.
"""

from __future__ import annotations

import argparse

import torch
from _timing import interleaved, load_models, load_note

from explain.cam import compute_cams
from explain.targets import TopK


def bench(model: torch.nn.Module, layer: str, x: torch.Tensor, repeats: int, warmup: int) -> dict[str, float]:
    def forward() -> None:
        with torch.no_grad():
            model(x)

    return interleaved({
        "forward": forward,
        "top1": lambda: compute_cams(model, x, [layer], [TopK(1)], method="gradcam++"),
        "top5": lambda: compute_cams(model, x, [layer], [TopK(5)], method="gradcam++"),
    }, repeats, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch} at {args.size} px, "
        f"median of {args.repeats} (after {args.warmup} warm-up runs)"
    )
    print(f"{'model':<20} {'layer':<12} {'forward':>9} {'gcam++ top1':>12} {'ratio':>6} ", end="")
    print(f"{'gcam++ top5':>12} {'ratio':>6}")
    for label, model, layer in load_models(["efficientnet_lite0", "resnet50"]):
        t = bench(model, layer, x, args.repeats, args.warmup)
        print(
            f"{label:<20} {layer:<12} {t['forward'] * 1e3:7.1f}ms {t['top1'] * 1e3:10.1f}ms "
            f"{t['top1'] / t['forward']:6.3f} {t['top5'] * 1e3:10.1f}ms {t['top5'] / t['forward']:6.3f}"
            f"   (best runs: {t['forward_min'] * 1e3:.1f}ms, ratios {t['top1_min'] / t['forward_min']:.3f}, "
            f"{t['top5_min'] / t['forward_min']:.3f})"
        )
    print(load_note())


if __name__ == "__main__":
    main()
