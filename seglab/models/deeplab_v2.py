"""DeepLab v2: ResNet-101 with atrous spatial pyramid pooling, and multi-scale inputs (MSC).

Chen, Papandreou, Kokkinos, Murphy, Yuille, "DeepLab: Semantic Image Segmentation with Deep
Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", PAMI 2017.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from seglab.encoders import build_encoder
from seglab.models.registry import register_model
from seglab.nn import resize_to
from seglab.nn.aspp import ASPPv2


class DeepLabV2(nn.Module):
    """DeepLab v2 (Chen et al., PAMI 2017): (B, C, H, W) -> (B, num_classes, H, W).

    ResNet-101 with res4 dilated by 2 and res5 by 4 (output stride 8), ASPP-L on res5: four 3x3
    convs at dilation 6, 12, 18, 24, each straight to class logits, summed; bilinear upsampling
    to the input size.

    Where seglab differs: the backbone is timm's ResNet (stride in the 3x3 conv, "v1.5") where
    the released Caffe model strides in the first 1x1; the parameter count is the same.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        encoder: str = "resnet101",
        output_stride: int = 8,
        rates: Sequence[int] = (6, 12, 18, 24),
        pretrained: bool | str | Path = False,
    ) -> None:
        super().__init__()
        self.encoder = build_encoder(  # only res5: earlier maps would stay alive needlessly
            encoder, in_channels, output_stride, pretrained=pretrained, out_indices=(-1,)
        )
        self.aspp = ASPPv2(self.encoder.channels[-1], num_classes, rates)

    def forward_coarse(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits at the output stride, (B, K, ~H/8, ~W/8)."""
        return self.aspp(self.encoder(x)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_to(self.forward_coarse(x), x.shape[-2:])


class MSC(nn.Module):
    """Multi-scale inputs with max fusion (DeepLab v2's MSC), around any model.

    The image is resized to each of `scales` and run through the shared `model`; the logits
    of every scale are resized to those of scale 1 (at the model's own output stride when it
    has `forward_coarse`, as in the paper) and fused by element-wise max, then upsampled to the
    input. Training mode returns {"out": fused, "aux": [logits of each scale]}, all
    (B, K, H, W), so the loss covers every scale and the fusion as in the paper; evaluation
    returns the fused (B, K, H, W).
    """

    def __init__(self, model: nn.Module, scales: Sequence[float] = (1.0, 0.75, 0.5)) -> None:
        super().__init__()
        if not scales or scales[0] != 1.0:
            raise ValueError(f"MSC scales must start with 1.0, got {tuple(scales)}")
        self.model = model
        self.scales = tuple(scales)
        self.aux_weights = [1.0] * len(self.scales)  # the paper: one loss per scale, unweighted

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        coarse = getattr(self.model, "forward_coarse", None)
        return coarse(x) if coarse is not None else self.model(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor | list]:
        size = x.shape[-2:]
        per_scale = [self._logits(x)]
        for scale in self.scales[1:]:
            scaled = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            per_scale.append(resize_to(self._logits(scaled), per_scale[0].shape[-2:]))
        fused = resize_to(torch.stack(per_scale).amax(dim=0), size)
        if not self.training:
            return fused
        return {"out": fused, "aux": [resize_to(logits, size) for logits in per_scale]}


@register_model(
    "deeplabv2",
    "DeepLab v2 ASPP-L on dilated ResNet-101, optional MSC (Chen et al. 2017)",
    {"num_classes": 21},
    44_048_532,  # ResNet-101 without fc 42,500,160 + 4 x (3*3*2048*21 + 21)
    {"encoder": "resnet18"},
)
def deeplabv2(
    num_classes: int,
    in_channels: int = 3,
    encoder: str = "resnet101",
    output_stride: int = 8,
    rates: Sequence[int] = (6, 12, 18, 24),
    msc: bool = False,
    msc_scales: Sequence[float] = (1.0, 0.75, 0.5),
    pretrained: bool | str | Path = False,
) -> nn.Module:
    """DeepLab v2; `msc=True` wraps it in MSC (scales `msc_scales`, max fusion)."""
    model = DeepLabV2(num_classes, in_channels, encoder, output_stride, rates, pretrained)
    return MSC(model, msc_scales) if msc else model
