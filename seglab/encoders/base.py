"""The Encoder contract every backbone follows (timm's feature_info idea, kept small)."""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """A backbone whose forward returns feature maps from fine to coarse.

    Subclasses set, before the first forward:
        channels: channels of each returned map, e.g. [64, 128, 256, 512, 512]
        strides:  reduction of each map relative to the input, e.g. [2, 4, 8, 16, 32]
    A decoder is built from these numbers, never from hard-coded 1024/2048. The strides are
    nominal: for an input of H pixels a stride-s map has about H / s rows (ceil or floor by
    the backbone's pooling), so decoders resize to the map they combine with.
    tests/test_encoders.py checks the declared numbers against real outputs.
    """

    channels: list[int]
    strides: list[int]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # (B, C_in, H, W) -> maps
        raise NotImplementedError
