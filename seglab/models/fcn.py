"""FCN-32s, FCN-16s and FCN-8s on VGG16.

Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015
(and PAMI 2016).

VGG16 with fc6/fc7 as convolutions (7x7 and 1x1, 4096 channels, dropout 0.5), a zero-initialised
1x1 `score_fr`, and skips from pool4 and pool3 through zero-initialised 1x1 score layers, fused
by adding after fixed bilinear transposed convolutions (weights on the class diagonal only).

Where seglab differs, by option:
- `pad100=False` (default): conv1_1 pads by 1 and fc6 by 3, so any input size works and every
  map is aligned at the top-left corner; pooling rounds up like Caffe, and the upsampled maps
  are cropped at offset 0. `pad100=True` is the reference model: conv1_1 pads by 100, fc6 is
  unpadded, and the crops are the paper's (5 for pool4, 9 for pool3, 19/27/31 at the end).
- `width` scales every channel count (64 -> the paper) for small, fast variants.
"""

from __future__ import annotations

import torch
from torch import nn

from seglab.encoders import VGG16
from seglab.models.base import SegmentationModel
from seglab.models.registry import register_model, register_variant
from seglab.nn import BilinearDeconv, ConvBNAct

# The reference models' crop offsets with pad100=True (from the released prototxts).
PAD100_CROPS = {"pool4": 5, "pool3": 9, 32: 19, 16: 27, 8: 31}


def _crop(x: torch.Tensor, offset: int, like: torch.Tensor | tuple[int, int]) -> torch.Tensor:
    """x[..., offset : offset + h, offset : offset + w] with (h, w) taken from `like`."""
    h, w = like.shape[-2:] if isinstance(like, torch.Tensor) else like
    return x[..., offset : offset + h, offset : offset + w]


# Learnable parameters with 21 classes. FCN-8s is MODELS.md's figure; 32s and 16s follow from the
# same layer table: VGG16 convs 14,714,688 + fc6 102,764,544 + fc7 16,781,312 + score_fr 86,037
# (+ score_pool4 10,773, + score_pool3 5,397).
@register_model(
    "fcn32s",
    "FCN-32s on VGG16 (Long et al. 2015)",
    paper_options={"num_classes": 21},
    paper_params=134_346_581,
    small_options={"width": 8},
)
class FCN(SegmentationModel):
    """FCN-{32,16,8}s: (B, in_channels, H, W) -> (B, num_classes, H, W) logits.

    Args:
        output_stride: 32, 16 or 8 (the number of skips used: 0, 1 or 2); FCN-32s is the
            plain network, fcn16s and fcn8s are registered as its variants.
        width: channels of VGG16's first stage (64 in the paper); fc6/fc7 get 64 x width.
        pad100: the reference models' padding and crops (see the module docstring).
        dropout: after fc6 and after fc7.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        output_stride: int = 32,
        width: int = 64,
        pad100: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if output_stride not in (32, 16, 8):
            raise ValueError(f"FCN output_stride must be 32, 16 or 8, got {output_stride}")
        self.output_stride = output_stride
        self.pad100 = pad100
        self.encoder = VGG16(in_channels, width, first_padding=100 if pad100 else 1)
        fc_channels = 64 * width
        c3, c4, c5 = self.encoder.channels[2:]
        self.fc6 = ConvBNAct(c5, fc_channels, 7, padding=0 if pad100 else 3, norm=False)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = ConvBNAct(fc_channels, fc_channels, 1, norm=False)
        self.drop7 = nn.Dropout(dropout)
        self.score_fr = nn.Conv2d(fc_channels, num_classes, 1)
        score_layers = [self.score_fr]
        # Deconvolution padding makes the pad100=False maps exactly 2x / sx larger.
        pad = 0 if pad100 else 1
        if output_stride <= 16:
            self.score_pool4 = nn.Conv2d(c4, num_classes, 1)
            self.upscore2 = BilinearDeconv(num_classes, 4, 2, padding=pad)
            score_layers.append(self.score_pool4)
        if output_stride == 8:
            self.score_pool3 = nn.Conv2d(c3, num_classes, 1)
            self.upscore_pool4 = BilinearDeconv(num_classes, 4, 2, padding=pad)
            score_layers.append(self.score_pool3)
        final_pad = 0 if pad100 else output_stride // 2
        self.upscore = BilinearDeconv(num_classes, 2 * output_stride, output_stride, final_pad)
        for layer in score_layers:  # the paper: zero-initialised score layers
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        _, _, pool3, pool4, pool5 = self.encoder(x)
        score = self.score_fr(self.drop7(self.fc7(self.drop6(self.fc6(pool5)))))
        crops = PAD100_CROPS if self.pad100 else {"pool4": 0, "pool3": 0, self.output_stride: 0}
        if self.output_stride <= 16:  # (B, K, H/16, W/16)
            score = self.upscore2(score)
            score = score[..., : pool4.shape[-2], : pool4.shape[-1]] if not self.pad100 else score
            score = score + _crop(self.score_pool4(pool4), crops["pool4"], score)
        if self.output_stride == 8:  # (B, K, H/8, W/8)
            score = self.upscore_pool4(score)
            score = score[..., : pool3.shape[-2], : pool3.shape[-1]] if not self.pad100 else score
            score = score + _crop(self.score_pool3(pool3), crops["pool3"], score)
        return _crop(self.upscore(score), crops[self.output_stride], size)


register_variant(
    "fcn16s",
    "fcn32s",
    "FCN-16s on VGG16 (Long et al. 2015)",
    output_stride=16,
    paper_params=134_357_354,
)
register_variant(
    "fcn8s",
    "fcn32s",
    "FCN-8s on VGG16 (Long et al. 2015)",
    output_stride=8,
    paper_params=134_362_751,
)
