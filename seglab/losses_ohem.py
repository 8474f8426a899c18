"""Online hard example mining, BiSeNet's probability-threshold form (TorchSeg
`furnace/seg_opr/loss_opr.py::ProbOhemCrossEntropy2d`; shared/MODELS_2019.md section 1).

Cross-entropy over the valid pixels whose softmax probability of their true class is at most
a threshold: `thresh` (0.7), raised to the min_kept-th smallest such probability when that is
larger, so at least `min_kept` pixels are kept. Any model can use it (`loss.ohem` in a config).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seglab.data.labels import IGNORE_INDEX


def ohem_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    thresh: float = 0.7,
    min_kept: int = 100_000,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Mean cross-entropy of (B, K, H, W) logits over the hard pixels of (B, H, W) labels.

    As in TorchSeg: with fewer valid pixels than min_kept every valid pixel counts; ties at
    the threshold are all kept. Unlike TorchSeg, min_kept=0 still mines with `thresh` (there
    it switches mining off).
    """
    target, min_kept = target.long(), int(min_kept)  # a YAML 1e5 arrives as a float
    valid = target != ignore_index
    num_valid = int(valid.sum())
    if num_valid > 0 and min_kept <= num_valid:
        with torch.no_grad():
            prob = F.softmax(logits.detach().float(), dim=1)
            true_prob = prob.gather(1, target.clamp(0, logits.shape[1] - 1)[:, None])[:, 0]
            valid_prob = true_prob[valid]
            threshold = torch.tensor(thresh, device=valid_prob.device)
            if min_kept > 0:
                kth = valid_prob.kthvalue(min(min_kept, num_valid)).values
                threshold = torch.maximum(threshold, kth)
            hard = valid & (true_prob <= threshold)
        target = target.masked_fill(~hard, ignore_index)
    return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index)
