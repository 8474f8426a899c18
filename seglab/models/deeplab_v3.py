"""DeepLab v3 and DeepLab v3+, plus DeepLab v3 in torchvision's layout.

Chen, Papandreou, Schroff, Adam, "Rethinking Atrous Convolution for Semantic Image
Segmentation", arXiv 2017 (v3); Chen, Zhu, Papandreou, Schroff, Adam, "Encoder-Decoder with
Atrous Separable Convolution for Semantic Image Segmentation", ECCV 2018 (v3+).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from seglab.encoders import Encoder, TimmEncoder, build_encoder
from seglab.models.registry import register_model
from seglab.nn import ConvBNAct, SeparableConv2d, resize_to
from seglab.nn.aspp import ASPP, FCNHead

Logits = torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]


def paper_rates(rates: Sequence[int], output_stride: int) -> tuple[int, ...]:
    """ASPP rates given at output stride 16, scaled to `output_stride` (doubled at OS 8)."""
    return tuple(rate * 16 // output_stride for rate in rates)


def resnet_multi_grid(encoder: str, multi_grid: Sequence[int] | None) -> tuple[int, ...] | None:
    """None means the paper's default: (1, 2, 4) on ResNets, nothing on other backbones."""
    if multi_grid is None:
        return (1, 2, 4) if encoder.startswith("resnet") else None
    return tuple(multi_grid) or None


class DeepLabV3(nn.Module):
    """DeepLab v3 (Chen et al. 2017): (B, C, H, W) -> (B, num_classes, H, W).

    Dilated backbone (output stride 16 for training, 8 for evaluation in the paper;
    multi-grid (1, 2, 4) on ResNet block4), ASPP (1x1, three 3x3 at the given rates, image
    pooling; BN + ReLU everywhere; concat -> 1x1 256 + BN + ReLU), a 1x1 to classes and
    bilinear upsampling to the input.

    Args:
        encoder: a name for build_encoder, or an Encoder built by the caller.
        rates: ASPP rates at this output stride (the builders double the paper's 6/12/18 at
            OS 8).
        head_conv: torchvision's layout adds a 3x3 conv 256 + BN + ReLU before the classifier
            (and uses dropout 0.5); not in the paper.
        aux: an FCNHead on `aux_feature` (an index into the encoder's maps; -2 is layer3 of a
            ResNet), returned in training mode as {"out": ..., "aux": [...]}, as torchvision
            does; not in the paper.
        dropout: after the ASPP projection (0.1 in DeepLab's TensorFlow release).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        encoder: str | Encoder = "resnet101",
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = (1, 2, 4),
        rates: Sequence[int] = (6, 12, 18),
        dropout: float = 0.1,
        head_conv: bool = False,
        aux: bool = False,
        aux_feature: int = -2,
        pretrained: bool | str | Path = False,
    ) -> None:
        super().__init__()
        if isinstance(encoder, Encoder):  # built by the caller; the encoder options are unused
            self.encoder = encoder
        else:
            # Only the maps the heads read: the others would stay alive through the head,
            # which costs ~2% CPU time at 512x512 in allocations (benchmarks/RESULTS.md).
            self.encoder = build_encoder(
                encoder,
                in_channels,
                output_stride,
                multi_grid,
                pretrained=pretrained,
                out_indices=(aux_feature, -1) if aux else (-1,),
            )
            aux_feature = -2
        channels = self.encoder.channels
        self.aspp = ASPP(channels[-1], 256, rates, dropout=dropout)
        self.head = ConvBNAct(256, 256, 3) if head_conv else nn.Identity()
        self.classifier = nn.Conv2d(256, num_classes, 1)
        self.aux_feature = aux_feature
        self.aux_head = FCNHead(channels[aux_feature], num_classes) if aux else None
        self.aux_weights = [0.5] if aux else []  # torchvision's reference training recipe

    def forward(self, x: torch.Tensor) -> Logits:
        size = x.shape[-2:]
        features = self.encoder(x)
        out = resize_to(self.classifier(self.head(self.aspp(features[-1]))), size)
        if not (self.training and self.aux_head is not None):
            return out
        return {"out": out, "aux": [resize_to(self.aux_head(features[self.aux_feature]), size)]}


class DeepLabV3PlusDecoder(nn.Module):
    """v3+ decoder: (B, 256, H/16, W/16) ASPP output + (B, C_low, H/4, W/4) -> (B, 256, H/4, W/4).

    The low-level map is reduced to 48 channels (1x1 + BN + ReLU) so that it does not outweigh
    the 256 encoder channels, concatenated with the upsampled ASPP output, then refined by two
    3x3 convs of 256 (depthwise-separable with `separable`).
    """

    def __init__(self, low_level_channels: int, aspp_channels: int = 256, separable: bool = False):
        super().__init__()
        self.low_level_project = ConvBNAct(low_level_channels, 48, 1)

        def conv3x3(cin: int, cout: int) -> nn.Module:
            return SeparableConv2d(cin, cout) if separable else ConvBNAct(cin, cout, 3)

        self.fuse1 = conv3x3(aspp_channels + 48, 256)
        self.fuse2 = conv3x3(256, 256)

    def forward(self, aspp_out: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        low_level = self.low_level_project(low_level)
        x = torch.cat([resize_to(aspp_out, low_level.shape[-2:]), low_level], dim=1)
        return self.fuse2(self.fuse1(x))


class DeepLabV3Plus(nn.Module):
    """DeepLab v3+ (Chen et al., ECCV 2018): (B, C, H, W) -> (B, num_classes, H, W).

    DeepLab v3's encoder and ASPP, then a decoder that brings in the stride-4 feature (see
    DeepLabV3PlusDecoder), a 1x1 to classes and bilinear upsampling x4 to the input.
    `separable` makes the ASPP and decoder 3x3 convs depthwise-separable (depthwise 3x3 -> BN
    -> ReLU -> pointwise -> BN -> ReLU), as the paper's Xception-65 model does.

    Where seglab differs: for MobileNetV2 the low-level feature is the stride-4 block output
    (24 channels) where DeepLab's TensorFlow code taps the expanded depthwise output.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        encoder: str = "resnet101",
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = (1, 2, 4),
        rates: Sequence[int] = (6, 12, 18),
        separable: bool = False,
        dropout: float = 0.1,
        pretrained: bool | str | Path = False,
    ) -> None:
        super().__init__()
        self.encoder = build_encoder(
            encoder, in_channels, output_stride, multi_grid, pretrained=pretrained
        )
        if 4 not in self.encoder.strides:
            raise ValueError(f"encoder {encoder!r} has no stride-4 feature for the decoder")
        self.low_level_index = self.encoder.strides.index(4)
        self.aspp = ASPP(self.encoder.channels[-1], 256, rates, separable, dropout)
        self.decoder = DeepLabV3PlusDecoder(
            self.encoder.channels[self.low_level_index], 256, separable
        )
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        decoded = self.decoder(self.aspp(features[-1]), features[self.low_level_index])
        return resize_to(self.classifier(decoded), x.shape[-2:])


_VOC = {"num_classes": 21}
_SMALL = {"encoder": "resnet18", "multi_grid": (1, 2)}


@register_model(
    "deeplabv3",
    "DeepLab v3, ASPP + image pooling, multi-grid (Chen et al. 2017)",
    _VOC,
    58_040_661,  # torchvision's deeplabv3_resnet101 less its aux head and extra 3x3 conv
    _SMALL,
)
def deeplabv3(
    num_classes: int,
    in_channels: int = 3,
    encoder: str = "resnet101",
    output_stride: int = 16,
    multi_grid: Sequence[int] | None = None,
    atrous_rates: Sequence[int] = (6, 12, 18),
    dropout: float = 0.1,
    pretrained: bool | str | Path = False,
) -> DeepLabV3:
    """atrous_rates are given at output stride 16 and doubled at 8; multi_grid None: paper."""
    return DeepLabV3(
        num_classes,
        in_channels,
        encoder,
        output_stride,
        resnet_multi_grid(encoder, multi_grid),
        paper_rates(atrous_rates, output_stride),
        dropout,
        pretrained=pretrained,
    )


@register_model(
    "deeplabv3plus",
    "DeepLab v3+, ASPP + stride-4 decoder, separable option (Chen et al. 2018)",
    _VOC,
    59_344_309,  # ResNet-101 42,500,160 + ASPP 15,535,104 + decoder 1,303,648 + 1x1 5,397
    _SMALL,
)
def deeplabv3plus(
    num_classes: int,
    in_channels: int = 3,
    encoder: str = "resnet101",
    output_stride: int = 16,
    multi_grid: Sequence[int] | None = None,
    atrous_rates: Sequence[int] = (6, 12, 18),
    separable: bool = False,
    dropout: float = 0.1,
    pretrained: bool | str | Path = False,
) -> DeepLabV3Plus:
    """encoder: resnet101, xception65 (with separable=True in the paper), mobilenetv2_100."""
    return DeepLabV3Plus(
        num_classes,
        in_channels,
        encoder,
        output_stride,
        resnet_multi_grid(encoder, multi_grid),
        paper_rates(atrous_rates, output_stride),
        separable,
        dropout,
        pretrained,
    )


@register_model(
    "deeplabv3_torchvision",
    "DeepLab v3 as torchvision builds it (OS 8, rates 12/24/36, 3x3 head, aux FCNHead)",
    {"num_classes": 21, "aux": True},
    60_996_202,  # torchvision's deeplabv3_resnet101 with aux_classifier
    {"encoder": "resnet18"},
)
def deeplabv3_torchvision(
    num_classes: int,
    in_channels: int = 3,
    encoder: str = "resnet101",
    aux: bool = False,
    pretrained: bool | str | Path = False,
) -> DeepLabV3:
    """Loads torchvision's deeplabv3_* checkpoints (seglab.models.torchvision_convert).

    encoder: resnet50 / resnet101 (output stride 8, aux on layer3) or mobilenetv3_large_100
    (output stride 16, aux on the stride-8 feature), as in torchvision.
    """
    if encoder.startswith("mobilenetv3"):
        backbone = torchvision_mobilenetv3(encoder, in_channels, pretrained)
        aux_feature = backbone.strides.index(8)  # the tapped map, before the stage's end
        return DeepLabV3(
            num_classes, in_channels, backbone, 16, None, (12, 24, 36), 0.5, True, aux, aux_feature
        )
    return DeepLabV3(
        num_classes,
        in_channels,
        encoder,
        output_stride=8,
        multi_grid=None,
        rates=(12, 24, 36),
        dropout=0.5,
        head_conv=True,
        aux=aux,
        pretrained=pretrained,
    )


def torchvision_mobilenetv3(
    name: str, in_channels: int, pretrained: bool | str | Path = False
) -> TimmEncoder:
    """timm's MobileNetV3 at output stride 16, made identical to torchvision's dilated one.

    torchvision dilates every block of the last stride-2 stage (timm leaves the first at
    dilation 1), uses BN eps 1e-3 (timm 1e-5), and its segmentation models take the auxiliary
    feature after the first block of the stride-8 stage: tapped, it comes before that stage's
    end in the encoder's list.
    """
    encoder = TimmEncoder(
        name, in_channels, 16, pretrained=pretrained, out_indices=(-1,), taps=["blocks.2.0"]
    )
    first = encoder.model.blocks[5][0].conv_dw  # 5x5 depthwise of the dilated stage
    first.dilation, first.padding = (2, 2), (4, 4)
    for module in encoder.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps, module.momentum = 1e-3, 0.01
    return encoder
