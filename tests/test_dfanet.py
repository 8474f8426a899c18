"""DFANet: parameter count from the layer description, aggregation geometry, training."""

from __future__ import annotations

import torch
from short_training import short_training_scores

from seglab.models import MODELS, count_parameters, create_model
from seglab.models.dfanet import FCAttention


def _bn(c: int) -> int:
    return 2 * c


def _separable(cin: int, cout: int) -> int:
    """Depthwise 3x3 + BN(cin) + pointwise 1x1, no biases (Tramac's SeparableConv2d)."""
    return 9 * cin + _bn(cin) + cin * cout


def _block_a(cin: int, cout: int, stride: int) -> int:
    mid = cout // 4
    total = _separable(cin, mid) + _bn(mid) + _separable(mid, mid) + _bn(mid)
    total += _separable(mid, cout) + _bn(cout)
    if cin != cout or stride != 1:  # 1x1 conv + BN shortcut
        total += cin * cout + _bn(cout)
    return total


def _enc(cin: int, cout: int, blocks: int) -> int:
    return _block_a(cin, cout, 2) + (blocks - 1) * _block_a(cout, cout, 1)


def _fc_attention(c: int) -> int:
    return c * 1000 + 1000 + 1000 * c + _bn(c)  # Linear with bias, 1x1 conv without, BN


def _dfanet(num_classes: int) -> int:
    """Backbone A three times: the first from an 8-channel stem, the others on concatenations
    (enc2 240 = 48 + 192, enc3 144 = 96 + 48, enc4 288 = 192 + 96); decoder at 32 channels."""
    stem = 3 * 8 * 9 + _bn(8)
    first = _enc(8, 48, 4) + _enc(48, 96, 6) + _enc(96, 192, 4) + _fc_attention(192)
    aggregated = _enc(240, 48, 4) + _enc(144, 96, 6) + _enc(288, 192, 4) + _fc_attention(192)
    decoder = 3 * (48 * 32 + _bn(32)) + (32 * 32 + _bn(32)) + 3 * (192 * 32 + _bn(32))
    decoder += 32 * num_classes + num_classes
    return stem + first + 2 * aggregated + decoder


def test_parameter_count_matches_the_layer_description():
    assert MODELS["dfanet"].paper_params == _dfanet(19)
    with torch.device("meta"):
        assert count_parameters(create_model("dfanet", 19)) == _dfanet(19)


def test_fc_attention_scales_each_channel_by_its_attention():
    attention = FCAttention(4, fc_units=3).eval()
    x = torch.randn(2, 4, 5, 6)
    with torch.no_grad():
        pooled = attention.fc(x.mean(dim=(2, 3)))[:, :, None, None]
        expected = x * attention.conv(pooled)
        assert torch.allclose(attention(x), expected)
        assert attention.fc.out_features == 3


def test_three_backbones_run_one_octave_apart():
    model = create_model("dfanet", 3, **MODELS["dfanet"].small_options).eval()
    shapes = {}
    for name in ("encoder", "backbone2", "backbone3"):
        getattr(model, name).fca.register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, o.shape[-2:])
        )
    with torch.no_grad():
        assert model(torch.randn(2, 3, 128, 192)).shape == (2, 3, 128, 192)
    assert shapes == {"encoder": (8, 12), "backbone2": (4, 6), "backbone3": (2, 3)}


def test_short_training_beats_chance(shapes_root, tmp_path):
    options = "{channels: [16, 32, 64], blocks: [1, 1, 1], fc_units: 64}"
    scores = short_training_scores(shapes_root, tmp_path / "run", "dfanet", options, 60, 1e-2)
    assert scores["mean_accuracy"] > 2 / 6, scores
