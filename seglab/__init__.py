"""seglab: classic semantic segmentation models, done faithfully."""

__version__ = "0.1.0"

# The OpenMP wait policy stays torch's (libgomp spins ~300000 iterations at each barrier): on
# a busy machine that spin makes 2 threads slower than 1, but OMP_WAIT_POLICY=PASSIVE (set here
# before) cost the idle demo step 25-30 % (seglab/threads.py has the measurements). The
# training loop picks 1 or all threads by measured step time instead; SEGLAB_OMP_DEFAULTS=0
# turns that off (README: Speed).

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
