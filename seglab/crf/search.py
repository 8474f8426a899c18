"""Grid search of the dense CRF's appearance kernel on held-out images, by mean IoU.

DeepLab (Chen et al., ICLR 2015, section 4.1) chose w1, theta_alpha and theta_beta this way on
a subset of PASCAL VOC val, keeping w2 = 3 and theta_gamma = 3 fixed; this is that procedure.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import Tensor

from seglab.crf.dense import dense_crf_labels
from seglab.crf.params import DenseCRFParams, resolve_params
from seglab.metrics import ConfusionMatrix

__all__ = ["grid_search"]


def grid_search(
    probs_list: Sequence[Tensor],
    images_list: Sequence[Tensor],
    labels_list: Sequence[Tensor],
    num_classes: int,
    w1_values: Sequence[float],
    alpha_values: Sequence[float],
    beta_values: Sequence[float],
    base_preset: str | DenseCRFParams = "deeplab-largefov",
) -> list[tuple[DenseCRFParams, float]]:
    """Mean IoU of dense_crf for every (w1, theta_alpha, theta_beta), best first.

    Args:
        probs_list: per image, (K, H, W) or (1, K, H, W) class probabilities.
        images_list: per image, (3, H, W) or (1, 3, H, W) RGB in 0..255.
        labels_list: per image, (H, W) or (1, H, W) ground truth; 255 is ignored.
        num_classes: K.
        w1_values, alpha_values, beta_values: the grid.
        base_preset: where the other parameters (w2, theta_gamma, iterations) come from.

    Returns:
        (params, mean IoU over the whole set) for each grid point, highest mean IoU first.
    """
    base = resolve_params(base_preset)
    results = []
    for w1, alpha, beta in itertools.product(w1_values, alpha_values, beta_values):
        params = resolve_params(base, w1=w1, theta_alpha=alpha, theta_beta=beta)
        confusion = ConfusionMatrix(num_classes)
        for probs, image, labels in zip(probs_list, images_list, labels_list, strict=True):
            probs = probs if probs.ndim == 4 else probs[None]
            image = image if image.ndim == 4 else image[None]
            labels = labels if labels.ndim == 3 else labels[None]
            prediction = dense_crf_labels(probs, image, preset=params)
            confusion.update(prediction.cpu(), labels.cpu())
        results.append((params, float(confusion.compute()["mean_iou"])))
    return sorted(results, key=lambda result: -result[1])
