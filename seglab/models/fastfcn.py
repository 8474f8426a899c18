"""FastFCN (Wu, Zhang, Huang, Liang, Yu, "FastFCN: Rethinking Dilated Convolution in the
Backbone for Semantic Segmentation", arXiv 1903.11816, 2019): the joint pyramid upsampling
(JPU) neck on an undilated backbone, with the EncNet (Zhang et al., CVPR 2018), PSP or ASPP
head, as in the official code wuhuikai/FastFCN (shared/MODELS_2019.md, section 2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seglab.encoders import build_encoder
from seglab.encoders.timm_encoder import Pretrained
from seglab.models.base import SegmentationModel
from seglab.models.pspnet import PyramidPooling
from seglab.models.registry import register_model, register_variant
from seglab.nn import ConvBNAct, resize_to
from seglab.nn.aspp import ASPP, FCNHead

Logits = torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]
HEADS = ("encnet", "psp", "aspp")
AUX_WEIGHTS = {"encnet": 0.2, "psp": 0.4, "aspp": 0.4}
"""The official scripts' --aux-weight: option.py's 0.2 for EncNet, 0.4 passed for PSP/DeepLab."""


class JPUSeparableConv(nn.Sequential):
    """FastFCN's SeparableConv2d: dilated depthwise 3x3 -> BN -> pointwise 1x1, no activation
    between (unlike DeepLab v3+'s), then BN + ReLU as JPU's dilation branches add."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__()
        self.depthwise = ConvBNAct(
            in_channels, in_channels, 3, dilation=dilation, groups=in_channels, act=False
        )
        self.pointwise = ConvBNAct(in_channels, out_channels, 1)


class JPU(nn.Module):
    """Joint pyramid upsampling: [(B, C3, H/8), (B, C4, H/16), (B, C5, H/32)] -> (B, 4w, H/8).

    Each map is projected by a 3x3 conv to `width` (512) + BN + ReLU; the 1/16 and 1/32 maps
    are upsampled bilinearly to 1/8 (align_corners=True, as the official code) and the three
    concatenated (3w) go through four parallel separable convs at dilations 1, 2, 4, 8, whose
    outputs are concatenated: 4w = 2048 channels at 1/8, what a dilated OS-8 backbone gives.
    """

    def __init__(
        self, in_channels: Sequence[int], width: int = 512, dilations=(1, 2, 4, 8)
    ) -> None:
        super().__init__()
        c3, c4, c5 = in_channels
        self.project5 = ConvBNAct(c5, width, 3)
        self.project4 = ConvBNAct(c4, width, 3)
        self.project3 = ConvBNAct(c3, width, 3)
        self.dilated = nn.ModuleList(JPUSeparableConv(3 * width, width, d) for d in dilations)
        self.out_channels = len(dilations) * width

    def forward(self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor) -> torch.Tensor:
        size = c3.shape[-2:]

        def up(x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, size=size, mode="bilinear", align_corners=True)

        joint = torch.cat([up(self.project5(c5)), up(self.project4(c4)), self.project3(c3)], 1)
        return torch.cat([branch(joint) for branch in self.dilated], dim=1)


class Encoding(nn.Module):
    """EncNet's Encoding layer: (B, D, H, W) -> (B, K, D) residuals aggregated per codeword.

    With N = H*W features x_i and K learned codewords c_k and smoothing factors s_k:
    a_ik = softmax_k(s_k * ||x_i - c_k||^2), e_k = sum_i a_ik (x_i - c_k). Initialised as
    PyTorch-Encoding: codewords ~ U(-1/sqrt(KD), 1/sqrt(KD)), s_k ~ U(-1, 0).
    """

    def __init__(self, channels: int, codewords: int) -> None:
        super().__init__()
        bound = 1.0 / (codewords * channels) ** 0.5
        self.codewords = nn.Parameter(torch.empty(codewords, channels).uniform_(-bound, bound))
        self.scale = nn.Parameter(torch.empty(codewords).uniform_(-1.0, 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x.flatten(2).transpose(1, 2)  # (B, N, D)
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2 without the (B, N, K, D) difference tensor
        distances = (
            features.square().sum(-1, keepdim=True)
            - 2 * features @ self.codewords.t()
            + self.codewords.square().sum(-1)
        )  # (B, N, K)
        weights = torch.softmax(self.scale * distances, dim=-1)
        # sum_i a_ik x_i - (sum_i a_ik) c_k
        return weights.transpose(1, 2) @ features - weights.sum(1)[..., None] * self.codewords


class EncHead(nn.Module):
    """EncNet head: (B, C, h, w) -> (logits (B, K, h, w), SE logits (B, K) or None).

    A conv to `channels` (1x1 after JPU, 3x3 on a dilated backbone) + BN + ReLU; the context
    encoding module: 1x1 conv + BN + ReLU -> Encoding (codewords) -> BN1d -> ReLU -> mean over
    codewords (B, channels); channel scaling x * (1 + sigmoid(fc(e))), ReLU; Dropout2d(0.1) and a
    1x1 classifier. The SE-loss branch is a linear layer from e to the classes present.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        codewords: int = 32,
        se_loss: bool = True,
        after_jpu: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.reduce = ConvBNAct(in_channels, channels, 1 if after_jpu else 3)
        self.encode_project = ConvBNAct(channels, channels, 1)
        self.encoding = Encoding(channels, codewords)
        self.encoding_bn = nn.BatchNorm1d(codewords)
        self.channel_scale = nn.Linear(channels, channels)
        self.se_classifier = nn.Linear(channels, num_classes) if se_loss else None
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.reduce(x)
        encoded = self.encoding(self.encode_project(x))  # (B, codewords, channels)
        encoded = F.relu(self.encoding_bn(encoded)).mean(dim=1)  # (B, channels)
        gamma = torch.sigmoid(self.channel_scale(encoded))[..., None, None]
        out = self.classifier(self.dropout(F.relu(x + x * gamma)))
        se = self.se_classifier(encoded) if self.se_classifier is not None else None
        return out, se


class PSPHead(nn.Sequential):
    """PyTorch-Encoding's PSPHead: pyramid pooling (1, 2, 3, 6) on C -> 2C, 3x3 conv to C/4 +
    BN + ReLU, Dropout2d(0.1), 1x1 to classes."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_channels)
        self.bottleneck = ConvBNAct(self.ppm.out_channels, in_channels // 4, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(in_channels // 4, num_classes, 1)


class ASPPHead(nn.Sequential):
    """PyTorch-Encoding's DeepLabV3Head: ASPP to C/8 at rates 12, 24, 36 (dropout 0.5 after its
    projection), 3x3 conv + BN + ReLU, Dropout2d(0.1), 1x1 to classes."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        inter = in_channels // 8
        self.aspp = ASPP(in_channels, inter, (12, 24, 36), dropout=0.5)
        self.bottleneck = ConvBNAct(inter, inter, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(inter, num_classes, 1)


@register_model(
    "fastfcn",
    "FastFCN: ResNet-50 at OS 32 + JPU neck + EncNet head with SE-loss (Wu et al. 2019)",
    {"num_classes": 59},
    # Counted by hand in tests/test_fastfcn.py: deep-stem ResNet-50 23,631,808 + JPU 19,735,552
    # + EncNet head 1,652,438 + aux FCN head 2,374,971 (PASCAL-Context's 59 classes).
    47_394_769,
    {"encoder": "test_resnet", "jpu_width": 16, "head_channels": 16, "codewords": 4},
)
class FastFCN(SegmentationModel):
    """FastFCN (Wu et al. 2019): (B, C, H, W) -> (B, num_classes, H, W).

    An undilated ResNet (output stride 32, stages c3..c5 at 1/8, 1/16, 1/32), the JPU neck
    (2048 channels at 1/8), one head on its output and an FCN aux head on c4 (layer3, 1/16).
    Train mode returns {"out", "aux": [c4 head], "se": (B, K) SE-loss logits (EncNet)}, upsampled
    to the input; the loss is CE + aux_weights * CE(aux) + se_weight * BCE(se, classes present):
    0.2 and 0.2 for EncNet (option.py's defaults), 0.4 aux for PSP and ASPP (their scripts).

    Args:
        encoder: a timm ResNet; "resnet50s" / "resnet101s" have the deep stem (3x3 convs 64/s2,
            64, 128) of PyTorch-Encoding's ResNets that FastFCN loads.
        head: "encnet" (the paper's main model), "psp" or "aspp" (DeepLab v3's head).
        jpu: False gives the baseline FastFCN compares with: the same head on the backbone
            dilated to output stride 8 (EncNet's reduction then a 3x3 conv, as the code).
        jpu_width: JPU's projection width (512); its output has 4x as many channels.
        head_channels, codewords: EncNet's width (512) and number of codewords (32).
        se_loss: EncNet's SE-loss branch; aux: the FCN head on c4.

    Where seglab differs: the final upsampling uses align_corners=False (JPU keeps True).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        encoder: str = "resnet50s",
        head: str = "encnet",
        jpu: bool = True,
        jpu_width: int = 512,
        head_channels: int = 512,
        codewords: int = 32,
        se_loss: bool = True,
        aux: bool = True,
        pretrained: Pretrained = False,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head {head!r} is not one of {HEADS}")
        self.encoder = build_encoder(
            encoder, in_channels, 32 if jpu else 8, pretrained=pretrained, out_indices=(-3, -2, -1)
        )
        c3, c4, c5 = self.encoder.channels
        self.jpu = JPU((c3, c4, c5), jpu_width) if jpu else None
        features = self.jpu.out_channels if jpu else c5
        self.head_name = head
        if head == "encnet":
            self.head = EncHead(features, num_classes, head_channels, codewords, se_loss, jpu)
        elif head == "psp":
            self.head = PSPHead(features, num_classes)
        else:
            self.head = ASPPHead(features, num_classes)
        self.aux_head = FCNHead(c4, num_classes) if aux else None
        self.aux_weights = (AUX_WEIGHTS[head],) if aux else ()
        self.se_weight = 0.2 if head == "encnet" and se_loss else 0.0
        if head == "psp":
            self.export_fixed_size = (
                "the PSP head's adaptive average pooling to 2x2, 3x3 and 6x6 bins: windows "
                "depend on the input size"
            )

    def forward(self, x: torch.Tensor) -> Logits:
        size = x.shape[-2:]
        c3, c4, c5 = self.encoder(x)
        features = self.jpu(c3, c4, c5) if self.jpu is not None else c5  # (B, 2048, ~H/8)
        out, se = self.head(features) if self.head_name == "encnet" else (self.head(features), None)
        out = resize_to(out, size)
        if not self.training or (self.aux_head is None and se is None):
            return out
        result: dict = {"out": out, "aux": []}
        if self.aux_head is not None:
            result["aux"] = [resize_to(self.aux_head(c4), size)]
        if se is not None:
            result["se"] = se
        return result


# The other configurations of the FastFCN README's PASCAL-Context table (counted by hand in
# tests/test_fastfcn.py: heads 23,104,059 (PSP) and 16,140,603 (ASPP), ResNet-101 42,623,936).
register_variant(
    "fastfcn_r101",
    "fastfcn",
    "FastFCN: ResNet-101 at OS 32 + JPU + EncNet head (Wu et al. 2019)",
    encoder="resnet101s",
    paper_params=66_386_897,
)
register_variant(
    "fastfcn_psp",
    "fastfcn",
    "FastFCN: ResNet-50 at OS 32 + JPU + PSP head (Wu et al. 2019)",
    head="psp",
    paper_params=68_846_390,
)
register_variant(
    "fastfcn_aspp",
    "fastfcn",
    "FastFCN: ResNet-50 at OS 32 + JPU + DeepLab v3 ASPP head (Wu et al. 2019)",
    head="aspp",
    paper_params=61_882_934,
)
