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

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seglab.data.labels import IGNORE_INDEX
from seglab.encoders import build_encoder
from seglab.encoders.vgg import VGG16


class CamBackbone(nn.Module):
    """The encoder of a CAM generator, cut after the stage whose map the CAM head reads.

    encoder "vgg16" (the papers' usual backbone) is seglab's VGG16 (seglab/encoders/vgg.py)
    built here: `width` scales its channels, `batch_norm` makes it VGG16-BN (from scratch, in a
    few hundred steps, plain VGG16 barely leaves the prior), and output_stride 4, 8, 16 or 32
    keeps the pools up to that stride at stride 2 and makes the later ones 3x3 stride 1 (the
    DeepLab form). The stages after `stage` are dropped, not computed and thrown away. Any
    other name is a timm encoder (seglab.encoders.build_encoder; width/batch_norm ignored).
    stage: which map feeds the head (-1 the last).
    (N, in_channels, H, W) -> (N, channels, H / stride, W / stride).
    """

    def __init__(self, in_channels: int = 3, encoder: str = "vgg16", width: int = 64,
                 output_stride: int = 8, stage: int = -1,
                 batch_norm: bool = False) -> None:  # fmt: skip
        super().__init__()
        if encoder != "vgg16":
            self.encoder = build_encoder(encoder, in_channels, output_stride, width=width)
            self.stage, self.channels = stage, self.encoder.channels[stage]
            self.stride = self.encoder.strides[stage]
            return
        if output_stride not in (4, 8, 16, 32):
            raise ValueError(f"output_stride must be 4, 8, 16 or 32, got {output_stride}")
        pools = [(3, 2 if 2 ** (i + 1) <= output_stride else 1, 1) for i in range(5)]
        self.encoder = VGG16(in_channels, width, batch_norm, pools=pools, ceil_mode=False,
                             conv5_dilation=2 if output_stride <= 8 else 1)  # fmt: skip
        self.stage = range(5)[stage]
        for dropped in range(self.stage + 1, 5):
            for name in self.encoder.conv_names[dropped]:
                delattr(self.encoder, name)
            delattr(self.encoder, f"pool{dropped + 1}")
        self.encoder.conv_names = self.encoder.conv_names[: self.stage + 1]
        self.channels = self.encoder.channels[self.stage]
        self.stride = self.encoder.strides[self.stage]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if isinstance(self.encoder, VGG16):
            return self.encoder(images)[-1]  # its forward runs the stages that are left
        return self.encoder(images)[self.stage]


POOLINGS = ("gap", "lse", "gmp")


def pool_scores(scores: torch.Tensor, pooling: str = "gap", r: float = 5.0) -> torch.Tensor:
    """(N, K, h, w) score maps -> (N, K) image scores.

    gap: the mean (the CAM papers' global average pooling, which spreads the gradient over
    the whole object); gmp: the max (only the most discriminative location learns); lse:
    (1/r) log mean exp(r x) (Pinheiro & Collobert, CVPR 2015), between the two: the mean as
    r -> 0, the max as r -> inf."""
    if pooling == "gap":
        return scores.mean(dim=(2, 3))
    if pooling == "gmp":
        return scores.amax(dim=(2, 3))
    if pooling == "lse":
        flat = scores.flatten(2)
        return (torch.logsumexp(r * flat, dim=2) - math.log(flat.shape[2])) / r
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")


def tag_loss(score_maps: list[torch.Tensor], tags: torch.Tensor, pooling: str = "gap",
             r: float = 5.0) -> torch.Tensor:  # fmt: skip
    """Sum over branches of the multi-label BCE of each branch's pooled scores.

    score_maps: list of (N, K, h, w); tags: (N, K) in {0, 1}."""
    return sum(
        F.binary_cross_entropy_with_logits(pool_scores(scores, pooling, r), tags)
        for scores in score_maps
    )


def tag_f1(predicted: torch.Tensor, tags: torch.Tensor) -> dict:
    """How well a CAM generator's classifier knows the tags: predicted, tags (N, K) in {0, 1}
    -> {"f1": K per-class F1 = 2 TP / (2 TP + FP + FN) (1.0 for a class neither predicted nor
    present), "exact_match": the fraction of images with all K right}."""
    predicted, tags = predicted.bool(), tags.bool()
    tp = (predicted & tags).sum(0).double()
    wrong = (predicted ^ tags).sum(0).double()  # FP + FN
    f1 = torch.where(tp + wrong > 0, 2 * tp / (2 * tp + wrong).clamp(min=1), torch.ones_like(tp))
    return {"f1": f1.tolist(), "exact_match": (predicted == tags).all(1).double().mean().item()}


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
