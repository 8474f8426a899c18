"""Metrics against confusion matrices and formulas worked out by hand (MODELS.md)."""

import math

import numpy as np
import pytest
import torch

from seglab.metrics import ConfusionMatrix, segmentation_metrics


def test_confusion_matrix_counts_pixels_and_skips_ignore():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    prediction = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    confusion = ConfusionMatrix(3)
    confusion.update(prediction[None], target[None])
    # By hand: gt 0 -> pred 0, 1; gt 1 -> 1, 1, 1; gt 2 -> 2, 0; the 255 pixel is skipped.
    expected = [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    assert confusion.matrix.tolist() == expected


def test_metrics_match_hand_computation():
    n = np.array([[1, 1, 0], [0, 3, 0], [1, 0, 1]])
    m = segmentation_metrics(n)
    # t = (2, 3, 2), column sums = (2, 4, 1), diagonal = (1, 3, 1)
    assert m["pixel_accuracy"] == pytest.approx(5 / 7)
    assert m["mean_accuracy"] == pytest.approx((1 / 2 + 3 / 3 + 1 / 2) / 3)
    iou = [1 / (2 + 2 - 1), 3 / (3 + 4 - 3), 1 / (2 + 1 - 1)]
    assert m["iou"] == pytest.approx(iou)
    assert m["mean_iou"] == pytest.approx(sum(iou) / 3)
    assert m["fw_iou"] == pytest.approx((2 * iou[0] + 3 * iou[1] + 2 * iou[2]) / 7)
    dice = [2 * 1 / (2 + 2), 2 * 3 / (3 + 4), 2 * 1 / (2 + 1)]
    assert m["dice"] == pytest.approx(dice)


def test_class_absent_from_truth_and_prediction_is_nan_and_left_out_of_means():
    n = np.array([[4, 0, 0], [0, 0, 0], [2, 0, 2]])  # class 1 never occurs
    m = segmentation_metrics(n)
    assert math.isnan(m["iou"][1]) and math.isnan(m["accuracy"][1])
    assert m["mean_iou"] == pytest.approx((4 / 6 + 2 / 4) / 2)
    assert m["mean_accuracy"] == pytest.approx((1 + 0.5) / 2)


def test_class_predicted_but_absent_from_truth_has_zero_iou():
    n = np.array([[3, 1], [0, 0]])  # class 1 predicted once, never true
    m = segmentation_metrics(n)
    assert m["iou"][1] == 0.0
    assert math.isnan(m["accuracy"][1])
    assert m["mean_iou"] == pytest.approx((3 / 4 + 0) / 2)


def test_updates_accumulate_over_batches():
    confusion = ConfusionMatrix(2)
    confusion.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 1]]]))
    confusion.update(torch.tensor([[[1, 1]]]), torch.tensor([[[0, 1]]]))
    assert confusion.matrix.tolist() == [[1, 1], [0, 2]]
