"""VGG16 (Simonyan & Zisserman 2015) as the papers of 2015-2016 modify it.

FCN, DeepLab v1, SegNet and the dilated context network all start from VGG16's 13 convs and
change only the padding of the first conv, the pooling and the dilation of conv5. One class
covers them; each model passes its paper's choices. Layer names follow Caffe (conv1_1 ...
conv5_3, pool1 ... pool5) so that a checkpoint reads like the prototxt, and
`load_torchvision_vgg16` maps torchvision's `features.N` weights onto them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from seglab.encoders.base import Encoder
from seglab.nn import ConvBNAct

VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
"""(channels, convs) of the five stages at width 64."""

FCN_POOL = (2, 2, 0)
"""(kernel, stride, padding) of VGG16's max pools, used by FCN (with Caffe's ceil rounding)."""


class VGG16(Encoder):
    """The 13 3x3 convs of VGG16 in five stages, each stage followed by its pool.

    Args:
        in_channels: image channels.
        width: channels of the first stage (64 in the paper); later stages scale with it.
        batch_norm: conv-BN-ReLU (VGG16-BN, SegNet) instead of conv-ReLU.
        first_padding: padding of conv1_1; FCN's reference models use 100.
        pools: per stage (kernel, stride, padding) of its max pool; None removes the pool
            (the dilated front-end removes pool4 and pool5).
        ceil_mode: Caffe rounds pooled sizes up; torchvision rounds down.
        conv5_dilation: dilation of the conv5 convs (2 in DeepLab v1 and the front-end).
    Returns from forward: the output of each stage after its pool, fine to coarse.
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 64,
        batch_norm: bool = False,
        first_padding: int = 1,
        pools: Sequence[tuple[int, int, int] | None] = (FCN_POOL,) * 5,
        ceil_mode: bool = True,
        conv5_dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv_names: list[list[str]] = []
        self.channels, self.strides = [], []
        channels, stride = in_channels, 1
        for stage, ((stage_channels, num_convs), pool) in enumerate(
            zip(VGG16_STAGES, pools, strict=True), start=1
        ):
            out_channels = stage_channels * width // 64
            dilation = conv5_dilation if stage == 5 else 1
            names = []
            for index in range(1, num_convs + 1):
                name = f"conv{stage}_{index}"
                padding = first_padding if name == "conv1_1" else dilation
                # conv biases stay with BN too: torchvision's vgg16_bn has them
                conv = ConvBNAct(
                    channels,
                    out_channels,
                    3,
                    padding=padding,
                    dilation=dilation,
                    norm=batch_norm,
                    bias=True,
                )
                self.add_module(name, conv)
                names.append(name)
                channels = out_channels
            self.conv_names.append(names)
            if pool is None:
                self.add_module(f"pool{stage}", nn.Identity())
            else:
                kernel, pool_stride, padding = pool
                self.add_module(
                    f"pool{stage}", nn.MaxPool2d(kernel, pool_stride, padding, ceil_mode=ceil_mode)
                )
                stride *= pool_stride
            self.channels.append(channels)
            self.strides.append(stride)
        # He initialisation (fan-in, ReLU): the papers start from ImageNet weights, and from
        # scratch PyTorch's default init leaves a 13-conv plain VGG stuck at the prior.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage, names in enumerate(self.conv_names, start=1):
            for name in names:
                x = getattr(self, name)(x)
            x = getattr(self, f"pool{stage}")(x)
            features.append(x)
        return features


def load_torchvision_vgg16(
    encoder: VGG16, state_dict: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Copy torchvision vgg16 / vgg16_bn `features.*` weights into `encoder`.

    Returns the state dict's classifier entries (fc6/fc7 as `classifier.0/3.*`), which FCN and
    the front-end reshape into convolutions. Raises KeyError naming the first missing key.
    """
    batch_norm = any(key.endswith("running_mean") for key in state_dict)
    per_conv = 3 if batch_norm else 2  # conv (+bn) + relu
    index = 0
    for names in encoder.conv_names:
        for name in names:
            block = getattr(encoder, name)
            block.conv.weight.data.copy_(state_dict[f"features.{index}.weight"])
            if block.conv.bias is not None:
                block.conv.bias.data.copy_(state_dict[f"features.{index}.bias"])
            if batch_norm:
                bn = block.bn
                for field in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn, field).data.copy_(state_dict[f"features.{index + 1}.{field}"])
            index += per_conv
        index += 1  # the max pool
    return {key: value for key, value in state_dict.items() if key.startswith("classifier.")}
