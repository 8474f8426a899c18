"""Typed run configuration: dataclasses, YAML files with at most one `base:`, dotted overrides.

    cfg = load_config("configs/unet_shapes.yaml", ["optim.lr=0.01", "train.iters=200"])

Every key is a dataclass field, so a typo is an error that names the key, and a YAML file
shows every setting a run used (the trainer writes the resolved config to the run directory).

Relative paths in a config file (data.root, model.init_weights) are looked up beside that
file first: when CONFIG_DIR/PATH exists it becomes that absolute path, so a config works from
any directory. Otherwise the path is kept as written and read from the current directory (the
recipes in configs/ name data/... under the repository root, where they are run from).
Overrides (`data.root=...`) and run_dir are relative to the current directory, as paths typed
in a shell are.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seglab.errors import SeglabError, first_line


@dataclass
class ModelConfig:
    name: str = "unet"
    options: dict[str, Any] = field(default_factory=dict)  # the builder's keyword options
    init_weights: str | None = None  # seglab .safetensors to start from (a previous stage)


@dataclass
class DataConfig:
    format: str = "folder"  # see seglab/data/registry.py; folder: the generic layout
    root: str = "data/shapes"
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] | None = None  # [H, W]; padded with ignore where the image is smaller
    scale_range: list[float] | None = None  # random rescale [min, max] before the crop
    hflip: bool = True
    # the papers' other augmentations (seglab/data/transforms.py), e.g.
    # {rotate: 10, photometric: true, blur: 0.5, elastic: {grid: 3, sigma: 10}}
    augment: dict[str, Any] | None = None
    batch_size: int = 8  # the global batch: divided across ranks under torchrun
    num_workers: int = 0  # 0 loads in the training process (fastest on 2 cores)
    cache: bool = False  # keep decoded images in memory (small datasets)
    # refuse image/mask files declaring more pixels (decompression bombs); None: the env var
    # SEGLAB_MAX_IMAGE_PIXELS or seglab.data.images.DEFAULT_MAX_IMAGE_PIXELS (~179 MP)
    max_image_pixels: int | None = None
    # folder layout only (seglab/data/folder_layout.py): sub-folders of root, file suffixes
    # (mask_suffix: _mask.png for NAME_mask.png) and a hold-out fraction without split files
    image_dir: str = "images"
    mask_dir: str = "masks"
    image_suffix: str | None = None  # None: any of .png .jpg .jpeg .bmp .tif .tiff
    mask_suffix: str = ".png"
    val_fraction: float | None = None  # e.g. 0.2: a fixed 20% of the images is `val`
    # train on weak labels instead of masks/ (folder layout; val keeps its masks): scribbles |
    # points | boxes, read from ROOT/KIND/ (seglab/data/weak_training.py)
    weak: str | None = None
    box_inner: float = 0.2  # boxes: the central fraction of each box's area given its class


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    head_lr_mult: float = 1.0  # lr factor for everything outside model.encoder (DeepLab: 10)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "poly"  # poly | step | multistep | constant
    power: float = 0.9  # poly: lr * (1 - t / T) ** power
    step_size: int = 2000  # step: lr * gamma ** (t // step_size)
    milestones: list[int] | None = None  # multistep: lr * gamma ** (milestones passed), Mask R-CNN
    gamma: float = 0.1
    warmup_iters: int = 0  # linear warm-up from lr / 100
    grad_clip: float | None = None  # max global gradient norm


@dataclass
class LossConfig:
    # None | "median_frequency" (SegNet) | a list of per-class weights
    class_weights: str | list[float] | None = None
    aux_weights: list[float] | None = None  # None: the model's own (PSPNet: 0.4)
    # U-Net's w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / (2 sigma^2)), objects = connected
    # components of each class; e.g. {w0: 10, sigma: 5}. class_weights become w_c.
    border_weights: dict[str, float] | None = None
    # BiSeNet's online hard example mining on every CE term, e.g. {thresh: 0.7, min_kept: N}:
    # pixels whose true-class probability is <= thresh, at least min_kept (losses_ohem.py).
    ohem: dict[str, float] | None = None
    # the loss of every output as weighted terms, e.g. {ce: 1.0, dice: 0.5}; ce | dice | focal |
    # lovasz (seglab/losses_extra.py); None: cross-entropy alone
    terms: dict[str, float] | None = None
    # + the Gated CRF loss for weak labels (CE then only sees the annotated pixels), e.g.
    # {weight: 0.1, radius: 5, downscale: 4, kernels: [{weight: 1, xy: 6, rgb: 0.1}]}
    gated_crf: dict | None = None
    # boundary label relaxation instead of CE, e.g. {border: 1, strict_classes: []}
    # (both seglab/losses_weak.py, with the official defaults)
    relax: dict | None = None


@dataclass
class TrainConfig:
    iters: int = 1000
    eval_every: int = 500  # also at the end
    log_every: int = 10
    checkpoint_every: int = 500  # the resume checkpoint; also at the end and on eval
    seed: int = 0
    amp: bool = False  # mixed precision: autocast to amp_dtype
    amp_dtype: str = "auto"  # auto (CUDA: fp16 + grad scaling; CPU: bf16) | bfloat16 | float16
    accumulate: int = 1  # micro-batches per step: batch 16 on one small GPU = 4 x 4
    sync_bn: bool = False  # SyncBatchNorm across ranks under torchrun (PSPNet, DeepLab recipes)
    freeze_bn: bool = False  # BN in eval mode, affine not trained (DeepLab v3's OS-8 stage)
    channels_last: bool = False  # NHWC memory format (faster convolutions on recent GPUs)
    compile: bool = False  # torch.compile the model
    on_nonfinite: str = "stop"  # stop | skip: a NaN/inf loss stops the run or skips the step
    tensorboard: bool = True  # also log to RUN_DIR/tensorboard when tensorboard is installed
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: this rank's GPU)
    threads: int | None = None  # torch CPU threads; None keeps torch's default


@dataclass
class InferenceConfig:
    mode: str = "whole"  # whole | slide | overlap_tile (U-Net with valid padding)
    crop_size: list[int] | None = None  # slide: window [H, W]; overlap_tile: output tile
    stride: list[int] | None = None  # slide: window step; default 2/3 of the window
    scales: list[float] = field(default_factory=lambda: [1.0])  # e.g. [0.5, 0.75, 1, 1.25]
    flip: bool = False  # also average the horizontally flipped prediction
    batch_size: int = 8  # images (whole) or windows (slide) per forward pass


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)  # used by evaluation
    # `seglab weak`: {cam: ..., pseudo: ...} (seglab/weak/pipeline.py); seglab train ignores it
    weak: dict[str, Any] | None = None
    # structured knowledge distillation from a teacher, e.g. {teacher: PATH, pixel: 10}
    # (seglab/weak/distill.py)
    distill: dict[str, Any] | None = None
    run_dir: str = "runs/default"


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """Coerce YAML's value to the field's type (int -> float allowed); raise naming the key."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, key)
            except SeglabError:
                pass
        raise SeglabError(f"config key {key}: {value!r} is not a {hint}")
    if hint is Any:
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise SeglabError(f"config key {key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_type(v, item, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise SeglabError(f"config key {key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise SeglabError(f"config key {key}: expected {hint.__name__}, got {value!r}")
    return value


def _merge(target: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Write a nested dict onto a dataclass, checking names and types."""
    hints = typing.get_type_hints(type(target))
    names = {f.name for f in dataclasses.fields(target)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise SeglabError(
                f"unknown config key {dotted!r}; valid keys here: {', '.join(sorted(names))}"
            )
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise SeglabError(f"config key {dotted}: expected a mapping, got {value!r}")
            _merge(current, value, dotted + ".")
        elif isinstance(current, dict) and isinstance(value, dict) and prefix:
            current.update(value)  # model.options.x=1 adds to the options
        else:
            setattr(target, key, _check_type(value, hints[key], dotted))


CONFIG_PATHS = (("data", "root"), ("model", "init_weights"))


def resolve_config_path(value: str, folder: Path) -> str:
    """A path written in a config file in `folder`: absolute beside the file when it exists
    there, else as written (the current directory's; see the module docstring)."""
    beside = folder / Path(value).expanduser()
    return str(beside.absolute()) if beside.exists() else value


def _resolve_paths(data: dict[str, Any], folder: Path) -> None:
    for section, key in CONFIG_PATHS:
        values = data.get(section)
        if isinstance(values, dict) and isinstance(values.get(key), str):
            values[key] = resolve_config_path(values[key], folder)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SeglabError(f"config file {path} does not exist; see configs/ for the recipes")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise SeglabError(f"{path}: not valid YAML ({first_line(error)})") from None
    if not isinstance(data, dict):
        raise SeglabError(f"{path}: a config file must be a mapping of sections")
    _resolve_paths(data, path.parent)
    return data


def parse_override(text: str) -> dict[str, Any]:
    """'optim.lr=0.01' -> {'optim': {'lr': 0.01}}; the value is read as YAML."""
    if "=" not in text:
        raise SeglabError(f"override {text!r} must look like section.key=value, e.g. optim.lr=0.01")
    key, raw = text.split("=", 1)
    value: Any = yaml.safe_load(raw) if raw else None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- base file (one level) <- the file <- dotted overrides."""
    config = Config()
    if path is not None:
        path = Path(path)
        data = _read_yaml(path)
        base = data.pop("base", None)
        if base is not None:
            base_data = _read_yaml(path.parent / base)
            if "base" in base_data:
                raise SeglabError(f"{path.parent / base}: a base config cannot have a base itself")
            _merge(config, base_data)
        _merge(config, data)
    for text in overrides or []:
        _merge(config, parse_override(text))
    _check_data_format(config, path)
    return config


def _check_data_format(config: Config, path: Path | None) -> None:
    """An unknown data.format is an error at load time, not at the first dataset read."""
    # seglab.data registers every format as it is imported; importing it here (not at module
    # top) keeps `seglab.config` light for code that only reads YAML.
    from seglab.data import DATASETS
    from seglab.data.registry import unknown_format_message

    if config.data.format not in DATASETS:
        where = f"{path}: " if path is not None else ""
        raise SeglabError(where + unknown_format_message(config.data.format))


def config_to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (what `seglab train` keeps in the run directory),
    atomically: a kill leaves the old file or the new one."""
    from seglab.atomic import write_text_atomically

    write_text_atomically(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
