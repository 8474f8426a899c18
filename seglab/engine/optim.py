"""Optimizer with a head learning-rate multiplier, and the poly / step schedules with warm-up."""

from __future__ import annotations

import torch

from seglab.config import OptimConfig
from seglab.errors import SeglabError


def parameter_groups(model: torch.nn.Module, head_lr_mult: float) -> list[dict]:
    """Encoder parameters at lr, everything else (decoder, head) at lr * head_lr_mult.

    DeepLab and PSPNet train their new layers 10x faster than the pretrained backbone; BN and
    bias parameters get no weight decay, as in the reference implementations.
    """
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = not name.startswith("encoder.")
        no_decay = param.ndim <= 1
        groups.setdefault((is_head, no_decay), []).append(param)
    return [
        {
            "params": params,
            "lr_mult": head_lr_mult if is_head else 1.0,
            **({"weight_decay": 0.0} if no_decay else {}),
        }
        for (is_head, no_decay), params in sorted(groups.items())
    ]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.head_lr_mult)
    for group in groups:
        group["lr"] = cfg.lr * group["lr_mult"]
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise SeglabError(f"optim.name {cfg.name!r} is not one of: sgd, adamw")


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the base lr at `step` (0-based) of `total`."""
    if cfg.schedule == "poly":
        factor = (1 - min(step, total) / total) ** cfg.power
    elif cfg.schedule == "step":
        factor = cfg.gamma ** (step // cfg.step_size)
    elif cfg.schedule == "multistep":  # Detectron's: x gamma at each of optim.milestones
        factor = cfg.gamma ** sum(step >= milestone for milestone in cfg.milestones or ())
    elif cfg.schedule == "constant":
        factor = 1.0
    else:
        raise SeglabError(
            f"optim.schedule {cfg.schedule!r} is not one of: poly, step, multistep, constant"
        )
    if step < cfg.warmup_iters:  # linear warm-up from 1 % of the scheduled lr
        factor *= 0.01 + 0.99 * step / cfg.warmup_iters
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    lr_factor(0, total, cfg)  # validate the schedule name before training starts
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, cfg))
