"""seglab: classic semantic segmentation models, done faithfully."""

from seglab.models import count_parameters, create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "Segmenter",
    "count_parameters",
    "create_model",
    "list_models",
    "load_weights",
    "save_weights",
]


def __getattr__(name: str):
    # Segmenter pulls in inference and I/O; import it only when asked for.
    if name == "Segmenter":
        from seglab.inference import Segmenter

        return Segmenter
    if name in ("save_weights", "load_weights"):
        from seglab import weights

        return getattr(weights, name)
    raise AttributeError(f"module 'seglab' has no attribute {name!r}")
