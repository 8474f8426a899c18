"""ACNet (Hu, Yang, Fei, Wang, "ACNet: Attention Based Network to Exploit Complementary Features
for RGBD Semantic Segmentation", ICIP 2019), as in the official code (anheidelonghu/ACNet,
ACNet_models_V1.py)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from seglab.models.base import SegmentationModel
from seglab.models.registry import register_model

TRUNK_KEYS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")

Logits = torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]


def _make_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """A ResNet stage of bottlenecks (planes -> 4 * planes), projection on the first block."""
    downsample = None
    if stride != 1 or inplanes != planes * Bottleneck.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride, bias=False),
            nn.BatchNorm2d(planes * Bottleneck.expansion),
        )
    layers = [Bottleneck(inplanes, planes, stride, downsample)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNetBranch(nn.Module):
    """One ResNet-50 trunk (no fc): conv1/bn1 stem at 1/2 and layer1..4 at 1/4 .. 1/32.

    Keys match torchvision's resnet50 (conv1, bn1, layer1.0.conv1, ...), so ImageNet weights
    load by name. With stem=False (the merged branch) only layer1..4 exist."""

    def __init__(
        self, in_channels: int, width: int, layers: Sequence[int], stem: bool = True
    ) -> None:
        super().__init__()
        if stem:
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
        inplanes = width
        for index, (blocks, stride) in enumerate(zip(layers, (1, 2, 2, 2), strict=True)):
            planes = width * 2**index
            self.add_module(f"layer{index + 1}", _make_layer(inplanes, planes, blocks, stride))
            inplanes = planes * Bottleneck.expansion
        self.channels = [width] + [width * 2**i * Bottleneck.expansion for i in range(4)]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"layer{index}")(x)


class ChannelAttention(nn.Module):
    """The attention complementary module (ACM): x * sigmoid(conv1x1(GAP(x))), with a bias and
    no BN (the official `channel_attention`). (B, C, h, w) -> (B, C, h, w)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))


class TransBasicBlock(nn.Module):
    """RedNet's transposed residual block: 3x3 conv + BN + ReLU, then a 3x3 conv (a stride-2
    3x3 transposed conv when upsampling) + BN, added to the shortcut (a 2x2 stride-2 transposed
    conv + BN when upsampling, a 1x1 conv + BN when the width changes), ReLU."""

    def __init__(self, inplanes: int, planes: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, inplanes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inplanes)
        if upsample:
            self.conv2 = nn.ConvTranspose2d(
                inplanes, planes, 3, 2, padding=1, output_padding=1, bias=False
            )
            shortcut = nn.ConvTranspose2d(inplanes, planes, 2, 2, bias=False)
        else:
            self.conv2 = nn.Conv2d(inplanes, planes, 3, padding=1, bias=False)
            shortcut = nn.Conv2d(inplanes, planes, 1, bias=False) if inplanes != planes else None
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = (
            None if shortcut is None else nn.Sequential(shortcut, nn.BatchNorm2d(planes))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


def _transpose_stage(inplanes: int, planes: int, blocks: int, upsample: bool) -> nn.Sequential:
    """blocks - 1 blocks at inplanes, then one to planes (upsampling x2 if asked)."""
    layers = [TransBasicBlock(inplanes, inplanes) for _ in range(1, blocks)]
    return nn.Sequential(*layers, TransBasicBlock(inplanes, planes, upsample))


def _project(in_channels: int, out_channels: int) -> nn.Sequential:
    """The `agant` skip projection: 1x1 conv (no bias) + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


@register_model(
    "acnet",
    "ACNet: RGB, depth and merged ResNet-50 branches with attention complementary modules, "
    "RedNet decoder, 5-scale deep supervision (Hu et al. 2019; RGB-D)",
    {"num_classes": 40},
    # Derived layer by layer in tests/test_acnet.py (NYUv2, 40 classes; the paper gives none):
    # trunks 23,508,032 + 23,501,760 (1-channel conv1) + 23,498,496 (no stem), ACMs
    # 2 x 5,578,560, projections 1,398,784, transposed stages 33,533,056, heads 30,920.
    116_628_168,
    {"width": 8, "layers": (1, 1, 1, 1), "decoder_blocks": (1, 1, 1, 1, 1)},
)
class ACNet(SegmentationModel):
    """ACNet (Hu et al., ICIP 2019): (B, C + 1, H, W) -> (B, num_classes, H, W).

    Input: the image channels followed by ONE depth channel (normalised metres, see
    seglab/data/depth.py); in_channels counts both (4 for RGB-D). Three ResNet-50 branches:
    RGB (conv1 C -> 64), depth (conv1 1 -> 64) and merged (layer1..4 only). After the stems and
    after each stage the RGB and depth maps are weighted by their ACM and added:
    m0 = ACM(rgb0) + ACM(d0) (64 ch, 1/2), m_k = layer_k_m(m_{k-1}) + ACM(rgb_k) + ACM(d_k)
    (256/512/1024/2048 ch), the merged branch starting from maxpool(m0).
    Decoder (RedNet): `agant` projections of m4..m0 to 512/256/128/64/64, four transposed
    stages (6, 4, 3, 3 blocks, each x2) with the projections added, a final stage (3 blocks)
    and a 2x2 stride-2 transposed conv to classes.
    Training mode: {"out": 1/1, "aux": [1/2, 1/4, 1/8, 1/16]}, the 1x1 heads after each
    transposed stage; `aux_weights` (1, 1, 1, 1): the official loss sums the five scales'
    CE with equal weights (it resizes the labels down, nearest, as SegmentationLoss does).

    Args:
        width: stem width (64); every branch and the decoder scale with it.
        layers: bottlenecks per ResNet stage ((3, 4, 6, 3) = ResNet-50).
        decoder_blocks: blocks of the four transposed stages and the final stage.
        pretrained: True downloads torchvision's ImageNet resnet50, a path reads a torchvision
            resnet50 state dict; loaded as the official code does (conv1 to the RGB branch,
            conv1 averaged over its input channels to the depth branch, layer1..4 to all three).

    Where seglab differs: the input is padded (zeros) to a multiple of 32 and the output
    cropped, so any H and W work (the official network needs multiples of 32); the class
    weights and the void label (0 in NYUv2, 255 here) are the dataset's business.
    """

    inputs = ("image", "depth")

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 4,
        width: int = 64,
        layers: Sequence[int] = (3, 4, 6, 3),
        decoder_blocks: Sequence[int] = (6, 4, 3, 3, 3),
        pretrained: bool | str | os.PathLike = False,
    ) -> None:
        super().__init__()
        if in_channels < 2:
            raise ValueError(f"ACNet takes image channels + 1 depth channel, got {in_channels}")
        self.rgb = ResNetBranch(in_channels - 1, width, layers)
        self.depth = ResNetBranch(1, width, layers)
        self.merge = ResNetBranch(width, width, layers, stem=False)
        channels = self.rgb.channels  # [64, 256, 512, 1024, 2048] at width 64
        self.rgb_attention = nn.ModuleList(ChannelAttention(c) for c in channels)
        self.depth_attention = nn.ModuleList(ChannelAttention(c) for c in channels)
        skips = [width, width, 2 * width, 4 * width, 8 * width]  # agant0 .. agant4
        self.agant = nn.ModuleList(_project(c, s) for c, s in zip(channels, skips, strict=True))
        stage_out = [4 * width, 2 * width, width, width]  # deconv1..4: to 1/16, 1/8, 1/4, 1/2
        inplanes, deconv = 8 * width, []
        for planes, blocks in zip(stage_out, decoder_blocks[:4], strict=True):
            deconv.append(_transpose_stage(inplanes, planes, blocks, upsample=True))
            inplanes = planes
        self.deconv = nn.ModuleList(deconv)
        self.final_conv = _transpose_stage(width, width, decoder_blocks[4], upsample=False)
        self.final_deconv = nn.ConvTranspose2d(width, num_classes, 2, 2)
        # out5 .. out2 of the official code: after deconv1 (1/16) .. deconv4 (1/2).
        self.aux_heads = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in stage_out)
        self.aux_weights = (1.0, 1.0, 1.0, 1.0)
        self._init_weights()
        if pretrained:
            self.load_imagenet_resnet50(pretrained)

    def _init_weights(self) -> None:
        # The official initialisation: N(0, sqrt(2 / (k * k * out))) convs, BN 1 and 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def load_imagenet_resnet50(self, pretrained: bool | str | os.PathLike) -> None:
        """ImageNet resnet50 weights into the three branches, as `_load_resnet_pretrained`."""
        if pretrained is True:
            from torchvision.models import ResNet50_Weights

            from seglab.encoders.download import torchvision_state_dict

            state = torchvision_state_dict(ResNet50_Weights.IMAGENET1K_V1)
        else:
            from seglab.encoders import load_state_dict_file

            state = load_state_dict_file(pretrained)
        trunk = {k: v for k, v in state.items() if k.split(".")[0] in TRUNK_KEYS}
        conv1 = trunk["conv1.weight"]  # (64, 3, 7, 7)
        channels = self.rgb.conv1.in_channels
        if channels != 3:  # spread the mean over the channels: same response to a grey input
            conv1 = conv1.mean(1, keepdim=True).repeat(1, channels, 1, 1) * 3 / channels
        self.rgb.load_state_dict({**trunk, "conv1.weight": conv1})
        depth_conv1 = trunk["conv1.weight"].mean(1, keepdim=True)  # the official averaging
        self.depth.load_state_dict({**trunk, "conv1.weight": depth_conv1})
        self.merge.load_state_dict({k: v for k, v in trunk.items() if k.startswith("layer")})

    def encode(self, rgb: torch.Tensor, depth: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W), (B, 1, H, W) -> merged maps m0..m4 at strides 2, 4, 8, 16, 32."""
        rgb, depth = self.rgb.stem(rgb), self.depth.stem(depth)
        merged = [self.rgb_attention[0](rgb) + self.depth_attention[0](depth)]
        m = F.max_pool2d(merged[0], 3, 2, 1)
        rgb, depth = F.max_pool2d(rgb, 3, 2, 1), F.max_pool2d(depth, 3, 2, 1)
        for k in range(1, 5):
            rgb, depth = self.rgb.stage(k, rgb), self.depth.stage(k, depth)
            m = self.merge.stage(k, m) + self.rgb_attention[k](rgb) + self.depth_attention[k](depth)
            merged.append(m)
        return merged

    def forward(self, x: torch.Tensor) -> Logits:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % 32, -w % 32  # five x2 steps must land back on the skip sizes
        x = F.pad(x, (0, pad_w, 0, pad_h))
        merged = self.encode(x[:, :-1], x[:, -1:])
        out, aux = self.agant[4](merged[4]), []
        for k, stage in enumerate(self.deconv):
            out = stage(out)
            if self.training:
                aux.append(self.aux_heads[k](out))
            out = out + self.agant[3 - k](merged[3 - k])
        out = self.final_deconv(self.final_conv(out))[..., :h, :w]
        if not self.training:
            return out
        # Cropped as the output: stride s keeps ceil(H / s) rows. Finest first, as the paper.
        aux = [a[..., : -(-h // s), : -(-w // s)] for a, s in zip(aux, (16, 8, 4, 2), strict=True)]
        return {"out": out, "aux": aux[::-1]}
