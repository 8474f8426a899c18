"""LEDNet: parameter count from the layer description, SS-nbt, shuffle, any size, training."""

from __future__ import annotations

import torch
from short_training import short_training_scores

from seglab.models import MODELS, count_parameters, create_model
from seglab.models.lednet import SSnbt, channel_shuffle


def _downsampler(cin: int, cout: int) -> int:
    """conv 3x3 cin -> cout - cin with bias, BN over cout (the pooled cin channels join)."""
    return 9 * cin * (cout - cin) + (cout - cin) + 2 * cout


def _ss_nbt(channels: int) -> int:
    """Two branches on C/2 channels, each four 3-tap convs (3x1 or 1x3) with bias and 2 BNs."""
    half = channels // 2
    return 2 * (4 * (3 * half * half + half) + 2 * 2 * half)


def _conv_bn_relu(cin: int, cout: int, k: int) -> int:  # conv with bias + BN
    return cin * cout * k * k + cout + 2 * cout


def _lednet(num_classes: int) -> int:
    encoder = (
        _downsampler(3, 32)
        + 3 * _ss_nbt(32)
        + _downsampler(32, 64)
        + 2 * _ss_nbt(64)
        + _downsampler(64, 128)
        + 8 * _ss_nbt(128)
    )
    apn = (
        2 * _conv_bn_relu(128, num_classes, 1)  # global-pool branch and mid branch
        + _conv_bn_relu(128, 1, 7)  # down1
        + _conv_bn_relu(1, 1, 5)  # down2
        + 2 * _conv_bn_relu(1, 1, 3)  # down3
        + _conv_bn_relu(1, 1, 5)  # conv2
        + _conv_bn_relu(1, 1, 7)  # conv1
    )
    return encoder + apn


def test_parameter_count_matches_the_layer_description():
    # 911,436 in the encoder: "< 1M" (abstract), "~900K" (LEDNet issue #7).
    assert MODELS["lednet"].paper_params == _lednet(19) == 922_821
    with torch.device("meta"):
        assert count_parameters(create_model("lednet", 19)) == _lednet(19)
        assert count_parameters(create_model("lednet", 7)) == _lednet(7)


def test_channel_shuffle_interleaves_the_two_halves():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_ss_nbt_branches_factorise_in_opposite_orders_and_dilate():
    unit = SSnbt(8, dropout=0.0, dilation=5)
    left = [unit.left.conv1, unit.left.conv2, unit.left.conv3, unit.left.conv4]
    right = [unit.right.conv1, unit.right.conv2, unit.right.conv3, unit.right.conv4]
    assert [c.kernel_size for c in left] == [(3, 1), (1, 3), (3, 1), (1, 3)]
    assert [c.kernel_size for c in right] == [(1, 3), (3, 1), (1, 3), (3, 1)]
    assert [c.dilation for c in left[2:]] == [(5, 1), (1, 5)]
    x = torch.randn(2, 8, 9, 11)
    assert unit(x).shape == x.shape


def test_any_class_count_and_input_size():
    model = create_model("lednet", 5, **MODELS["lednet"].small_options).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 53)).shape == (1, 5, 37, 53)
        assert model.logits_at_one_eighth(torch.randn(1, 3, 64, 80)).shape == (1, 5, 8, 10)


def test_encoder_only_stage_trains_against_one_eighth_labels():
    model = create_model("lednet", 4, encoder_only=True).train()
    assert model.label_stride == 8
    out = model(torch.randn(2, 3, 64, 48))
    assert out["out"].shape == (2, 4, 8, 6) and out["aux"] == []
    assert model.eval().forward_coarse(torch.randn(1, 3, 64, 48)).shape == (1, 4, 8, 6)


def test_short_training_beats_chance(shapes_root, tmp_path):
    # The APN's logits are ReLU outputs (>= 0, as in the code): slower to start than most heads.
    options = "{widths: [16, 32, 64], units: [1, 1], dilations: [1, 2], dropout: [0.0, 0.0]}"
    scores = short_training_scores(shapes_root, tmp_path / "run", "lednet", options, 60, 1e-2)
    assert scores["mean_accuracy"] > 2 / 6, scores
