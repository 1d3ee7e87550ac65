"""How fast `cnn-explain --help` answers, against `python -c pass` (torch must not be imported for help).

Usage: python bench/help_speed.py [--repeats N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(cmd: list[str], repeats: int) -> float:
    """Median wall time of ``cmd`` over ``repeats`` runs (after one warm-up)."""
    subprocess.run(cmd, capture_output=True, check=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    exe = shutil.which("cnn-explain") or str(Path(sys.executable).with_name("cnn-explain"))
    base = timed([sys.executable, "-c", "pass"], args.repeats)
    help_time = timed([exe, "--help"], args.repeats)
    torch_time = timed([sys.executable, "-c", "import torch"], args.repeats)
    print(f"python -c pass        {base * 1000:7.1f} ms")
    print(f"cnn-explain --help    {help_time * 1000:7.1f} ms   ({help_time / base:.1f}x python startup)")
    print(f"python -c 'import torch' {torch_time * 1000:7.1f} ms   (what help would cost with an eager import)")


if __name__ == "__main__":
    main()
