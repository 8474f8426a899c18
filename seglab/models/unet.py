"""U-Net (Ronneberger, Fischer, Brox, MICCAI 2015).

Contracting path of two 3x3 convs + ReLU and a 2x2 max pool per level (64 ... 1024 channels),
dropout at the end of the contracting path, an expanding path of 2x2 up-convolutions that halve
the channels, concatenation with the centre-cropped encoder map and two 3x3 convs, and a final
1x1 conv: 23 convolutions. Weights are drawn from N(0, sqrt(2 / fan_in)) as the paper says.

Where seglab differs, by option:
- `padding="valid"` (default) is the paper's network. Its forward takes any size: the image is
  mirror-padded by the network's margin (92 px at depth 4), as the overlap-tile strategy does,
  so the output is exactly (H, W); `forward_tile` is the raw 572 -> 388 map.
- `padding="same"` is the common variant; the upsampled map is padded to its skip's size.
- `batch_norm=True` adds BN after every 3x3 conv (not in the paper, much faster to train).
- `width` (64) and `depth` (4) for small variants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seglab.models.base import SegmentationModel
from seglab.models.registry import register_model
from seglab.nn import ConvBNAct, center_crop, mirror_pad


class DoubleConv(nn.Module):
    """Two 3x3 conv + (BN +) ReLU: one U-Net level."""

    def __init__(self, in_channels: int, out_channels: int, padding: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, 3, padding=padding, norm=batch_norm)
        self.conv2 = ConvBNAct(out_channels, out_channels, 3, padding=padding, norm=batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class UpLevel(nn.Module):
    """2x2 up-convolution halving channels, concat with the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, padding: int, batch_norm: bool) -> None:
        super().__init__()
        self.valid = padding == 0  # valid convs shrink the map: crop the skip to it
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
        self.convs = DoubleConv(in_channels // 2 + out_channels, out_channels, padding, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if self.valid:
            if x.shape[-2:] != skip.shape[-2:]:
                skip = center_crop(skip, *x.shape[-2:])
        else:
            # "same": odd sizes floor in the pool, so pad the upsampled map back. Always, by
            # zero when the sizes agree: a shape `if` here would be frozen by ONNX tracing,
            # while the differences trace as shape ops that hold at every size.
            dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
            x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
        return self.convs(torch.cat([skip, x], dim=1))


@register_model(
    "unet",
    "U-Net (Ronneberger et al. 2015); padding='valid' (paper) or 'same'",
    paper_options={"num_classes": 2, "in_channels": 1},
    paper_params=31_030_658,
    small_options={"width": 8, "depth": 3},
)
class UNet(SegmentationModel):
    """U-Net: (B, in_channels, H, W) -> (B, num_classes, H, W) logits for any H, W.

    Args:
        width: channels of the first level (64); level i has width * 2**i.
        depth: number of 2x2 pools (4).
        padding: "valid" (the paper; unpadded convs, mirror-padded input) or "same".
        batch_norm: BN after each 3x3 conv.
        dropout: before the expanding path (the end of the contracting path).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        width: int = 64,
        depth: int = 4,
        padding: str = "valid",
        batch_norm: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError(f"U-Net padding must be 'valid' or 'same', got {padding!r}")
        self.depth = depth
        self.valid = padding == "valid"
        self.supports_overlap_tile = self.valid
        if self.valid:
            self.export_fixed_size = "valid padding: the input's mirror padding depends on its size"
        pad = 0 if self.valid else 1
        channels = [width * 2**level for level in range(depth + 1)]
        self.contracting = nn.ModuleList()
        previous = in_channels
        for level_channels in channels:
            self.contracting.append(DoubleConv(previous, level_channels, pad, batch_norm))
            previous = level_channels
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout)
        self.expanding = nn.ModuleList(
            UpLevel(channels[level + 1], channels[level], pad, batch_norm)
            for level in reversed(range(depth))
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)
        for module in self.modules():  # N(0, sqrt(2 / fan_in)), fan_in = k*k*C_in
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward_tile(self, x: torch.Tensor) -> torch.Tensor:
        """The bare network: with valid padding a 572x572 tile gives 388x388 logits."""
        skips = []
        for level, down in enumerate(self.contracting):
            x = down(x)
            if level < self.depth:
                skips.append(x)
                x = self.pool(x)
        x = self.dropout(x)
        for up, skip in zip(self.expanding, reversed(skips), strict=True):
            x = up(x, skip)
        return self.classifier(x)

    def output_size(self, size: int) -> int | None:
        """Output side length of `forward_tile` for an input side, or None if not a valid tile."""
        if not self.valid:
            return size
        for _ in range(self.depth):
            size -= 4
            if size <= 0 or size % 2:
                return None
            size //= 2
        size -= 4
        if size <= 0:
            return None
        for _ in range(self.depth):
            size = 2 * size - 4
        return size

    def tile_input_size(self, output: int) -> int:
        """The smallest valid tile side whose output covers `output` pixels."""
        size = output
        while (self.output_size(size) or 0) < output:
            size += 1
        return size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.valid:
            return self.forward_tile(x)
        h, w = x.shape[-2:]
        tile_h, tile_w = self.tile_input_size(h), self.tile_input_size(w)
        margin_h = (tile_h - self.output_size(tile_h)) // 2
        margin_w = (tile_w - self.output_size(tile_w)) // 2
        x = mirror_pad(x, margin_h, tile_h - h - margin_h, margin_w, tile_w - w - margin_w)
        return self.forward_tile(x)[..., :h, :w]
