"""DFANet (Li, Xiong, Fan, Sun, "DFANet: Deep Feature Aggregation for Real-Time Semantic
Segmentation", CVPR 2019). No official code exists: the layers follow the most-cited
reimplementation, Tramac/awesome-semantic-segmentation-pytorch (`core/models/dfanet.py`,
`core/models/base_models/xception.py`); shared/MODELS_2019.md section 4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seglab.models.base import SegmentationModel
from seglab.models.registry import register_model
from seglab.nn import ConvBNAct


class SeparableConv(nn.Sequential):
    """Tramac's SeparableConv2d: depthwise 3x3 (stride s) -> BN -> pointwise 1x1, no biases."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False
        )
        self.bn = nn.BatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)


class BlockA(nn.Module):
    """XceptionA block: [ReLU -> sep(in -> out/4) -> BN -> ReLU -> sep(out/4 -> out/4) -> BN ->
    ReLU -> sep(out/4 -> out, stride s) -> BN] + shortcut (1x1 conv + BN where the shape
    changes). (B, in, H, W) -> (B, out, H/s, W/s); no ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        mid = out_channels // 4
        self.residual = nn.Sequential()
        for i, (cin, cout, s) in enumerate(
            [(in_channels, mid, 1), (mid, mid, 1), (mid, out_channels, stride)], start=1
        ):
            self.residual.add_module(f"relu{i}", nn.ReLU())  # not in place: x feeds the skip
            self.residual.add_module(f"sep{i}", SeparableConv(cin, cout, s))
            self.residual.add_module(f"bn{i}", nn.BatchNorm2d(cout))
        self.skip = None
        if in_channels != out_channels or stride != 1:
            self.skip = ConvBNAct(in_channels, out_channels, 1, stride=stride, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + (x if self.skip is None else self.skip(x))


def encoder_stage(in_channels: int, out_channels: int, blocks: int) -> nn.Sequential:
    """Tramac's `Enc`: a stride-2 BlockA, then blocks - 1 stride-1 ones: halves H and W."""
    stage = nn.Sequential(BlockA(in_channels, out_channels, 2))
    for _ in range(blocks - 1):
        stage.append(BlockA(out_channels, out_channels, 1))
    return stage


class FCAttention(nn.Module):
    """GAP -> Linear(C -> 1000) -> 1x1 conv (1000 -> C, no bias) + BN + ReLU -> x * attention.
    The 1000 units are an ImageNet classifier's, so that layer can start from it.
    (B, C, h, w) -> (B, C, h, w); BN on the pooled vector needs a batch > 1 in training."""

    def __init__(self, channels: int, fc_units: int = 1000) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, fc_units)
        self.conv = ConvBNAct(fc_units, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = self.fc(x.mean(dim=(2, 3)))
        return x * self.conv(attention[:, :, None, None])


class XceptionStages(nn.Module):
    """enc2, enc3, enc4 and the FC attention of one backbone: each stage halves the map.

    in_channels: the inputs of enc2, enc3, enc4 (stage 1: 8, 48, 96; an aggregated backbone
    takes concatenations: 240 = 48 + 192, 144 = 96 + 48, 288 = 192 + 96).
    image_channels: the first backbone's stem, conv 3x3/2 (image -> in_channels[0]) + BN + ReLU.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: Sequence[int],
        blocks: Sequence[int],
        fc_units: int,
        image_channels: int | None = None,
    ) -> None:
        super().__init__()
        if image_channels is not None:
            self.stem = ConvBNAct(image_channels, in_channels[0], 3, stride=2)
        self.enc2 = encoder_stage(in_channels[0], channels[0], blocks[0])
        self.enc3 = encoder_stage(in_channels[1], channels[1], blocks[1])
        self.enc4 = encoder_stage(in_channels[2], channels[2], blocks[2])
        self.fca = FCAttention(channels[2], fc_units)


class DFANet(SegmentationModel):
    """DFANet: (B, C, H, W) -> (B, num_classes, H, W) logits for any H, W.

    Three cascaded XceptionA backbones. Backbone 1: conv 3x3/2 (8) + BN + ReLU, enc2 (1/4),
    enc3 (1/8), enc4 (1/16), FC attention. Sub-network aggregation: backbone k+1's enc2 takes
    concat(enc2_k, fca_k upsampled to it); sub-stage aggregation: its enc3 takes
    concat(enc3_k, enc2_{k+1}) and its enc4 concat(enc4_k, enc3_{k+1}); each backbone thus
    runs one octave coarser (fca at 1/16, 1/32, 1/64). Decoder: the three enc2 maps, each 1x1
    ConvBNReLU to 32 at 1/4, summed and fused by a 1x1 ConvBNReLU; plus the three fca maps,
    each 1x1 ConvBNReLU to 32 at 1/4; a 1x1 classifier; bilinear x4 to the input size.

    From the paper (abstract and MODELS_2019.md): the idea of one lightweight backbone
    aggregated by sub-network and sub-stage cascades, the FC attention, Cityscapes test 70.3%
    mIoU at 1.7 GFLOPs and 71.3% at 3.4 GFLOPs on a larger input (the same network).
    From the reimplementation (UNOFFICIAL; the paper's Table 1 was not found): every layer
    width and depth (8 -> 48/96/192, 4/6/4 blocks), the block, the decoder widths (32) and
    the align_corners=True upsampling. Backbone B's widths were not found: `channels` and
    `blocks` are options, but no variant claims to be B. Loss: plain cross-entropy, no
    auxiliary heads (none is documented).

    Where seglab differs: the upsampling goes to the size of the map it meets instead of a
    fixed x2/x4/x8/x16 factor (the same on sizes divisible by 64, and any size works); the
    XceptionA classifier (192 -> 1000), unused for segmentation, is not built.

    Args:
        channels: enc2, enc3, enc4 widths (48, 96, 192); blocks: their depths (4, 6, 4).
        stem_channels: conv1 (8). fc_units: the FC attention's hidden layer (1000).
        decoder_channels: 32. align_corners: of every bilinear resize (True, as the port).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        channels: Sequence[int] = (48, 96, 192),
        blocks: Sequence[int] = (4, 6, 4),
        stem_channels: int = 8,
        fc_units: int = 1000,
        decoder_channels: int = 32,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        c2, c3, c4 = channels
        self.encoder = XceptionStages(
            (stem_channels, c2, c3), channels, blocks, fc_units, image_channels=in_channels
        )
        aggregated = (c2 + c4, c3 + c2, c4 + c3)
        self.backbone2 = XceptionStages(aggregated, channels, blocks, fc_units)
        self.backbone3 = XceptionStages(aggregated, channels, blocks, fc_units)
        d = decoder_channels
        self.enc2_reduce = nn.ModuleList(ConvBNAct(c2, d, 1) for _ in range(3))
        self.fuse = ConvBNAct(d, d, 1)
        self.fca_reduce = nn.ModuleList(ConvBNAct(c4, d, 1) for _ in range(3))
        self.classifier = nn.Conv2d(d, num_classes, 1)
        self.align_corners = align_corners

    def _resize(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == like.shape[-2:]:
            return x
        return F.interpolate(x, like.shape[-2:], mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc2s, fcas = [], []
        inputs = None  # (enc2 input, enc3 of the previous backbone, enc4 of the previous one)
        for backbone in (self.encoder, self.backbone2, self.backbone3):
            if inputs is None:
                enc2 = backbone.enc2(backbone.stem(x))  # (B, 48, H/4, W/4)
                enc3 = backbone.enc3(enc2)
                enc4 = backbone.enc4(enc3)
            else:
                enc2_in, enc3_prev, enc4_prev = inputs
                enc2 = backbone.enc2(enc2_in)
                enc3 = backbone.enc3(torch.cat([enc3_prev, enc2], dim=1))
                enc4 = backbone.enc4(torch.cat([enc4_prev, enc3], dim=1))
            fca = backbone.fca(enc4)
            enc2s.append(enc2)
            fcas.append(fca)
            inputs = (torch.cat([enc2, self._resize(fca, enc2)], dim=1), enc3, enc4)
        finest = enc2s[0]  # 1/4
        reduced = zip(self.enc2_reduce, enc2s, strict=True)
        fused = self.fuse(sum(self._resize(reduce(e), finest) for reduce, e in reduced))
        for reduce, fca in zip(self.fca_reduce, fcas, strict=True):
            fused = fused + self._resize(reduce(fca), finest)
        return self._resize(self.classifier(fused), x)


register_model(
    "dfanet",
    "DFANet A: three aggregated XceptionA backbones (Li et al. 2019; UNOFFICIAL layers)",
    paper_options={"num_classes": 19},
    # Counted by hand from the layer description in tests/test_dfanet.py.
    paper_params=1_831_051,
    small_options={"channels": (8, 16, 32), "blocks": (1, 1, 1), "fc_units": 16},
)(DFANet)
