"""DeepLab v1, the LargeFOV model.

Chen, Papandreou, Kokkinos, Murphy, Yuille, "Semantic Image Segmentation with Deep
Convolutional Nets and Fully Connected CRFs", ICLR 2015.
"""

from __future__ import annotations

import torch
from torch import nn

from seglab.encoders import build_encoder, load_torchvision_vgg16
from seglab.encoders.timm_encoder import Pretrained, vgg16_state_dict
from seglab.models.base import SegmentationModel
from seglab.models.registry import register_model
from seglab.nn import ConvBNAct, resize_to


@register_model(
    "deeplabv1",
    "DeepLab v1 LargeFOV on VGG16 (Chen et al. 2015)",
    {"num_classes": 21},
    20_505_429,
    {"width": 8},
)
class DeepLabV1(SegmentationModel):
    """DeepLab-LargeFOV (Chen et al., ICLR 2015): (B, C, H, W) -> (B, num_classes, H, W).

    VGG16 whose pool1-3 are 3x3 stride 2 pad 1 and pool4/pool5 3x3 stride 1 pad 1, conv5
    dilated by 2; then a 3x3 stride-1 average pool (`pool5a`), fc6 (3x3, dilation 12, 1024
    channels), fc7 (1x1, 1024), dropout 0.5 after both, fc8 (1x1 to classes). Output stride 8;
    the logits are bilinearly upsampled to the input size.

    Args:
        width: VGG16's first-stage channels (64 in the paper); fc6/fc7 get 16 x width.
        downsample_labels: the paper trains against labels subsampled by 8 instead of
            upsampling the logits. With it, `label_stride` is 8 and a training-mode forward
            returns {"out": (B, K, ~H/8, ~W/8) logits, "aux": []}; seglab's SegmentationLoss
            compares a lower-resolution output with the nearest-downsampled labels.
            Evaluation always returns (B, K, H, W).
        pretrained: True (torchvision's ImageNet VGG16) or the path of a torchvision vgg16 state
            dict file: loads the convs and, as the paper does, fc6/fc7 decimated from VGG16's
            fc6/fc7 (every 4th unit, every 3rd tap of fc6's 7x7 kernel); needs width=64.

    Where seglab differs: pools round down (PyTorch) rather than up (Caffe); on the paper's
    crop sizes (8k + 1, e.g. 321) both give the same map sizes.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: int = 64,
        dropout: float = 0.5,
        downsample_labels: bool = False,
        pretrained: Pretrained = False,
    ) -> None:
        super().__init__()
        self.encoder = build_encoder("vgg16", in_channels, output_stride=8, width=width)
        fc_channels = 16 * width
        self.pool5a = nn.AvgPool2d(3, stride=1, padding=1)
        self.fc6 = ConvBNAct(self.encoder.channels[-1], fc_channels, 3, dilation=12, norm=False)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = ConvBNAct(fc_channels, fc_channels, 1, norm=False)
        self.drop7 = nn.Dropout(dropout)
        self.fc8 = nn.Conv2d(fc_channels, num_classes, 1)
        for fc in (self.fc6.conv, self.fc7.conv):  # He init like the encoder (from scratch)
            nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc8.weight, std=0.01)  # the released prototxt's gaussian filler
        nn.init.zeros_(self.fc8.bias)
        self.label_stride = 8 if downsample_labels else 1
        if pretrained:
            self.load_vgg16(pretrained)

    def logits_at_stride_8(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits at output stride 8, (B, K, ~H/8, ~W/8)."""
        pool5 = self.encoder(x)[-1]
        fc7 = self.drop7(self.fc7(self.drop6(self.fc6(self.pool5a(pool5)))))
        return self.fc8(fc7)

    def forward_coarse(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at label_stride: (B, K, ~H/8, ~W/8) if downsample_labels, else (B, K, H, W)."""
        logits = self.logits_at_stride_8(x)
        return logits if self.label_stride > 1 else resize_to(logits, x.shape[-2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor | list]:
        logits = self.logits_at_stride_8(x)
        if self.training and self.label_stride > 1:
            return {"out": logits, "aux": []}
        return resize_to(logits, x.shape[-2:])

    def load_vgg16(self, pretrained: Pretrained) -> None:
        """Initialise from ImageNet VGG16 (True) or a torchvision vgg16 state dict file."""
        state = vgg16_state_dict(pretrained)
        fc = load_torchvision_vgg16(self.encoder, state)
        fc6 = fc["classifier.0.weight"].view(4096, -1, 7, 7)[::4, :, ::3, ::3]
        fc7 = fc["classifier.3.weight"][::4, ::4]
        if fc6.shape != self.fc6.conv.weight.shape or fc7.shape[1] != fc6.shape[0]:
            raise ValueError("VGG16 fc6/fc7 decimation needs width=64")
        with torch.no_grad():
            self.fc6.conv.weight.copy_(fc6)
            self.fc6.conv.bias.copy_(fc["classifier.0.bias"][::4])
            self.fc7.conv.weight.copy_(fc7[:, :, None, None])
            self.fc7.conv.bias.copy_(fc["classifier.3.bias"][::4])
