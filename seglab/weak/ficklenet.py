"""FickleNet: Lee et al., "FickleNet: Weakly and Semi-Supervised Semantic Image Segmentation
Using Stochastic Inference", CVPR 2019 (arXiv 1902.10421).

No official code exists (MODELS_2019.md section 9). What is followed (abstract and the reviews
quoted there): hidden units are selected at random by dropout at each sliding-window position;
the feature map is expanded so that the k x k windows do not overlap, dropout is applied to the
expanded map, and a k x k convolution with stride k classifies (each window's output is one
location's class scores); at inference many maps from random selections are aggregated.
Design choices (not found in a source): each window's centre unit is kept (unverified, noted in
MODELS_2019.md), the dropout is inverted (kept units scaled by 1/(1-p)), the class score map
itself is the localisation map (CAM; the paper uses Grad-CAM), and the aggregation of the
normalised maps is their mean (sum, up to the final max-normalisation) or their max.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seglab.weak.cam import CamBackbone, normalise_cams, tag_loss


def expand_windows(features: torch.Tensor, k: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H*k, W*k): the k x k window around each location (zero padded)
    laid out side by side, so window (y, x) is rows y*k..y*k+k-1, columns x*k..x*k+k-1."""
    n, c, h, w = features.shape
    windows = F.unfold(features, k, padding=k // 2)  # (N, C*k*k, H*W)
    windows = windows.view(n, c, k, k, h, w).permute(0, 1, 4, 2, 5, 3)  # N C H k W k
    return windows.reshape(n, c, h * k, w * k)


def centre_mask(k: int, h: int, w: int, device=None) -> torch.Tensor:
    """(H*k, W*k) bool: the centre unit of every window of an expanded map."""
    one = torch.zeros(k, k, dtype=torch.bool, device=device)
    one[k // 2, k // 2] = True
    return one.repeat(h, w)


def window_dropout(
    expanded: torch.Tensor, p: float, k: int, keep_centre: bool = True, keep=None
) -> torch.Tensor:
    """Inverted dropout of the hidden units of an expanded (N, C, H*k, W*k) map.

    keep: an optional bool mask of the same shape (the units selected); None draws one with
    P(keep) = 1 - p. Kept units are scaled by 1/(1-p); window centres, when kept always, are
    not scaled. So E[output] = expanded for every unit."""
    if p == 0:
        return expanded
    if keep is None:
        keep = torch.rand_like(expanded) >= p
    scaled = expanded * keep / (1 - p)
    if keep_centre:
        h, w = expanded.shape[2] // k, expanded.shape[3] // k
        centre = centre_mask(k, h, w, expanded.device)
        scaled = torch.where(centre, expanded, scaled)
    return scaled


class FickleNet(nn.Module):
    """Encoder -> expanded k x k windows -> window dropout -> k x k stride-k class conv.

    Input (N, C, H, W) -> forward: [(N, K, H/os, W/os)] class score maps (a one-item list, the
    CAM-generator interface of seglab/weak/cam.py). Dropout is on in training and, for
    `cams`, at inference too (stochastic inference, `samples` draws aggregated).
    """

    def __init__(
        self,
        num_classes: int,
        kernel: int = 3,
        drop: float = 0.5,
        keep_centre: bool = True,
        samples: int = 20,
        aggregate: str = "mean",
        pooling: str = "gap",
        lse_r: float = 5.0,
        **backbone,
    ) -> None:
        super().__init__()
        if aggregate not in ("mean", "max"):
            raise ValueError(f"aggregate must be mean or max, got {aggregate!r}")
        self.num_classes, self.kernel, self.drop = num_classes, kernel, drop
        self.keep_centre, self.samples, self.aggregate = keep_centre, samples, aggregate
        self.pooling, self.lse_r = pooling, lse_r  # seglab.weak.cam.pool_scores
        self.backbone = CamBackbone(**backbone)  # in_channels, encoder, width, stride, stage
        self.classifier = nn.Conv2d(self.backbone.channels, num_classes, kernel, stride=kernel)

    def score_map(self, features: torch.Tensor, stochastic: bool) -> torch.Tensor:
        expanded = expand_windows(features, self.kernel)
        if stochastic:
            expanded = window_dropout(expanded, self.drop, self.kernel, self.keep_centre)
        return self.classifier(expanded)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.score_map(self.backbone(images), stochastic=self.training)]

    def loss(self, images: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        return tag_loss(self(images), tags, self.pooling, self.lse_r)

    @torch.no_grad()
    def cams(self, images: torch.Tensor) -> torch.Tensor:
        """(N, K, h, w): `samples` stochastic maps (features computed once), each
        max-normalised, aggregated by mean or max, normalised again."""
        features = self.backbone(images)
        maps = torch.stack(
            [normalise_cams(self.score_map(features, True)) for _ in range(self.samples)]
        )
        combined = maps.mean(0) if self.aggregate == "mean" else maps.amax(0)
        return normalise_cams(combined)
