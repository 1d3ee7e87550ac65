"""Shared timing helpers for the benchmark scripts: interleaved medians and the benchmarked models."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of each run, the runs interleaved within every repeat (load drifts hit all alike).

    Also returns ``<name>_min``, the best run, as a check on noise.
    """
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    result = {name: statistics.median(values) for name, values in times.items()}
    result.update({f"{name}_min": min(values) for name, values in times.items()})
    return result


def load_models(names: list[str]) -> list[tuple[str, object, str]]:
    """``(name, model, default layer)`` with random weights (timing does not depend on the values)."""
    from explain import load_backbone

    out = []
    for name in names:
        bb = load_backbone(name, weights="none")
        out.append((name, bb.model.eval(), bb.default_layer))
    return out


def load_note() -> str:
    if not hasattr(os, "getloadavg"):
        return ""
    return f"load average after the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (other processes add noise)"
