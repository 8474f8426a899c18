"""One file per paper; importing this package imports every module in it, which registers
every model (a file cannot be left out by forgetting a line here)."""

import importlib
import pkgutil

from seglab.models.base import SegmentationModel, main_logits, unwrap
from seglab.models.registry import (
    MODELS,
    ModelInfo,
    count_parameters,
    create_model,
    list_models,
    model_info,
    register_model,
    register_variant,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "MODELS",
    "ModelInfo",
    "SegmentationModel",
    "count_parameters",
    "create_model",
    "list_models",
    "main_logits",
    "model_info",
    "register_model",
    "register_variant",
    "unwrap",
]
