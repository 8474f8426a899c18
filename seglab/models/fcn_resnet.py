"""The "FCN head on a dilated ResNet" that torchvision and MMSegmentation ship as FCN.

Not the FCN paper's network (that is seglab.models.fcn): a ResNet dilated to output stride 8
with one 3x3 conv head, bilinear upsampling, and an auxiliary head on layer3. Its own name so
that nobody mistakes it for Long et al.'s FCN-8s.
"""

from __future__ import annotations

from pathlib import Path

import torch

from seglab.encoders import build_encoder
from seglab.models.base import SegmentationModel
from seglab.models.registry import register_model
from seglab.nn import resize_to
from seglab.nn.aspp import FCNHead

Logits = torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]


@register_model(
    "fcn_resnet",
    "FCN head on a dilated ResNet, as in torchvision / MMSegmentation (not the FCN paper)",
    {"num_classes": 21, "encoder": "resnet101", "aux": True},
    54_314_346,  # torchvision's fcn_resnet101 with aux_classifier
    {"encoder": "resnet18"},
)
class FCNResNet(SegmentationModel):
    """FCNHead on a dilated ResNet (torchvision's fcn_resnet50/101): (B, C, H, W) -> (B, K, H, W).

    Encoder at output stride 8; head: 3x3 conv to in/4 channels + BN + ReLU, dropout 0.1, 1x1
    to classes; bilinear upsampling to the input. With `aux`, an FCNHead on layer3 whose
    upsampled logits a training-mode forward returns as {"out": ..., "aux": [...]}.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        encoder: str = "resnet50",
        output_stride: int = 8,
        aux: bool = False,
        pretrained: bool | str | Path = False,
    ) -> None:
        super().__init__()
        # Only the maps the heads read (layer3 for aux, layer4): see DeepLabV3.
        self.encoder = build_encoder(
            encoder,
            in_channels,
            output_stride,
            pretrained=pretrained,
            out_indices=(-2, -1) if aux else (-1,),
        )
        channels = self.encoder.channels
        self.head = FCNHead(channels[-1], num_classes)
        self.aux_feature = -2  # layer3
        self.aux_head = FCNHead(channels[-2], num_classes) if aux else None
        self.aux_weights = (0.5,) if aux else ()  # torchvision's reference training recipe

    def forward(self, x: torch.Tensor) -> Logits:
        size = x.shape[-2:]
        features = self.encoder(x)
        out = resize_to(self.head(features[-1]), size)
        if not (self.training and self.aux_head is not None):
            return out
        return {"out": out, "aux": [resize_to(self.aux_head(features[self.aux_feature]), size)]}
