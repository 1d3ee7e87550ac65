"""Top-k classification of image files with a backbone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from explain.errors import InputError, UsageError
from explain.scores import ClassScore, top_classes  # ClassScore stays importable from here (README)

if TYPE_CHECKING:
    import torch

    from explain.backbones.base import Backbone, Geometry
    from explain.data import Batch
    from explain.run import RunSettings
    from explain.images import ImageFile
    from explain.manifest import Manifest


@dataclass
class ImagePrediction:
    """The prediction for one input file."""

    input: str
    sha256: str
    geometry: Geometry
    top: list[ClassScore]
    notes: list[str] = field(default_factory=list)

    def as_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "input": self.input,
            "input_sha256": self.sha256,
            "geometry": self.geometry.as_dict(),
            "prediction": [c.as_dict() for c in self.top],
            "outputs": {},
        }
        if self.notes:
            item["notes"] = self.notes
        return item


@dataclass
class PredictResult:
    """Predictions of a run and the inputs that failed, in input order."""

    predictions: list[ImagePrediction]
    errors: list[InputError]

    def to_manifest(self, backbone: Backbone, argv: Sequence[str] = (), top_k: int = 5) -> Manifest:
        from explain.manifest import Manifest

        manifest = Manifest(command="predict", argv=argv, model=backbone.manifest_record(), extra={"top_k": top_k})
        manifest.items = [p.as_item() for p in self.predictions]
        for err in self.errors:
            manifest.add_error(err.path, err.reason)
        return manifest


def predict(
    backbone: Backbone,
    files: Sequence[ImageFile],
    top_k: int = 5,
    settings: RunSettings | None = None,
) -> PredictResult:
    """Classify ``files`` with ``backbone``.

    Args:
        backbone: the loaded backbone (its model is moved to ``settings.device`` and left there).
        files: the inputs (see :func:`explain.images.find_images`).
        top_k: how many classes to report per image.
        settings: batch size, device, decoding workers and progress callback.

    Returns:
        A :class:`PredictResult`; unreadable files are in ``errors``, the rest in ``predictions``.
    """
    import torch

    from explain.hooks import eval_mode
    from explain.manifest import Manifest
    from explain.run import RunInterrupted, RunSettings, for_each_batch

    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1 (got {top_k})")
    settings = settings or RunSettings()
    predictions: list[ImagePrediction] = []
    run = Manifest(command="predict")

    def handle(batch: Batch) -> list[dict[str, Any]]:
        # eval mode (BatchNorm running statistics, no dropout), the model's own training flags restored afterwards
        with eval_mode(backbone.model), torch.inference_mode():
            logits = backbone.model(batch.tensor.to(settings.device))
        finite = torch.isfinite(logits).all(1).tolist()
        for sample, top, ok in zip(batch.samples, top_classes(logits, backbone.class_names, top_k), finite):
            loaded = sample.loaded
            if not ok:  # e.g. NaN weights in a checkpoint: no ranking to report
                run.errors.append({"input": loaded.display, "error": "the model's output is not finite (NaN or "
                                                                    "inf): check the weights"})
                continue
            predictions.append(ImagePrediction(loaded.display, loaded.sha256, sample.geometry, top, list(loaded.notes)))
        return []

    def result() -> PredictResult:  # what was predicted so far; for_each_batch records bad files in run.errors
        return PredictResult(predictions, [InputError(e["input"], e["error"]) for e in run.errors])

    try:
        for_each_batch(backbone, files, run, settings, handle)
    except RunInterrupted as exc:  # the predictions made so far, as a predict manifest
        raise RunInterrupted(result().to_manifest(backbone, settings.argv, top_k)) from exc
    return result()
