"""Gated CRF loss against a brute-force pair sum, boundary label relaxation on a hand-worked
3x3 border, and their wiring into SegmentationLoss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seglab.errors import SeglabError
from seglab.losses import SegmentationLoss
from seglab.losses_weak import gated_crf_loss, relaxed_boundary_loss

KERNELS = [{"weight": 0.9, "xy": 1.5, "rgb": 0.5}, {"weight": 0.1, "xy": 1.5}]


def brute_force_gated_crf(probs, image, kernels, radius, valid=None):
    """sum over every ordered pair (i, j), i != j, both in the image, with |dx|, |dy| <= r,
    of K_ij (1 - <p_i, p_j>) m(j), over sum m (or N h w); the image area-averaged to (h, w)
    by hand, a valid cell = all its full-resolution pixels valid."""
    n, c, h, w = probs.shape
    f = image.shape[-1] // w
    rgb = image.reshape(n, 3, h, f, w, f).mean((3, 5))
    cells = None if valid is None else valid.reshape(n, h, f, w, f).all(4).all(2).float()
    total = 0.0
    for b in range(n):
        for yi in range(h):
            for xi in range(w):
                for yj in range(h):
                    for xj in range(w):
                        if (yi, xi) == (yj, xj) or abs(yi - yj) > radius or abs(xi - xj) > radius:
                            continue
                        k = 0.0
                        for kernel in kernels:
                            e = ((xi - xj) ** 2 + (yi - yj) ** 2) / kernel["xy"] ** 2
                            if "rgb" in kernel:
                                d = rgb[b, :, yi, xi] - rgb[b, :, yj, xj]
                                e += float((d**2).sum()) / kernel["rgb"] ** 2
                            k += kernel["weight"] * math.exp(-0.5 * e)
                        if cells is not None:
                            k *= float(cells[b, yj, xj])
                        agree = float((probs[b, :, yi, xi] * probs[b, :, yj, xj]).sum())
                        total += k * (1 - agree)
    denom = n * h * w if cells is None else max(float(cells.sum()), 1.0)
    return total / denom


def test_gated_crf_equals_the_brute_force_pair_sum():
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 3, 4, 5, generator=generator).softmax(1)
    image = torch.rand(2, 3, 8, 10, generator=generator)  # twice the loss resolution
    loss = gated_crf_loss(probs, image, KERNELS, radius=2)
    assert loss.item() == pytest.approx(brute_force_gated_crf(probs, image, KERNELS, 2), rel=1e-5)


def test_gated_crf_gating_by_the_valid_pixel_mask():
    generator = torch.Generator().manual_seed(1)
    probs = torch.rand(1, 2, 4, 4, generator=generator).softmax(1)
    image = torch.rand(1, 3, 8, 8, generator=generator)
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    valid[0, :, 5:] = False  # padding: cells of columns 2 (half valid) and 3 are invalid
    loss = gated_crf_loss(probs, image, KERNELS, 1, mask_src=valid[:, None].float())
    expected = brute_force_gated_crf(probs, image, KERNELS, 1, valid)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_gated_crf_is_zero_for_agreeing_one_hot_predictions():
    probs = torch.zeros(1, 2, 3, 3)
    probs[:, 0] = 1  # every pixel certain of class 0: 1 - <p_i, p_j> = 0 for every pair
    image = torch.rand(1, 3, 3, 3, generator=torch.Generator().manual_seed(7))
    # sum K - sum K <p, p>: zero up to float rounding
    assert gated_crf_loss(probs, image, KERNELS, 1).item() == pytest.approx(0.0, abs=1e-6)


BORDER_SCENE = torch.tensor([[1, 1, 2], [1, 1, 2], [0, 0, 255]])
P = torch.tensor([0.2, 0.5, 0.3])  # every pixel's probabilities of classes 0, 1, 2


def uniform_logits(h: int, w: int) -> torch.Tensor:
    return P.log().view(1, 3, 1, 1).expand(1, 3, h, w).clone()


def test_relaxation_on_a_3x3_border():
    # 3x3 windows, worked by hand (outside the image is void):
    # (0,0) sees {1}: -log .5; (0,1), (0,2) see {1, 2}: -log .8; (1,0), (2,0) see {0, 1}:
    # -log .7; (1,1), (1,2), (2,1) and the void (2,2) see {0, 1, 2}: -log 1 = 0
    expected = -(math.log(0.5) + 2 * math.log(0.8) + 2 * math.log(0.7)) / 9
    loss = relaxed_boundary_loss(uniform_logits(3, 3), BORDER_SCENE[None])
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_relaxation_strict_classes_keep_their_one_hot():
    # class 2 strict: (0,2) and (1,2) see only {2}: -log .3 each instead of -log .8 and 0
    expected = -(math.log(0.5) + math.log(0.8) + 2 * math.log(0.7) + 2 * math.log(0.3)) / 9
    loss = relaxed_boundary_loss(uniform_logits(3, 3), BORDER_SCENE[None], strict_classes=[2])
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_relaxation_leaves_out_windows_of_void_only():
    target = torch.tensor([[[1, 255, 255, 255, 255]]])  # pixels 2..4 see no class
    loss = relaxed_boundary_loss(uniform_logits(1, 5), target)
    assert loss.item() == pytest.approx(-math.log(0.5), rel=1e-6)


def test_relaxation_border_0_is_cross_entropy():
    logits = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(2))
    target = torch.randint(0, 4, (2, 5, 6), generator=torch.Generator().manual_seed(3))
    target[0, 0, :3] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255)
    assert relaxed_boundary_loss(logits, target, border=0).item() == pytest.approx(
        expected.item(), rel=1e-6
    )


def test_segmentation_loss_adds_the_weighted_gated_crf_term():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(1, 3, 8, 8, generator=generator)
    image = torch.rand(1, 3, 8, 8, generator=generator)
    target = torch.full((1, 8, 8), 255)
    target[0, 2, 3], target[0, 6, 6] = 1, 2  # two clicks: partial CE on them only
    options = {"weight": 0.5, "radius": 1, "downscale": 2, "kernels": KERNELS}
    loss = SegmentationLoss(gated_crf=options)(logits, target, images=image)
    probs = F.avg_pool2d(logits.softmax(1), 2)
    crf = brute_force_gated_crf(probs, image, KERNELS, 1)
    ce = -(logits.log_softmax(1)[0, 1, 2, 3] + logits.log_softmax(1)[0, 2, 6, 6]) / 2
    assert loss.item() == pytest.approx(ce.item() + 0.5 * crf, rel=1e-5)
    with pytest.raises(ValueError, match="needs the input images"):
        SegmentationLoss(gated_crf=options)(logits, target)


def test_segmentation_loss_relax_and_option_errors():
    logits = uniform_logits(3, 3)
    expected = relaxed_boundary_loss(logits, BORDER_SCENE[None])
    assert SegmentationLoss(relax={})(logits, BORDER_SCENE[None]).item() == expected.item()
    with pytest.raises(SeglabError, match="loss.gated_crf: unknown key 'sigma'"):
        SegmentationLoss(gated_crf={"sigma": 3})
    with pytest.raises(SeglabError, match="loss.relax: unknown key 'window'"):
        SegmentationLoss(relax={"window": 3})


def test_relaxation_class_weights():
    # border 0 is F.cross_entropy's weighted CE
    logits = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    target = torch.randint(0, 3, (1, 4, 4), generator=torch.Generator().manual_seed(6))
    weights = torch.tensor([0.5, 2.0, 1.0])
    expected = F.cross_entropy(logits, target, weight=weights)
    loss = relaxed_boundary_loss(logits, target, border=0, class_weights=weights)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # 3x3 border: pixel weights are the means of w over N(i): (0,0) {1}: 2; (0,1), (0,2)
    # {1, 2}: 1.5; (1,0), (2,0) {0, 1}: 1.25; the rest {0, 1, 2}: 3.5 / 3 (their loss is 0)
    terms = [(2.0, 0.5), (1.5, 0.8), (1.5, 0.8), (1.25, 0.7), (1.25, 0.7)]
    total_weight = 2.0 + 3.0 + 2.5 + 4 * 3.5 / 3
    expected = -sum(w * math.log(p) for w, p in terms) / total_weight
    loss = relaxed_boundary_loss(uniform_logits(3, 3), BORDER_SCENE[None], class_weights=weights)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
