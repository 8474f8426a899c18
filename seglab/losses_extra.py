"""Dice, focal and Lovasz-softmax losses, combinable with cross-entropy (`loss.terms`).

    loss:
      terms: {ce: 1.0, dice: 0.5}   # loss = 1.0 * CE + 0.5 * Dice, on the main output and,
                                    # times each auxiliary weight, on every auxiliary output

Each term takes (B, K, H, W) logits and (B, H, W) int64 labels, 255 = ignore; ignored pixels
count for nothing in any term. Definitions (p = softmax(logits), g = one-hot labels, sums over
the batch's valid pixels):

    dice     1 - mean_c (2 sum p_c g_c + 1) / (sum p_c + sum g_c + 1)   (smoothed soft Dice,
             every class; a class absent from labels and predictions scores 1)
    focal    mean over valid pixels of -(1 - p_t)^gamma log p_t (Lin et al. 2017; gamma 2)
    lovasz   mean over the classes present in the labels of the Lovasz extension of the
             Jaccard loss on the sorted errors |g_c - p_c| (Berman et al. 2018, their
             lovasz_softmax with classes="present", per_image=False)

The CE term is SegmentationLoss's own (class weights, OHEM and border weights apply to it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from seglab.data.labels import IGNORE_INDEX
from seglab.errors import SeglabError

TERMS = ("ce", "dice", "focal", "lovasz")
FOCAL_GAMMA = 2.0  # Lin et al.'s best gamma


def check_terms(terms: dict) -> dict[str, float]:
    """loss.terms as {name: weight}; one SeglabError line for an unknown name or bad weight."""
    if not terms:
        raise SeglabError("loss.terms is empty; give at least one term, e.g. {ce: 1.0, dice: 0.5}")
    checked = {}
    for name, weight in terms.items():
        if name not in TERMS:
            raise SeglabError(f"loss.terms: unknown term {name!r}; choose from {', '.join(TERMS)}")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise SeglabError(f"loss.terms.{name}: weight {weight!r} is not a number >= 0")
        checked[name] = float(weight)
    if not any(checked.values()):
        raise SeglabError(f"loss.terms {terms}: every weight is 0; give one a positive weight")
    return checked


def _valid_probs(logits: torch.Tensor, target: torch.Tensor, ignore_index: int):
    """(N, K) softmax probabilities and (N,) labels of the valid pixels."""
    k = logits.shape[1]
    probs = logits.float().softmax(1).permute(0, 2, 3, 1).reshape(-1, k)
    labels = target.reshape(-1)
    valid = labels != ignore_index
    return probs[valid], labels[valid]


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Smoothed soft Dice loss (module docstring); () tensor."""
    probs, labels = _valid_probs(logits, target, ignore_index)
    onehot = F.one_hot(labels, probs.shape[1]).float()
    intersection = (probs * onehot).sum(0)
    dice = (2 * intersection + 1) / (probs.sum(0) + onehot.sum(0) + 1)
    return 1 - dice.mean()


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    gamma: float = FOCAL_GAMMA,
) -> torch.Tensor:
    """Focal loss averaged over valid pixels; () tensor (0 when every pixel is ignored)."""
    log_probs = F.log_softmax(logits.float(), 1)
    valid = target != ignore_index
    log_pt = log_probs.gather(1, target.clamp(0, logits.shape[1] - 1)[:, None])[:, 0][valid]
    per_pixel = -((1 - log_pt.exp()) ** gamma) * log_pt
    return per_pixel.sum() / valid.sum().clamp(min=1)


def lovasz_grad(sorted_truth: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. errors sorted descending
    (Berman et al., Alg. 1): J_i = 1 - (G - cumsum(g)_i) / (G + cumsum(1 - g)_i), diff'd."""
    total = sorted_truth.sum()
    intersection = total - sorted_truth.cumsum(0)
    union = total + (1 - sorted_truth).cumsum(0)
    jaccard = 1 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz_softmax_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Lovasz-softmax over the classes present in `target` (module docstring); () tensor."""
    probs, labels = _valid_probs(logits, target, ignore_index)
    losses = []
    for c in labels.unique():
        truth = (labels == c).float()
        errors = (truth - probs[:, c]).abs()
        errors_sorted, order = errors.sort(descending=True)
        losses.append(errors_sorted @ lovasz_grad(truth[order]))
    if not losses:  # every pixel ignored: nothing to learn, but keep the graph
        return logits.sum() * 0.0
    return torch.stack(losses).mean()


def combined_loss(
    terms: dict[str, float],
    logits: torch.Tensor,
    target: torch.Tensor,
    cross_entropy: Callable[[], torch.Tensor],
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """sum over `terms` of weight * term(logits, target); `cross_entropy()` gives the CE term
    (SegmentationLoss's, with its class weights), computed only when its weight is given."""
    others = {"dice": dice_loss, "focal": focal_loss, "lovasz": lovasz_softmax_loss}
    total = logits.new_zeros((), dtype=torch.float32)
    for name, weight in terms.items():
        if weight == 0:
            continue
        value = cross_entropy() if name == "ce" else others[name](logits, target, ignore_index)
        total = total + weight * value
    return total
