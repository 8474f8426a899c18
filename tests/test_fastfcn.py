"""FastFCN: parameter counts of the README's configurations from the layer description, JPU
geometry, the Encoding layer and the SE-loss against hand computations, short training."""

from __future__ import annotations

import math

import pytest
import torch
from resnet_count import bn as _bn
from resnet_count import conv as _conv
from resnet_count import resnet_params
from short_training import short_training_scores

from seglab.losses import SegmentationLoss
from seglab.models import MODELS, count_parameters, create_model
from seglab.models.fastfcn import JPU, Encoding


def deep_stem_resnet(layers: tuple[int, ...]) -> int:
    return resnet_params(layers, deep_stem=True)


def jpu_params(width: int = 512) -> int:
    projections = sum(_conv(c, width, 3) + _bn(width) for c in (512, 1024, 2048))
    # separable: depthwise 3x3 (3w -> 3w, groups 3w) + BN + pointwise 1x1 to w, then BN (+ReLU)
    separable = 3 * width * 9 + _bn(3 * width) + _conv(3 * width, width, 1) + _bn(width)
    return projections + 4 * separable


def encnet_head_params(k: int, cin: int = 2048, c: int = 512, codewords: int = 32) -> int:
    reduce = _conv(cin, c, 1) + _bn(c)  # 1x1 after JPU
    encoding = _conv(c, c, 1) + _bn(c) + codewords * c + codewords + _bn(codewords)
    fc = c * c + c  # channel scaling
    se = c * k + k
    return reduce + encoding + fc + se + _conv(c, k, 1, bias=True)


def psp_head_params(k: int, cin: int = 2048) -> int:
    ppm = 4 * (_conv(cin, cin // 4, 1) + _bn(cin // 4))
    return ppm + _conv(2 * cin, cin // 4, 3) + _bn(cin // 4) + _conv(cin // 4, k, 1, bias=True)


def aspp_head_params(k: int, cin: int = 2048) -> int:
    inter = cin // 8
    branches = _conv(cin, inter, 1) + 3 * _conv(cin, inter, 3) + _conv(cin, inter, 1)
    aspp = branches + 5 * _bn(inter) + _conv(5 * inter, inter, 1) + _bn(inter)
    return aspp + _conv(inter, inter, 3) + _bn(inter) + _conv(inter, k, 1, bias=True)


def aux_params(k: int) -> int:
    return _conv(1024, 256, 3) + _bn(256) + _conv(256, k, 1, bias=True)


R50, R101 = (3, 4, 6, 3), (3, 4, 23, 3)
PAPER = {  # PASCAL-Context: 59 classes (background ignored, as PyTorch-Encoding trains)
    "fastfcn": deep_stem_resnet(R50) + jpu_params() + encnet_head_params(59) + aux_params(59),
    "fastfcn_r101": deep_stem_resnet(R101) + jpu_params() + encnet_head_params(59) + aux_params(59),
    "fastfcn_psp": deep_stem_resnet(R50) + jpu_params() + psp_head_params(59) + aux_params(59),
    "fastfcn_aspp": deep_stem_resnet(R50) + jpu_params() + aspp_head_params(59) + aux_params(59),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_parameter_counts_match_the_layer_description(name):
    assert jpu_params() == 19_735_552 and deep_stem_resnet(R101) == 42_623_936  # as PSPNet's
    assert MODELS[name].paper_params == PAPER[name]
    with torch.device("meta"):
        model = create_model(name, **MODELS[name].paper_options)
    assert count_parameters(model) == PAPER[name]


def test_jpu_brings_the_output_stride_32_backbone_to_stride_8_with_2048_channels():
    with torch.device("meta"):
        model = create_model("fastfcn", num_classes=59)
    assert model.encoder.strides == [8, 16, 32] and model.encoder.channels == [512, 1024, 2048]
    assert [b.depthwise.conv.dilation for b in model.jpu.dilated] == [(d, d) for d in (1, 2, 4, 8)]
    jpu = JPU((8, 12, 16), width=4).eval()
    with torch.no_grad():
        out = jpu(torch.randn(1, 8, 13, 17), torch.randn(1, 12, 7, 9), torch.randn(1, 16, 4, 5))
    assert out.shape == (1, 16, 13, 17)


def test_encoding_layer_equals_its_formula_computed_feature_by_feature():
    torch.manual_seed(0)
    layer = Encoding(3, 2).requires_grad_(False)
    x = torch.randn(2, 3, 2, 3)
    expected = torch.zeros(2, 2, 3, dtype=torch.float64)
    for b in range(2):
        for i in range(6):
            xi = x[b, :, i // 3, i % 3].double()
            scores = [
                layer.scale[k].double() * ((xi - layer.codewords[k].double()) ** 2).sum()
                for k in range(2)
            ]
            total = sum(math.exp(s) for s in scores)
            for k in range(2):
                residual = xi - layer.codewords[k].double()
                expected[b, k] += math.exp(scores[k]) / total * residual
    assert torch.allclose(layer(x).double(), expected, atol=1e-5)


def test_se_loss_is_bce_against_the_classes_each_image_contains():
    target = torch.tensor([[[0, 2], [2, 255]], [[1, 1], [1, 1]]])  # image 0: {0, 2}, image 1: {1}
    se = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    present = [[1, 0, 1], [0, 1, 0]]

    def bce(z: float, y: int) -> float:
        p = 1 / (1 + math.exp(-z))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = sum(bce(se[b, k].item(), present[b][k]) for b in range(2) for k in range(3)) / 6
    loss = SegmentationLoss()
    assert abs(loss.se_loss(se, target).item() - expected) < 1e-6
    out = torch.zeros(2, 3, 2, 2)  # uniform logits: CE = log 3 on the 7 labelled pixels
    total = SegmentationLoss(se_weight=0.2)({"out": out, "aux": [], "se": se}, target)
    assert abs(total.item() - (math.log(3) + 0.2 * expected)) < 1e-6
    with pytest.raises(ValueError, match="se_weight"):
        SegmentationLoss()({"out": out, "aux": [], "se": se}, target)


@pytest.mark.parametrize("head", ["encnet", "psp", "aspp"])
def test_training_outputs_and_loss_weights_per_head(head):
    torch.manual_seed(0)
    model = create_model("fastfcn", 4, **{**MODELS["fastfcn"].small_options, "head": head})
    assert model.aux_weights == ((0.2,) if head == "encnet" else (0.4,))
    assert model.se_weight == (0.2 if head == "encnet" else 0.0)
    out = model.train()(torch.randn(2, 3, 40, 56))
    assert out["out"].shape == out["aux"][0].shape == (2, 4, 40, 56)
    assert ("se" in out) == (head == "encnet")
    loss = SegmentationLoss(aux_weights=model.aux_weights, se_weight=model.se_weight)
    loss(out, torch.randint(0, 4, (2, 40, 56))).backward()
    if head == "encnet":
        assert model.head.se_classifier.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 40, 56)).shape == (1, 4, 40, 56)


def test_baseline_without_jpu_is_the_same_head_on_a_dilated_output_stride_8_backbone():
    with torch.device("meta"):
        model = create_model("fastfcn", 59, jpu=False)
    assert model.jpu is None and model.encoder.strides == [8, 8, 8]
    assert model.head.reduce.conv.kernel_size == (3, 3)  # EncNet's 3x3 without JPU


def test_short_training_beats_chance(shapes_root, tmp_path):
    options = "{encoder: test_resnet, jpu_width: 16, head_channels: 16, codewords: 4}"
    scores = short_training_scores(shapes_root, tmp_path / "run", "fastfcn", options, iters=30)
    assert scores["mean_accuracy"] > 2 / 6, scores
