"""SegNet's median-frequency class balancing against frequencies worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from seglab.losses import (
    class_pixel_counts,
    dataset_median_frequency_weights,
    median_frequency_weights,
)

# Three 2x3 masks, four classes (class 3 never occurs), one ignored pixel.
MASKS = [
    np.array([[0, 0, 1], [0, 1, 255]]),  # 5 valid pixels: class 0 x3, class 1 x2
    np.array([[2, 2, 2], [0, 2, 2]]),  # 6: class 0 x1, class 2 x5
    np.array([[0, 0, 0], [0, 0, 1]]),  # 6: class 0 x5, class 1 x1
]
# freq(c) = pixels of c / pixels of the images that contain c (ignored pixels excluded)
FREQ = [(3 + 1 + 5) / (5 + 6 + 6), (2 + 1) / (5 + 6), 5 / 6]
MEDIAN = 9 / 17  # median of 9/17, 3/11, 5/6
EXPECTED = [MEDIAN / FREQ[0], MEDIAN / FREQ[1], MEDIAN / FREQ[2], 0.0]  # 1, 99/51, 54/85, 0


def test_pixel_counts_skip_ignored_pixels_and_count_images_containing_each_class():
    pixels, image_pixels = class_pixel_counts(MASKS, 4)
    assert pixels.tolist() == [9, 3, 5, 0]
    assert image_pixels.tolist() == [17, 11, 6, 0]


def test_median_frequency_weights_match_hand_computation():
    weights = median_frequency_weights(*class_pixel_counts(MASKS, 4))
    np.testing.assert_allclose(weights, EXPECTED, rtol=1e-12)
    assert weights[1] == pytest.approx(99 / 51) and weights[2] == pytest.approx(54 / 85)


class _Masks:
    """The dataset interface the trainer passes: len() and load(i) -> (image, mask)."""

    def __len__(self) -> int:
        return len(MASKS)

    def load(self, index: int):
        return None, MASKS[index]


def test_dataset_weights_are_what_the_trainer_uses():
    np.testing.assert_allclose(dataset_median_frequency_weights(_Masks(), 4), EXPECTED)
