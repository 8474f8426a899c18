"""DANet (Fu, Liu, Tian, Li, Bao, Fang, Lu, "Dual Attention Network for Scene Segmentation",
CVPR 2019), as in the official code junfu1115/DANet (shared/MODELS_2019.md, section 5)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seglab.encoders import build_encoder
from seglab.encoders.timm_encoder import Pretrained
from seglab.models.base import SegmentationModel
from seglab.models.registry import register_model
from seglab.nn import ConvBNAct, resize_to

Logits = torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]
ATTENTION_METHODS = ("sdpa", "chunked", "full")
CAM_FORMS = ("official", "paper")


def position_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, method: str, chunk: int = 1024
) -> torch.Tensor:
    """softmax(Q K^T) V over N = H*W positions, unscaled as in DANet (no 1/sqrt(d)).

    query, key: (B, N, C'); value: (B, N, C) -> (B, N, C).
    method: "full" builds the (B, N, N) map at once; "chunked" takes `chunk` query rows at a
    time (a (B, chunk, N) map; the result is the same, row by row); "sdpa" is torch's
    scaled_dot_product_attention with scale 1, whose fused kernels (flash / memory-efficient
    on CUDA, flash on the CPU) never hold the map.
    """
    if method == "sdpa":
        return F.scaled_dot_product_attention(query, key, value, scale=1.0)
    if method == "full":
        return torch.softmax(query @ key.transpose(1, 2), dim=-1) @ value
    if method != "chunked":
        raise ValueError(f"attention method {method!r} is not one of {ATTENTION_METHODS}")
    rows = [
        torch.softmax(query[:, start : start + chunk] @ key.transpose(1, 2), dim=-1) @ value
        for start in range(0, query.shape[1], chunk)
    ]
    return torch.cat(rows, dim=1)


class PositionAttention(nn.Module):
    """PAM: (B, C, H, W) -> (B, C, H, W), out = gamma * (attention over positions of V) + x.

    Q and K are 1x1 convs to C/8 (64 of 512), V a 1x1 conv to C, all with bias; the attention
    A = softmax(Q^T K) is (HW x HW) per image. gamma starts at 0, so the module starts as the
    identity and learns how much context to add.

    Memory of A: at 1/8 of a 1024x2048 Cityscapes frame, N = 128 * 256 = 32,768 positions and A
    holds N^2 = 1,073,741,824 floats: 4 GiB per image in float32 (8 GiB with the softmax output
    kept for backward), 2 GiB in half precision. `attention` "sdpa" (default) or "chunked"
    computes the same result without holding A (see position_attention).
    """

    def __init__(
        self, channels: int, reduction: int = 8, attention: str = "sdpa", chunk: int = 1024
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_METHODS:
            raise ValueError(f"attention {attention!r} is not one of {ATTENTION_METHODS}")
        self.query = nn.Conv2d(channels, channels // reduction, 1)
        self.key = nn.Conv2d(channels, channels // reduction, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.attention, self.chunk = attention, chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape

        def positions(t: torch.Tensor) -> torch.Tensor:  # (B, C', H, W) -> (B, N, C')
            return t.flatten(2).transpose(1, 2)

        out = position_attention(
            positions(self.query(x)),
            positions(self.key(x)),
            positions(self.value(x)),
            self.attention,
            self.chunk,
        )
        return self.gamma * out.transpose(1, 2).reshape(b, c, h, w) + x


class ChannelAttention(nn.Module):
    """CAM: (B, C, H, W) -> (B, C, H, W), out = gamma * (A X) + x with A (C x C), no convs.

    E = X X^T over the HW positions. form "official" (the default) takes softmax(max_row(E) - E),
    the step both official releases carry "to prevent loss divergence" (author, DANet #48); it
    inverts the similarity, so the least similar channels get the largest weights. form
    "paper" takes softmax(E) as the paper's equation. gamma starts at 0.
    """

    def __init__(self, form: str = "official") -> None:
        super().__init__()
        if form not in CAM_FORMS:
            raise ValueError(f"CAM form {form!r} is not one of {CAM_FORMS}")
        self.form = form
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)  # (B, C, N)
        energy = flat @ flat.transpose(1, 2)  # (B, C, C)
        if self.form == "official":
            energy = energy.amax(dim=-1, keepdim=True) - energy
        out = torch.softmax(energy, dim=-1) @ flat
        return self.gamma * out.view_as(x) + x


class DANetHead(nn.Module):
    """(B, C_in, h, w) -> (sum, position, channel) logits, each (B, num_classes, h, w).

    Per branch: 3x3 conv C_in -> C_in/4 + BN + ReLU (conv5a / conv5c), the attention module,
    a 3x3 conv + BN + ReLU (conv51 / conv52), Dropout2d(0.1) + 1x1 to classes (conv6 / conv7).
    The fused map is the sum of the two branches after conv51/conv52, classified by conv8.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        attention: str = "sdpa",
        cam_form: str = "official",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        inter = in_channels // 4
        self.position_reduce = ConvBNAct(in_channels, inter, 3)
        self.channel_reduce = ConvBNAct(in_channels, inter, 3)
        self.pam = PositionAttention(inter, attention=attention)
        self.cam = ChannelAttention(cam_form)
        self.position_conv = ConvBNAct(inter, inter, 3)
        self.channel_conv = ConvBNAct(inter, inter, 3)

        def classifier() -> nn.Sequential:
            return nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(inter, num_classes, 1))

        self.position_classifier = classifier()
        self.channel_classifier = classifier()
        self.sum_classifier = classifier()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        position = self.position_conv(self.pam(self.position_reduce(x)))
        channel = self.channel_conv(self.cam(self.channel_reduce(x)))
        return (
            self.sum_classifier(position + channel),
            self.position_classifier(position),
            self.channel_classifier(channel),
        )


@register_model(
    "danet",
    "DANet: dilated ResNet-101 OS 8 + position and channel attention (Fu et al. 2019)",
    {"num_classes": 19},
    # Counted by hand in tests/test_danet.py: ResNet-101 42,500,160 + head 23,954,619 (two 3x3
    # 2048->512 reductions, PAM 328,321, CAM 1, two 3x3 512->512, three 1x1 classifiers).
    66_454_779,
    {"encoder": "test_resnet", "multi_grid": (2,)},  # timm's tiny ResNet: one block in layer4
)
class DANet(SegmentationModel):
    """DANet (Fu et al., CVPR 2019): (B, C, H, W) -> (B, num_classes, H, W).

    Dilated ResNet-101 at output stride 8 with multi-grid (1, 2, 4) on layer4 (dilations 4, 8,
    16: the official `--multi-grid --multi-dilation 4 8 16`), then DANetHead on the last map.
    Eval mode returns the fused (sum) logits; train mode {"out": sum, "aux": [position,
    channel]}, all bilinearly upsampled to the input, with aux_weights (1.0, 1.0): the official
    SegmentationMultiLosses adds the three cross-entropies with equal weights.

    Args:
        encoder: a timm name; "resnet101" has the plain stem of the released Cityscapes model
            (its test command passes --no-deepstem); "resnet101s" is the deep stem of 2018.
        multi_grid: rates multiplying layer4's dilation per block (None for none).
        attention: how PAM computes softmax(QK^T)V: "sdpa" (fused, memory-efficient), "chunked"
            (query rows in blocks) or "full" (the official (HW x HW) map); same result.
        cam_form: "official" (softmax(max(E) - E)) or "paper" (softmax(E)).

    Where seglab differs: upsampling with align_corners=False (the official code uses True),
    and no (HW x HW) map with the default attention, so 1/8 of a full frame fits.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        encoder: str = "resnet101",
        output_stride: int = 8,
        multi_grid: Sequence[int] | None = (1, 2, 4),
        attention: str = "sdpa",
        cam_form: str = "official",
        dropout: float = 0.1,
        pretrained: Pretrained = False,
    ) -> None:
        super().__init__()
        self.encoder = build_encoder(
            encoder, in_channels, output_stride, multi_grid, pretrained, out_indices=(-1,)
        )
        self.head = DANetHead(self.encoder.channels[-1], num_classes, attention, cam_form, dropout)
        self.aux_weights = (1.0, 1.0)

    def forward(self, x: torch.Tensor) -> Logits:
        size = x.shape[-2:]
        fused, position, channel = self.head(self.encoder(x)[-1])  # (B, K, ~H/8, ~W/8)
        if not self.training:
            return resize_to(fused, size)
        return {
            "out": resize_to(fused, size),
            "aux": [resize_to(position, size), resize_to(channel, size)],
        }
