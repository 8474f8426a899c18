"""Exact O(N^2) dense-CRF mean field, written straight from the paper's formulas.

Kraehenbuehl, Koltun, NIPS 2011, eq. (1)-(3) with densecrf's symmetric normalisation. It forms
the full (N, N) kernel matrices, so it is only for small images: seglab's tests use it as the
independent reference for the lattice (dense.py) and the windowed convolution (convcrf.py).
pydensecrf_labels runs Kraehenbuehl's own densecrf (pydensecrf2, an optional test extra) on the
same inputs, for the agreement tests and the speed benchmark.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from seglab.crf.params import DenseCRFParams

__all__ = ["gaussian_filter_bruteforce", "mean_field_bruteforce", "pydensecrf_labels"]


def gaussian_filter_bruteforce(features: Tensor, values: Tensor) -> Tensor:
    """Exact sum_j exp(-|fi - fj|^2 / 2) values[j] for features (N, d), values (N, K)."""
    features = features.double()
    weights = torch.exp(-0.5 * torch.cdist(features, features).square())
    return (weights @ values.double()).to(values.dtype)


def mean_field_bruteforce(
    probabilities: Tensor, image: Tensor, params: DenseCRFParams, window: int | None = None
) -> Tensor:
    """Q (K, H, W) from probabilities (K, H, W) and an image (3, H, W) in 0..255, Potts model.

    window: keep only pairs at most window // 2 apart in x and in y (ConvCRF's truncation).
    """
    _, h, w = probabilities.shape
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    position = torch.stack([x.reshape(-1), y.reshape(-1)], 1).double()
    colour = image.double().reshape(3, -1).T
    mask = torch.ones(h * w, h * w, dtype=torch.float64)
    if window is not None:
        mask = ((position[:, None, :] - position[None, :, :]).abs().amax(2) <= window // 2).double()
    pairwise = torch.zeros(h * w, h * w, dtype=torch.float64)
    for weight, distance in [
        (
            params.w1,
            (position[:, None] - position[None]).square().sum(2) / params.theta_alpha**2
            + (colour[:, None] - colour[None]).square().sum(2) / params.theta_beta**2,
        ),
        (params.w2, (position[:, None] - position[None]).square().sum(2) / params.theta_gamma**2),
    ]:
        kernel = torch.exp(-0.5 * distance) * mask
        norm = kernel.sum(1).rsqrt()
        pairwise += weight * norm[:, None] * kernel * norm[None, :]
    unary = -torch.log(probabilities.double().clamp(min=1e-5)).reshape(-1, h * w).T
    q = torch.softmax(-unary, 1)
    for _ in range(params.iterations):
        # Potts: the cost of label l is the kernel-weighted mass of the other labels.
        energy = unary + pairwise @ (1.0 - q)
        q = torch.softmax(-energy, 1)
    return q.T.reshape(-1, h, w).float()


def pydensecrf_labels(probabilities: Tensor, image: Tensor, params: DenseCRFParams) -> np.ndarray:
    """(H, W) labels of pydensecrf's DenseCRF2D for probabilities (K, H, W) and a uint8 image
    (3, H, W): unary -log p clipped at 1e-5 as seglab's, the smoothness then the appearance
    kernel with Potts weights w2 and w1. Needs pydensecrf2 installed."""
    import pydensecrf.densecrf as dcrf

    k, h, w = probabilities.shape
    crf = dcrf.DenseCRF2D(w, h, k)
    unary = -np.log(np.clip(probabilities.numpy(), 1e-5, 1.0)).reshape(k, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.theta_gamma, compat=params.w2)
    rgb = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    crf.addPairwiseBilateral(
        sxy=params.theta_alpha, srgb=params.theta_beta, rgbim=rgb, compat=params.w1
    )
    return np.array(crf.inference(params.iterations)).reshape(k, h, w).argmax(0)
