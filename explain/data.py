"""Batches of decoded, preprocessed images. Bad files become per-file errors; the batch goes on without them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from explain.errors import InputError

if TYPE_CHECKING:
    import torch

    from explain.backbones.base import Geometry, Preprocess
    from explain.images import ImageFile, LoadedImage


@dataclass
class Sample:
    """One decoded image, its model input and where that input sits in the original photo."""

    loaded: LoadedImage
    tensor: torch.Tensor
    geometry: Geometry

    def shown_crop_box(self) -> tuple[float, float, float, float]:
        """:attr:`Geometry.crop_box` (the model input's place in the photo) in the pixels of the photo as figures
        draw it (:attr:`explain.images.LoadedImage.shown`)."""
        return self.loaded.shown.box(self.geometry.crop_box)


@dataclass
class Batch:
    """Up to ``batch_size`` inputs: the good ones stacked in ``tensor``, the bad ones in ``errors``."""

    samples: list[Sample] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)
    tensor: torch.Tensor | None = None

    @property
    def size(self) -> int:
        """How many inputs (good and bad) this batch accounts for."""
        return len(self.samples) + len(self.errors)


class _ImageDataset:
    def __init__(self, files: Sequence[ImageFile], preprocess: Preprocess, max_pixels: int | None) -> None:
        self.files = list(files)
        self.preprocess = preprocess
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Sample | InputError:
        from explain.images import DEFAULT_MAX_PIXELS, load_image

        file = self.files[i]
        try:
            loaded = load_image(file.path, display=file.display, max_pixels=self.max_pixels or DEFAULT_MAX_PIXELS)
            tensor = self.preprocess(loaded.image)
            geometry = self.preprocess.geometry(*loaded.image.size)
        except InputError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - any failure here belongs to this file only
            return InputError(file.display, f"cannot preprocess: {exc}")
        return Sample(loaded, tensor, geometry)


def _collate(items: list[Any]) -> Batch:
    import torch

    batch = Batch()
    for item in items:
        (batch.errors if isinstance(item, InputError) else batch.samples).append(item)
    if batch.samples:
        batch.tensor = torch.stack([s.tensor for s in batch.samples])
    return batch


def iter_batches(
    files: Sequence[ImageFile],
    preprocess: Preprocess,
    batch_size: int = 8,
    workers: int = 0,
    max_pixels: int | None = None,
) -> Iterator[Batch]:
    """Decode and preprocess ``files`` in order, ``batch_size`` at a time.

    Args:
        files: images to read (from :func:`explain.images.find_images`).
        preprocess: the backbone's preprocessing.
        batch_size: inputs per batch (bad files count towards the size, so progress is exact).
        workers: DataLoader worker processes decoding in parallel with the model (0: in this process).
        max_pixels: decompression-bomb limit per image (default: :data:`explain.images.DEFAULT_MAX_PIXELS`).

    Yields:
        :class:`Batch` objects; a batch may hold only errors (``tensor is None``).
    """
    import torch
    from torch.utils.data import DataLoader

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    loader = DataLoader(
        _ImageDataset(files, preprocess, max_pixels),  # type: ignore[arg-type]
        batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate,
        # its own generator: the loader draws a base seed per pass, which would advance the caller's global random
        # state (nothing here is random, so any fixed seed will do)
        generator=torch.Generator().manual_seed(0),
    )
    yield from loader
