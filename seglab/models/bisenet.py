"""BiSeNet (Yu, Wang, Peng, Gao, Yu, Sang, "BiSeNet: Bilateral Segmentation Network for
Real-time Semantic Segmentation", ECCV 2018), as in the authors' TorchSeg code
(ycszen/TorchSeg `model/bisenet/cityscapes.bisenet.{X39,R18,R101}[.speed]`; facts in
shared/MODELS_2019.md section 1).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from seglab.encoders import Encoder, build_encoder, load_state_dict_file
from seglab.errors import SeglabError
from seglab.models.base import SegmentationModel
from seglab.models.registry import register_model, register_variant
from seglab.nn import ConvBNAct

Logits = torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]


def upsample(x: torch.Tensor, size: torch.Size | tuple[int, int], align_corners: bool):
    """Bilinear resize of (B, C, h, w) to (B, C, *size); TorchSeg uses align_corners=True."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


class SeparableConvBNAct(nn.Sequential):
    """Depthwise kxk (no BN) -> pointwise 1x1 -> BN (-> ReLU): TorchSeg's SeparableConvBnRelu."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, act: bool = True):
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False
        )
        self.pointwise = ConvBNAct(in_channels, out_channels, 1, act=act)


class XceptionBlock(nn.Module):
    """Xception39 block: three separable convs in -> mid (stride s) -> mid -> 4 mid, plus a
    shortcut (a stride-s separable 3x3 projection on a stage's first block), ReLU after the sum.
    (B, in, H, W) -> (B, 4 mid, H / s, W / s)."""

    expansion = 4

    def __init__(self, in_channels: int, mid_channels: int, stride: int) -> None:
        super().__init__()
        out_channels = mid_channels * self.expansion
        self.residual = nn.Sequential()
        self.residual.add_module("conv1", SeparableConvBNAct(in_channels, mid_channels, stride))
        self.residual.add_module("conv2", SeparableConvBNAct(mid_channels, mid_channels))
        self.residual.add_module("conv3", SeparableConvBNAct(mid_channels, out_channels, act=False))
        self.projection = (
            SeparableConvBNAct(in_channels, out_channels, stride, act=False) if stride > 1 else None
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.projection is None else self.projection(x)
        return self.relu(self.residual(x) + shortcut)


class Xception39(Encoder):
    """TorchSeg's Xception39 context path: conv 3x3/2 (8) -> max pool 3/2 -> three stages of
    4/8/4 blocks (mid 16/32/64, out 64/128/256), each starting with stride 2.

    (B, C_in, H, W) -> [(B, 64, H/8, W/8), (B, 128, H/16, W/16), (B, 256, H/32, W/32)]."""

    def __init__(
        self,
        in_channels: int = 3,
        layers: tuple[int, ...] = (4, 8, 4),
        mid_channels: tuple[int, ...] = (16, 32, 64),
        stem_channels: int = 8,
    ) -> None:
        super().__init__()
        self.stem = ConvBNAct(in_channels, stem_channels, 3, stride=2)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.stages = nn.ModuleList()
        previous = stem_channels
        for blocks, mid in zip(layers, mid_channels, strict=True):
            stage = nn.Sequential(
                *(
                    XceptionBlock(previous if i == 0 else 4 * mid, mid, 2 if i == 0 else 1)
                    for i in range(blocks)
                )
            )
            self.stages.append(stage)
            previous = 4 * mid
        self.channels = [4 * mid for mid in mid_channels]
        self.strides = [8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.pool(self.stem(x))
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps


class SpatialPath(nn.Sequential):
    """(B, C_in, H, W) -> (B, 128, H/8, W/8): 7x7/2 (64), 3x3/2 (64), 3x3/2 (64), 1x1 (128),
    each conv + BN + ReLU without bias. The paper names three stride-2 layers; the code adds
    the 1x1 that sets the 128 channels."""

    def __init__(self, in_channels: int, width: int = 64, out_channels: int = 128) -> None:
        super().__init__()
        self.conv7x7 = ConvBNAct(in_channels, width, 7, stride=2)
        self.conv3x3_1 = ConvBNAct(width, width, 3, stride=2)
        self.conv3x3_2 = ConvBNAct(width, width, 3, stride=2)
        self.conv1x1 = ConvBNAct(width, out_channels, 1)


class AttentionRefinement(nn.Module):
    """ARM: fm = ConvBNReLU 3x3 (in -> out); fm * sigmoid(BN(conv1x1(GAP(fm)))).
    (B, in, h, w) -> (B, out, h, w). The global pool makes BN need a batch > 1 in training."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, out_channels, 3)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), ConvBNAct(out_channels, out_channels, 1, act=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fm = self.conv(x)
        return fm * torch.sigmoid(self.attention(fm))


class FeatureFusion(nn.Module):
    """FFM: fm = ConvBNReLU 1x1 (concat(spatial, context)); w = sigmoid(conv1x1(ReLU(conv1x1(
    GAP(fm))))) with two bias-free convs and no BN (paper and code agree); out = fm + fm * w.
    (B, in, h, w) -> (B, out, h, w)."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 1) -> None:
        super().__init__()
        self.fuse = ConvBNAct(in_channels, out_channels, 1)
        hidden = out_channels // reduction
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            ConvBNAct(out_channels, hidden, 1, norm=False, bias=False),
            ConvBNAct(hidden, out_channels, 1, norm=False, act=False, bias=False),
        )

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        fm = self.fuse(torch.cat([spatial, context], dim=1))
        return fm + fm * torch.sigmoid(self.attention(fm))


class BiSeNetHead(nn.Sequential):
    """ConvBNReLU 3x3 (in -> mid) -> conv 1x1 with bias (mid -> classes); the caller upsamples."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, mid_channels, 3)
        self.classifier = nn.Conv2d(mid_channels, num_classes, 1)


class BiSeNet(SegmentationModel):
    """BiSeNet: (B, C, H, W) -> (B, num_classes, H, W) logits for any H, W.

    Spatial path (128 channels at 1/8) and a context path (Xception39, ResNet-18 or ResNet-101
    with the deep stem) whose last two stages (1/32, 1/16) go through attention refinement
    modules. A global-context branch (GAP -> ConvBNReLU 1x1 to 128) is added to the 1/32 ARM
    output; each sum is upsampled to the next finer stage and refined by a ConvBNReLU 3x3,
    giving 128-channel maps at 1/16 and 1/8. The FFM fuses the 1/8 context map with the spatial
    path (256 channels); the main head predicts from it and two auxiliary heads from the 1/16
    and 1/8 context maps. Training mode returns {"out", "aux": [aux_1/16, aux_1/8]}, weights
    (1, 1) as in the code (the paper's alpha = 1).

    Args:
        context_path: "xception39" (built here; no public weights, the authors train it from
            scratch), or a timm ResNet: "resnet18" (TorchSeg's deep_stem=False) or
            "resnet101s" (deep stem 64, 64, 128: TorchSeg's R101 "v1c").
        head_channels / aux_head_channels: mid channels of the main / auxiliary heads
            (code: X39 64 / 128, R18 64 / 256, R101 256 / 256).
        downsample_labels: TorchSeg's `.speed` protocol: heads stay at 1/8 (the 1/16 aux
            upsampled x2) and the loss is taken against nearest-downsampled labels, so
            `label_stride` is 8 and a training forward returns (B, K, ~H/8, ~W/8) outputs.
            Eval upsamples to (H, W). (The protocol's 768x1536 input is the recipe's.)
        align_corners: TorchSeg upsamples with align_corners=True (default); False is the
            rest of seglab's convention (and MMSeg uses nearest in the context path).
        pretrained: for the ResNets timm's weights (True) or a file; for Xception39 only a
            local state-dict file of this Xception39.

    Where seglab follows the code over the paper: the paper describes the spatial path as three
    stride-2 conv-BN-ReLU layers (the code adds a 1x1 to 128), and its recipe (lr 2.5e-2,
    weight decay 1e-4, scales 0.75-2.0) differs from the code's (lr 1e-2 with 10x on the new
    modules, weight decay 5e-4): configs/bisenet_*_cityscapes.yaml use the code's and name the
    paper's. Heads are upsampled straight to the input size (the code multiplies by 8 / 16,
    the same on sizes divisible by 32). As in the code, the new layers are Kaiming-normal
    initialised and the context path keeps its own init (PyTorch's default for Xception39).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        context_path: str = "xception39",
        head_channels: int = 64,
        aux_head_channels: int = 128,
        downsample_labels: bool = False,
        align_corners: bool = True,
        pretrained: bool | str | Path = False,
    ) -> None:
        super().__init__()
        if context_path == "xception39":
            if pretrained is True:
                raise SeglabError(
                    "bisenet: no public Xception39 weights exist (the authors train it from "
                    "scratch); set model.options.pretrained: false or give a weights file"
                )
            self.encoder = Xception39(in_channels)
            if pretrained:
                self.encoder.load_state_dict(load_state_dict_file(pretrained))
        else:  # timm: layer2, layer3, layer4 at 1/8, 1/16, 1/32
            self.encoder = build_encoder(
                context_path, in_channels, 32, pretrained=pretrained, out_indices=(2, 3, 4)
            )
        *_, c16, c32 = self.encoder.channels
        width = 128  # TorchSeg's conv_channel
        self.spatial_path = SpatialPath(in_channels, out_channels=width)
        self.global_context = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNAct(c32, width, 1))
        self.arm32 = AttentionRefinement(c32, width)
        self.arm16 = AttentionRefinement(c16, width)
        self.refine16 = ConvBNAct(width, width, 3)
        self.refine8 = ConvBNAct(width, width, 3)
        self.ffm = FeatureFusion(2 * width, 2 * width)
        self.head = BiSeNetHead(2 * width, head_channels, num_classes)
        self.aux_head16 = BiSeNetHead(width, aux_head_channels, num_classes)
        self.aux_head8 = BiSeNetHead(width, aux_head_channels, num_classes)
        self.aux_weights = (1.0, 1.0)
        self.label_stride = 8 if downsample_labels else 1
        self.align_corners = align_corners
        for name, module in self.named_modules():
            # TorchSeg's train.py Kaiming-initialises only the `business_layer` (spatial path,
            # ARMs, FFM, heads); the context path keeps its own init: timm's (or ImageNet
            # weights) for the ResNets, PyTorch's default for Xception39. Kaiming (gain 2) on
            # Xception39's depthwise *and* pointwise convs (no ReLU between them) doubles the
            # second moment per separable conv, and with eval-mode BN an identity at init the
            # 16 residual blocks compound it to logits of ~1e6 (tests/test_bisenet.py).
            if name.startswith("encoder"):
                continue
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> FFM output (B, 256, H/8, W/8), context maps at 1/16 and 1/8 (128)."""
        spatial = self.spatial_path(x)
        map8, map16, map32 = self.encoder(x)
        ac = self.align_corners
        last = upsample(self.global_context(map32), map32.shape[-2:], ac)
        context16 = self.refine16(upsample(self.arm32(map32) + last, map16.shape[-2:], ac))
        context8 = self.refine8(upsample(self.arm16(map16) + context16, map8.shape[-2:], ac))
        context8 = upsample(context8, spatial.shape[-2:], ac)  # equal for ceil-rounding stems
        return self.ffm(spatial, context8), context16, context8

    def forward_coarse(self, x: torch.Tensor) -> torch.Tensor:
        """Main logits at `label_stride`: (B, K, ~H/8, ~W/8) with downsample_labels."""
        if self.label_stride == 1:
            return super().forward_coarse(x)
        return self.head(self.features(x)[0])

    def forward(self, x: torch.Tensor) -> Logits:
        fused, context16, context8 = self.features(x)
        out = self.head(fused)
        size = out.shape[-2:] if self.training and self.label_stride > 1 else x.shape[-2:]
        out = upsample(out, size, self.align_corners)
        if not self.training:
            return out
        aux = [head(fm) for head, fm in ((self.aux_head16, context16), (self.aux_head8, context8))]
        return {"out": out, "aux": [upsample(a, size, self.align_corners) for a in aux]}


_CITYSCAPES = {"num_classes": 19}
_SMALL = {"head_channels": 16, "aux_head_channels": 16}

# Parameter counts derived by hand from the layer description in tests/test_bisenet.py.
register_model(
    "bisenet",
    "BiSeNet, Xception39 context path, trained from scratch (Yu et al. 2018)",
    paper_options=_CITYSCAPES,
    paper_params=1_842_289,  # Xception39 299,448 + spatial path, ARMs, FFM, heads
    small_options=_SMALL,
)(BiSeNet)
register_variant(
    "bisenet_r18",
    "bisenet",
    "BiSeNet, ResNet-18 context path (Yu et al. 2018)",
    paper_params=13_494_777,  # ResNet-18 (no fc) 11,176,512 + the rest
    context_path="resnet18",
    aux_head_channels=256,
)
register_variant(
    "bisenet_r101",
    "bisenet",
    "BiSeNet, deep-stem ResNet-101 context path (Yu et al. 2018)",
    paper_params=48_239_417,  # deep-stem ResNet-101 42,623,936 + the rest
    small_options={**_SMALL, "context_path": "resnet18"},
    context_path="resnet101s",
    head_channels=256,
    aux_head_channels=256,
)
