"""PSPNet: parameter count from the layer table, pyramid pooling, aux head, short training."""

from __future__ import annotations

import torch
from resnet_count import bn as _bn
from resnet_count import conv as _conv
from resnet_count import resnet_params
from short_training import short_training_scores

from seglab.losses import SegmentationLoss
from seglab.models import MODELS, count_parameters, create_model
from seglab.models.pspnet import PyramidPooling


def _deep_stem_resnet(layers: tuple[int, ...]) -> int:
    """ResNet-50/101 with PSPNet's stem (3x3 convs 64/s2, 64, 128), no fc, counted by hand."""
    return resnet_params(layers, deep_stem=True)


def _pspnet_params(layers: tuple[int, ...], num_classes: int) -> int:
    ppm = 4 * (_conv(2048, 512, 1) + _bn(512))  # bins 1, 2, 3, 6; no conv bias
    head = _conv(4096, 512, 3) + _bn(512) + 512 * num_classes + num_classes
    aux = _conv(1024, 256, 3) + _bn(256) + 256 * num_classes + num_classes
    return _deep_stem_resnet(layers) + ppm + head + aux


def test_paper_parameter_count_matches_the_layer_table():
    expected = _pspnet_params((3, 4, 23, 3), 21)
    assert expected == 68_073_706
    assert MODELS["pspnet"].paper_params == expected
    with torch.device("meta"):
        assert count_parameters(create_model("pspnet", num_classes=21)) == expected
        ade = create_model("pspnet", num_classes=150, encoder="resnet50s")
    assert count_parameters(ade) == _pspnet_params((3, 4, 6, 3), 150)


def test_encoder_has_the_deep_stem_and_output_stride_8():
    with torch.device("meta"):
        model = create_model("pspnet", num_classes=21)
    stem = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)][:3]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in stem] == [
        (64, (3, 3), (2, 2)),
        (64, (3, 3), (1, 1)),
        (128, (3, 3), (1, 1)),
    ]
    assert model.encoder.strides[-3:] == [8, 8, 8]
    assert model.encoder.channels[-2:] == [1024, 2048]


def test_pyramid_pooling_branches_and_any_map_size():
    ppm = PyramidPooling(2048).eval()
    assert ppm.out_channels == 4096 and [s[1].conv.out_channels for s in ppm.stages] == [512] * 4
    assert [s[0].output_size for s in ppm.stages] == [1, 2, 3, 6]
    small = PyramidPooling(64, bins=(1, 3)).eval()
    x = torch.randn(1, 64, 5, 7)  # smaller than the 6-bin grid would need
    with torch.no_grad():
        out = small(x)
    assert out.shape == (1, 64 + 2 * 32, 5, 7)
    assert torch.equal(out[:, :64], x)  # the input is concatenated unchanged
    # the 1x1 bin is a per-image constant broadcast over the map
    assert torch.allclose(out[:, 64:96], out[:, 64:96, :1, :1].expand(-1, -1, 5, 7))


def test_training_mode_returns_the_aux_output_weighted_0_4():
    torch.manual_seed(0)
    model = create_model("pspnet", 4, encoder="resnet18d", head_channels=32, bins=(1, 2))
    assert model.aux_weights == (0.4,)
    out = model.train()(torch.randn(2, 3, 45, 61))
    assert out["out"].shape == out["aux"][0].shape == (2, 4, 45, 61)
    loss = SegmentationLoss(aux_weights=model.aux_weights)(out, torch.randint(0, 4, (2, 45, 61)))
    loss.backward()
    assert all(p.grad is not None for p in model.aux_head.parameters())
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 45, 61)).shape == (1, 4, 45, 61)


def test_short_training_beats_chance(shapes_root, tmp_path):
    scores = short_training_scores(
        shapes_root, tmp_path / "run", "pspnet", "{encoder: resnet18d, head_channels: 64}", iters=30
    )
    assert scores["mean_accuracy"] > 2 / 6, scores
