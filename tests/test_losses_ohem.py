"""OHEM cross-entropy against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from seglab.losses_ohem import ohem_cross_entropy


def _two_class_logits(margins: list[float]) -> torch.Tensor:
    """(1, 2, 1, N) logits [0, m]: with label 1 the true-class probability is sigmoid(m)."""
    m = torch.tensor(margins)
    return torch.stack([torch.zeros_like(m), m])[None, :, None, :]


def _nll(margin: float) -> float:  # -log sigmoid(m)
    return math.log1p(math.exp(-margin))


def test_keeps_pixels_under_the_threshold_only():
    # sigmoid(-1) = 0.27, sigmoid(0) = 0.5, sigmoid(1) = 0.73, sigmoid(3) = 0.95
    logits = _two_class_logits([-1.0, 0.0, 1.0, 3.0])
    target = torch.ones(1, 1, 4, dtype=torch.long)
    loss = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=1)
    assert math.isclose(loss.item(), (_nll(-1.0) + _nll(0.0)) / 2, rel_tol=1e-6)


def test_min_kept_raises_the_threshold_to_the_kth_smallest_probability():
    logits = _two_class_logits([-1.0, 0.0, 1.0, 3.0])
    target = torch.ones(1, 1, 4, dtype=torch.long)
    loss = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=3)
    assert math.isclose(loss.item(), (_nll(-1.0) + _nll(0.0) + _nll(1.0)) / 3, rel_tol=1e-6)


def test_ignored_pixels_never_count_and_too_few_valid_pixels_disable_mining():
    logits = _two_class_logits([-1.0, 0.0, 1.0, 3.0])
    target = torch.tensor([[[1, 255, 1, 1]]])
    mined = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=1)
    assert math.isclose(mined.item(), _nll(-1.0), rel_tol=1e-6)
    every_valid = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=4)  # 3 valid < 4
    expected = (_nll(-1.0) + _nll(1.0) + _nll(3.0)) / 3
    assert math.isclose(every_valid.item(), expected, rel_tol=1e-6)


def test_gradient_flows_only_through_the_kept_pixels():
    logits = _two_class_logits([-1.0, 0.0, 1.0, 3.0]).requires_grad_()
    ohem_cross_entropy(logits, torch.ones(1, 1, 4, dtype=torch.long), 0.7, 1).backward()
    assert logits.grad[0, :, 0, 2:].abs().sum() == 0 and logits.grad[0, :, 0, :2].abs().sum() > 0


def test_segmentation_loss_mines_every_term_and_the_config_key_is_checked(tiny_config):
    from seglab.engine.run_setup import build_loss
    from seglab.errors import SeglabError
    from seglab.losses import SegmentationLoss

    logits = _two_class_logits([-1.0, 0.0, 1.0, 3.0])
    target = torch.ones(1, 1, 4, dtype=torch.long)
    criterion = SegmentationLoss(aux_weights=(1.0,), ohem={"thresh": 0.7, "min_kept": 1.0})
    loss = criterion({"out": logits, "aux": [logits]}, target)
    assert math.isclose(loss.item(), _nll(-1.0) + _nll(0.0), rel_tol=1e-6)

    class NoAux(torch.nn.Module):
        aux_weights = ()

    cfg = tiny_config("loss.ohem={thresh: 0.7, min_kept: 16}")
    assert build_loss(cfg, NoAux(), None, torch.device("cpu")).ohem == {
        "thresh": 0.7,
        "min_kept": 16,
    }
    with pytest.raises(SeglabError, match="loss.ohem"):
        build_loss(tiny_config("loss.ohem={thres: 0.7}"), NoAux(), None, torch.device("cpu"))
