"""RefineNet: RCU and CRP arithmetic, the 4-cascade's widths and resolutions, short training."""

from __future__ import annotations

import torch
from short_training import short_training_scores
from torch import nn

from seglab.models import create_model
from seglab.models.refinenet import ChainedResidualPooling, RefineNetBlock, ResidualConvUnit


def test_rcu_is_relu_conv_relu_conv_plus_identity():
    torch.manual_seed(0)
    rcu = ResidualConvUnit(4)
    x = torch.randn(1, 4, 6, 7)
    expected = x + rcu.conv2(torch.relu(rcu.conv1(torch.relu(x))))
    assert torch.allclose(rcu(x), expected)
    nn.init.zeros_(rcu.conv2.weight)
    assert torch.equal(rcu(x), x)  # the residual branch off: identity, negatives kept


def test_crp_adds_four_chained_pool_conv_stages_to_a_running_sum():
    torch.manual_seed(0)
    crp = ChainedResidualPooling(3)
    x = torch.randn(1, 3, 9, 8)
    relu = torch.relu(x)
    path, expected = relu, relu.clone()
    for conv in crp.convs:  # each stage pools the previous stage's output: a chain
        path = conv(nn.functional.max_pool2d(path, 5, 1, 2))
        expected = expected + path
    assert len(crp.convs) == 4
    assert torch.allclose(crp(x), expected, atol=1e-6)


def test_fusion_adapts_paths_to_the_smallest_width_and_the_finest_resolution():
    block = RefineNetBlock([16, 8])
    assert block.out_channels == 8 and len(block.rcus[0]) == len(block.rcus[1]) == 2
    out = block([torch.randn(1, 16, 3, 4), torch.randn(1, 8, 6, 7)])
    assert out.shape == (1, 8, 6, 7)
    assert RefineNetBlock([16]).fusion is None  # a single path goes straight to the CRP


def test_resnet101_paths_are_256_with_512_at_one_32nd_and_classifier_at_one_4th():
    with torch.device("meta"):
        model = create_model("refinenet", num_classes=21)
    assert [r.out_channels for r in model.reduce] == [256, 256, 256, 512]
    assert model.refine4.out_channels == 512 and model.refine1.out_channels == 256
    small = create_model("refinenet", 3, encoder="resnet18", channels=8).eval()
    seen = {}
    small.refine1.register_forward_hook(lambda m, i, o: seen.update(refine1=o.shape))
    with torch.no_grad():
        out = small(torch.randn(1, 3, 64, 96))
    assert seen["refine1"] == (1, 8, 16, 24) and out.shape == (1, 3, 64, 96)
    assert len(small.final_rcus) == 2  # three RCUs between the last CRP and the classifier


def test_short_training_beats_chance(shapes_root, tmp_path):
    options = "{encoder: resnet18, channels: 16}"
    scores = short_training_scores(shapes_root, tmp_path / "run", "refinenet", options)
    assert scores["mean_accuracy"] > 2 / 6, scores
