"""One file per paper; importing this package registers every model."""

from seglab.models import fcn, unet  # noqa: F401  (registration side effect)
from seglab.models.registry import (
    MODELS,
    ModelInfo,
    count_parameters,
    create_model,
    list_models,
    model_info,
    register_model,
)

__all__ = [
    "MODELS",
    "ModelInfo",
    "count_parameters",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]
