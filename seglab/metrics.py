"""Segmentation metrics from one dataset-wide confusion matrix (formulas: shared/MODELS.md).

n[i, j] counts pixels of ground-truth class i predicted as j; t_i = sum_j n[i, j].
Classes absent from both ground truth and prediction have no defined IoU: they are NaN and
left out of every mean (the report says which).
"""

from __future__ import annotations

import numpy as np
import torch

from seglab.data.labels import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates n[i, j] over batches with one bincount per update (on the data's device)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add (B, H, W) predicted labels against (B, H, W) targets; 255 targets are skipped."""
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(prediction.shape)} != target {tuple(target.shape)}"
            )
        valid = target != IGNORE_INDEX
        k = self.num_classes
        index = target[valid].long() * k + prediction[valid].long()
        self.matrix += torch.bincount(index, minlength=k * k).reshape(k, k).to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum the matrix over all ranks (a no-op outside torch.distributed)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix)

    def compute(self) -> dict[str, float | list[float]]:
        return segmentation_metrics(self.matrix.cpu().numpy())


def _mean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def segmentation_metrics(n: np.ndarray) -> dict[str, float | list[float]]:
    """Pixel accuracy, mean pixel accuracy, per-class and mean IoU, FWIoU and Dice from n."""
    n = n.astype(np.float64)
    true = n.sum(axis=1)  # t_i
    predicted = n.sum(axis=0)  # sum_j n_ji
    hits = np.diag(n)
    union = true + predicted - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, hits / union, np.nan)
        accuracy = np.where(true > 0, hits / true, np.nan)
        dice = np.where(true + predicted > 0, 2 * hits / (true + predicted), np.nan)
    total = true.sum()
    present = union > 0
    return {
        "pixel_accuracy": float(hits.sum() / total) if total else float("nan"),
        "mean_accuracy": _mean(accuracy),
        "mean_iou": _mean(iou),
        "fw_iou": float((true[present] * iou[present]).sum() / total) if total else float("nan"),
        "mean_dice": _mean(dice),
        "iou": iou.tolist(),
        "accuracy": accuracy.tolist(),
        "dice": dice.tolist(),
    }
