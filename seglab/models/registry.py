"""Model names -> builder functions, with the facts the contract tests check.

A plain dict filled by a decorator at import time: `create_model("fcn8s", num_classes=21)`
calls the builder, and the builder's signature is the documentation of its options.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from seglab.errors import SeglabError


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model name.

    paper_options: the paper's configuration (e.g. num_classes=21), used for `paper_params`.
    paper_params: learnable parameters of that configuration per shared/MODELS.md (or the
        reference implementation where the paper gives none); None if unknown.
    small_options: a small, fast variant for tests and the demo (e.g. width=8).
    """

    name: str
    builder: Callable[..., nn.Module]
    summary: str
    paper_options: dict[str, Any] = field(default_factory=dict)
    paper_params: int | None = None
    small_options: dict[str, Any] = field(default_factory=dict)


MODELS: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    summary: str,
    paper_options: dict[str, Any] | None = None,
    paper_params: int | None = None,
    small_options: dict[str, Any] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder `f(num_classes, in_channels=3, **options) -> nn.Module`."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = ModelInfo(
            name,
            builder,
            summary,
            dict(paper_options or {}),
            paper_params,
            dict(small_options or {}),
        )
        return builder

    return decorate


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def model_info(name: str) -> ModelInfo:
    """The registry entry for `name`; a SeglabError lists the known names if it is unknown."""
    try:
        return MODELS[name]
    except KeyError:
        raise SeglabError(
            f"unknown model {name!r}; available: {', '.join(list_models())} (see `seglab models`)"
        ) from None


def create_model(name: str, num_classes: int, in_channels: int = 3, **options: Any) -> nn.Module:
    """Build a registered model. Unknown options give a SeglabError naming the accepted ones.

    The returned module carries `seglab_spec` (name, num_classes, in_channels, options): what
    a weights file records so that it can be rebuilt without the training config.
    """
    info = model_info(name)
    accepted = inspect.signature(info.builder).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        known = [p for p in accepted if p not in ("num_classes", "in_channels")]
        raise SeglabError(
            f"model {name!r} has no option {unknown[0]!r}; its options: {', '.join(known)}"
        )
    model = info.builder(num_classes=num_classes, in_channels=in_channels, **options)
    model.seglab_spec = {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "options": dict(options),
    }
    return model


def count_parameters(model: nn.Module, learnable_only: bool = True) -> int:
    """Number of parameters; frozen ones (FCN's bilinear deconvolutions) are left out by default."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not learnable_only)
