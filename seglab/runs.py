"""What the user names on the command line -> weights, the run's config, its inference settings
and its evaluation dataset. The one place eval, predict, crf-search, export and benchmark resolve
a run directory or a weights file.

A run directory (what `seglab train` writes) holds config.yaml, best.safetensors and
final.safetensors; `RUN` means RUN/best.safetensors, and `RUN/final.safetensors` (any weights
file with a config.yaml beside it) is read with that run's config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from seglab.config import Config, InferenceConfig, load_config
from seglab.errors import SeglabError, first_line

RUN_WEIGHTS = "best.safetensors"
RUN_CONFIG = "config.yaml"
INFERENCE_MODES = ("whole", "slide", "overlap_tile")


def resolve_weights(path: str | Path, what: str = "") -> Path:
    """A weights file, or a run directory -> its best.safetensors; one SeglabError line
    (prefixed by `what`, e.g. "model.init_weights: ") when neither exists."""
    target = Path(path)
    if target.is_dir():
        weights = target / RUN_WEIGHTS
        if not weights.is_file():
            raise SeglabError(f"{what}{target} has no {RUN_WEIGHTS}; is it a finished seglab run?")
        return weights
    if not target.is_file():
        raise SeglabError(
            f"{what}{target.absolute()}: weights file not found (the path does not exist; "
            "give NAME.safetensors or a run directory)"
        )
    return target


def resolve_run(path: str | Path) -> tuple[Path, Config | None]:
    """A weights file or a run directory -> (weights file, the run's config or None).

    The config is the run's config.yaml: inside the directory, or beside the weights file.
    """
    weights = resolve_weights(path)
    config = weights.parent / RUN_CONFIG
    return weights, load_config(config) if config.is_file() else None


def check_inference(cfg: InferenceConfig, where: str = "inference") -> InferenceConfig:
    """A one-line SeglabError for settings inference cannot run with; returns cfg."""
    if cfg.mode not in INFERENCE_MODES:
        raise SeglabError(f"{where}.mode {cfg.mode!r} is not one of: {', '.join(INFERENCE_MODES)}")
    for key in ("crop_size", "stride"):
        size = getattr(cfg, key)
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise SeglabError(f"{where}.{key} {size} must be two positive integers [H, W]")
    if cfg.mode == "slide" and cfg.crop_size is None:
        raise SeglabError(
            f"{where}.mode slide needs a window: {where}.crop_size [H, W] (--crop HxW)"
        )
    if not cfg.scales or min(cfg.scales) <= 0:
        raise SeglabError(f"{where}.scales {cfg.scales} must be one or more numbers > 0")
    if cfg.batch_size < 1:
        raise SeglabError(f"{where}.batch_size {cfg.batch_size} must be >= 1")
    return cfg


def check_window(model, cfg: InferenceConfig) -> None:
    """Slide mode: one forward pass on a blank window first, so that a window smaller than the
    model can take (its downsampling pools a side to nothing) is a one-line error naming the
    setting, before any image is read."""
    if cfg.mode != "slide":
        return
    import torch

    parameter = next(model.parameters())
    h, w = cfg.crop_size
    blank = torch.zeros(1, model.seglab_spec["in_channels"], h, w, dtype=parameter.dtype)
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(blank.to(parameter.device))
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as error:
        reason = first_line(error)
        raise SeglabError(
            f"--crop (inference.crop_size) {h}x{w} is too small a window for "
            f"{model.seglab_spec['name']} ({reason}); give a larger HxW, e.g. 512x512"
        ) from None
    finally:
        model.train(was_training)


def run_inference(
    config: Config | None, inference: InferenceConfig | Mapping[str, Any] | None = None
) -> InferenceConfig:
    """The inference settings to use for a run.

    inference: None -> the run's `inference` section (defaults without a config); a mapping
    (e.g. {"scales": [1.0]}) -> the run's section with only those fields replaced; an
    InferenceConfig -> used as it is.
    """
    if isinstance(inference, InferenceConfig):
        return check_inference(inference)
    base = config.inference if config is not None else InferenceConfig()
    overrides = dict(inference or {})
    known = {f.name for f in dataclasses.fields(InferenceConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise SeglabError(
            f"unknown inference setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return check_inference(dataclasses.replace(base, **overrides))


def run_dataset(
    config: Config | None,
    root: str | Path | None = None,
    split: str | None = None,
    data_format: str | None = None,
):
    """The dataset to evaluate a run on (eval transform): each argument defaults to the run's
    data section (its val split); without a config, `root` is needed and the layout is folder.
    """
    from seglab.data import build_dataset
    from seglab.data.folder_layout import data_layout
    from seglab.data.images import set_max_image_pixels
    from seglab.data.transforms import eval_transform

    if config is not None:
        set_max_image_pixels(config.data.max_image_pixels)  # the run's decompression-bomb limit

    if root is None:
        if config is None:
            raise SeglabError(
                "give --data ROOT: the weights have no config.yaml beside them to name a dataset"
            )
        root = config.data.root
    split = split or (config.data.val_split if config else "val")
    data_format = data_format or (config.data.format if config else "folder")
    # the run's folder layout (image/mask folders, suffixes, val_fraction) for its own format
    same = config is not None and data_format == config.data.format
    layout = data_layout(config.data) if same else None
    return build_dataset(data_format, root, split, eval_transform(), layout=layout)


__all__ = ["check_inference", "check_window", "resolve_run", "run_dataset", "run_inference"]
