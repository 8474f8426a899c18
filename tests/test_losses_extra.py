"""Dice, focal and Lovasz-softmax (seglab/losses_extra.py) against hand-computed cases.

One image, K = 2 classes, 1 x 4 pixels; logits chosen so the softmax is exact:
    pixel a: logits (0, ln 3) -> p = (1/4, 3/4),  label 1
    pixel b: logits (0, 0)    -> p = (1/2, 1/2),  label 0
    pixel c: logits (ln 3, 0) -> p = (3/4, 1/4),  label 255 (ignored: must count for nothing)
    pixel d: logits (ln 9, 0) -> p = (9/10, 1/10), label 0
"""

import math

import pytest
import torch

from seglab.config import load_config
from seglab.errors import SeglabError
from seglab.losses import SegmentationLoss
from seglab.losses_extra import (
    check_terms,
    dice_loss,
    focal_loss,
    lovasz_grad,
    lovasz_softmax_loss,
)

L3, L9 = math.log(3), math.log(9)


def case(ignored_logits=(L3, 0.0)):
    pixels = [(0.0, L3), (0.0, 0.0), ignored_logits, (L9, 0.0)]
    logits = torch.tensor(pixels).T.reshape(1, 2, 1, 4)
    target = torch.tensor([[[1, 0, 255, 0]]])
    return logits, target


def test_dice_by_hand():
    # class 0 over a, b, d: p0 = 1/4, 1/2, 9/10; g0 = 0, 1, 1
    #   intersection 1/2 + 9/10 = 1.4; sum p0 = 1.65; sum g0 = 2
    #   dice0 = (2 * 1.4 + 1) / (1.65 + 2 + 1) = 3.8 / 4.65
    # class 1: p1 = 3/4, 1/2, 1/10; g1 = 1, 0, 0: intersection 0.75, sum p1 1.35, sum g1 1
    #   dice1 = (1.5 + 1) / (1.35 + 1 + 1) = 2.5 / 3.35
    expected = 1 - (3.8 / 4.65 + 2.5 / 3.35) / 2
    logits, target = case()
    assert dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_focal_by_hand():
    # p_t: a 3/4, b 1/2, d 9/10; FL = -(1 - p_t)^2 ln p_t, mean over the 3 valid pixels
    terms = [-((1 - p) ** 2) * math.log(p) for p in (0.75, 0.5, 0.9)]
    logits, target = case()
    assert focal_loss(logits, target).item() == pytest.approx(sum(terms) / 3, rel=1e-6)
    # gamma 0 is plain cross-entropy: -(ln 3/4 + ln 1/2 + ln 9/10) / 3
    ce = -(math.log(0.75) + math.log(0.5) + math.log(0.9)) / 3
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(ce, rel=1e-6)


def test_lovasz_grad_by_hand():
    # sorted truth [1, 0, 1], G = 2: J_i = 1 - (G - cumsum g) / (G + cumsum (1 - g))
    #   J = [1 - 1/2, 1 - 1/3, 1 - 0/3] = [1/2, 2/3, 1]; differences [1/2, 1/6, 1/3]
    grad = lovasz_grad(torch.tensor([1.0, 0.0, 1.0]))
    assert grad.tolist() == pytest.approx([1 / 2, 1 / 6, 1 / 3])


def test_lovasz_softmax_by_hand():
    # class 0: errors |g0 - p0| over a, b, d = 1/4, 1/2, 1/10; sorted b (g 1), a (g 0), d (g 1)
    #   grad (test above) 1/2, 1/6, 1/3 -> 0.5 * 1/2 + 0.25 * 1/6 + 0.1 * 1/3 = 0.325
    # class 1: errors 1/4, 1/2, 1/10; sorted b (g 0), a (g 1), d (g 0), G = 1:
    #   J = [1 - 1/2, 1 - 0/2, 1 - 0/3] = [1/2, 1, 1] -> grad 1/2, 1/2, 0
    #   0.5 * 1/2 + 0.25 * 1/2 = 0.375
    logits, target = case()
    expected = (0.325 + 0.375) / 2
    assert lovasz_softmax_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("loss", [dice_loss, focal_loss, lovasz_softmax_loss])
def test_ignored_pixel_counts_for_nothing(loss):
    a, target = case()
    b, _ = case(ignored_logits=(-5.0, 7.0))
    assert loss(a, target).item() == pytest.approx(loss(b, target).item(), abs=1e-7)
    # every pixel ignored: 0 (or a constant) and still differentiable, no NaN
    logits = a.clone().requires_grad_()
    value = loss(logits, torch.full_like(target, 255))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_terms_combine_with_ce_and_aux_outputs():
    # loss = sum over outputs of w_output * (1.0 * CE + 0.5 * Dice); main w = 1, aux w = 0.4
    logits, target = case()
    ce = -(math.log(0.75) + math.log(0.5) + math.log(0.9)) / 3
    dice = 1 - (3.8 / 4.65 + 2.5 / 3.35) / 2
    criterion = SegmentationLoss(aux_weights=[0.4], terms={"ce": 1.0, "dice": 0.5})
    value = criterion({"out": logits, "aux": [logits.clone()]}, target)
    assert value.item() == pytest.approx(1.4 * (ce + 0.5 * dice), rel=1e-6)
    # a half-resolution output is compared with the nearest-downsampled target, as CE is:
    # 1 x 2 logits of pixels a and c see labels a (1) and c (255) -> only a counts
    half = logits[..., ::2]
    only_a = SegmentationLoss(terms={"dice": 1.0})(half, target)
    # dice with pixel a alone: class 0: (0 + 1) / (1/4 + 0 + 1) = 0.8; class 1: (1.5 + 1) /
    # (3/4 + 1 + 1) = 2.5 / 2.75
    assert only_a.item() == pytest.approx(1 - (0.8 + 2.5 / 2.75) / 2, rel=1e-6)


def test_terms_from_config_and_errors():
    cfg = load_config(None, ["loss.terms={ce: 1, lovasz: 0.5}"])
    assert check_terms(cfg.loss.terms) == {"ce": 1.0, "lovasz": 0.5}
    with pytest.raises(SeglabError, match="unknown term 'tversky'; choose from ce, dice"):
        check_terms({"tversky": 1.0})
    with pytest.raises(SeglabError, match="loss.terms.dice: weight -1"):
        check_terms({"dice": -1})
    with pytest.raises(SeglabError, match="every weight is 0"):
        check_terms({"ce": 0})
