"""How much guided backpropagation costs compared with plain inference.

For resnet50, densenet121 (functional ReLU) and the embedded EfficientNet-Lite0 (ReLU6), random weights, a batch of
8 images at 224 px: ``guided_backprop(..., [TopK(1)])`` against ``model(x)`` under ``torch.no_grad()``, interleaved,
medians after warm-up. The floor is about 2 (one forward with a graph, one input-only backward); the design's
target is at most 2.2. The plain input gradient (``saliency``) is printed too, for reference.

Run: ``python bench/guided_speed.py [--repeats N] [--batch N] [--size PX]``.
"""

from __future__ import annotations

import argparse

import torch
from _timing import interleaved, load_models, load_note

from explain.guided import guided_backprop
from explain.saliency import saliency
from explain.targets import TopK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch} at {args.size} px")
    print(f"{'model':<20} {'forward':>9} {'guided':>9} {'ratio':>6} {'gradient':>9} {'ratio':>6}")
    for name, model, _ in load_models(["resnet50", "densenet121", "efficientnet_lite0"]):
        def forward(model: torch.nn.Module = model) -> None:
            with torch.no_grad():
                model(x)

        t = interleaved({
            "forward": forward,
            "guided": lambda model=model: guided_backprop(model, x, [TopK(1)]),
            "gradient": lambda model=model: saliency(model, x, [TopK(1)]),
        }, args.repeats, args.warmup)
        print(f"{name:<20} {t['forward'] * 1e3:7.1f}ms {t['guided'] * 1e3:7.1f}ms {t['guided'] / t['forward']:6.2f} "
              f"{t['gradient'] * 1e3:7.1f}ms {t['gradient'] / t['forward']:6.2f}"
              f"   (best runs: ratio {t['guided_min'] / t['forward_min']:.2f})")
    print(load_note())


if __name__ == "__main__":
    main()
