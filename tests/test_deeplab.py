"""DeepLab v1/v2/v3/v3+ and the torchvision-layout models: structure, counts, outputs, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet101
from torchvision.models.segmentation import deeplabv3_resnet101, fcn_resnet101
from torchvision.models.segmentation.deeplabv3 import ASPP as TorchvisionASPP

from seglab.data.shapes import SHAPE_CLASSES, render_scene
from seglab.losses import SegmentationLoss
from seglab.models import MODELS, count_parameters, create_model
from seglab.models.deeplab_v2 import MSC
from seglab.nn import SeparableConv2d


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _meta_model(name: str, **options) -> nn.Module:
    with torch.device("meta"):  # shapes only: no memory, no init
        return create_model(name, **options)


# --- parameter counts against numbers computed elsewhere --------------------------------------


def test_deeplabv1_has_the_papers_parameter_count():
    # MODELS.md: 20,505,429 learnable parameters with 21 classes
    assert count_parameters(_meta_model("deeplabv1", num_classes=21)) == 20_505_429


def _torchvision_resnet101_body() -> int:
    with torch.device("meta"):
        backbone = resnet101(weights=None)
    return _count(backbone) - _count(backbone.fc)


def test_deeplabv2_count_is_resnet101_plus_four_class_convs():
    aspp = 4 * (3 * 3 * 2048 * 21 + 21)  # four 3x3 convs (with bias) straight to 21 classes
    expected = _torchvision_resnet101_body() + aspp
    assert count_parameters(_meta_model("deeplabv2", num_classes=21)) == expected


def test_deeplabv3_count_is_torchvision_less_aux_and_extra_head_conv():
    with torch.device("meta"):
        reference = deeplabv3_resnet101(weights=None, weights_backbone=None, num_classes=21)
    # torchvision's DeepLabHead = ASPP, 3x3 conv + BN (not in the paper), ReLU, 1x1
    extra = _count(reference.classifier[1]) + _count(reference.classifier[2])
    assert count_parameters(_meta_model("deeplabv3", num_classes=21)) == _count(reference) - extra


def test_deeplabv3plus_count_is_resnet101_aspp_and_decoder():
    with torch.device("meta"):
        aspp = _count(TorchvisionASPP(2048, [6, 12, 18], 256))
    decoder = (256 * 48 + 2 * 48) + (9 * 304 * 256 + 2 * 256) + (9 * 256 * 256 + 2 * 256)
    classifier = 256 * 21 + 21
    expected = _torchvision_resnet101_body() + aspp + decoder + classifier
    assert count_parameters(_meta_model("deeplabv3plus", num_classes=21)) == expected


@pytest.mark.parametrize(
    ("name", "reference"),
    [("deeplabv3_torchvision", deeplabv3_resnet101), ("fcn_resnet", fcn_resnet101)],
)
def test_torchvision_layouts_count_like_torchvision(name, reference):
    with torch.device("meta"):
        expected = _count(reference(weights=None, weights_backbone=None, aux_loss=True))
    model = _meta_model(name, num_classes=21, encoder="resnet101", aux=True)
    assert count_parameters(model) == expected


# --- structure ---------------------------------------------------------------------------------


def _dilations(modules) -> list[int]:
    return [m.dilation[0] for m in modules]


@pytest.mark.parametrize("name", ["deeplabv3", "deeplabv3plus"])
def test_aspp_rates_double_at_output_stride_8(name):
    os16 = _meta_model(name, num_classes=21, output_stride=16)
    os8 = _meta_model(name, num_classes=21, output_stride=8)
    assert _dilations(branch.conv for branch in os16.aspp.atrous) == [6, 12, 18]
    assert _dilations(branch.conv for branch in os8.aspp.atrous) == [12, 24, 36]


def test_deeplabv3_applies_multi_grid_1_2_4_to_block4():
    model = _meta_model("deeplabv3", num_classes=21, output_stride=16)
    layer4 = model.encoder.model.layer4
    assert _dilations(block.conv2 for block in layer4) == [2, 4, 8]  # unit rate 2 x (1, 2, 4)


def test_deeplabv3_defaults_are_the_papers_multi_grid_and_rates_at_os16():
    # MODELS.md: multi-grid (1, 2, 4) on block4; ASPP 6/12/18 at OS 16, doubled at OS 8.
    for name in ("deeplabv3", "deeplabv3plus"):
        options = MODELS[name].options()
        assert options["multi_grid"] == (1, 2, 4) and options["rates"] == (6, 12, 18)
        assert "atrous_rates" not in options


def test_deeplabv3_rates_are_given_at_output_stride_16():
    model = _meta_model("deeplabv3", num_classes=21, output_stride=8, rates=(3, 5, 7))
    assert _dilations(branch.conv for branch in model.aspp.atrous) == [6, 10, 14]


def test_deeplabv3_multi_grid_none_leaves_block4_as_the_backbone_dilates_it():
    model = _meta_model("deeplabv3", num_classes=21, output_stride=16, multi_grid=None)
    # timm, like torchvision, gives the first block of a dilated stage the previous dilation
    assert _dilations(block.conv2 for block in model.encoder.model.layer4) == [1, 2, 2]


def test_multi_grid_other_than_the_default_on_a_non_resnet_is_refused():
    with pytest.raises(ValueError, match="ResNet block4 only"):
        _meta_model("deeplabv3plus", num_classes=21, encoder="mobilenetv2_100", multi_grid=(1, 2))


def test_deeplabv2_msc_adds_no_checkpoint_keys():
    plain = create_model("deeplabv2", num_classes=3, encoder="resnet18")
    msc = create_model("deeplabv2", num_classes=3, encoder="resnet18", msc=True)
    assert list(plain.state_dict()) == list(msc.state_dict())
    plain.load_state_dict(msc.state_dict())


def test_deeplabv2_aspp_has_rates_6_12_18_24_to_classes():
    model = _meta_model("deeplabv2", num_classes=21)
    assert _dilations(model.aspp.branches) == [6, 12, 18, 24]
    assert all(branch.out_channels == 21 for branch in model.aspp.branches)
    assert max(model.encoder.strides) == 8


@pytest.mark.parametrize(("encoder", "low_level"), [("mobilenetv2_100", 24), ("xception65", 256)])
def test_deeplabv3plus_decoder_takes_the_stride_4_feature_of_any_encoder(encoder, low_level):
    model = _meta_model("deeplabv3plus", num_classes=21, encoder=encoder)
    assert model.encoder.strides[model.low_level_index] == 4
    assert model.decoder.low_level_project.conv.in_channels == low_level
    assert model.aspp.conv1x1.conv.in_channels == model.encoder.channels[-1]


def test_deeplabv3plus_separable_uses_separable_convs_in_aspp_and_decoder():
    model = _meta_model("deeplabv3plus", num_classes=21, encoder="xception65", separable=True)
    assert all(isinstance(branch, SeparableConv2d) for branch in model.aspp.atrous)
    assert isinstance(model.decoder.fuse1, SeparableConv2d)
    assert isinstance(model.decoder.fuse2, SeparableConv2d)


# --- outputs -----------------------------------------------------------------------------------


def test_msc_returns_fused_and_per_scale_logits_in_training():
    torch.manual_seed(0)
    model = create_model("deeplabv2", num_classes=4, encoder="resnet18", msc=True)
    assert isinstance(model.msc, MSC)
    x = torch.randn(2, 3, 57, 75)
    out = model.train()(x)
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == (2, 4, 57, 75)
    assert [a.shape for a in out["aux"]] == [(2, 4, 57, 75)] * 3  # scales 1, 0.75, 0.5
    assert model.aux_weights == (1.0, 1.0, 1.0)
    # max fusion before a (positive-weight) bilinear upsampling: never below any scale
    for scale_logits in out["aux"]:
        assert (out["out"] >= scale_logits - 1e-5).all()
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 4, 57, 75)


@pytest.mark.parametrize("name", ["deeplabv3_torchvision", "fcn_resnet"])
def test_aux_head_output_in_training_mode_only(name):
    model = create_model(name, num_classes=3, encoder="resnet18", aux=True)
    x = torch.randn(2, 3, 48, 40)
    out = model.train()(x)
    assert out["out"].shape == out["aux"][0].shape == (2, 3, 48, 40)
    assert model.aux_weights == (0.5,)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 3, 48, 40)


def test_deeplabv1_downsample_labels_trains_on_stride_8_logits():
    model = create_model("deeplabv1", num_classes=3, width=8, downsample_labels=True)
    assert model.label_stride == 8
    x = torch.randn(2, 3, 65, 81)  # 8k + 1 sizes, as the paper's 321 crops
    out = model.train()(x)
    assert out["out"].shape == (2, 3, 9, 11) and out["aux"] == []
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 3, 65, 81)
    assert create_model("deeplabv1", num_classes=3, width=8).label_stride == 1


def test_deeplabv1_pretrained_decimates_vgg16_fc_layers(tmp_path):
    from torchvision.models import vgg16

    reference = vgg16(weights=None)
    path = tmp_path / "vgg16.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("deeplabv1", num_classes=21, pretrained=str(path))
    fc6 = reference.classifier[0].weight.view(4096, 512, 7, 7)
    assert torch.equal(model.fc6.conv.weight[5], fc6[20, :, ::3, ::3])
    assert torch.equal(model.fc7.conv.weight[3, 7, 0, 0], reference.classifier[3].weight[12, 28])
    assert torch.equal(model.encoder.conv5_3.conv.weight, reference.features[28].weight)


# --- training on the embedded shapes data ------------------------------------------------------

# timm's 82k-parameter test_efficientnet keeps each run to seconds. DeepLab v1 is left out: its
# VGG16 has no BN and, from scratch, needs far more steps than a unit test (the paper starts
# from ImageNet weights).
TRAINABLE = [
    ("deeplabv2", {"encoder": "test_efficientnet", "msc": True}),
    ("deeplabv3", {"encoder": "test_efficientnet", "output_stride": 8}),
    ("deeplabv3plus", {"encoder": "test_efficientnet"}),
    ("deeplabv3_torchvision", {"encoder": "test_efficientnet", "aux": True}),
    ("fcn_resnet", {"encoder": "test_efficientnet", "aux": True}),
]


def _shapes_batch(count: int = 8, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    scenes = [render_scene(np.random.default_rng([7, i]), size) for i in range(count)]
    images = torch.from_numpy(np.stack([image for image, _ in scenes])).permute(0, 3, 1, 2)
    labels = torch.from_numpy(np.stack([label for _, label in scenes])).long()
    return images.float() / 127.5 - 1, labels


def _mean_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    predicted = logits.argmax(1)
    present = [c for c in range(logits.shape[1]) if (labels == c).any()]
    return sum(
        ((predicted == c) & (labels == c)).sum() / (labels == c).sum() for c in present
    ).item() / len(present)


@pytest.mark.parametrize(("name", "options"), TRAINABLE, ids=[n for n, _ in TRAINABLE])
def test_short_training_on_shapes_beats_chance(name, options):
    # 50 Adam steps on 8 shape scenes, with seglab's loss reading the model's aux_weights. Any
    # constant or random prediction has a mean pixel accuracy of 1 / K = 1/6; ask for twice that.
    torch.manual_seed(0)
    images, labels = _shapes_batch()
    model = create_model(name, num_classes=len(SHAPE_CLASSES), **options)
    criterion = SegmentationLoss(aux_weights=getattr(model, "aux_weights", []))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(50):
        loss = criterion(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = _mean_accuracy(model.eval()(images), labels)
    assert accuracy > 2 / len(SHAPE_CLASSES), accuracy


def test_deeplabv1_short_training_beats_chance(shapes_root, tmp_path):
    # Plain VGG16 (no BN) from scratch: He-initialised convs let it learn in 100 steps
    # (about 0.40 mean accuracy measured); with PyTorch's default init it stays at the prior.
    from short_training import short_training_scores

    scores = short_training_scores(
        shapes_root, tmp_path / "run", "deeplabv1", "{width: 16, dropout: 0.0}", 100, 1e-3
    )
    assert scores["mean_accuracy"] > 2 / 6, scores
