"""DeepLab v2: ResNet-101 with atrous spatial pyramid pooling, and multi-scale inputs (MSC).

Chen, Papandreou, Kokkinos, Murphy, Yuille, "DeepLab: Semantic Image Segmentation with Deep
Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", PAMI 2017.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seglab.encoders import build_encoder
from seglab.encoders.timm_encoder import Pretrained
from seglab.models.base import SegmentationModel
from seglab.models.registry import register_model
from seglab.nn import resize_to
from seglab.nn.aspp import ASPPv2


class MSC(nn.Module):
    """Multi-scale inputs with max fusion (DeepLab v2's MSC); no parameters of its own.

    forward(logits_fn, x): the image is resized to each of `scales` and run through
    `logits_fn` (the shared network, at its own output stride as in the paper); the logits of
    every scale are resized to those of scale 1 and fused by element-wise max, then upsampled
    to the input. Training mode returns {"out": fused, "aux": [logits of each scale]}, all
    (B, K, H, W), so the loss covers every scale and the fusion as in the paper; evaluation
    returns the fused (B, K, H, W).
    """

    def __init__(self, scales: Sequence[float] = (1.0, 0.75, 0.5)) -> None:
        super().__init__()
        if not scales or scales[0] != 1.0:
            raise ValueError(f"MSC scales must start with 1.0, got {tuple(scales)}")
        self.scales = tuple(scales)

    def forward(
        self, logits_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor | dict[str, torch.Tensor | list]:
        size = x.shape[-2:]
        per_scale = [logits_fn(x)]
        for scale in self.scales[1:]:
            scaled = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            per_scale.append(resize_to(logits_fn(scaled), per_scale[0].shape[-2:]))
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
class DeepLabV2(SegmentationModel):
    """DeepLab v2 (Chen et al., PAMI 2017): (B, C, H, W) -> (B, num_classes, H, W).

    ResNet-101 with res4 dilated by 2 and res5 by 4 (output stride 8), ASPP-L on res5: four 3x3
    convs at dilation 6, 12, 18, 24, each straight to class logits, summed; bilinear upsampling
    to the input size.

    Args:
        rates: the ASPP dilations (at the given output stride; the paper's are for OS 8).
        msc: the paper's multi-scale inputs (see MSC): the image at each of `msc_scales`
            through the shared network, max fusion; training mode returns {"out": fused,
            "aux": [one per scale]} with `aux_weights` 1 each (a loss per scale, unweighted).
            MSC has no parameters, so weights trained with it load without it and back.

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
        msc: bool = False,
        msc_scales: Sequence[float] = (1.0, 0.75, 0.5),
        pretrained: Pretrained = False,
    ) -> None:
        super().__init__()
        self.encoder = build_encoder(  # only res5: earlier maps would stay alive needlessly
            encoder, in_channels, output_stride, pretrained=pretrained, out_indices=(-1,)
        )
        self.aspp = ASPPv2(self.encoder.channels[-1], num_classes, rates)
        self.msc = MSC(msc_scales) if msc else None
        # the paper: one loss per scale, unweighted
        self.aux_weights = (1.0,) * len(self.msc.scales) if msc else ()

    def logits_at_output_stride(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits at the output stride, (B, K, ~H/8, ~W/8)."""
        return self.aspp(self.encoder(x)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor | list]:
        if self.msc is not None:
            return self.msc(self.logits_at_output_stride, x)
        return resize_to(self.logits_at_output_stride(x), x.shape[-2:])
