"""Segmenters: the explained score is the class's logit sum over its mask; CAMs on a known model; loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explain.backbones import load_backbone
from explain.detection.engine import SegmentationTarget, explain_segmentation
from explain.errors import TargetError
from tests.test_detection_models import GREEN, RED, TinySegmenter, box_mean, two_squares


def _mask(box: tuple[int, int, int, int], size: int = 64) -> np.ndarray:
    m = np.zeros((size, size), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


def test_tiny_segmenter_score_is_the_logit_sum_over_the_predicted_mask():
    x = two_squares()[None]
    result = explain_segmentation(TinySegmenter(), x, [SegmentationTarget(1), SegmentationTarget(2)], "gradcam",
                                  "features")
    red, green = result.maps
    # Hand-derived: 10 * redness (= 1) on the 16 x 16 red square, which is exactly where class 1 wins.
    assert red.pixels == 256 and red.value == pytest.approx(2560.0)
    assert np.array_equal(red.mask, _mask(RED)) and np.array_equal(green.mask, _mask(GREEN))
    assert np.array_equal(result.predicted[0] == 1, _mask(RED))
    for m, on, off in ((red, RED, GREEN), (green, GREEN, RED)):
        assert box_mean(m.map, on) == pytest.approx(1.0) and box_mean(m.map, off) == 0.0


def test_user_mask_sums_only_inside_it():
    x = two_squares()[None]
    half = np.zeros((64, 64), bool)
    half[8:24, 8:16] = True  # the left half of the red square
    (m,) = explain_segmentation(TinySegmenter(), x, [SegmentationTarget(1, mask=half)], "guided").maps
    assert m.region == "mask" and m.pixels == 128 and m.value == pytest.approx(1280.0)
    # 1x1 convolutions: the gradient lives exactly on the masked pixels (red channel +10, green and blue -10).
    support = np.abs(m.gradient).sum(0) > 0
    assert np.array_equal(support, half)
    np.testing.assert_allclose(m.gradient[:, half], np.array([[10.0], [-10.0], [-10.0]]).repeat(128, 1))


def test_random_lraspp_score_and_choice():
    torch.manual_seed(0)
    backbone = load_backbone("lraspp_mobilenet_v3_large", "none", num_classes=4)
    model = backbone.model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(x)["out"][0].numpy()
    predicted = logits.argmax(0)
    classes = [c for c in range(4) if (predicted == c).any()]
    top = max(classes, key=lambda c: (predicted == c).sum())
    other = (top + 1) % 4
    region = predicted == top
    targets = [SegmentationTarget(c) for c in range(4)] + [SegmentationTarget(other, mask=region)]
    result = explain_segmentation(model, x, targets, "gradcam++", backbone.default_layer)
    assert [m.target for m in result.maps] == [*classes, other]
    for m in result.maps:
        expected = logits[m.target][m.mask].sum()
        assert m.value == pytest.approx(float(expected), rel=1e-4)
    assert np.array_equal(result.maps[-1].mask, region)
    # Same region, another class: another score, another map.
    same_region = next(m for m in result.maps if m.target == top)
    layer = backbone.default_layer
    assert not np.allclose(same_region.maps_layer[layer], result.maps[-1].maps_layer[layer])
    assert len(result.notes[0]) == 4 - len(classes)


def test_bad_segmentation_targets():
    x = two_squares()[None]
    with pytest.raises(TargetError, match="out of range"):
        explain_segmentation(TinySegmenter(), x, [SegmentationTarget(7)], "gradcam", "features")
    result = explain_segmentation(TinySegmenter(), torch.zeros(1, 3, 64, 64), [SegmentationTarget(1)], "gradcam",
                                  "features")
    assert result.maps == [] and "not predicted anywhere" in result.notes[0][0]


def test_segmenter_registry_entries():
    backbone = load_backbone("deeplabv3_mobilenet_v3_large", "none")
    assert backbone.extra["task"] == "segmentation" and backbone.class_names[0] == "__background__"
    assert backbone.num_classes == 21 and backbone.default_layer == "backbone.16"
    from PIL import Image

    image = Image.new("RGB", (200, 100))
    assert tuple(backbone.preprocess(image).shape) == (3, 520, 1040)
    assert backbone.preprocess.geometry(200, 100).model_input == (520, 1040)


def test_segmentation_panel_has_a_colour_bar_for_its_map():
    """The map panel says what its colours mean (0 .. 1 = the map's maximum), like every other CAM figure."""
    from PIL import Image

    from explain.detection.figures import segmentation_panel

    photo = Image.new("RGB", (40, 30), (120, 90, 60))
    predicted = np.zeros((30, 40), dtype=np.int64)
    predicted[5:20, 10:30] = 15
    ramp = np.tile(np.linspace(0.0, 1.0, 40, dtype=np.float32), (30, 1))
    fig = segmentation_panel(photo, predicted, [f"c{i}" for i in range(21)], ramp, predicted == 15, "t", "m")
    every = [*fig.axes, *(child for ax in fig.axes for child in ax.child_axes)]  # inset axes are children
    bars = [ax for ax in every if ax.get_ylabel() == "relevance (normalised)"]
    assert len(bars) == 1
    assert [t.get_text() for t in bars[0].get_yticklabels()] == ["0", "0.5", "1 (max)"]


def _legend(fig) -> tuple[list[str], list[tuple[float, ...]]]:
    """The class-map legend's entries and their colours, read back from the figure."""
    (legend,) = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [t.get_text() for t in legend.get_texts()], [tuple(h.get_facecolor()) for h in legend.legend_handles]


def _bands(areas: dict[int, int], width: int = 100) -> np.ndarray:
    """A class map of vertical bands, class c ``areas[c]`` columns wide."""
    return np.concatenate([np.full((10, n), c, dtype=np.int64) for c, n in areas.items()], axis=1)[:, :width]


def test_segmentation_legend_sorted_by_area_in_distinct_voc_colours():
    """Every present class once, largest area first, in the colour the class map draws it in; VOC classes in the
    VOC palette, so bicycle/diningtable, boat/horse, bus/person and chair/sofa (one colour each before) differ."""
    from PIL import Image

    from explain.detection.figures import VOC_CLASSES, class_palette, segmentation_panel, voc_colour

    assert [voc_colour(i) for i in (0, 1, 2, 15, 18, 20)] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (192, 128, 128),
                                                               (0, 192, 0), (0, 64, 128)]
    palette = class_palette(VOC_CLASSES)
    assert len({tuple(c) for c in palette}) == 21
    predicted = _bands({0: 10, 9: 2, 18: 46, 15: 30, 2: 12})  # sofa 46 %, chair 2 %
    fig = segmentation_panel(Image.new("RGB", (100, 10)), predicted, VOC_CLASSES, np.zeros((10, 100)),
                             predicted == 15, "t", "m")
    labels, colours = _legend(fig)
    assert labels == ["18 sofa (46%)", "15 person (30%)", "2 bicycle (12%)", "0 __background__ (10%)",
                      "9 chair (2%)"]
    expected = [(*(np.array(voc_colour(c)) / 255.0), 1.0) for c in (18, 15, 2, 0, 9)]
    np.testing.assert_allclose(colours, expected)
    drawn = fig.axes[1].get_images()[0].get_array()[0, [0, 10, 12, 60, 99]]  # classes 0, 9, 18, 15, 2
    np.testing.assert_allclose(drawn, [np.array(voc_colour(c)) / 255.0 for c in (0, 9, 18, 15, 2)])


def test_segmentation_legend_cut_with_a_count_and_generated_palette_for_other_classes():
    """More than 12 present classes: the 11 largest, then '+N more' with their total area; a class list that is
    not VOC gets a generated palette with no colour twice."""
    from PIL import Image

    from explain.detection.figures import LEGEND_MAX, class_palette, segmentation_panel

    names = [f"k{i}" for i in range(91)]
    palette = class_palette(names)
    assert len({tuple(np.round(c, 6)) for c in palette}) == 91 and tuple(palette[0]) == (0.0, 0.0, 0.0)
    areas = {c: 20 - c for c in range(1, 16)}  # 15 classes, class 1 largest; 180 columns
    predicted = _bands(areas, width=180)
    fig = segmentation_panel(Image.new("RGB", (180, 10)), predicted, names, np.zeros((10, 180)),
                             predicted == 1, "t", "m")
    labels, colours = _legend(fig)
    assert len(labels) == LEGEND_MAX == 12
    assert [label.split()[0] for label in labels[:-1]] == [str(c) for c in range(1, 12)]
    assert labels[-1] == f"+4 more ({100 * sum(range(5, 9)) / 180:.0f}%)"
    np.testing.assert_allclose([c[:3] for c in colours[:-1]], palette[1:12])
