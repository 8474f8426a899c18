"""DeepLab v3 and DeepLab v3+, plus DeepLab v3 in torchvision's layout.

Chen, Papandreou, Schroff, Adam, "Rethinking Atrous Convolution for Semantic Image
Segmentation", arXiv 2017 (v3); Chen, Zhu, Papandreou, Schroff, Adam, "Encoder-Decoder with
Atrous Separable Convolution for Semantic Image Segmentation", ECCV 2018 (v3+).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from seglab.encoders import Encoder, TimmEncoder, build_encoder
from seglab.encoders.timm_encoder import Pretrained
from seglab.models.base import SegmentationModel
from seglab.models.registry import register_model
from seglab.nn import ConvBNAct, SeparableConv2d, resize_to
from seglab.nn.aspp import ASPP, FCNHead

Logits = torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]
_VOC = {"num_classes": 21}
_SMALL = {"encoder": "resnet18", "multi_grid": (1, 2)}


PAPER_MULTI_GRID = (1, 2, 4)
"""DeepLab v3's multi-grid on ResNet block4: its three blocks at 1, 2 and 4 x the unit rate."""


def scaled_rates(rates: Sequence[int], output_stride: int) -> tuple[int, ...]:
    """ASPP rates given at output stride 16, scaled to `output_stride` (doubled at OS 8)."""
    return tuple(rate * 16 // output_stride for rate in rates)


def encoder_multi_grid(encoder: str, multi_grid: Sequence[int] | None) -> tuple[int, ...] | None:
    """The multi-grid build_encoder applies: `multi_grid` on a ResNet, none elsewhere.

    The papers use multi-grid on ResNet block4 only; other backbones (Xception-65,
    MobileNetV2) have no such stage, so they leave the default (1, 2, 4) unused and any other
    value is a mistake.
    """
    grid = tuple(multi_grid or ())
    if not grid or encoder.startswith("resnet"):
        return grid or None
    if grid == PAPER_MULTI_GRID:
        return None
    raise ValueError(
        f"multi_grid {grid} applies to ResNet block4 only; encoder {encoder!r} takes "
        "multi_grid: null"
    )


@register_model(
    "deeplabv3",
    "DeepLab v3, ASPP + image pooling, multi-grid (Chen et al. 2017)",
    _VOC,
    58_040_661,  # torchvision's deeplabv3_resnet101 less its aux head and extra 3x3 conv
    _SMALL,
)
class DeepLabV3(SegmentationModel):
    """DeepLab v3 (Chen et al. 2017): (B, C, H, W) -> (B, num_classes, H, W).

    Dilated backbone (output stride 16 for training, 8 for evaluation in the paper;
    multi-grid (1, 2, 4) on ResNet block4), ASPP (1x1, three 3x3 at the given rates, image
    pooling; BN + ReLU everywhere; concat -> 1x1 256 + BN + ReLU), a 1x1 to classes and
    bilinear upsampling to the input.

    Args:
        encoder: a name for build_encoder (resnet101 in the paper).
        multi_grid: rates multiplying the unit dilation of each block of ResNet block4, the
            first block included: (1, 2, 4) is the paper's at both output strides (block4 at
            dilation 2, 4, 8 at OS 16). None for none. Non-ResNet encoders take none (see
            encoder_multi_grid).
        rates: the ASPP rates at output stride 16, (6, 12, 18) in the paper; they are scaled
            with the output stride (doubled at OS 8: 12, 24, 36).
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
        encoder: str = "resnet101",
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = PAPER_MULTI_GRID,
        rates: Sequence[int] = (6, 12, 18),
        dropout: float = 0.1,
        head_conv: bool = False,
        aux: bool = False,
        aux_feature: int = -2,
        pretrained: Pretrained = False,
    ) -> None:
        super().__init__()
        self.encoder, self.aux_feature = self._build_encoder(
            encoder,
            in_channels=in_channels,
            output_stride=output_stride,
            multi_grid=multi_grid,
            pretrained=pretrained,
            aux=aux,
            aux_feature=aux_feature,
        )
        channels = self.encoder.channels
        self.aspp = ASPP(channels[-1], 256, scaled_rates(rates, output_stride), dropout=dropout)
        self.head = ConvBNAct(256, 256, 3) if head_conv else nn.Identity()
        self.classifier = nn.Conv2d(256, num_classes, 1)
        self.aux_head = FCNHead(channels[self.aux_feature], num_classes) if aux else None
        self.aux_weights = (0.5,) if aux else ()  # torchvision's reference training recipe

    def _build_encoder(
        self,
        encoder: str,
        *,
        in_channels: int,
        output_stride: int,
        multi_grid: Sequence[int] | None,
        pretrained: Pretrained,
        aux: bool,
        aux_feature: int,
    ) -> tuple[Encoder, int]:
        """The encoder and the index of the auxiliary head's map in its outputs."""
        # Only the maps the heads read: the others would stay alive through the head,
        # which costs ~2% CPU time at 512x512 in allocations (benchmarks/RESULTS.md).
        built = build_encoder(
            encoder,
            in_channels,
            output_stride,
            encoder_multi_grid(encoder, multi_grid),
            pretrained=pretrained,
            out_indices=(aux_feature, -1) if aux else (-1,),
        )
        return built, -2

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


@register_model(
    "deeplabv3plus",
    "DeepLab v3+, ASPP + stride-4 decoder, separable option (Chen et al. 2018)",
    _VOC,
    59_344_309,  # ResNet-101 42,500,160 + ASPP 15,535,104 + decoder 1,303,648 + 1x1 5,397
    _SMALL,
)
class DeepLabV3Plus(SegmentationModel):
    """DeepLab v3+ (Chen et al., ECCV 2018): (B, C, H, W) -> (B, num_classes, H, W).

    DeepLab v3's encoder and ASPP, then a decoder that brings in the stride-4 feature (see
    DeepLabV3PlusDecoder), a 1x1 to classes and bilinear upsampling x4 to the input.
    `separable` makes the ASPP and decoder 3x3 convs depthwise-separable (depthwise 3x3 -> BN
    -> ReLU -> pointwise -> BN -> ReLU), as the paper's Xception-65 model does.

    Args:
        encoder: resnet101, xception65 (with separable=True in the paper), mobilenetv2_100.
        multi_grid, rates: as in DeepLabV3 (rates at output stride 16, doubled at 8).

    Where seglab differs: for MobileNetV2 the low-level feature is the stride-4 block output
    (24 channels) where DeepLab's TensorFlow code taps the expanded depthwise output.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        encoder: str = "resnet101",
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = PAPER_MULTI_GRID,
        rates: Sequence[int] = (6, 12, 18),
        separable: bool = False,
        dropout: float = 0.1,
        pretrained: Pretrained = False,
    ) -> None:
        super().__init__()
        self.encoder = build_encoder(
            encoder,
            in_channels,
            output_stride,
            encoder_multi_grid(encoder, multi_grid),
            pretrained=pretrained,
        )
        if 4 not in self.encoder.strides:
            raise ValueError(f"encoder {encoder!r} has no stride-4 feature for the decoder")
        self.low_level_index = self.encoder.strides.index(4)
        aspp_rates = scaled_rates(rates, output_stride)
        self.aspp = ASPP(self.encoder.channels[-1], 256, aspp_rates, separable, dropout)
        self.decoder = DeepLabV3PlusDecoder(
            self.encoder.channels[self.low_level_index], 256, separable
        )
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        decoded = self.decoder(self.aspp(features[-1]), features[self.low_level_index])
        return resize_to(self.classifier(decoded), x.shape[-2:])


@register_model(
    "deeplabv3_torchvision",
    "DeepLab v3 as torchvision builds it (OS 8, rates 12/24/36, 3x3 head, aux FCNHead)",
    {"num_classes": 21, "aux": True},
    60_996_202,  # torchvision's deeplabv3_resnet101 with aux_classifier
    {"encoder": "resnet18"},
)
class DeepLabV3Torchvision(DeepLabV3):
    """DeepLab v3 in torchvision's layout; loads its deeplabv3_* checkpoints (torchvision_convert).

    encoder: resnet50 / resnet101 (output stride 8, ASPP at 12, 24, 36, aux on layer3) or
    mobilenetv3_large_100 (output stride 16, ASPP at 12, 24, 36, aux on the stride-8 feature),
    as in torchvision; no multi-grid, a 3x3 conv before the classifier, dropout 0.5. Not a
    variant of deeplabv3: the MobileNetV3 encoder is torchvision's, not timm's (see
    torchvision_mobilenetv3), and its rates do not follow the output stride.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        encoder: str = "resnet101",
        aux: bool = False,
        pretrained: Pretrained = False,
    ) -> None:
        mobilenet = encoder.startswith("mobilenetv3")
        super().__init__(
            num_classes,
            in_channels,
            encoder,
            output_stride=16 if mobilenet else 8,
            multi_grid=None,
            rates=(12, 24, 36) if mobilenet else (6, 12, 18),  # 12, 24, 36 at either stride
            dropout=0.5,
            head_conv=True,
            aux=aux,
            pretrained=pretrained,
        )

    def _build_encoder(self, encoder: str, **options: Any) -> tuple[Encoder, int]:
        if not encoder.startswith("mobilenetv3"):
            return super()._build_encoder(encoder, **options)
        backbone = torchvision_mobilenetv3(encoder, options["in_channels"], options["pretrained"])
        return backbone, backbone.strides.index(8)  # the tapped map, before the stage's end


def torchvision_mobilenetv3(
    name: str, in_channels: int, pretrained: Pretrained = False
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
