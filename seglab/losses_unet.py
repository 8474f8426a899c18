"""U-Net's border-weighted cross-entropy (Ronneberger, Fischer, Brox, MICCAI 2015).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

w_c balances the class frequencies; d1 and d2 are the distances to the nearest and the second
nearest object (cell). The second term is large in the thin gaps between touching objects,
which forces the network to learn the separating borders. Weight maps are computed from
instance masks, or from semantic masks whose objects are taken to be the connected components
of each class. Pure torch (no scipy): exact Euclidean distances by chunked pairwise distances to
each object's boundary pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seglab.data.labels import IGNORE_INDEX

ArrayLike = np.ndarray | torch.Tensor


def connected_components(labels: ArrayLike, background: int = 0) -> np.ndarray:
    """4-connected regions of equal class, numbered 1..N; background and 255 are 0.

    (H, W) class map -> (H, W) int64 instance map. Each foreground pixel starts with its own
    number and repeatedly takes the largest number among its same-class 4-neighbours until
    nothing changes; the survivors are then renumbered consecutively in raster order.
    """
    labels = torch.as_tensor(np.asarray(labels)).long()
    h, w = labels.shape
    foreground = (labels != background) & (labels != IGNORE_INDEX)
    ids = torch.where(foreground, torch.arange(1, h * w + 1).view(h, w), 0)
    # same[k]: the neighbour in direction k has the same class (and is inside the image)
    padded = F.pad(labels[None, None].float(), (1, 1, 1, 1), value=-1)[0, 0]
    shifts = ((0, 1), (2, 1), (1, 0), (1, 2))
    same = [padded[dy : dy + h, dx : dx + w] == labels for dy, dx in shifts]
    while True:
        padded_ids = F.pad(ids[None, None], (1, 1, 1, 1))[0, 0]
        best = ids
        for (dy, dx), ok in zip(shifts, same, strict=True):
            best = torch.maximum(best, torch.where(ok, padded_ids[dy : dy + h, dx : dx + w], 0))
        best = torch.where(foreground, best, 0)
        if torch.equal(best, ids):
            break
        ids = best
    _, first = np.unique(ids.numpy().ravel(), return_index=True)
    order = ids.numpy().ravel()[np.sort(first)]  # raster order of first appearance
    lookup = {old: new for new, old in enumerate(order[order > 0], start=1)}
    lookup[0] = 0
    return np.vectorize(lookup.__getitem__, otypes=[np.int64])(ids.numpy())


def nearest_object_distances(
    instances: ArrayLike, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """d1, d2: per pixel, Euclidean distances to the nearest and second nearest object.

    (H, W) instance map (0 = no object) -> two (H, W) float32 maps. The distance to an object
    is 0 on its own pixels and otherwise the distance to its closest pixel, which is always one
    of its boundary pixels (a 4-neighbour outside the object), so only those are compared.
    With fewer than two objects the missing distances are inf.
    """
    instances = torch.as_tensor(np.asarray(instances)).long()
    h, w = instances.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack([ys, xs], -1).view(-1, 2).float()
    d1 = torch.full((h * w,), float("inf"))
    d2 = torch.full((h * w,), float("inf"))
    padded = F.pad(instances[None, None].float(), (1, 1, 1, 1), value=-1)[0, 0]
    for index in instances.unique().tolist():
        if index == 0:
            continue
        inside = instances == index
        neighbours = [
            padded[dy : dy + h, dx : dx + w] for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2))
        ]
        boundary = inside & torch.stack([n != index for n in neighbours]).any(0)
        points = coords[boundary.view(-1)]
        distance = torch.empty(h * w)
        for start in range(0, h * w, chunk):
            distance[start : start + chunk] = torch.cdist(
                coords[start : start + chunk], points
            ).amin(1)
        distance[inside.view(-1)] = 0.0
        d2 = torch.minimum(d2, torch.maximum(d1, distance))  # keep the two smallest
        d1 = torch.minimum(d1, distance)
    return d1.view(h, w).numpy(), d2.view(h, w).numpy()


def unet_weight_map(
    instances: ArrayLike,
    labels: ArrayLike | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: Sequence[float] | None = None,
    background_only: bool = True,
) -> np.ndarray:
    """U-Net's per-pixel loss weight w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / (2 sigma^2)).

    Args:
        instances: (H, W) object numbers, 0 for background.
        labels: (H, W) class map for w_c; by default object pixels are class 1, the rest 0.
        class_weights: w_c per class; by default balanced on this mask: N / (K n_c) for the
            K classes present (n_c pixels of class c, N valid pixels), 0 on ignored pixels.
        background_only: add the border term only on background pixels, as in the paper's
            Fig. 3d (inside an object d1 is 0 and the term would weight its whole rim near a
            neighbour); False applies the formula everywhere.
    Returns an (H, W) float32 map.
    """
    instances = np.asarray(instances)
    labels = (instances > 0).astype(np.int64) if labels is None else np.asarray(labels)
    valid = labels != IGNORE_INDEX
    if class_weights is None:
        classes, counts = np.unique(labels[valid], return_counts=True)
        table = np.zeros(int(classes.max(initial=0)) + 1)
        table[classes] = valid.sum() / (len(classes) * counts)
    else:
        table = np.asarray(class_weights, dtype=np.float64)
    weights = np.where(valid, table[np.where(valid, labels, 0)], 0.0)
    d1, d2 = nearest_object_distances(instances)
    border = w0 * np.exp(-((d1.astype(np.float64) + d2) ** 2) / (2 * sigma**2))
    if background_only:
        border = np.where(instances == 0, border, 0.0)
    return (weights + np.where(valid, border, 0.0)).astype(np.float32)


def border_weights_from_labels(
    labels: torch.Tensor,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """(B, H, W) class maps -> (B, H, W) U-Net weights, objects = connected components."""
    maps = [
        unet_weight_map(connected_components(mask), mask, w0, sigma, class_weights)
        for mask in labels.cpu().numpy()
    ]
    return torch.from_numpy(np.stack(maps)).to(labels.device)


class BorderWeightedCrossEntropy(nn.Module):
    """Cross-entropy weighted per pixel: sum_x w(x) CE(x) / (number of valid pixels).

    forward(logits (B, K, H, W), target (B, H, W), weights (B, H, W)) -> scalar. Pixels with
    the ignore label count neither in the sum nor in the normaliser. The paper writes the
    energy as a plain weighted sum; dividing by the pixel count only rescales the lr.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        ce = F.cross_entropy(
            logits.float(), target, ignore_index=self.ignore_index, reduction="none"
        )
        valid = target != self.ignore_index
        return (ce * weights * valid).sum() / valid.sum().clamp(min=1)
