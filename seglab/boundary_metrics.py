"""Boundary F-score (BF; Csurka et al., BMVC 2013): how well predicted borders match true ones.

For each image and each class c, the boundary of a label map's class-c region is its pixels
with a 4-neighbour of another label (the image frame is not a border). A boundary pixel is
matched when a boundary pixel of the other map lies within `tolerance` pixels (Euclidean):

    precision_c = matched predicted boundary pixels / predicted boundary pixels
    recall_c    = matched true boundary pixels / true boundary pixels
    BF_c        = 2 P R / (P + R)        (0 when one map has a class-c border and the other not)

The image's BF is the mean over the classes with a border in either map; the dataset's is the
mean over images. Tolerance defaults to 2 pixels (Csurka et al. use 0.75% of the image
diagonal: 0.7 px at 64x64, 15 px at 2048x1024; pass it to match). Ignored (255) pixels of the
target are given the target's 255 in the prediction too, so no class's border runs through
them unpredicted; borders of 255 itself are not scored.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from seglab.data.labels import IGNORE_INDEX

DEFAULT_TOLERANCE = 2.0  # pixels


def class_boundary(labels: np.ndarray, c: int) -> np.ndarray:
    """(H, W) bool: pixels of class c with a 4-neighbour of another label."""
    region = labels == c
    other = np.zeros_like(region)
    other[1:] |= labels[:-1] != c
    other[:-1] |= labels[1:] != c
    other[:, 1:] |= labels[:, :-1] != c
    other[:, :-1] |= labels[:, 1:] != c
    return region & other


def _matched(boundary: np.ndarray, reference: np.ndarray, tolerance: float) -> int:
    """Pixels of `boundary` within `tolerance` of a `reference` pixel."""
    if not reference.any():
        return 0
    distance = ndimage.distance_transform_edt(~reference)
    return int((boundary & (distance <= tolerance)).sum())


def image_boundary_f(
    prediction: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    tolerance: float = DEFAULT_TOLERANCE,
) -> float:
    """Mean BF over the classes with a border in either (H, W) map; NaN when none has."""
    prediction = np.where(target == IGNORE_INDEX, IGNORE_INDEX, prediction)
    scores = []
    for c in range(num_classes):
        predicted, true = class_boundary(prediction, c), class_boundary(target, c)
        if not predicted.any() and not true.any():
            continue
        if not predicted.any() or not true.any():
            scores.append(0.0)
            continue
        precision = _matched(predicted, true, tolerance) / predicted.sum()
        recall = _matched(true, predicted, tolerance) / true.sum()
        total = precision + recall
        scores.append(0.0 if total == 0 else 2 * precision * recall / total)
    return float(np.mean(scores)) if scores else float("nan")


class BoundaryFScore:
    """Mean BF over the images of (B, H, W) batches (images without any border are skipped)."""

    def __init__(self, num_classes: int, tolerance: float = DEFAULT_TOLERANCE) -> None:
        self.num_classes, self.tolerance = num_classes, tolerance
        self.total, self.images = 0.0, 0

    def update(self, prediction, target) -> None:
        prediction, target = np.asarray(prediction.cpu()), np.asarray(target.cpu())
        for predicted, true in zip(prediction, target, strict=True):
            score = image_boundary_f(predicted, true, self.num_classes, self.tolerance)
            if not np.isnan(score):
                self.total += score
                self.images += 1

    def compute(self) -> float:
        return self.total / self.images if self.images else float("nan")
