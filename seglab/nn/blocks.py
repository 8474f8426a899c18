"""Convolution blocks and tensor geometry helpers used across papers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNAct(nn.Sequential):
    """conv -> BatchNorm -> ReLU, the unit most segmentation heads are built from.

    Args:
        norm: False gives conv (with bias) -> ReLU, as in the pre-BN papers (VGG, U-Net).
        act: False drops the ReLU.
        bias: conv bias; by default only without a norm (BN's shift makes it redundant).
    Named children (conv, bn, act) keep checkpoint keys readable: `head.0.conv.weight`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        norm: bool = True,
        act: bool = True,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=not norm if bias is None else bias,
        )
        if norm:
            self.bn = nn.BatchNorm2d(out_channels)
        if act:
            self.act = nn.ReLU(inplace=True)


class SeparableConv2d(nn.Sequential):
    """Depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU (DeepLab v3+ form)."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.depthwise = ConvBNAct(
            in_channels, in_channels, 3, dilation=dilation, groups=in_channels
        )
        self.pointwise = ConvBNAct(in_channels, out_channels, 1)


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the spatial centre of (B, C, H, W) to (B, C, height, width) (U-Net skip alignment)."""
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


def mirror_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Reflect-pad (B, C, H, W) by any amount, even more than the image size.

    F.pad's reflect mode needs pad < size; larger pads (a 16 px image under U-Net's 92 px
    margin) are done in rounds, which mirrors the mirrored image as overlap-tile does.
    """
    while top or bottom or left or right:
        h, w = x.shape[-2:]
        step = (min(top, h - 1), min(bottom, h - 1), min(left, w - 1), min(right, w - 1))
        if max(step) == 0:  # a 1-pixel dimension cannot be reflected: repeat it instead
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        x = F.pad(x, (step[2], step[3], step[0], step[1]), mode="reflect")
        top, bottom, left, right = top - step[0], bottom - step[1], left - step[2], right - step[3]
    return x
