"""Detectors: tracing detections to their candidates, the explained score, gradient flow, CAMs on a known model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explain.backbones import load_backbone
from explain.detection.engine import explain_detections, trace_detector
from explain.detection.models import configure_detector
from explain.detection.targets import Detection, DetectionRequest, box_iou, parse_box, select_detections
from explain.errors import ModelError, TargetError, UsageError, WeightsUnavailableError
from explain.hooks import LayerTap, eval_mode
from tests.test_detection_models import GREEN, RED, box_mean, tiny_detector, two_squares


@pytest.fixture(scope="module")
def rcnn():
    """A random-weight Faster R-CNN (MobileNetV3-FPN, 5 classes) at a small size, every candidate kept."""
    torch.manual_seed(0)
    backbone = load_backbone("fasterrcnn_mobilenet_v3_large_fpn", "none", num_classes=5)
    model = backbone.model
    configure_detector(model, score_threshold=0.0, min_size=128, max_size=160, detections_per_image=30)
    with torch.no_grad():
        # torchvision's detection init leaves tiny, nearly constant heads (all scores tie, maps vanish): jitter
        # every weight so that detections have distinct scores and maps are not degenerate.
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return backbone


@pytest.fixture(scope="module")
def photos():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 96, 128, generator=g), torch.rand(3, 112, 112, generator=g)]


@pytest.fixture(scope="module")
def ssdlite():
    torch.manual_seed(0)
    backbone = load_backbone("ssdlite320_mobilenet_v3_large", "none", num_classes=4)
    configure_detector(backbone.model, score_threshold=0.0, detections_per_image=20)
    with torch.no_grad():
        for conv in backbone.model.head.classification_head.modules():
            if isinstance(conv, torch.nn.Conv2d) and conv.out_channels % 4 == 0 and conv.groups == 1:
                torch.nn.init.normal_(conv.weight, std=0.3)
    return backbone


def _rcnn_internals(model, photos):
    """Independent record of the RoI head: proposals per image and the box predictor's class logits."""
    seen = {}

    def pre(module, args):
        seen["proposals"] = [p.clone() for p in args[1]]

    def post(module, args, output):
        seen["logits"] = output[0].detach().clone()

    h1 = model.roi_heads.register_forward_pre_hook(pre)
    h2 = model.roi_heads.box_predictor.register_forward_hook(post)
    try:
        with torch.no_grad():
            trace, output = trace_detector(model, photos)
    finally:
        h1.remove()
        h2.remove()
    counts = [len(p) for p in seen["proposals"]]
    return trace, output, seen["logits"].split(counts), counts


def test_rcnn_trace_is_the_detectors_own_output(rcnn, photos):
    trace, output, logits, _ = _rcnn_internals(rcnn.model, photos)
    with torch.no_grad():
        reference = rcnn.model(photos)  # the plain detector, no wrapping
    for i, (dets, ref) in enumerate(zip(trace.detections, reference)):
        assert len(dets) == len(ref["boxes"]) > 5
        np.testing.assert_allclose([d.box for d in dets], ref["boxes"].numpy(), atol=1e-4)
        assert [d.label for d in dets] == ref["labels"].tolist()
        np.testing.assert_allclose([d.score for d in dets], ref["scores"].numpy(), rtol=1e-6)
        for d in dets:
            # The detection's confidence is the softmax of its own RoI's logits; the explained score is the logit.
            row = logits[i][d.source].double()
            assert float(torch.softmax(row, 0)[d.label]) == pytest.approx(d.score, rel=1e-5)
            assert float(trace.score(d)) == pytest.approx(float(row[d.label]), rel=1e-6)


def test_rcnn_score_gradient_flows_only_through_its_roi(rcnn, photos):
    model = rcnn.model
    with torch.inference_mode(False), eval_mode(model):
        tap = LayerTap(model, ["roi_heads.box_roi_pool"], gradient_sources=["roi_heads.box_roi_pool"])
        with tap, torch.no_grad():
            trace, _ = trace_detector(model, photos)
        pooled = tap.outputs["roi_heads.box_roi_pool"]
        counts = [len(c.logits) for c in trace.candidates]
        for d in (trace.detections[0][0], trace.detections[0][3], trace.detections[1][1]):
            (g,) = torch.autograd.grad(trace.score(d), pooled, retain_graph=True)
            rows = torch.nonzero(g.flatten(1).abs().sum(1)).flatten().tolist()
            assert rows == [sum(counts[: d.image_index]) + d.source]
            # The same for a box coordinate (class-specific regression of the same RoI).
            (g,) = torch.autograd.grad(trace.score(d, "x1"), pooled, retain_graph=True)
            assert torch.nonzero(g.flatten(1).abs().sum(1)).flatten().tolist() == rows


def test_rcnn_perturbing_other_rois_leaves_the_score(rcnn, photos):
    model = rcnn.model
    with torch.no_grad():
        trace, _ = trace_detector(model, photos)
    target = trace.detections[0][0]
    other = next(d for d in trace.detections[0] if d.source != target.source)
    counts = [len(c.logits) for c in trace.candidates]

    def run_with_noise(keep_row: int) -> torch.Tensor:
        def noisy(module, args, output):
            noise = torch.randn(output.shape, generator=torch.Generator().manual_seed(5))
            noise[keep_row] = 0
            return output + noise

        handle = model.roi_heads.box_roi_pool.register_forward_hook(noisy)
        try:
            with torch.no_grad():
                perturbed, _ = trace_detector(model, photos)
        finally:
            handle.remove()
        return perturbed.candidates[0].logits

    logits = run_with_noise(keep_row=target.source)
    assert float(logits[target.source, target.label]) == pytest.approx(float(trace.score(target)), abs=1e-6)
    assert abs(float(logits[other.source, other.label]) - float(trace.score(other))) > 1e-3
    assert counts[0] == len(logits)


def test_changing_the_choice_changes_the_maps(rcnn, photos):
    cam = explain_detections(rcnn.model, photos[:1], DetectionRequest(ranks=(0, 1)), "gradcam", rcnn.default_layer)
    first, second = cam.maps[0]
    assert first.detection.rank == 0 and second.detection.rank == 1
    layer = rcnn.default_layer
    assert not np.allclose(first.maps_layer[layer], second.maps_layer[layer])
    guided = explain_detections(rcnn.model, photos[:1], DetectionRequest(ranks=(0, 1)), "guided")
    g0, g1 = (m.gradient for m in guided.maps[0])
    assert g0.shape == (3, 96, 128) and np.abs(g0).sum() > 0
    assert not np.allclose(g0, g1)
    assert [m.value for m in guided.maps[0]] == pytest.approx([m.value for m in cam.maps[0]], rel=1e-5)


def test_batch_equals_single_photos(rcnn, photos):
    # Same-size photos share the padded canvas, so batching must not change anything (photos do not interact).
    pair = [photos[0], photos[0].flip(-1)]
    batch = explain_detections(rcnn.model, pair, DetectionRequest(ranks=(0, 2)), "gradcam++", rcnn.default_layer)
    single = explain_detections(rcnn.model, pair[1:], DetectionRequest(ranks=(0, 2)), "gradcam++",
                                rcnn.default_layer)
    for a, b in zip(batch.maps[1], single.maps[0], strict=True):
        assert a.detection.source == b.detection.source and a.detection.label == b.detection.label
        assert a.value == pytest.approx(b.value, rel=1e-5)
        assert a.map.shape == (96, 128)
        np.testing.assert_allclose(a.map, b.map, atol=2e-3)


def test_ssd_score_gradient_is_one_hot_on_its_anchor(ssdlite):
    model = ssdlite.model
    photo = [torch.rand(3, 80, 100, generator=torch.Generator().manual_seed(2))]
    with torch.inference_mode(False), eval_mode(model):
        layer = "head.classification_head"
        tap = LayerTap(model, [layer], gradient_sources=[layer])
        with tap, torch.no_grad():
            trace, output = trace_detector(model, photo)
        logits = tap.outputs[layer]  # (1, anchors, classes)
        for d in trace.detections[0][:3]:
            assert float(torch.softmax(logits[0, d.source].detach().double(), 0)[d.label]) == pytest.approx(d.score, rel=1e-5)
            (g,) = torch.autograd.grad(trace.score(d), logits, retain_graph=True)
            expected = torch.zeros_like(g)
            expected[0, d.source, d.label] = 1.0
            assert torch.equal(g, expected)


def test_tiny_detector_cam_lies_on_the_detected_colour():
    model, photo = tiny_detector(), two_squares()
    for method in ("gradcam", "gradcam++"):
        result = explain_detections(model, [photo], DetectionRequest(score_threshold=0.5), method, "backbone.body.2")
        labels = {m.detection.label for m in result.maps[0]}
        assert labels == {1, 2}
        for m in result.maps[0]:
            on, off = (RED, GREEN) if m.detection.label == 1 else (GREEN, RED)
            assert m.value == pytest.approx(10.0)  # 10 * redness (or greenness) of the anchor's cell
            assert box_mean(m.map, on) > 0.7 and box_mean(m.map, off) == 0.0
            assert box_iou(m.detection.box, on) > 0.3


def test_tiny_detector_guided_gradient_stays_in_the_anchor_cell():
    model, photo = tiny_detector(), two_squares()
    result = explain_detections(model, [photo], DetectionRequest(ranks=(0, 4)), "guided")
    for m in result.maps[0]:
        x0, y0, x1, y1 = m.detection.box
        cx, cy = int((x0 + x1) / 2) // 8 * 8, int((y0 + y1) / 2) // 8 * 8  # the anchor's 8-px cell
        support = np.nonzero(np.abs(m.gradient).sum(0))
        assert support[0].min() == cy and support[0].max() == cy + 7
        assert support[1].min() == cx and support[1].max() == cx + 7


def test_box_component_is_the_box_coordinate():
    model, photo = tiny_detector(), two_squares()
    with torch.no_grad():
        trace, _ = trace_detector(model, [photo])
    d = trace.detections[0][0]
    for k, name in enumerate(("x0", "y0", "x1", "y1")):
        assert float(trace.score(d, name)) == pytest.approx(d.box[k], abs=1e-4)
    result = explain_detections(model, [photo], DetectionRequest(component="x0"), "gradcam", "backbone.body.2")
    assert result.maps[0][0].value == pytest.approx(d.box[0], abs=1e-4)
    # Zero regression weights: the box does not depend on the features, so the map is empty and says so.
    assert result.maps[0][0].notes and not result.maps[0][0].map.any()


def test_selection_by_box_threshold_and_rank():
    model, photo = tiny_detector(), two_squares()
    with torch.no_grad():
        trace, _ = trace_detector(model, [photo])
    dets = trace.detections[0]
    chosen, note = select_detections(dets, DetectionRequest(label=2, box=(40.0, 40.0, 58.0, 58.0)))
    assert note is None and len(chosen) == 1 and chosen[0].label == 2
    best = max((d for d in dets if d.label == 2), key=lambda d: box_iou(d.box, (40, 40, 58, 58)))
    assert chosen[0] == best
    chosen, note = select_detections(dets, DetectionRequest(label=1, box=(40.0, 40.0, 58.0, 58.0)))
    assert chosen == [] and "best IoU 0.00" in note
    chosen, note = select_detections(dets, DetectionRequest(score_threshold=0.99999))
    assert chosen == [] and "no a detection" not in note and "score >=" in note
    chosen, note = select_detections(dets, DetectionRequest(ranks=(1, 50)))
    assert [d.rank for d in chosen] == [1] and "no rank 51" in note
    assert select_detections([], DetectionRequest())[1].startswith("the detector found nothing")


def test_no_detection_is_a_note_not_a_crash():
    model, photo = tiny_detector(), torch.zeros(3, 64, 64)  # black: no colour, no detection above 0.5
    result = explain_detections(model, [photo, two_squares()], DetectionRequest(), "gradcam++", "backbone.body.2")
    assert result.maps[0] == [] and "found nothing" in result.notes[0]
    assert len(result.maps[1]) == 1 and result.notes[1] is None


def test_model_left_as_found(rcnn, photos):
    model = rcnn.model
    model.train()
    try:
        explain_detections(model, photos[:1], DetectionRequest(), "gradcam++", rcnn.default_layer)
        explain_detections(model, photos[:1], DetectionRequest(), "guided")
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
    assert "postprocess_detections" not in vars(model.roi_heads)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_bad_requests():
    with pytest.raises(UsageError, match="component"):
        DetectionRequest(component="width")
    with pytest.raises(UsageError, match="empty"):
        DetectionRequest(box=(5, 5, 5, 9))
    with pytest.raises(TargetError, match="four numbers"):
        parse_box("1,2,3")
    assert parse_box("1, 2 30 40") == (1.0, 2.0, 30.0, 40.0)
    with pytest.raises(UsageError, match="unknown method"):
        explain_detections(tiny_detector(), [two_squares()], method="lime")
    with pytest.raises(UsageError, match="layer"):
        explain_detections(tiny_detector(), [two_squares()], method="gradcam")


def test_checkpoint_with_custom_classes(tmp_path):
    torch.manual_seed(0)
    source = load_backbone("fasterrcnn_mobilenet_v3_large_fpn", "none", num_classes=3).model
    path = tmp_path / "det.pth"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\n")
    loaded = load_backbone("fasterrcnn_mobilenet_v3_large_fpn", str(path), classes=names)
    assert loaded.class_names == ["__background__", "cat", "dog"]
    assert loaded.weights_sha256 and loaded.extra["task"] == "detection"
    assert torch.equal(loaded.model.roi_heads.box_predictor.cls_score.weight,
                       source.roi_heads.box_predictor.cls_score.weight)
    names.write_text("cat\ndog\nbird\nfish\n")
    with pytest.raises(ModelError, match="3 classes"):
        load_backbone("fasterrcnn_mobilenet_v3_large_fpn", str(path), classes=names)
    with pytest.raises(ModelError, match="does not fit"):
        load_backbone("ssdlite320_mobilenet_v3_large", str(path))


def test_pretrained_weights_are_never_downloaded():
    with pytest.raises(WeightsUnavailableError, match="never downloads"):
        load_backbone("fasterrcnn_mobilenet_v3_large_fpn", "COCO_V1")
    with pytest.raises(ModelError, match="unknown weights"):
        load_backbone("fasterrcnn_mobilenet_v3_large_fpn", "IMAGENET1K_V2")


def test_detection_record_is_hashable():
    d = Detection(0, 0, 1, 0.5, (0.0, 0.0, 1.0, 1.0), 3)
    assert {d: 1}[d] == 1


def test_small_photos_are_enlarged_before_boxes_and_tags_are_drawn() -> None:
    from PIL import Image

    from explain.detection.figures import class_colour, draw_detections

    photo = Image.new("RGB", (64, 48))
    d = Detection(0, 0, 1, 0.9, (8.0, 8.0, 24.0, 24.0), 0)
    plain = draw_detections(photo, [d], ["bg", "red"], explained=[0])
    big = draw_detections(photo, [d], ["bg", "red"], explained=[0], min_side=480)
    assert plain.size == (64, 48) and big.size == (64 * 8, 48 * 8)  # whole factor: 480 / 64 -> 8
    colour = Image.new("RGB", (1, 1), class_colour(1)).getpixel((0, 0))
    assert big.getpixel((8 * 8, 8 * 16)) == colour  # the box's left edge, at the enlarged position
    assert big.getpixel((8 * 16, 8 * 16)) == (0, 0, 0)  # inside the box: the photo
    assert draw_detections(Image.new("RGB", (640, 480)), [d], ["bg", "red"], min_side=480).size == (640, 480)
