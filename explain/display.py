"""A bounded copy of a photo for drawing: overlays and full-photo figures never work at more than a few megapixels.

Models get their exact inputs from the decoded photo (:mod:`explain.data`); only what is drawn over the whole photo
(heat-map overlays, detection boxes, class maps) uses :func:`display_copy`, so that drawing a 99 MP photo costs
what drawing a 4 MP one does (a 99 MP photo drawn at full size took ``cam`` to 12.8 GB). A photo within
:data:`DISPLAY_MAX_PIXELS` is drawn at its own size, as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["DISPLAY_MAX_PIXELS", "PANEL_MAX_PIXELS", "DisplayCopy", "display_copy", "display_size", "panel_copy"]

DISPLAY_MAX_PIXELS: int = 4_000_000
"""Largest ``width * height`` drawn: a larger photo is scaled down (aspect ratio kept) before anything is drawn."""

PANEL_MAX_PIXELS: int = 1_000_000
"""Largest picture placed in a panel figure, whose axes are a few hundred pixels wide at any ``--dpi`` a paper
uses: matplotlib keeps several float copies of every picture it draws (over 100 MB each at 4 MP)."""


@dataclass(frozen=True)
class DisplayCopy:
    """A photo as it is drawn.

    Attributes:
        image: the photo, or a scaled-down copy of it of at most :data:`DISPLAY_MAX_PIXELS` pixels.
        photo_size: ``(width, height)`` of the photo itself.
    """

    image: Image.Image
    photo_size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """``(x, y)`` drawn pixels per photo pixel (1 when the photo is drawn at its own size)."""
        return self.image.width / self.photo_size[0], self.image.height / self.photo_size[1]

    @property
    def scaled(self) -> bool:
        """Whether the photo was scaled down for drawing."""
        return self.image.size != self.photo_size

    def box(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """An ``(x0, y0, x1, y1)`` box in photo pixels, in the drawn image's pixels."""
        sx, sy = self.scale
        x0, y0, x1, y1 = box
        return x0 * sx, y0 * sy, x1 * sx, y1 * sy


def display_size(width: int, height: int, max_pixels: int = DISPLAY_MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` of the drawn copy of a ``width`` x ``height`` photo: its own size within
    ``max_pixels``, else scaled by one factor so that it holds at most ``max_pixels`` (each side at least 1)."""
    if width * height <= max_pixels:
        return width, height
    factor = math.sqrt(max_pixels / (width * height))
    return max(1, math.floor(width * factor)), max(1, math.floor(height * factor))


def display_copy(image: Image.Image, max_pixels: int = DISPLAY_MAX_PIXELS) -> DisplayCopy:
    """The photo to draw on: ``image`` itself within ``max_pixels``, else a copy scaled down with an antialiasing
    filter (PIL's reducing steps first, so that scaling a 99 MP photo needs little more memory than the copy)."""
    from PIL import Image as PILImage

    size = display_size(image.width, image.height, max_pixels)
    if size == image.size:
        return DisplayCopy(image, image.size)
    return DisplayCopy(image.resize(size, PILImage.BILINEAR, reducing_gap=2.0), image.size)


def panel_copy(picture: Any, max_pixels: int = PANEL_MAX_PIXELS) -> Any:
    """A picture for a panel figure: itself within ``max_pixels``, else scaled down like :func:`display_copy`.

    Args:
        picture: a PIL image, or a NumPy array ``(H, W)`` or ``(H, W, 3)``: a float array (a map, an RGB blend) is
            resized bilinearly, any other (class indices, a boolean region) by nearest neighbour.
        max_pixels: the bound.

    Returns:
        The same kind of picture.
    """
    import numpy as np
    from PIL import Image as PILImage

    if isinstance(picture, PILImage.Image):
        return display_copy(picture, max_pixels).image
    height, width = picture.shape[:2]
    size = display_size(width, height, max_pixels)
    if size == (width, height):
        return picture
    smooth = np.issubdtype(picture.dtype, np.floating)
    planes = [picture] if picture.ndim == 2 else [picture[..., c] for c in range(picture.shape[2])]
    resized = [resize_plane(plane, size, smooth).astype(picture.dtype) for plane in planes]
    return resized[0] if picture.ndim == 2 else np.stack(resized, axis=-1)


def resize_plane(plane: Any, size: tuple[int, int], smooth: bool) -> Any:
    """A 2-D array resized to ``size`` ``(width, height)``: bilinear in float32 when ``smooth`` (maps), else nearest
    neighbour in int32 (class indices, masks)."""
    import numpy as np
    from PIL import Image as PILImage

    mode, data = ("F", np.asarray(plane, dtype=np.float32)) if smooth else ("I", np.asarray(plane).astype(np.int32))
    return np.asarray(PILImage.fromarray(data, mode=mode).resize(size, PILImage.BILINEAR if smooth else
                                                                 PILImage.NEAREST))
