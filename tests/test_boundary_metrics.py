"""Boundary F-score (seglab/boundary_metrics.py) on a hand-worked shifted square."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seglab.boundary_metrics import BoundaryFScore, class_boundary, image_boundary_f


def square(col: int) -> np.ndarray:
    """6x6 background with a 3x3 class-1 square on rows 1..3, columns col..col+2."""
    labels = np.zeros((6, 6), np.int64)
    labels[1:4, col : col + 3] = 1
    return labels


def test_class_boundary_is_the_inner_outline_not_the_frame():
    boundary = class_boundary(square(1), 1)
    expected = np.zeros((6, 6), bool)
    expected[1:4, 1:4] = True
    expected[2, 2] = False  # the centre has only class-1 neighbours
    np.testing.assert_array_equal(boundary, expected)
    # background: the 12 pixels 4-adjacent to the square; the image frame is no border
    assert class_boundary(square(1), 0).sum() == 12
    assert not class_boundary(np.zeros((4, 4), np.int64), 0).any()


def test_shifted_square_by_hand():
    target, prediction = square(1), square(2)  # predicted one column to the right
    # tolerance 0: class 1 outlines (8 pixels each) share (1,2), (1,3), (3,2), (3,3): P = R =
    # 1/2, F = 1/2; background outlines (12 each) share row 0 and row 4 columns 2, 3: F = 1/3
    assert image_boundary_f(prediction, target, 2, tolerance=0) == pytest.approx(5 / 12)
    # tolerance 1: every outline pixel has one of the other map's at distance 1
    assert image_boundary_f(prediction, target, 2, tolerance=1) == pytest.approx(1.0)


def test_missing_borders_score_zero_and_no_border_is_nan():
    target = square(1)
    assert image_boundary_f(np.zeros_like(target), target, 2) == 0.0
    flat = np.zeros((5, 5), np.int64)
    assert np.isnan(image_boundary_f(flat, flat, 2))


def test_dataset_mean_over_images():
    metric = BoundaryFScore(2, tolerance=0)
    prediction = torch.as_tensor(np.stack([square(2), square(1), np.zeros((6, 6), np.int64)]))
    target = torch.as_tensor(np.stack([square(1), square(1), np.zeros((6, 6), np.int64)]))
    metric.update(prediction, target)  # the third image has no border: skipped
    assert metric.compute() == pytest.approx((5 / 12 + 1) / 2)
