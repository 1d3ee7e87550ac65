"""Explaining torchvision detectors and segmenters, one detection or one class mask at a time.

Modules (import what you need; nothing here imports torch until used):

* :mod:`explain.detection.models`: registry entries and loaders for torchvision detectors and segmenters
  (torchvision weights read offline, ``none`` for random weights, user checkpoints with custom classes).
* :mod:`explain.detection.targets`: detections, choosing which to explain (by rank, by class and box, by score).
* :mod:`explain.detection.engine`: tracing each detection to its exact pre-NMS score, Grad-CAM / Grad-CAM++ /
  guided backprop of a detection's score or box coordinate, and of a segmenter's class mask.
* :mod:`explain.detection.figures`: detections drawn on the photo, per-detection maps in context and cropped,
  segmentation masks beside the class map.
* :mod:`explain.detection.run`: image files in, figures, arrays and a manifest out (the ``detect`` and
  ``segment`` commands).
"""
