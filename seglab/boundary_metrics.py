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

`seglab eval` reports it (metrics["boundary_f"], tolerance in metrics["boundary_tolerance_px"])
and so does every validation of a training run (val.boundary_f in metrics.jsonl). The batched
torch version (batch_boundary_f, used by BoundaryFScore on the evaluation device) matches a
pixel within the tolerance by dilating the other map's outline with the disk of pixel offsets
dx^2 + dy^2 <= tolerance^2, which is exactly the distance-transform test of image_boundary_f.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
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


def _outlines(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) labels -> (B, C, H, W) bool class_boundary of every class."""
    region = labels[:, None] == torch.arange(num_classes, device=labels.device)[:, None, None]
    inside = F.pad(region.float(), (1, 1, 1, 1), value=1.0)  # the frame is no border
    neighbours = (inside[..., :-2, 1:-1] * inside[..., 2:, 1:-1] * inside[..., 1:-1, :-2]
                  * inside[..., 1:-1, 2:])  # fmt: skip
    return region & (neighbours == 0)


def _within(outline: torch.Tensor, tolerance: float) -> torch.Tensor:
    """(B, C, H, W) bool: pixels within `tolerance` (Euclidean) of an outline pixel."""
    r = int(math.floor(tolerance))
    offsets = torch.arange(-r, r + 1, device=outline.device, dtype=torch.float32)
    disk = (offsets[:, None] ** 2 + offsets[None] ** 2 <= tolerance**2).float()
    b, c, h, w = outline.shape
    near = F.conv2d(outline.float().view(b * c, 1, h, w), disk[None, None], padding=r)
    return near.view(b, c, h, w) > 0.5


def batch_boundary_f(
    prediction: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    tolerance: float = DEFAULT_TOLERANCE,
) -> torch.Tensor:
    """(B,) image_boundary_f of (B, H, W) label maps, NaN where no class has a border."""
    prediction = torch.where(target == IGNORE_INDEX, IGNORE_INDEX, prediction.long())
    predicted, true = _outlines(prediction, num_classes), _outlines(target.long(), num_classes)
    n_pred, n_true = predicted.sum((2, 3)).double(), true.sum((2, 3)).double()
    hit_pred = (predicted & _within(true, tolerance)).sum((2, 3)).double()
    hit_true = (true & _within(predicted, tolerance)).sum((2, 3)).double()
    precision, recall = hit_pred / n_pred.clamp(min=1), hit_true / n_true.clamp(min=1)
    total = precision + recall
    f = torch.where(total > 0, 2 * precision * recall / total.clamp(min=1e-12), 0.0)
    scored = (n_pred > 0) | (n_true > 0)  # one map without the class's border: F = 0 above
    count = scored.sum(1)
    mean = (f * scored).sum(1) / count.clamp(min=1)
    return torch.where(count > 0, mean, float("nan"))


class BoundaryFScore:
    """Mean BF over the images of (B, H, W) batches (images without any border are skipped),
    on the batches' device; all_reduce sums the images of every rank."""

    def __init__(self, num_classes: int, tolerance: float = DEFAULT_TOLERANCE) -> None:
        self.num_classes, self.tolerance = num_classes, tolerance
        self.sums = torch.zeros(2, dtype=torch.float64)  # (sum of image BF, images)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        scores = batch_boundary_f(prediction, target, self.num_classes, self.tolerance)
        kept = ~scores.isnan()
        self.sums = self.sums.to(scores.device)
        self.sums += torch.stack([scores[kept].sum(), kept.sum().double()])

    def all_reduce(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.sums)

    def compute(self) -> float:
        total, images = self.sums.tolist()
        return total / images if images else float("nan")
