"""ConvCRF: the windowed mean field against the exact O(N^2) one with the same window."""

import pytest
import torch
from test_crf_dense import _scene

from seglab.crf import conv_crf, dense_crf, resolve_params
from seglab.crf.reference import mean_field_bruteforce
from seglab.errors import SeglabError


@pytest.mark.parametrize("preset", ["deeplab-largefov", "pydensecrf"])
def test_window_covering_the_image_equals_exact_mean_field(preset):
    image, _, probabilities = _scene(16, 20, 3, 1.5, seed=0)
    exact = mean_field_bruteforce(probabilities, image, resolve_params(preset))
    q = conv_crf(probabilities[None], image[None], preset=preset, kernel_size=41)[0]
    assert torch.allclose(q, exact, atol=1e-4)


@pytest.mark.parametrize("kernel_size", [3, 7])
def test_truncated_window_equals_exact_mean_field_with_the_same_window(kernel_size):
    image, _, probabilities = _scene(16, 20, 3, 1.5, seed=1)
    params = resolve_params("deeplab-v2", w2=5)
    exact = mean_field_bruteforce(probabilities, image, params, window=kernel_size)
    q = conv_crf(probabilities[None], image[None], preset=params, kernel_size=kernel_size)[0]
    assert torch.allclose(q, exact, atol=1e-4)


@pytest.mark.parametrize("downsample", [1, 4])
def test_convcrf_raises_pixel_accuracy_on_noisy_unary_along_colour_edges(downsample):
    image, labels, probabilities = _scene(60, 80, 4, 2.5, seed=6)
    before = (probabilities.argmax(0) == labels).float().mean()
    q = conv_crf(probabilities[None], image[None], preset="deeplab-largefov", downsample=downsample)
    assert q.shape == (1, 4, 60, 80)
    assert torch.allclose(q.sum(1), torch.ones(1, 60, 80), atol=1e-5)
    after = (q[0].argmax(0) == labels).float().mean()
    assert after > before + 0.1


def test_convcrf_and_dense_crf_agree_on_a_smooth_image():
    # theta_alpha = 3 keeps the appearance kernel inside an 11 x 11 window, so the truncation
    # changes little; the lattice approximation is what remains (observed 97.9% agreement; a
    # larger window gives the same, so the difference is the lattice's, not the truncation's).
    image, _, probabilities = _scene(40, 50, 3, 1.5, seed=2)
    params = {"theta_alpha": 3.0, "theta_gamma": 1.0}
    a = dense_crf(probabilities[None], image[None], **params)
    b = conv_crf(probabilities[None], image[None], kernel_size=11, **params)
    assert (a.argmax(1) == b.argmax(1)).float().mean() > 0.95


def test_even_or_zero_window_and_bad_downsample_raise_seglab_error():
    scores, images = torch.rand(1, 2, 8, 8), torch.zeros(1, 3, 8, 8)
    with pytest.raises(SeglabError, match="odd"):
        conv_crf(scores, images, kernel_size=4)
    with pytest.raises(SeglabError, match="downsample"):
        conv_crf(scores, images, downsample=0)


def test_convcrf_reads_images_as_dense_crf_does():
    # A float image in 0..1 is the uint8 image divided by 255 (Segmenter's reading); a float
    # image in 0..255 is ambiguous and refused, as dense_crf refuses it.
    image, _, probabilities = _scene(12, 14, 3, 1.5, seed=3)
    as_uint8 = conv_crf(probabilities[None], image[None], kernel_size=5)
    as_unit = conv_crf(probabilities[None], image[None].float() / 255, kernel_size=5)
    torch.testing.assert_close(as_unit, as_uint8)
    with pytest.raises(SeglabError):
        conv_crf(probabilities[None], image[None].float(), kernel_size=5)
