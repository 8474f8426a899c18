"""What every CAM generator shares: the image-tag classification loss, per-class normalisation
of class activation maps, and seeds / pseudo masks from them.

A CAM generator (seglab/weak/mdc.py, ficklenet.py) is an nn.Module with
    num_classes                      foreground classes K (dataset classes minus background 0)
    forward(images)  -> list of (N, K, h, w) class score maps (one per branch)
    loss(images, tags) -> scalar     tags: (N, K) multi-hot float
    cams(images)     -> (N, K, h, w) non-negative localisation maps, each class's max 1

Class ids: dataset class c >= 1 is CAM channel c - 1; background (id 0) has no channel. Its
score is the constant background threshold instead (the papers use a saliency detector for the
background, MODELS_2019.md section 8; seglab has none, so a threshold stands in for it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seglab.data.labels import IGNORE_INDEX
from seglab.encoders import build_encoder


class CamBackbone(nn.Module):
    """The encoder of a CAM generator and the one of its maps the CAM head reads.

    encoder/width/output_stride go to seglab.encoders.build_encoder (VGG-16, the papers'
    usual backbone; width scales it). stage: which returned map feeds the head (-1 the last;
    an earlier one for small images, whose last map's receptive field covers all of them).
    (N, in_channels, H, W) -> (N, channels, H / stride, W / stride).
    """

    def __init__(self, in_channels: int = 3, encoder: str = "vgg16", width: int = 64,
                 output_stride: int = 8, stage: int = -1) -> None:  # fmt: skip
        super().__init__()
        self.encoder = build_encoder(encoder, in_channels, output_stride, width=width)
        self.stage, self.channels = stage, self.encoder.channels[stage]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)[self.stage]


def tag_loss(score_maps: list[torch.Tensor], tags: torch.Tensor) -> torch.Tensor:
    """Sum over branches of the multi-label BCE of each branch's global-average-pooled scores.

    score_maps: list of (N, K, h, w); tags: (N, K) in {0, 1}."""
    return sum(
        F.binary_cross_entropy_with_logits(scores.mean(dim=(2, 3)), tags) for scores in score_maps
    )


def normalise_cams(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(N, K, h, w) -> ReLU'd maps divided by each (image, class) maximum: values in [0, 1]."""
    cams = cams.clamp(min=0)
    return cams / (cams.amax(dim=(2, 3), keepdim=True) + eps)


def seeds_and_pseudo_mask(
    cams: np.ndarray, tags: list[int], fg_threshold: float, bg_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Seeds and a dense pseudo mask of one image from its normalised maps.

    cams: (K, H, W) in [0, 1] at the image's size; tags: dataset class ids (>= 1) present.
    Only tagged classes compete (the tags are known). At each pixel the best tagged class c
    with score s:
      pseudo mask: c where s > bg_threshold, else background 0;
      seeds:       c where s >= fg_threshold, background where s < bg_threshold, 255 between
                   (the confident regions a seed-growing stage would start from).
    Returns (seeds, pseudo) as (H, W) uint8.
    """
    height, width = cams.shape[1:]
    if not tags:
        return np.zeros((height, width), np.uint8), np.zeros((height, width), np.uint8)
    tagged = np.stack([cams[c - 1] for c in tags])  # (T, H, W)
    best = np.asarray(tags, np.uint8)[tagged.argmax(0)]
    score = tagged.max(0)
    pseudo = np.where(score > bg_threshold, best, 0).astype(np.uint8)
    seeds = np.full((height, width), IGNORE_INDEX, np.uint8)
    seeds[score >= fg_threshold] = best[score >= fg_threshold]
    seeds[score < bg_threshold] = 0
    return seeds, pseudo


def upsample_cams(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, K, h, w) -> (N, K, H, W) bilinear, renormalised so each class's max is 1 again."""
    cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
    return normalise_cams(cams)
