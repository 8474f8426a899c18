"""seglab: classic semantic segmentation models, done faithfully."""

import os

__version__ = "0.1.0"

# PyTorch's OpenMP threads (libgomp) spin-wait ~300000 iterations at every barrier by default;
# beside any other busy process that turns the 2 threads against each other (the demo's training
# fell from 84 to 26 images/s next to one busy loop). PASSIVE makes idle threads sleep. libgomp
# reads this when torch is loaded, so it is set here, before seglab imports torch; a value the
# user set wins, and SEGLAB_OMP_DEFAULTS=0 leaves the environment alone (README: Speed).
if os.environ.get("SEGLAB_OMP_DEFAULTS", "1") != "0":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = [
    "Segmenter",
    "count_parameters",
    "create_model",
    "list_models",
    "load_weights",
    "save_weights",
    "train",
]


def train(config, overrides=(), resume: bool = False, progress: bool = True):
    """Train as `seglab train CONFIG KEY=VALUE ... [--resume]` does; returns the run directory.

    config: a seglab.config.Config, or a YAML path (None: the defaults) that the dotted
    `overrides` (["train.iters=100", ...]) then change.
    """
    from seglab.config import Config, load_config
    from seglab.engine.trainer import train as run_training

    if isinstance(config, Config):
        if overrides:
            raise TypeError("overrides go with a config path; change the Config's fields instead")
        cfg = config
    else:
        cfg = load_config(config, list(overrides))
    return run_training(cfg, resume=resume, progress=progress)


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
