"""The dilated front-end and context module of Yu & Koltun, "Multi-Scale Context Aggregation by
Dilated Convolutions", ICLR 2016.

Front-end: VGG16 with pool4 and pool5 removed, conv5 dilated by 2, fc6 as a 7x7 conv with
dilation 4 (4096 channels), fc7 a 1x1 conv (4096), dropout 0.5 after both, and a 1x1 to class
scores: output stride 8. Context module: seven 3x3 convs with dilations 1, 1, 2, 4, 8, 16, 1,
each followed by a ReLU, and a 1x1 output, identity-initialised so that the untrained module
passes the front-end's scores through. Bilinear x8 upsampling to the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from seglab.encoders import VGG16, load_torchvision_vgg16
from seglab.encoders.timm_encoder import vgg16_state_dict
from seglab.encoders.vgg import FCN_POOL
from seglab.models.base import SegmentationModel
from seglab.models.registry import register_model
from seglab.nn import ConvBNAct, resize_to

CONTEXT_DILATIONS = (1, 1, 2, 4, 8, 16, 1)
CONTEXT_NAMES = ("ctx_conv1_1", "ctx_conv1_2", "ctx_conv2_1", "ctx_conv3_1", "ctx_conv4_1")
CONTEXT_NAMES += ("ctx_conv5_1", "ctx_fc1", "ctx_final")  # the released prototxt's names
CONTEXT_WIDTHS = {
    "basic": (1, 1, 1, 1, 1, 1, 1, 1),  # x C, per layer output (the 8th is the 1x1)
    "large": (2, 2, 4, 8, 16, 32, 32, 1),
}


def identity_init_(conv: nn.Conv2d, num_classes: int, noise: float = 0.0) -> None:
    """The paper's identity initialisation, in place.

    k^b(t, a) = C / c_out if t = 0 and floor(a C / c_in) == floor(b C / c_out), else eps,
    with a (b) the input (output) channel, t the kernel tap (0 = centre), C = num_classes and
    eps ~ N(0, (noise * C / c_out)^2). With c_in = c_out = C and noise 0 this is the identity
    (the basic module); a chain of such layers from C back to C channels is the identity too.
    """
    c_out, c_in, kh, kw = conv.weight.shape
    with torch.no_grad():
        conv.weight.normal_(0.0, noise * num_classes / c_out) if noise else conv.weight.zero_()
        a = torch.arange(c_in) * num_classes // c_in
        b = torch.arange(c_out) * num_classes // c_out
        match = (b[:, None] == a[None, :]).to(conv.weight.dtype)
        conv.weight[:, :, kh // 2, kw // 2] = match * num_classes / c_out
        if conv.bias is not None:
            conv.bias.zero_()


class ContextModule(nn.Module):
    """(B, C, h, w) class scores -> (B, C, h, w) refined scores, C = num_classes.

    Args:
        widths: output channels of the eight layers in multiples of C: basic (1,) * 8,
            large (2, 2, 4, 8, 16, 32, 32, 1).
        noise: relative std of the init noise; the paper's basic module has none.
    The 1x1 output layer has no ReLU (it gives logits); the seven 3x3 layers do. Padding equals
    the dilation, so the map size is kept (the released model uses valid convs on an input
    padded by 33 pixels instead).
    """

    def __init__(self, num_classes: int, widths: Sequence[int], noise: float = 0.0) -> None:
        super().__init__()
        self.layer_names = list(CONTEXT_NAMES)
        channels = num_classes
        for name, width, dilation in zip(
            CONTEXT_NAMES, widths, (*CONTEXT_DILATIONS, 1), strict=True
        ):
            out_channels = width * num_classes
            if name == "ctx_final":
                layer = nn.Conv2d(channels, out_channels, 1)
                identity_init_(layer, num_classes, noise)
            else:
                layer = ConvBNAct(channels, out_channels, 3, dilation=dilation, norm=False)
                identity_init_(layer.conv, num_classes, noise)
            self.add_module(name, layer)
            channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.layer_names:
            x = getattr(self, name)(x)
        return x


# Learnable parameters with 21 classes (VOC), by hand: front-end = VGG16 convs 14,714,688 +
# fc6 102,764,544 + fc7 16,781,312 + final 86,037 = 134,346,581 (FCN-32s's table); the large
# context module adds 3x3 convs 21->42->42->84->168->336->672->672 and a 1x1 672->21:
# 7,980 + 15,918 + 31,836 + 127,176 + 508,368 + 2,032,800 + 4,064,928 + 14,133 = 6,803,139.
@register_model(
    "dilated_context",
    "Dilated VGG16 front-end + context module, basic/large (Yu & Koltun 2016)",
    {"num_classes": 21, "context": "large"},
    141_149_720,
    {"width": 8},
)
class DilatedContextNet(SegmentationModel):
    """Front-end (+ context module) of Yu & Koltun (ICLR 2016): (B, C, H, W) -> (B, K, H, W).

    Args:
        context: "none" (the front-end alone), "basic" or "large".
        width: VGG16's first-stage channels (64); fc6/fc7 get 64 x width (4096).
        dropout: after fc6 and fc7.
        batch_norm: BN after every front-end conv (VGG16-BN); not in the paper, it lets the
            front-end train from scratch (the small test variant).
        pretrained: torchvision's ImageNet VGG16 (True) or a local torchvision vgg16 state dict
            file: the 13 convs, and fc6/fc7 reshaped into 7x7 and 1x1 convolutions.

    Where seglab differs: convs are padded ("same"), so any input size works without the
    released model's 186-pixel reflection padding; pools round up like Caffe. The paper trains
    the front-end first and then the context module on the front-end's outputs; here both are
    one module and stages are chosen by what is trained (freeze the front-end to follow it).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        context: str = "large",
        width: int = 64,
        dropout: float = 0.5,
        noise: float = 1e-3,
        batch_norm: bool = False,
        pretrained: bool | str | Path = False,
    ) -> None:
        super().__init__()
        if context not in ("none", *CONTEXT_WIDTHS):
            raise ValueError(f"context must be 'none', 'basic' or 'large', got {context!r}")
        pools = (FCN_POOL, FCN_POOL, FCN_POOL, None, None)  # pool4 and pool5 removed
        self.encoder = VGG16(in_channels, width, batch_norm, pools=pools, conv5_dilation=2)
        fc_channels = 64 * width
        fc5 = self.encoder.channels[-1]
        self.fc6 = ConvBNAct(fc5, fc_channels, 7, dilation=4, norm=batch_norm, bias=True)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = ConvBNAct(fc_channels, fc_channels, 1, norm=batch_norm, bias=True)
        self.drop7 = nn.Dropout(dropout)
        self.final = nn.Conv2d(fc_channels, num_classes, 1)  # "fc-final"
        self.context = (
            ContextModule(num_classes, CONTEXT_WIDTHS[context], noise if context == "large" else 0)
            if context != "none"
            else None
        )
        if pretrained:
            self.load_vgg16(pretrained)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv5 = self.encoder(x)[-1]  # (B, 8 * width, ~H/8, ~W/8)
        scores = self.final(self.drop7(self.fc7(self.drop6(self.fc6(conv5)))))
        if self.context is not None:
            scores = self.context(scores)
        return resize_to(scores, x.shape[-2:])

    def load_vgg16(self, pretrained: bool | str | Path) -> None:
        """VGG16's convs, and its fc6/fc7 matrices reshaped into convolution kernels."""
        fc = load_torchvision_vgg16(self.encoder, vgg16_state_dict(pretrained))
        with torch.no_grad():
            self.fc6.conv.weight.copy_(fc["classifier.0.weight"].view(self.fc6.conv.weight.shape))
            self.fc6.conv.bias.copy_(fc["classifier.0.bias"])
            self.fc7.conv.weight.copy_(fc["classifier.3.weight"].view(self.fc7.conv.weight.shape))
            self.fc7.conv.bias.copy_(fc["classifier.3.bias"])
