"""DANet: parameter count from the layer description, PAM / CAM against hand-written references,
chunked and fused attention equal to the full map, three outputs, short training."""

from __future__ import annotations

import pytest
import torch
from resnet_count import bn as _bn
from resnet_count import conv as _conv
from resnet_count import resnet_params
from short_training import short_training_scores

from seglab.losses import SegmentationLoss
from seglab.models import MODELS, count_parameters, create_model
from seglab.models.danet import ChannelAttention, PositionAttention, position_attention


def danet_head_params(cin: int, num_classes: int) -> int:
    inter = cin // 4
    reduce = 2 * (_conv(cin, inter, 3) + _bn(inter))  # conv5a, conv5c
    pam = 2 * _conv(inter, inter // 8, 1, bias=True) + _conv(inter, inter, 1, bias=True) + 1
    cam = 1  # gamma only
    after = 2 * (_conv(inter, inter, 3) + _bn(inter))  # conv51, conv52
    classifiers = 3 * _conv(inter, num_classes, 1, bias=True)  # conv6, conv7, conv8
    return reduce + pam + cam + after + classifiers


def test_paper_parameter_count_matches_the_layer_description():
    expected = resnet_params((3, 4, 23, 3)) + danet_head_params(2048, 19)
    assert resnet_params((3, 4, 23, 3)) == 42_500_160  # torchvision's resnet101 less its fc
    assert MODELS["danet"].paper_params == expected == 66_454_779
    with torch.device("meta"):
        model = create_model("danet", num_classes=19)
    assert count_parameters(model) == expected


def test_backbone_is_output_stride_8_with_multi_grid_4_8_16():
    with torch.device("meta"):
        model = create_model("danet", num_classes=19)
    layer4 = model.encoder.model.layer4
    assert [block.conv2.dilation for block in layer4] == [(4, 4), (8, 8), (16, 16)]
    assert model.encoder.strides[-1] == 8
    assert model.head.pam.query.out_channels == 512 // 8


def _reference_attention(q, k, v):
    """softmax(Q K^T) V for (B, N, d) tensors, one query row at a time with explicit exp."""
    out = torch.empty(q.shape[0], q.shape[1], v.shape[2], dtype=torch.float64)
    for b in range(q.shape[0]):
        for i in range(q.shape[1]):
            scores = (k[b].double() * q[b, i].double()).sum(dim=1)  # (N,)
            weights = torch.exp(scores - scores.max())
            out[b, i] = (weights[:, None] * v[b].double()).sum(0) / weights.sum()
    return out


@pytest.mark.parametrize("method", ["full", "chunked", "sdpa"])
def test_every_attention_method_equals_the_hand_written_softmax(method):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 35, 4), torch.randn(2, 35, 4), torch.randn(2, 35, 6)
    expected = _reference_attention(q, k, v)
    out = position_attention(q, k, v, method, chunk=8)  # 35 rows: 4 chunks of 8, one of 3
    assert torch.allclose(out.double(), expected, atol=1e-5)


def test_chunked_pam_equals_full_pam_on_a_small_map():
    torch.manual_seed(0)
    full = PositionAttention(16, attention="full")
    with torch.no_grad():
        full.gamma.fill_(0.7)
    chunked = PositionAttention(16, attention="chunked", chunk=5)
    chunked.load_state_dict(full.state_dict())
    x = torch.randn(2, 16, 5, 7)
    assert torch.allclose(full(x), chunked(x), atol=1e-5)
    # the module itself: gamma * attention(V) + x with Q, K at 16 / 8 = 2 channels
    q = full.query(x).flatten(2).transpose(1, 2)
    k = full.key(x).flatten(2).transpose(1, 2)
    v = full.value(x).flatten(2).transpose(1, 2)
    expected = 0.7 * _reference_attention(q, k, v).transpose(1, 2).reshape(2, 16, 5, 7) + x
    assert torch.allclose(full(x).double(), expected.double(), atol=1e-5)


def test_attention_modules_start_as_the_identity():
    x = torch.randn(1, 16, 4, 6)
    assert torch.equal(PositionAttention(16)(x), x)
    assert torch.equal(ChannelAttention()(x), x)


@pytest.mark.parametrize("form", ["official", "paper"])
def test_cam_matches_its_formula_by_hand(form):
    x = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]], [[1.0, 1.0]]]])  # (1, 3, 1, 2)
    cam = ChannelAttention(form)
    with torch.no_grad():
        cam.gamma.fill_(1.0)
    flat = x.flatten(2)[0]  # rows: (1, 0), (0, 2), (1, 1)
    energy = torch.tensor([[1.0, 0.0, 1.0], [0.0, 4.0, 2.0], [1.0, 2.0, 2.0]])  # X X^T by hand
    if form == "official":
        energy = torch.tensor([[0.0, 1.0, 0.0], [4.0, 0.0, 2.0], [1.0, 0.0, 0.0]])  # max - E
    attention = energy.exp() / energy.exp().sum(1, keepdim=True)
    expected = (attention @ flat + flat).view(1, 3, 1, 2)
    assert torch.allclose(cam(x), expected, atol=1e-6)


def test_training_returns_sum_position_and_channel_with_equal_weights():
    torch.manual_seed(0)
    model = create_model("danet", 4, **MODELS["danet"].small_options).train()
    assert model.aux_weights == (1.0, 1.0)
    out = model(torch.randn(2, 3, 40, 48))
    assert (
        out["out"].shape == (2, 4, 40, 48) and [a.shape for a in out["aux"]] == [(2, 4, 40, 48)] * 2
    )
    loss = SegmentationLoss(aux_weights=model.aux_weights)(out, torch.randint(0, 4, (2, 40, 48)))
    loss.backward()
    head = model.head
    for branch in (head.position_classifier, head.channel_classifier, head.sum_classifier):
        assert branch[1].weight.grad.abs().sum() > 0
    # eval: the fused map alone, the same with every attention method
    x = torch.randn(1, 3, 40, 48)
    model.eval()
    with torch.no_grad():
        head.pam.gamma.fill_(0.5)
        head.cam.gamma.fill_(0.5)
        outs = []
        for method in ("sdpa", "chunked", "full"):
            head.pam.attention = method
            outs.append(model(x))
    assert outs[0].shape == (1, 4, 40, 48)
    assert torch.allclose(outs[0], outs[2], atol=1e-4) and torch.allclose(outs[1], outs[2])


def test_short_training_beats_chance(shapes_root, tmp_path):
    scores = short_training_scores(
        shapes_root, tmp_path / "run", "danet", "{encoder: test_resnet, multi_grid: [2]}", iters=30
    )
    assert scores["mean_accuracy"] > 2 / 6, scores
