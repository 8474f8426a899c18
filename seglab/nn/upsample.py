"""Upsampling: fixed bilinear transposed convolutions (FCN) and size-matched interpolation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bilinear_kernel(kernel_size: int) -> torch.Tensor:
    """The (k, k) bilinear interpolation kernel that FCN initialises its deconvolutions with."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt = 1 - (og - center).abs() / factor
    return (filt[:, None] * filt[None, :]).float()


class BilinearDeconv(nn.ConvTranspose2d):
    """A class-wise transposed convolution initialised to bilinear upsampling.

    Weights sit on the channel diagonal only (channel c upsamples channel c), as in FCN.
    `learnable=False` (the FCN reference models) freezes them: they stay in the checkpoint
    under this module's name but are not counted as learnable parameters.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        stride: int,
        padding: int = 0,
        learnable: bool = False,
    ) -> None:
        super().__init__(channels, channels, kernel_size, stride, padding=padding, bias=False)
        with torch.no_grad():
            self.weight.zero_()
            kernel = bilinear_kernel(kernel_size)
            for c in range(channels):
                self.weight[c, c] = kernel
        self.weight.requires_grad_(learnable)


def resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) logits to (B, C, *size); align_corners=False everywhere."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
