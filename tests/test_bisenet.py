"""BiSeNet: parameter counts from the layer description, ARM/FFM, speed protocol, training."""

from __future__ import annotations

import torch
from short_training import short_training_scores
from test_pspnet import _deep_stem_resnet

from seglab.losses import SegmentationLoss
from seglab.models import MODELS, count_parameters, create_model
from seglab.models.bisenet import FeatureFusion, Xception39


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k


def _conv_bn(cin: int, cout: int, k: int) -> int:  # bias-free conv + BN (weight, bias)
    return _conv(cin, cout, k) + 2 * cout


def _separable(cin: int, cout: int) -> int:
    """TorchSeg SeparableConvBnRelu: depthwise 3x3 (no BN), then 1x1 + BN."""
    return 9 * cin + _conv_bn(cin, cout, 1)


def _xception39() -> int:
    """conv 3x3 3->8 + BN, then stages (blocks, mid) = (4, 16), (8, 32), (4, 64); a block is
    sep(in, mid), sep(mid, mid), sep(mid, 4 mid), and the stage's first block a sep(in, 4 mid)
    projection. Stage widths 64 / 128 / 256."""
    total, cin = _conv_bn(3, 8, 3), 8
    for blocks, mid in ((4, 16), (8, 32), (4, 64)):
        for block in range(blocks):
            total += _separable(cin, mid) + _separable(mid, mid) + _separable(mid, 4 * mid)
            if block == 0:
                total += _separable(cin, 4 * mid)
            cin = 4 * mid
    return total


def _resnet18() -> int:
    """Stem 7x7 3->64 + BN; four stages of two basic blocks (3x3, 3x3), a 1x1 + BN projection
    where the stage widens (64 -> 128 -> 256 -> 512); no fc."""
    total, cin = _conv_bn(3, 64, 7), 64
    for planes in (64, 128, 256, 512):
        for block in range(2):
            total += _conv_bn(cin, planes, 3) + _conv_bn(planes, planes, 3)
            if block == 0 and cin != planes:
                total += _conv_bn(cin, planes, 1)
            cin = planes
    return total


def _bisenet_heads(c16: int, c32: int, main_mid: int, aux_mid: int, k: int) -> int:
    spatial = _conv_bn(3, 64, 7) + 2 * _conv_bn(64, 64, 3) + _conv_bn(64, 128, 1)
    global_context = _conv_bn(c32, 128, 1)
    arms = sum(_conv_bn(c, 128, 3) + _conv_bn(128, 128, 1) for c in (c32, c16))
    refines = 2 * _conv_bn(128, 128, 3)
    ffm = _conv_bn(256, 256, 1) + 2 * _conv(256, 256, 1)  # attention convs: no BN, no bias
    head = _conv_bn(256, main_mid, 3) + main_mid * k + k
    aux = 2 * (_conv_bn(128, aux_mid, 3) + aux_mid * k + k)
    return spatial + global_context + arms + refines + ffm + head + aux


def test_parameter_counts_match_the_layer_description():
    expected = {
        "bisenet": _xception39() + _bisenet_heads(128, 256, 64, 128, 19),
        "bisenet_r18": _resnet18() + _bisenet_heads(256, 512, 64, 256, 19),
        "bisenet_r101": _deep_stem_resnet((3, 4, 23, 3)) + _bisenet_heads(1024, 2048, 256, 256, 19),
    }
    assert _resnet18() == 11_689_512 - 513_000  # torchvision's resnet18 without its fc
    for name, count in expected.items():
        assert MODELS[name].paper_params == count, name
        with torch.device("meta"):
            assert count_parameters(create_model(name, num_classes=19)) == count, name


def test_xception39_declares_its_strides_and_channels():
    encoder = Xception39().eval()
    with torch.no_grad():
        maps = encoder(torch.randn(1, 3, 64, 96))
    assert [m.shape[1] for m in maps] == encoder.channels == [64, 128, 256]
    assert [64 // m.shape[-2] for m in maps] == encoder.strides == [8, 16, 32]


def test_feature_fusion_is_fm_plus_fm_times_attention():
    ffm = FeatureFusion(8, 8).eval()
    for conv in (ffm.attention[1].conv, ffm.attention[2].conv):
        assert conv.bias is None and not hasattr(ffm.attention[1], "bn")
    torch.nn.init.zeros_(ffm.attention[2].conv.weight)  # w = sigmoid(0) = 0.5 everywhere
    a, b = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    with torch.no_grad():
        fm = ffm.fuse(torch.cat([a, b], 1))
        assert torch.allclose(ffm(a, b), 1.5 * fm)


def test_training_returns_main_and_two_aux_outputs_weighted_one():
    torch.manual_seed(0)
    model = create_model("bisenet", 4, **MODELS["bisenet"].small_options).train()
    assert model.aux_weights == (1.0, 1.0) and model.label_stride == 1
    out = model(torch.randn(2, 3, 64, 80))
    assert (
        out["out"].shape == (2, 4, 64, 80) and [a.shape for a in out["aux"]] == [(2, 4, 64, 80)] * 2
    )


def test_speed_protocol_trains_at_one_eighth_against_downsampled_labels():
    torch.manual_seed(0)
    model = create_model(
        "bisenet", 4, downsample_labels=True, **MODELS["bisenet"].small_options
    ).train()
    assert model.label_stride == 8
    x = torch.randn(2, 3, 64, 80)
    out = model(x)
    assert out["out"].shape == (2, 4, 8, 10)
    assert [a.shape for a in out["aux"]] == [(2, 4, 8, 10)] * 2
    labels = torch.randint(0, 4, (2, 64, 80))
    SegmentationLoss(aux_weights=model.aux_weights)(out, labels).backward()
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 4, 64, 80)
        assert model.forward_coarse(x).shape == (2, 4, 8, 10)


def test_short_training_beats_chance(shapes_root, tmp_path):
    options = "{head_channels: 32, aux_head_channels: 32}"  # Xception39 from scratch
    scores = short_training_scores(shapes_root, tmp_path / "run", "bisenet", options, iters=30)
    assert scores["mean_accuracy"] > 2 / 6, scores


def test_fresh_xception39_bisenet_gives_order_one_logits_in_eval_mode():
    """Eval-mode BN of a fresh model is the identity (running mean 0, var 1), so the logit scale
    of a normalised N(0, 1) image is what the init makes of it. An init that preserves the
    second moment (Kaiming on the new layers, as TorchSeg) gives std O(1) (the other seglab
    models give 0.1-1.5). 100 is far above that and far below a compounding init: a per-block
    std growth of only 1.34 over Xception39's 16 residual blocks already exceeds it (1.34^16 >
    100); Kaiming on every depthwise and pointwise conv gave std ~1e7. Batch 1 must equal batch
    2's first image (eval mode has no cross-sample coupling; large logits broke this by 0.2)."""
    torch.manual_seed(0)
    model = create_model("bisenet", 19).eval()
    image = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        logits = model(image)
        single = model(image[:1])
    assert torch.isfinite(logits).all()
    assert 1e-3 < logits.std().item() < 100
    torch.testing.assert_close(single, logits[:1], rtol=1e-4, atol=1e-4)
