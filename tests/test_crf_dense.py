"""Dense CRF mean field: against an exact O(N^2) implementation, against pydensecrf, and on a
synthetic image where the true segmentation follows colour edges."""

import numpy as np
import pytest
import torch

from seglab.crf import PRESETS, DenseCRFParams, dense_crf, resolve_params
from seglab.crf.reference import mean_field_bruteforce, pydensecrf_labels
from seglab.errors import SeglabError


def _scene(h: int, w: int, classes: int, noise: float, seed: int):
    """An image of flat colour regions, its labels, and noisy probabilities for those labels."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    labels = torch.zeros(h, w, dtype=torch.long)
    for c in range(1, classes):
        cy, cx = torch.randint(0, h, (1,), generator=g), torch.randint(0, w, (1,), generator=g)
        radius = 0.15 * min(h, w) + 0.2 * min(h, w) * torch.rand(1, generator=g)
        labels[(y - cy) ** 2 + (x - cx) ** 2 < radius**2] = c
    palette = torch.rand(classes, 3, generator=g) * 255
    image = palette[labels].permute(2, 0, 1) + 8 * torch.randn(3, h, w, generator=g)
    image = image.clamp(0, 255).round().to(torch.uint8)
    one_hot = torch.nn.functional.one_hot(labels, classes).permute(2, 0, 1).float()
    probabilities = torch.softmax(2 * one_hot + noise * torch.randn(classes, h, w, generator=g), 0)
    return image, labels, probabilities


def test_presets_hold_the_published_parameters():
    # (w1, theta_alpha, theta_beta, w2, theta_gamma, iterations), from MODELS.md.
    published = {
        "deeplab-largefov": (4, 121, 5, 3, 3, 10),
        "deeplab-v2": (4, 67, 3, 3, 1, 10),
        "pydensecrf": (10, 80, 13, 3, 3, 10),
    }
    for name, numbers in published.items():
        p = PRESETS[name]
        assert (p.w1, p.theta_alpha, p.theta_beta, p.w2, p.theta_gamma, p.iterations) == numbers


def test_unknown_preset_raises_seglab_error_listing_presets():
    with pytest.raises(SeglabError, match="deeplab-largefov, deeplab-v2, pydensecrf"):
        resolve_params("deeplab-v3")


def test_unknown_override_and_bad_values_raise_seglab_error():
    with pytest.raises(SeglabError, match="theta_delta"):
        resolve_params("pydensecrf", theta_delta=3)
    with pytest.raises(SeglabError, match="theta_beta"):
        resolve_params("pydensecrf", theta_beta=0)


def test_overrides_replace_only_the_named_fields():
    p = resolve_params("deeplab-v2", iterations=3, w1=7)
    assert p == DenseCRFParams(7, 67, 3, 3, 1, 3)


def test_mismatched_shapes_raise_seglab_error():
    with pytest.raises(SeglabError, match="resize"):
        dense_crf(torch.rand(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(SeglabError, match=r"\(B, 3, H, W\)"):
        dense_crf(torch.rand(1, 3, 8, 8), torch.zeros(1, 1, 8, 8))


def test_zero_weights_return_the_unary_softmax():
    image, _, probabilities = _scene(20, 30, 3, 1.0, seed=0)
    q = dense_crf(probabilities[None], image[None], w1=0, w2=0)
    assert torch.allclose(q[0], probabilities, atol=1e-5)


def test_lattice_mean_field_agrees_with_exact_mean_field():
    image, _, probabilities = _scene(24, 32, 4, 1.5, seed=1)
    for preset in PRESETS:
        params = resolve_params(preset)
        exact = mean_field_bruteforce(probabilities, image, params)
        q = dense_crf(probabilities[None], image[None], preset=preset)[0]
        agreement = (q.argmax(0) == exact.argmax(0)).float().mean()
        assert agreement >= 0.99, preset


def test_potts_matrix_gives_the_same_result_as_potts():
    image, _, probabilities = _scene(30, 40, 4, 1.5, seed=2)
    potts = 1.0 - torch.eye(4)
    a = dense_crf(probabilities[None], image[None], preset="pydensecrf")
    b = dense_crf(probabilities[None], image[None], preset="pydensecrf", compatibility=potts)
    assert torch.allclose(a, b, atol=1e-4)


def test_compatibility_matrix_changes_which_labels_attract():
    # Making label 1 free next to label 0 (mu(0, 1) = 0) lets label 1 grow where 0 is likely.
    image, _, probabilities = _scene(30, 40, 3, 1.5, seed=3)
    mu = 1.0 - torch.eye(3)
    mu[0, 1] = mu[1, 0] = 0.0
    a = dense_crf(probabilities[None], image[None], preset="pydensecrf")
    b = dense_crf(probabilities[None], image[None], preset="pydensecrf", compatibility=mu)
    assert (b[0, 1] - a[0, 1]).mean() > 0.01


def test_logits_and_their_softmax_give_the_same_result():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 5, 16, 20, generator=g)
    images = torch.randint(0, 256, (2, 3, 16, 20), generator=g, dtype=torch.uint8)
    a = dense_crf(logits, images, logits=True)
    b = dense_crf(torch.softmax(logits, 1), images)
    assert torch.allclose(a, b, atol=1e-4)


def test_batch_equals_images_one_at_a_time():
    g = torch.Generator().manual_seed(5)
    probabilities = torch.softmax(torch.randn(2, 4, 16, 20, generator=g), 1)
    images = (torch.rand(2, 3, 16, 20, generator=g) * 255).to(torch.uint8)
    batch = dense_crf(probabilities, images, preset="deeplab-v2")
    for i in range(2):
        one = dense_crf(probabilities[i : i + 1], images[i : i + 1], preset="deeplab-v2")
        assert torch.allclose(batch[i], one[0])


def test_crf_raises_pixel_accuracy_on_noisy_unary_along_colour_edges():
    image, labels, probabilities = _scene(60, 80, 4, 2.5, seed=6)
    before = (probabilities.argmax(0) == labels).float().mean()
    q = dense_crf(probabilities[None], image[None], preset="deeplab-largefov")[0]
    after = (q.argmax(0) == labels).float().mean()
    assert before < 0.8
    assert after > before + 0.15


def _pydensecrf_labels(probabilities, image, params):
    pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 is not installed")
    return pydensecrf_labels(probabilities, image, params)


def test_labels_agree_with_pydensecrf_on_500x375_with_21_classes():
    image, _, probabilities = _scene(375, 500, 21, 2.0, seed=7)
    reference = _pydensecrf_labels(probabilities, image, PRESETS["pydensecrf"])
    q = dense_crf(probabilities[None], image[None], preset="pydensecrf")[0]
    assert (q.argmax(0).numpy() == reference).mean() >= 0.99


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_labels_agree_with_pydensecrf_for_every_preset(preset):
    image, _, probabilities = _scene(120, 160, 21, 2.0, seed=9)
    reference = _pydensecrf_labels(probabilities, image, PRESETS[preset])
    q = dense_crf(probabilities[None], image[None], preset=preset)[0]
    assert (q.argmax(0).numpy() == reference).mean() >= 0.99


def test_one_message_equals_pydensecrf_message():
    # After one iteration Q1 = softmax(log P + message), so equal Q1 means an equal normalised
    # lattice filter: this compares seglab's lattice with densecrf's number for number.
    dcrf = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 is not installed")
    g = torch.Generator().manual_seed(8)
    k, h, w = 5, 60, 80
    image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    probabilities = torch.softmax(2 * torch.randn(k, h, w, generator=g), 0).clamp(min=1e-5)
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(probabilities.numpy()).reshape(k, -1)))
    rgb = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    crf.addPairwiseBilateral(sxy=7, srgb=13, rgbim=rgb, compat=5.0)
    reference = np.array(crf.inference(1)).reshape(k, h, w)
    params = {"w1": 5, "w2": 0, "theta_alpha": 7, "theta_beta": 13}
    q = dense_crf(
        probabilities[None], image[None], iterations=1, vertex_dtype=torch.float32, **params
    )[0].numpy()
    close = np.abs(q - reference).max(0) < 1e-5
    # Observed: all but 8 of 4800 pixels within 2e-6. A point on a simplex boundary can round
    # into the neighbouring simplex in one float32 order and not the other, which moves its
    # own and its neighbours' messages a little.
    assert close.mean() > 0.995


def test_grid_search_ranks_a_colour_aware_kernel_above_a_colour_blind_one():
    from seglab.crf.search import grid_search

    scenes = [_scene(40, 50, 3, 2.5, seed=s) for s in (10, 11)]
    images, labels, probabilities = zip(*scenes, strict=True)
    results = grid_search(
        probabilities, images, labels, 3, [5.0], [30.0], [3.0, 1000.0], "deeplab-largefov"
    )
    assert [params.theta_beta for params, _ in results] == [3.0, 1000.0]
    assert results[0][1] > results[1][1]
    # The mean IoU is the confusion-matrix one: recompute the best by hand.
    best = results[0][0]
    hits, union = [0] * 3, [0] * 3
    for image, label, probs in scenes:
        pred = dense_crf(probs[None], image[None], preset=best)[0].argmax(0)
        for c in range(3):
            hits[c] += int(((pred == c) & (label == c)).sum())
            union[c] += int(((pred == c) | (label == c)).sum())
    assert abs(results[0][1] - sum(h / u for h, u in zip(hits, union, strict=True)) / 3) < 1e-9


def test_half_precision_vertices_keep_the_labels():
    image, _, probabilities = _scene(60, 80, 5, 2.0, seed=12)
    full = dense_crf(
        probabilities[None], image[None], preset="pydensecrf", vertex_dtype=torch.float32
    )
    half = dense_crf(
        probabilities[None], image[None], preset="pydensecrf", vertex_dtype=torch.float16
    )
    assert half.dtype == torch.float32
    assert (full.argmax(1) == half.argmax(1)).float().mean() > 0.999
    assert (full - half).abs().max() < 0.05


def test_default_precision_is_float16_only_for_a_lattice_larger_than_half_the_pixels():
    g = torch.Generator().manual_seed(13)
    probabilities = torch.softmax(torch.randn(1, 4, 40, 50, generator=g), 1)
    noise = torch.randint(0, 256, (1, 3, 40, 50), generator=g, dtype=torch.uint8)
    flat = torch.full((1, 3, 40, 50), 128, dtype=torch.uint8)
    # The PyTorch path's choice (the native kernel is float32 throughout).
    options = {"preset": "pydensecrf", "backend": "torch"}
    for image, chosen in ((noise, torch.float16), (flat, torch.float32)):
        auto = dense_crf(probabilities, image, **options)
        explicit = dense_crf(probabilities, image, vertex_dtype=chosen, **options)
        other = torch.float32 if chosen == torch.float16 else torch.float16
        assert torch.equal(auto, explicit)
        assert not torch.equal(auto, dense_crf(probabilities, image, vertex_dtype=other, **options))


def test_output_is_channels_last_marginals():
    g = torch.Generator().manual_seed(14)
    probabilities = torch.softmax(torch.randn(2, 3, 9, 11, generator=g), 1)
    q = dense_crf(probabilities, torch.zeros(2, 3, 9, 11))
    assert q.shape == (2, 3, 9, 11)
    assert q.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(q.sum(1), torch.ones(2, 9, 11), atol=1e-5)


def test_extreme_logits_and_weights_give_finite_normalised_marginals():
    # Costs far beyond exp's range (the unary is capped; an exponent over 127 falls back to
    # the max-subtracted softmax) must neither overflow nor turn into NaN.
    g = torch.Generator().manual_seed(15)
    logits = 1e4 * torch.randn(1, 4, 20, 24, generator=g)
    image = torch.randint(0, 256, (1, 3, 20, 24), generator=g, dtype=torch.uint8)
    q = dense_crf(logits, image, logits=True, preset="pydensecrf", w1=200.0)
    assert torch.isfinite(q).all()
    assert torch.allclose(q.sum(1), torch.ones(1, 20, 24), atol=1e-4)
