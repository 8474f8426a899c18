"""Multi-dilated convolution CAMs: Wei et al., "Revisiting Dilated Convolution: A Simple
Approach for Weakly- and Semi-Supervised Semantic Segmentation", CVPR 2018 (arXiv 1805.04574).

No official code exists (MODELS_2019.md section 8). What is followed:
  - a classification network "equipped with convolutional blocks of different dilated rates"
    (abstract): after the encoder, parallel 3x3 conv blocks with dilations d in (1, 3, 6, 9),
    each with its own 1x1 classifier, each trained with a multi-label loss on image tags;
  - the fusion H = H_0 + (1/n_d) sum_{i=1..n_d} H_i (vitalab review, MODELS_2019.md section 8):
    the undilated block's map weighted fully, the dilated ones averaged.
Not from the paper (not found): the dilation values 3, 6, 9 are the usually quoted ones
(unverified), the backbone width, and the background: a threshold, not a saliency detector.
"""

from __future__ import annotations

import torch
from torch import nn

from seglab.weak.cam import CamBackbone, normalise_cams, tag_loss

DILATIONS = (1, 3, 6, 9)


def fuse_maps(maps: list[torch.Tensor]) -> torch.Tensor:
    """H = H_0 + mean(H_1..H_n): maps[0] is the d=1 block's map; all maps the same shape."""
    if len(maps) == 1:
        return maps[0]
    return maps[0] + torch.stack(maps[1:]).mean(dim=0)


class MDCNet(nn.Module):
    """Encoder -> one 3x3 conv block per dilation -> 1x1 class scores per block.

    num_classes: foreground classes K; pooling / lse_r: how the score maps become image scores
    (seglab.weak.cam.pool_scores; the paper's gap by default); `backbone` options go to
    seglab.weak.cam.CamBackbone (in_channels, encoder, width, output_stride, stage, batch_norm).
    Input (N, C, H, W) -> forward: list of (N, K, H/os, W/os) score maps, one per dilation.
    """

    def __init__(
        self,
        num_classes: int,
        dilations: tuple[int, ...] = DILATIONS,
        block_channels: int | None = None,
        pooling: str = "gap",
        lse_r: float = 5.0,
        **backbone,
    ) -> None:
        super().__init__()
        if not dilations or dilations[0] != 1:
            raise ValueError(
                f"dilations must start with 1 (the H_0 of the fusion), got {dilations}"
            )
        self.num_classes, self.pooling, self.lse_r = num_classes, pooling, lse_r
        self.dilations = tuple(dilations)
        self.backbone = CamBackbone(**backbone)
        channels = self.backbone.channels
        hidden = block_channels or channels
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, hidden, 3, padding=d, dilation=d),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, num_classes, 1),
            )
            for d in self.dilations
        )

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.backbone(images)
        return [block(features) for block in self.blocks]

    def loss(self, images: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        """Each dilated block is a classifier of its own (summed multi-label BCE)."""
        return tag_loss(self(images), tags, self.pooling, self.lse_r)

    @torch.no_grad()
    def cams(self, images: torch.Tensor) -> torch.Tensor:
        """(N, K, h, w) fused maps: each block's ReLU'd score map, fused, then max-normalised."""
        maps = [scores.clamp(min=0) for scores in self(images)]
        return normalise_cams(fuse_maps(maps))
