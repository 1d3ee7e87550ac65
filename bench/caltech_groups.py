"""Make a groups CSV (``path,colour``) that splits a labelled image folder into grayscale and colour photos.

Caltech-101 holds some grayscale photos among colour ones (41 of the 750 in caltech101-25x30), stored as 3-channel
JPEGs, so the file's mode does not tell. A photo counts as ``grayscale`` when, after shrinking it to at most 128 px,
no pixel's channels differ by more than ``--tolerance`` (JPEG noise makes truly gray pictures differ by a few
levels); otherwise ``colour``. Only the paths listed in the labels file are written, relative to the dataset folder,
as ``cnn-explain audit --groups`` expects.

Run::

    python bench/caltech_groups.py ../shared/data/caltech101-25x30 \
        --labels ../shared/data/caltech101-25x30/labels.csv --out out/caltech-groups.csv
    cnn-explain audit ../shared/data/caltech101-25x30 --labels ../shared/data/caltech101-25x30/labels.csv \
        --groups out/caltech-groups.csv --out out/caltech-audit
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image


def is_grayscale(path: Path, tolerance: int = 12) -> bool:
    """Whether every pixel's R, G and B lie within ``tolerance`` levels of each other (at <= 128 px)."""
    with Image.open(path) as image:
        if image.mode in ("L", "LA", "I", "I;16", "F", "1"):
            return True
        image = image.convert("RGB")
        image.thumbnail((128, 128))
        pixels = np.asarray(image, dtype=np.int16)
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    return int(spread.max()) <= tolerance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--labels", type=Path, required=True, help="labels CSV with a path column")
    parser.add_argument("--out", type=Path, default=Path("caltech-groups.csv"))
    parser.add_argument("--tolerance", type=int, default=12)
    args = parser.parse_args()
    with open(args.labels, newline="", encoding="utf-8-sig") as handle:
        paths = [row["path"] for row in csv.DictReader(handle)]
    counts = {"grayscale": 0, "colour": 0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "colour"])
        for rel in paths:
            group = "grayscale" if is_grayscale(args.dataset / rel, args.tolerance) else "colour"
            counts[group] += 1
            writer.writerow([rel, group])
    print(f"wrote {args.out}: {counts['grayscale']} grayscale, {counts['colour']} colour")


if __name__ == "__main__":
    main()
