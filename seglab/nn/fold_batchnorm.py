"""Folding inference-mode BatchNorm into the convolution before it.

conv -> BN in eval mode is one affine map per channel, so the BN can be merged into the conv's
weights and bias: the same outputs (up to float rounding) with one layer less, what deployment
runtimes do. Which BN follows which conv is found by running the model once, not from the
order the modules were registered in. Imports torch only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

__all__ = ["count_batchnorms", "fold_batchnorm", "input_channels"]


def input_channels(model: nn.Module) -> int:
    """Image channels a model expects: its seglab_spec's (create_model sets it), else, for a
    plain nn.Module, its first conv's."""
    spec = getattr(model, "seglab_spec", None)
    if spec is not None:
        return spec["in_channels"]
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3


class _UseCounter(TorchFunctionMode):
    """Counts, per tensor object, the torch calls that read it and return a tensor (metadata
    queries such as x.dim() or x.shape return none and are not uses)."""

    def __init__(self, watched: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.watched = watched
        self.uses: dict[int, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(leaf, torch.Tensor) for leaf in tree_leaves(out)):
            for leaf in tree_leaves((args, kwargs or {})):
                if isinstance(leaf, torch.Tensor) and self.watched.get(id(leaf)) is leaf:
                    self.uses[id(leaf)] = self.uses.get(id(leaf), 0) + 1
        return out


def _conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) pairs where folding the BN into the conv changes nothing else.

    Found by running the model once, not from the order modules were registered in (which
    says nothing about data flow). A pair qualifies when the BN's input is the very tensor
    the conv returned, untouched (its version counter unchanged: no x += skip in between),
    that tensor has no other reader (no residual taking the conv output before BN), and the
    conv and the BN each run once per forward pass (no weight sharing).
    """
    outputs: dict[int, torch.Tensor] = {}
    producer: dict[int, tuple[str, int]] = {}  # tensor id -> (conv name, version)
    candidates: list[tuple[str, str, int]] = []
    calls: dict[str, int] = {}
    handles = []

    def remember(name: str) -> Callable:
        def hook(module, args, output):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor):
                outputs[id(output)] = output
                producer[id(output)] = (name, output._version)

        return hook

    def match(name: str) -> Callable:
        def hook(module, args):
            calls[name] = calls.get(name, 0) + 1
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and outputs.get(id(x)) is x:
                conv, version = producer[id(x)]
                if x._version == version:
                    candidates.append((conv, name, id(x)))

        return hook

    for name, module in model.named_modules():
        if type(module) is nn.Conv2d:
            handles.append(module.register_forward_hook(remember(name)))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(match(name)))
    counter = _UseCounter(outputs)
    try:
        with torch.no_grad(), counter:
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return [
        (conv, bn)
        for conv, bn, tensor in candidates
        if counter.uses.get(tensor) == 1 and calls[conv] == 1 and calls[bn] == 1
    ]


def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
    """An eval-mode copy of `model` with each BatchNorm2d folded into the Conv2d before it.

    BN(conv(x)) = gamma * (W x + b - mean) / sqrt(var + eps) + beta, so the conv gets
    W' = W * s and b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps) per output
    channel, and the BN becomes an Identity. Only for inference: the running statistics are
    baked in. `example` is one input used to find which BN follows which conv (default
    (1, C, 64, 64) zeros); the original model is not changed.
    """
    folded = copy.deepcopy(model).eval()
    if example is None:
        device = next(folded.parameters()).device
        example = torch.zeros(1, input_channels(folded), 64, 64, device=device)
    modules = dict(folded.named_modules())
    for conv_name, bn_name in _conv_bn_pairs(folded, example):
        conv, bn = modules[conv_name], modules[bn_name]
        if bn.running_mean is None or bn.running_var is None:
            continue  # batch statistics at test time: nothing constant to fold
        with torch.no_grad():
            scale = bn.running_var.add(bn.eps).rsqrt()
            if bn.weight is not None:
                scale = scale * bn.weight
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            shift = (bias - bn.running_mean) * scale
            if bn.bias is not None:
                shift = shift + bn.bias
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
            conv.bias = nn.Parameter(shift.to(conv.weight.dtype), conv.weight.requires_grad)
        parent_name, _, child = bn_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else folded, child, _after_norm(bn))
    return folded


def _after_norm(bn: nn.Module) -> nn.Module:
    """What is left of a BN once folded: nothing for nn.BatchNorm2d; the dropout and the
    activation for timm's BatchNormAct2d (a BN subclass with .drop and .act), whose forward
    is batch_norm -> drop -> act. Any other subclass keeps its own forward with the BN made
    an exact identity (mean 0, var 1 - eps, weight 1, bias 0), so nothing it adds is lost."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if type(bn).__name__ == "BatchNormAct2d" and hasattr(bn, "act") and hasattr(bn, "drop"):
        return nn.Sequential(bn.drop, bn.act)
    with torch.no_grad():
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        if bn.weight is not None:
            bn.weight.fill_(1.0)
        if bn.bias is not None:
            bn.bias.zero_()
    return bn


def count_batchnorms(model: nn.Module) -> int:
    """BatchNorm layers that still normalise (a neutralised subclass, see _after_norm, is
    not counted)."""
    return sum(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and not _is_identity_bn(m)
        for m in model.modules()
    )


def _is_identity_bn(bn: nn.Module) -> bool:
    return (
        bn.running_mean is not None
        and not bn.running_mean.any()
        and bool((bn.running_var == 1.0 - bn.eps).all())
        and (bn.weight is None or bool((bn.weight == 1).all()))
        and (bn.bias is None or not bn.bias.any())
    )


# ---------------------------------------------------------------------------- variants
