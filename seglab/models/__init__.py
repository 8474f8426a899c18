"""One file per paper; importing this package registers every model."""

from seglab.models import (  # noqa: F401
    context,
    deeplab_v1,
    deeplab_v2,
    deeplab_v3,
    fcn,
    fcn_resnet,
    pspnet,
    refinenet,
    segnet,
    unet,
)
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
