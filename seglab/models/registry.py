"""Model names -> registered classes, with the facts the contract tests check.

    @register_model("fcn32s", "FCN-32s on VGG16 (Long et al. 2015)", paper_params=134_346_581)
    class FCN(SegmentationModel): ...

    register_variant("fcn8s", "fcn32s", "FCN-8s on VGG16", stride=8, paper_params=134_362_751)

`create_model("fcn8s", num_classes=21)` builds FCN(num_classes=21, stride=8). The class
signature is the documentation of every option and its default; a variant states only what
it changes (its `defaults`), as timm's entry points do.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from seglab.errors import SeglabError
from seglab.models.base import SegmentationModel

FIXED_ARGUMENTS = ("num_classes", "in_channels")
"""Constructor arguments the registry passes itself: the dataset decides them, not options."""


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model name.

    cls: the registered class (a SegmentationModel).
    defaults: options this entry sets on top of the class defaults (a variant's differences).
    paper_options: the paper's configuration (e.g. num_classes=21), used for `paper_params`.
    paper_params: learnable parameters of that configuration per shared/MODELS.md (or the
        reference implementation where the paper gives none); None if unknown.
    small_options: a small, fast variant for tests and the demo (e.g. width=8).
    """

    name: str
    cls: type[nn.Module]
    summary: str
    defaults: dict[str, Any] = field(default_factory=dict)
    paper_options: dict[str, Any] = field(default_factory=dict)
    paper_params: int | None = None
    small_options: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """Every option of this entry with its default: the class signature, the entry's
        defaults applied, num_classes and in_channels left out. Required options map to
        inspect.Parameter.empty."""
        parameters = inspect.signature(self.cls.__init__).parameters
        options = {
            name: p.default
            for name, p in parameters.items()
            if name != "self"
            and name not in FIXED_ARGUMENTS
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }
        return {**options, **self.defaults}

    def in_channels_default(self) -> int:
        parameter = inspect.signature(self.cls.__init__).parameters.get("in_channels")
        default = parameter.default if parameter is not None else 3
        return default if isinstance(default, int) else 3


MODELS: dict[str, ModelInfo] = {}


def _add(info: ModelInfo) -> None:
    if info.name in MODELS:
        raise ValueError(f"model {info.name!r} is registered twice")
    unknown = set(info.defaults) - set(ModelInfo(info.name, info.cls, "").options())
    if unknown:
        raise TypeError(f"model {info.name!r}: {info.cls.__name__} has no option {sorted(unknown)}")
    MODELS[info.name] = info


def register_model(
    name: str,
    summary: str,
    paper_options: dict[str, Any] | None = None,
    paper_params: int | None = None,
    small_options: dict[str, Any] | None = None,
    **defaults: Any,
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: register `cls` as `name`; `defaults` override its signature's."""

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        if not (isinstance(cls, type) and issubclass(cls, SegmentationModel)):
            raise TypeError(
                f"register_model({name!r}) decorates a SegmentationModel subclass, not {cls!r}; a "
                "paper configuration of a registered class is a register_variant entry"
            )
        _add(
            ModelInfo(
                name,
                cls,
                summary,
                dict(defaults),
                dict(paper_options or {}),
                paper_params,
                dict(small_options or {}),
            )
        )
        return cls

    return decorate


def register_variant(
    name: str,
    of: str,
    summary: str,
    *,
    paper_options: dict[str, Any] | None = None,
    paper_params: int | None = None,
    small_options: dict[str, Any] | None = None,
    **defaults: Any,
) -> None:
    """Register `name` as the entry `of` with other defaults (a paper configuration).

    paper_options and small_options are inherited from `of` unless given."""
    base = MODELS[of]
    _add(
        ModelInfo(
            name,
            base.cls,
            summary,
            {**base.defaults, **defaults},
            dict(base.paper_options if paper_options is None else paper_options),
            paper_params,
            dict(base.small_options if small_options is None else small_options),
        )
    )


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


def create_model(
    name: str, num_classes: int | None = None, in_channels: int | None = None, /, **options: Any
) -> nn.Module:
    """Build a registered model. Unknown options give a SeglabError naming the accepted ones.

    num_classes, in_channels: positional, or as keywords (create_model("unet", num_classes=2)).
    A caller that expands a config's options passes them positionally
    (create_model(name, classes, channels, **cfg.model.options)); then a num_classes or
    in_channels among the options is a SeglabError, not a second value.
    in_channels: None takes the class's default (3 for most models, 1 for U-Net).
    The returned module carries `seglab_spec` (name, num_classes, in_channels, options, task):
    what a weights file records so that it can be rebuilt without the training config.
    """
    info = model_info(name)
    given = {"num_classes": num_classes, "in_channels": in_channels}
    for fixed in FIXED_ARGUMENTS:
        if fixed not in options:
            continue
        if given[fixed] is not None:
            raise SeglabError(
                f"model {name!r}: {fixed} is not a model option (seglab takes it from the "
                f"dataset's classes.txt and images); remove model.options.{fixed}"
            )
        given[fixed] = options.pop(fixed)
    num_classes, in_channels = given["num_classes"], given["in_channels"]
    if num_classes is None:
        raise TypeError(f"create_model({name!r}) needs num_classes")
    accepted = info.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise SeglabError(
            f"model {name!r} has no option {unknown[0]!r}; its options: {', '.join(accepted)}"
        )
    if in_channels is None:
        in_channels = info.in_channels_default()
    model = info.cls(
        num_classes=num_classes, in_channels=in_channels, **{**info.defaults, **options}
    )
    model.seglab_spec = {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "options": dict(options),
        "task": getattr(model, "task", "semantic"),
    }
    return model


def count_parameters(model: nn.Module, learnable_only: bool = True) -> int:
    """Number of parameters; frozen ones (FCN's bilinear deconvolutions) are left out by default."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not learnable_only)
