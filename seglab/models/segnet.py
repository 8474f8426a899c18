"""SegNet (Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation", PAMI 2017).

The 13 convs of VGG16 with BN, max pools that keep their argmax indices, and a decoder that
max-unpools with those indices (no learned upsampling) followed by conv + BN + ReLU layers that
mirror the encoder. Layer names follow the released Caffe prototxt: conv5_3_D ... conv1_2_D,
and conv1_1_D is the 3x3 classifier.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from seglab.encoders import VGG16, load_state_dict_file, load_torchvision_vgg16
from seglab.encoders.download import torchvision_state_dict
from seglab.models.base import SegmentationModel
from seglab.models.registry import register_model
from seglab.nn import ConvBNAct

# Decoder output channels per stage at width 64, coarse to fine (MODELS.md); the last stage's
# second conv is the classifier conv1_1_D.
DECODER_STAGES = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64,))


class SegNetEncoder(VGG16):
    """VGG16-BN whose five 2x2/2 max pools also return argmax indices.

    The conv layers are VGG16's (same Caffe names, so `load_torchvision_vgg16` fills them from
    torchvision's vgg16_bn); only the pooling differs, done here with indices. Pools round
    down like torchvision: an odd row or column is dropped by the pool and comes back from
    max-unpooling as zeros.

    forward: (B, C, H, W) -> [(B, channels[i], ~H / strides[i], ~W / strides[i]) per stage];
    forward_with_indices also returns each pool's indices and input size for the decoder.
    """

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__(in_channels, width, batch_norm=True, pools=(None,) * 5)
        self.strides = [2, 4, 8, 16, 32]

    def forward_with_indices(
        self, x: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Size]]:
        features, indices, sizes = [], [], []
        for names in self.conv_names:
            for name in names:
                x = getattr(self, name)(x)
            sizes.append(x.shape[-2:])
            x, index = F.max_pool2d(x, 2, 2, return_indices=True)
            features.append(x)
            indices.append(index)
        return features, indices, sizes

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_with_indices(x)[0]


class SegNetDecoderStage(nn.Module):
    """Max-unpool to the encoder's pre-pool size, then conv + BN + ReLU layers."""

    def __init__(self, names: list[str], channels: list[int], in_channels: int) -> None:
        super().__init__()
        self.conv_names = names
        for name, out_channels in zip(names, channels, strict=True):
            # conv biases kept as in the released model: the paper's 29,449,355 counts them
            self.add_module(name, ConvBNAct(in_channels, out_channels, 3, bias=True))
            in_channels = out_channels

    def forward(self, x: torch.Tensor, indices: torch.Tensor, size: torch.Size) -> torch.Tensor:
        x = F.max_unpool2d(x, indices, 2, 2, output_size=size)
        for name in self.conv_names:
            x = getattr(self, name)(x)
        return x


@register_model(
    "segnet",
    "SegNet: VGG16-BN encoder, decoder by max-unpooling indices (Badrinarayanan et al. 2017)",
    {"num_classes": 11},  # CamVid
    29_449_355,  # MODELS.md; every conv keeps its bias, as in the released Caffe model
    {"width": 8},
)
class SegNet(SegmentationModel):
    """SegNet (Badrinarayanan et al., PAMI 2017): (B, C, H, W) -> (B, num_classes, H, W).

    Encoder: SegNetEncoder (VGG16-BN, pools with indices). Decoder, coarse to fine: unpool,
    then 512,512,512 | unpool, 512,512,256 | unpool, 256,256,128 | unpool, 128,64 | unpool, 64,
    each conv 3x3 + BN + ReLU, and a 3x3 conv to classes (`conv1_1_D`). The unpooling is given
    the size of the map before each pool, so any input size works.

    Args:
        width: channels of the first stage (64 in the paper); all others scale with it.
        pretrained: False, True (torchvision's ImageNet vgg16_bn) or the path of a torchvision
            vgg16_bn state dict file; loads the encoder only, as the paper does.

    Where seglab differs: the paper trains with median-frequency class weights, which live in
    the loss (`loss.class_weights: median_frequency`), not in the model.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: int = 64,
        pretrained: bool | str | Path = False,
    ) -> None:
        super().__init__()
        self.export_fixed_size = "max-unpooling by indices to each pool's input size"
        self.encoder = SegNetEncoder(in_channels, width)
        self.decoder = nn.ModuleDict()
        channels = self.encoder.channels[-1]
        for stage, stage_channels in zip(range(5, 0, -1), DECODER_STAGES, strict=True):
            widths = [c * width // 64 for c in stage_channels]
            top = len(widths) + (stage == 1)  # stage 1 ends in the classifier conv1_1_D
            names = [f"conv{stage}_{i}_D" for i in range(top, top - len(widths), -1)]
            self.decoder[f"stage{stage}"] = SegNetDecoderStage(names, widths, channels)
            channels = widths[-1]
        self.decoder["stage1"].add_module(
            "conv1_1_D", nn.Conv2d(channels, num_classes, 3, padding=1)
        )
        self.decoder["stage1"].conv_names.append("conv1_1_D")
        if pretrained:
            self.load_vgg16_bn(pretrained)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, indices, sizes = self.encoder.forward_with_indices(x)
        out = features[-1]  # (B, 8 * width, ~H/32, ~W/32)
        for stage, index, size in zip(
            self.decoder.values(), indices[::-1], sizes[::-1], strict=True
        ):
            out = stage(out, index, size)
        return out  # (B, num_classes, H, W)

    def load_vgg16_bn(self, pretrained: bool | str | Path) -> None:
        """Fill the encoder from torchvision's ImageNet vgg16_bn (True) or a local file."""
        if pretrained is True:
            from torchvision.models import VGG16_BN_Weights

            state = torchvision_state_dict(VGG16_BN_Weights.IMAGENET1K_V1)
        else:
            state = load_state_dict_file(pretrained)
        load_torchvision_vgg16(self.encoder, state)
