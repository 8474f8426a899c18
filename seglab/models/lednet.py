"""LEDNet (Wang, Zhou, Liu, Xiong, Gao, Wu, Latecki, "LEDNet: A Lightweight Encoder-Decoder
Network for Real-time Semantic Segmentation", ICIP 2019), as in the authors' code
(xiaoyufenfei/LEDNet `train/lednet.py`, the ~0.9M version; shared/MODELS_2019.md section 6).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seglab.models.base import SegmentationModel
from seglab.models.registry import register_model

BN_EPS = 1e-3  # the official code's BatchNorm eps throughout

ENCODER_DILATIONS = (1, 2, 5, 9, 2, 5, 9, 17)
"""The eight SS-nbt units at 1/8 (128 channels), dropout 0.3."""


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, C, H, W) with channels [g0 | g1 | ...] -> interleaved (ShuffleNet's shuffle)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class DownsamplerBlock(nn.Module):
    """ENet's downsampler: concat(conv 3x3/2 (in -> out - in, bias), max pool 2x2 (in)) -> BN ->
    ReLU. (B, in, H, W) -> (B, out, ceil(H/2), ceil(W/2)); the pooled map is zero-padded to the
    conv's size on odd sides, as the official code does."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, pooled = self.conv(x), self.pool(x)
        dh, dw = conv.shape[-2] - pooled.shape[-2], conv.shape[-1] - pooled.shape[-1]
        pooled = F.pad(pooled, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
        return F.relu(self.bn(torch.cat([conv, pooled], dim=1)))


class FactorisedBranch(nn.Module):
    """One SS-nbt branch on C/2 channels: k1 -> ReLU -> k2 -> BN -> ReLU -> dilated k1 -> ReLU
    -> dilated k2 -> BN, where (k1, k2) is (3x1, 1x3) for the left branch and (1x3, 3x1) for the
    right one (the code's asymmetric order). All convs have a bias."""

    def __init__(self, channels: int, dilation: int, vertical_first: bool) -> None:
        super().__init__()

        def conv(vertical: bool, d: int) -> nn.Conv2d:
            kernel, pad = ((3, 1), (d, 0)) if vertical else ((1, 3), (0, d))
            dil = (d, 1) if vertical else (1, d)
            return nn.Conv2d(channels, channels, kernel, padding=pad, dilation=dil)

        self.conv1 = conv(vertical_first, 1)
        self.conv2 = conv(not vertical_first, 1)
        self.bn1 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.conv3 = conv(vertical_first, dilation)
        self.conv4 = conv(not vertical_first, dilation)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv2(F.relu(self.conv1(x)))))
        return self.bn2(self.conv4(F.relu(self.conv3(x))))


class SSnbt(nn.Module):
    """Split-shuffle-non-bottleneck unit: (B, C, H, W) -> (B, C, H, W).

    Split the channels in halves, run the left (3x1 first) and right (1x3 first) factorised
    branches, Dropout2d(p) on each, concat, ReLU(input + concat), channel shuffle (2 groups).
    """

    def __init__(self, channels: int, dropout: float, dilation: int) -> None:
        super().__init__()
        half = channels // 2
        self.left = FactorisedBranch(half, dilation, vertical_first=True)
        self.right = FactorisedBranch(half, dilation, vertical_first=False)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = x.chunk(2, dim=1)
        left, right = self.left(left), self.right(right)
        if self.dropout.p > 0:
            left, right = self.dropout(left), self.dropout(right)
        return channel_shuffle(F.relu(x + torch.cat([left, right], dim=1)), 2)


class ConvBNReLU(nn.Sequential):
    """LEDNet's Conv2dBnRelu: conv (with bias) -> BN (eps 1e-3) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.act = nn.ReLU(inplace=True)


class AttentionPyramid(nn.Module):
    """APN decoder: (B, C, h, w) -> (B, K, h, w).

    A 1-channel pyramid of 7x7/2, 5x5/2 and 3x3/2 (+ 3x3) convs, fused coarse to fine (each
    level plus a same-size conv of the finer one, upsampled), multiplies a 1x1 projection to
    classes; a global-pool branch is added. Bilinear align_corners=True as in the code; every
    upsampling goes to the size of the map it meets, so odd sizes work (the code halves h).
    """

    def __init__(self, in_channels: int, num_classes: int, pyramid_channels: int = 1) -> None:
        super().__init__()
        p = pyramid_channels
        self.global_branch = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_channels, num_classes, 1)
        )
        self.mid = ConvBNReLU(in_channels, num_classes, 1)
        self.down1 = ConvBNReLU(in_channels, p, 7, stride=2)
        self.down2 = ConvBNReLU(p, p, 5, stride=2)
        self.down3 = nn.Sequential(ConvBNReLU(p, p, 3, stride=2), ConvBNReLU(p, p, 3))
        self.conv2 = ConvBNReLU(p, p, 5)
        self.conv1 = ConvBNReLU(p, p, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def up(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, like.shape[-2:], mode="bilinear", align_corners=True)

        down1 = self.down1(x)  # 1/2 of the encoder map
        down2 = self.down2(down1)  # 1/4
        down3 = self.down3(down2)  # 1/8
        level2 = self.conv2(down2)
        level1 = self.conv1(down1)
        pyramid = up(up(level2 + up(down3, level2), level1) + level1, x)
        return pyramid * self.mid(x) + up(self.global_branch(x), x)


@register_model(
    "lednet",
    "LEDNet: SS-nbt encoder, attention pyramid decoder (Wang et al. 2019)",
    paper_options={"num_classes": 19},
    # Counted by hand from the layer description in tests/test_lednet.py.
    paper_params=922_821,
    small_options={"widths": (8, 16, 32), "dilations": (1, 2)},
)
class LEDNet(SegmentationModel):
    """LEDNet: (B, C, H, W) -> (B, num_classes, H, W) logits for any H, W.

    Encoder: Down(C -> 32), 3 SS-nbt(32, p 0.03), Down(32 -> 64), 2 SS-nbt(64, p 0.03),
    Down(64 -> 128), 8 SS-nbt(128, p 0.3) with dilations 1, 2, 5, 9, 2, 5, 9, 17: a 1/8 map.
    Decoder: the attention pyramid network, then bilinear upsampling to the input size.

    Args:
        widths: channels after the three downsamplers (32, 64, 128).
        units: SS-nbt units at 1/2 and 1/4 (3, 2); the 1/8 stage has one per dilation.
        dilations: of the 1/8 units.
        dropout: of the 1/2-1/4 units and of the 1/8 units (0.03, 0.3).
        pyramid_channels: 1 as in `lednet.py` (~0.9M parameters); the paper's Fig. 1 implies
            128 (the ~2.5M `lednet_1.py`).
        encoder_only: the code's first training stage: a 1x1 classifier on the encoder,
            trained against labels downsampled to 1/8 (`label_stride` 8).

    Where seglab differs from the official code: it takes any class count (the code fixes
    20 outputs) and returns the input's size (the code resizes to 512x1024 whatever the
    input); the unused encoder classifier exists only with encoder_only.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: Sequence[int] = (32, 64, 128),
        units: Sequence[int] = (3, 2),
        dilations: Sequence[int] = ENCODER_DILATIONS,
        dropout: Sequence[float] = (0.03, 0.3),
        pyramid_channels: int = 1,
        encoder_only: bool = False,
    ) -> None:
        super().__init__()
        c2, c4, c8 = widths
        layers: list[nn.Module] = [DownsamplerBlock(in_channels, c2)]
        layers += [SSnbt(c2, dropout[0], 1) for _ in range(units[0])]
        layers.append(DownsamplerBlock(c2, c4))
        layers += [SSnbt(c4, dropout[0], 1) for _ in range(units[1])]
        layers.append(DownsamplerBlock(c4, c8))
        layers += [SSnbt(c8, dropout[1], d) for d in dilations]
        self.encoder = nn.Sequential(*layers)
        self.encoder_only = encoder_only
        if encoder_only:
            self.encoder_classifier = nn.Conv2d(c8, num_classes, 1)
            self.label_stride = 8
        else:
            self.decoder = AttentionPyramid(c8, num_classes, pyramid_channels)

    def logits_at_one_eighth(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, ~H/8, ~W/8): the encoder classifier's, or the decoder's before upsampling."""
        features = self.encoder(x)
        head = self.encoder_classifier if self.encoder_only else self.decoder
        return head(features)

    def forward_coarse(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at `label_stride`: 1/8 for the encoder_only stage, else the full size."""
        if self.encoder_only:
            return self.logits_at_one_eighth(x)
        return super().forward_coarse(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor | list]:
        coarse = self.logits_at_one_eighth(x)
        if self.training and self.encoder_only:
            return {"out": coarse, "aux": []}
        return F.interpolate(coarse, x.shape[-2:], mode="bilinear", align_corners=True)
