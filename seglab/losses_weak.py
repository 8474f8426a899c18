"""Losses for weak labels and soft borders: the Gated CRF loss and boundary label relaxation.

Gated CRF loss (Obukhov et al. 2019, arXiv 1906.04651; official code toshas/GatedCRFLoss,
models/model_loss_semseg_gatedcrf.py). With p = softmax probabilities (N, C, h, w) at the loss
resolution and the kernel between pixels i != j with |x_i - x_j|, |y_i - y_j| <= radius

    K_ij = sum_k w_k exp(-1/2 |f_i^k - f_j^k|^2),  f^k = concat over modalities m of (m / sigma_m)

(m = xy: the pixel grid at the loss resolution; rgb: the model's input image area-averaged
to that resolution), gated by the valid-pixel masks, K_ij <- K_ij m_src(j) m_dst(i),

    L = 1/denom  sum_i sum_{j in window(i), j != i}  K_ij (1 - <p_i, p_j>)     (Potts)

denom = sum m_dst, else sum m_src, else N h w. Trained as partial cross-entropy on the
annotated pixels (255 elsewhere: SegmentationLoss's CE) plus weight * L. Official defaults
(utils/config.py of that code): kernels [{weight: 1, xy: 6, rgb: 0.1}] (one RGBXY kernel; add
{weight: ..., xy: 6} for an XY kernel, as its docstring's 0.9 / 0.1 example), radius 5, weight
0.1; the loss is applied to the network's stride-4 output ("low"), so downscale 4 here. rgb is
the normalised (zero-mean, unit-variance) image there, as seglab's model input.

    loss:
      gated_crf: {weight: 0.1, radius: 5, downscale: 4, kernels: [{weight: 1, xy: 6, rgb: 0.1}]}

Boundary label relaxation (Zhu et al., CVPR 2019; official code NVIDIA/semantic-segmentation
branch sdcnet, loss.py ImgWtLossSoftNLL and transforms/transforms.py
RelaxedBoundaryLossToTensor). N(i) = the classes of the (2b+1)^2 window around pixel i
(b = border, official BORDER_WINDOW = 1: 3x3; outside the image counts as void); pixels whose
own class is one of strict_classes keep N(i) = {their class} (the official STRICTBORDERCLASS,
Cityscapes: thin classes 5,6,7,11,12,17,18). Per pixel

    l_i = -log sum_{c in N(i)} p_c(i)

and as the official code, an ignored (255) pixel next to labelled ones is relaxed towards
their classes; a pixel whose window is all void is left out. The loss is the mean over the
batch's remaining pixels (the official: per image, sum / (pixels + 1), summed over images).
Class weights (loss.class_weights, e.g. median_frequency) weigh pixel i by the mean of w_c
over N(i), as the official (1/|N|) sum_c w_c; its per-image weights 1 + (1 - hist) are not
taken here.

    loss:
      relax: {border: 1, strict_classes: []}    # replaces CE on every output
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from seglab.data.labels import IGNORE_INDEX
from seglab.errors import SeglabError

GATED_CRF_DEFAULTS = {
    "weight": 0.1,
    "radius": 5,
    "downscale": 4,
    "kernels": [{"weight": 1.0, "xy": 6.0, "rgb": 0.1}],
}
RELAX_DEFAULTS = {"border": 1, "strict_classes": []}


def check_gated_crf(options: dict) -> dict:
    """loss.gated_crf filled with the official defaults; one SeglabError line if wrong."""
    unknown = set(options) - set(GATED_CRF_DEFAULTS)
    if unknown:
        raise SeglabError(
            f"loss.gated_crf: unknown key {sorted(unknown)[0]!r}; give any of "
            f"{', '.join(GATED_CRF_DEFAULTS)}"
        )
    merged = {**GATED_CRF_DEFAULTS, **options}
    for kernel in merged["kernels"]:
        if "weight" not in kernel or set(kernel) - {"weight", "xy", "rgb"} or len(kernel) < 2:
            raise SeglabError(
                f"loss.gated_crf.kernels: {kernel} must have a weight and sigmas of xy and/or "
                "rgb, e.g. {weight: 1, xy: 6, rgb: 0.1}"
            )
    if int(merged["radius"]) < 1 or int(merged["downscale"]) < 1:
        raise SeglabError("loss.gated_crf: radius and downscale must be integers >= 1")
    return merged


def _windows(features: torch.Tensor, radius: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, (2r+1)^2, H, W): each pixel's window, zeros outside the image."""
    n, c, h, w = features.shape
    return F.unfold(features, 2 * radius + 1, padding=radius).view(n, c, -1, h, w)


def _pixel_grid(n: int, h: int, w: int, device) -> torch.Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device),
        torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return torch.stack([xs, ys])[None].expand(n, 2, h, w)


def gated_crf_kernel(
    kernels: Sequence[dict], radius: int, image: torch.Tensor | None, size: tuple[int, int]
) -> torch.Tensor:
    """(N, 1, (2r+1)^2, h, w) K between each pixel and its window, 0 for itself.

    Pairs reaching outside the image get 0 from the caller's gating (the unfolded
    probabilities there are 0, and the source validity mask is 0 too)."""
    h, w = size
    n = image.shape[0]
    total = None
    for kernel in kernels:
        features = []
        if "xy" in kernel:
            features.append(_pixel_grid(n, h, w, image.device) / kernel["xy"])
        if "rgb" in kernel:
            rgb = F.adaptive_avg_pool2d(image[:, :3].float(), (h, w))
            features.append(rgb / kernel["rgb"])
        features = torch.cat(features, 1)
        difference = _windows(features, radius) - features[:, :, None]
        k = kernel["weight"] * torch.exp(-0.5 * (difference**2).sum(1, keepdim=True))
        total = k if total is None else total + k
    total = total.clone()
    total[:, :, (2 * radius + 1) ** 2 // 2] = 0  # no pair of a pixel with itself
    return total


def valid_gate(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, H, W) float validity at the loss resolution: 1 only where fully valid."""
    mask = F.adaptive_avg_pool2d(mask.float(), size)
    return torch.where(mask >= 1.0, 1.0, 0.0)  # also NaN -> 0


def gated_crf_loss(
    probs: torch.Tensor,
    image: torch.Tensor,
    kernels: Sequence[dict] = GATED_CRF_DEFAULTS["kernels"],
    radius: int = 5,
    mask_src: torch.Tensor | None = None,
    mask_dst: torch.Tensor | None = None,
) -> torch.Tensor:
    """The Potts Gated CRF loss of (N, C, h, w) probabilities; image (N, 3+, H, W) at any
    multiple of (h, w); masks (N, 1, H, W), 1 = valid. Pairs leaving the image count 0."""
    n, c, h, w = probs.shape
    kernel = gated_crf_kernel(kernels, radius, image, (h, w))
    inside = _windows(probs.new_ones(n, 1, h, w), radius)  # the window within the image
    kernel = kernel * inside
    denom = torch.tensor(float(n * h * w), device=probs.device)
    if mask_src is not None:
        source = valid_gate(mask_src, (h, w))
        denom = source.sum().clamp(min=1)
        kernel = kernel * _windows(source, radius)
    if mask_dst is not None:
        destination = valid_gate(mask_dst, (h, w))
        denom = destination.sum().clamp(min=1)
        kernel = kernel * destination[:, :, None]
    neighbours = (kernel * _windows(probs.float(), radius)).sum(2)  # sum_j K_ij p_j
    return (kernel.sum() - (neighbours * probs.float()).sum()) / denom


def relaxed_targets(
    target: torch.Tensor,
    num_classes: int,
    border: int = 1,
    strict_classes: Sequence[int] = (),
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """(N, H, W) labels -> (N, C, H, W) bool N(i): the classes within `border` pixels."""
    void = num_classes
    labels = torch.where(target == ignore_index, void, target.long()).clamp(max=void)
    one_hot = F.one_hot(labels, void + 1).permute(0, 3, 1, 2).float()
    padded = F.pad(one_hot, [border] * 4)
    padded[:, void][padded[:, :void].sum(1) == 0] = 1  # outside the image is void
    window = F.max_pool2d(padded, 2 * border + 1, stride=1)[:, :void] > 0
    if strict_classes:
        strict = torch.isin(labels, torch.as_tensor(list(strict_classes), device=labels.device))
        window = torch.where(strict[:, None], one_hot[:, :void] > 0, window)
    return window


def relaxed_boundary_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    border: int = 1,
    strict_classes: Sequence[int] = (),
    ignore_index: int = IGNORE_INDEX,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over pixels with any class in their window of -log sum_{c in N(i)} p_c(i);
    with (C,) class_weights each pixel weighs mean_{c in N(i)} w_c (the official
    (1/|N|) sum_c w_c) and the mean is weighted (border 0: F.cross_entropy's weighted CE)."""
    allowed = relaxed_targets(target, logits.shape[1], border, strict_classes, ignore_index)
    logits = logits.float()
    kept = allowed.any(1)
    # log sum_{c in N} p_c = logsumexp over N of the logits - logsumexp over all (no underflow)
    inside = torch.logsumexp(logits.masked_fill(~allowed, float("-inf")), 1)
    losses = torch.logsumexp(logits, 1) - inside
    if not kept.any():
        return logits.sum() * 0.0
    if class_weights is None:
        return losses[kept].mean()
    window = allowed.float()
    weights = (window * class_weights.view(1, -1, 1, 1)).sum(1) / window.sum(1).clamp(min=1)
    return (losses * weights)[kept].sum() / weights[kept].sum().clamp(min=1e-12)


def check_relax(options: dict) -> dict:
    unknown = set(options) - set(RELAX_DEFAULTS)
    if unknown:
        raise SeglabError(
            f"loss.relax: unknown key {sorted(unknown)[0]!r}; give border and/or strict_classes"
        )
    merged = {**RELAX_DEFAULTS, **options}
    if int(merged["border"]) < 0:
        raise SeglabError(f"loss.relax.border {merged['border']} must be an integer >= 0")
    return merged
