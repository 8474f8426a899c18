"""Atrous spatial pyramid pooling (DeepLab v2 and v3 forms) and the FCN head.

ASPP samples one feature map with parallel 3x3 convolutions at several dilation rates, so each
output pixel sees context at several scales without losing resolution. DeepLab v2 sends every
branch straight to class logits and sums them; DeepLab v3 adds BN, a 1x1 and an image-pooling
branch, and concatenates. Imports torch only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from seglab.nn.blocks import ConvBNAct, SeparableConv2d


class ASPPv2(nn.Module):
    """DeepLab v2's ASPP: 3x3 convs at `rates`, each to class logits, summed.

    (B, in_channels, h, w) -> (B, num_classes, h, w). The paper's rates are (6, 12, 18, 24)
    at output stride 8 (ASPP-L). Weights ~ N(0, 0.01) and zero biases, as in the released
    Caffe prototxt.
    """

    def __init__(
        self, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate) for rate in rates
        )
        for branch in self.branches:
            nn.init.normal_(branch.weight, std=0.01)
            nn.init.zeros_(branch.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class ImagePooling(nn.Module):
    """Global average pool -> 1x1 conv + BN + ReLU -> broadcast back to (B, C, h, w).

    Broadcasting a 1x1 map equals bilinear upsampling of it, without the interpolation kernel.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvBNAct(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return self.conv(self.pool(x)).expand(-1, -1, h, w)


class ASPP(nn.Module):
    """DeepLab v3's ASPP: (B, in_channels, h, w) -> (B, out_channels, h, w).

    Branches: a 1x1 conv, one 3x3 conv per rate (dilation = rate), image pooling; each with BN
    and ReLU and `out_channels` (256) channels. Their concatenation (1280 channels with three
    rates) is projected by a 1x1 conv + BN + ReLU, then dropout.

    Args:
        rates: dilations at the output stride used, e.g. (6, 12, 18) at OS 16, (12, 24, 36) at
            OS 8. An empty tuple gives the "simple ASPP" of DeepLab's MobileNet models.
        separable: depthwise-separable 3x3 branches (DeepLab v3+).
        dropout: after the projection (0.1 in DeepLab's TensorFlow code, 0.5 in torchvision).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        rates: Sequence[int] = (6, 12, 18),
        separable: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.rates = tuple(rates)
        self.conv1x1 = ConvBNAct(in_channels, out_channels, 1)
        self.atrous = nn.ModuleList(
            SeparableConv2d(in_channels, out_channels, dilation=rate)
            if separable
            else ConvBNAct(in_channels, out_channels, 3, dilation=rate)
            for rate in rates
        )
        self.pooling = ImagePooling(in_channels, out_channels)
        self.project = ConvBNAct((len(self.rates) + 2) * out_channels, out_channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.conv1x1(x), *(conv(x) for conv in self.atrous), self.pooling(x)]
        return self.dropout(self.project(torch.cat(branches, dim=1)))


class FCNHead(nn.Module):
    """The "FCN head" of dilated-ResNet segmentation models (torchvision, MMSegmentation).

    (B, in_channels, h, w) -> 3x3 conv to `channels` (in_channels // 4 by default) + BN + ReLU
    -> dropout -> 1x1 conv -> (B, num_classes, h, w). Also the auxiliary head of PSPNet and
    torchvision's models on layer3.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        channels = channels or in_channels // 4
        self.conv = ConvBNAct(in_channels, channels, 3)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))
