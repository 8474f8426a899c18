"""U-Net border weights: distances, connected components and the weighted loss, each checked
against values computed independently here (brute force, scipy, hand arithmetic)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seglab.losses_unet import (
    BorderWeightedCrossEntropy,
    border_weights_from_labels,
    connected_components,
    nearest_object_distances,
    unet_weight_map,
)


def _tiny_instances() -> np.ndarray:
    """Three objects on a 9x11 grid: two touching-ish squares and an L shape."""
    m = np.zeros((9, 11), np.int64)
    m[1:4, 1:4] = 1
    m[1:4, 5:8] = 2  # one background column (x = 4) between objects 1 and 2
    m[6:8, 2:9] = 3
    m[5, 8] = 3
    return m


def _brute_force_distances(instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = instances.shape
    objects = [np.argwhere(instances == i) for i in np.unique(instances) if i]
    d1, d2 = np.zeros((h, w)), np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            per_object = sorted(
                min(math.hypot(y - py, x - px) for py, px in pixels) for pixels in objects
            )
            d1[y, x], d2[y, x] = per_object[0], per_object[1]
    return d1, d2


def test_nearest_and_second_nearest_object_distances_match_brute_force():
    instances = _tiny_instances()
    d1, d2 = nearest_object_distances(instances, chunk=7)  # small chunks exercise the loop
    ref1, ref2 = _brute_force_distances(instances)
    np.testing.assert_allclose(d1, ref1, atol=1e-5)
    np.testing.assert_allclose(d2, ref2, atol=1e-5)


def test_weight_map_follows_the_papers_formula():
    instances = _tiny_instances()
    ref1, ref2 = _brute_force_distances(instances)
    labels = (instances > 0).astype(np.int64)
    n, n_fg = labels.size, labels.sum()
    w_c = np.where(labels == 1, n / (2 * n_fg), n / (2 * (n - n_fg)))  # balanced, 2 classes
    border = 10 * np.exp(-((ref1 + ref2) ** 2) / (2 * 5**2))
    expected = w_c + np.where(instances == 0, border, 0)
    np.testing.assert_allclose(unet_weight_map(instances), expected, rtol=1e-5)
    everywhere = unet_weight_map(instances, background_only=False)
    np.testing.assert_allclose(everywhere, w_c + border, rtol=1e-5)
    # the gap between objects 1 and 2 (d1 = d2 = 1) gets the largest border term
    assert everywhere[2, 4] == pytest.approx(w_c[2, 4] + 10 * math.exp(-4 / 50), rel=1e-5)


def test_given_class_weights_and_ignore_pixels():
    instances = _tiny_instances()
    labels = (instances > 0).astype(np.int64)
    labels[0, 0] = 255
    weights = unet_weight_map(instances, labels, w0=0.0, class_weights=[0.5, 2.0])
    assert weights[0, 0] == 0.0
    assert weights[2, 2] == 2.0 and weights[8, 10] == 0.5


def test_connected_components_agree_with_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(20, 23))
    labels[rng.random(labels.shape) < 0.05] = 255
    ours = connected_components(labels)
    # scipy labels one class at a time (4-connectivity by default); compare the partitions
    for cls in (1, 2):
        ref, count = ndimage.label(labels == cls)
        assert len(np.unique(ours[labels == cls])) == count
        for region in range(1, count + 1):
            assert len(np.unique(ours[ref == region])) == 1
    assert (ours[(labels == 0) | (labels == 255)] == 0).all()
    assert ours.max() == len(np.unique(ours)) - 1  # numbered 1..N without gaps


def test_a_single_object_has_no_border_term():
    instances = np.zeros((6, 6), np.int64)
    instances[2:4, 2:4] = 1
    d1, d2 = nearest_object_distances(instances)
    assert np.isinf(d2).all()
    weights = unet_weight_map(instances)
    assert np.allclose(weights[instances == 0], 36 / (2 * 32))


def test_border_weighted_cross_entropy_is_the_weighted_mean_over_valid_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, requires_grad=True)
    target = torch.randint(0, 3, (2, 5, 6))
    target[0, 0, 0] = 255
    weights = torch.rand(2, 5, 6)
    loss = BorderWeightedCrossEntropy()(logits, target, weights)
    log_p = F.log_softmax(logits, 1)
    total, count = 0.0, 0
    for b in range(2):
        for y in range(5):
            for x in range(6):
                if target[b, y, x] != 255:
                    total += -weights[b, y, x] * log_p[b, target[b, y, x], y, x]
                    count += 1
    assert loss.item() == pytest.approx((total / count).item(), rel=1e-5)
    loss.backward()
    assert logits.grad is not None


def test_border_weights_from_semantic_labels_separate_touching_objects():
    labels = torch.zeros(1, 9, 11, dtype=torch.long)
    labels[0, 1:4, 1:4] = 1
    labels[0, 1:4, 5:8] = 1  # same class, two objects: the gap column gets the border term
    weights = border_weights_from_labels(labels)
    assert weights.shape == (1, 9, 11)
    assert weights[0, 2, 4] > weights[0, 8, 10] + 5
