"""ConvCRF: the fully connected CRF truncated to a local window, as a convolution.

Teichmann, Cipolla, "Convolutional CRFs for Semantic Segmentation", BMVC 2019 (arXiv 2018).

The pairwise kernel of dense.py (appearance + smoothness, Potts) is kept only between pixels
at most k // 2 apart in x and in y, so each message is a k x k locally varying convolution,
computed exactly (no lattice). With `downsample=s` (the paper's blur, 4 in its experiments)
the features and Q are average-pooled by s before the window is applied, so one k x k window
covers s*k pixels, and the message is upsampled bilinearly back to (H, W).

Where seglab differs from the reference ConvCRF: the update, normalisation and weights are
dense.py's (densecrf's symmetric normalisation per kernel, w1 and w2 from the same presets,
unary -log P), so that conv_crf with a window covering the image approaches dense_crf; the
reference merges the kernels unnormalised and adds a learned unary weight. The message is a
sum over the k*k offsets of shifted products, which needs no (B, K*k*k, H, W) unfold buffer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from seglab.crf.dense import (
    crf_images,
    pixel_features,
    symmetric_compatibility,
    unary_from_scores,
)
from seglab.crf.params import DenseCRFParams, resolve_params
from seglab.errors import SeglabError

__all__ = ["conv_crf", "local_kernel_weights"]


def _pool(x: Tensor, factor: int) -> Tensor:
    """Average-pool (C, H, W) by `factor` to (C, ceil(H/f), ceil(W/f)), padding centred."""
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    pad = (math.ceil((-h % factor) / 2), math.ceil((-w % factor) / 2))
    return F.avg_pool2d(x[None], factor, padding=pad, count_include_pad=False)[0]


def _unpool(x: Tensor, factor: int, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of (C, h, w) by `factor`, cropped to `size` as _pool padded it."""
    h, w = size
    pad = (math.ceil((-h % factor) / 2), math.ceil((-w % factor) / 2))
    up = F.interpolate(x[None], scale_factor=factor, mode="bilinear", align_corners=False)[0]
    return up[:, pad[0] : pad[0] + h, pad[1] : pad[1] + w]


def _shifts(span: int):
    """The (dy, dx) offsets of a (2 span + 1)^2 window, row by row."""
    for dy in range(-span, span + 1):
        for dx in range(-span, span + 1):
            yield dy, dx


def _gather_window(x: Tensor, span: int) -> Tensor:
    """(C, h, w) -> (k*k, C, h, w): x at every offset of the window, zero outside the image."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (span, span, span, span))
    return torch.stack(
        [
            padded[:, span + dy : span + dy + h, span + dx : span + dx + w]
            for dy, dx in _shifts(span)
        ]
    )


def local_kernel_weights(features: Tensor, span: int) -> Tensor:
    """exp(-|f_i - f_{i+o}|^2 / 2) for every offset o of the window: (k*k, h, w).

    features: (d, h, w), already divided by the kernel's standard deviations. Offsets that
    fall outside the image get weight 0.
    """
    h, w = features.shape[-2:]
    # Padding with +inf puts outside neighbours infinitely far: exp(-inf) = 0. One offset at a
    # time keeps memory at the (k*k, h, w) result instead of (k*k, d, h, w).
    padded = F.pad(features, (span, span, span, span), value=float("inf"))
    weights = torch.empty((2 * span + 1) ** 2, h, w, device=features.device)
    for o, (dy, dx) in enumerate(_shifts(span)):
        neighbour = padded[:, span + dy : span + dy + h, span + dx : span + dx + w]
        weights[o] = torch.exp(-0.5 * (neighbour - features).square().sum(0))
    return weights


def _message_weights(image: Tensor, params: DenseCRFParams, span: int, factor: int) -> Tensor:
    """(k*k, h, w) weights of the combined, normalised kernel on the pooled grid.

    For each kernel m: w_m n_m(i) k_m(i, i+o) n_m(i+o) with n_m = (sum_o k_m)^-1/2, densecrf's
    symmetric normalisation restricted to the window.
    """
    _, height, width = image.shape
    total = None
    kernels = [
        (params.w1, params.theta_alpha, params.theta_beta),
        (params.w2, params.theta_gamma, None),
    ]
    for weight, theta_position, theta_colour in kernels:
        if weight == 0:
            continue
        features = pixel_features(image, theta_position, theta_colour)
        features = _pool(features.T.reshape(-1, height, width), factor)
        kernel = local_kernel_weights(features, span)
        norm = torch.rsqrt(kernel.sum(0, keepdim=True) + 1e-20)
        term = weight * norm * kernel * _gather_window(norm, span)[:, 0]
        total = term if total is None else total + term
    if total is None:
        h, w = _pool(image[:1].float(), factor).shape[-2:]
        total = torch.zeros(1, h, w, device=image.device)
    return total


def conv_crf(
    scores: Tensor,
    images: Tensor,
    preset: str | DenseCRFParams = "deeplab-largefov",
    iterations: int | None = None,
    logits: bool = False,
    kernel_size: int = 11,
    downsample: int = 1,
    compatibility: Tensor | None = None,
    **overrides: float,
) -> Tensor:
    """ConvCRF (Teichmann & Cipolla 2018): the dense CRF limited to a k x k window.

    Args:
        scores: (B, K, H, W) class probabilities, or logits with `logits=True`.
        images: (B, 3, H, W) RGB read as dense_crf reads them (uint8 0..255, float 0..1,
            uint16 0..65535; anything else is a one-line SeglabError).
        preset, iterations, logits, compatibility, **overrides: as in dense_crf.
        kernel_size: odd window size k (11 in the paper).
        downsample: pool features and Q by this factor before filtering (the paper's blur).

    Returns:
        (B, K, H, W) float32 marginals Q.
    """
    images = crf_images(scores, images)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise SeglabError(f"ConvCRF kernel_size must be odd and >= 1, got {kernel_size}")
    if downsample < 1:
        raise SeglabError(f"ConvCRF downsample must be >= 1, got {downsample}")
    params = resolve_params(preset, iterations, **overrides)
    b, k, h, w = scores.shape
    span = kernel_size // 2
    unary = unary_from_scores(scores, logits)
    compatibility = symmetric_compatibility(compatibility, k, unary)

    out = torch.empty_like(unary)
    for i in range(b):
        weights = _message_weights(images[i], params, span, downsample)  # (k*k, h', w')
        q = torch.softmax(-unary[i], dim=0)
        for _ in range(params.iterations):
            pooled = F.pad(_pool(q, downsample), (span, span, span, span))
            low_h, low_w = weights.shape[-2:]
            message = torch.zeros(k, low_h, low_w, device=q.device)
            for o, (dy, dx) in enumerate(_shifts(span)):
                window = pooled[:, span + dy : span + dy + low_h, span + dx : span + dx + low_w]
                message.addcmul_(weights[o], window)
            if downsample > 1:
                message = _unpool(message, downsample, (h, w))
            if compatibility is None:
                negative_energy = -unary[i] + message
            else:
                negative_energy = -unary[i] - torch.einsum("lm,mhw->lhw", compatibility, message)
            q = torch.softmax(negative_energy, dim=0)
        out[i] = q
    return out
