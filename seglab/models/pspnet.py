"""PSPNet (Zhao, Shi, Qi, Wang, Jia, "Pyramid Scene Parsing Network", CVPR 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from seglab.encoders import build_encoder
from seglab.models.base import SegmentationModel
from seglab.models.registry import register_model
from seglab.nn import ConvBNAct, resize_to
from seglab.nn.aspp import FCNHead

Logits = torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]


class PyramidPooling(nn.Module):
    """Pyramid pooling module: (B, C, h, w) -> (B, C + len(bins) * C // len(bins), h, w).

    Per bin size n: adaptive average pool to n x n, 1x1 conv to C / len(bins) channels (no
    bias) + BN + ReLU, bilinear upsampling back to (h, w) (align_corners=False); the branches
    are concatenated with the input. Adaptive pooling makes it work on any map size.
    With 2048 input channels and bins (1, 2, 3, 6): four 512-channel branches, 4096 out.
    Note: the 1x1 bin is one value per channel and image, so BN in training needs a batch > 1.
    """

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = tuple(bins)
        branch_channels = in_channels // len(self.bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNAct(in_channels, branch_channels, 1))
            for b in self.bins
        )
        self.out_channels = in_channels + len(self.bins) * branch_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x, *(resize_to(stage(x), size) for stage in self.stages)], dim=1)


@register_model(
    "pspnet",
    "PSPNet: deep-stem dilated ResNet, pyramid pooling 1/2/3/6, aux head (Zhao et al. 2017)",
    {"num_classes": 21},
    # Counted by hand from the layer table in tests/test_pspnet.py: ResNet-101 with deep stem
    # 42,623,936 + pyramid pooling 4,198,400 + 3x3 conv 18,875,392 + classifier 10,773 + aux
    # head 2,365,205.
    68_073_706,
    {"encoder": "resnet18d", "head_channels": 64},
)
class PSPNet(SegmentationModel):
    """PSPNet (Zhao et al., CVPR 2017): (B, C, H, W) -> (B, num_classes, H, W).

    Dilated ResNet with the deep stem (output stride 8), pyramid pooling (bins 1, 2, 3, 6),
    a 3x3 conv to 512 + BN + ReLU, dropout 0.1 and a 1x1 to classes, upsampled bilinearly to
    the input. The auxiliary head on layer3 (3x3 conv 256 + BN + ReLU, dropout 0.1, 1x1) is
    returned in training mode as {"out": ..., "aux": [...]}; `aux_weights` = (0.4,) is the
    paper's loss weight, which the trainer reads.

    Args:
        encoder: a timm name. "resnet101s"/"resnet50s" have the paper's deep stem (three 3x3
            convs 64/s2, 64, 128); timm's "resnet101d"/"resnet50d" have a 32, 32, 64 stem and
            average-pool shortcuts (the "ResNetV1d" of MMSegmentation), offered as a variant.
            The paper uses resnet101s on VOC and Cityscapes, resnet50s on ADE20K.
        bins: pyramid bin sizes; each branch gets in_channels / len(bins) channels.
        head_channels: the 3x3 conv after pyramid pooling (512); the aux head uses half.
        aux: build the auxiliary head (on the second to last encoder map, layer3).

    Where seglab differs: none in the architecture. Upsampling uses align_corners=False
    (the released Caffe model interpolates with align_corners=True).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        encoder: str = "resnet101s",
        output_stride: int = 8,
        bins: Sequence[int] = (1, 2, 3, 6),
        head_channels: int = 512,
        dropout: float = 0.1,
        aux: bool = True,
        pretrained: bool | str | Path = False,
    ) -> None:
        super().__init__()
        self.encoder = build_encoder(encoder, in_channels, output_stride, pretrained=pretrained)
        channels = self.encoder.channels
        self.ppm = PyramidPooling(channels[-1], bins)
        self.bottleneck = ConvBNAct(self.ppm.out_channels, head_channels, 3)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        self.aux_head = (
            FCNHead(channels[-2], num_classes, head_channels // 2, dropout) if aux else None
        )
        self.aux_weights = (0.4,) if aux else ()
        self.export_fixed_size = (
            "adaptive average pooling to 2x2, 3x3 and 6x6 bins: windows depend on the input size"
        )

    def forward(self, x: torch.Tensor) -> Logits:
        size = x.shape[-2:]
        features = self.encoder(x)  # last: (B, 2048, ~H/8, ~W/8) for ResNet-50/101
        out = self.classifier(self.dropout(self.bottleneck(self.ppm(features[-1]))))
        out = resize_to(out, size)
        if not (self.training and self.aux_head is not None):
            return out
        return {"out": out, "aux": [resize_to(self.aux_head(features[-2]), size)]}
