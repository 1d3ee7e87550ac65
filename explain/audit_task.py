"""The per-image work of an audit: one batch of images in, one flat record per image out.

The runner (:mod:`explain.audit`) knows nothing about classifiers: it lists files, resumes from its journal, feeds
batches to a *task* and writes what the task returns. :class:`ClassificationTask` is the task for image
classifiers; :class:`explain.audit_detection.DetectionTask` is the one for detectors (one record per object).

What :class:`ClassificationTask` measures per image (every map is Grad-CAM++, Chattopadhyay et al. 2018,
https://arxiv.org/abs/1710.11063, at the model-input resolution, via :mod:`explain.cam`):

* the prediction (top-1 class and probability), the true class and its probability, and correctness (any one of
  the accepted classes counts);
* with boxes, on the map of the **true class** (the class the box shows; when the prediction is correct that is
  the predicted class, otherwise the most probable accepted class): the share of the map's energy inside the boxes
  (Score-CAM's energy-based pointing game, Wang et al. 2020, https://arxiv.org/abs/1910.01279), the box area
  share (what a uniform map would score) and the pointing-game hit (the map's maximum within 15 px of a box,
  TorchRay's convention, Zhang et al. 2016, https://arxiv.org/abs/1608.00507);
* faithfulness, on the map of the **predicted class** (what the model decided): deletion and insertion AUC (RISE,
  Petsiuk et al. 2018, https://arxiv.org/abs/1806.07421) of the CAM and of a random map at the layer's resolution
  (:func:`explain.metrics.random_maps`, seeded per image so results do not depend on batching);
* translation: shift the input by ``+-k`` px horizontally and vertically and report the mean absolute change of the
  predicted class's probability, the share of shifts keeping the top-1 class and the mean distance between the CAM
  peak and where it should have moved;
* sanity (Adebayo et al. 2018, https://arxiv.org/abs/1810.03292), on a seeded sample of images only, computed once
  for the whole sample after the last batch (:meth:`ClassificationTask.final`: one randomised network per cascade
  step, calibrated on the whole sample, so the result does not depend on batching): the Spearman correlation
  between the maps of the trained and of a randomised network (low is good) at every step of the paper's cascade
  (top layer first) and, per image, after the full randomisation, for Grad-CAM++ and, as a reference, for Grad-CAM.
  Grad-CAM++ keeps only positive gradients, so on a random network its map drifts towards the layer's activation
  energy, which still follows the image (see :mod:`explain.cam`); Grad-CAM's signed weights do not, and the
  reference shows how much of the correlation is the method's rather than the model's.
"""

from __future__ import annotations

import abc
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from explain.audit_inputs import AuditInputs, boxes_to_input

if TYPE_CHECKING:
    import torch

    from explain.backbones.base import Backbone
    from explain.data import Batch

__all__ = ["CLASSIFICATION_COLUMNS", "AuditTask", "ClassificationSettings", "ClassificationTask", "rounded"]

METHOD = "gradcam++"
REFERENCE_METHOD = "gradcam"


def rounded(value: Any, digits: int = 6) -> float | None:
    """A float rounded to ``digits`` significant digits (so journal, CSV and JSON agree); NaN/None -> None."""
    if value is None:
        return None
    number = float(value)
    if number != number:
        return None
    return float(f"{number:.{digits}g}")


class AuditTask(abc.ABC):
    """What the runner needs from a kind of model (classification now, detection later).

    Attributes:
        name: the task's name (``"classification"``), stored in the journal and the manifest.
        columns: the record fields written to ``images.csv``, in order (``images.jsonl`` holds every field).
    """

    name: str = ""
    columns: tuple[str, ...] = ()

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything that changes the records: stored in the journal; a different value forbids resuming."""

    @abc.abstractmethod
    def records(self, batch: Batch, keys: Sequence[str]) -> list[dict[str, Any]]:
        """One flat, JSON-ready record per good image of ``batch`` (``keys[i]`` names ``batch.samples[i]``).

        Records must depend only on each image and the configuration, never on the batch's other images or its
        size' rounding, so that a resumed run equals an uninterrupted one.
        """

    def input_preprocess(self, preprocess: Any) -> Any:
        """The preprocessing the runner decodes batches with (default: the backbone's own).

        A task whose inputs cannot be stacked (detectors take photos at their own sizes) returns a stand-in and
        preprocesses each ``sample.loaded.image`` itself.
        """
        return preprocess

    def final_keys(self, readable: Sequence[str]) -> list[str]:
        """The images the dataset-level step (:meth:`final`) needs, sorted; none (the default): no such step.

        Args:
            readable: the keys of the images every batch could read (those with a record), so that a sample is
                drawn from images that can be explained.
        """
        return []

    def final(self, x: torch.Tensor | None, keys: Sequence[str],
              advance: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Dataset-level results, computed once after every batch and journaled (JSON-ready).

        Args:
            x: the preprocessed images of :meth:`final_keys` that could be read (``None``: none could).
            keys: their keys, in the order of ``x``.
            advance: progress callback, called with 1 per unit of work.
        """
        return {}

    def merge_final(self, records: Sequence[dict[str, Any]], final: dict[str, Any] | None) -> None:
        """Copy what :meth:`final` found about single images into their ``records`` (in place)."""


def sanity_sample(keys: Sequence[str], n: int, seed: int) -> frozenset[str]:
    """A seeded sample of ``n`` paths (all of them when there are fewer); the order of ``keys`` does not matter."""
    if n >= len(keys):
        return frozenset(keys)
    return frozenset(random.Random(seed).sample(sorted(keys), n))


@dataclass(frozen=True)
class ClassificationSettings:
    """The knobs of a classification audit.

    Attributes:
        layer: dotted name of the layer Grad-CAM++ explains at.
        steps: deletion/insertion steps (``S + 1`` forward passes per curve and image); 0 disables faithfulness.
        shift: translation in pixels of the model input; 0 disables the translation test.
        sanity: how many images get the sanity check (0: none): a seeded sample of the readable ones
            (:func:`sanity_sample`), drawn once every batch is done.
        seed: seed of the random baseline maps and of the randomised network.
        randomisation: the sanity check's randomisation scheme (:func:`explain.metrics.randomized_model`).
        cascade: run the sanity check's whole cascade, or only the full randomisation.
        tolerance: pointing-game tolerance in model-input pixels.
        curve_batch: masked images per forward pass in the deletion/insertion curves (small batches are fastest
            on CPUs: measured here, a 224 px EfficientNet-Lite0 pass cost ~55 ms per image in batches of 1-4 but
            ~190 ms in batches of 64).
        shift_batch: images per translation test call (each call explains 5 copies of every image).
    """

    layer: str
    steps: int = 8
    shift: int = 8
    sanity: int = 0
    seed: int = 0
    randomisation: str = "recalibrated"
    cascade: bool = True
    tolerance: float = 15.0
    curve_batch: int = 4
    shift_batch: int = 4


CLASSIFICATION_COLUMNS: tuple[str, ...] = (
    "path", "true_class", "true_name", "pred_class", "pred_name", "prob", "true_prob", "correct",
    "box_status", "box_area", "energy_in_box", "pointing_hit",
    "deletion_auc", "deletion_auc_random", "insertion_auc", "insertion_auc_random",
    "shift_prob_change", "shift_top1_kept", "shift_peak_move", "sanity_rho", "sanity_rho_gradcam", "notes",
)


class ClassificationTask(AuditTask):
    """Audit records of an image classifier (see the module docstring for every field).

    Args:
        backbone: the model, its preprocessing and class names (left as found).
        inputs: the audit's images, labels and boxes.
        settings: layer, steps, shift, sanity sample, seed.
        device: where the model runs.
    """

    name = "classification"
    columns = CLASSIFICATION_COLUMNS

    def __init__(self, backbone: Backbone, inputs: AuditInputs, settings: ClassificationSettings,
                 device: Any = "cpu") -> None:
        self.backbone = backbone
        self.inputs = inputs
        self.settings = settings
        self.device = device

    def config(self) -> dict[str, Any]:
        s = self.settings
        return {"task": self.name, "method": METHOD, "sanity_reference": REFERENCE_METHOD, "layer": s.layer,
                "steps": s.steps, "shift": s.shift, "sanity": s.sanity, "seed": s.seed,
                "randomisation": s.randomisation, "cascade": s.cascade, "tolerance": s.tolerance}

    # --- the batch --------------------------------------------------------------------------------------------
    def records(self, batch: Batch, keys: Sequence[str]) -> list[dict[str, Any]]:
        from explain.hooks import channels_last_layout, prefers_channels_last

        model = self.backbone.model
        with channels_last_layout(model, prefers_channels_last(model)):
            return self._records(batch, keys)

    def _records(self, batch: Batch, keys: Sequence[str]) -> list[dict[str, Any]]:
        import torch

        from explain.cam import compute_cams
        from explain.targets import TopK

        x = batch.tensor.to(self.device)
        result = compute_cams(self.backbone.model, x, self.settings.layer, [TopK(1)], METHOD)
        pred_maps = torch.stack([torch.from_numpy(m.map) for m in result.maps])
        layer_size = tuple(result.maps[0].maps_layer[self.settings.layer].shape)
        probs = torch.softmax(result.logits, dim=1)
        pred = probs.argmax(1)
        labels = [self.inputs.labels.labels[k] for k in keys]
        cam_class, correct = self._true_classes(probs, pred, labels)
        rows = [self._base_record(k, batch.samples[i], labels[i], probs[i], int(pred[i]), int(cam_class[i]),
                                  bool(correct[i])) for i, k in enumerate(keys)]
        true_maps = self._true_maps(x, pred_maps, pred, cam_class)
        self._add_boxes(rows, batch, keys, true_maps)
        self._add_faithfulness(rows, x, pred_maps, pred, keys, layer_size)
        self._add_translation(rows, x)
        return rows

    @staticmethod
    def _true_classes(probs: torch.Tensor, pred: torch.Tensor, labels: Sequence[Any]) -> tuple[list[int], list[bool]]:
        """The class whose map the boxes are compared with, and correctness, per image."""
        classes, correct = [], []
        for i, label in enumerate(labels):
            ok = int(pred[i]) in label.indices
            correct.append(ok)
            classes.append(int(pred[i]) if ok else max(label.indices, key=lambda c: float(probs[i, c])))
        return classes, correct

    def _base_record(self, key: str, sample: Any, label: Any, probs: torch.Tensor, pred: int, cam_class: int,
                     correct: bool) -> dict[str, Any]:
        names = self.backbone.class_names
        notes = list(sample.loaded.notes) + self.inputs.boxes.notes.get(key, [])
        return {
            "path": key, "true_class": cam_class, "true_name": label.name,
            "accepted": list(label.indices), "pred_class": pred, "pred_name": names[pred],
            "prob": rounded(probs[pred]), "true_prob": rounded(max(float(probs[c]) for c in label.indices)),
            "correct": correct, "input_sha256": sample.loaded.sha256,
            "crop_box": [round(v, 3) for v in sample.geometry.crop_box], "notes": notes,
            "sanity_rho": None, "sanity_rho_gradcam": None,  # filled from the final step (merge_final)
        }

    def _true_maps(self, x: torch.Tensor, pred_maps: torch.Tensor, pred: torch.Tensor,
                   cam_class: Sequence[int]) -> torch.Tensor:
        """Maps of the true classes: the predicted class's where it is right, new CAMs where it is wrong."""
        import torch

        from explain.metrics import cams_for_classes

        classes = torch.as_tensor(cam_class)
        wrong = (classes != pred).nonzero()[:, 0]
        maps = pred_maps.clone()
        if len(wrong):
            _, fresh, _ = cams_for_classes(self.backbone.model, x[wrong.to(x.device)], self.settings.layer,
                                           classes[wrong], METHOD)
            maps[wrong] = fresh
        return maps

    # --- metrics --------------------------------------------------------------------------------------------
    def _add_boxes(self, rows: list[dict[str, Any]], batch: Batch, keys: Sequence[str],
                   true_maps: torch.Tensor) -> None:
        import torch

        from explain.metrics import boxes_to_mask, energy_in_mask, pointing_hits

        size = tuple(true_maps.shape[-2:])
        masks, with_box = [], []
        for i, key in enumerate(keys):
            mapped = boxes_to_input(self.inputs.boxes.boxes.get(key, []), batch.samples[i].geometry)
            rows[i]["box_status"] = mapped.status
            rows[i]["notes"].extend(mapped.notes)
            rows[i].update(box_area=None, energy_in_box=None, pointing_hit=None)
            if mapped.boxes:
                masks.append(boxes_to_mask(mapped.boxes, size))
                with_box.append(i)
        if not with_box:
            return
        mask = torch.stack(masks)
        maps = true_maps[with_box]
        energy = energy_in_mask(maps, mask)
        hits = pointing_hits(maps, mask, tolerance=self.settings.tolerance)
        area = mask.flatten(1).float().mean(1)
        for j, i in enumerate(with_box):
            rows[i].update(box_area=rounded(area[j]), energy_in_box=rounded(energy[j]), pointing_hit=bool(hits[j]))

    def _random_baseline(self, keys: Sequence[str], size: tuple[int, int], layer_size: tuple[int, ...]):
        """One random map per image, seeded by the run's seed and the image's path (independent of batching)."""
        import torch

        from explain.metrics import random_maps

        return torch.cat([random_maps((1, *size), like=layer_size[-2:],
                                      seed=self.settings.seed * 1_000_003 + zlib.crc32(key.encode()))
                          for key in keys])

    def _add_faithfulness(self, rows: list[dict[str, Any]], x: torch.Tensor, pred_maps: torch.Tensor,
                          pred: torch.Tensor, keys: Sequence[str], layer_size: tuple[int, ...]) -> None:
        from explain.metrics import deletion_curves, insertion_curves

        fields = ("deletion_auc", "deletion_auc_random", "insertion_auc", "insertion_auc_random")
        if self.settings.steps < 1:
            for row in rows:
                row.update(dict.fromkeys(fields))
            return
        baseline = self._random_baseline(keys, tuple(pred_maps.shape[-2:]), layer_size)
        model, opts = self.backbone.model, {"steps": self.settings.steps, "batch_size": self.settings.curve_batch}
        aucs = [curve(model, x, maps.to(x.device), pred, **opts).auc
                for curve in (deletion_curves, insertion_curves) for maps in (pred_maps, baseline)]
        for i, row in enumerate(rows):
            row.update({f: rounded(a[i]) for f, a in zip(fields, (aucs[0], aucs[1], aucs[2], aucs[3]), strict=True)})

    def _add_translation(self, rows: list[dict[str, Any]], x: torch.Tensor) -> None:
        from explain.metrics import translation_test

        fields = ("shift_prob_change", "shift_top1_kept", "shift_peak_move")
        if self.settings.shift < 1:
            for row in rows:
                row.update(dict.fromkeys(fields))
            return
        import torch

        step = self.settings.shift_batch
        parts = [translation_test(self.backbone.model, x[i:i + step], self.settings.layer, shift=self.settings.shift,
                                  method=METHOD) for i in range(0, len(x), step)]
        change = torch.cat([p.prob_change for p in parts]).abs().mean(1)
        kept = torch.cat([p.top1_kept for p in parts]).float().mean(1)
        moved = torch.cat([p.peak_shift for p in parts]).mean(1)
        for i, row in enumerate(rows):
            row.update(shift_prob_change=rounded(change[i]), shift_top1_kept=rounded(kept[i]),
                       shift_peak_move=rounded(moved[i]))

    # --- the sanity check, once for the whole sample ------------------------------------------------------------
    def final_keys(self, readable: Sequence[str]) -> list[str]:
        return sorted(sanity_sample(readable, self.settings.sanity, self.settings.seed))

    def final(self, x: torch.Tensor | None, keys: Sequence[str],
              advance: Callable[[int], None] | None = None) -> dict[str, Any]:
        """The sanity cascade over the readable images of the sanity sample, each explained for the class the
        trained model predicts (recomputed here in one pass; the records hold the same class)."""
        import torch

        from explain.hooks import channels_last_layout, eval_mode, prefers_channels_last
        from explain.metrics import sanity_cascade

        if x is None or not keys:
            return {"sanity": None}
        model, s = self.backbone.model, self.settings
        x = x.to(self.device)
        step = (lambda: advance(1)) if advance is not None else None
        with channels_last_layout(model, prefers_channels_last(model)):
            # eval mode as every engine (the user's flags come back); a copy, as a model may modify its input
            with eval_mode(model), torch.no_grad():
                pred = model(x.clone()).argmax(1).cpu()
            result = sanity_cascade(model, x, s.layer, pred, methods=(METHOD, REFERENCE_METHOD), seed=s.seed,
                                    scheme=s.randomisation, cascade=s.cascade, on_step=step)
        rho = {m: [[rounded(v) for v in row.tolist()] for row in values] for m, values in result.rho.items()}
        return {"sanity": {"keys": list(keys), "steps": result.steps, "methods": [METHOD, REFERENCE_METHOD],
                           "randomisation": s.randomisation, "rho": rho}}

    def merge_final(self, records: Sequence[dict[str, Any]], final: dict[str, Any] | None) -> None:
        sanity = (final or {}).get("sanity")
        if not sanity:
            return
        column = {key: j for j, key in enumerate(sanity["keys"])}
        for record in records:
            j = column.get(record["path"])
            if j is not None:
                record["sanity_rho"] = sanity["rho"][METHOD][-1][j]
                record["sanity_rho_gradcam"] = sanity["rho"][REFERENCE_METHOD][-1][j]
