"""SegNet: torchvision vgg16_bn weights, unpooling geometry for odd sizes, short training."""

from __future__ import annotations

import torch
import torchvision
from short_training import short_training_scores
from torch import nn

from seglab.models import create_model
from seglab.models.segnet import SegNet


def test_loads_a_torchvision_vgg16_bn_state_dict_into_the_encoder(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.vgg16_bn(weights=None).eval()
    for module in reference.features.modules():  # non-trivial BN statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "vgg16_bn.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("segnet", num_classes=11, pretrained=str(path)).eval()
    assert torch.equal(model.encoder.conv1_1.conv.weight, reference.features[0].weight)
    assert torch.equal(model.encoder.conv5_3.bn.running_var, reference.features[41].running_var)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(model.encoder(x)[-1], reference.features(x), atol=1e-5)


def test_pools_keep_indices_and_unpooling_restores_each_odd_size():
    encoder = SegNet(3, width=8).encoder
    features, indices, sizes = encoder.forward_with_indices(torch.randn(1, 3, 97, 131))
    # pools round down: 97 -> 48 -> 24 -> 12 -> 6 -> 3 and 131 -> 65 -> 32 -> 16 -> 8 -> 4
    assert [tuple(s) for s in sizes] == [(97, 131), (48, 65), (24, 32), (12, 16), (6, 8)]
    assert [tuple(f.shape[-2:]) for f in features] == [(48, 65), (24, 32), (12, 16), (6, 8), (3, 4)]
    assert all(i.shape == f.shape for i, f in zip(indices, features, strict=True))


def test_decoder_upsamples_only_by_unpooling():
    model = SegNet(11, width=8)
    assert not any(isinstance(m, nn.ConvTranspose2d | nn.Upsample) for m in model.modules())
    decoder_convs = [m for m in model.decoder.modules() if isinstance(m, nn.Conv2d)]
    # width 8 = the paper's channels / 8: 512,512,512 | 512,512,256 | 256,256,128 | 128,64 | 64, K
    assert [c.out_channels for c in decoder_convs] == [
        64,
        64,
        64,
        64,
        64,
        32,
        32,
        32,
        16,
        16,
        8,
        8,
        11,
    ]
    assert model.decoder["stage5"].conv_names == ["conv5_3_D", "conv5_2_D", "conv5_1_D"]
    assert model.decoder["stage1"].conv_names == ["conv1_2_D", "conv1_1_D"]  # Caffe names


def test_short_training_beats_chance(shapes_root, tmp_path):
    scores = short_training_scores(shapes_root, tmp_path / "run", "segnet", "{width: 16}")
    # mean pixel accuracy of a constant prediction is 1 / 6
    assert scores["mean_accuracy"] > 2 / 6, scores
