"""One file per paper; importing this package registers every model."""

from seglab.models import deeplab_v1, deeplab_v2, deeplab_v3, fcn, fcn_resnet, unet  # noqa: F401
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
