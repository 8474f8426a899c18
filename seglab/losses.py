"""Losses: cross-entropy with ignore and class weights, auxiliary-output composition, and
SegNet's median-frequency class balancing. Losses live outside the models (DESIGN.md)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from seglab.data.labels import IGNORE_INDEX
from seglab.losses_extra import check_terms, combined_loss
from seglab.losses_ohem import ohem_cross_entropy
from seglab.losses_unet import BorderWeightedCrossEntropy
from seglab.losses_weak import check_gated_crf, check_relax, gated_crf_loss, relaxed_boundary_loss


def class_pixel_counts(masks, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: pixels of that class, and pixels of the images that contain it.

    `masks` yields (H, W) integer arrays; 255 is skipped.
    """
    pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for mask in masks:
        mask = np.asarray(mask)
        valid = mask[mask != IGNORE_INDEX]
        counts = np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]
        pixels += counts
        image_pixels += np.where(counts > 0, valid.size, 0)
    return pixels, image_pixels


def median_frequency_weights(pixels: np.ndarray, image_pixels: np.ndarray) -> np.ndarray:
    """SegNet's a_c = median(freq) / freq(c), freq(c) = pixels of c / pixels of images with c.

    Classes that never occur get weight 0 (nothing to balance).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        freq = np.where(image_pixels > 0, pixels / np.maximum(image_pixels, 1), np.nan)
    median = np.nanmedian(freq)
    return np.where(freq > 0, median / freq, 0.0)


def dataset_median_frequency_weights(dataset, num_classes: int) -> np.ndarray:
    masks = (
        dataset.load(i)[1] for i in tqdm(range(len(dataset)), desc="class frequencies", leave=False)
    )
    return median_frequency_weights(*class_pixel_counts(masks, num_classes))


class SegmentationLoss(torch.nn.Module):
    """Cross-entropy (ignore 255, optional class weights) on the main output plus weighted
    auxiliary outputs: loss = CE(out) + sum_i aux_weights[i] * CE(aux[i]).

    Accepts a logits tensor or the training-mode dict {"out": ..., "aux": [...]}; outputs at a
    lower resolution than the target (e.g. DeepLab v1's stride-8 loss) are compared with a
    nearest-downsampled target rather than upsampled.
    """

    def __init__(
        self,
        class_weights: Sequence[float] | None = None,
        aux_weights: Sequence[float] = (),
        ignore_index: int = IGNORE_INDEX,
        ohem: dict[str, float] | None = None,
        se_weight: float | None = None,
        terms: dict[str, float] | None = None,
        gated_crf: dict | None = None,
        relax: dict | None = None,
    ) -> None:
        """ohem: {thresh, min_kept}: every CE term becomes BiSeNet's OHEM (losses_ohem.py).
        se_weight: weight of the "se" output's BCE against the classes present (EncNet).
        terms: e.g. {ce: 1.0, dice: 0.5}, the loss of every output (losses_extra.py); None: CE.
        gated_crf: {weight, radius, downscale, kernels}: + the Gated CRF loss of the main output
        (needs forward's images); relax: {border, strict_classes}: boundary label relaxation
        instead of CE on every output (both seglab/losses_weak.py)."""
        super().__init__()
        self.gated_crf = None if gated_crf is None else check_gated_crf(gated_crf)
        self.relax = None if relax is None else check_relax(relax)
        self.terms = None if terms is None else check_terms(terms)
        self.se_weight = se_weight
        self.ohem = dict(ohem) if ohem else None
        weight = (
            None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        )
        self.register_buffer("class_weights", weight)
        self.aux_weights = list(aux_weights)
        self.ignore_index = ignore_index

    def cross_entropy(
        self, logits: torch.Tensor, target: torch.Tensor, pixel_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        if logits.shape[-2:] != target.shape[-2:]:
            size = logits.shape[-2:]
            target = F.interpolate(target[:, None].float(), size=size, mode="nearest")[:, 0].long()
            if pixel_weights is not None:
                pixel_weights = F.interpolate(pixel_weights[:, None], size=size, mode="nearest")[
                    :, 0
                ]
        if pixel_weights is not None:  # U-Net's w(x): the class term is already inside
            return BorderWeightedCrossEntropy(self.ignore_index)(logits, target, pixel_weights)
        if self.ohem is not None:
            return ohem_cross_entropy(
                logits,
                target,
                **self.ohem,
                weight=self.class_weights,
                ignore_index=self.ignore_index,
            )
        return F.cross_entropy(
            logits.float(), target, weight=self.class_weights, ignore_index=self.ignore_index
        )

    def pixel_loss(
        self, logits: torch.Tensor, target: torch.Tensor, pixel_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss of one output: CE, or the weighted loss.terms (each output alike)."""
        if self.relax is not None:
            small = F.interpolate(target[:, None].float(), size=logits.shape[-2:], mode="nearest")
            weights = self.class_weights
            return relaxed_boundary_loss(logits, small[:, 0].long(), **self.relax,
                                         class_weights=weights)  # fmt: skip
        if self.terms is None:
            return self.cross_entropy(logits, target, pixel_weights)
        small = target
        if logits.shape[-2:] != target.shape[-2:]:  # as cross_entropy: compare at its size
            small = F.interpolate(target[:, None].float(), size=logits.shape[-2:], mode="nearest")
            small = small[:, 0].long()
        ce = lambda: self.cross_entropy(logits, target, pixel_weights)  # noqa: E731
        return combined_loss(self.terms, logits, small, ce, self.ignore_index)

    def forward(
        self,
        outputs,
        target: torch.Tensor,
        pixel_weights: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """pixel_weights: optional (B, H, W) per-pixel weights (U-Net's border weights);
        images: the (B, C, H, W) model input, for the Gated CRF loss; valid: (B, H, W) bool,
        False where a crop padded the image (left out of the Gated CRF loss)."""
        main = outputs if isinstance(outputs, torch.Tensor) else outputs["out"]
        crf = 0.0 if self.gated_crf is None else self.gated_crf_term(main, images, valid)
        if isinstance(outputs, torch.Tensor):
            return self.pixel_loss(outputs, target, pixel_weights) + crf
        loss = self.pixel_loss(outputs["out"], target, pixel_weights) + crf
        aux = outputs.get("aux", [])
        if len(aux) != len(self.aux_weights):
            raise ValueError(f"{len(aux)} auxiliary outputs but {len(self.aux_weights)} weights")
        for weight, logits in zip(self.aux_weights, aux, strict=True):
            loss = loss + weight * self.pixel_loss(logits, target, pixel_weights)
        if "se" in outputs:
            if self.se_weight is None:
                raise ValueError('an "se" output but no se_weight (the model\'s se_weight)')
            loss = loss + self.se_weight * self.se_loss(outputs["se"], target)
        return loss

    def se_loss(self, se_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """EncNet's SE-loss: BCE of (B, K) logits against whether each class occurs in each
        image's (B, H, W) labels (ignored pixels count for no class)."""
        b, k = se_logits.shape
        labels = target.flatten(1).clamp(0, k)  # ignore (255) -> bin k, dropped below
        present = se_logits.new_zeros(b, k + 1).scatter_(1, labels, 1.0)[:, :k]
        return F.binary_cross_entropy_with_logits(se_logits.float(), present.float())

    def gated_crf_term(
        self, logits: torch.Tensor, images: torch.Tensor | None, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """weight * Gated CRF loss of softmax(logits), area-downscaled as configured; padded
        pixels (valid False) are neither source nor destination of a pair."""
        if images is None:
            raise ValueError("loss.gated_crf needs the input images: criterion(..., images=)")
        options = self.gated_crf
        h, w = logits.shape[-2:]
        size = (max(1, h // options["downscale"]), max(1, w // options["downscale"]))
        probs = F.adaptive_avg_pool2d(logits.float().softmax(1), size)
        mask = None if valid is None else valid[:, None].float()
        crf = gated_crf_loss(probs, images, options["kernels"], options["radius"], mask, mask)
        return options["weight"] * crf
