"""seglab: classic semantic segmentation models, done faithfully."""

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
    # Everything here imports torch: `import seglab` (and `seglab --help`) must not.
    if name in ("count_parameters", "create_model", "list_models"):
        from seglab import models

        return getattr(models, name)
    if name == "Segmenter":
        from seglab.inference import Segmenter

        return Segmenter
    if name in ("save_weights", "load_weights"):
        from seglab import weights

        return getattr(weights, name)
    raise AttributeError(f"module 'seglab' has no attribute {name!r}")
