"""The records every backbone carries: its model, its exact preprocessing and its class names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from PIL import Image


@dataclass(frozen=True)
class Geometry:
    """Where the model input comes from in the original image.

    Attributes:
        image_size: ``(width, height)`` of the original image (after EXIF orientation).
        crop_box: ``(x0, y0, x1, y1)`` in original-image pixels of the region that becomes the model input.
            Values may lie outside the image when the crop is larger than the resized image (zero padding).
        model_input: ``(height, width)`` of the tensor handed to the model.
    """

    image_size: tuple[int, int]
    crop_box: tuple[float, float, float, float]
    model_input: tuple[int, int]

    def as_dict(self) -> dict[str, Any]:
        return {"crop_box": [round(v, 3) for v in self.crop_box], "model_input": list(self.model_input)}


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side, centre-crop, scale to [0, 1], normalise per channel.

    This is the pipeline of torchvision's ``ImageClassification`` transform (and of the EfficientNet-Lite
    reference), written so that it also reports the geometry of the crop, which figures need to put a map back
    on the right pixels of the full photo.

    Attributes:
        resize: target length of the shorter side, or ``None`` to resize straight to ``crop``.
        crop: ``(height, width)`` of the centre crop (the model input).
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel standard deviation divided after subtracting the mean.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
    """

    resize: int | None
    crop: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` after the resize step (torchvision's rounding: the long side is truncated)."""
        if self.resize is None:
            return self.crop[1], self.crop[0]
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize

    def geometry(self, width: int, height: int) -> Geometry:
        """The crop box in original-image pixels for an image of ``width`` x ``height``."""
        rw, rh = self.resized_size(width, height)
        ch, cw = self.crop
        left = int(round((rw - cw) / 2.0))
        top = int(round((rh - ch) / 2.0))
        sx, sy = width / rw, height / rh
        box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
        return Geometry(image_size=(width, height), crop_box=box, model_input=(ch, cw))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Turn an RGB PIL image into a normalised float tensor of shape ``(3, H, W)``.

        Equal, value for value, to torchvision's ``ImageClassification`` on PIL input (a test checks it), but
        written with PIL and NumPy so that the embedded model never pays for importing torchvision.
        """
        import numpy as np
        import torch
        from PIL import Image as PILImage

        resample = {"bilinear": PILImage.BILINEAR, "bicubic": PILImage.BICUBIC, "nearest": PILImage.NEAREST}
        width, height = image.size
        rw, rh = self.resized_size(width, height)
        if (rw, rh) != (width, height):
            image = image.resize((rw, rh), resample[self.interpolation])
        ch, cw = self.crop
        left, top = int(round((rw - cw) / 2.0)), int(round((rh - ch) / 2.0))
        # PIL pads with zeros when the box reaches outside the image, as torchvision's center_crop does.
        image = image.crop((left, top, left + cw, top + ch))
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        return self.normalize(tensor)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map [0, 1] pixels (``(..., 3, H, W)``) to the model's input space."""
        mean = x.new_tensor(self.mean).view(3, 1, 1)
        std = x.new_tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`: model-space tensor back to [0, 1] pixels (not clipped)."""
        mean = x.new_tensor(self.mean).view(3, 1, 1)
        std = x.new_tensor(self.std).view(3, 1, 1)
        return x * std + mean

    def as_dict(self) -> dict[str, Any]:
        return {
            "resize": self.resize,
            "crop": list(self.crop),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }


@dataclass
class Backbone:
    """A loaded model with everything needed to feed it and read its output.

    Attributes:
        name: registry name (e.g. ``"efficientnet_lite0"``, ``"resnet50"``).
        model: the ``torch.nn.Module``, in eval mode, on the CPU unless moved.
        preprocess: PIL image -> ``(3, H, W)`` tensor, exactly the model's training preprocessing.
        class_names: one name per output logit.
        default_layer: dotted name of the layer Grad-CAM uses by default (last convolutional block).
        feature_layer: dotted name of the module whose output, globally average-pooled, gives the
            penultimate features used by gallery engines.
        weights: what the weights are (a torchvision weights name, ``"none"``, a file path, a package name).
        weights_sha256: SHA-256 of the weights file when there is one.
    """

    name: str
    model: Any
    preprocess: Preprocess
    class_names: list[str]
    default_layer: str
    feature_layer: str
    weights: str
    weights_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` of the model input."""
        return self.preprocess.crop

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def manifest_record(self) -> dict[str, Any]:
        """The ``model`` entry of an output manifest."""
        return {
            "name": self.name,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "input_size": list(self.input_size),
            "num_classes": self.num_classes,
            "preprocess": self.preprocess.as_dict(),
            "default_layer": self.default_layer,
            "feature_layer": self.feature_layer,
        }
