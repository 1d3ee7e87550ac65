"""Per-image explanation reports: everything the engines say about one photo, gathered for one page.

For every image of a batch, :class:`Reporter` collects (all batched through the existing engines, nothing
re-derived here):

* the top-``k`` predictions (:func:`explain.scores.top_classes`);
* Grad-CAM++ maps of the three most likely classes at the backbone's default layer
  (:func:`explain.cam.compute_cams`; Chattopadhyay et al. 2018, https://arxiv.org/abs/1710.11063);
* guided backpropagation and guided Grad-CAM++ of the top class (:func:`explain.guided.guided_backprop` with
  ``with_cam="gradcam++"``; Springenberg et al. 2015, https://arxiv.org/abs/1412.6806, and Selvaraju et al. 2017,
  https://arxiv.org/abs/1610.02391, Sec. 3.1);
* SmoothGrad of the top class (:func:`explain.saliency.saliency`; Smilkov et al. 2017,
  https://arxiv.org/abs/1706.03825), with the same per-image noise seed as ``cnn-explain saliency --seed``, so
  the report's map is exactly the one that command draws for the same image;
* the strongest unit of a layer whose units see part of the image (by default the deepest block whose receptive
  field is at most half the input, :func:`explain.layers.part_view_layer`; ``--layer`` otherwise): the largest
  activation whose value is not saturated (:func:`explain.activations.strongest_unit`: a value repeated in the
  layer, such as ReLU6's 6, is a clamp, not a peak), its channel's map and that unit's theoretical receptive field
  (:meth:`explain.layers.LayerInfo.unit_box`);
* with a gallery :class:`~explain.gallery.FeatureIndex`, the nearest gallery images in the index's feature space
  (:func:`explain.gallery.pool_features` and :func:`explain.gallery.search`).

Deviations and conventions:

* The gradient methods explain the top-1 class only (the issue asks for "guided backprop and guided Grad-CAM++,
  SmoothGrad" without a class list; one class keeps a 50-photo run affordable). ``topK`` targets are resolved by
  each engine from its own clean forward pass, which is the same pass on the same input, so all sections explain
  the same class.
* The query's gallery features come from the very tensor the other engines see (no second decode of the file);
  :func:`explain.gallery.embed_files` runs the model in the channels-last layout, so distances agree with the
  ``neighbours`` command to float rounding, not bit for bit.

:mod:`explain.report_render` turns the results into HTML pages, an index page and a PDF; :func:`run_report`
does a whole run over files. Nothing here prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from explain.device import model_device
from explain.errors import ExplainError, UsageError
from explain.figures import FigureStyle

if TYPE_CHECKING:
    import torch

    from explain.backbones.base import Backbone
    from explain.cam import CamMap
    from explain.gallery import FeatureIndex
    from explain.images import ImageFile
    from explain.layers import LayerInfo
    from explain.manifest import Manifest
    from explain.scores import ClassScore
    from explain.run import RunSettings

__all__ = [
    "FORMATS",
    "CAM_METHOD",
    "ChannelView",
    "ClassMap",
    "ImageExplanation",
    "Neighbour",
    "ReportOptions",
    "Reporter",
    "run_report",
]

#: Output formats of a report run.
FORMATS = ("html", "pdf")
#: The CAM method of the report (Grad-CAM++, also inside guided Grad-CAM++).
CAM_METHOD = "gradcam++"


@dataclass
class ReportOptions:
    """What a report shows.

    Attributes:
        top: predictions listed per image.
        cams: classes explained with Grad-CAM++ (the most likely ones).
        samples: SmoothGrad noisy copies per image (0: the plain input gradient instead).
        noise: SmoothGrad noise level, a fraction of each image's input range.
        seed: SmoothGrad seed; each image's noise depends only on it and the image's bytes.
        neighbours: nearest gallery images shown when an index is given.
        metric: neighbour distance, ``l2`` or ``cosine``.
        fmt: ``html`` (a page per image and an index page) or ``pdf`` (one multi-page figure sheet).
        colormap: colour map of the CAMs.
        alpha: heat opacity of the CAM overlays.
        layer: the layer of the CAMs and of the strongest-unit view (``None``: the backbone's default layer for the
            CAMs, and for the unit view the deepest block whose units see at most half the input).
        style: the figures' resolution (PDF pages at ``dpi``, HTML figures at
            :data:`explain.html.SCREEN_DPI_SCALE` of it), whether they have titles, and whether the page and
            PDF titles name an input by its path or its file name (:class:`explain.figures.FigureStyle`).
    """

    top: int = 5
    cams: int = 3
    samples: int = 16
    noise: float = 0.15
    seed: int = 0
    neighbours: int = 6
    metric: str = "l2"
    fmt: str = "html"
    colormap: str = "inferno"  # explain.figures.DEFAULT_COLORMAP
    alpha: float = 0.5
    layer: str | None = None
    style: FigureStyle = FigureStyle()

    def check(self) -> ReportOptions:
        """Validate every option (no model needed); returns ``self`` with ``fmt`` normalised.

        Raises:
            UsageError: the first bad option, with what to do instead.
        """
        from explain.figures import check_colormap
        from explain.saliency import check_noise

        self.fmt = self.fmt.lower().lstrip(".")
        if self.fmt not in FORMATS:
            raise UsageError(f"unknown report format {self.fmt!r}: choose html or pdf")
        for name, value, low in (("--top", self.top, 1), ("cams", self.cams, 1), ("--samples", self.samples, 0),
                                 ("--neighbours", self.neighbours, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"{name} must be a whole number >= {low}, got {value!r}")
        check_noise(self.noise, "--noise")
        if self.metric not in ("l2", "cosine"):
            raise UsageError(f"unknown metric {self.metric!r}: choose l2 or cosine")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"--alpha must lie in [0, 1] (got {self.alpha})")
        check_colormap(self.colormap)
        self.style.check()
        return self


# ---------------------------------------------------------------------------------------------------------------
# What one image's report holds
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ClassMap:
    """The Grad-CAM++ explanation of one of the most likely classes.

    Attributes:
        index: class index.
        name: class name (user-supplied for custom models: escape before display).
        rank: 1 for the most likely class.
        prob: softmax probability.
        score: the explained pre-softmax score.
        cam: float32 ``(H, W)`` map in [0, 1] at model-input resolution (``CamMap.map``).
        cam_layer: float32 ``(h, w)`` unnormalised map at the layer (``CamMap.maps_layer``).
    """

    index: int
    name: str
    rank: int
    prob: float
    score: float
    cam: np.ndarray = field(repr=False)
    cam_layer: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "rank": self.rank, "prob": round(self.prob, 6),
                "score": round(self.score, 4)}


@dataclass
class ChannelView:
    """The strongest unit of a layer for one image (:func:`explain.activations.strongest_unit`), its channel's map
    and the unit's receptive field.

    Attributes:
        layer: dotted layer name.
        channel: the unit's channel.
        channels: how many channels the layer has.
        mean: the channel's mean activation.
        activation: float32 ``(h, w)`` the channel's map.
        unit: ``(y, x)`` of the unit.
        value: its activation.
        saturated: channels passed over because their peak value is repeated in the layer (saturated).
        ties: units of the channel sharing ``value`` (1 unless every channel is saturated; then the first is shown).
        box: the unit's theoretical receptive field ``(x0, y0, x1, y1)`` in model-input pixels, clipped to the input
            (pixel edges), or ``None`` when the layer table has no receptive field for the layer.
        rf_size: the unclipped receptive field ``(h, w)`` in pixels, or ``None``.
        centre: the receptive field's centre ``(y, x)`` in model-input pixel coordinates (pixel centres at
            ``0 .. W-1``), or ``None``; unlike the clipped box's middle, it is where the unit looks.
    """

    layer: str
    channel: int
    channels: int
    mean: float
    activation: np.ndarray = field(repr=False)
    unit: tuple[int, int] = (0, 0)
    value: float = 0.0
    box: tuple[float, float, float, float] | None = None
    rf_size: tuple[int, int] | None = None
    centre: tuple[float, float] | None = None
    saturated: int = 0
    ties: int = 1

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"layer": self.layer, "channel": self.channel, "channels": self.channels,
                               "mean": round(self.mean, 6), "unit": list(self.unit), "value": round(self.value, 6),
                               "saturated_channels": self.saturated, "tied_units": self.ties}
        if self.box is not None and self.rf_size is not None:
            out["receptive_field"] = {"box": [round(v, 3) for v in self.box], "size": list(self.rf_size)}
            if self.centre is not None:
                out["receptive_field"]["centre"] = [round(v, 3) for v in self.centre]
        return out


@dataclass
class Neighbour:
    """One nearest gallery image.

    Attributes:
        rank: 1 for the nearest.
        path: path relative to the gallery folder.
        file: absolute path of the image.
        distance: Euclidean distance (``l2``) or ``1 - cosine similarity``.
        label: the label's display name, or ``None``.
        row: the image's row in the index.
    """

    rank: int
    path: str
    file: Path
    distance: float
    label: str | None
    row: int

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "path": self.path, "row": self.row, "distance": round(self.distance, 6),
                "label": self.label}


@dataclass
class ImageExplanation:
    """Everything a report page shows about one image.

    Attributes:
        predictions: the top-``k`` classes, most likely first.
        classes: Grad-CAM++ of the most likely classes, in rank order.
        guided: float32 ``(3, H, W)`` guided backpropagation of the top class.
        guided_cam: float32 ``(3, H, W)`` guided Grad-CAM++ of the top class (``guided`` times its CAM).
        smoothgrad: float32 ``(3, H, W)`` SmoothGrad (or the plain gradient when ``samples`` is 0) of the top class.
        smoothgrad_info: samples, noise, sigma and seed of the SmoothGrad map.
        channel: the strongest unit of the unit-view layer.
        neighbours: nearest gallery images, or ``None`` without an index.
        cam_layer: the layer of the CAMs.
    """

    predictions: list[ClassScore]
    classes: list[ClassMap]
    guided: np.ndarray = field(repr=False)
    guided_cam: np.ndarray = field(repr=False)
    smoothgrad: np.ndarray = field(repr=False)
    smoothgrad_info: dict[str, Any]
    channel: ChannelView
    neighbours: list[Neighbour] | None = None
    cam_layer: str = ""

    @property
    def top(self) -> ClassMap:
        """The most likely class."""
        return self.classes[0]


# ---------------------------------------------------------------------------------------------------------------
# Computing it
# ---------------------------------------------------------------------------------------------------------------


class Reporter:
    """Explains batches of images for reports, with one backbone, one set of options and an optional index.

    Construction checks everything once (layer, index compatibility, options) and, with one layer-table pass,
    picks the unit-view layer (:attr:`channel_layer`) and its receptive-field geometry.

    Args:
        backbone: the model, its preprocessing, class names and default layer.
        options: what to show (checked).
        index: a gallery index for the neighbours section; its features must come from this model.

    Raises:
        UsageError: a bad option; IndexMismatchError: an index built with another model or weights.
        LayerError: a default layer unusable for CAMs.
    """

    def __init__(self, backbone: Backbone, options: ReportOptions | None = None,
                 index: FeatureIndex | None = None) -> None:
        from explain.guided import check_not_scripted
        from explain.modules import resolve_layer

        self.backbone = backbone
        self.options = (options or ReportOptions()).check()
        self.layer = self.options.layer or backbone.default_layer
        resolve_layer(backbone.model, self.layer)
        check_not_scripted(backbone.model, "the report's guided backpropagation")
        self.index = index
        if index is not None:
            from explain.gallery import backbone_record, check_compatible

            check_compatible(index, backbone_record(backbone), index.layer)
            resolve_layer(backbone.model, index.layer)
        self.warnings: list[str] = []
        self.missing_rows: set[int] = set()  # gallery rows shown as neighbours whose file is gone
        self.channel_layer, self.rf_row = self._unit_view_layer()

    def _unit_view_layer(self) -> tuple[str, LayerInfo | None]:
        """The layer of the strongest-unit view (``--layer``, else a mid layer) and its layer-table row."""
        from explain.layers import layer_table, part_view_layer

        device = model_device(self.backbone.model, "cpu")
        try:
            rows = layer_table(self.backbone.model, self.backbone.input_size, device=device)
        except ExplainError as exc:
            self.warnings.append(f"receptive fields not available ({exc}); channels are shown without them")
            return self.layer, None
        name = self.layer if self.options.layer else part_view_layer(rows, self.backbone.input_size) or self.layer
        row = next((r for r in rows if r.name == name), None)
        return name, row if row is not None and row.receptive_field is not None else None

    @property
    def cam_count(self) -> int:
        return min(self.options.cams, self.backbone.num_classes)

    def explain(self, inputs: torch.Tensor, seeds: Sequence[int] | None = None,
                batch_size: int = 16, sha256s: Sequence[str] | None = None) -> list[ImageExplanation]:
        """Explain every image of a preprocessed batch ``(N, C, H, W)``.

        Args:
            inputs: model inputs (already preprocessed), moved to the model's device by the engines.
            seeds: SmoothGrad noise seed per image (default: ``options.seed + i``).
            batch_size: SmoothGrad noisy copies per forward pass.
            sha256s: the images' file hashes: an image that is itself in the gallery is left out of its neighbours.

        Returns:
            One :class:`ImageExplanation` per image, in order.

        Raises:
            UsageError: a model whose output is not ``(N, number of classes)``; bad inputs (see the engines).
            LayerError, TargetError: as :func:`explain.cam.compute_cams`.
        """
        from explain.cam import compute_cams
        from explain.guided import guided_backprop
        from explain.scores import top_classes
        from explain.saliency import saliency
        from explain.targets import TopK

        opts = self.options
        model = self.backbone.model
        n = int(inputs.shape[0])
        seeds = [opts.seed + i for i in range(n)] if seeds is None else list(seeds)
        cams = compute_cams(model, inputs, self.layer, [TopK(self.cam_count)], CAM_METHOD)
        if cams.logits is None or cams.logits.shape[1] != self.backbone.num_classes:
            raise UsageError("a report needs a classifier whose output is (N, number of classes)")
        probs = cams.probabilities
        predictions = top_classes(cams.logits, self.backbone.class_names, opts.top)
        guided = guided_backprop(model, inputs, [TopK(1)], with_cam=CAM_METHOD, cam_layers=[self.layer])
        smooth = saliency(model, inputs, [TopK(1)], samples=opts.samples, noise=opts.noise, seed=seeds,
                          batch_size=batch_size)
        for warning in guided.warnings:
            if warning not in self.warnings:
                self.warnings.append(warning)
        channels, features = self._layer_outputs(inputs)
        neighbours = self._neighbours(features, sha256s) if features is not None else [None] * n
        out = []
        for i in range(n):
            classes = [self._class_map(m, probs[i]) for m in cams.for_image(i)]
            g = guided.for_image(i)[0]
            s = smooth.for_image(i)[0]
            info = {"samples": smooth.samples, "noise": smooth.noise if smooth.samples else None,
                    "sigma": round(smooth.sigmas[i], 6) if smooth.samples else None,
                    "seed": smooth.seeds[i] if smooth.samples else None}
            out.append(ImageExplanation(
                predictions=predictions[i], classes=classes, guided=g.guided if g.guided is not None else g.gradient,
                guided_cam=g.gradient, smoothgrad=s.gradient, smoothgrad_info=info,
                channel=self._channel(channels[i]), neighbours=neighbours[i], cam_layer=self.layer,
            ))
        return out

    def _class_map(self, cam: CamMap, probs: torch.Tensor) -> ClassMap:
        """One explained class from its :class:`~explain.cam.CamMap` and the image's probabilities."""
        index = int(cam.target.index)  # type: ignore[union-attr]
        return ClassMap(index=index, name=self.backbone.class_names[index], rank=(cam.rank or 0) + 1,
                        prob=float(probs[index]), score=cam.score, cam=cam.map, cam_layer=cam.maps_layer[self.layer])

    def _layer_outputs(self, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """The unit-view layer's maps ``(N, C, h, w)`` and, with an index, the pooled index-layer features."""
        import torch

        from explain.hooks import LayerTap, eval_mode

        model = self.backbone.model
        layers = [self.channel_layer] + ([self.index.layer] if self.index is not None else [])
        device = model_device(model, inputs.device)
        with eval_mode(model), LayerTap(model, layers, spatial=[self.channel_layer]) as tap, torch.no_grad():
            model(inputs.to(device, copy=True))  # a copy: a model may modify its input in place
        tap.require_all()
        maps = tap.outputs[self.channel_layer].detach().float().cpu().numpy()
        if self.index is None:
            return maps, None
        from explain.gallery import pool_features

        vectors, _ = pool_features(tap.outputs[self.index.layer].detach())
        return maps, vectors.float().cpu().numpy()

    def _channel(self, maps: np.ndarray) -> ChannelView:
        from explain.activations import channel_means, strongest_unit

        peak = strongest_unit(maps)
        channel, (y, x) = peak.channel, peak.unit
        activation = np.asarray(maps[channel], dtype=np.float32)
        view = ChannelView(layer=self.channel_layer, channel=channel, channels=int(maps.shape[0]),
                           mean=float(channel_means(maps[channel][None])[0]), activation=activation, unit=(y, x),
                           value=peak.value, saturated=peak.saturated, ties=peak.ties)
        row = self.rf_row
        if row is not None and row.receptive_field is not None:
            view.box = row.unit_box(y, x, clip_to=self.backbone.input_size)
            view.rf_size = (int(row.receptive_field[0]), int(row.receptive_field[1]))
            if row.start is not None and row.jump is not None:
                view.centre = (row.start[0] + y * row.jump[0], row.start[1] + x * row.jump[1])
        return view

    def _neighbours(self, features: np.ndarray, sha256s: Sequence[str] | None) -> list[list[Neighbour] | None]:
        from explain.gallery import search

        index = self.index
        assert index is not None
        itself = index.rows_of(sha256s) if sha256s is not None else None
        found = search(features, index.features, self.options.neighbours, self.options.metric, exclude=itself)
        pages = [
            [Neighbour(rank=r + 1, path=index.entries[int(g)].path, file=index.file(int(g)), distance=float(d),
                       label=index.entries[int(g)].label_name, row=int(g))
             for r, (g, d) in enumerate(zip(ids, dists))]
            for ids, dists in zip(found.ids, found.distances)
        ]
        self.missing_rows.update(n.row for page in pages for n in page if not Path(n.file).is_file())
        return pages

    def gallery_warning(self) -> str | None:
        """One warning for the neighbours whose gallery file is gone (drawn as 'image not found')."""
        from explain.gallery_run import unreadable_gallery_warning

        if self.index is None:
            return None
        return unreadable_gallery_warning(self.index, sorted(self.missing_rows), "shown as neighbours")


# ---------------------------------------------------------------------------------------------------------------
# A run over files
# ---------------------------------------------------------------------------------------------------------------

#: Page names that would clobber the run's own files.
_RESERVED = {"index", "manifest"}


def page_names(stems: Sequence[str]) -> list[str]:
    """``<stem>.html`` for each stem; a stem that would overwrite ``index.html`` (or the manifest) gets ``_page``."""
    used: set[str] = set()
    names = []
    for stem in stems:
        name = f"{stem}_page" if stem.lower() in _RESERVED else stem
        base, n = name, 2
        while name.lower() in used or name.lower() in _RESERVED:
            name, n = f"{base}_{n}", n + 1
        used.add(name.lower())
        names.append(f"{name}.html")
    return names


def _item(sample: Any, exp: ImageExplanation, outputs: dict[str, Any]) -> dict[str, Any]:
    from explain.run import image_record

    item = image_record(sample, [c.as_dict() for c in exp.predictions])
    item.update({"method": "report", "cam_method": CAM_METHOD, "layer": exp.cam_layer,
                 "explained": [c.as_dict() for c in exp.classes], "smoothgrad": exp.smoothgrad_info,
                 "channel": exp.channel.as_dict()})
    if exp.neighbours is not None:
        item["neighbours"] = [n.as_dict() for n in exp.neighbours]
    if not np.any(exp.guided):
        item["all_zero"] = True
    if sample.loaded.notes:
        item["notes"] = list(sample.loaded.notes)
    item["outputs"] = outputs
    return item


def run_report(
    reporter: Reporter,
    files: Sequence[ImageFile],
    out_dir: str | Path,
    settings: RunSettings | None = None,
) -> Manifest:
    """Write a report for every image of ``files`` into ``out_dir``, batch by batch.

    HTML: one self-contained ``<stem>.html`` per image, then ``index.html`` linking them (with thumbnails) and
    listing every input that failed. PDF: ``report.pdf``, one page per good image. The manifest lists each page
    under its item's ``outputs``; it is returned unsaved (the caller writes it last).

    Args:
        reporter: the model, options and index.
        files: the images.
        out_dir: output folder.
        settings: batch size, device, progress callback, and the inputs that failed before decoding (missing
            paths; ``settings.input_errors``), shown on the index page only (the caller adds them to the manifest,
            as every command does).
    """
    from explain.guided_run import image_seed
    from explain.manifest import Manifest, atomic_write, write_text
    from explain.report_render import IndexEntry, ReportPage, index_html, page_html, pdf_figure
    from explain.run import RunSettings, for_each_batch, stem_map

    settings = settings or RunSettings()
    opts = reporter.options
    backbone = reporter.backbone
    out = Path(out_dir)
    stems = stem_map(files)
    names = dict(zip(stems.keys(), page_names(list(stems.values()))))
    index = reporter.index
    extra: dict[str, Any] = {
        "format": opts.fmt, "cam_method": CAM_METHOD, "layer": reporter.layer, "top": opts.top,
        "samples": opts.samples, "noise": opts.noise if opts.samples else None,
        "seed": opts.seed if opts.samples else None,
        "index": str(index.directory) if index is not None and index.directory else None,
    }
    manifest = Manifest(command="report", argv=settings.argv, model=backbone.manifest_record(), extra=extra)
    entries: list[IndexEntry] = []

    def pages(batch: Any) -> list[tuple[Any, ReportPage]]:
        seeds = [image_seed(opts.seed, s.loaded.sha256) for s in batch.samples]
        explanations = reporter.explain(batch.tensor.to(settings.device), seeds,
                                        batch_size=max(settings.batch_size, 16),
                                        sha256s=[s.loaded.sha256 for s in batch.samples])
        return [(sample, ReportPage.of(sample, exp, backbone, opts, names[sample.loaded.display]))
                for sample, exp in zip(batch.samples, explanations)]

    def html_batch(batch: Any) -> list[dict[str, Any]]:
        items = []
        for sample, page in pages(batch):
            write_text(out / page.name, page_html(page))
            entries.append(IndexEntry.of(page))
            items.append(_item(sample, page.explanation, {"page": page.name}))
        return items

    if opts.fmt == "pdf":
        def write_pdf(handle: Any) -> None:
            import matplotlib
            from matplotlib.backends.backend_pdf import PdfPages

            from explain.manifest import PAPER_FONTS, literal_text

            # the fonts are written when the file closes: TrueType for the whole life of the PdfPages
            with matplotlib.rc_context(PAPER_FONTS), \
                    PdfPages(handle, metadata={"Creator": "cnn-explain report"}) as pdf:
                def pdf_batch(batch: Any) -> list[dict[str, Any]]:
                    items = []
                    for sample, page in pages(batch):
                        pdf.savefig(literal_text(pdf_figure(page)))
                        items.append(_item(sample, page.explanation, {"pdf": "report.pdf",
                                                                      "pdf_page": pdf.get_pagecount()}))
                    return items

                for_each_batch(backbone, files, manifest, settings, pdf_batch)

        if files:
            atomic_write(out / "report.pdf", write_pdf)
            if manifest.items:
                manifest.extra["outputs"] = {"pdf": "report.pdf"}
            else:  # nothing could be drawn: no empty PDF left behind
                (out / "report.pdf").unlink(missing_ok=True)
    else:
        for_each_batch(backbone, files, manifest, settings, html_batch)
        errors = [(e.path, e.reason) for e in settings.input_errors]
        errors += [(e["input"], e["error"]) for e in manifest.errors]
        write_text(out / "index.html", index_html(entries, errors, backbone.name))
        manifest.extra["outputs"] = {"index": "index.html"}
    gallery = reporter.gallery_warning()
    for warning in [*reporter.warnings, *([gallery] if gallery else [])]:
        if warning not in manifest.warnings:
            manifest.warnings.append(warning)
    return manifest
